"""Checks for homework 4 (circuits on the shipped models).

Part A (induction) works on the repeated-random-tokens experiment ``[BOS, r_1..r_T,
r_1..r_T]``: positions ``1..T`` hold the first copy, ``T+1..2T`` the second. Part B (IOI)
patches head outputs between a clean and a corrupted prompt.

Independent references: :mod:`decoding_gpt.heads` (the token-based
:func:`~decoding_gpt.heads.induction_score` and
:func:`~decoding_gpt.heads.previous_token_score`), ``torch.nn.functional.cross_entropy``
for the loss, and :func:`decoding_gpt.patching.activation_patching` for head patching.
Every check first compares a wrong answer with the outputs of the common mistakes (each
computed here) and names the one that matches, so the message says *what* is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.heads import induction_score, previous_token_score
from decoding_gpt.hooks import HookedModel, hook_name
from decoding_gpt.patching import activation_patching, normalized_metric
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "check_head_patching",
    "check_induction_score",
    "check_logit_difference",
    "check_previous_token_score",
    "check_repeated_half_loss",
    "check_repeated_tokens",
    "reference_head_patching",
    "tiny_patching_setup",
]


def _same(got: np.ndarray, want: np.ndarray, atol: float = 1e-5) -> bool:
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol, rtol=1e-4))


def _diagnose(got: Any, want: Any, mistakes: dict[str, Any], atol: float = 1e-5) -> None:
    """Raise the message of the first known mistake ``got`` reproduces (and the right
    answer does not)."""
    got_np, want_np = to_numpy(got, "your answer"), to_numpy(want, "reference")
    for message, wrong in mistakes.items():
        wrong_np = to_numpy(wrong, "wrong reference")
        if _same(got_np, wrong_np, atol) and not _same(want_np, wrong_np, atol):
            raise CheckError(message)


# ------------------------------------------------------------------ A1. repeated tokens
@exercise
def check_repeated_tokens(fn: Callable[[int, int, int, int, torch.Generator], Tensor]) -> None:
    """``fn(batch, seq_len, d_vocab, bos, generator) -> [batch, 1 + 2 seq_len]``.

    Row ``b`` is ``[bos, r, r]`` with ``r = torch.randint(0, d_vocab, (batch, seq_len),
    generator=generator)[b]``: one draw, concatenated with itself.
    """
    batch, T, d_vocab, bos = 3, 7, 50, 99
    got = fn(batch, T, d_vocab, bos, torch.Generator().manual_seed(0))
    if not isinstance(got, Tensor):
        raise CheckError(f"return a torch.Tensor of token ids, got {type(got).__name__}.")
    if got.dtype not in (torch.int64, torch.int32):
        raise CheckError(f"token ids must be integers (torch.long), got {got.dtype}.")
    if tuple(got.shape) == (batch, 2 * T):
        raise CheckError(
            f"tokens have shape {tuple(got.shape)}: the BOS token is missing; the sequence is "
            "[BOS, r, r] of length 1 + 2 seq_len."
        )
    if tuple(got.shape) != (batch, 1 + 2 * T):
        raise CheckError(f"tokens have shape {tuple(got.shape)}, expected {(batch, 1 + 2 * T)}.")
    if not (got[:, 0] == bos).all():
        raise CheckError("position 0 of every row must be the BOS token you are given.")
    first, second = got[:, 1 : T + 1], got[:, T + 1 :]
    if not torch.equal(first, second):
        r = torch.randint(0, d_vocab, (batch, T), generator=torch.Generator().manual_seed(0))
        if torch.equal(got[:, 1:], r.repeat_interleave(2, dim=1)):
            raise CheckError(
                "each token is doubled in place (r1 r1 r2 r2 ...): repeat the whole sequence, "
                "torch.cat([r, r], dim=1), not each token (repeat_interleave)."
            )
        raise CheckError(
            "the second half is not a copy of the first: draw r once and concatenate it "
            "with itself (two randint calls give two different sequences)."
        )
    if first.min() < 0 or first.max() >= d_vocab:
        raise CheckError(f"random tokens must lie in [0, d_vocab) = [0, {d_vocab}).")
    want = torch.randint(0, d_vocab, (batch, T), generator=torch.Generator().manual_seed(0))
    if not torch.equal(first.long(), want):
        again = fn(batch, T, d_vocab, bos, torch.Generator().manual_seed(0))
        if not torch.equal(again, got):
            raise CheckError(
                "the same generator seed gave different tokens: pass generator=generator "
                "to torch.randint."
            )
        raise CheckError(
            "the random tokens differ from torch.randint(0, d_vocab, (batch, seq_len), "
            "generator=generator): draw exactly that, once, so results match the reference."
        )
    passed("check_repeated_tokens")


# ------------------------------------------------------------------ A2-A3. pattern scores
def _random_pattern(batch: int, heads: int, n: int, seed: int) -> Float[Tensor, "b h n n"]:
    """A causal attention pattern with distinct entries (rows sum to 1)."""
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(batch, heads, n, n, generator=gen, dtype=torch.float64)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def _score_result(got: Any, heads: int, name: str) -> np.ndarray:
    value = to_numpy(got, name)
    if value.ndim == 0:
        raise CheckError(
            f"{name} is a single number: return one score per head (average over batch and "
            "queries only, not over heads)."
        )
    if value.ndim == 2:
        raise CheckError(
            f"{name} has shape {value.shape}: average over the batch too; the result is "
            f"one score per head, shape ({heads},)."
        )
    if value.shape != (heads,):
        raise CheckError(f"{name} has shape {value.shape}, expected ({heads},).")
    return value


@exercise
def check_induction_score(fn: Callable[[Tensor, int], Tensor]) -> None:
    """``fn(pattern, seq_len) -> [head]`` for a pattern ``[batch, head, q, k]`` of
    ``[BOS, r, r]`` (``q = k = 1 + 2 seq_len``): the mean over the batch and the queries of
    the second copy, ``q = T+1..2T``, of the attention from ``q`` to ``q - T + 1``.

    Reference: :func:`decoding_gpt.heads.induction_score` on tokens with distinct ``r``.
    """
    batch, heads, T = 3, 4, 6
    n = 1 + 2 * T
    pattern = _random_pattern(batch, heads, n, seed=0)
    r = torch.randperm(40, generator=torch.Generator().manual_seed(0))[:T] + 1
    tokens = torch.cat([torch.zeros(1, dtype=torch.long), r, r])[None].expand(batch, n)
    want = induction_score(pattern, tokens)
    got = _score_result(fn(pattern.clone(), T), heads, "induction score")

    def diag(offset: int, start: int, stop: int | None = None) -> Tensor:
        return pattern.diagonal(offset, dim1=-2, dim2=-1)[..., start:stop].mean((0, -1))

    mistakes = {
        "you measured attention to the earlier copy of the SAME token (offset seq_len): that "
        "is a duplicate-token score. An induction head attends to the token AFTER the "
        "earlier copy, at offset seq_len - 1.": diag(-T, 1),
        "you measured attention to the token BEFORE the earlier copy (offset seq_len + 1); "
        "the induction target is the token after it, at offset seq_len - 1.": diag(-(T + 1), 0),
        "the average includes queries outside the second copy (the diagonal at offset "
        "seq_len - 1 starts at query seq_len - 1, whose key is BOS): keep only the queries "
        "q = seq_len + 1 .. 2 seq_len.": diag(-(T - 1), 0),
        "the average includes query seq_len, the last token of the FIRST copy: the second "
        "copy starts at position seq_len + 1 because of the BOS at 0.": diag(-(T - 1), 1),
        "your positions are shifted by one, as if there were no BOS: the second copy is "
        "at positions seq_len + 1 .. 2 seq_len.": diag(-(T - 1), 1, T + 1),
        "you left out the first query of the second copy (position seq_len + 1, attending "
        "to position 2).": diag(-(T - 1), 3),
        "your scores are all 0: you read the upper triangle (masked). pattern[..., q, k] has "
        "queries on dim -2; the induction diagonal is below the main diagonal, "
        "pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1).": diag(T - 1, 0),
        "you summed over queries instead of averaging.": pattern.diagonal(-(T - 1), -2, -1)[..., 2:]
        .sum(-1)
        .mean(0),
    }
    _diagnose(got, want, mistakes)
    compare_tensors(got, want, "induction score", atol=1e-5)
    passed("check_induction_score")


@exercise
def check_previous_token_score(fn: Callable[[Tensor], Tensor]) -> None:
    """``fn(pattern) -> [head]``: the mean over the batch and every query ``q >= 1`` of the
    attention from ``q`` to ``q - 1``. Reference: :func:`decoding_gpt.heads.previous_token_score`.
    """
    batch, heads, n = 3, 4, 11
    pattern = _random_pattern(batch, heads, n, seed=1)
    want = previous_token_score(pattern)
    got = _score_result(fn(pattern.clone()), heads, "previous-token score")

    def diag(offset: int, start: int = 0) -> Tensor:
        return pattern.diagonal(offset, dim1=-2, dim2=-1)[..., start:].mean((0, -1))

    mistakes = {
        "you measured attention to the query's OWN position (the main diagonal); the "
        "previous token is at offset -1: pattern.diagonal(offset=-1, dim1=-2, dim2=-1).": diag(0),
        "you measured attention two tokens back (offset -2); use offset -1.": diag(-2),
        "your scores are all 0: you read the upper triangle (masked), offset +1 instead of -1 "
        "(queries are on dim -2, keys on dim -1).": diag(1),
        "you left out query 1 (its previous token is BOS at position 0): average over every "
        "query q >= 1.": diag(-1, 1),
        "you averaged over all n queries, counting query 0 (which has no previous token) "
        "as 0: average over the n - 1 queries q >= 1.": diag(-1) * (n - 1) / n,
        "you summed over queries instead of averaging.": pattern.diagonal(-1, -2, -1)
        .sum(-1)
        .mean(0),
    }
    _diagnose(got, want, mistakes)
    compare_tensors(got, want, "previous-token score", atol=1e-5)
    passed("check_previous_token_score")


# ------------------------------------------------------------------ A4. loss on the copy
@exercise
def check_repeated_half_loss(fn: Callable[[Tensor, Tensor, int], Tensor | float]) -> None:
    """``fn(logits, tokens, seq_len)``: mean cross-entropy of predicting tokens
    ``T+2..2T`` of ``[BOS, r, r]`` (the second copy without its first, unpredictable,
    token). Logits at position ``p`` predict token ``p + 1``. Reference: ``F.cross_entropy``.
    """
    batch, T, d_vocab = 3, 6, 20
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, d_vocab, (batch, 1 + 2 * T), generator=gen)
    logits = 3 * torch.randn(batch, 1 + 2 * T, d_vocab, generator=gen)
    got = fn(logits.clone(), tokens.clone(), T)
    value = to_numpy(got, "repeated-half loss")
    if value.shape != ():
        raise CheckError(
            f"the loss has shape {value.shape}: return one number, the mean over the batch "
            "and the predicted positions."
        )
    per = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
    )  # [batch, 2T]: per[:, p] predicts token p + 1
    want = per[:, T + 1 :].mean()
    unshifted = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")
    mistakes = {
        "the logits are not shifted: logits at position p predict token p + 1, so compare "
        "logits[:, :-1] with tokens[:, 1:].": unshifted[:, T + 2 :].mean(),
        "you included the first token of the second copy (position seq_len + 1): nothing "
        "before it predicts it, so leave it out and predict tokens seq_len + 2 .. 2 seq_len.": (
            per[:, T:].mean()
        ),
        "you averaged over the whole sequence; only the second copy counts.": per.mean(),
        "you measured the FIRST copy (positions 2..seq_len); the induction loss is on the "
        "second.": per[:, 1:T].mean(),
        "you summed the losses; take the mean.": per[:, T + 1 :].sum(),
        "you summed over positions and averaged over the batch; take the mean over both.": (
            per[:, T + 1 :].sum(-1).mean()
        ),
    }
    _diagnose(value, want, mistakes)
    compare_tensors(value, want, "repeated-half loss", atol=1e-5)
    passed("check_repeated_half_loss")


# ------------------------------------------------------------------ B1. logit difference
@exercise
def check_logit_difference(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``fn(logits [batch, pos, d_vocab], answers [batch, 2]) -> scalar``:
    ``mean_b(logits[b, -1, IO_b] - logits[b, -1, S_b])`` with ``answers[:, 0] = IO``,
    ``answers[:, 1] = S``.
    """
    batch, pos, d_vocab = 5, 7, 30
    gen = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(batch, pos, d_vocab, generator=gen)
    answers = torch.stack([torch.randperm(d_vocab, generator=gen)[:2] for _ in range(batch)])
    got = fn(logits.clone(), answers.clone())
    value = to_numpy(got, "logit difference")
    rows = torch.arange(batch)

    def diff(at: Tensor) -> Tensor:  # [batch, d_vocab] -> [batch]
        return at[rows, answers[:, 0]] - at[rows, answers[:, 1]]

    per_prompt = diff(logits[:, -1])
    if value.shape == (batch,):
        raise CheckError(
            f"the logit difference has shape {value.shape}: return the mean over prompts "
            "(a scalar)."
        )
    if value.shape != ():
        raise CheckError(f"the logit difference has shape {value.shape}, expected a scalar.")
    mistakes = {
        "the sign is flipped: you computed logit(S) - logit(IO); the metric is "
        "logit(IO) - logit(S) (answers[:, 0] is the IO, the correct answer).": -per_prompt.mean(),
        "you read the logits at position 0; the prediction of the next token is at the LAST "
        "position, logits[:, -1].": diff(logits[:, 0]).mean(),
        "you read the logits at position -2; the next-token prediction is at -1.": diff(
            logits[:, -2]
        ).mean(),
        "you averaged the difference over all positions; only the last one predicts the "
        "answer.": diff(logits.mean(1)).mean(),
        "you took a difference of PROBABILITIES; the metric is a difference of logits "
        "(equal to the difference of log-probabilities).": diff(logits[:, -1].softmax(-1)).mean(),
    }
    _diagnose(value, per_prompt.mean(), mistakes)
    compare_tensors(value, per_prompt.mean(), "logit difference", atol=1e-5)
    passed("check_logit_difference")


# ------------------------------------------------------------------ B2. head patching
Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]


def tiny_patching_setup(
    seed: int = 0,
) -> tuple[GPT, Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Metric]:
    """A seeded 2-layer, 4-head GPT, clean/corrupt tokens differing at one position, and a
    logit-difference metric whose clean and corrupt values are far apart."""
    torch.manual_seed(seed)
    cfg = GPTConfig(
        d_vocab=24, n_ctx=16, d_model=32, n_layers=2, n_heads=4, d_mlp=64, init_range=0.3
    )
    model = GPT(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 24, (3, 8), generator=gen)
    corrupt = clean.clone()
    corrupt[:, 2] = (clean[:, 2] + 7) % 24
    answers = torch.tensor([[1, 2], [3, 4], [5, 6]])
    rows = torch.arange(3)

    def metric(logits: Tensor) -> Tensor:
        return (logits[rows, -1, answers[:, 0]] - logits[rows, -1, answers[:, 1]]).mean()

    return model, clean, corrupt, metric


@torch.no_grad()
def _patch_heads(
    model: HookedModel,
    base: Tensor,
    source: Tensor,
    metric: Metric,
    whole_layer: bool = False,
    last_only: bool = False,
) -> Tensor:
    """Raw metric after patching each head's ``hook_z`` from ``source`` into ``base``
    (a plain loop: one forward pass per head)."""
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [hook_name("z", layer) for layer in range(L)]
    _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
    out = torch.empty(L, H)
    for layer in range(L):
        for head in range(H):
            src = cache[names[layer]]

            def hook(z: Tensor, hook: Any, head: int = head, src: Tensor = src) -> Tensor:
                z = z.clone()
                heads = slice(None) if whole_layer else head
                pos = slice(-1, None) if last_only else slice(None)
                z[:, pos, heads] = src[:, pos, heads]
                return z

            with model.hooks(fwd_hooks=[(names[layer], hook)]):
                out[layer, head] = metric(model(base))
    return out


def reference_head_patching(
    model: HookedModel, clean: Tensor, corrupt: Tensor, metric: Metric
) -> Float[Tensor, "layer head"]:
    """Denoising head patching, normalised: the package's
    :func:`~decoding_gpt.patching.activation_patching` (``kind="z"``, all positions)."""
    with torch.no_grad():
        clean_value, corrupt_value = float(metric(model(clean))), float(metric(model(corrupt)))
    raw = activation_patching(model, clean, corrupt, metric, kind="z", by_pos=False)
    return normalized_metric(raw, clean_value, corrupt_value)


@exercise
def check_head_patching(fn: Callable[[nn.Module, Tensor, Tensor, Metric], Tensor]) -> None:
    """``fn(model, clean_tokens, corrupt_tokens, metric) -> [layer, head]``.

    For each head: run the CORRUPT prompt with that head's clean ``hook_z`` (every
    position) patched in, and report ``(patched - corrupt) / (clean - corrupt)``
    (1 = the head alone restores clean behaviour, 0 = no effect).
    """
    model, clean, corrupt, metric = tiny_patching_setup()
    want = reference_head_patching(model, clean, corrupt, metric)
    got = fn(model, clean.clone(), corrupt.clone(), metric)
    value = to_numpy(got, "head patching result")
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if value.shape == (H, L) and L != H:
        raise CheckError(f"result has shape {value.shape}: expected [layer, head] = {(L, H)}.")
    if value.shape != (L, H):
        raise CheckError(f"result has shape {value.shape}, expected [layer, head] = {(L, H)}.")
    with torch.no_grad():
        clean_value, corrupt_value = float(metric(model(clean))), float(metric(model(corrupt)))
    gap = clean_value - corrupt_value
    if model._forward_hooks or any(m._forward_hooks for m in model.modules()):
        raise CheckError(
            "a hook is still attached to the model after your function returned: use "
            "`with model.hooks(fwd_hooks=...)` so it is removed."
        )
    if np.allclose(value, 1.0, atol=1e-4):
        raise CheckError(
            "every head gives 1: the patched run reproduces the clean metric, so you ran the "
            "CLEAN prompt (with clean activations); run the corrupted prompt and patch into it."
        )
    if np.allclose(value, 0.0, atol=1e-4):
        raise CheckError(
            "every head gives 0: the patch changed nothing, so you patched the corrupted run "
            "with its own activations; take the patch from the cache of the CLEAN run."
        )
    if _same(value, to_numpy(want, "reference"), atol=1e-4):
        passed("check_head_patching")
        return
    # wrong: recompute the known mistakes (a loop over heads each) to name the one it is
    noising = _patch_heads(model, clean, corrupt, metric)
    denoising = _patch_heads(model, corrupt, clean, metric)
    mistakes = {
        "you patched CORRUPTED activations into the CLEAN run (noising); this part asks for "
        "denoising: run the corrupt prompt and patch in the clean head output.": (
            (noising - corrupt_value) / gap
        ),
        "not normalised: divide (patched - corrupt) by the clean-corrupt gap, "
        "(clean - corrupt), so 1 means fully restored.": denoising,
        "not normalised by the clean-corrupt gap: you subtracted the corrupt baseline but "
        "did not divide by (clean - corrupt).": denoising - corrupt_value,
        "you divided by the clean metric instead of the clean-corrupt gap: compute "
        "(patched - corrupt) / (clean - corrupt).": denoising / clean_value,
        "you measured from the clean baseline: the numerator is (patched - corrupt), not "
        "(patched - clean).": (denoising - clean_value) / gap,
        "the sign is flipped: divide by (clean - corrupt), not (corrupt - clean).": (
            -(denoising - corrupt_value) / gap
        ),
        "every head of a layer got the same value: you patched the whole hook_z of the "
        "layer; patch one head, z[:, :, head] (hook_z is [batch, pos, head, d_head]).": (
            (_patch_heads(model, corrupt, clean, metric, whole_layer=True) - corrupt_value) / gap
        ),
        "you patched only the last position; patch the head's output at every position.": (
            (_patch_heads(model, corrupt, clean, metric, last_only=True) - corrupt_value) / gap
        ),
    }
    _diagnose(value, want, mistakes, atol=1e-4)
    compare_tensors(value, want, "head patching result", atol=1e-4)
    passed("check_head_patching")
