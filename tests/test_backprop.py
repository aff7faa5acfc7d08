"""Hand-written backprop against PyTorch autograd (decoding_gpt.foundations.backprop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoding_gpt.foundations.backprop import (
    cross_entropy,
    fit_loglog_slope,
    flatten_params,
    init_mlp,
    linear_backward,
    loss_and_grads,
    mlp_forward,
    mlp_loss_torch,
    taylor_remainders,
    train_mlp,
    unflatten_params,
)

SIZES = [3, 6, 5, 4]


def _data(n: int = 9, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])), rng.integers(0, SIZES[-1], size=n)


def _autograd(params, x, y):
    tensors = [
        (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True))
        for w, b in params
    ]
    # An independent forward pass written with torch.nn.functional.
    h = torch.tensor(x)
    for i, (w, b) in enumerate(tensors):
        h = torch.nn.functional.linear(h, w, b)
        h = torch.tanh(h) if i < len(tensors) - 1 else h
    loss = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    loss.backward()
    return loss.item(), [(w.grad.numpy(), b.grad.numpy()) for w, b in tensors]


def test_gradients_match_autograd():
    params, (x, y) = init_mlp(SIZES, seed=1), _data()
    loss, grads = loss_and_grads(params, x, y)
    ref_loss, ref_grads = _autograd(params, x, y)
    assert loss == pytest.approx(ref_loss, abs=1e-12)
    for (dw, db), (rw, rb) in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(dw, rw, atol=1e-12)
        np.testing.assert_allclose(db, rb, atol=1e-12)


def test_torch_loss_matches_numpy_loss():
    params, (x, y) = init_mlp(SIZES, seed=2), _data(seed=2)
    tensors = [(torch.tensor(w), torch.tensor(b)) for w, b in params]
    logits, _ = mlp_forward(params, x)
    assert mlp_loss_torch(tensors, torch.tensor(x), torch.tensor(y)).item() == pytest.approx(
        cross_entropy(logits, y)[0], abs=1e-12
    )


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    loss, dlogits = cross_entropy(logits, np.array([0, 1]))
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor([0, 1]))
    assert loss == pytest.approx(expected.item())
    assert np.all(np.isfinite(dlogits))


def test_linear_backward_matches_autograd():
    rng = np.random.default_rng(0)
    x, w, b = (torch.tensor(rng.normal(size=s), requires_grad=True) for s in [(4, 3), (2, 3), 2])
    dout = rng.normal(size=(4, 2))
    torch.nn.functional.linear(x, w, b).backward(torch.tensor(dout))
    dx, dw, db = linear_backward(x.detach().numpy(), w.detach().numpy(), dout)
    for ours, ref in [(dx, x.grad), (dw, w.grad), (db, b.grad)]:
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-12)


def test_taylor_test_orders():
    params, (x, y) = init_mlp(SIZES, seed=0), _data()
    theta = flatten_params(params)
    f = lambda t: loss_and_grads(unflatten_params(t, params), x, y)[0]
    grad = flatten_params(loss_and_grads(params, x, y)[1])
    direction = np.random.default_rng(1).normal(size=theta.size)
    hs = np.logspace(-2, -5, 7)
    r0, r1 = taylor_remainders(f, grad, theta, direction, hs)
    assert fit_loglog_slope(hs, r0) == pytest.approx(1.0, abs=0.1)
    assert fit_loglog_slope(hs, r1) == pytest.approx(2.0, abs=0.1)
    # A wrong gradient must fail the test: r1 degrades to first order.
    wrong = grad + 0.1 * np.random.default_rng(2).normal(size=grad.size)
    _, r1_wrong = taylor_remainders(f, wrong, theta, direction, hs)
    assert fit_loglog_slope(hs, r1_wrong) == pytest.approx(1.0, abs=0.1)


def test_flatten_roundtrip_and_size_check():
    params = init_mlp(SIZES, seed=0)
    theta = flatten_params(params)
    assert theta.size == sum(w.size + b.size for w, b in params)
    for (w, b), (w2, b2) in zip(params, unflatten_params(theta, params), strict=True):
        assert np.array_equal(w, w2) and np.array_equal(b, b2)
    with pytest.raises(ValueError, match="entries"):
        unflatten_params(np.zeros(theta.size + 1), params)


def test_training_reduces_loss():
    x, y = _data(n=40, seed=3)
    _, losses = train_mlp(init_mlp(SIZES, seed=0), x, y, lr=0.5, steps=200)
    assert losses[-1] < 0.5 * losses[0]


def test_forward_rejects_wrong_input_width():
    with pytest.raises(ValueError, match="x must be"):
        mlp_forward(init_mlp(SIZES), np.zeros((2, 5)))


def test_taylor_test_sees_one_direction_only():
    # Slope 2 is necessary, not sufficient: an error orthogonal to d leaves r1 second order
    # along d; a second random direction exposes it (slope 1).
    params, (x, y) = init_mlp(SIZES, seed=0), _data()
    theta = flatten_params(params)
    f = lambda t: loss_and_grads(unflatten_params(t, params), x, y)[0]
    grad = flatten_params(loss_and_grads(params, x, y)[1])
    rng = np.random.default_rng(3)
    direction, other = rng.normal(size=theta.size), rng.normal(size=theta.size)
    error = rng.normal(size=theta.size)
    error -= (error @ direction) / (direction @ direction) * direction
    wrong = grad + 0.5 * np.linalg.norm(grad) / np.linalg.norm(error) * error
    hs = np.logspace(-2, -5, 7)
    assert fit_loglog_slope(hs, taylor_remainders(f, wrong, theta, direction, hs)[1]) == (
        pytest.approx(2.0, abs=0.1)
    )
    assert fit_loglog_slope(hs, taylor_remainders(f, wrong, theta, other, hs)[1]) == (
        pytest.approx(1.0, abs=0.1)
    )
