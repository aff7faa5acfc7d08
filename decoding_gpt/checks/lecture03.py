"""Checks for the exercises of lecture 03 (autodiff and backprop).

References: :mod:`decoding_gpt.foundations.backprop` for the NumPy pieces, PyTorch autograd for the
gradients of the full network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.foundations.backprop import (
    cross_entropy,
    init_mlp,
    linear_backward,
    loss_and_grads,
    taylor_remainders,
)

__all__ = [
    "check_cross_entropy_grad",
    "check_linear_backward",
    "check_taylor_remainders",
    "check_torch_loss",
]


def _pair_or_triple(result: object, n: int, call: str) -> tuple:
    if not isinstance(result, tuple) or len(result) != n:
        raise CheckError(f"{call} must return a tuple of {n} arrays.")
    return result


@exercise
def check_linear_backward(
    backward: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]],
) -> None:
    """``backward(x, W, dout) -> (dx, dW, db)`` for ``out = x @ W.T + b``."""
    rng = np.random.default_rng(0)
    x, weight, dout = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), rng.normal(size=(5, 4))
    dx, dweight, dbias = _pair_or_triple(backward(x, weight, dout), 3, "backward(x, W, dout)")
    want_dx, want_dw, want_db = linear_backward(x, weight, dout)
    compare_tensors(
        dx, want_dx, "dx", atol=1e-9, hint="dL/dx = dout @ W (shape [batch, in], like x)."
    )
    got_dw = to_numpy(dweight, "dW")
    if got_dw.shape == want_dw.shape[::-1]:
        raise CheckError(
            f"dW has shape {got_dw.shape}, W has {want_dw.shape}: a gradient has the shape of "
            "its parameter. Use dout.T @ x."
        )
    compare_tensors(got_dw, want_dw, "dW", atol=1e-9, hint="dL/dW = dout.T @ x.")
    got_db = to_numpy(dbias, "db")
    if got_db.shape == dout.shape:
        raise CheckError(
            f"db has shape {got_db.shape}, b has {want_db.shape}: b is shared by every row of "
            "the batch, so its gradient sums dout over the batch axis."
        )
    compare_tensors(got_db, want_db, "db", atol=1e-9, hint="dL/db = dout.sum(axis=0).")
    passed("check_linear_backward")


@exercise
def check_cross_entropy_grad(grad_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """``grad_fn(logits, y) -> dL/dlogits`` of the MEAN softmax cross-entropy."""
    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(6, 4)) * 3, rng.integers(0, 4, size=6)
    logits[0, 0] = 800.0  # overflows a naive exp: the stable softmax subtracts the max
    got = to_numpy(grad_fn(logits.copy(), y), "dlogits")
    want = cross_entropy(logits, y)[1]
    n = logits.shape[0]
    if got.shape == want.shape and np.all(np.isfinite(got)):
        if np.allclose(got, want * n, atol=1e-9):
            raise CheckError(
                f"dlogits is {n}x too large: the loss is the MEAN over the batch, so divide by N."
            )
        if np.allclose(got, -want, atol=1e-9):
            raise CheckError("dlogits has the wrong sign: it is (softmax(z) - onehot(y)) / N.")
    compare_tensors(
        got,
        want,
        "dlogits",
        atol=1e-9,
        hint="(softmax(z) - onehot(y)) / N; compute softmax from z - z.max(axis=1) for stability.",
    )
    passed("check_cross_entropy_grad")


@exercise
def check_taylor_remainders(
    remainders: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    """``remainders(f, grad, theta, direction, hs) -> (r0, r1)`` (see lecture 03)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=4)
    f = lambda theta: float(np.sum(np.sin(theta) * a) + 0.5 * theta @ theta)
    theta, direction = rng.normal(size=4), rng.normal(size=4)
    grad = np.cos(theta) * a + theta
    hs = np.logspace(-1, -4, 4)
    result = _pair_or_triple(remainders(f, grad, theta, direction, hs), 2, "remainders(...)")
    want_r0, want_r1 = taylor_remainders(f, grad, theta, direction, hs)
    compare_tensors(
        result[0], want_r0, "r0", atol=1e-12, rtol=1e-6, hint="r0(h) = |f(theta + h d) - f(theta)|."
    )
    got_r1 = to_numpy(result[1], "r1")
    if got_r1.shape == want_r1.shape:
        f0 = f(theta)
        without_h = np.array([abs(f(theta + h * direction) - f0 - grad @ direction) for h in hs])
        if np.allclose(got_r1, without_h, rtol=1e-6):
            raise CheckError("r1 subtracts grad . d without the factor h: use h * (grad @ d).")
    compare_tensors(
        got_r1,
        want_r1,
        "r1",
        atol=1e-12,
        rtol=1e-6,
        hint="r1(h) = |f(theta + h d) - f(theta) - h grad.d| (keep the absolute value).",
    )
    passed("check_taylor_remainders")


@exercise
def check_torch_loss(
    torch_loss: Callable[
        [Sequence[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor], torch.Tensor
    ],
) -> None:
    """``torch_loss(params, x, y)``: the lecture's tanh MLP + mean cross-entropy in PyTorch.

    Its autograd gradients must equal the hand-written NumPy backward pass.
    """
    rng = np.random.default_rng(0)
    params = init_mlp([3, 5, 4, 3], seed=1)
    x, y = rng.normal(size=(7, 3)), rng.integers(0, 3, size=7)
    want_loss, want_grads = loss_and_grads(params, x, y)
    tensors = [
        (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True))
        for w, b in params
    ]
    loss = torch_loss(tensors, torch.tensor(x), torch.tensor(y))
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise CheckError("torch_loss must return a scalar tensor (the mean loss).")
    if not loss.requires_grad:
        raise CheckError(
            "the loss does not require grad: compute it from the parameter tensors with torch "
            "ops (no .numpy(), .item() or .detach() on the way)."
        )
    got = float(loss.detach())
    if np.isclose(got, want_loss * len(y), rtol=1e-9):
        raise CheckError("the loss is the SUM over the batch; the lecture uses the mean.")
    compare_tensors(got, want_loss, "loss", atol=1e-9, hint="tanh hidden layers, linear output.")
    loss.backward()
    for layer, ((w, b), (dw, db)) in enumerate(zip(tensors, want_grads, strict=True)):
        if w.grad is None or b.grad is None:
            raise CheckError(f"layer {layer} got no gradient: is it used in the forward pass?")
        compare_tensors(w.grad, dw, f"autograd dW of layer {layer}", atol=1e-9)
        compare_tensors(b.grad, db, f"autograd db of layer {layer}", atol=1e-9)
    passed("check_torch_loss")
