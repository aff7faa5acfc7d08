"""Exercise checks of lecture 14: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (unsquared distances, the diagonal
pairs, no ReLU, importance ignored, sparsity used as the probability of being on, one
coin per row, the unnormalised W_i); the test pins the part of the message that names
the mistake. A stub of the student edition is refused as not attempted.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture14 as l14
from decoding_gpt.superposition import feature_dimensionality, generate_batch, toy_model_loss


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


@pytest.mark.parametrize(
    "check",
    [
        l14.check_jl_distortion,
        l14.check_sparse_features,
        l14.check_toy_model_loss,
        l14.check_feature_dimensionality,
    ],
)
def test_stub_is_not_attempted(check):
    with pytest.raises(NotAttempted, match="not attempted"):
        check(_stub)


# ------------------------------------------------------------------------ jl distortion
def _pairs(x, y, power=2):
    return torch.pdist(y).pow(power) / torch.pdist(x).pow(power)


def _jl_loop(x, y):
    n = len(x)
    return max(
        abs(float((y[i] - y[j]).pow(2).sum() / (x[i] - x[j]).pow(2).sum()) - 1)
        for i in range(n)
        for j in range(i + 1, n)
    )


def test_jl_distortion_accepts_a_loop():
    l14.check_jl_distortion(_jl_loop)
    l14.check_jl_distortion(lambda x, y: (_pairs(x, y) - 1).abs().max())


def _with_diagonal(x, y):
    ratio = torch.cdist(y, y).pow(2) / torch.cdist(x, x).pow(2)
    return (ratio - 1).abs().max()


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, y: (_pairs(x, y, 1) - 1).abs().max(), "SQUARED"),
        (lambda x, y: (_pairs(x, y) - 1).max(), "absolute value"),
        (lambda x, y: (_pairs(x, y) - 1).abs().mean(), "mean distortion"),
        (lambda x, y: (1 / _pairs(x, y) - 1).abs().max(), "upside down"),
        (_with_diagonal, "NaN"),
        (lambda x, y: None, "return"),
    ],
)
def test_jl_distortion_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l14.check_jl_distortion(wrong)


# ---------------------------------------------------------------------- sparse features
def _sparse(batch, n, p, gen, on_prob=None, values=None, per_row=False):
    shape = (batch, len(p), n)
    vals = torch.rand(shape, generator=gen) if values is None else values(shape, gen)
    mask_shape = (batch, len(p), 1) if per_row else shape
    prob = p if on_prob is None else on_prob(p)
    on = torch.rand(mask_shape, generator=gen) < prob[None, :, None]
    return vals * on


def test_sparse_features_accepts_reference():
    l14.check_sparse_features(generate_batch)
    l14.check_sparse_features(_sparse)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda b, n, p, g: _sparse(b, n, p, g, on_prob=lambda p: 1 - p), "1 - p"),
        (lambda b, n, p, g: _sparse(b, n, p, g, values=lambda s, g: torch.ones(s)), "constant"),
        (lambda b, n, p, g: _sparse(b, n, p, g, per_row=True), "own coin"),
        (lambda b, n, p, g: _sparse(b, n, p, None), "same generator seed"),
        (
            lambda b, n, p, g: _sparse(b, n, p, g, values=lambda s, g: torch.randn(s, generator=g)),
            r"\[0, 1\]",
        ),
        (lambda b, n, p, g: _sparse(b, n, p, g).transpose(1, 2), "shape"),
        (lambda b, n, p, g: _sparse(b, n, p, g, on_prob=lambda p: p.mean().expand(3)), "expected"),
    ],
)
def test_sparse_features_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l14.check_sparse_features(wrong)


# ---------------------------------------------------------------------- toy model loss
def _loss_loop(w, b, x, imp):
    losses = []
    for i in range(w.shape[0]):
        x_hat = torch.relu(x[:, i] @ w[i].T @ w[i] + b[i])  # [batch, feature]
        losses.append(((x[:, i] - x_hat) ** 2 * imp[i]).sum(-1).mean())
    return torch.stack(losses)


def _forward(w, b, x):
    return torch.einsum("ihf,bih->bif", w, torch.einsum("ihf,bif->bih", w, x)) + b


def test_toy_model_loss_accepts_reference_and_loop():
    l14.check_toy_model_loss(toy_model_loss)
    l14.check_toy_model_loss(_loss_loop)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda w, b, x, i: ((x - _forward(w, b, x)).pow(2) * i).sum(-1).mean(0), "no ReLU"),
        (
            lambda w, b, x, i: ((x - _forward(w, 0 * b, x).relu()).pow(2) * i).sum(-1).mean(0),
            "bias",
        ),
        (lambda w, b, x, i: ((x - _forward(w, b, x).relu()).pow(2)).sum(-1).mean(0), "importances"),
        (
            lambda w, b, x, i: ((i * (x - _forward(w, b, x).relu())).pow(2)).sum(-1).mean(0),
            "inside the square",
        ),
        (
            lambda w, b, x, i: ((x - _forward(w, b, x).relu()).pow(2) * i).mean(-1).mean(0),
            "SUMS over the features",
        ),
        (
            lambda w, b, x, i: ((x - _forward(w, b, x).relu()).pow(2) * i).sum(-1).sum(0),
            "average over the batch",
        ),
        (
            lambda w, b, x, i: ((x - _forward(w, b, x).relu()).pow(2) * i).sum(-1).mean(),
            "PER INSTANCE",
        ),
        (lambda w, b, x, i: toy_model_loss(w, b, x, i).detach(), "no gradient"),
    ],
)
def test_toy_model_loss_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l14.check_toy_model_loss(wrong)


# ---------------------------------------------------------------- feature dimensionality
def _dim_loop(w):
    flat = w.reshape(-1, *w.shape[-2:])
    out = torch.zeros(flat.shape[0], flat.shape[-1], dtype=w.dtype)
    for k, m in enumerate(flat):
        for i in range(m.shape[1]):
            norm = m[:, i].norm()
            if norm > 1e-4:
                denom = sum(float(m[:, i] / norm @ m[:, j]) ** 2 for j in range(m.shape[1]))
                out[k, i] = norm**2 / denom
    return out.reshape(*w.shape[:-2], w.shape[-1])


def test_feature_dimensionality_accepts_reference_and_loop():
    l14.check_feature_dimensionality(feature_dimensionality)
    l14.check_feature_dimensionality(_dim_loop)


def _dots(w, left, right):
    return torch.einsum("...hi,...hj->...ij", left, right)


def _keep(w, d):
    return torch.where(w.norm(dim=-2) > 1e-4, d, torch.zeros_like(d))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda w: _keep(w, w.norm(dim=-2) ** 2 / _dots(w, w, w).pow(2).sum(-1)), "unit vector"),
        (
            lambda w: _keep(
                w, 1 / _dots(w, F.normalize(w, dim=-2), F.normalize(w, dim=-2)).pow(2).sum(-1)
            ),
            "both vectors",
        ),
        (
            lambda w: _keep(
                w,
                w.norm(dim=-2) ** 2
                / (
                    _dots(w, F.normalize(w, dim=-2), w).pow(2).sum(-1) - w.norm(dim=-2) ** 2
                ).clamp_min(1e-12),
            ),
            "leaves out j = i",
        ),
        (
            lambda w: _keep(
                w, w.norm(dim=-2) ** 2 / _dots(w, F.normalize(w, dim=-2), w).abs().sum(-1)
            ),
            "SQUARED",
        ),
        (
            lambda w: (
                w.norm(dim=-2) ** 2 / _dots(w, w / w.norm(dim=-2, keepdim=True), w).pow(2).sum(-1)
            ),
            "NaN",
        ),
        (lambda w: feature_dimensionality(w.transpose(-1, -2)), "shape"),
    ],
)
def test_feature_dimensionality_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l14.check_feature_dimensionality(wrong)


def test_the_pentagon_case_is_not_all_two_fifths():
    """The scaled pentagon tells the unnormalised W_i apart (a regular one would not)."""
    w = l14._dimensionality_cases()[0]
    assert not torch.allclose(feature_dimensionality(w), torch.full((1, 5), 0.4, dtype=w.dtype))
    assert math.isclose(float(feature_dimensionality(w / w.norm(dim=-2, keepdim=True))[0, 0]), 0.4)
