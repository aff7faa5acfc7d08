r"""Checks for the exercises of lecture 13 (linear probes).

Each ``check_*`` runs the student's function on seeded inputs, compares it with the
package's reference in :mod:`decoding_gpt.probes` (itself tested against scikit-learn and
closed forms), and raises :class:`CheckError` naming the likely mistake when it disagrees:
the answers of common mistakes are computed alongside and matched first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
from decoding_gpt.probes import (
    balanced_accuracy,
    control_labels,
    fit_logistic_probe,
    mean_difference_direction,
    project_out,
    split_by_document,
    task_and_control_accuracy,
)

__all__ = [
    "check_balanced_accuracy",
    "check_mean_difference",
    "check_project_out",
    "check_selectivity_experiment",
    "check_steering_hook",
]


def _match(got: float, mistakes: dict[str, float], want: float, tol: float = 1e-6) -> None:
    """Raise with the message of the first mistake whose value ``got`` reproduces."""
    if math.isclose(got, want, abs_tol=tol):
        return
    for message, value in mistakes.items():
        if math.isfinite(value) and math.isclose(got, value, abs_tol=tol):
            raise CheckError(message)


# ----------------------------------------------------------------------------- exercise 1
def _plain_accuracy(pred: Tensor, y: Tensor) -> float:
    return float((pred == y).double().mean())


def _macro_precision(pred: Tensor, y: Tensor) -> float:
    return float(torch.stack([(y[pred == c] == c).double().mean() for c in pred.unique()]).mean())


def _recall_of_class_one(pred: Tensor, y: Tensor) -> float:
    return float((pred[y == 1] == 1).double().mean())


def _recall_over_range(pred: Tensor, y: Tensor) -> float:
    classes = range(int(max(pred.max(), y.max())) + 1)
    recalls = [(pred[y == c] == c).double().mean() if (y == c).any() else 0.0 for c in classes]
    return float(torch.tensor([float(r) for r in recalls]).mean())


def _balanced_cases() -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(13)
    cases = []
    for n, n_classes in [(40, 2), (90, 3), (60, 4)]:
        y = torch.randint(0, n_classes, (n,), generator=gen)
        y[: n // 2] = 0  # imbalanced: class 0 is the majority
        noise = torch.randint(0, n_classes + 1, (n,), generator=gen)  # may predict an unseen id
        pred = torch.where(torch.rand(n, generator=gen) < 0.6, y, noise)
        cases.append((pred, y))
    return cases


@exercise
def check_balanced_accuracy(fn: Callable[[Tensor, Tensor], float]) -> None:
    """``fn(pred [n], y [n]) -> float``: mean over the classes in ``y`` of their recall."""
    for pred, y in _balanced_cases():
        want = balanced_accuracy(pred, y)
        got = to_scalar(fn(pred.clone(), y.clone()), "balanced accuracy")
        _match(
            got,
            {
                "this is the plain accuracy mean(pred == y): with a majority class it rewards "
                "predicting it. Average the recall P(pred = c | y = c) over the classes c "
                "of y instead.": _plain_accuracy(pred, y),
                "this averages the precision P(y = c | pred = c) over the predicted classes; "
                "balanced accuracy averages the recall P(pred = c | y = c) over the TRUE "
                "classes (group the rows by y, not by pred).": _macro_precision(pred, y),
                "this is the recall of class 1 only; average the recalls of every class "
                "present in y.": _recall_of_class_one(pred, y),
                "the average runs over every id up to the largest label or prediction, "
                "counting classes absent from y as recall 0: average over the classes "
                "that occur in y (y.unique()).": _recall_over_range(pred, y),
            },
            want,
        )
        compare_tensors(got, want, f"balanced accuracy of {len(y)} predictions", atol=1e-6)
    constant = torch.zeros(10, dtype=torch.long)
    labels = torch.tensor([0] * 9 + [1])
    if not math.isclose(to_scalar(fn(constant, labels), "balanced accuracy"), 0.5, abs_tol=1e-6):
        raise CheckError("predicting the majority class of two must score exactly 0.5.")
    passed("check_balanced_accuracy")


# ----------------------------------------------------------------------------- exercise 2
def _selectivity_data() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Tokens of 40 documents: a type embedding (memorisable) plus a weak contextual
    signal along one direction that the task label follows."""
    gen = torch.Generator().manual_seed(130)
    n_types, d, n = 40, 12, 800
    emb = torch.randn(n_types, d, generator=gen)
    word = torch.randint(0, n_types, (n,), generator=gen)
    doc = torch.arange(n) // 20
    context = torch.randn(n, generator=gen)
    y = (context + 0.5 * emb[word, 1] > 0).long()
    x = emb[word] + torch.outer(context, F.normalize(torch.ones(d), dim=0))
    x = x + 0.3 * torch.randn(n, d, generator=gen)
    train, test = split_by_document(doc, 0.3, seed=1)
    return x, y, word, train, test


def _scored(x: Tensor, labels: Tensor, fit_rows: Tensor, score_rows: Tensor, plain: bool) -> float:
    probe = fit_logistic_probe(x[fit_rows], labels[fit_rows], max(int(labels.max()) + 1, 2))
    pred = probe.predict(x[score_rows])
    if plain:
        return _plain_accuracy(pred, labels[score_rows])
    return balanced_accuracy(pred, labels[score_rows])


def _selectivity_mistakes(
    x: Tensor, y: Tensor, word: Tensor, train: Tensor, test: Tensor, seed: int
) -> dict[str, tuple[float, float, float]]:
    control = control_labels(word, y, seed)
    per_token = control_labels(torch.arange(len(y)), y, seed)

    def triple(task: float, ctrl: float) -> tuple[float, float, float]:
        return task, ctrl, task - ctrl

    return {
        "both accuracies are measured on the TRAINING rows: a probe is scored on "
        "held-out documents (x[test]), or memorisation looks like knowledge.": triple(
            _scored(x, y, train, train, False), _scored(x, control, train, train, False)
        ),
        "the control labels are random per TOKEN (control_labels(torch.arange(n), ...)): "
        "Hewitt & Liang give every word TYPE one random label, so that a probe can "
        "solve the control task by memorising types; pass word_type.": triple(
            _scored(x, y, train, test, False), _scored(x, per_token, train, test, False)
        ),
        "these are plain accuracies: score both probes with balanced accuracy (your "
        "exercise 1), so that predicting the majority class does not look good.": triple(
            _scored(x, y, train, test, True), _scored(x, control, train, test, True)
        ),
    }


@exercise
def check_selectivity_experiment(
    fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, int], tuple[float, float, float]],
) -> None:
    """``fn(x, y, word_type, train, test, seed) -> (task, control, selectivity)``.

    Compared with :func:`decoding_gpt.probes.task_and_control_accuracy` on a synthetic
    data set where the task label is partly contextual and partly a function of the type.
    """
    x, y, word, train, test = _selectivity_data()
    for seed in (0, 3):
        want = task_and_control_accuracy(x, y, word, train, test, seed)
        result = fn(x.clone(), y.clone(), word.clone(), train.clone(), test.clone(), seed)
        if not isinstance(result, tuple | list) or len(result) != 3:
            raise CheckError("return a tuple (task accuracy, control accuracy, selectivity).")
        got = tuple(
            to_scalar(v, name) for v, name in zip(result, ("task", "control", "sel"), strict=True)
        )
        if math.isclose(got[2], want[1] - want[0], abs_tol=1e-6) and abs(want[2]) > 1e-6:
            raise CheckError("selectivity is task accuracy MINUS control accuracy.")
        for message, wrong in _selectivity_mistakes(x, y, word, train, test, seed).items():
            if all(
                math.isclose(g, w, abs_tol=1e-6) for g, w in zip(got, wrong, strict=True)
            ) and any(
                not math.isclose(w, r, abs_tol=1e-6) for w, r in zip(wrong, want, strict=True)
            ):
                raise CheckError(message)
        hint = (
            "Fit fit_logistic_probe on the train rows, once on y and once on "
            "control_labels(word_type, y, seed); score both with balanced accuracy on the "
            "test rows."
        )
        for value, reference, name in zip(
            got, want, ("task accuracy", "control", "selectivity"), strict=True
        ):
            compare_tensors(value, reference, f"{name} (seed {seed})", atol=1e-6, hint=hint)
    passed("check_selectivity_experiment")


# ----------------------------------------------------------------------------- exercise 3
_MEAN_DIFFERENCE_MISTAKES = (
    Mistake(
        "not normalised",
        lambda x, y: x[y == 1].mean(0) - x[y == 0].mean(0),
        "the direction is not normalised: divide mu_1 - mu_0 by its norm (a unit vector, so "
        "that alpha in a + alpha u is a distance in the residual stream).",
    ),
    Mistake(
        "reversed",
        lambda x, y: F.normalize(x[y == 0].mean(0) - x[y == 1].mean(0), dim=0),
        "the direction points from class 1 to class 0: take mu_1 - mu_0, so that moving "
        "along it makes class 1 more likely.",
    ),
    Mistake(
        "rows normalised",
        lambda x, y: F.normalize(
            F.normalize(x, dim=-1)[y == 1].mean(0) - F.normalize(x, dim=-1)[y == 0].mean(0),
            dim=0,
        ),
        "the activations were normalised row by row before averaging: average the raw "
        "activations, then normalise the difference once.",
    ),
)


@exercise
def check_mean_difference(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``fn(x [n, d], y [n]) -> [d]``: unit vector along ``mean(x|y=1) - mean(x|y=0)``."""
    gen = torch.Generator().manual_seed(31)
    for n, d in [(300, 8), (500, 20)]:
        x = 3.0 + torch.randn(n, d, generator=gen) * torch.linspace(0.5, 3.0, d)
        y = torch.randint(0, 2, (n,), generator=gen)
        y[:5] = -1  # unlabelled rows must be ignored
        x[y == 1] += torch.randn(d, generator=gen)
        want = mean_difference_direction(x, y)
        got = fn(x.clone(), y.clone())
        judge(
            got,
            want,
            _MEAN_DIFFERENCE_MISTAKES,
            (x, y),
            what="mean-difference direction",
            atol=1e-5,
            hint="F.normalize(x[y == 1].mean(0) - x[y == 0].mean(0), dim=0); rows with "
            "y = -1 belong to neither class.",
        )
    passed("check_mean_difference")


# ----------------------------------------------------------------------------- exercise 4
_PROJECT_OUT_MISTAKES = (
    Mistake(
        "direction not normalised",
        lambda a, w: a - (a @ w)[..., None] * w,
        "a - (a . w) w removes the projection only when ||w|| = 1: normalise the direction "
        "first, u = w / ||w||.",
    ),
    Mistake(
        "projection kept",
        lambda a, w: (a @ F.normalize(w, dim=0))[..., None] * F.normalize(w, dim=0),
        "this is the component ALONG u, (a . u) u; ablation keeps everything else: a - (a . u) u.",
    ),
    Mistake(
        "reflection",
        lambda a, w: a - 2 * (a @ F.normalize(w, dim=0))[..., None] * F.normalize(w, dim=0),
        "subtracting 2 (a . u) u reflects a across the hyperplane (it flips the sign of the "
        "feature); ablation subtracts the projection once: a - (a . u) u.",
    ),
)


@exercise
def check_project_out(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``fn(activation [..., d], direction [d]) -> [..., d]``: ``a - (a . u) u``."""
    gen = torch.Generator().manual_seed(41)
    for shape in [(6, 8), (2, 5, 16)]:
        a = torch.randn(*shape, generator=gen)
        w = 3.0 * torch.randn(shape[-1], generator=gen)
        original = a.clone()
        got = fn(a, w.clone())
        if not torch.equal(a, original):
            raise CheckError(
                "your function changed its input in place: return a new tensor, so the "
                "cached activation of the clean run stays intact."
            )
        want = project_out(a, w)
        judge(
            got,
            want,
            _PROJECT_OUT_MISTAKES,
            (a, w),
            what=f"ablated activation of shape {shape}",
            atol=1e-5,
            hint="u = w / ||w||; return a - (a @ u)[..., None] * u.",
        )
    passed("check_project_out")


# ----------------------------------------------------------------------------- exercise 5
def _steer_mistakes(alpha: float) -> tuple[Mistake, ...]:
    return (
        Mistake(
            "direction not normalised",
            lambda a, w: a + alpha * w,
            "the direction is not normalised: add alpha * w / ||w||, so that alpha is the "
            "distance moved whatever the probe's scale.",
        ),
        Mistake(
            "last position only",
            lambda a, w: torch.cat([a[:, :-1], a[:, -1:] + alpha * F.normalize(w, dim=0)], 1),
            "only the last position was steered: add the vector at every position (the "
            "activation is [batch, pos, d_model]).",
        ),
        Mistake(
            "subtracted",
            lambda a, w: a - alpha * F.normalize(w, dim=0),
            "the vector was subtracted: steering adds alpha * u (a negative alpha moves the "
            "other way).",
        ),
    )


@exercise
def check_steering_hook(fn: Callable[[Tensor, float], Callable[..., Any]]) -> None:
    """``fn(direction [d], alpha) -> hook``; ``hook(act, hook=None)`` returns
    ``act + alpha * direction / ||direction||``."""
    gen = torch.Generator().manual_seed(51)
    for alpha, shape in [(2.5, (2, 6, 16)), (-4.0, (3, 4, 8))]:
        a = torch.randn(*shape, generator=gen)
        w = 5.0 * torch.randn(shape[-1], generator=gen)
        hook = fn(w.clone(), alpha)
        if not callable(hook):
            raise CheckError("steering_hook must return a function hook(activation, hook).")
        got = hook(a.clone(), None)
        if got is None:
            raise CheckError(
                "the hook returned None: return the steered activation (TransformerLens "
                "uses the returned tensor)."
            )
        want = a + alpha * F.normalize(w, dim=0)
        judge(
            got,
            want,
            _steer_mistakes(alpha),
            (a, w),
            what=f"steered activation (alpha {alpha})",
            atol=1e-5,
            hint="return activation + alpha * direction / direction.norm().",
        )
    passed("check_steering_hook")
