"""Superposition: storing more features than dimensions, and the geometry that allows it.

**Near-orthogonal vectors.** In ``d`` dimensions at most ``d`` vectors are exactly
orthogonal, but random unit vectors are *nearly* orthogonal: for independent uniform
unit vectors ``u, v`` in R^d, ``E[u.v] = 0`` and ``Var[u.v] = 1/d``. The **Welch
bound** says any ``n > d`` unit vectors have a pair with

    max_{i != j} |u_i . u_j|  >=  sqrt((n - d) / (d (n - 1))),

and the **Johnson-Lindenstrauss lemma** that ``n`` points can be projected to
``k >= 4 ln n / (eps^2/2 - eps^3/3)`` dimensions (Dasgupta & Gupta) by a random
Gaussian map, keeping all pairwise squared distances within a factor ``1 +- eps``.
So the number of *almost* orthogonal directions grows exponentially in ``d``.

**Toy models of superposition** (Elhage et al., 2022). ``n`` features ``x in R^n`` are
compressed into ``m < n`` hidden dimensions and read back out::

    h = W x            (W: [m, n], column W_i is feature i's direction)
    x' = ReLU(W^T h + b) = ReLU(W^T W x + b)

Each feature is zero with probability ``S`` (the *sparsity*) and uniform on [0, 1]
otherwise; feature ``i`` has *importance* ``I_i`` and the loss is
``L = E_x sum_i I_i (x_i - x'_i)^2``. Dense features (``S = 0``): the model keeps the
``m`` most important features in orthogonal directions and drops the rest (like PCA).
Sparse features (``S -> 1``): two features rarely fire together, so interference
``W_i . W_j x_j`` is rare and the ReLU filters the small negative part of it; the model
packs *more than m* features into antipodal pairs, triangles, pentagons...
(**superposition**).

Measures (for a trained ``W``):

- ``||W_i||`` ~ 1 if feature ``i`` is represented, ~ 0 if not.
- **Feature dimensionality** ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2``: the fraction
  of a hidden dimension feature ``i`` owns (1 = a dedicated dimension, 1/2 = an
  antipodal pair, 2/5 = a pentagon, 0 = not represented).

How it misleads: the toy model has *no* nonlinear computation between encoder and
decoder and independent features by construction; real features are correlated and
superposition in a transformer is inferred, not observed. And the results depend on
the optimiser finding the global optimum, so several *instances* with different seeds
are trained together (the leading ``instance`` dimension) and read side by side.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from decoding_gpt.device import progress_bar

# ----------------------------------------------------------------- random geometry


def random_unit_vectors(
    n: int, d: int, generator: torch.Generator | None = None
) -> Float[Tensor, "n d"]:
    """``n`` independent uniform unit vectors in R^d (normalised Gaussians)."""
    return F.normalize(torch.randn(n, d, generator=generator), dim=-1)


def overlap_stats(vectors: Float[Tensor, "n d"]) -> tuple[float, float]:
    """Mean and variance of the off-diagonal dot products ``v_i . v_j`` (i != j)."""
    gram = vectors @ vectors.T
    off = gram[~torch.eye(len(vectors), dtype=torch.bool)]
    return off.mean().item(), off.var().item()


def max_overlap(vectors: Float[Tensor, "n d"]) -> float:
    """``max_{i != j} |v_i . v_j|`` of the *normalised* vectors (their coherence)."""
    unit = F.normalize(vectors, dim=-1)
    gram = (unit @ unit.T).abs()
    gram.fill_diagonal_(0.0)
    return gram.max().item()


def welch_bound(n: int, d: int) -> float:
    """Lower bound ``sqrt((n - d) / (d (n - 1)))`` on the max overlap of n unit vectors
    in R^d (0 when ``n <= d``: then an orthonormal set exists)."""
    if n < 1 or d < 1:
        raise ValueError(f"need n, d >= 1, got n={n}, d={d}")
    if n <= d:
        return 0.0
    return math.sqrt((n - d) / (d * (n - 1)))


def jl_dimension(n_points: int, eps: float) -> int:
    """Smallest ``k`` the Johnson-Lindenstrauss lemma guarantees for ``n_points`` and
    distortion ``eps``: ``k >= 4 ln n / (eps^2 / 2 - eps^3 / 3)`` (Dasgupta & Gupta)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    return math.ceil(4 * math.log(n_points) / (eps**2 / 2 - eps**3 / 3))


def jl_project(
    points: Float[Tensor, "n d"], k: int, generator: torch.Generator | None = None
) -> Float[Tensor, "n k"]:
    """Random Gaussian projection ``points @ R / sqrt(k)``, ``R_ij ~ N(0, 1)``, which
    preserves squared norms in expectation."""
    r = torch.randn(points.shape[1], k, generator=generator, dtype=points.dtype)
    return points @ r / math.sqrt(k)


def jl_distortion(points: Float[Tensor, "n d"], projected: Float[Tensor, "n k"]) -> float:
    """Worst relative error of the squared pairwise distances under a map:
    ``max_{i < j} | ||y_i - y_j||^2 / ||x_i - x_j||^2 - 1 |`` (the ``eps`` that the
    Johnson-Lindenstrauss lemma bounds). The points must be distinct."""
    if len(points) != len(projected) or len(points) < 2:
        raise ValueError("need the same n >= 2 points before and after the map")
    ratio = torch.pdist(projected).pow(2) / torch.pdist(points).pow(2)  # the n(n-1)/2 pairs
    return (ratio - 1).abs().max().item()


# ----------------------------------------------------------------- toy model


@dataclass
class ToyModelConfig:
    n_features: int = 5
    n_hidden: int = 2
    n_instances: int = 1


class ToyModel(nn.Module):
    """``n_instances`` independent ReLU-output toy models trained in one batch.

    Parameters ``W: [instance, hidden, feature]`` and ``b_final: [instance, feature]``.
    """

    def __init__(self, cfg: ToyModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        w = torch.empty(cfg.n_instances, cfg.n_hidden, cfg.n_features)
        bound = math.sqrt(6 / (cfg.n_hidden + cfg.n_features))  # Xavier-uniform
        w.uniform_(-bound, bound, generator=generator)
        self.W = nn.Parameter(w)
        self.b_final = nn.Parameter(torch.zeros(cfg.n_instances, cfg.n_features))

    def forward(
        self, x: Float[Tensor, "batch instance feature"]
    ) -> Float[Tensor, "batch instance feature"]:
        h = torch.einsum("ihf,bif->bih", self.W, x)  # [batch, instance, hidden]
        out = torch.einsum("ihf,bih->bif", self.W, h)  # W^T h
        return F.relu(out + self.b_final)


def toy_model_loss(
    w: Float[Tensor, "instance hidden feature"],
    b: Float[Tensor, "instance feature"],
    x: Float[Tensor, "batch instance feature"],
    importance: Float[Tensor, "instance feature"],
) -> Float[Tensor, " instance"]:
    """The toy model's forward pass and loss, per instance:
    ``x' = ReLU(W^T W x + b)`` and ``L = mean_batch sum_i I_i (x_i - x'_i)^2``."""
    h = torch.einsum("ihf,bif->bih", w, x)  # [batch, instance, hidden]
    x_hat = F.relu(torch.einsum("ihf,bih->bif", w, h) + b)
    return ((x - x_hat).pow(2) * importance).sum(-1).mean(0)


def generate_batch(
    batch_size: int,
    n_features: int,
    feature_probability: Float[Tensor, " instance"],
    generator: torch.Generator | None = None,
) -> Float[Tensor, "batch instance feature"]:
    """Sparse features: each is uniform[0, 1] with probability ``p = 1 - S`` (per
    instance), else 0."""
    shape = (batch_size, len(feature_probability), n_features)
    values = torch.rand(shape, generator=generator)
    on = torch.rand(shape, generator=generator) < feature_probability[None, :, None]
    return values * on


def generate_correlated_batch(
    batch_size: int,
    n_pairs: int,
    feature_probability: Float[Tensor, " instance"],
    generator: torch.Generator | None = None,
) -> Float[Tensor, "batch instance feature"]:
    """``2 n_pairs`` features in pairs ``(2k, 2k + 1)`` that are **correlated**: a pair is
    on (both features uniform[0, 1], drawn independently) with probability ``p``, else
    both are 0. Each feature is on with probability ``p``, and ``P(both on) = p``."""
    shape = (batch_size, len(feature_probability), n_pairs)
    values = torch.rand(*shape, 2, generator=generator)
    on = torch.rand(shape, generator=generator) < feature_probability[None, :, None]
    return (values * on[..., None]).flatten(-2)


def generate_anticorrelated_batch(
    batch_size: int,
    n_pairs: int,
    feature_probability: Float[Tensor, " instance"],
    generator: torch.Generator | None = None,
) -> Float[Tensor, "batch instance feature"]:
    """``2 n_pairs`` features in pairs ``(2k, 2k + 1)`` that are **anti-correlated**: a
    pair is on with probability ``2 p`` and then exactly one of its two features, chosen
    with a fair coin, is uniform[0, 1]. Each feature is on with probability ``p`` (needs
    ``p <= 1/2``), and the two of a pair are never on together."""
    if (feature_probability > 0.5).any():
        raise ValueError("anti-correlated pairs need feature_probability <= 1/2")
    shape = (batch_size, len(feature_probability), n_pairs)
    values = torch.rand(*shape, 2, generator=generator)
    on = torch.rand(shape, generator=generator) < 2 * feature_probability[None, :, None]
    first = torch.rand(shape, generator=generator) < 0.5
    which = torch.stack([first, ~first], dim=-1)  # one of the pair
    return (values * (on[..., None] & which)).flatten(-2)


BatchFn = Callable[[int, int, Tensor, torch.Generator], Tensor]


def train_toy_model(
    model: ToyModel,
    importance: Float[Tensor, " feature"] | Float[Tensor, "instance feature"],
    sparsity: Float[Tensor, " instance"],
    *,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    seed: int = 0,
    data: BatchFn | None = None,
) -> list[float]:
    """Adam on the importance-weighted MSE ``mean_batch sum_i I_i (x_i - x'_i)^2``
    (summed over instances, so each instance gets its own gradient). Returns the loss
    per step (averaged over instances). A tqdm progress bar shows the steps;
    ``TQDM_DISABLE=1`` turns it off.

    ``data(batch_size, n_features, feature_probability, generator)`` draws the batches:
    :func:`generate_batch` (independent features) by default; for correlated or
    anti-correlated pairs pass e.g. ``lambda b, n, p, g: generate_correlated_batch(b,
    n // 2, p, g)``."""
    n_inst, n_feat = model.cfg.n_instances, model.cfg.n_features
    if sparsity.shape != (n_inst,):
        raise ValueError(f"sparsity must have shape ({n_inst},), got {tuple(sparsity.shape)}")
    imp = importance if importance.ndim == 2 else importance[None].expand(n_inst, -1)
    if imp.shape != (n_inst, n_feat):
        raise ValueError(f"importance must be [{n_feat}] or [{n_inst}, {n_feat}]")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    bar = progress_bar(range(steps), desc="train_toy_model")
    for step in bar:
        x = (data or generate_batch)(batch_size, n_feat, 1 - sparsity, gen)
        loss = toy_model_loss(model.W, model.b_final, x, imp)  # [instance]
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        losses.append(loss.mean().item())
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    bar.close()
    return losses


# ----------------------------------------------------------------- geometry of W


def feature_norms(w: Float[Tensor, "... hidden feature"]) -> Float[Tensor, "... feature"]:
    """``||W_i||`` per feature (column)."""
    return w.norm(dim=-2)


def feature_dimensionality(w: Float[Tensor, "... hidden feature"]) -> Float[Tensor, "... feature"]:
    """``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` (Elhage et al., eq. in "Feature
    Dimensionality"); 0 for features with (near-)zero norm."""
    norms = w.norm(dim=-2, keepdim=True)  # [..., 1, feature]
    unit = w / norms.clamp_min(1e-8)
    overlaps = torch.einsum("...hi,...hj->...ij", unit, w).pow(2).sum(-1)  # [..., feature]
    dim = norms.squeeze(-2).pow(2) / overlaps.clamp_min(1e-12)
    return torch.where(norms.squeeze(-2) > 1e-4, dim, torch.zeros_like(dim))


def n_features_represented(
    w: Float[Tensor, "... hidden feature"], threshold: float = 0.5
) -> Tensor:
    """Number of features with ``||W_i|| > threshold`` (represented at all)."""
    return (feature_norms(w) > threshold).sum(-1)


def superposition_ratio(w: Float[Tensor, "... hidden feature"]) -> Tensor:
    """``||W||_F^2 / n_hidden``: ~ (features represented) / (dimensions); > 1 means
    superposition (Elhage et al.'s "dimensions per feature" inverted)."""
    return w.pow(2).sum((-2, -1)) / w.shape[-2]


# ----------------------------------------------------------------- phase diagram


def phase_diagram(
    relative_importance: Float[Tensor, " n_imp"],
    feature_density: Float[Tensor, " n_density"],
    *,
    n_features: int = 2,
    n_hidden: int = 1,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 1e-2,
    seed: int = 0,
    n_seeds: int = 1,
    eval_batch: int = 8192,
) -> Tensor:
    """Elhage et al.'s phase diagram: what happens to the *last* feature as its
    importance (others have importance 1) and all features' density ``1 - S`` vary.

    ``n_seeds`` instances per grid cell (different initialisations), all trained at
    once; a cell keeps the instance with the lowest loss on ``eval_batch`` fresh samples,
    since gradient descent can stop in a worse local optimum. Returns an int grid
    ``[n_imp, n_density]``: 0 = last feature not represented (``||W_n|| < 0.5``),
    1 = represented in a dedicated dimension (``D_n > 0.9``), 2 = represented in
    superposition.
    """
    n_imp, n_den = len(relative_importance), len(feature_density)
    n_cells = n_imp * n_den
    gen = torch.Generator().manual_seed(seed)
    model = ToyModel(ToyModelConfig(n_features, n_hidden, n_seeds * n_cells), generator=gen)
    importance = torch.ones(n_seeds, n_imp, n_den, n_features)
    importance[..., -1] = relative_importance[:, None]
    importance = importance.reshape(-1, n_features)  # instance = (seed, importance, density)
    sparsity = (1 - feature_density)[None, None].expand(n_seeds, n_imp, -1).reshape(-1)
    train_toy_model(
        model, importance, sparsity, steps=steps, batch_size=batch_size, lr=lr, seed=seed
    )
    with torch.no_grad():
        x = generate_batch(eval_batch, n_features, 1 - sparsity, gen)
        loss = toy_model_loss(model.W, model.b_final, x, importance).reshape(n_seeds, n_cells)
    best = loss.argmin(0) * n_cells + torch.arange(n_cells)  # best instance of each cell
    w = model.W.detach()[best]
    represented = feature_norms(w)[:, -1] > 0.5
    dedicated = feature_dimensionality(w)[:, -1] > 0.9
    phase = torch.where(represented, torch.where(dedicated, 1, 2), 0)
    return phase.reshape(n_imp, n_den)
