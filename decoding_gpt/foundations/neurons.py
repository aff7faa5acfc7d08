r"""Neurons and the first networks: LIF neuron, perceptron, affine collapse, ReLU interpolation.

Leaky integrate-and-fire (LIF) neuron
-------------------------------------
The membrane potential :math:`V(t)` obeys

.. math::  \tau \frac{dV}{dt} = -(V - V_{rest}) + R I(t),

and when :math:`V` reaches the threshold :math:`V_{th}` the neuron *spikes*: :math:`V` is
reset to :math:`V_{reset}` and held there for a refractory period :math:`t_{ref}`. We
integrate with forward Euler, :math:`V_{k+1} = V_k + \frac{\Delta t}{\tau}(-(V_k - V_{rest})
+ R I_k)`. For a constant current the time from reset to threshold solves the linear ODE
in closed form, which gives the f-I curve

.. math::  f(I) = \Big[t_{ref} + \tau \ln \frac{V_{rest} + RI - V_{reset}}
           {V_{rest} + RI - V_{th}}\Big]^{-1}  \quad (V_{rest} + RI > V_{th}),

and :math:`f = 0` below the rheobase :math:`RI \le V_{th} - V_{rest}`. With
:math:`V_{rest} = V_{reset} = 0` this is :math:`1/(t_{ref} + \tau\ln(RI/(RI - V_{th})))`.

Units: time in ms, potentials in mV, currents in nA, resistance in MOhm (so RI is in mV);
rates are returned in Hz (spikes per second).

Perceptron
----------
Labels :math:`y \in \{-1, +1\}`, prediction :math:`\mathrm{sign}(w \cdot x + b)`. Rosenblatt's
rule updates only on a mistake (:math:`y(w\cdot x + b) \le 0`): :math:`w \leftarrow w + \eta y x,
b \leftarrow b + \eta y`. On data separable with margin :math:`\gamma` and radius :math:`R`
(in the space augmented by a constant 1) it makes at most :math:`(R/\gamma)^2` mistakes.

Affine collapse and ReLU interpolation
--------------------------------------
A stack of affine maps :math:`x \mapsto W_L(\cdots(W_1 x + b_1)\cdots) + b_L` is one affine
map, so depth without a nonlinearity adds nothing. With ReLUs, a sum of hand-placed units
:math:`g(x) = f(x_0) + \sum_i c_i\, \mathrm{relu}(x - x_i)` is the piecewise-linear interpolant
of :math:`f` on knots :math:`x_0 < \dots < x_N`: :math:`c_0` is the first slope and
:math:`c_i` the change of slope at :math:`x_i`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

__all__ = [
    "LIFParams",
    "affine_chain",
    "compose_affine",
    "lif_euler_step",
    "lif_rate_theory",
    "lif_rates_simulated",
    "make_mlp",
    "make_separable_data",
    "novikoff_bound",
    "perceptron_predict",
    "perceptron_train",
    "perceptron_update",
    "relu_interpolant",
    "relu_network",
    "simulate_lif",
]


# --------------------------------------------------------------------------- LIF neuron


@dataclass(frozen=True)
class LIFParams:
    """Parameters of a leaky integrate-and-fire neuron (ms, mV, MOhm)."""

    tau: float = 10.0  # membrane time constant, ms
    resistance: float = 10.0  # MOhm, so 1 nA drives 10 mV
    v_rest: float = 0.0  # mV, potentials are measured relative to rest
    v_reset: float = 0.0
    v_th: float = 15.0
    t_ref: float = 2.0  # refractory period, ms

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.resistance <= 0 or self.t_ref < 0:
            raise ValueError("tau and resistance must be positive and t_ref non-negative")
        if self.v_reset >= self.v_th:
            raise ValueError(f"v_reset ({self.v_reset}) must lie below v_th ({self.v_th})")


def lif_euler_step(
    v: np.ndarray | float, current: np.ndarray | float, dt: float, params: LIFParams
) -> np.ndarray:
    """One forward-Euler step of the sub-threshold dynamics (no spike handling)."""
    dv = (-(np.asarray(v) - params.v_rest) + params.resistance * np.asarray(current)) / params.tau
    return np.asarray(v) + dt * dv


def simulate_lif(
    current: np.ndarray | float,
    duration: float,
    dt: float = 0.01,
    params: LIFParams | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Simulate LIF neurons driven by constant currents, one neuron per entry of ``current``.

    Args:
        current: input current(s) in nA, a scalar or 1-D array (one neuron each).
        duration: simulated time in ms.
        dt: Euler step in ms; it must be well below ``tau``.
        params: neuron parameters (defaults: :class:`LIFParams`).

    Returns:
        ``(t, v, spikes)``: times ``[n_steps + 1]`` in ms, potentials ``[n_steps + 1,
        n_neurons]`` in mV (set to ``v_th`` at the step a spike is emitted, so spikes show
        in plots), and for each neuron the array of its spike times in ms.
    """
    params = params or LIFParams()
    drive = np.atleast_1d(np.asarray(current, dtype=np.float64))
    if drive.ndim != 1:
        raise ValueError(f"current must be a scalar or 1-D array, got shape {drive.shape}")
    if not 0 < dt <= 0.1 * params.tau:
        raise ValueError(f"dt={dt} must be positive and at most tau/10={params.tau / 10}")
    n_steps = round(duration / dt)
    t = np.arange(n_steps + 1) * dt
    v = np.full(drive.shape, params.v_reset, dtype=np.float64)
    refractory_until = np.full(drive.shape, -np.inf)
    trace = np.empty((n_steps + 1, drive.size))
    trace[0] = v
    spike_steps: list[list[int]] = [[] for _ in range(drive.size)]
    for k in range(1, n_steps + 1):
        now = t[k]
        frozen = now <= refractory_until  # clamped at reset during the refractory period
        v = np.where(frozen, params.v_reset, lif_euler_step(v, drive, dt, params))
        fired = v >= params.v_th
        trace[k] = np.where(fired, params.v_th, v)
        for neuron in np.flatnonzero(fired):
            spike_steps[neuron].append(k)
        v = np.where(fired, params.v_reset, v)
        refractory_until = np.where(fired, now + params.t_ref, refractory_until)
    spikes = [t[np.asarray(steps, dtype=int)] for steps in spike_steps]
    return t, trace, spikes


def lif_rate_theory(current: np.ndarray | float, params: LIFParams | None = None) -> np.ndarray:
    """Closed-form firing rate (Hz) of a LIF neuron under constant current (see module doc).

    Sub-threshold currents give exactly 0, never NaN (the logarithm is only evaluated
    where its argument is positive).
    """
    params = params or LIFParams()
    drive = params.v_rest + params.resistance * np.asarray(current, dtype=np.float64)
    above = drive > params.v_th
    safe = np.where(above, drive, params.v_th + 1.0)  # placeholder where the rate is 0
    period = params.t_ref + params.tau * np.log((safe - params.v_reset) / (safe - params.v_th))
    return np.where(above, 1000.0 / period, 0.0)


def lif_rates_simulated(
    current: np.ndarray, duration: float = 500.0, dt: float = 0.01, params: LIFParams | None = None
) -> np.ndarray:
    """Firing rate (Hz) of simulated LIF neurons: 1000 / mean inter-spike interval.

    Neurons with fewer than two spikes in ``duration`` get rate 0.
    """
    _, _, spikes = simulate_lif(current, duration, dt, params)
    rates = [1000.0 / np.mean(np.diff(times)) if len(times) >= 2 else 0.0 for times in spikes]
    return np.asarray(rates)


# --------------------------------------------------------------------------- perceptron


def make_separable_data(
    n: int, margin: float = 0.1, dim: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Points in ``[-1, 1]^dim`` labelled by a random hyperplane, keeping only those at
    distance > ``margin`` from it.

    Returns:
        ``(x [n, dim], y [n] in {-1, +1}, w_true [dim + 1] (last entry the bias, unit
        norm over all entries), gamma)`` where ``gamma`` is the margin of ``w_true`` in
        the augmented space ``(x, 1)``, the quantity in the perceptron mistake bound.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)
    b = rng.uniform(-0.3, 0.3)
    points: list[np.ndarray] = []
    while sum(len(p) for p in points) < n:
        candidates = rng.uniform(-1, 1, size=(4 * n, dim))
        points.append(candidates[np.abs(candidates @ w + b) > margin])
    x = np.concatenate(points)[:n]
    y = np.where(x @ w + b > 0, 1.0, -1.0)
    w_true = np.append(w, b)
    w_true /= np.linalg.norm(w_true)
    gamma = float(np.min(y * (np.c_[x, np.ones(n)] @ w_true)))
    return x, y, w_true, gamma


def perceptron_predict(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """``sign(x @ w + b)`` with ties sent to -1 (a point on the boundary is a mistake for +1)."""
    return np.where(x @ w + b > 0, 1.0, -1.0)


def perceptron_update(
    w: np.ndarray, b: float, x: np.ndarray, y: float, lr: float = 1.0
) -> tuple[np.ndarray, float]:
    """Rosenblatt's update for one example: change ``(w, b)`` only if ``y (w.x + b) <= 0``.

    The ``<=`` matters: from the usual start ``w = 0, b = 0`` every point has margin 0,
    and a strict ``<`` would never make a first update.
    """
    if y * (x @ w + b) <= 0:
        return w + lr * y * x, b + lr * y
    return w, b


def perceptron_train(
    x: np.ndarray, y: np.ndarray, lr: float = 1.0, max_epochs: int = 100
) -> tuple[np.ndarray, float, int, list[int]]:
    """Cycle through the data with :func:`perceptron_update` until an epoch has no mistakes.

    Returns:
        ``(w, b, n_mistakes, mistakes_per_epoch)``; ``n_mistakes`` is the total number
        of updates (the quantity bounded by ``(R / gamma)^2``).
    """
    if set(np.unique(y)) - {-1.0, 1.0}:
        raise ValueError("perceptron labels must be -1 or +1")
    w, b = np.zeros(x.shape[1]), 0.0
    history: list[int] = []
    for _ in range(max_epochs):
        mistakes = 0
        for xi, yi in zip(x, y, strict=True):
            w_new, b_new = perceptron_update(w, b, xi, yi, lr)
            mistakes += int(b_new != b or not np.array_equal(w_new, w))
            w, b = w_new, b_new
        history.append(mistakes)
        if mistakes == 0:
            break
    return w, b, sum(history), history


def novikoff_bound(x: np.ndarray, y: np.ndarray, w_star: np.ndarray) -> float:
    r"""Novikoff's bound :math:`(R/\gamma)^2` on the perceptron's mistakes, for a separator.

    In the augmented space :math:`\tilde x = (x, 1)` (the bias is the weight of a constant
    input): :math:`R = \max_n \|\tilde x_n\|` and :math:`\gamma = \min_n y_n\, u \cdot \tilde
    x_n` with :math:`u = w^* / \|w^*\|`, ``w_star`` being ``[dim + 1]`` with the bias last.

    Raises:
        ValueError: ``w_star`` does not separate the data (:math:`\gamma \le 0`), so no
            bound follows from it.
    """
    augmented = np.c_[x, np.ones(len(x))]
    if w_star.shape != (augmented.shape[1],):
        raise ValueError(f"w_star must be [{augmented.shape[1]}] (weights, then bias)")
    gamma = float(np.min(y * (augmented @ w_star))) / float(np.linalg.norm(w_star))
    if gamma <= 0:
        raise ValueError(f"w_star does not separate the data (margin {gamma:.3g} <= 0)")
    radius = float(np.linalg.norm(augmented, axis=1).max())
    return (radius / gamma) ** 2


# --------------------------------------------------------------------------- MLPs


def make_mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear -> activation -> ... -> Linear`` with layer widths ``sizes``.

    ``make_mlp([2, 16, 16, 1])`` has two hidden layers of 16 units. The output layer has
    no activation (logits or regression outputs).
    """
    if len(sizes) < 2:
        raise ValueError(f"need at least input and output sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


AffineLayer = tuple[np.ndarray, np.ndarray]


def affine_chain(x: np.ndarray, layers: Sequence[AffineLayer]) -> np.ndarray:
    """Apply ``x -> W x + b`` layer after layer (rows of ``x`` are examples: ``x @ W.T + b``)."""
    for weight, bias in layers:
        x = x @ weight.T + bias
    return x


def compose_affine(layers: Sequence[AffineLayer]) -> AffineLayer:
    """The single affine map equal to the chain: ``W = W_L ... W_1``,
    ``b = W_L (... (W_2 b_1 + b_2) ...) + b_L``."""
    weight, bias = layers[0]
    for next_weight, next_bias in layers[1:]:
        if next_weight.shape[1] != weight.shape[0]:
            raise ValueError(f"layer shapes do not chain: {weight.shape} then {next_weight.shape}")
        weight, bias = next_weight @ weight, next_weight @ bias + next_bias
    return weight, bias


def relu_interpolant(
    f: Callable[[np.ndarray], np.ndarray], knots: np.ndarray
) -> tuple[float, np.ndarray]:
    """Hand-set ReLU units whose sum interpolates ``f`` linearly between ``knots``.

    Returns:
        ``(bias, coefs)`` with ``coefs[i]`` the output weight of ``relu(x - knots[i])``
        for ``i < len(knots) - 1``: ``coefs[0]`` is the first slope, ``coefs[i]`` the
        change of slope at ``knots[i]``; ``bias = f(knots[0])``.
    """
    knots = np.asarray(knots, dtype=np.float64)
    if knots.ndim != 1 or knots.size < 2 or np.any(np.diff(knots) <= 0):
        raise ValueError("knots must be a strictly increasing 1-D array of length >= 2")
    values = f(knots)
    slopes = np.diff(values) / np.diff(knots)
    coefs = np.diff(slopes, prepend=0.0)
    return float(values[0]), coefs


def relu_network(
    x: np.ndarray | Float[Tensor, " n"], knots: np.ndarray, bias: float, coefs: np.ndarray
) -> np.ndarray:
    """Evaluate ``bias + sum_i coefs[i] relu(x - knots[i])`` (a 1-hidden-layer ReLU net)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    hidden = np.maximum(0.0, np.asarray(x)[:, None] - np.asarray(knots)[None, : len(coefs)])
    return bias + hidden @ coefs
