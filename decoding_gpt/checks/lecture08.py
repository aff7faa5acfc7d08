"""Checks for the exercises of lecture 08 (the transformer).

Each ``check_*`` runs the student's function on seeded inputs and compares it with an
independent reference. When the answer is wrong, the check first compares it with the
outputs of the common mistakes and names the one that matches; only then does it fall
back to a generic value comparison.

Exercises 1-3 (LayerNorm, the pre-LN block, the next-token loss) are shared with
homework 3: :func:`check_layer_norm`, :func:`check_pre_ln_block` and
:func:`check_next_token_loss` live in :mod:`decoding_gpt.checks.components`. Exercise 4,
:func:`check_top_p_filter`, is here (reference: a brute-force nucleus filter).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.checks.components import (
    check_layer_norm,
    check_next_token_loss,
    check_pre_ln_block,
)

__all__ = [
    "check_layer_norm",
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
