"""Sampling text from a language model, one token at a time.

A language model gives ``p(t_{n+1} | t_1..t_n)`` as logits at the LAST position of its
input. Generation repeats: read the logits at position ``-1``, turn them into a token
(:func:`sample_next_token`), APPEND it to the sequence, feed the longer sequence back.

Decoding rules, applied to the logits ``z`` of the next token:

- greedy: ``argmax z`` (also ``temperature=0``);
- temperature ``T``: sample from ``softmax(z / T)``; ``T < 1`` sharpens, ``T > 1`` flattens;
- top-k: keep the ``k`` largest logits, set the rest to ``-inf`` (:func:`top_k_filter`);
- top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most likely tokens whose
  total probability reaches ``p`` (:func:`top_p_filter`).

**Beam search** (:func:`beam_search`) is a search, not a sampling rule: it keeps the
``beam_width`` continuations of highest total log-probability at every step, and returns
the best one of the requested length. With width 1 it is greedy decoding; with a width of
at least ``V^(n - 1)`` it is exhaustive, the most probable ``n``-token continuation.

**KV cache.** Attention at a new position needs the keys and values of every earlier
position, which do not change when a token is appended (the model is causal). A
:class:`KVCache` holds them per layer (``[batch, n_heads, pos, d_head]``, a
:class:`~decoding_gpt.attention.LayerKVCache` per layer), so each step feeds only the
newest token: ``O(pos)`` work per step instead of ``O(pos^2)``. The result is the same as
without the cache (tested). When the sequence outgrows the context ``n_ctx`` the window
slides: every position's embedding (its position index, and for multi-layer models the
residual stream it attended to) changes, so the cache is rebuilt from the last ``n_ctx``
tokens at each such step.

**Long prompts.** Only the last ``n_ctx`` tokens of a prompt condition the model
(truncation on the left); the returned tensor still holds the whole prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from decoding_gpt.attention import LayerKVCache


class KVCache:
    """Per-layer keys and values of the positions a model has already processed."""

    def __init__(self, n_layers: int):
        self.layers = [LayerKVCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Number of cached positions (the position index of the next token)."""
        return self.layers[0].length if self.layers else 0


def check_token_ids(tokens: Tensor, d_vocab: int | None = None) -> None:
    """Raise ``ValueError`` unless ``tokens`` can be token ids; the one check behind
    :func:`generate` and ``GPT.forward``.

    Token ids are integers: a float tensor would be truncated on the way to an embedding
    row (``1.7 -> 1``, a silently different token), a bool tensor would read as ids 0 and
    1, so both are refused, whatever their values. With ``d_vocab`` every id must also lie
    in ``[0, d_vocab)`` (skipped while ``torch.compile`` traces, where it would break the
    graph).
    """
    dtype = tokens.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(
            f"token ids must be an integer tensor (torch.long), got dtype {dtype}; "
            "a float id would be truncated (1.7 -> 1) and a bool is not an id"
        )
    if d_vocab is not None and tokens.numel() and not torch.compiler.is_compiling():
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= d_vocab:
            raise ValueError(f"token ids must be in [0, {d_vocab}), got [{lo}, {hi}]")


def top_k_filter(logits: Float[Tensor, "batch vocab"], k: int) -> Float[Tensor, "batch vocab"]:
    """Keep the ``k`` largest logits of each row; set the others to ``-inf``."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    k = min(k, logits.shape[-1])
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]  # [batch, 1]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Float[Tensor, "batch vocab"], p: float) -> Float[Tensor, "batch vocab"]:
    """Nucleus filter: keep the most likely tokens until their probability reaches ``p``.

    A token is kept if the probability mass of the tokens strictly more likely than it is
    below ``p``; so the most likely token is always kept.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: Float[Tensor, "batch vocab"],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """Pick one token per row of ``logits`` (greedy, or sampled after the filters)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def beam_search(
    model: Any, tokens: Int[Tensor, " pos"], max_new_tokens: int, beam_width: int
) -> tuple[Int[Tensor, " pos_out"], float]:
    """The continuation of ``tokens`` kept by a beam search, and its log-probability.

    A continuation ``c_1..c_n`` of a prompt ``t`` scores
    ``S(c) = sum_i log p(c_i | t, c_<i)`` (natural logs). Starting from the prompt alone
    (score 0), every step extends each kept beam by every token of the vocabulary,
    ``S(c, v) = S(c) + log_softmax(logits at the last position of c)_v``, and keeps the
    ``beam_width`` extensions of highest score *over all beams at once* (not the best few
    of each beam). After ``max_new_tokens`` steps the best beam is returned:
    ``(prompt + continuation [pos + n], S)``, scored in float64. ``model`` maps ``[batch, pos]``
    token ids to logits ``[batch, pos, V]``; with a ``cfg.n_ctx`` only the last ``n_ctx``
    tokens are fed, as in :func:`generate`.
    """
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty [pos] tensor, got {tuple(tokens.shape)}")
    check_token_ids(tokens)
    if beam_width < 1 or max_new_tokens < 0:
        raise ValueError(
            f"need beam_width >= 1 and max_new_tokens >= 0, got {beam_width}, {max_new_tokens}"
        )
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    beams = tokens.long()[None]  # [beams, pos]: one beam, the prompt
    scores = torch.zeros(1, dtype=torch.float64, device=tokens.device)  # [beams]
    for _ in range(max_new_tokens):
        window = beams if n_ctx is None else beams[:, -n_ctx:]
        log_p = model(window)[:, -1].double().log_softmax(-1)  # [beams, V]
        vocab = log_p.shape[-1]
        total = (scores[:, None] + log_p).flatten()  # [beams * V]: every extension
        scores, flat = total.topk(min(beam_width, total.numel()))  # best, over all beams
        parent, token = flat // vocab, flat % vocab
        beams = torch.cat([beams[parent], token[:, None]], dim=1)  # [beams, pos + 1]
    return beams[0], float(scores[0])


@torch.no_grad()
def generate(
    model: Any,
    tokens: Int[Tensor, "... pos"],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    seed: int | None = None,
    use_kv_cache: bool = True,
    eos_token_id: int | None = None,
) -> Int[Tensor, "... pos_out"]:
    """Return ``tokens`` followed by up to ``max_new_tokens`` generated tokens.

    ``model`` is a :class:`decoding_gpt.transformer.GPT` (anything with ``cfg.n_ctx``,
    ``cfg.n_layers`` and ``forward(tokens, kv_cache=...)`` returning logits). ``tokens`` is
    ``[pos]`` or ``[batch, pos]`` (the output has the same rank). ``seed`` makes sampling
    reproducible without touching the global RNG. With ``eos_token_id`` generation stops
    once every row has produced it (finished rows are padded with it). ``tokens`` must have
    an integer dtype (:func:`check_token_ids`: a float or bool tensor raises ``ValueError``).
    """
    if tokens.ndim not in (1, 2) or tokens.shape[-1] == 0:
        raise ValueError(
            f"tokens must be a non-empty [pos] or [batch, pos], got {tuple(tokens.shape)}"
        )
    check_token_ids(tokens)  # before .long() below, which would truncate float ids
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    squeeze = tokens.ndim == 1
    seq = (tokens[None] if squeeze else tokens).to(model.device).long()  # [batch, pos]
    generator = None
    if seed is not None:
        generator = torch.Generator(device=seq.device).manual_seed(seed)
    n_ctx, cache = model.cfg.n_ctx, None
    finished = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        if not use_kv_cache:
            logits = model(seq[:, -n_ctx:])
        elif cache is not None and seq.shape[1] <= n_ctx:
            logits = model(seq[:, -1:], kv_cache=cache)  # only the newest token
        else:  # first step, or the window slid: rebuild the cache from the last n_ctx tokens
            cache = KVCache(model.cfg.n_layers)
            logits = model(seq[:, -n_ctx:], kv_cache=cache)
        next_token = sample_next_token(
            logits[:, -1, :],  # the LAST position predicts the next token
            temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
            generator=generator,
        )  # fmt: skip
        if eos_token_id is not None:
            next_token = next_token.masked_fill(finished, eos_token_id)
            finished |= next_token == eos_token_id
        seq = torch.cat([seq, next_token[:, None]], dim=1)  # append: [batch, pos + 1]
        if eos_token_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return seq[0] if squeeze else seq
