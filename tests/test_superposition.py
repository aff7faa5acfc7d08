"""Superposition (decoding_gpt.superposition): geometry vs closed forms, and the toy
model reproducing Elhage et al.'s sparse-vs-dense result."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.superposition import (
    ToyModel,
    ToyModelConfig,
    feature_dimensionality,
    feature_norms,
    generate_anticorrelated_batch,
    generate_batch,
    generate_correlated_batch,
    jl_dimension,
    jl_distortion,
    jl_project,
    max_overlap,
    n_features_represented,
    overlap_stats,
    phase_diagram,
    random_unit_vectors,
    superposition_ratio,
    toy_model_loss,
    train_toy_model,
    welch_bound,
)


def test_random_unit_vectors_are_nearly_orthogonal():
    d = 64
    v = random_unit_vectors(600, d, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(600))
    mean, var = overlap_stats(v)
    assert abs(mean) < 0.01
    assert var == pytest.approx(1 / d, rel=0.1)
    assert max_overlap(v) >= welch_bound(600, d)


def test_welch_bound_closed_forms():
    assert welch_bound(3, 3) == 0.0  # an orthonormal basis exists
    assert welch_bound(4, 2) == pytest.approx(math.sqrt(2 / 6))
    # a regular simplex (d + 1 unit vectors in R^d, all dots -1/d) meets the bound
    d = 5
    e = torch.eye(d + 1) - 1 / (d + 1)  # centred basis spans a d-dim subspace
    simplex = F.normalize(e, dim=-1).double()
    assert max_overlap(simplex) == pytest.approx(1 / d)
    assert welch_bound(d + 1, d) == pytest.approx(1 / d)
    with pytest.raises(ValueError):
        welch_bound(0, 3)


def test_johnson_lindenstrauss():
    n, eps = 50, 0.5
    k = jl_dimension(n, eps)
    assert k == math.ceil(4 * math.log(n) / (eps**2 / 2 - eps**3 / 3))
    x = torch.randn(n, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = jl_project(x, k, torch.Generator().manual_seed(1))
    ratio = torch.pdist(y).pow(2) / torch.pdist(x).pow(2)
    assert ((ratio > 1 - eps) & (ratio < 1 + eps)).all()
    with pytest.raises(ValueError):
        jl_dimension(10, 1.5)


def _reference_dimensionality(w: torch.Tensor) -> torch.Tensor:
    out = []
    for i in range(w.shape[1]):
        wi = w[:, i]
        denom = sum(float((wi / wi.norm()) @ w[:, j]) ** 2 for j in range(w.shape[1]))
        out.append(float(wi.norm()) ** 2 / denom)
    return torch.tensor(out)


def test_feature_dimensionality_known_geometries():
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])  # [hidden=2, features=5]
    torch.testing.assert_close(feature_dimensionality(pentagon), torch.full((5,), 0.4))
    antipodal = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(feature_dimensionality(antipodal), torch.tensor([0.5, 0.5, 1.0]))
    w = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(feature_dimensionality(w), _reference_dimensionality(w))
    dropped = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(feature_dimensionality(dropped), torch.tensor([1.0, 0.0]))


def test_generate_batch_sparsity():
    p = torch.tensor([1.0, 0.1])
    x = generate_batch(20000, 4, p, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2, 4)
    assert ((x >= 0) & (x <= 1)).all()
    assert (x[:, 0] > 0).float().mean() > 0.99
    assert (x[:, 1] > 0).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert x[:, 0].mean().item() == pytest.approx(0.5, abs=0.01)  # uniform[0, 1]


def test_toy_model_forward_matches_formula():
    model = ToyModel(ToyModelConfig(5, 2, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.b_final.normal_()
    x = torch.rand(4, 3, 5)
    for i in range(3):
        w = model.W[i]
        ref = torch.relu(x[:, i] @ w.T @ w + model.b_final[i])
        torch.testing.assert_close(model(x)[:, i], ref)


def test_sparse_features_go_into_superposition():
    # Elhage et al.'s 5 features in 2 dimensions, importance 0.9^i: dense features
    # -> only the 2 most important are kept, orthogonally; sparse (S = 0.95) -> all 5,
    # as a pentagon (dimensionality 2/5 each).
    gen = torch.Generator().manual_seed(0)
    model = ToyModel(ToyModelConfig(n_features=5, n_hidden=2, n_instances=4), generator=gen)
    sparsity = torch.tensor([0.0, 0.0, 0.95, 0.95])
    losses = train_toy_model(
        model, 0.9 ** torch.arange(5.0), sparsity, steps=400, batch_size=256, lr=3e-2
    )
    assert losses[-1] < losses[0]
    w = model.W.detach()
    n_rep = n_features_represented(w)
    assert n_rep[:2].tolist() == [2, 2]
    assert (feature_norms(w)[:2, :2] > 0.9).all()
    assert (n_rep[2:] > 2).all()
    assert (superposition_ratio(w)[2:] > 2).all()
    dims = feature_dimensionality(w)
    assert (dims[:2, :2] > 0.8).all()  # dedicated dimensions
    assert (dims[2:][feature_norms(w)[2:] > 0.5] < 0.6).all()  # shared dimensions


def test_phase_diagram_corners():
    # last of 2 features in 1 dimension: unimportant and dense -> dropped; important
    # and dense -> its own dimension; sparse -> superposition.
    phase = phase_diagram(
        torch.tensor([0.1, 10.0]), torch.tensor([0.05, 1.0]), steps=400, batch_size=256, lr=3e-2
    )
    assert phase.tolist() == [[2, 0], [2, 1]]


def test_bad_shapes_raise():
    model = ToyModel(ToyModelConfig(5, 2, 2))
    with pytest.raises(ValueError, match="sparsity"):
        train_toy_model(model, torch.ones(5), torch.zeros(3), steps=1)
    with pytest.raises(ValueError, match="importance"):
        train_toy_model(model, torch.ones(4), torch.zeros(2), steps=1)


@pytest.mark.parametrize(("env", "shown"), [("1", False), ("0", True)])
def test_training_progress_bar_obeys_tqdm_disable(monkeypatch, capsys, env, shown):
    """TQDM_DISABLE=1 (``make test``, the notebook refresher) must print nothing."""
    monkeypatch.setenv("TQDM_DISABLE", env)
    model = ToyModel(ToyModelConfig(5, 2, 2), generator=torch.Generator().manual_seed(0))
    train_toy_model(model, torch.ones(5), torch.full((2,), 0.9), steps=3, batch_size=8)
    out, err = capsys.readouterr()
    assert out == "" and ("train_toy_model" in err) == shown and (err == "") != shown


def test_jl_distortion_matches_a_loop_over_pairs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    y = jl_project(x, 8, gen)
    worst = max(
        abs(float((y[i] - y[j]).pow(2).sum() / (x[i] - x[j]).pow(2).sum()) - 1)
        for i in range(12)
        for j in range(i + 1, 12)
    )
    assert jl_distortion(x, y) == pytest.approx(worst)
    assert jl_distortion(x, 2 * x) == pytest.approx(3.0)  # every squared distance x4
    with pytest.raises(ValueError):
        jl_distortion(x, y[:5])


def test_toy_model_loss_matches_the_model_and_a_loop():
    gen = torch.Generator().manual_seed(0)
    model = ToyModel(ToyModelConfig(5, 2, 3), generator=gen)
    with torch.no_grad():
        model.b_final.normal_(generator=gen)
    x = generate_batch(64, 5, torch.tensor([0.3, 0.5, 1.0]), gen)
    importance = torch.rand(3, 5, generator=gen)
    got = toy_model_loss(model.W, model.b_final, x, importance)
    with torch.no_grad():
        out = model(x)
    for i in range(3):
        want = sum(float((importance[i] * (x[b, i] - out[b, i]).pow(2)).sum()) for b in range(64))
        assert got[i].item() == pytest.approx(want / 64, rel=1e-5)


def test_correlated_and_anticorrelated_pairs():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.3])
    corr = generate_correlated_batch(40000, 3, p, gen)
    anti = generate_anticorrelated_batch(40000, 3, p, gen)
    for x in (corr, anti):
        assert x.shape == (40000, 2, 6)
        assert ((x >= 0) & (x <= 1)).all()
        torch.testing.assert_close(
            (x > 0).float().mean(0), p[:, None].expand(2, 6), atol=0.01, rtol=0
        )
    on_c, on_a = corr > 0, anti > 0
    assert torch.equal(on_c[..., 0::2], on_c[..., 1::2])  # a correlated pair is on together
    assert not (on_a[..., 0::2] & on_a[..., 1::2]).any()  # never both of an anti pair
    # the pairs are independent of each other
    both = (on_c[:, 1, 0] & on_c[:, 1, 2]).float().mean().item()
    assert both == pytest.approx(0.3**2, abs=0.01)
    with pytest.raises(ValueError, match="1/2"):
        generate_anticorrelated_batch(4, 2, torch.tensor([0.6]))


def test_train_toy_model_uses_the_data_function():
    calls = []

    def data(b, n, p, g):
        calls.append((b, n, tuple(p.shape)))
        return generate_correlated_batch(b, n // 2, p, g)

    model = ToyModel(ToyModelConfig(4, 2, 2), generator=torch.Generator().manual_seed(0))
    train_toy_model(model, torch.ones(4), torch.full((2,), 0.5), steps=2, batch_size=8, data=data)
    assert calls == [(8, 4, (2,))] * 2
