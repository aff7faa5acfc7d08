"""Checks for the exercises of lecture 06 (attention heads).

Each ``check_*`` runs the student's function on seeded float64 inputs and compares it
with a reference written here from ``torch.nn.functional.scaled_dot_product_attention``
(independent of :mod:`decoding_gpt.attention`). Before the final comparison it tries the
known mistakes -- several are bugs of earlier course materials (an anti-causal mask
"0 for i <= j", the value term ``x_q V``) -- and names the one that matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, passed, to_numpy

__all__ = ["check_attention_head", "check_causal_mask", "check_circuits", "check_multi_head"]

Diagnosis = tuple[Tensor, str]  # (what a known mistake would return, what to tell the student)


def _diagnose(got: np.ndarray, mistakes: Sequence[Diagnosis], atol: float = 1e-8) -> None:
    """Raise the message of the first known mistake whose output equals ``got``."""
    for wrong, message in mistakes:
        want = to_numpy(wrong)
        if got.shape == want.shape and np.allclose(got, want, atol=atol, rtol=0):
            raise CheckError(message)


def _weights(
    gen: torch.Generator, d_model: int, d_head: int, n_heads: int | None = None
) -> list[Tensor]:
    """Seeded ``W_Q, W_K, W_V: [(h,) d_model, d_head]`` and ``W_O: [(h,) d_head, d_model]``."""
    lead = () if n_heads is None else (n_heads,)
    shapes = [(d_model, d_head)] * 3 + [(d_head, d_model)]
    return [torch.randn(*lead, *s, generator=gen, dtype=torch.float64) for s in shapes]


def _attend(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


# ----------------------------------------------------------------------------- exercise 1
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


# ----------------------------------------------------------------------------- exercise 2
def check_attention_head(
    fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
) -> None:
    """``fn(x, W_Q, W_K, W_V, W_O) -> out``: one causal head on ``x: [pos, d_model]``.

    ``out = softmax(x W_Q (x W_K)^T / sqrt(d_head) + M) x W_V W_O``, shape ``[pos, d_model]``.
    """
    gen = torch.Generator().manual_seed(6)
    d_model, d_head, n = 12, 3, 6
    x = torch.randn(n, d_model, generator=gen, dtype=torch.float64)
    W_Q, W_K, W_V, W_O = _weights(gen, d_model, d_head)
    W_Q, W_K = 0.6 * W_Q, 0.6 * W_K  # scores of order 1-5: the softmax is far from uniform
    q, k, v = x @ W_Q, x @ W_K, x @ W_V
    want = _attend(q, k, v) @ W_O
    got = to_numpy(fn(x.clone(), W_Q.clone(), W_K.clone(), W_V.clone(), W_O.clone()), "out")
    if got.shape != tuple(want.shape):
        raise CheckError(
            f"out has shape {got.shape}, expected {tuple(want.shape)} = [pos, d_model]: "
            "pattern [pos, pos] @ values [pos, d_head] @ W_O [d_head, d_model]."
        )
    causal = torch.ones(n, n).tril().bool()
    raw = q @ k.T / math.sqrt(d_head)
    _diagnose(
        got,
        [
            (
                v @ W_O,
                "out[i] = x_i W_V W_O: the value term uses the QUERY position (x_q V). Each "
                "row of the pattern sums to 1, so this ignores every other position and moves "
                "no information. Values come from the KEY positions: pattern @ (x @ W_V).",
            ),
            (
                _attend(q, k, v, causal=False) @ W_O,
                "out matches attention WITHOUT the causal mask: position i reads later "
                "positions. Add M (0 for j <= i, -inf for j > i) to the scores before softmax.",
            ),
            (
                _attend(q, k, v, scale=1.0) @ W_O,
                "the scores are not scaled: divide q k^T by sqrt(d_head) before the softmax.",
            ),
            (
                _attend(q, k, v, scale=1 / math.sqrt(d_model)) @ W_O,
                "the scores are divided by sqrt(d_model); the scale is sqrt(d_head), the "
                "dimension of q and k.",
            ),
            (
                raw.masked_fill(~causal, -math.inf).softmax(dim=-2).nan_to_num() @ v @ W_O,
                "the softmax runs over the query axis (dim=-2): each ROW (one query, all "
                "keys) must sum to 1, so use softmax(dim=-1).",
            ),
            (
                (raw.softmax(dim=-1) * causal) @ v @ W_O,
                "the mask is applied AFTER the softmax (zeroing future weights): the rows no "
                "longer sum to 1. Add -inf to the scores BEFORE the softmax instead.",
            ),
        ],
    )
    compare_tensors(
        got,
        want,
        "out",
        atol=1e-8,
        hint="out = softmax(q k^T / sqrt(d_head) + M) v W_O with q, k, v = x W_Q, x W_K, x W_V.",
    )
    passed("check_attention_head")


# ----------------------------------------------------------------------------- exercise 3
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


# ----------------------------------------------------------------------------- exercise 4
def check_multi_head(fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """``fn(x, W_Q, W_K, W_V, W_O) -> out`` for ``x: [batch, pos, d_model]``.

    Per-head weights ``W_Q, W_K, W_V: [n_heads, d_model, d_head]``, ``W_O: [n_heads,
    d_head, d_model]`` (no biases); ``out = sum_h head_h(x)``, i.e. the concatenated head
    outputs ``z`` times the stacked ``W_O``.
    """
    gen = torch.Generator().manual_seed(8)
    batch, n, d_model, n_heads, d_head = 2, 5, 12, 3, 4  # h * d_head = d_model
    x = torch.randn(batch, n, d_model, generator=gen, dtype=torch.float64)
    W_Q, W_K, W_V, W_O = _weights(gen, d_model, d_head, n_heads)
    W_Q, W_K = 0.5 * W_Q, 0.5 * W_K
    q, k, v = (torch.einsum("bpm,hmd->bhpd", x, W) for W in (W_Q, W_K, W_V))
    z = _attend(q, k, v)  # [batch, head, pos, d_head]
    per_head = torch.einsum("bhpd,hdm->bhpm", z, W_O)  # each head's output
    want = per_head.sum(1)
    args = [t.clone() for t in (x, W_Q, W_K, W_V, W_O)]
    got = to_numpy(fn(*args), "out")
    if got.shape != tuple(want.shape):
        raise CheckError(
            f"out has shape {got.shape}, expected {tuple(want.shape)} = [batch, pos, "
            "d_model]: the heads' outputs are summed, not stacked."
        )
    _diagnose(
        got,
        [
            (
                per_head.mean(1),
                "out is the MEAN of the heads' outputs: multi-head attention SUMS them "
                "(the same as concatenating z and multiplying by the stacked W_O).",
            ),
            (
                per_head[:, 0],
                "out equals head 0 alone: loop over (or broadcast across) all n_heads heads "
                "and sum their outputs.",
            ),
            (
                torch.einsum("bhpd,hdm->bpm", _attend(q, k, v, causal=False), W_O),
                "out matches attention without the causal mask: each head must mask j > i.",
            ),
            (
                torch.einsum("bhpd,hdm->bpm", _attend(q, k, v, scale=d_model**-0.5), W_O),
                "the scores are divided by sqrt(d_model); each head scales by sqrt(d_head).",
            ),
            (
                z.reshape(batch, n, n_heads * d_head) @ W_O.reshape(n_heads * d_head, d_model),
                "z [batch, head, pos, d_head] was reshaped to [batch, pos, head * d_head] "
                "without moving the head axis: transpose(1, 2) before flattening, or the "
                "positions get mixed up.",
            ),
        ],
    )
    compare_tensors(
        got, want, "out", atol=1e-8, hint="out = sum over h of softmax(...)_h (x W_V[h]) W_O[h]."
    )
    passed("check_multi_head")
