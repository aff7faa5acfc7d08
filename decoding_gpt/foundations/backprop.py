r"""Backpropagation by hand: a NumPy MLP with explicit forward and backward passes.

The network is :math:`h_0 = x`, :math:`z_l = h_{l-1} W_l^\top + b_l`, :math:`h_l = \tanh(z_l)`
for hidden layers, and logits :math:`z_L` for the last; the loss is the mean softmax
cross-entropy :math:`\mathcal{L} = -\frac1N \sum_n \log \mathrm{softmax}(z_L^{(n)})_{y_n}`.

Backward, with :math:`\delta_l = \partial\mathcal{L}/\partial z_l`:

.. math::
    \delta_L = \tfrac1N(\mathrm{softmax}(z_L) - \mathrm{onehot}(y)), \qquad
    \frac{\partial\mathcal{L}}{\partial W_l} = \delta_l^\top h_{l-1}, \qquad
    \frac{\partial\mathcal{L}}{\partial b_l} = \textstyle\sum_n \delta_l^{(n)},

    \frac{\partial\mathcal{L}}{\partial h_{l-1}} = \delta_l W_l, \qquad
    \delta_{l-1} = \frac{\partial\mathcal{L}}{\partial h_{l-1}} \odot (1 - h_{l-1}^2).

Gradient check by a Taylor test: for a smooth loss :math:`f`, a point :math:`\theta` and a
direction :math:`d`,

.. math::
    r_0(h) = |f(\theta + h d) - f(\theta)| = O(h), \qquad
    r_1(h) = |f(\theta + h d) - f(\theta) - h \nabla f(\theta)\cdot d| = O(h^2).

On a log-log plot :math:`r_0` has slope 1. With the true gradient :math:`r_1` has slope 2;
with a gradient :math:`g` such that :math:`(\nabla f - g)\cdot d \ne 0` it has slope 1. So
slope 2 is necessary for a right gradient but checks it along :math:`d` only (an error
orthogonal to :math:`d` is invisible; try a second random direction), and only against
the :math:`f` that was coded. The test needs float64: in float32 round-off swamps
:math:`r_1` already at :math:`h \approx 10^{-3}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "Params",
    "cross_entropy",
    "fit_loglog_slope",
    "flatten_params",
    "init_mlp",
    "linear_backward",
    "loss_and_grads",
    "mlp_backward",
    "mlp_forward",
    "mlp_loss_torch",
    "taylor_remainders",
    "train_mlp",
    "unflatten_params",
]

Params = list[tuple[np.ndarray, np.ndarray]]  # [(W_l [out, in], b_l [out]), ...]


def init_mlp(sizes: Sequence[int], seed: int = 0) -> Params:
    """Weights ``W_l ~ N(0, 1/fan_in)`` (keeps tanh units out of saturation), zero biases."""
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=(fan_out, fan_in)), np.zeros(fan_out))
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits ``[N, n_classes]`` and the cache ``[h_0, h_1, ..., h_{L-1}]`` of layer inputs."""
    if x.ndim != 2 or x.shape[1] != params[0][0].shape[1]:
        raise ValueError(f"x must be [N, {params[0][0].shape[1]}], got shape {x.shape}")
    cache = [x]
    h = x
    for layer, (weight, bias) in enumerate(params):
        z = h @ weight.T + bias
        if layer == len(params) - 1:
            return z, cache
        h = np.tanh(z)
        cache.append(h)
    raise AssertionError("unreachable")


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable log-sum-exp
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -float(log_probs[np.arange(n), y].mean())
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), y] -= 1.0
    return loss, dlogits / n


def linear_backward(
    x: np.ndarray, weight: np.ndarray, dout: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``out = x @ W.T + b`` given ``dout = dL/dout``: ``(dx, dW, db)``."""
    return dout @ weight, dout.T @ x, dout.sum(axis=0)


def mlp_backward(params: Params, cache: list[np.ndarray], dlogits: np.ndarray) -> Params:
    """Backpropagate ``dlogits`` through the MLP; returns ``[(dW_l, db_l), ...]``."""
    grads: Params = []
    delta = dlogits
    for layer in range(len(params) - 1, -1, -1):
        weight, _ = params[layer]
        h_prev = cache[layer]
        dh_prev, dweight, dbias = linear_backward(h_prev, weight, delta)
        grads.append((dweight, dbias))
        if layer > 0:
            delta = dh_prev * (1.0 - h_prev**2)  # tanh'(z) = 1 - tanh(z)^2
    return grads[::-1]


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Forward, loss and backward in one call."""
    logits, cache = mlp_forward(params, x)
    loss, dlogits = cross_entropy(logits, y)
    return loss, mlp_backward(params, cache, dlogits)


def train_mlp(
    params: Params, x: np.ndarray, y: np.ndarray, lr: float = 0.5, steps: int = 500
) -> tuple[Params, list[float]]:
    """Full-batch gradient descent with the hand-written gradients; returns the loss curve."""
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grads(params, x, y)
        losses.append(loss)
        params = [
            (w - lr * dw, b - lr * db) for (w, b), (dw, db) in zip(params, grads, strict=True)
        ]
    return params, losses


def flatten_params(params: Params) -> np.ndarray:
    """All weights and biases as one vector (the theta of the Taylor test)."""
    return np.concatenate([array.ravel() for layer in params for array in layer])


def unflatten_params(theta: np.ndarray, like: Params) -> Params:
    """Inverse of :func:`flatten_params`, with the shapes of ``like``."""
    out: Params = []
    start = 0
    for weight, bias in like:
        w_end = start + weight.size
        b_end = w_end + bias.size
        out.append((theta[start:w_end].reshape(weight.shape), theta[w_end:b_end]))
        start = b_end
    if start != theta.size:
        raise ValueError(f"theta has {theta.size} entries, the parameters need {start}")
    return out


def taylor_remainders(
    f: Callable[[np.ndarray], float],
    grad: np.ndarray,
    theta: np.ndarray,
    direction: np.ndarray,
    hs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Zeroth- and first-order Taylor remainders ``(r0(h), r1(h))`` for each step in ``hs``."""
    f0 = f(theta)
    slope = float(grad @ direction)
    r0 = np.array([abs(f(theta + h * direction) - f0) for h in hs])
    r1 = np.array([abs(f(theta + h * direction) - f0 - h * slope) for h in hs])
    return r0, r1


def fit_loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the order of a remainder)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def mlp_loss_torch(
    params: Sequence[tuple[Float[Tensor, "out in"], Float[Tensor, " out"]]],
    x: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
) -> Float[Tensor, ""]:
    """The same network and loss in PyTorch, for autograd to differentiate."""
    h = x
    for layer, (weight, bias) in enumerate(params):
        h = h @ weight.T + bias
        if layer < len(params) - 1:
            h = torch.tanh(h)
    return torch.nn.functional.cross_entropy(h, y)
