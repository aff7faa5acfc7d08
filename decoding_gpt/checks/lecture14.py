r"""Checks for the exercises of lecture 14 (superposition).

Each ``check_*`` runs the student's function on seeded inputs and compares it with the
package's reference in :mod:`decoding_gpt.superposition` (itself tested against brute-force
loops and closed forms); where the answer matches a classic mistake, the message names it.
The sparse-feature generator is random, so its check is statistical: frequencies and
moments within about five standard errors of their exact values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_scalar,
)
from decoding_gpt.superposition import feature_dimensionality, jl_distortion, toy_model_loss

__all__ = [
    "check_feature_dimensionality",
    "check_jl_distortion",
    "check_sparse_features",
    "check_toy_model_loss",
]


# ----------------------------------------------------------------------------- exercise 1
def _pair_ratios(x: Tensor, y: Tensor, power: int = 2) -> Tensor:
    return torch.pdist(y).pow(power) / torch.pdist(x).pow(power)


JL_MISTAKES = [
    Mistake(
        "unsquared",
        lambda x, y: (_pair_ratios(x, y, 1) - 1).abs().max(),
        "this compares the distances ||y_i - y_j|| / ||x_i - x_j||: the Johnson-Lindenstrauss "
        "lemma (and this exercise) bounds the SQUARED distances, ||y_i - y_j||^2 / "
        "||x_i - x_j||^2.",
    ),
    Mistake(
        "signed",
        lambda x, y: (_pair_ratios(x, y) - 1).max(),
        "this is the largest stretch max(ratio - 1); a pair that shrinks is distorted too: "
        "take the absolute value, max |ratio - 1|.",
    ),
    Mistake(
        "mean",
        lambda x, y: (_pair_ratios(x, y) - 1).abs().mean(),
        "this is the mean distortion over pairs; the lemma's eps is the WORST pair: take the "
        "max of |ratio - 1|.",
    ),
    Mistake(
        "inverted",
        lambda x, y: (1 / _pair_ratios(x, y) - 1).abs().max(),
        "the ratio is upside down: divide the distance AFTER the projection by the distance "
        "before it, ||y_i - y_j||^2 / ||x_i - x_j||^2.",
    ),
]


@exercise
def check_jl_distortion(fn: Callable[[Tensor, Tensor], float]) -> None:
    """``fn(x [n, d], y [n, k]) -> float``: ``max_{i<j} |‖y_i-y_j‖²/‖x_i-x_j‖² - 1|``,
    compared with :func:`decoding_gpt.superposition.jl_distortion`, on random projections
    and on one that also shrinks every distance (where the worst pair is a contraction)."""
    gen = torch.Generator().manual_seed(14)
    for n, d, k, scale in [(20, 50, 10, 1.0), (9, 30, 4, 1.0), (12, 20, 6, 0.5), (2, 5, 3, 1.0)]:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = scale * x @ torch.randn(d, k, generator=gen, dtype=torch.float64) / math.sqrt(k)
        got = to_scalar(fn(x.clone(), y.clone()), "jl_distortion")
        if math.isnan(got):
            raise CheckError(
                "the distortion is NaN: a pair (i, i) has distance 0 before and after, and "
                "0/0 is NaN. Use only the pairs i < j (torch.pdist gives exactly those)."
            )
        want = jl_distortion(x, y)
        judge(
            got,
            want,
            JL_MISTAKES,
            (x, y),
            what=f"distortion of {n} points",
            atol=1e-9,
            hint="Ratio of squared distances after / before, over the pairs i < j.",
        )
    passed("check_jl_distortion")


# ----------------------------------------------------------------------------- exercise 2
@exercise
def check_sparse_features(
    fn: Callable[[int, int, Tensor, torch.Generator], Tensor],
) -> None:
    """``fn(batch_size, n_features, feature_probability [instance], generator)`` ->
    ``x [batch, instance, feature]``: each entry independently uniform[0, 1] with
    probability ``p`` of its instance, else exactly 0.

    Statistical: with 20,000 rows the frequency of non-zeros per instance must be within
    5 standard errors of ``p``, the non-zero values must have the mean 1/2 and variance
    1/12 of uniform[0, 1], two features must be on together with frequency ``p^2``, and
    the generator must decide the draw.
    """
    p = torch.tensor([0.05, 0.3, 0.8])
    batch, n_feat = 20000, 6
    x = fn(batch, n_feat, p.clone(), torch.Generator().manual_seed(0))
    if not isinstance(x, Tensor):
        raise CheckError(f"return a torch.Tensor, got {type(x).__name__}.")
    if tuple(x.shape) != (batch, 3, n_feat):
        raise CheckError(
            f"x has shape {tuple(x.shape)}, expected (batch, instance, feature) = "
            f"{(batch, 3, n_feat)}."
        )
    x = x.detach().double()
    if not ((x >= 0) & (x <= 1)).all():
        raise CheckError(
            f"x has values in [{x.min():.3f}, {x.max():.3f}]: the features are uniform on "
            "[0, 1] (torch.rand) when on, and 0 when off."
        )
    on = x > 0
    freq = on.double().mean((0, 2))  # [instance]
    se = (p * (1 - p) / batch).sqrt()  # conservative: the features of a row may share a coin
    if ((freq - (1 - p)).abs() < 5 * se).all() and not ((freq - p).abs() < 5 * se).all():
        raise CheckError(
            f"features are on with frequencies {freq.numpy().round(3).tolist()} for "
            f"p = {p.numpy().round(3).tolist()}: that is 1 - p. feature_probability is the "
            "probability of being ON (1 - sparsity): keep a value where torch.rand(...) < p."
        )
    if not ((freq - p).abs() < 5 * se).all():
        raise CheckError(
            f"features are on with frequencies {freq.numpy().round(3).tolist()}, expected "
            f"{p.numpy().round(3).tolist()} (one probability per instance, broadcast as "
            "p[None, :, None])."
        )
    values = x[on]
    if (values.unique().numel() < 10) or abs(values.var().item() - 1 / 12) > 0.01:
        raise CheckError(
            f"the non-zero values have mean {values.mean():.3f} and variance "
            f"{values.var():.4f}; uniform[0, 1] has 0.5 and 1/12 = 0.0833. An active feature "
            "takes a random value torch.rand(...), not a constant 1."
        )
    if abs(values.mean().item() - 0.5) > 0.01:
        raise CheckError(f"the non-zero values have mean {values.mean():.3f}, expected 0.5.")
    both = (on[:, 1, 0] & on[:, 1, 1]).double().mean().item()
    p1 = p[1].item()
    if abs(both - p1**2) > 5 * math.sqrt(p1**2 * (1 - p1**2) / batch):
        raise CheckError(
            f"features 0 and 1 are on together in {both:.3f} of the rows, expected p^2 = "
            f"{p1**2:.3f}: each feature needs its own coin (a mask of shape [batch, instance, "
            "feature]), not one per row."
        )
    again = fn(batch, n_feat, p.clone(), torch.Generator().manual_seed(0))
    other = fn(batch, n_feat, p.clone(), torch.Generator().manual_seed(1))
    if not torch.equal(again.detach().double(), x) or torch.equal(other.detach().double(), x):
        raise CheckError(
            "the same generator seed must give the same batch and another seed another one: "
            "pass generator=generator to every torch.rand call."
        )
    passed("check_sparse_features")


# ----------------------------------------------------------------------------- exercise 3
def _forward(w: Tensor, b: Tensor, x: Tensor, relu: bool = True, bias: bool = True) -> Tensor:
    h = torch.einsum("ihf,bif->bih", w, x)
    out = torch.einsum("ihf,bih->bif", w, h) + (b if bias else 0)
    return F.relu(out) if relu else out


LOSS_MISTAKES = [
    Mistake(
        "no_relu",
        lambda w, b, x, imp: ((x - _forward(w, b, x, relu=False)).pow(2) * imp).sum(-1).mean(0),
        "the output has no ReLU: x' = ReLU(W^T W x + b). The ReLU is what lets the model "
        "filter out small negative interference, the reason superposition pays.",
    ),
    Mistake(
        "no_bias",
        lambda w, b, x, imp: ((x - _forward(w, b, x, bias=False)).pow(2) * imp).sum(-1).mean(0),
        "the bias b is missing: x' = ReLU(W^T W x + b), added before the ReLU.",
    ),
    Mistake(
        "bias_after_relu",
        lambda w, b, x, imp: (
            ((x - (_forward(w, b, x, bias=False).relu() + b)).pow(2) * imp).sum(-1).mean(0)
        ),
        "the bias is added after the ReLU: x' = ReLU(W^T W x + b), bias inside.",
    ),
    Mistake(
        "no_importance",
        lambda w, b, x, imp: (x - _forward(w, b, x)).pow(2).sum(-1).mean(0),
        "the importances are not used: weight each feature's squared error by I_i.",
    ),
    Mistake(
        "importance_squared",
        lambda w, b, x, imp: ((imp * (x - _forward(w, b, x))).pow(2)).sum(-1).mean(0),
        "the importance is inside the square, (I_i (x_i - x'_i))^2: it multiplies the "
        "squared error, I_i (x_i - x'_i)^2.",
    ),
    Mistake(
        "mean_over_features",
        lambda w, b, x, imp: ((x - _forward(w, b, x)).pow(2) * imp).mean(-1).mean(0),
        "this averages over the features; the loss SUMS over the features i (and averages "
        "over the batch).",
    ),
    Mistake(
        "sum_over_batch",
        lambda w, b, x, imp: ((x - _forward(w, b, x)).pow(2) * imp).sum(-1).sum(0),
        "this sums over the batch; the loss is an expectation over x: average over the batch.",
    ),
]


@exercise
def check_toy_model_loss(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """``fn(W [instance, hidden, feature], b [instance, feature], x [batch, instance,
    feature], importance [instance, feature]) -> loss [instance]``, compared with
    :func:`decoding_gpt.superposition.toy_model_loss`; also that gradients flow to W."""
    gen = torch.Generator().manual_seed(140)
    n_inst, n_hidden, n_feat, batch = 3, 2, 5, 64
    w = torch.randn(n_inst, n_hidden, n_feat, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(n_inst, n_feat, generator=gen, dtype=torch.float64)
    x = torch.rand(batch, n_inst, n_feat, generator=gen, dtype=torch.float64)
    x = x * (torch.rand(x.shape, generator=gen, dtype=torch.float64) < 0.5)
    imp = torch.rand(n_inst, n_feat, generator=gen, dtype=torch.float64) + 0.2
    args = (w, b, x, imp)
    want = toy_model_loss(*args)
    w_grad = w.clone().requires_grad_()
    got = fn(w_grad, b.clone(), x.clone(), imp.clone())
    if not isinstance(got, Tensor):
        raise CheckError(f"return a tensor of shape [instance], got {type(got).__name__}.")
    if got.shape == ():
        raise CheckError(
            "the loss is one number; return one loss PER INSTANCE, shape [instance] (average "
            "over the batch only), so that each instance is its own model."
        )
    if got.shape == (n_feat, n_feat) or got.shape == (n_hidden, n_hidden):
        raise CheckError("W x: contract W's feature axis with x's feature axis (W^T W x).")
    if not got.requires_grad:
        raise CheckError("the loss carries no gradient: build it from W with torch operations.")
    judge(
        got.detach(),
        want,
        LOSS_MISTAKES,
        args,
        what="toy-model loss per instance",
        atol=1e-9,
        hint="x' = ReLU(W^T W x + b); L = mean_batch sum_i I_i (x_i - x'_i)^2.",
    )
    passed("check_toy_model_loss")


# ----------------------------------------------------------------------------- exercise 4
def _dimensionality_cases() -> list[Tensor]:
    angles = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])[None]  # [1, 2, 5]
    gen = torch.Generator().manual_seed(141)
    w = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    w[1, :, 4] = 0.0  # a feature the model dropped
    return [pentagon * torch.tensor([0.5, 1, 2, 1, 1.5], dtype=torch.float64), w]


def _squared_dots(w: Tensor, normalise: str) -> Tensor:
    unit = F.normalize(w, dim=-2)
    left = unit if normalise in ("left", "both") else w
    right = unit if normalise == "both" else w
    return torch.einsum("...hi,...hj->...ij", left, right).pow(2)


def _masked(w: Tensor, value: Tensor) -> Tensor:
    return torch.where(w.norm(dim=-2) > 1e-4, value, torch.zeros_like(value))


DIMENSIONALITY_MISTAKES = [
    Mistake(
        "no_hat",
        lambda w: _masked(w, w.norm(dim=-2).pow(2) / _squared_dots(w, "none").sum(-1)),
        "the denominator uses W_i, not the unit vector W_i / ||W_i||: with (W_i . W_j)^2 the "
        "answer depends on the length of W_i. D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2.",
    ),
    Mistake(
        "both_hats",
        lambda w: _masked(w, 1 / _squared_dots(w, "both").sum(-1)),
        "both vectors are normalised, (W_hat_i . W_hat_j)^2: only W_i is; the W_j keep their "
        "lengths (a short neighbour interferes less).",
    ),
    Mistake(
        "without_self",
        lambda w: _masked(
            w,
            w.norm(dim=-2).pow(2)
            / (_squared_dots(w, "left").sum(-1) - w.norm(dim=-2).pow(2)).clamp_min(1e-12),
        ),
        "the sum over j leaves out j = i; it includes it ((W_hat_i . W_i)^2 = ||W_i||^2), so "
        "a feature alone in its dimension has D_i = 1.",
    ),
    Mistake(
        "abs_not_square",
        lambda w: _masked(
            w,
            w.norm(dim=-2).pow(2)
            / torch.einsum("...hi,...hj->...ij", F.normalize(w, dim=-2), w).abs().sum(-1),
        ),
        "the overlaps are summed as |W_hat_i . W_j|; they are SQUARED, (W_hat_i . W_j)^2.",
    ),
]


@exercise
def check_feature_dimensionality(fn: Callable[[Tensor], Tensor]) -> None:
    """``fn(W [..., hidden, feature]) -> D [..., feature]`` with
    ``D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2`` and 0 for a zero column, compared with
    :func:`decoding_gpt.superposition.feature_dimensionality` on a scaled pentagon (whose
    D_i are not all 2/5: its sides have different lengths) and on random weights with one
    dropped feature."""
    for w in _dimensionality_cases():
        want = feature_dimensionality(w)
        got = fn(w.clone())
        if isinstance(got, Tensor) and got.shape == w.shape[:-2] + w.shape[-1:]:
            bad = ~torch.isfinite(got.detach())
            if bad.any():
                raise CheckError(
                    "D is NaN/inf for a feature whose column is zero (0/0): a feature the "
                    "model does not represent has D_i = 0 (test ||W_i|| > 1e-4, e.g. with "
                    "torch.where)."
                )
        judge(
            got,
            want,
            DIMENSIONALITY_MISTAKES,
            (w,),
            what="feature dimensionality",
            atol=1e-6,
            hint="D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2, over j = 1..n.",
        )
    flat = _dimensionality_cases()[0][0]  # [2, 5], no instance axis
    compare_tensors(
        fn(flat.clone()),
        feature_dimensionality(flat),
        "D of a 2-d W (no instance axis)",
        atol=1e-6,
        hint="Work on the last two axes, so that W may have any leading axes.",
    )
    passed("check_feature_dimensionality")
