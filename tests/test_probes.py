"""Probes (decoding_gpt.probes): closed forms vs numpy/sklearn, planted directions,
document splits, control tasks, and interventions vs a hand-written hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import Ridge
from sklearn.metrics import balanced_accuracy_score

from decoding_gpt.probes import (
    ablate_direction,
    accuracy,
    add_direction,
    balanced_accuracy,
    control_labels,
    cross_validated_accuracy,
    fit_linear_probe,
    fit_logistic_probe,
    mean_difference_direction,
    project_out,
    selectivity,
    split_by_document,
    task_and_control_accuracy,
)


def _planted(n: int = 2000, d: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(d, generator=gen), dim=0)
    x = torch.randn(n, d, generator=gen) * 2.0
    score = x @ u + 0.3 * torch.randn(n, generator=gen)
    return x, u, score


def test_least_squares_matches_numpy():
    x, _, score = _planted(500, 16)
    probe = fit_linear_probe(x, score)
    design = np.c_[x.numpy().astype(np.float64), np.ones(len(x))]
    ref, *_ = np.linalg.lstsq(design, score.numpy().astype(np.float64), rcond=None)
    np.testing.assert_allclose(probe.w[:, 0].numpy(), ref[:-1], atol=1e-4)
    np.testing.assert_allclose(probe.b.numpy(), ref[-1:], atol=1e-4)


def test_ridge_matches_sklearn():
    x, _, score = _planted(300, 16, seed=1)
    y = torch.stack([score, -2 * score + 1], dim=1)
    probe = fit_linear_probe(x, y, lam=50.0)
    ref = Ridge(alpha=50.0).fit(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(probe.w.T.numpy(), ref.coef_, atol=1e-4)
    np.testing.assert_allclose(probe.b.numpy(), ref.intercept_, atol=1e-4)
    expected = torch.tensor(ref.predict(x[:5].double().numpy())).float()
    torch.testing.assert_close(probe.predict(x[:5]), expected, atol=1e-4, rtol=1e-4)


def test_linear_probe_recovers_planted_direction():
    x, u, score = _planted()
    probe = fit_linear_probe(x, score)
    assert F.cosine_similarity(probe.direction, u, dim=0) > 0.9


def test_logistic_probe_recovers_planted_direction():
    x, u, score = _planted()
    y = (score > 0).long()
    doc = torch.arange(len(x)) // 20  # 100 documents of 20 tokens
    train, test = split_by_document(doc, 0.25)
    probe = fit_logistic_probe(x[train], y[train])
    assert F.cosine_similarity(probe.direction(), u, dim=0) > 0.9
    assert accuracy(probe, x[test], y[test]) > 0.9


def test_multiclass_probe():
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 16, generator=gen) * 3
    y = torch.randint(0, 4, (800,), generator=gen)
    x = centres[y] + torch.randn(800, 16, generator=gen)
    probe = fit_logistic_probe(x[:600], y[:600])
    assert probe.linear.out_features == 4
    assert accuracy(probe, x[600:], y[600:]) > 0.9


def test_split_is_by_document():
    doc = torch.repeat_interleave(torch.arange(50), torch.randint(1, 30, (50,)))
    train, test = split_by_document(doc, 0.2, seed=1)
    assert (train ^ test).all()
    assert set(doc[train].tolist()).isdisjoint(doc[test].tolist())
    assert len(doc[test].unique()) == 10
    with pytest.raises(ValueError):
        split_by_document(torch.zeros(10, dtype=torch.long))


def test_cross_validation_holds_out_whole_documents():
    """A feature that only names the document, with one random label per document: a
    probe memorises it, so a token-level split scores ~1, but with every document held
    out it can only guess (~0.5). A planted direction is still found (> 0.9)."""
    gen = torch.Generator().manual_seed(0)
    doc = torch.arange(40).repeat_interleave(25)
    doc_label = torch.randint(0, 2, (40,), generator=gen)
    x = F.one_hot(doc, 40).float() * 5 + 0.1 * torch.randn(len(doc), 40, generator=gen)
    y = doc_label[doc]
    by_token = torch.randperm(len(doc), generator=gen) < 0.8 * len(doc)
    probe = fit_logistic_probe(x[by_token], y[by_token])
    assert accuracy(probe, x[~by_token], y[~by_token]) > 0.95
    assert abs(cross_validated_accuracy(x, y, doc) - 0.5) < 0.2
    planted_x, _, score = _planted()
    planted_doc = torch.arange(len(planted_x)) // 20
    assert cross_validated_accuracy(planted_x, (score > 0).long(), planted_doc) > 0.9
    with pytest.raises(ValueError):  # fewer documents than folds
        cross_validated_accuracy(x[:50], y[:50], doc[:50], n_folds=5)


def test_control_task_and_selectivity():
    # Activations = a word type's embedding + noise; the task label is linear in the
    # embedding, the control label is random per type (Hewitt & Liang).
    gen = torch.Generator().manual_seed(0)
    n_types, d = 300, 8
    emb = torch.randn(n_types, d, generator=gen)
    task_of_type = (emb[:, 0] > 0).long()
    word = torch.randint(0, n_types, (6000,), generator=gen)
    x = emb[word] + 0.1 * torch.randn(6000, d, generator=gen)
    y = task_of_type[word]
    y_ctrl = control_labels(word, y, seed=0)
    # one label per type, drawn from the task's label distribution
    for t in word.unique()[:50]:
        assert y_ctrl[word == t].unique().numel() == 1
    assert abs(y_ctrl.float().mean() - y.float().mean()) < 0.1
    doc = torch.arange(6000) // 30
    train, test = split_by_document(doc, 0.3)
    task_acc = accuracy(fit_logistic_probe(x[train], y[train]), x[test], y[test])
    ctrl_acc = accuracy(fit_logistic_probe(x[train], y_ctrl[train]), x[test], y_ctrl[test])
    assert task_acc > 0.95
    assert ctrl_acc < 0.75
    assert selectivity(task_acc, ctrl_acc) == pytest.approx(task_acc - ctrl_acc)
    assert selectivity(task_acc, ctrl_acc) > 0.2


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="rows"):
        fit_linear_probe(torch.randn(5, 3), torch.randn(4))
    with pytest.raises(ValueError, match="integer"):
        fit_logistic_probe(torch.randn(5, 3), torch.rand(5))
    with pytest.raises(ValueError, match="ridge"):
        fit_linear_probe(torch.randn(5, 3), torch.randn(5), lam=-1)


@pytest.fixture(scope="module")
def model(tiny_bridge):
    return tiny_bridge


def test_add_direction_matches_manual_hook(model):
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    unit = direction / direction.norm()
    clean = model(tokens)
    manual = model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda a, hook: a + 5.0 * unit)])
    with add_direction(model, hook, direction, 5.0):
        steered = model(tokens)
    torch.testing.assert_close(steered, manual)
    assert (steered - clean).abs().max() > 1e-2
    torch.testing.assert_close(model(tokens), clean)  # hook removed on exit
    # only the chosen positions move: earlier positions cannot see later ones
    with add_direction(model, hook, direction, 5.0, positions=slice(5, None)):
        partial = model(tokens)
    late = model.run_with_hooks(
        tokens, fwd_hooks=[(hook, lambda a, hook: torch.cat([a[:, :5], a[:, 5:] + 5.0 * unit], 1))]
    )
    torch.testing.assert_close(partial, late)
    torch.testing.assert_close(partial[:, :5], clean[:, :5])


def test_balanced_accuracy_matches_sklearn():
    gen = torch.Generator().manual_seed(3)
    for n_classes in (2, 3, 5):
        y = torch.randint(0, n_classes, (200,), generator=gen)
        y[:150] = 0  # imbalanced
        pred = torch.where(torch.rand(200, generator=gen) < 0.7, y, torch.zeros_like(y))
        want = balanced_accuracy_score(y.numpy(), pred.numpy())
        assert balanced_accuracy(pred, y) == pytest.approx(want)
    y = torch.tensor([0] * 9 + [1])
    assert balanced_accuracy(torch.zeros_like(y), y) == pytest.approx(0.5)  # majority: chance
    with pytest.raises(ValueError):
        balanced_accuracy(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_task_and_control_accuracy_is_the_two_probes():
    gen = torch.Generator().manual_seed(0)
    n_types, d, n = 60, 6, 1200
    emb = torch.randn(n_types, d, generator=gen)
    word = torch.randint(0, n_types, (n,), generator=gen)
    x = emb[word] + 0.1 * torch.randn(n, d, generator=gen)
    y = (emb[word, 0] > 0).long()
    train, test = split_by_document(torch.arange(n) // 20, 0.3)
    task, control, sel = task_and_control_accuracy(x, y, word, train, test, seed=2)
    probe = fit_logistic_probe(x[train], y[train], 2)
    assert task == pytest.approx(balanced_accuracy(probe.predict(x[test]), y[test]))
    y_ctrl = control_labels(word, y, seed=2)
    ctrl_probe = fit_logistic_probe(x[train], y_ctrl[train], 2)
    assert control == pytest.approx(balanced_accuracy(ctrl_probe.predict(x[test]), y_ctrl[test]))
    assert sel == pytest.approx(task - control)
    assert task > 0.95 and sel > 0.1


def test_mean_difference_direction_recovers_planted_mean_shift():
    gen = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(16, generator=gen), dim=0)
    y = torch.randint(0, 2, (4000,), generator=gen)
    x = torch.randn(4000, 16, generator=gen) + 3.0 * y[:, None] * u + 5.0
    got = mean_difference_direction(x, y)
    assert got.norm() == pytest.approx(1.0)
    assert float(got @ u) > 0.98  # points from class 0 to class 1
    ref = x[y == 1].mean(0) - x[y == 0].mean(0)
    torch.testing.assert_close(got, ref / ref.norm())
    with pytest.raises(ValueError, match="both classes"):
        mean_difference_direction(x, torch.ones_like(y))


def test_project_out_removes_exactly_one_direction():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    w = 4.0 * torch.randn(8, generator=gen, dtype=torch.float64)
    out = project_out(a, w)
    u = w / w.norm()
    projector = torch.eye(8, dtype=torch.float64) - torch.outer(u, u)  # I - u u^T
    torch.testing.assert_close(out, a @ projector)
    torch.testing.assert_close(out @ u, torch.zeros(3, 5, dtype=torch.float64))
    torch.testing.assert_close(project_out(out, w), out)  # idempotent
    with pytest.raises(ValueError, match="does not fit"):
        project_out(a, torch.randn(7))


def test_ablate_direction_matches_manual_hook(model):
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    unit = direction / direction.norm()
    clean = model(tokens)
    manual = model.run_with_hooks(
        tokens, fwd_hooks=[(hook, lambda a, hook: a - (a @ unit)[..., None] * unit)]
    )
    with ablate_direction(model, hook, direction):
        ablated = model(tokens)
    torch.testing.assert_close(ablated, manual)
    assert (ablated - clean).abs().max() > 1e-3
    torch.testing.assert_close(model(tokens), clean)  # hook removed on exit
