"""Checks for the exercises of lecture 06 (attention heads).

Each ``check_*`` runs the student's function on seeded float64 inputs and compares it
with a reference written here (independent of :mod:`decoding_gpt.attention`). Before the
final comparison it tries the known mistakes -- the anti-causal mask "0 for i <= j" is a
bug of earlier course materials -- and names the one that matches.

Exercises 2 and 4 (one head, multi-head attention) are shared with homework 3:
:func:`check_attention_head` and :func:`check_multi_head_attention` live in
:mod:`decoding_gpt.checks.components`, which accepts the lecture's functions and the
homework's classes alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.checks.components import check_attention_head, check_multi_head_attention

__all__ = [
    "check_attention_head",
    "check_causal_mask",
    "check_circuits",
    "check_multi_head_attention",
]

Diagnosis = tuple[Tensor, str]  # (what a known mistake would return, what to tell the student)


def _diagnose(got: np.ndarray, mistakes: Sequence[Diagnosis], atol: float = 1e-8) -> None:
    """Raise the message of the first known mistake whose output equals ``got``."""
    for wrong, message in mistakes:
        want = to_numpy(wrong)
        if got.shape == want.shape and np.allclose(got, want, atol=atol, rtol=0):
            raise CheckError(message)


def _weights(gen: torch.Generator, d_model: int, d_head: int) -> list[Tensor]:
    """Seeded ``W_Q, W_K, W_V: [d_model, d_head]`` and ``W_O: [d_head, d_model]``."""
    shapes = [(d_model, d_head)] * 3 + [(d_head, d_model)]
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]


# ----------------------------------------------------------------------------- exercise 1
@exercise
def check_causal_mask(fn: Callable[[int], Tensor]) -> None:
    """``fn(n) -> M``: additive ``[n, n]`` mask, ``0`` where ``j <= i``, ``-inf`` where ``j > i``.

    Large finite negatives (e.g. ``-1e9``) in place of ``-inf`` are accepted.
    """
    for n in (4, 7, 1):
        result = fn(n)
        if isinstance(result, Tensor) and result.dtype == torch.bool:
            raise CheckError(
                "the mask is boolean: return the ADDITIVE mask (0 where allowed, -inf where "
                "masked), e.g. torch.zeros(n, n).masked_fill(future, float('-inf'))."
            )
        got = to_numpy(result, "mask")
        if got.shape != (n, n):
            raise CheckError(
                f"mask for n={n} has shape {got.shape}, expected ({n}, {n}): one row per "
                "query position i, one column per key position j."
            )
        got = np.where(got <= -1e4, -np.inf, got)
        allowed = np.tril(np.ones((n, n), dtype=bool))  # j <= i
        want = np.where(allowed, 0.0, -np.inf)
        if n > 1 and np.array_equal(got, want.T):
            raise CheckError(
                "the mask is anti-causal: it is 0 for i <= j, so query i reads keys j > i "
                "(the FUTURE) and cannot read the past. The causal mask is 0 for j <= i and "
                "-inf for j > i: torch.tril, not torch.triu."
            )
        if np.isinf(np.diag(got)).all():
            raise CheckError(
                "the diagonal is masked: a query must attend to itself (j = i). With the "
                "diagonal masked, row 0 is all -inf and its softmax is NaN (0 / 0). Use "
                "tril(..., diagonal=0), i.e. mask only j > i."
            )
        if n > 1 and set(np.unique(got)) == {0.0, 1.0}:
            raise CheckError(
                "the mask holds 0s and 1s: that is a multiplicative mask. Here M is ADDED to "
                "the scores before the softmax, so masked entries must be -inf (exp(-inf) = 0)."
            )
        if n > 1 and np.isfinite(got).all():
            raise CheckError(
                "the mask has no -inf entries: future keys (j > i) must get -inf so that the "
                "softmax gives them exactly zero weight."
            )
        wrong = (np.isinf(got) != np.isinf(want)) | (np.isfinite(got) & (got != 0))
        if wrong.any():
            i, j = (int(t) for t in np.argwhere(wrong)[0])
            raise CheckError(
                f"mask for n={n} has {int(wrong.sum())} wrong entries, first at (i={i}, j={j}): "
                f"got {got[i, j]}, expected {want[i, j]}. M[i, j] = 0 if j <= i else -inf."
            )
    passed("check_causal_mask")


# ----------------------------------------------------------------------------- exercise 3
@exercise
def check_circuits(fn: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """``fn(W_Q, W_K, W_V, W_O) -> (W_QK, W_OV)``, both ``[d_model, d_model]``.

    ``W_QK = W_Q W_K^T`` (score ``x_i W_QK x_j^T``), ``W_OV = W_V W_O`` (write ``x_j W_OV``).
    """
    gen = torch.Generator().manual_seed(7)
    d_model, d_head = 8, 3
    W_Q, W_K, W_V, W_O = _weights(gen, d_model, d_head)
    result = fn(W_Q.clone(), W_K.clone(), W_V.clone(), W_O.clone())
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise CheckError("return a pair (W_QK, W_OV).")
    qk, ov = to_numpy(result[0], "W_QK"), to_numpy(result[1], "W_OV")
    want_qk, want_ov = W_Q @ W_K.T, W_V @ W_O
    square = (d_model, d_model)
    if qk.shape != square:
        raise CheckError(
            f"W_QK has shape {qk.shape}, expected {square}: W_Q [d_model, d_head] @ "
            "W_K^T [d_head, d_model]. (W_Q^T W_K is the d_head x d_head product.)"
        )
    if ov.shape != square:
        raise CheckError(
            f"W_OV has shape {ov.shape}, expected {square}: W_V [d_model, d_head] @ "
            "W_O [d_head, d_model] (value first, then output; W_O W_V is d_head x d_head)."
        )
    _diagnose(
        qk,
        [
            (
                want_qk.T,
                "W_QK is transposed (W_K W_Q^T): rows must index the query's residual "
                "direction and columns the key's, score(i, j) = x_i W_Q W_K^T x_j^T.",
            ),
            (
                want_qk / math.sqrt(d_head),
                "W_QK includes the 1/sqrt(d_head): the circuit is defined as W_Q W_K^T; the "
                "scale is applied to the scores, not folded into the circuit.",
            ),
        ],
    )
    _diagnose(
        ov,
        [
            (
                want_ov.T,
                "W_OV is transposed (W_O^T W_V^T): with row vectors a key writes x_j W_V W_O, "
                "so W_OV = W_V @ W_O.",
            )
        ],
    )
    compare_tensors(qk, want_qk, "W_QK", atol=1e-10, hint="W_QK = W_Q @ W_K.T.")
    compare_tensors(ov, want_ov, "W_OV", atol=1e-10, hint="W_OV = W_V @ W_O.")
    passed("check_circuits")
