"""Exercise checks of lecture 13: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make when probing (plain accuracy on a
rare label, control labels per token instead of per type, scoring on the training
documents, an unnormalised direction); the test pins the part of the message that names
the mistake. A stub of the student edition is refused as not attempted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture13 as l13
from decoding_gpt.probes import control_labels, fit_logistic_probe


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


# ------------------------------------------------------------------- balanced accuracy
def _balanced(pred, y):
    return float(torch.stack([(pred[y == c] == c).double().mean() for c in y.unique()]).mean())


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
def test_balanced_accuracy_accepts_reference_and_sklearn():
    l13.check_balanced_accuracy(_balanced)
    l13.check_balanced_accuracy(lambda p, y: balanced_accuracy_score(y.numpy(), p.numpy()))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda p, y: float((p == y).double().mean()), "plain accuracy"),
        (
            lambda p, y: float(
                torch.stack([(y[p == c] == c).double().mean() for c in p.unique()]).mean()
            ),
            "precision",
        ),
        (lambda p, y: float((p[y == 1] == 1).double().mean()), "class 1 only"),
        (
            lambda p, y: float(
                torch.tensor(
                    [
                        float((p[y == c] == c).double().mean()) if (y == c).any() else 0.0
                        for c in range(int(max(p.max(), y.max())) + 1)
                    ]
                ).mean()
            ),
            "absent from y",
        ),
        (lambda p, y: torch.ones(2), "one number"),
        (lambda p, y: None, "return"),
    ],
)
def test_balanced_accuracy_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l13.check_balanced_accuracy(wrong)


# ------------------------------------------------------------- selectivity experiment
def _score(x, labels, fit, score, plain=False):
    probe = fit_logistic_probe(x[fit], labels[fit], max(int(labels.max()) + 1, 2))
    pred = probe.predict(x[score])
    if plain:
        return float((pred == labels[score]).double().mean())
    return _balanced(pred, labels[score])


def _experiment(control_type="type", fit="train", score="test", plain=False, sign=1):
    def run(x, y, word, train, test, seed):
        rows = {"train": train, "test": test}
        kind = word if control_type == "type" else torch.arange(len(y))
        control = control_labels(kind, y, seed)
        task = _score(x, y, rows[fit], rows[score], plain)
        ctrl = _score(x, control, rows[fit], rows[score], plain)
        return task, ctrl, sign * (task - ctrl)

    return run


def test_selectivity_experiment_accepts_reference():
    l13.check_selectivity_experiment(_experiment())


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_experiment(score="train"), "TRAINING rows"),
        (_experiment(control_type="token"), "random per TOKEN"),
        (_experiment(plain=True), "plain accuracies"),
        (_experiment(sign=-1), "MINUS"),
        (lambda *args: 0.9, "tuple"),
        (lambda *args: (*_experiment()(*args)[:2], 0.5), "wrong values"),
    ],
)
def test_selectivity_experiment_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l13.check_selectivity_experiment(wrong)


# ---------------------------------------------------------------- mean difference
def test_mean_difference_accepts_reference():
    l13.check_mean_difference(
        lambda x, y: F.normalize(x[y == 1].mean(0) - x[y == 0].mean(0), dim=0)
    )


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, y: x[y == 1].mean(0) - x[y == 0].mean(0), "not normalised"),
        (lambda x, y: F.normalize(x[y == 0].mean(0) - x[y == 1].mean(0), dim=0), "class 1 to"),
        (
            lambda x, y: F.normalize(
                F.normalize(x, dim=-1)[y == 1].mean(0) - F.normalize(x, dim=-1)[y == 0].mean(0),
                dim=0,
            ),
            "row by row",
        ),
        (  # unlabelled rows (-1) counted in class 0
            lambda x, y: F.normalize(x[y == 1].mean(0) - x[y != 1].mean(0), dim=0),
            "wrong values",
        ),
    ],
)
def test_mean_difference_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l13.check_mean_difference(wrong)


# -------------------------------------------------------------------- project out
def _project_out(a, w):
    u = w / w.norm()
    return a - (a @ u)[..., None] * u


def test_project_out_accepts_reference_and_a_projector():
    l13.check_project_out(_project_out)
    l13.check_project_out(
        lambda a, w: a @ (torch.eye(len(w)) - torch.outer(w, w) / w.dot(w))  # I - u u^T
    )


def _in_place(a, w):
    a -= (a @ F.normalize(w, dim=0))[..., None] * F.normalize(w, dim=0)
    return a


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda a, w: a - (a @ w)[..., None] * w, "only when"),
        (lambda a, w: (a @ F.normalize(w, dim=0))[..., None] * F.normalize(w, dim=0), "ALONG"),
        (lambda a, w: 2 * _project_out(a, w) - a, "reflects"),
        (_in_place, "in place"),
    ],
)
def test_project_out_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l13.check_project_out(wrong)


# ------------------------------------------------------------------ steering hook
def _steering_hook(direction, alpha):
    unit = direction / direction.norm()

    def hook(activation, hook=None):
        return activation + alpha * unit

    return hook


def test_steering_hook_accepts_reference():
    l13.check_steering_hook(_steering_hook)


def _last_only(direction, alpha):
    def hook(act, hook=None):
        out = act.clone()
        out[:, -1] += alpha * F.normalize(direction, dim=0)
        return out

    return hook


def _returns_none(direction, alpha):
    def hook(act, hook=None):
        act += alpha * F.normalize(direction, dim=0)

    return hook


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda w, alpha: lambda a, hook=None: a + alpha * w, "not normalised"),
        (_last_only, "last position"),
        (lambda w, alpha: lambda a, hook=None: a - alpha * F.normalize(w, dim=0), "subtracted"),
        (_returns_none, "returned None"),
        (lambda w, alpha: 3.0, "must return a function"),
    ],
)
def test_steering_hook_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l13.check_steering_hook(wrong)


# ------------------------------------------------------------------------------ stubs
@pytest.mark.parametrize(
    "check",
    [
        l13.check_balanced_accuracy,
        l13.check_selectivity_experiment,
        l13.check_mean_difference,
        l13.check_project_out,
        l13.check_steering_hook,
    ],
)
def test_stub_is_not_attempted(check):
    with pytest.raises(NotAttempted, match="not attempted"):
        check(_stub)


def test_stub_inside_a_hook_is_not_attempted():
    def lazy(direction, alpha):  # the stub raises only when the hook runs
        def hook(activation, hook=None):
            return _stub()

        return hook

    with pytest.raises(NotAttempted):
        l13.check_steering_hook(lazy)
