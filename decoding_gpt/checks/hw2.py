"""Checks for homework 2 (geometry of superposition).

Independent references: closed forms (``E[u . v] = 0`` and ``Var[u . v] = 1/d`` for
independent uniform unit vectors in R^d; the Welch bound
``sqrt((n - d) / (d (n - 1)))``), ``torch.linalg`` for Gram matrices and a brute-force
double loop for the maximum overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy

__all__ = [
    "check_max_overlap",
    "check_orthonormal_set",
    "check_random_unit_vectors",
    "check_welch_bound",
]


def _tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    return value.detach().to(torch.float64)


# ------------------------------------------------------------------ 1. random unit vectors
@exercise
def check_random_unit_vectors(fn: Callable[[int, int, torch.Generator], torch.Tensor]) -> None:
    """``fn(n, d, generator) -> V [n, d]``: ``n`` independent uniform unit vectors.

    Statistical test with tolerances of about 5 standard errors: for ``n = 400`` vectors
    in ``d = 64`` the ``n (n - 1) / 2`` off-diagonal dot products must have mean within
    ``5 / sqrt(#pairs * d)`` of 0 and variance within 15% of ``1/d``; the same generator
    seed must give the same vectors and a different seed different ones.
    """
    n, d = 400, 64
    v = _tensor(fn(n, d, torch.Generator().manual_seed(0)), "V")
    if tuple(v.shape) != (n, d):
        hint = " (rows are vectors: use shape (n, d))" if tuple(v.shape) == (d, n) else ""
        raise CheckError(f"V has shape {tuple(v.shape)}, expected {(n, d)}{hint}.")
    if not torch.isfinite(v).all():
        raise CheckError("V contains NaN/inf.")
    norms = v.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-5):
        col_norms = v.norm(dim=0)
        if torch.allclose(col_norms, torch.ones_like(col_norms), atol=1e-5):
            raise CheckError(
                "the COLUMNS of V have norm 1, not the rows: normalise along dim=-1 "
                "(each vector is a row)."
            )
        raise CheckError(
            f"the rows of V have norms between {norms.min():.3f} and {norms.max():.3f}, "
            "not 1: divide each row by its norm (F.normalize(x, dim=-1))."
        )
    again = _tensor(fn(n, d, torch.Generator().manual_seed(0)), "V")
    if not torch.equal(again, v):
        raise CheckError(
            "the same generator seed gave different vectors: draw with "
            "torch.randn(..., generator=generator)."
        )
    if torch.equal(_tensor(fn(n, d, torch.Generator().manual_seed(1)), "V"), v):
        raise CheckError("a different seed gave the same vectors: use the generator you are given.")
    gram = v @ v.T
    off = gram[~torch.eye(n, dtype=torch.bool)]
    n_pairs = n * (n - 1) / 2
    mean, var = off.mean().item(), off.var().item()
    if (off.abs() > 1 - 1e-4).float().mean() > 0.01:  # float32 rounding
        raise CheckError(
            "many pairs of vectors are parallel (|u . v| = 1): the vectors are not independent."
        )
    if abs(mean) > 5 / math.sqrt(n_pairs * d):
        raise CheckError(
            f"the mean dot product is {mean:.3f}, expected about 0: uniform directions are "
            "symmetric (v and -v are equally likely). torch.rand is uniform on [0, 1), "
            "so all its entries are positive; draw from a Gaussian (torch.randn)."
        )
    if abs(var * d - 1) > 0.15:
        raise CheckError(
            f"the dot products have variance {var:.4f}, expected about 1/d = {1 / d:.4f}."
        )
    passed("check_random_unit_vectors")


# ------------------------------------------------------------------ 2. orthonormal set
@exercise
def check_orthonormal_set(fn: Callable[[int, int, torch.Generator], torch.Tensor]) -> None:
    """``fn(n, d, generator) -> Q [n, d]`` with orthonormal rows (``Q Q^T = I_n``), n <= d.

    Also: random (two seeds differ), and ``n > d`` raises ``ValueError`` (no such set).
    """
    for n, d in [(5, 8), (8, 8), (1, 3)]:
        q = _tensor(fn(n, d, torch.Generator().manual_seed(0)), "Q")
        if tuple(q.shape) != (n, d):
            hint = " (rows are the vectors: transpose?)" if tuple(q.shape) == (d, n) else ""
            raise CheckError(
                f"Q has shape {tuple(q.shape)} for n={n}, d={d}, expected {(n, d)}{hint}."
            )
        gram = q @ q.T
        diag = gram.diagonal()
        if not torch.allclose(diag, torch.ones_like(diag), atol=1e-5):
            raise CheckError(
                f"the rows of Q have squared norms {diag.numpy().round(3).tolist()}, not 1: "
                "orthoGONAL is not orthoNORMAL; normalise each vector."
            )
        compare_tensors(
            gram,
            torch.eye(n),
            f"Q Q^T (n={n}, d={d})",
            atol=1e-5,
            hint="The Gram matrix of an orthonormal set is the identity: the vectors are "
            "not mutually orthogonal (Gram-Schmidt or torch.linalg.qr).",
        )
    q0 = _tensor(fn(4, 6, torch.Generator().manual_seed(0)), "Q")
    q1 = _tensor(fn(4, 6, torch.Generator().manual_seed(1)), "Q")
    if torch.allclose(q0.abs(), q1.abs()):
        raise CheckError(
            "two seeds gave the same set (up to signs): the set should be random (QR of a "
            "Gaussian matrix), not the standard basis."
        )
    try:
        fn(9, 4, torch.Generator().manual_seed(0))
    except ValueError:
        pass
    else:
        raise CheckError(
            "n=9 > d=4 must raise ValueError: R^4 holds at most 4 orthonormal vectors."
        )
    passed("check_orthonormal_set")


# ------------------------------------------------------------------ 3. welch bound
def _welch(n: int, d: int) -> float:
    return 0.0 if n <= d else math.sqrt((n - d) / (d * (n - 1)))


@exercise
def check_welch_bound(fn: Callable[[int, int], float]) -> None:
    """``fn(n, d)``: the Welch bound ``sqrt((n - d) / (d (n - 1)))``, 0 when ``n <= d``."""
    for n, d in [(10, 3), (100, 10), (1000, 64), (7, 7), (3, 10), (2, 1)]:
        got = fn(n, d)
        value = float(to_numpy(got, f"welch_bound({n}, {d})"))
        want = _welch(n, d)
        if math.isnan(value):
            raise CheckError(
                f"welch_bound({n}, {d}) is NaN: for n <= d the bound is 0 (an orthonormal set "
                "has zero overlap); the square root of a negative number is undefined."
            )
        if math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        candidates = [
            ((n - d) / (d * (n - 1)), "you forgot the square root."),
            (math.sqrt(abs(n - d) / (d * (n - 1))), "for n <= d the bound is 0."),
            (math.sqrt(abs(d - n) / (n * max(d - 1, 1))), "n and d are swapped."),
            (math.sqrt(abs(n - d) / (d * (n + 1))), "the denominator is d (n - 1)."),
        ]
        hint = next(
            (h for c, h in candidates if math.isclose(value, c, rel_tol=1e-6)),
            "expected sqrt((n - d) / (d (n - 1))) for n > d, else 0.",
        )
        raise CheckError(f"welch_bound({n}, {d}) = {value:.6g}, expected {want:.6g}: {hint}")
    passed("check_welch_bound")


# ------------------------------------------------------------------ 4. max overlap
@exercise
def check_max_overlap(fn: Callable[[torch.Tensor], float]) -> None:
    """``fn(V) -> max_{i != j} |v_i . v_j| / (|v_i| |v_j|)`` (the coherence of the set)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(12, 5, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 3, 12)[:, None]
    v[3] = -2.0 * v[7] + 1e-3 * v[3]  # a nearly anti-parallel pair: the max is |negative dot|
    unit = v / v.norm(dim=1, keepdim=True)
    want = max(abs(float(unit[i] @ unit[j])) for i in range(12) for j in range(12) if i != j)
    got = float(to_numpy(fn(v.clone()), "max overlap"))
    if math.isclose(got, 1.0, abs_tol=1e-9):
        raise CheckError(
            "max overlap is 1: you included the diagonal (v_i . v_i = 1); exclude i == j."
        )
    if got > 1 + 1e-9:
        raise CheckError(
            f"max overlap is {got:.3f} > 1: normalise the vectors first (cosine, not dot)."
        )
    if not math.isclose(got, want, abs_tol=1e-6):
        signed = (unit @ unit.T).fill_diagonal_(-2).max().item()
        hint = (
            " Take the absolute value: v and -v overlap as much as v and v."
            if math.isclose(got, signed, abs_tol=1e-6)
            else ""
        )
        raise CheckError(f"max overlap is {got:.6f}, expected {want:.6f}.{hint}")
    passed("check_max_overlap")
