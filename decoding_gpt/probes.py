"""Linear probes: reading a known variable out of a model's activations.

A **probe** is a small supervised model ``g`` trained to predict a label ``y`` (part of
speech, "is inside a string", a board square) from an activation ``x`` at one hook
(collected with ``decoding_gpt.activations.collect_activations``). If a *linear* ``g``
succeeds on held-out data, the information is *linearly decodable* there.

Linear (regression) probe, closed form (ridge, ``lam >= 0``), on centred data::

    w = (X^T X + lam I)^{-1} X^T y,     b = mean(y) - mean(X) w

Logistic (classification) probe with ``C`` classes: ``p(y=c|x) = softmax(x W^T + b)_c``,
fit by minimising cross-entropy + ``weight_decay * ||W||^2`` (L-BFGS, full batch).
For two classes the probe *direction* is ``W[1] - W[0]``: the normal of the decision
boundary.

How probes mislead, and the guards in this module:

- **Leakage across the split.** Tokens of one document are strongly correlated; a
  token-level random split puts near-copies in train and test. Split *by document*
  (:func:`split_by_document`).
- **A probe can memorise.** A rich enough probe decodes anything from a high-dimensional
  activation. Hewitt & Liang (2019) compare with a **control task**: give every word
  *type* a random label (drawn from the task's label distribution) and train the same
  probe. **Selectivity = task accuracy - control accuracy**; a good probe is accurate
  *and* selective (:func:`control_labels`, :func:`selectivity`).
- **Accuracy on a rare class flatters.** A label that is 1 on a tenth of the tokens is
  "90 % decodable" by a constant; report :func:`balanced_accuracy` (a constant scores
  ``1 / n_classes``).
- **Decodable is not used.** A probe shows information is present, not that the model
  uses it. Test that by *intervening* along a direction (the probe's, or the difference
  of class means, :func:`mean_difference_direction`): add ``alpha * w/||w||`` to the
  activation at the hook during the forward pass (:func:`add_direction`, steering), or
  remove its component ``a - (a . u) u`` (:func:`ablate_direction`, directional
  ablation), and watch the behaviour change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn


def _check_xy(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"X must be [n, d], got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"X has {x.shape[0]} rows but y has {y.shape[0]}")


@dataclass
class LinearProbe:
    """A fitted linear regression probe ``y_hat = X w + b``."""

    w: Float[Tensor, "d k"]
    b: Float[Tensor, " k"]

    def predict(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n k"]:
        return x @ self.w + self.b

    @property
    def direction(self) -> Float[Tensor, " d"]:
        """Unit vector along the probe weights (first output)."""
        return F.normalize(self.w[:, 0], dim=0)


def fit_linear_probe(
    x: Float[Tensor, "n d"], y: Float[Tensor, " n"] | Float[Tensor, "n k"], lam: float = 0.0
) -> LinearProbe:
    """Least squares (``lam = 0``) or ridge regression in closed form, with an intercept.

    The intercept is not penalised: fit on centred ``X`` and ``y``, then
    ``b = mean(y) - mean(X) w``. ``lam = 0`` uses ``torch.linalg.lstsq`` (handles rank
    deficiency); ``lam > 0`` solves the regularised normal equations.
    """
    _check_xy(x, y)
    if lam < 0:
        raise ValueError(f"ridge penalty must be >= 0, got {lam}")
    y2 = (y if y.ndim == 2 else y[:, None]).to(x.dtype)
    x_mean, y_mean = x.mean(0), y2.mean(0)
    xc, yc = x - x_mean, y2 - y_mean
    if lam == 0:
        w = torch.linalg.lstsq(xc.double(), yc.double()).solution.to(x.dtype)
    else:
        gram = xc.T.double() @ xc.double() + lam * torch.eye(x.shape[1], dtype=torch.float64)
        w = torch.linalg.solve(gram, xc.T.double() @ yc.double()).to(x.dtype)
    return LinearProbe(w=w, b=y_mean - x_mean @ w)


class LogisticProbe(nn.Module):
    """Multiclass logistic regression ``logits = x W^T + b``."""

    def __init__(self, d_in: int, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {n_classes}")
        self.linear = nn.Linear(d_in, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n n_classes"]:
        return self.linear(x)

    @torch.no_grad()
    def predict(self, x: Float[Tensor, "n d"]) -> Int[Tensor, " n"]:
        return self(x).argmax(-1)

    def direction(self, positive: int = 1, negative: int = 0) -> Float[Tensor, " d"]:
        """Unit vector ``(W[positive] - W[negative]) / ||.||``: moving along it raises
        the logit of ``positive`` relative to ``negative``."""
        w = self.linear.weight.detach()
        return F.normalize(w[positive] - w[negative], dim=0)


def fit_logistic_probe(
    x: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
    n_classes: int | None = None,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> LogisticProbe:
    """Fit a :class:`LogisticProbe` by full-batch L-BFGS on cross-entropy + L2.

    ``weight_decay`` multiplies ``||W||^2`` (not the bias); some penalty keeps the
    weights finite when the classes are linearly separable.
    """
    _check_xy(x, y)
    if y.dtype.is_floating_point:
        raise ValueError("logistic probe labels must be integer class ids")
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    n_classes = max(n_classes, 2)
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    probe = LogisticProbe(x.shape[1], n_classes).to(x.device, x.dtype)
    opt = torch.optim.LBFGS(
        probe.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return probe


def accuracy(probe: LogisticProbe, x: Float[Tensor, "n d"], y: Int[Tensor, " n"]) -> float:
    """Fraction of rows whose argmax class equals the label."""
    _check_xy(x, y)
    return (probe.predict(x) == y).float().mean().item()


def split_by_document(
    doc: Int[Tensor, " n"], test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Boolean train / test masks over tokens such that no document is in both.

    Documents (not tokens) are shuffled and the first ``test_fraction`` of them go to
    the test set.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    docs = doc.unique()
    if len(docs) < 2:
        raise ValueError("need at least two documents to split by document")
    gen = torch.Generator().manual_seed(seed)
    shuffled = docs[torch.randperm(len(docs), generator=gen)]
    n_test = min(max(1, round(test_fraction * len(docs))), len(docs) - 1)
    test = torch.isin(doc, shuffled[:n_test])
    return ~test, test


def cross_validated_accuracy(
    x: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
    doc: Int[Tensor, " n"],
    n_folds: int = 5,
    n_classes: int | None = None,
) -> float:
    """Held-out accuracy of a logistic probe, every document held out exactly once.

    The documents are dealt into ``n_folds`` folds of about equal size (scikit-learn's
    ``GroupKFold``: no document in two folds); for each fold a probe is fitted on the
    others and tested on it, and the accuracy is pooled over all tokens. With few
    documents one :func:`split_by_document` split can hold out an easy or a hard
    handful of them; this number does not hinge on that draw.
    """
    from sklearn.model_selection import GroupKFold  # lazy: sklearn is slow to import

    _check_xy(x, y)
    n_classes = n_classes or int(y.max()) + 1
    correct = 0
    for train, test in GroupKFold(n_splits=n_folds).split(x, y, groups=doc.numpy()):
        probe = fit_logistic_probe(x[train], y[train], n_classes)
        correct += int((probe.predict(x[test]) == y[test]).sum())
    return correct / len(y)


def control_labels(
    word_type: Int[Tensor, " n"], task_labels: Int[Tensor, " n"], seed: int = 0
) -> Int[Tensor, " n"]:
    """Hewitt & Liang control task: one random label per word *type*.

    Each distinct value of ``word_type`` (e.g. the token id) gets a label drawn from the
    empirical distribution of ``task_labels``; every occurrence of that type carries it.
    A probe can only solve the control task by memorising types, so its control accuracy
    measures the probe's capacity to memorise.
    """
    if word_type.shape != task_labels.shape:
        raise ValueError("word_type and task_labels must have the same shape")
    types, inverse = word_type.unique(return_inverse=True)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(task_labels).double()
    per_type = torch.multinomial(counts / counts.sum(), len(types), replacement=True, generator=gen)
    return per_type[inverse]


def selectivity(task_accuracy: float, control_accuracy: float) -> float:
    """Selectivity = task accuracy - control accuracy (Hewitt & Liang 2019)."""
    return task_accuracy - control_accuracy


def direction_hook(
    direction: Float[Tensor, " d"], alpha: float, positions: slice | Tensor | None = None
) -> Any:
    """A TransformerLens forward hook adding ``alpha * direction / ||direction||``.

    Applied to the ``[batch, pos, d]`` activation at every position, or only at
    ``positions`` (an index or slice along ``pos``).
    """
    if direction.ndim != 1:
        raise ValueError(f"direction must be a vector, got shape {tuple(direction.shape)}")
    unit = F.normalize(direction.detach().float(), dim=0)

    def hook(activation: Tensor, hook: Any = None) -> Tensor:
        if activation.shape[-1] != unit.shape[0]:
            raise ValueError(
                f"direction has {unit.shape[0]} dims, activation {tuple(activation.shape)}"
            )
        delta = alpha * unit.to(activation.device, activation.dtype)
        if positions is None:
            return activation + delta
        out = activation.clone()
        out[:, positions] += delta
        return out

    return hook


@contextlib.contextmanager
def add_direction(
    model: Any,
    hook_name: str,
    direction: Float[Tensor, " d"],
    alpha: float,
    positions: slice | Tensor | None = None,
) -> Iterator[Any]:
    """Context manager: inside it, every forward pass of ``model`` adds
    ``alpha * direction / ||direction||`` at ``hook_name``.

    >>> with add_direction(model, "blocks.1.hook_resid_post", probe.direction(), 4.0):
    ...     steered_logits = model(tokens)
    """
    with model.hooks(fwd_hooks=[(hook_name, direction_hook(direction, alpha, positions))]):
        yield model


def balanced_accuracy(pred: Int[Tensor, " n"], y: Int[Tensor, " n"]) -> float:
    """Mean over the classes present in ``y`` of the recall ``P(pred = c | y = c)``.

    With rare classes plain accuracy rewards predicting the majority class (90 % on a
    label that is 1 on a tenth of the tokens); balanced accuracy gives every class the
    same weight, so a constant prediction scores ``1 / n_classes``.
    """
    if pred.shape != y.shape or y.ndim != 1:
        raise ValueError(
            f"pred and y must be [n] vectors, got {tuple(pred.shape)}, {tuple(y.shape)}"
        )
    if len(y) == 0:
        raise ValueError("balanced accuracy of an empty set is undefined")
    recalls = [(pred[y == c] == c).double().mean() for c in y.unique()]
    return float(torch.stack(recalls).mean())


def task_and_control_accuracy(
    x: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
    word_type: Int[Tensor, " n"],
    train: Tensor,
    test: Tensor,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Hewitt & Liang's experiment: ``(task, control, selectivity)`` on the test rows.

    The same logistic probe (:func:`fit_logistic_probe`, default penalty) is fitted on the
    ``train`` rows twice: once on the task labels ``y``, once on the control labels
    ``control_labels(word_type, y, seed)`` (drawn over *all* rows, so a type keeps its
    label across the split). Both are scored by :func:`balanced_accuracy` on the ``test``
    rows, and ``selectivity = task - control``.
    """
    _check_xy(x, y)
    n_classes = max(int(y.max()) + 1, 2)
    control = control_labels(word_type, y, seed)
    scores = []
    for labels in (y, control):
        probe = fit_logistic_probe(x[train], labels[train], n_classes)
        scores.append(balanced_accuracy(probe.predict(x[test]), labels[test]))
    return scores[0], scores[1], selectivity(scores[0], scores[1])


def mean_difference_direction(x: Float[Tensor, "n d"], y: Int[Tensor, " n"]) -> Float[Tensor, " d"]:
    """Unit vector along ``mean(x | y = 1) - mean(x | y = 0)`` (rows with other labels ignored).

    The difference of class means (a "mass-mean probe") points from the negative to the
    positive class; unlike logistic-regression weights it cannot turn towards directions
    of low variance that separate the training set by accident.
    """
    _check_xy(x, y)
    if not bool((y == 1).any() and (y == 0).any()):
        raise ValueError("need rows of both classes 0 and 1")
    return F.normalize(x[y == 1].mean(0) - x[y == 0].mean(0), dim=0)


def project_out(
    activation: Float[Tensor, "... d"], direction: Float[Tensor, " d"]
) -> Float[Tensor, "... d"]:
    """Directional ablation ``a - (a . u) u`` with ``u = direction / ||direction||``.

    The result has no component along ``u`` and is unchanged in the orthogonal complement.
    """
    if direction.ndim != 1 or activation.shape[-1] != direction.shape[0]:
        raise ValueError(
            f"direction {tuple(direction.shape)} does not fit activation {tuple(activation.shape)}"
        )
    unit = F.normalize(direction.detach().to(activation.device, activation.dtype), dim=0)
    return activation - (activation @ unit)[..., None] * unit


def ablation_hook(direction: Float[Tensor, " d"]) -> Any:
    """A TransformerLens forward hook that applies :func:`project_out` at every position."""

    def hook(activation: Tensor, hook: Any = None) -> Tensor:
        return project_out(activation, direction)

    return hook


@contextlib.contextmanager
def ablate_direction(model: Any, hook_name: str, direction: Float[Tensor, " d"]) -> Iterator[Any]:
    """Context manager: inside it, ``model`` runs with ``direction`` projected out at
    ``hook_name`` (every position), the counterpart of :func:`add_direction`."""
    with model.hooks(fwd_hooks=[(hook_name, ablation_hook(direction))]):
        yield model
