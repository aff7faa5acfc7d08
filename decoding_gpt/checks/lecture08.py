"""Checks for the exercises of lecture 08 (the transformer).

Each ``check_*`` runs the student's function on seeded inputs and compares it with an
independent reference. When the answer is wrong, the check first compares it with the
outputs of the common mistakes and names the one that matches; only then does it fall
back to a generic value comparison.

LayerNorm, the pre-LN block and the next-token loss are shared with homework 3:
:func:`check_layer_norm`, :func:`check_pre_ln_block` and :func:`check_next_token_loss`
live in :mod:`decoding_gpt.checks.components`. Here:

- :func:`check_gpt_forward`: a whole GPT from its weights, against
  :class:`decoding_gpt.transformer.GPT` holding the same (randomised) weights;
- :func:`check_mean_ablate_head`: a forward hook that mean-ablates one head's ``hook_z``,
  run through the model's hook API, against :func:`decoding_gpt.patching.run_with_ablation`;
- :func:`check_top_p_filter` (reference: a brute-force nucleus filter);
- :func:`check_beam_search`, against :func:`decoding_gpt.generation.beam_search` (itself
  tested against a search over every sequence).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.checks.adapters import randomise, seeded
from decoding_gpt.checks.components import (
    assert_causal,
    check_layer_norm,
    check_next_token_loss,
    check_pre_ln_block,
)
from decoding_gpt.generation import beam_search
from decoding_gpt.hooks import hook_name
from decoding_gpt.patching import run_with_ablation
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "check_beam_search",
    "check_gpt_forward",
    "check_layer_norm",
    "check_mean_ablate_head",
    "check_next_token_loss",
    "check_pre_ln_block",
    "check_top_p_filter",
]


def _same(got: np.ndarray, want: np.ndarray, atol: float = 1e-6) -> bool:
    """Equal shape and values up to ``atol`` plus a float32-sized relative error (``inf``
    matches ``inf`` of the same sign, NaN never matches)."""
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol, rtol=1e-5))


def _diagnose(got: np.ndarray, want: np.ndarray, mistakes: dict[str, Tensor], atol: float) -> None:
    """Raise the message of the first known mistake ``got`` reproduces (and the right
    answer does not)."""
    for message, wrong in mistakes.items():
        wrong_np = to_numpy(wrong, "wrong reference")
        if _same(got, wrong_np, atol) and not _same(want, wrong_np, atol):
            raise CheckError(message)


# ----------------------------------------------------------------------------- exercise 4
def _nucleus_reference(logits: Tensor, p: float) -> Tensor:
    """Brute force, row by row: keep the most likely tokens until their mass reaches p."""
    out = torch.full_like(logits, float("-inf"))
    probs = logits.softmax(-1)
    for row in range(logits.shape[0]):
        mass = 0.0
        for token in probs[row].argsort(descending=True).tolist():
            if mass >= p:
                break
            out[row, token] = logits[row, token]
            mass += float(probs[row, token])
    return out


def _cumulative_mask(logits: Tensor, p: float, inclusive: bool, sort: bool = True) -> Tensor:
    """Common wrong variants: keep where cumsum < p (inclusive) or cumsum in vocab order."""
    if not sort:
        probs = logits.softmax(-1)
        return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    cum = probs.cumsum(-1)
    drop = cum > p if inclusive else cum - probs >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _inverted(logits: Tensor, p: float) -> Tensor:
    keep = _nucleus_reference(logits, p).isfinite()
    return logits.masked_fill(keep, float("-inf"))


@exercise
def check_top_p_filter(fn: Callable[[Tensor, float], Tensor]) -> None:
    """``fn(logits [batch, vocab], p)``: logits of the nucleus, ``-inf`` elsewhere.

    The nucleus is the smallest set of most likely tokens whose total probability is at
    least ``p``; the most likely token is always in it.
    """
    gen = torch.Generator().manual_seed(11)
    logits = 1.5 * torch.randn(4, 12, generator=gen, dtype=torch.float64)
    for p in (0.05, 0.5, 0.8, 0.95, 1.0):
        want = _nucleus_reference(logits, p)
        result = fn(logits.clone(), p)
        got = to_numpy(result, "filtered logits")
        if got.shape != tuple(logits.shape):
            raise CheckError(
                f"the filtered logits have shape {got.shape}, expected {tuple(logits.shape)}: "
                "return the logits in vocabulary order, dropped ones set to -inf."
            )
        if np.isnan(got).any():
            raise CheckError("the output contains NaN: dropped logits should be -inf.")
        sorted_logits = logits.sort(-1, descending=True).values
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        mistakes = {
            "you dropped the token whose probability takes the total past p, so the kept "
            "mass is below p. Keep a token if the mass BEFORE it (cumsum - its own "
            "probability) is < p.": _cumulative_mask(logits, p, inclusive=True),
            "the mask is inverted: you kept the unlikely tail and dropped the nucleus. Drop "
            "a token when the mass of the tokens before it is >= p.": _inverted(logits, p),
            "the cumulative sum ran over the tokens in vocabulary order. Sort the "
            "probabilities in DESCENDING order first (logits.sort(descending=True)).": (
                _cumulative_mask(logits, p, inclusive=False, sort=False)
            ),
            "the mask was computed in sorted order but applied in vocabulary order: map it "
            "back with the sort indices (mask.scatter(-1, order, mask_sorted)).": (
                logits.masked_fill(mass_before >= p, float("-inf"))
            ),
            "the result is in sorted order: return the logits in the original vocabulary "
            "order (only the dropped entries change).": (
                sorted_logits.masked_fill(mass_before >= p, float("-inf"))
            ),
            "dropped tokens were set to 0, but a logit of 0 still has probability "
            "exp(0) / Z > 0. Set them to -inf (masked_fill(drop, float('-inf'))).": (
                want.masked_fill(want.isinf(), 0.0)
            ),
            "you returned probabilities; return LOGITS, with -inf where a token is "
            "dropped (sampling applies the softmax afterwards).": want.softmax(-1),
        }
        _diagnose(got, want.numpy(), mistakes, atol=1e-9)
        if np.isinf(got).all(axis=-1).any():
            raise CheckError(
                f"with p={p} every token of a row was dropped, so nothing can be sampled. "
                "The most likely token is always kept: keep a token if the probability of "
                "the tokens MORE likely than it is still below p."
            )
        kept, should_keep = np.isfinite(got), np.isfinite(want.numpy())
        if not np.array_equal(kept, should_keep):
            row = int(np.argwhere((kept != should_keep).any(-1))[0, 0])
            raise CheckError(
                f"with p={p}, row {row} keeps {int(kept[row].sum())} tokens, the nucleus has "
                f"{int(should_keep[row].sum())}: tokens "
                f"{np.flatnonzero(should_keep[row]).tolist()}. Sort descending, keep a token "
                "while the mass of the tokens before it is < p."
            )
        compare_tensors(
            got[kept],
            want.numpy()[kept],
            f"kept logits (p={p})",
            atol=1e-9,
            hint="Kept logits must be returned unchanged (no temperature, no renormalising).",
        )
    passed("check_top_p_filter")


# ----------------------------------------------------------------------------- the GPT
Params = dict[str, Tensor]

# every size differs between the two, d_head != d_model / n_heads and eps != 1e-5 in the
# second, so a size or an eps taken from anywhere but cfg shows
_GPT_CASES = [  # (cfg, seed, (batch, pos))
    (GPTConfig(d_vocab=13, n_ctx=8, d_model=12, n_layers=2, n_heads=3, d_mlp=20), 31, (2, 7)),
    (
        GPTConfig(
            d_vocab=17, n_ctx=10, d_model=16, n_layers=3, n_heads=2, d_head=6, d_mlp=24,
            layer_norm_eps=1e-3,
        ),
        32,
        (3, 10),
    ),
]  # fmt: skip


def _random_gpt(cfg: GPTConfig, seed: int) -> GPT:
    """A float64 GPT with every weight random (LayerNorm gains 1 + noise, biases nonzero),
    so that a missing bias, gain or LayerNorm changes the logits; written-out attention."""
    with seeded(seed):
        model = randomise(GPT(cfg), seed=seed, scale=0.3)
    for block in model.blocks:
        block.attn.use_fast_attention = False
    return model.double().eval()


def _variant_attention(
    x: Tensor, p: Params, pre: str, cfg: GPTConfig, causal: bool, scale: float, fill: float
) -> Tensor:
    """Multi-head attention written out, with a choice of mask, fill value and scale."""
    q = torch.einsum("bpm,hmd->bphd", x, p[pre + "W_Q"]) + p[pre + "b_Q"]
    k = torch.einsum("bpm,hmd->bphd", x, p[pre + "W_K"]) + p[pre + "b_K"]
    v = torch.einsum("bpm,hmd->bphd", x, p[pre + "W_V"]) + p[pre + "b_V"]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / scale
    if causal:
        n = x.shape[1]
        future = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)
        scores = scores.masked_fill(future, fill)
    z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    return torch.einsum("bqhd,hdm->bqm", z, p[pre + "W_O"]) + p[pre + "b_O"]


def _variant_gpt(tokens: Tensor, p: Params, cfg: GPTConfig, **flags: Any) -> Tensor:
    """The GPT written out, with one deliberate mistake chosen by ``flags`` (none: right)."""
    assert cfg.d_head is not None
    eps = flags.get("eps", cfg.layer_norm_eps)
    pos_where = flags.get("pos", "embed")  # embed | none | every_block | end | by_token
    gelu = partial(F.gelu, approximate="tanh") if flags.get("gelu_tanh") else F.gelu
    scale = {"sqrt": math.sqrt(cfg.d_head), "none": 1.0, "d_head": float(cfg.d_head)}[
        flags.get("scale", "sqrt")
    ]
    n = tokens.shape[1]
    w_pos = p["pos_embed.W_pos"][tokens] if pos_where == "by_token" else p["pos_embed.W_pos"][:n]
    x = p["embed.W_E"][tokens] + (w_pos if pos_where in ("embed", "by_token") else 0.0)
    for layer in range(cfg.n_layers):
        pre = f"blocks.{layer}."
        if pos_where == "every_block" and layer > 0:
            x = x + w_pos

        def ln(h: Tensor, which: str, pre: str = pre) -> Tensor:
            return F.layer_norm(h, h.shape[-1:], p[pre + which + ".w"], p[pre + which + ".b"], eps)

        def attn(h: Tensor, pre: str = pre) -> Tensor:
            return _variant_attention(
                h, p, pre + "attn.", cfg, flags.get("causal", True), scale,
                flags.get("fill", float("-inf")),
            )  # fmt: skip

        def mlp(h: Tensor, pre: str = pre) -> Tensor:
            hidden = gelu(h @ p[pre + "mlp.W_in"] + p[pre + "mlp.b_in"])
            return hidden @ p[pre + "mlp.W_out"] + p[pre + "mlp.b_out"]

        if flags.get("post_ln"):
            x = ln(x + attn(x), "ln1")
            x = ln(x + mlp(x), "ln2")
        elif flags.get("parallel"):
            x = x + attn(ln(x, "ln1")) + mlp(ln(x, "ln2"))
        else:
            x = x + attn(ln(x, "ln1"))
            x = x + mlp(ln(x, "ln2"))
    if pos_where == "end":
        x = x + w_pos
    if flags.get("final_ln", True):
        x = F.layer_norm(x, x.shape[-1:], p["ln_final.w"], p["ln_final.b"], eps)
    w_u = p["embed.W_E"].T if flags.get("tied") else p["unembed.W_U"]
    return x @ w_u + (p["unembed.b_U"] if flags.get("unembed_bias", True) else 0.0)


GPT_MISTAKES: dict[str, dict[str, Any]] = {
    "the final LayerNorm is missing: the unembedding reads LN_final(x_L), "
    "logits = layer_norm(x, ln_final.w, ln_final.b, eps) @ W_U + b_U.": {"final_ln": False},
    "this is a post-LN model (LayerNorm after each residual add, the 2017 Transformer): "
    "GPT-2 normalises only each sublayer's input, x = x + attn(ln1(x)), and the stream is "
    "normalised once, by ln_final, at the end.": {"post_ln": True},
    "attention and MLP both read the block's input: the MLP must read the stream AFTER "
    "attention has written to it, x_mid = x + attn(ln1(x)), then x_mid + mlp(ln2(x_mid)).": {
        "parallel": True
    },
    "the positional embedding is never added: x_0 = W_E[tokens] + W_pos[:pos].": {"pos": "none"},
    "the positional embedding is added at the end, after the blocks: it belongs at the "
    "start, x_0 = W_E[tokens] + W_pos[:pos], so that attention can use positions.": {"pos": "end"},
    "the positional embedding is added again at the input of every block: add it once, "
    "to the token embedding, before the first block.": {"pos": "every_block"},
    "the positional embedding was indexed by the token ids (W_pos[tokens]): row p of "
    "W_pos belongs to POSITION p, so take W_pos[:pos] (or W_pos[torch.arange(pos)]).": {
        "pos": "by_token"
    },
    "the causal mask is missing: a position attends to later tokens. Set the scores of "
    "keys j > i to -inf before the softmax.": {"causal": False},
    "future keys were masked with 0, not -inf: a score of 0 still gets weight exp(0) / Z "
    "after the softmax. masked_fill(future, float('-inf')).": {"fill": 0.0},
    "the attention scores are not divided by sqrt(d_head).": {"scale": "none"},
    "you divided the scores by d_head: divide by sqrt(d_head).": {"scale": "d_head"},
    "GPT-2's tanh approximation of GELU: cfg.act_fn is 'gelu', the exact F.gelu.": {
        "gelu_tanh": True
    },
    "the unembedding bias b_U is missing: logits = LN_final(x) @ W_U + b_U.": {
        "unembed_bias": False
    },
    "you unembedded with W_E^T (tied weights, as GPT-2 does): these models have their own "
    "W_U = params['unembed.W_U'].": {"tied": True},
    "LayerNorm used eps = 1e-5, but this model's is cfg.layer_norm_eps.": {"eps": 1e-5},
}


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-7) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=1e-6))


@exercise
def check_gpt_forward(fn: Callable[[Tensor, Params, GPTConfig], Tensor]) -> None:
    r"""``fn(tokens [batch, pos], params, cfg) -> logits [batch, pos, d_vocab]``.

    ``params`` holds a GPT's weights under the names and shapes of
    ``decoding_gpt.transformer.GPT.state_dict()``; the answer must equal that GPT's logits:
    ``x = W_E[t] + W_pos[:pos]``, pre-LN blocks (causal multi-head attention scaled by
    ``1/sqrt(d_head)``, exact-GELU MLP), ``LN_final``, ``W_U``, ``b_U``. Two configs with
    random weights (float64, ``atol 1e-7``); a wrong answer is matched against
    :data:`GPT_MISTAKES`, then tested for causality.
    """
    for cfg, seed, (batch, pos) in _GPT_CASES:
        model = _random_gpt(cfg, seed)
        params = {name: t.detach().clone() for name, t in model.state_dict().items()}
        tokens = torch.randint(
            0, cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed)
        )
        with torch.no_grad():
            want = model(tokens).numpy()
            try:
                got = to_numpy(fn(tokens.clone(), dict(params), cfg), "logits")
            except IndexError as err:
                raise CheckError(
                    f"your function raised IndexError ({err}). Token ids run up to d_vocab - "
                    "1, W_pos has n_ctx rows: index W_E by the token ids and W_pos by the "
                    "POSITIONS, W_pos[:pos]."
                ) from err
            if got.shape != want.shape:
                raise CheckError(
                    f"logits have shape {got.shape} for tokens {(batch, pos)}, expected "
                    f"{want.shape} [batch, pos, d_vocab]. Take every size from cfg."
                )
            if _close(got, want):
                continue
            for message, flags in GPT_MISTAKES.items():
                if flags.get("pos") == "by_token" and int(tokens.max()) >= cfg.n_ctx:
                    continue  # that mistake raises IndexError here (caught above)
                wrong = _variant_gpt(tokens, params, cfg, **flags).numpy()
                if _close(got, wrong) and not _close(want, wrong):
                    raise CheckError(message)

            def run(t: Tensor, params: Params = params, cfg: GPTConfig = cfg) -> Tensor:
                return torch.as_tensor(fn(t, dict(params), cfg))

            def perturb(t: Tensor, p: int, cfg: GPTConfig = cfg) -> Tensor:
                t = t.clone()
                t[:, p] = (t[:, p] + 1) % cfg.d_vocab
                return t

            assert_causal(run, tokens, perturb, "token")
        compare_tensors(
            got, want, f"logits for {cfg}", atol=1e-7,
            hint="x = W_E[tokens] + W_pos[:pos]; each block x = x + attn(ln1(x)), "
            "x = x + mlp(ln2(x)); logits = ln_final(x) @ W_U + b_U. Check the per-head "
            "einsums (q = x W_Q[h] + b_Q[h]) and the output sum over heads plus b_O.",
        )  # fmt: skip
    passed("check_gpt_forward")


# ----------------------------------------------------------------------------- hooks
def _hook_model() -> GPT:
    cfg = GPTConfig(d_vocab=19, n_ctx=8, d_model=16, n_layers=2, n_heads=4, d_mlp=32)
    return _random_gpt(cfg, seed=41)


def _ablated(z: Tensor, head: int, value: Tensor, axis: int = 2) -> Tensor:
    out = z.clone()
    index = [slice(None)] * z.ndim
    index[axis] = slice(head, head + 1)
    out[tuple(index)] = value.expand_as(z)[tuple(index)]
    return out


def _hook_mistakes(z: Tensor, head: int, mean_z: Tensor) -> dict[str, Tensor]:
    return {
        "your hook changed nothing: return the edited z (or edit it in place), with head "
        "`head` replaced by mean_z's values for that head.": z,
        "you replaced POSITION `head` (z[:, head]) instead of head `head`: z is [batch, pos, "
        "head, d_head], so the head is axis 2, z[:, :, head].": _ablated(z, head, mean_z, 1),
        "you indexed the last axis (d_head) with `head`: z is [batch, pos, head, d_head], the "
        "head is axis 2, z[:, :, head, :].": _ablated(z, head, mean_z, 3),
        "every head was replaced: only head `head` is ablated, the others keep their values.": (
            mean_z.expand_as(z).clone()
        ),
        "you used the mean of THIS batch (z.mean(0)), which depends on the prompts being "
        "ablated: use mean_z, the mean over the reference batch.": _ablated(
            z, head, z.mean(0, keepdim=True)
        ),
        "you averaged over positions too: mean_z already holds the reference mean at EACH "
        "position, use mean_z[:, :, head] as it is.": _ablated(
            z, head, mean_z.mean(1, keepdim=True)
        ),
        "the head was set to zero, not to its mean over the reference batch (mean_z).": (
            _ablated(z, head, torch.zeros_like(mean_z))
        ),
    }


@exercise
def check_mean_ablate_head(fn: Callable[..., Tensor | None]) -> None:
    """``fn(z [batch, pos, head, d_head], hook, head, mean_z [1, pos, head, d_head])``: a
    forward hook on ``blocks.L.attn.hook_z`` that replaces head ``head`` by ``mean_z``.

    Run through ``model.hooks(fwd_hooks=[(name, partial(fn, head=h, mean_z=m))])`` on a
    random 2-layer GPT and compared with :func:`decoding_gpt.patching.run_with_ablation`
    (``method="mean"``, and ``"zero"`` when ``mean_z`` is zeros); a wrong answer is then
    called directly and matched against the classic mistakes.
    """
    model = _hook_model()
    gen = torch.Generator().manual_seed(42)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 6), generator=gen)
    reference = torch.randint(0, model.cfg.d_vocab, (8, 6), generator=gen)
    cases: list[tuple[int, int, Literal["zero", "mean"]]] = [
        (0, 1, "mean"),
        (1, 3, "mean"),
        (1, 0, "zero"),
    ]
    for layer, head, method in cases:
        name = hook_name("z", layer)
        with torch.no_grad():
            _, ref_cache = model.run_with_cache(reference, names_filter=name)
            _, cache = model.run_with_cache(tokens, names_filter=name)
        mean_z = ref_cache[name].mean(0, keepdim=True)  # [1, pos, head, d_head]
        if method == "zero":
            mean_z = torch.zeros_like(mean_z)
        kept = mean_z.clone()
        want = run_with_ablation(
            model, tokens, [("z", layer, head)], method, reference_tokens=reference
        )
        hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = [
            (name, partial(fn, head=head, mean_z=mean_z))
        ]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            got = model(tokens)
        if not torch.equal(mean_z, kept):
            raise CheckError("your hook modified mean_z in place: edit z, never mean_z.")
        if _close(got.numpy(), want.numpy(), atol=1e-9):
            continue
        z, edited = cache[name], cache[name].clone()
        with torch.no_grad():  # called directly: an in-place edit shows in `edited`
            out = fn(edited, hook=model.hook_dict[name], head=head, mean_z=mean_z)
        edited = edited if out is None else torch.as_tensor(out)
        right = _ablated(z, head, mean_z)
        for message, wrong in _hook_mistakes(z, head, mean_z).items():
            if _close(edited.numpy(), wrong.numpy(), 1e-9) and not _close(
                right.numpy(), wrong.numpy(), 1e-9
            ):
                raise CheckError(message)
        compare_tensors(
            got, want, f"logits with head {layer}.{head} {method}-ablated", atol=1e-9,
            hint="Inside the hook: z[:, :, head] = mean_z[:, :, head] (broadcast over the "
            "batch), return z.",
        )  # fmt: skip
    passed("check_mean_ablate_head")


# ----------------------------------------------------------------------------- beam search
def _beam_model(seed: int) -> GPT:
    cfg = GPTConfig(d_vocab=5, n_ctx=12, d_model=16, n_layers=1, n_heads=2, init_range=0.3)
    with seeded(seed):
        model = GPT(cfg)
    return model.double().eval()


def _beam_variant(
    model: GPT, tokens: Tensor, n_new: int, width: int, **flags: Any
) -> tuple[list[int], float]:
    """Beam search with one deliberate mistake chosen by ``flags`` (none: right)."""
    beams, scores = [tokens.tolist()], [0.0]
    for step in range(n_new):
        logits = model(torch.tensor(beams))[:, flags.get("pos", -1)].double()
        step_scores = {
            "log_softmax": logits.log_softmax(-1),
            "logits": logits,
            "probs": logits.softmax(-1),
        }[flags.get("score", "log_softmax")]
        candidates = []
        for b, (beam, score) in enumerate(zip(beams, scores, strict=True)):
            row = step_scores[b]
            if flags.get("own_best") and step > 0:  # this beam's argmax only
                row = row.masked_fill(torch.arange(len(row)) != row.argmax(), float("-inf"))
            for v, s in enumerate(row.tolist()):
                total = (score if flags.get("accumulate", True) else 0.0) + s
                candidates.append((total, beam + [v], score + s))
        candidates.sort(key=lambda c: -c[0])
        kept = [c for c in candidates if math.isfinite(c[0])][:width]
        beams, scores = [c[1] for c in kept], [c[2] for c in kept]
    best = -1 if flags.get("worst") else 0
    return beams[best], scores[best]


BEAM_MISTAKES: dict[str, dict[str, Any]] = {
    "this is greedy decoding: keep the beam_width best continuations at every step, not "
    "only the best one.": {"greedy": True},
    "after the first step each beam followed only its own best token: pool the extensions "
    "of ALL beams by every token and keep the beam_width best of them.": {"own_best": True},
    "the beams were ranked by the newest token's log-probability alone: rank by the TOTAL "
    "score, S(beam) + log p(token | beam).": {"accumulate": False},
    "you added raw logits: scores are log-probabilities, log_softmax of the logits (each "
    "context's logits have a different normaliser).": {"score": "logits"},
    "you added probabilities: a sequence's probability is the PRODUCT of its token "
    "probabilities, so add their logs (log_softmax).": {"score": "probs"},
    "the next token was read from the FIRST position's logits: the last position, "
    "logits[:, -1], predicts the next token.": {"pos": 0},
    "you returned the worst of the final beams: return the one with the highest score.": {
        "worst": True
    },
}

# (seed, prompt, max_new_tokens, beam_width): chosen so that greedy decoding and each
# mistake of BEAM_MISTAKES return a different sequence from the right one in some case
_BEAM_CASES = [(4, [0], 4, 3), (0, [1, 4, 2], 4, 2), (1, [1, 4, 2], 4, 2), (13, [0], 4, 3)]


def _beam_answer(
    fn: Callable[..., Any], model: GPT, tokens: Tensor, n_new: int, width: int
) -> tuple[list[int], float]:
    """The student's ``(sequence, log_prob)`` as a list of ints and a float."""
    with torch.no_grad():
        result = fn(model, tokens.clone(), n_new, width)
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise CheckError(f"return a pair (sequence, log_prob), got {type(result).__name__}.")
    seq = [int(t) for t in to_numpy(result[0], "sequence").reshape(-1)]
    score = to_numpy(result[1], "log_prob").reshape(-1)
    if score.size != 1:
        raise CheckError(f"log_prob should be one number, got {score.size} numbers.")
    if len(seq) != len(tokens) + n_new:
        raise CheckError(
            f"the sequence has {len(seq)} tokens, expected {len(tokens) + n_new}: the "
            "prompt followed by max_new_tokens new tokens."
        )
    return seq, float(score[0])


def _same_answers(a: list[tuple[list[int], float]], b: list[tuple[list[int], float]]) -> bool:
    return all(
        sa == sb and math.isclose(xa, xb, rel_tol=1e-6, abs_tol=1e-6)
        for (sa, xa), (sb, xb) in zip(a, b, strict=True)
    )


@exercise
def check_beam_search(fn: Callable[..., tuple[Tensor, float]]) -> None:
    """``fn(model, tokens [pos], max_new_tokens, beam_width) -> (sequence, log_prob)``.

    On tiny random GPTs (vocabulary 5, float64), the sequence (prompt + continuation) and
    its total log-probability must equal :func:`decoding_gpt.generation.beam_search`'s in
    every case of ``_BEAM_CASES``. A wrong answer is named by the mistake of
    :data:`BEAM_MISTAKES` that gives the same answers in every case (one case alone can
    make two mistakes look alike).
    """
    models = [_beam_model(seed) for seed, *_ in _BEAM_CASES]
    cases = [
        (model, torch.tensor(prompt), n_new, width)
        for model, (_, prompt, n_new, width) in zip(models, _BEAM_CASES, strict=True)
    ]
    got = [_beam_answer(fn, *case) for case in cases]
    with torch.no_grad():
        want = [(seq.tolist(), score) for seq, score in (beam_search(*c) for c in cases)]
    if _same_answers(got, want):
        passed("check_beam_search")
        return
    with torch.no_grad():
        for message, flags in BEAM_MISTAKES.items():
            if flags.get("greedy"):
                wrong = [
                    (seq.tolist(), score)
                    for seq, score in (beam_search(m, t, n, 1) for m, t, n, _ in cases)
                ]
            else:
                wrong = [_beam_variant(*case, **flags) for case in cases]
            if _same_answers(got, wrong) and not _same_answers(want, wrong):
                raise CheckError(message)
    for case, (seq, score), (want_seq, want_score) in zip(cases, got, want, strict=True):
        _, tokens, n_new, width = case
        n = len(tokens)
        if seq != want_seq:
            raise CheckError(
                f"beam_width={width}, {n_new} new tokens after {tokens.tolist()}: you returned "
                f"{seq[n:]}, the best beam is {want_seq[n:]} (log-prob {want_score:.4f})."
            )
        if math.isclose(score, math.exp(want_score), rel_tol=1e-6):
            raise CheckError("you returned the probability: return the total LOG-probability.")
        compare_tensors(
            score, want_score, "log-probability of the best beam", atol=1e-6,
            hint="The score of a sequence is the sum of log_softmax(logits[:, -1])[token] "
            "over its new tokens (natural logs).",
        )  # fmt: skip
    raise AssertionError("unreachable: some case differs")  # pragma: no cover
