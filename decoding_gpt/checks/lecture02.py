"""Checks for the exercises of lecture 02 (neurons and networks).

Each ``check_*`` takes the student's function, compares it with the reference in
:mod:`decoding_gpt.foundations.neurons` on seeded inputs, and raises :class:`CheckError` with a
diagnosis of the likely mistake when it disagrees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.foundations.neurons import (
    LIFParams,
    affine_chain,
    compose_affine,
    lif_rate_theory,
    make_separable_data,
    novikoff_bound,
    perceptron_predict,
    perceptron_train,
    perceptron_update,
    relu_interpolant,
)

__all__ = [
    "check_compose_affine",
    "check_lif_rate",
    "check_perceptron_train",
    "check_perceptron_update",
    "check_relu_interpolant",
]


@exercise
def check_lif_rate(lif_rate: Callable[[np.ndarray, LIFParams], np.ndarray]) -> None:
    """``lif_rate(current, params)``: closed-form LIF firing rate in Hz, 0 below threshold."""
    params = LIFParams(tau=10.0, resistance=10.0, v_th=15.0, t_ref=2.0)
    currents = np.array([0.0, 1.0, 1.5, 1.6, 2.0, 3.0, 5.0, 10.0])
    got = to_numpy(lif_rate(currents, params), "lif_rate(...)")
    want = lif_rate_theory(currents, params)
    if got.shape == want.shape and np.isnan(got[:3]).any():
        raise CheckError(
            "lif_rate gives NaN for sub-threshold currents (R*I <= V_th): the log's argument "
            "is negative there. Return 0 for those currents (np.where on a safe argument)."
        )
    if got.shape == want.shape and np.all(np.isfinite(got)):
        if np.allclose(got, want / 1000.0, rtol=1e-6):
            raise CheckError(
                "lif_rate is 1000x too small: times are in ms, so 1/period is in kHz. "
                "Return Hz (1000 / period_ms)."
            )
        no_ref = lif_rate_theory(currents, LIFParams(tau=10.0, resistance=10.0, t_ref=0.0))
        if np.allclose(got, no_ref, rtol=1e-6):
            raise CheckError(
                "lif_rate ignores the refractory period: the period between spikes is "
                "t_ref + tau * ln(RI / (RI - V_th))."
            )
    compare_tensors(
        got,
        want,
        "lif_rate(current)",
        atol=1e-6,
        rtol=1e-6,
        hint="Rate = 1000 / (t_ref + tau * ln(RI / (RI - V_th))) Hz above threshold, else 0.",
    )
    passed("check_lif_rate")


@exercise
def check_perceptron_update(
    update: Callable[[np.ndarray, float, np.ndarray, float, float], tuple[np.ndarray, float]],
) -> None:
    """``update(w, b, x, y, lr) -> (w, b)``: Rosenblatt's rule for one example."""
    rng = np.random.default_rng(0)
    cases = [(np.zeros(3), 0.0, rng.normal(size=3), 1.0, 1.0)]  # margin exactly 0
    for _ in range(20):
        sign = float(rng.choice([-1.0, 1.0]))
        cases.append((rng.normal(size=3), float(rng.normal()), rng.normal(size=3), sign, 0.5))
    for w, b, x, y, lr in cases:
        result = update(w.copy(), b, x, y, lr)
        if not isinstance(result, tuple) or len(result) != 2:
            raise CheckError("update(w, b, x, y, lr) must return a pair (w, b).")
        got_w, got_b = to_numpy(result[0], "updated w"), float(to_numpy(result[1], "updated b"))
        want_w, want_b = perceptron_update(w, b, x, y, lr)
        mistake = y * (x @ w + b) <= 0
        if not mistake and not np.allclose(got_w, want_w):
            raise CheckError(
                f"your update changed w on a correctly classified point (y(w.x+b) = "
                f"{y * (x @ w + b):.3f} > 0): the perceptron only learns from mistakes."
            )
        if mistake and np.allclose(got_w, w) and np.isclose(got_b, b):
            if not w.any():
                raise CheckError(
                    "no update from w = 0, b = 0, where every point has margin y(w.x+b) = 0: "
                    "a point counts as a mistake when y(w.x+b) <= 0 (use <=, not <)."
                )
            raise CheckError(
                f"no update on a misclassified point (y(w.x+b) = {y * (x @ w + b):.3f} <= 0)."
            )
        if mistake and np.allclose(got_w, w - lr * y * x):
            raise CheckError("the update has the wrong sign: use w + lr * y * x.")
        compare_tensors(got_w, want_w, "updated w", atol=1e-9, hint="Expected w + lr * y * x.")
        if not np.isclose(got_b, want_b, atol=1e-9):
            raise CheckError(
                f"updated b is {got_b:.4f}, expected {want_b:.4f}: the bias is a weight "
                "on a constant input 1, so it moves by lr * y on a mistake."
            )
    passed("check_perceptron_update")


def _train_result(result: object) -> tuple[np.ndarray, float, int, list[int]]:
    """``(w, b, n_mistakes, history)`` from a student's answer, or a CheckError."""
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckError("perceptron_train must return (w, b, n_mistakes, history).")
    w, b, n_mistakes, history = result
    if not isinstance(history, (list, tuple, np.ndarray)):
        raise CheckError("history must be a list: the number of mistakes in each epoch.")
    return to_numpy(w, "w"), float(to_numpy(b, "b")), int(n_mistakes), [int(k) for k in history]


def _compare_training(
    got: tuple[np.ndarray, float, int, list[int]],
    want: tuple[np.ndarray, float, int, list[int]],
    x: np.ndarray,
    y: np.ndarray,
    max_epochs: int,
) -> None:
    """Name the likely mistake when a training run differs from the reference."""
    (w, b, n, history), (want_w, want_b, want_n, want_history) = got, want
    if history == want_history[:-1] and want_history[-1] == 0:
        raise CheckError(
            f"history is {history}, expected {want_history}: record the last epoch too, the "
            "one with 0 mistakes -- it is the pass that shows the perceptron has converged."
        )
    if len(history) > len(want_history) and history[: len(want_history)] == want_history:
        raise CheckError(
            f"history has {len(history)} epochs, expected {len(want_history)}: stop after the "
            "first epoch without a mistake (or after max_epochs), not later."
        )
    if len(history) > max_epochs:
        raise CheckError(f"{len(history)} epochs run with max_epochs = {max_epochs}.")
    stopped_early = len(history) < len(want_history) and max_epochs > len(history)
    if stopped_early and not np.all(perceptron_predict(x, w, b) == y):
        raise CheckError(
            "training stopped although some points are still misclassified: an epoch "
            "without a mistake is a full pass over ALL the examples with no update."
        )
    if history != want_history:
        raise CheckError(
            f"mistakes per epoch are {history}, expected {want_history}. Start at w = 0, "
            "b = 0, go through the examples in the order given (no shuffling), and count an "
            "example whenever y (w.x + b) <= 0, i.e. whenever perceptron_update changes w."
        )
    if n == len(history) and n != want_n:
        raise CheckError(f"n_mistakes is {n}, the number of epochs: it counts the updates.")
    if n != sum(history):
        raise CheckError(f"n_mistakes is {n}, but history adds up to {sum(history)}.")
    compare_tensors(w, want_w, "w", atol=1e-9, hint="Start at w = 0 and apply your update.")
    if not np.isclose(b, want_b, atol=1e-9):
        raise CheckError(f"b is {b:.4f}, expected {want_b:.4f}.")


def _check_bound(
    bound_fn: Callable[..., Any], x: np.ndarray, y: np.ndarray, w: np.ndarray
) -> float:
    """Compare ``bound_fn(x, y, w_star)`` with :func:`novikoff_bound`; return the bound."""
    want = novikoff_bound(x, y, w)
    got = float(to_numpy(bound_fn(x.copy(), y.copy(), w.copy()), "novikoff_bound(...)"))
    augmented = np.c_[x, np.ones(len(x))]
    gamma = float(np.min(y * (augmented @ w))) / float(np.linalg.norm(w))
    radius = float(np.linalg.norm(augmented, axis=1).max())
    wrong = {
        "R and gamma must be measured in the augmented space (x, 1), where the bias is a "
        "weight: R = max ||(x_n, 1)||.": (np.linalg.norm(x, axis=1).max() / gamma) ** 2,
        "the bound is (R / gamma)^2, squared.": radius / gamma,
        "gamma is the margin of the UNIT vector w_star / ||w_star||: normalise first.": (
            radius / float(np.min(y * (augmented @ w)))
        )
        ** 2,
        "gamma is the SMALLEST margin min_n y_n u.x_n (the worst-placed point), not the mean.": (
            radius / (float(np.mean(y * (augmented @ w))) / float(np.linalg.norm(w)))
        )
        ** 2,
    }
    for message, value in wrong.items():
        if np.isclose(got, value, rtol=1e-9) and not np.isclose(value, want, rtol=1e-9):
            raise CheckError(f"novikoff_bound gives {got:.4g}, expected {want:.4g}: {message}")
    if not np.isclose(got, want, rtol=1e-9):
        raise CheckError(
            f"novikoff_bound gives {got:.4g}, expected {want:.4g} = (R / gamma)^2 with "
            "R = max ||(x_n, 1)||, gamma = min_n y_n u.(x_n, 1), u = w_star / ||w_star||."
        )
    return want


@exercise
def check_perceptron_train(
    train: Callable[..., tuple[np.ndarray, float, int, list[int]]],
    bound: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
) -> None:
    """``train(x, y, lr, max_epochs) -> (w, b, n_mistakes, history)`` and
    ``bound(x, y, w_star) -> (R / gamma)^2``, against the references of
    :mod:`decoding_gpt.foundations.neurons` on separable data of three margins, plus a run
    cut short by ``max_epochs``."""
    for n, margin, seed, lr in [(40, 0.1, 3, 1.0), (80, 0.05, 4, 0.5), (60, 0.2, 5, 1.0)]:
        x, y, w_star, _ = make_separable_data(n, margin=margin, seed=seed)
        got = _train_result(train(x.copy(), y.copy(), lr, 100))
        want = perceptron_train(x, y, lr, 100)
        _compare_training(got, want, x, y, 100)
        if not np.all(perceptron_predict(x, got[0], got[1]) == y):
            raise CheckError("after training, some points are still misclassified.")
        limit = _check_bound(bound, x, y, w_star)
        limit = _check_bound(bound, x, y, 3.0 * w_star)  # the bound has no scale
        if got[2] > limit:
            raise CheckError(f"{got[2]} mistakes exceed Novikoff's bound {limit:.1f}.")
    x, y, _, _ = make_separable_data(80, margin=0.02, seed=6)
    want = perceptron_train(x, y, 1.0, 2)
    if len(want[3]) != 2 or want[3][-1] == 0:
        raise AssertionError("the max_epochs case must need more than 2 epochs")
    got = _train_result(train(x.copy(), y.copy(), 1.0, 2))
    if len(got[3]) != 2:
        raise CheckError(
            f"with max_epochs = 2 your history has {len(got[3])} epochs: stop after "
            "max_epochs even if the last epoch still had mistakes."
        )
    _compare_training(got, want, x, y, 2)
    passed("check_perceptron_train")


@exercise
def check_compose_affine(
    compose: Callable[[list[tuple[np.ndarray, np.ndarray]]], tuple[np.ndarray, np.ndarray]],
) -> None:
    """``compose(layers) -> (W, b)``: one affine map equal to the chain of ``layers``."""
    rng = np.random.default_rng(0)
    sizes = [4, 5, 3, 2]
    layers = [
        (rng.normal(size=(fan_out, fan_in)), rng.normal(size=fan_out))
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    result = compose(layers)
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckError("compose(layers) must return a pair (W, b).")
    weight, bias = result
    want_w, want_b = compose_affine(layers)
    got_w = to_numpy(weight, "W")
    if got_w.shape == want_w.shape[::-1]:
        raise CheckError(
            f"W has shape {got_w.shape}, expected {want_w.shape} (out x in): multiply in the "
            "order the layers act, W = W_L @ ... @ W_1."
        )
    compare_tensors(got_w, want_w, "W", atol=1e-9, hint="W = W_L @ ... @ W_1.")
    got_b = to_numpy(bias, "b")
    if got_b.shape == want_b.shape and np.allclose(got_b, layers[-1][1]):
        raise CheckError(
            "b only holds the last layer's bias: earlier biases pass through later W's."
        )
    compare_tensors(
        got_b,
        want_b,
        "b",
        atol=1e-9,
        hint="Each bias is multiplied by every later weight: b = W_3 (W_2 b_1 + b_2) + b_3.",
    )
    x = rng.normal(size=(6, sizes[0]))
    compare_tensors(x @ got_w.T + got_b, affine_chain(x, layers), "W x + b vs the chain", atol=1e-9)
    passed("check_compose_affine")


@exercise
def check_relu_interpolant(
    interpolant: Callable[
        [Callable[[np.ndarray], np.ndarray], np.ndarray], tuple[float, np.ndarray]
    ],
) -> None:
    """``interpolant(f, knots) -> (bias, coefs)``: ``bias + sum_i coefs[i] relu(x - knots[i])``."""
    knots = np.array([-1.0, -0.5, 0.0, 0.25, 1.0])
    f = lambda x: np.sin(3 * x) + x**2
    result = interpolant(f, knots)
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckError("interpolant(f, knots) must return a pair (bias, coefs).")
    bias, coefs = result
    want_bias, want_coefs = relu_interpolant(f, knots)
    got = to_numpy(coefs, "coefs")
    slopes = np.diff(f(knots)) / np.diff(knots)
    if got.shape == want_coefs.shape and np.allclose(got, slopes):
        raise CheckError(
            "coefs are the slopes of the pieces, but each ReLU stays on to the right of its "
            "knot: its weight must be the CHANGE of slope there (coefs[0] = first slope)."
        )
    compare_tensors(
        got,
        want_coefs,
        "coefs",
        atol=1e-9,
        hint="One ReLU per piece: coefs[i] = slope_i - slope_{i-1}, with slope_{-1} = 0.",
    )
    if not np.isclose(float(bias), want_bias, atol=1e-9):
        raise CheckError(f"bias is {float(bias):.4f}, expected f(knots[0]) = {want_bias:.4f}.")
    passed("check_relu_interpolant")
