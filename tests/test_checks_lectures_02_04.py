"""Exercise checks of lectures 02-04: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make; the test also pins the part of the
message that names the mistake, so a check cannot degrade to "assertion failed".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoding_gpt.checks import CheckError, compare_tensors
from decoding_gpt.checks import lecture02 as l02
from decoding_gpt.checks import lecture03 as l03
from decoding_gpt.checks import lecture04 as l04
from decoding_gpt.foundations.backprop import cross_entropy, linear_backward, taylor_remainders
from decoding_gpt.foundations.convnets import conv_output_size
from decoding_gpt.foundations.neurons import (
    LIFParams,
    compose_affine,
    lif_rate_theory,
    perceptron_update,
    relu_interpolant,
)

# --------------------------------------------------------------------------- shared helper


def test_compare_tensors_messages():
    compare_tensors(torch.ones(2), np.ones(2), "x")  # accepts equal values across types
    with pytest.raises(CheckError, match=r"shape \(3,\), expected \(2,\)"):
        compare_tensors(np.ones(3), np.ones(2), "x")
    with pytest.raises(CheckError, match="NaN/inf"):
        compare_tensors(np.array([1.0, np.nan]), np.ones(2), "x")
    with pytest.raises(CheckError, match=r"max abs diff 0.5 at index \(1,\)"):
        compare_tensors(np.array([1.0, 1.5]), np.ones(2), "x")
    with pytest.raises(CheckError, match="forget to `return`"):
        compare_tensors(None, np.ones(2), "x")
    assert issubclass(CheckError, AssertionError)


# --------------------------------------------------------------------------- lecture 02


def _lif_kHz(current, params):
    return lif_rate_theory(current, params) / 1000.0


def _lif_nan_below(current, params):
    drive = params.resistance * np.asarray(current)
    with np.errstate(all="ignore"):
        return 1000.0 / (params.t_ref + params.tau * np.log(drive / (drive - params.v_th)))


def _lif_no_refractory(current, params):
    drive = params.resistance * np.asarray(current)
    safe = np.maximum(drive, params.v_th + 1e-9)
    return np.where(
        drive > params.v_th, 1000.0 / (params.tau * np.log(safe / (safe - params.v_th))), 0.0
    )


def test_check_lif_rate():
    l02.check_lif_rate(lambda current, params: lif_rate_theory(current, params))
    for wrong, message in [
        (_lif_kHz, "1000x too small"),
        (_lif_nan_below, "NaN for sub-threshold"),
        (_lif_no_refractory, "refractory"),
        (lambda current, params: None, "forget to `return`"),
    ]:
        with pytest.raises(CheckError, match=message):
            l02.check_lif_rate(wrong)


def _update_strict(w, b, x, y, lr):
    return (w + lr * y * x, b + lr * y) if y * (x @ w + b) < 0 else (w, b)


def _update_always(w, b, x, y, lr):
    return w + lr * y * x, b + lr * y


def _update_wrong_sign(w, b, x, y, lr):
    return (w - lr * y * x, b - lr * y) if y * (x @ w + b) <= 0 else (w, b)


def _update_no_bias(w, b, x, y, lr):
    return (w + lr * y * x, b) if y * (x @ w + b) <= 0 else (w, b)


def test_check_perceptron_update():
    l02.check_perceptron_update(perceptron_update)
    for wrong, message in [
        (_update_strict, "use <=, not <"),
        (_update_always, "correctly classified"),
        (_update_wrong_sign, "wrong sign"),
        (_update_no_bias, "bias"),
    ]:
        with pytest.raises(CheckError, match=message):
            l02.check_perceptron_update(wrong)


def _compose_reversed(layers):
    weight, bias = layers[0]
    for w, b in layers[1:]:
        weight, bias = weight.T @ w.T, w @ bias + b
    return weight.T, bias


def _compose_ignore_bias(layers):
    return compose_affine(layers)[0], np.zeros(layers[-1][1].shape)


def _compose_last_bias(layers):
    return compose_affine(layers)[0], layers[-1][1]


def test_check_compose_affine():
    l02.check_compose_affine(compose_affine)
    for wrong, message in [
        (lambda layers: (compose_affine(layers)[0].T, compose_affine(layers)[1]), "order"),
        (_compose_ignore_bias, "wrong values"),
        (_compose_last_bias, "only holds the last layer's bias"),
        (lambda layers: compose_affine(layers)[0], "pair"),
    ]:
        with pytest.raises(CheckError, match=message):
            l02.check_compose_affine(wrong)


def _interp_slopes(f, knots):
    values = f(knots)
    return float(values[0]), np.diff(values) / np.diff(knots)


def _interp_one_too_many(f, knots):
    bias, coefs = relu_interpolant(f, knots)
    return bias, np.append(coefs, 0.0)


def _interp_wrong_bias(f, knots):
    return 0.0, relu_interpolant(f, knots)[1]


def test_check_relu_interpolant():
    l02.check_relu_interpolant(relu_interpolant)
    for wrong, message in [
        (_interp_slopes, "CHANGE of slope"),
        (_interp_one_too_many, "shape"),
        (_interp_wrong_bias, "bias"),
    ]:
        with pytest.raises(CheckError, match=message):
            l02.check_relu_interpolant(wrong)


# --------------------------------------------------------------------------- lecture 03


def test_check_linear_backward():
    l03.check_linear_backward(linear_backward)
    for wrong, message in [
        (lambda x, w, d: (d @ w, x.T @ d, d.sum(0)), "a gradient has the shape"),
        (lambda x, w, d: (d @ w, d.T @ x, d), "sums dout over the batch"),
        (lambda x, w, d: (d @ w * 2, d.T @ x, d.sum(0)), "dx has wrong values"),
        (lambda x, w, d: (d @ w, d.T @ x, d.mean(0)), "db has wrong values"),
    ]:
        with pytest.raises(CheckError, match=message):
            l03.check_linear_backward(wrong)


def _ce_naive(logits, y):
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[np.arange(len(y)), y] -= 1
    return probs / len(y)


def test_check_cross_entropy_grad():
    l03.check_cross_entropy_grad(lambda z, y: cross_entropy(z, y)[1])
    with np.errstate(all="ignore"):
        for wrong, message in [
            (lambda z, y: cross_entropy(z, y)[1] * len(y), "MEAN over the batch"),
            (lambda z, y: -cross_entropy(z, y)[1], "wrong sign"),
            (_ce_naive, "NaN"),
            (lambda z, y: (z - np.eye(z.shape[1])[y]) / len(y), "wrong values"),
        ]:
            with pytest.raises(CheckError, match=message):
                l03.check_cross_entropy_grad(wrong)


def _remainders_no_h(f, grad, theta, d, hs):
    r0, _ = taylor_remainders(f, grad, theta, d, hs)
    return r0, np.array([abs(f(theta + h * d) - f(theta) - grad @ d) for h in hs])


def _remainders_signed(f, grad, theta, d, hs):
    return (
        np.array([f(theta + h * d) - f(theta) for h in hs]),
        taylor_remainders(f, grad, theta, d, hs)[1],
    )


def test_check_taylor_remainders():
    l03.check_taylor_remainders(taylor_remainders)
    for wrong, message in [
        (_remainders_no_h, "without the factor h"),
        (lambda f, g, t, d, hs: taylor_remainders(f, g, t, d, hs)[::-1], "r0 has wrong values"),
        (_remainders_signed, "r0 has wrong values"),
        (lambda f, g, t, d, hs: taylor_remainders(f, g, t, d, hs)[0], "tuple of 2"),
    ]:
        with pytest.raises(CheckError, match=message):
            l03.check_taylor_remainders(wrong)


def _torch_loss(params, x, y, activation=torch.tanh, reduction="mean"):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        h = activation(h) if i < len(params) - 1 else h
    return torch.nn.functional.cross_entropy(h, y, reduction=reduction)


def test_check_torch_loss():
    l03.check_torch_loss(_torch_loss)
    for wrong, message in [
        (lambda p, x, y: _torch_loss(p, x, y, reduction="sum"), "SUM over the batch"),
        (lambda p, x, y: _torch_loss(p, x, y, activation=torch.relu), "loss has wrong values"),
        (lambda p, x, y: _torch_loss(p, x, y).detach(), "does not require grad"),
        (lambda p, x, y: _torch_loss(p, x, y, reduction="none"), "scalar"),
    ]:
        with pytest.raises(CheckError, match=message):
            l03.check_torch_loss(wrong)


# --------------------------------------------------------------------------- lecture 04


def test_check_conv_output_size():
    l04.check_conv_output_size(lambda n, k, s, p: conv_output_size(n, k, s, p))
    for wrong, message in [
        (lambda n, k, s, p: (n + 2 * p - k) // s, "forgot the \\+1"),
        (lambda n, k, s, p: (n + p - k) // s + 1, "BOTH sides"),
        (lambda n, k, s, p: -(-(n + 2 * p - k) // s) + 1, "floor"),
        (lambda n, k, s, p: (n + 2 * p - k) / s + 1, "float"),
    ]:
        with pytest.raises(CheckError, match=message):
            l04.check_conv_output_size(wrong)


def _adam(theta, grad, m, v, t, lr, beta1, beta2, eps, correct=True, eps_inside=False, square=True):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * (grad**2 if square else np.abs(grad))
    m_hat, v_hat = (m / (1 - beta1**t), v / (1 - beta2**t)) if correct else (m, v)
    denominator = np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps
    return theta - lr * m_hat / denominator, m, v


def test_check_adam_step():
    l04.check_adam_step(_adam)
    for wrong, message in [
        (lambda *a: _adam(*a, correct=False), "bias correction"),
        (lambda *a: _adam(*a, eps_inside=True), "OUTSIDE the square root"),
        (lambda *a: _adam(*a, square=False), "SQUARED gradient"),
        (lambda *a: _adam(*a)[0], "triple"),
    ]:
        with pytest.raises(CheckError, match=message):
            l04.check_adam_step(wrong)


def test_check_prefix_parity():
    l04.check_prefix_parity(lambda bits: bits.cumsum(dim=1) % 2)
    for wrong, message in [
        (lambda bits: bits.cumsum(dim=1), "mod 2"),
        (lambda bits: (bits.sum(1, keepdim=True) % 2).expand_as(bits), "WHOLE sequence"),
        (lambda bits: torch.nn.functional.pad(bits.cumsum(1) % 2, (1, 0))[:, :-1], "shifted"),
        (lambda bits: (bits.cumsum(dim=1) % 2).float(), "integer labels"),
    ]:
        with pytest.raises(CheckError, match=message):
            l04.check_prefix_parity(wrong)


def test_checks_use_lecture_defaults():
    # The LIF check exercises the course's default neuron; guard against drift.
    assert LIFParams().v_th == 15.0 and LIFParams().t_ref == 2.0
