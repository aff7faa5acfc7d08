"""Checks for the exercises of lecture 06 (attention heads).

Each ``check_*`` runs the student's function on seeded float64 inputs and compares it
with a reference written here (independent of :mod:`decoding_gpt.attention`). Before the
final comparison it tries the known mistakes -- the anti-causal mask "0 for i <= j" is a
bug of earlier course materials -- and names the one that matches.

Exercises 2 and 4 (one head, multi-head attention) are shared with homework 3:
:func:`check_attention_head` and :func:`check_multi_head_attention` live in
:mod:`decoding_gpt.checks.components`, which accepts the lecture's functions and the
homework's classes alike. Exercise 5, :func:`check_cached_attention`, compares the
student's attention with a KV cache against :class:`decoding_gpt.attention.MultiHeadAttention`
run on the whole sequence (and with its own :class:`~decoding_gpt.attention.LayerKVCache`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from decoding_gpt.attention import LayerKVCache, MultiHeadAttention
from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.checks.components import check_attention_head, check_multi_head_attention

__all__ = [
    "check_attention_head",
    "check_cached_attention",
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


# ----------------------------------------------------------------------------- exercise 5
CachedAttention = Callable[..., tuple[Tensor, Tensor, Tensor]]


def _written_out_cached(
    x_new: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    weights: Sequence[Tensor],
    *,
    mask: str = "causal",
    keys: str = "all",
    scale: float | None = None,
) -> Tensor:
    """Attention of the new positions with a cache, right (the defaults) or wrong.

    ``mask``: ``"causal"`` (new query ``i`` reads keys ``j <= n_past + i``),
    ``"top_left"`` (reads ``j <= i``, the square mask not shifted by ``n_past``) or
    ``"none"``; ``keys``: ``"all"`` (past and new), ``"past"`` (the cache only, the new
    keys appended after attending) or ``"new"`` (the cache ignored, the new keys masked
    causally among themselves).
    """
    W_Q, W_K, W_V, W_O = weights
    q, k, v = (torch.einsum("pm,hmd->hpd", x_new, W) for W in (W_Q, W_K, W_V))
    n_past, n_new = k_cache.shape[1], x_new.shape[0]
    if keys == "all":
        k, v = torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1)
    elif keys == "past":
        k, v = k_cache, v_cache
    scores = q @ k.transpose(-2, -1) / (math.sqrt(W_Q.shape[-1]) if scale is None else scale)
    i = torch.arange(n_new)[:, None]
    j = torch.arange(k.shape[1])[None, :]
    causal = 0 if keys == "new" else n_past  # query i is at n_past + i; key j at j (or n_past + j)
    offset = {"causal": causal, "top_left": 0, "none": k.shape[1]}[mask]
    scores = scores.masked_fill(j > i + offset, -math.inf)
    pattern = scores.softmax(-1).nan_to_num(0.0)  # a query with no key reads nothing
    return torch.einsum("hqk,hkd,hdm->qm", pattern, v, W_O)


def _reference_cached(
    x_past: Tensor, x_new: Tensor, weights: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """The package's MultiHeadAttention fed ``x_past`` then ``x_new`` through its cache."""
    n_heads, d_model, d_head = weights[0].shape
    mha = MultiHeadAttention(d_model, n_heads, d_head, use_fast_attention=False).double()
    with torch.no_grad():
        for name, w in zip(("W_Q", "W_K", "W_V", "W_O"), weights, strict=True):
            getattr(mha, name).copy_(w)
        cache = LayerKVCache()
        if len(x_past):
            mha(x_past[None], cache)
        out = mha(x_new[None], cache)[0]
    assert cache.k is not None and cache.v is not None
    return out, cache.k[0], cache.v[0]


def _cache_mistakes(
    x_new: Tensor, k_cache: Tensor, v_cache: Tensor, weights: Sequence[Tensor]
) -> list[Diagnosis]:
    run = lambda **kw: _written_out_cached(x_new, k_cache, v_cache, weights, **kw)  # noqa: E731
    return [
        (
            run(mask="top_left"),
            "the mask is not shifted by the cache: new query i sits at absolute position "
            "n_past + i and may read every key j <= n_past + i. Mask the scores "
            "[n_new, n_past + n_new] with the LAST n_new rows of the full causal mask, "
            "causal_mask(n_past + n_new)[-n_new:]. (F.scaled_dot_product_attention's "
            "is_causal=True aligns the mask top-left, which is wrong here.)",
        ),
        (
            run(mask="none"),
            "the new positions read each other's future: with several new tokens at once "
            "(a prompt, a chunk) the causal mask is still needed; it is only all zeros for "
            "a single new token.",
        ),
        (
            run(keys="past"),
            "the new positions do not attend to themselves (or each other): append their "
            "keys and values to the cache BEFORE computing the scores.",
        ),
        (
            run(keys="new"),
            "the output ignores the cache: the new queries must also attend to the cached "
            "keys and values of the earlier positions (torch.cat([k_cache, k_new], dim=1)).",
        ),
        (
            run(scale=math.sqrt(x_new.shape[-1])),
            "the scores are divided by sqrt(d_model): the scale is 1 / sqrt(d_head).",
        ),
    ]


def _call_cached(
    fn: CachedAttention, x_new: Tensor, k_cache: Tensor, v_cache: Tensor, weights: list[Tensor]
) -> tuple[np.ndarray, Tensor, Tensor]:
    n_past, n_new = k_cache.shape[1], x_new.shape[0]
    where = f"(n_past = {n_past}, n_new = {n_new})"
    try:
        result = fn(x_new.clone(), k_cache.clone(), v_cache.clone(), *(w.clone() for w in weights))
    except RuntimeError as err:
        raise CheckError(
            f"attend_with_cache raised RuntimeError {where}: {err}. Shapes: the caches "
            "grow along the position axis (dim=1) to [n_heads, n_past + n_new, d_head]; the "
            "scores are [n_heads, n_new, n_past + n_new] (the new queries against the past "
            "AND new keys), so the mask is [n_new, n_past + n_new] too."
        ) from err
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise CheckError("return a triple (out, k_cache, v_cache), the caches updated.")
    out, k_all, v_all = result
    want_shape = (k_cache.shape[0], n_past + n_new, k_cache.shape[2])
    for name, cache in (("k_cache", k_all), ("v_cache", v_all)):
        shape = tuple(to_numpy(cache, name).shape)
        if shape != want_shape:
            raise CheckError(
                f"the returned {name} has shape {shape} {where}, expected {want_shape} = "
                "[n_heads, n_past + n_new, d_head]: concatenate the new positions to the "
                "cache along the position axis (dim=1) and return it."
            )
    return to_numpy(out, "out"), torch.as_tensor(k_all), torch.as_tensor(v_all)


@exercise
def check_cached_attention(fn: CachedAttention) -> None:
    """``fn(x_new, k_cache, v_cache, W_Q, W_K, W_V, W_O) -> (out, k_cache, v_cache)``.

    ``x_new: [n_new, d_model]``, caches ``[n_heads, n_past, d_head]`` (``n_past`` may be 0),
    TransformerLens weight shapes. Compared with the package's ``MultiHeadAttention`` on
    the whole sequence: a prompt from an empty cache, a chunk of 4 after 3 cached
    positions, then token-by-token decoding that feeds back the caches ``fn`` returns.
    """
    gen = torch.Generator().manual_seed(11)
    n_heads, d_model, d_head, n = 3, 12, 4, 7
    shapes = [(n_heads, d_model, d_head)] * 3 + [(n_heads, d_head, d_model)]
    weights = [torch.randn(*s, generator=gen, dtype=torch.float64) * 0.6 for s in shapes]
    x = torch.randn(n, d_model, generator=gen, dtype=torch.float64)
    full, k_full, v_full = _reference_cached(x[:0], x, weights)
    empty = torch.zeros(n_heads, 0, d_head, dtype=torch.float64)
    for n_past, n_new in [(0, 4), (3, 4)]:
        k_cache, v_cache = k_full[:, :n_past], v_full[:, :n_past]
        x_new = x[n_past : n_past + n_new]
        got, k_all, v_all = _call_cached(fn, x_new, k_cache, v_cache, weights)
        want = full[n_past : n_past + n_new]
        if got.shape == tuple(want.shape) and not np.allclose(got, want.numpy(), atol=1e-8):
            _diagnose(got, _cache_mistakes(x_new, k_cache, v_cache, weights))
        where = f"(n_past = {n_past}, n_new = {n_new})"
        compare_tensors(got, want, f"out {where}", atol=1e-8, hint="Compare with a full pass.")
        for name, cache, ref in (("k_cache", k_all, k_full), ("v_cache", v_all, v_full)):
            compare_tensors(
                cache, ref[:, : n_past + n_new], f"the returned {name} {where}", atol=1e-8,
                hint=f"It must hold the old entries, then x_new @ W_{name[0].upper()} "
                "of the new positions, in order.",
            )  # fmt: skip
    k_cache, v_cache = empty, empty
    for t in range(n):  # decoding: one token at a time, on the caches fn returned
        got, k_cache, v_cache = _call_cached(fn, x[t : t + 1], k_cache, v_cache, weights)
        compare_tensors(
            got, full[t : t + 1], f"out at step {t} of token-by-token decoding", atol=1e-8,
            hint="Each step must equal the full recomputation at that position.",
        )  # fmt: skip
    passed("check_cached_attention")
