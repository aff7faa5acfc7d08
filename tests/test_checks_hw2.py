"""Homework 2 checks: the reference passes, known-wrong implementations are rejected."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import CheckError, hw2
from decoding_gpt.superposition import max_overlap, random_unit_vectors, welch_bound


# ------------------------------------------------------------------ random unit vectors
def test_random_unit_vectors_accepts_reference():
    hw2.check_random_unit_vectors(random_unit_vectors)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, d, g: torch.randn(n, d, generator=g), "not 1: divide each row"),
        (lambda n, d, g: F.normalize(torch.randn(n, d, generator=g), dim=0), "COLUMNS"),
        (lambda n, d, g: F.normalize(torch.rand(n, d, generator=g), dim=-1), "torch.rand"),
        (lambda n, d, g: random_unit_vectors(d, n, g), "shape"),
        (lambda n, d, g: random_unit_vectors(n, d), "same generator seed"),
        (
            lambda n, d, g: random_unit_vectors(n, d, torch.Generator().manual_seed(5)),
            "different seed",
        ),
        (lambda n, d, g: random_unit_vectors(1, d, g).expand(n, d), "parallel"),
        (
            lambda n, d, g: F.normalize(torch.randn(n, d // 4, generator=g).repeat(1, 4), dim=-1),
            "variance",
        ),
    ],
)
def test_random_unit_vectors_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw2.check_random_unit_vectors(wrong)


# ------------------------------------------------------------------ orthonormal set
def _qr_rows(n, d, g):
    if n > d:
        raise ValueError(f"at most {d} orthonormal vectors in R^{d}")
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=g))  # [d, n], orthonormal columns
    return q.T


def _gram_schmidt(n, d, g, normalise=True):
    if n > d:
        raise ValueError("n > d")
    out = []
    for v in torch.randn(n, d, generator=g, dtype=torch.float64):
        for u in out:
            v = v - (v @ u) / (u @ u) * u
        out.append(v / v.norm() if normalise else v)
    return torch.stack(out)


def test_orthonormal_set_accepts_qr_and_gram_schmidt():
    hw2.check_orthonormal_set(_qr_rows)
    hw2.check_orthonormal_set(_gram_schmidt)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, d, g: _qr_rows(n, d, g).T, "transpose"),
        (lambda n, d, g: _gram_schmidt(n, d, g, normalise=False), "orthoNORMAL"),
        (lambda n, d, g: random_unit_vectors(n, d, g), "not mutually orthogonal"),
        (lambda n, d, g: torch.eye(d)[:n], "standard basis"),
        (
            lambda n, d, g: torch.linalg.qr(torch.randn(max(n, d), d, generator=g))[0][:n],
            "ValueError",
        ),
        (lambda n, d, g: torch.linalg.qr(torch.randn(n, d, generator=g))[0], "shape"),
    ],
)
def test_orthonormal_set_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw2.check_orthonormal_set(wrong)


# ------------------------------------------------------------------ welch bound
def test_welch_bound_accepts_reference():
    hw2.check_welch_bound(welch_bound)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, d: (n - d) / (d * (n - 1)) if n > d else 0.0, "square root"),
        (lambda n, d: math.sqrt(abs(n - d) / (d * (n - 1))), "n <= d the bound is 0"),
        (lambda n, d: math.sqrt(max(n - d, 0) / (d * (n + 1))), "denominator"),
        (lambda n, d: float("nan") if n <= d else welch_bound(n, d), "NaN"),
        (lambda n, d: torch.tensor(n - d).float().div(d * (n - 1)).sqrt(), "NaN"),
        (lambda n, d: None, "return"),
    ],
)
def test_welch_bound_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw2.check_welch_bound(wrong)


# ------------------------------------------------------------------ max overlap
def _gram(v):
    u = F.normalize(v, dim=-1)
    return u @ u.T


@pytest.mark.parametrize("fn", [max_overlap, lambda v: _gram(v).fill_diagonal_(0).abs().max()])
def test_max_overlap_accepts_reference(fn):
    hw2.check_max_overlap(fn)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda v: _gram(v).abs().max(), "diagonal"),
        (lambda v: (v @ v.T).fill_diagonal_(0).abs().max(), "normalise"),
        (lambda v: _gram(v).fill_diagonal_(-2).max(), "absolute value"),
        (lambda v: _gram(v).fill_diagonal_(0).abs().mean(), "expected"),
    ],
)
def test_max_overlap_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw2.check_max_overlap(wrong)
