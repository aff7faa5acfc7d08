"""Exercise checks of lectures 02-04: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make; the test also pins the part of the
message that names the mistake, so a check cannot degrade to "assertion failed".
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

from decoding_gpt.checks import CheckError, NotAttempted, compare_tensors, stub_statement
from decoding_gpt.checks import lecture02 as l02
from decoding_gpt.checks import lecture03 as l03
from decoding_gpt.checks import lecture04 as l04
from decoding_gpt.foundations.backprop import (
    cross_entropy,
    linear_backward,
    loss_and_grads,
    taylor_remainders,
)
from decoding_gpt.foundations.convnets import conv_output_size
from decoding_gpt.foundations.micrograd import Value
from decoding_gpt.foundations.neurons import (
    LIFParams,
    compose_affine,
    lif_rate_theory,
    novikoff_bound,
    perceptron_train,
    perceptron_update,
    relu_interpolant,
)
from decoding_gpt.training import TrainConfig, lr_at

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


def _stub_of(name):
    """A student edition's stub for `name`: raises the NotImplementedError it writes."""

    def stub(*args, **kwargs):
        raise NotImplementedError(stub_statement(name).split('"')[1])

    return stub


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


def _train(x, y, lr=1.0, max_epochs=100, keep_last=True, stop=True, count="updates", order=None):
    """The perceptron's training loop with one classic mistake switched on."""
    w, b, history = np.zeros(x.shape[1]), 0.0, []
    for epoch in range(100 if stop == "ignore max_epochs" else max_epochs):
        mistakes = 0
        for i in order(len(y), epoch) if order else range(len(y)):
            mistakes += int(y[i] * (x[i] @ w + b) <= 0)
            w, b = perceptron_update(w, b, x[i], y[i], lr)
        if mistakes or keep_last:
            history.append(mistakes)
        if mistakes == 0 and stop:
            break
    total = len(history) if count == "epochs" else sum(history)
    return w, b, total, history


def _shuffled(n, epoch):
    return np.random.default_rng(epoch).permutation(n)


def _bound(x, y, w_star, augment=True, square=True, normalise=True):
    points = np.c_[x, np.ones(len(x))] if augment else x
    margins = y * (np.c_[x, np.ones(len(x))] @ w_star)
    gamma = margins.min() / (np.linalg.norm(w_star) if normalise else 1.0)
    ratio = np.linalg.norm(points, axis=1).max() / gamma
    return ratio**2 if square else ratio


def test_check_perceptron_train():
    l02.check_perceptron_train(perceptron_train, novikoff_bound)
    l02.check_perceptron_train(_train, _bound)
    for train, bound, message in [
        (lambda *a: _train(*a, keep_last=False), _bound, "record the last epoch"),
        (lambda *a: _train(*a, stop=False), _bound, "stop after the first epoch without"),
        (lambda *a: _train(*a, stop="ignore max_epochs"), _bound, "stop after max_epochs"),
        (lambda *a: _train(*a, count="epochs"), _bound, "the number of epochs"),
        (lambda *a: _train(*a, order=_shuffled), _bound, "no shuffling"),
        (_train, lambda *a: _bound(*a, augment=False), "augmented space"),
        (_train, lambda *a: _bound(*a, square=False), "squared"),
        (_train, lambda *a: _bound(*a, normalise=False), "normalise first"),
        (lambda *a: _train(*a)[:3], _bound, "must return"),
    ]:
        with pytest.raises(CheckError, match=message):
            l02.check_perceptron_train(train, bound)
    with pytest.raises(NotAttempted, match="perceptron_train"):
        l02.check_perceptron_train(_stub_of("perceptron_train"), novikoff_bound)


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


def _mlp_grads(params, x, y, act=lambda z, h: 1 - h**2, mean=True, transpose=False, bias="sum"):
    (w1, b1), (w2, b2) = params
    z1 = x @ w1.T + b1
    h1 = np.tanh(z1)
    loss, dlogits = cross_entropy(h1 @ w2.T + b2, y)
    dlogits = dlogits if mean else dlogits * len(y)
    dz1 = (dlogits @ w2) * act(z1, h1)
    reduce = {"sum": lambda d: d.sum(0), "mean": lambda d: d.mean(0), "none": lambda d: d}[bias]
    dw1, dw2 = (x.T @ dz1, h1.T @ dlogits) if transpose else (dz1.T @ x, dlogits.T @ h1)
    return loss, [(dw1, reduce(dz1)), (dw2, reduce(dlogits))]


def test_check_mlp_backward():
    l03.check_mlp_backward(loss_and_grads)
    l03.check_mlp_backward(_mlp_grads)
    for wrong, message in [
        (lambda p, x, y: _mlp_grads(p, x, y, mean=False), "MEAN over the batch"),
        (lambda p, x, y: _mlp_grads(p, x, y, transpose=True), "shape of its parameter"),
        (lambda p, x, y: _mlp_grads(p, x, y, act=lambda z, h: 1.0), "derivative"),
        (lambda p, x, y: _mlp_grads(p, x, y, act=lambda z, h: 1 - z**2), "not the pre-activation"),
        (lambda p, x, y: _mlp_grads(p, x, y, bias="none"), "sums the upstream gradient"),
        (lambda p, x, y: _mlp_grads(p, x, y, bias="mean"), "N times too small"),
        (lambda p, x, y: (_mlp_grads(p, x, y)[0] * len(y), _mlp_grads(p, x, y)[1]), "SUM"),
        (lambda p, x, y: _mlp_grads(p, x, y)[1], "pair \\(loss, grads\\)"),
    ]:
        with pytest.raises(CheckError, match=message):
            l03.check_mlp_backward(wrong)
    with pytest.raises(NotAttempted, match="mlp_loss_and_grads"):
        l03.check_mlp_backward(_stub_of("mlp_loss_and_grads"))


def _engine(accumulate=True, order="topo", tanh_grad=None, chain=True, seed=True):
    """A Value class with one classic mistake switched on (the defaults are right)."""

    class V:
        def __init__(self, data, children=()):
            self.data, self.grad, self._prev = float(data), 0.0, children
            self._backward = lambda: None

        def _give(self, child, local):
            # chain rule, or the mistakes: no out.grad factor, overwrite instead of +=
            contribution = local * self.grad if chain else local
            child.grad = child.grad + contribution if accumulate else contribution

        def _op(self, data, children, locals_):
            out = V(data, children)
            out._backward = lambda: [
                out._give(c, g()) for c, g in zip(children, locals_, strict=True)
            ]
            return out

        def __add__(self, other):
            other = other if isinstance(other, V) else V(other)
            return self._op(self.data + other.data, (self, other), [lambda: 1.0, lambda: 1.0])

        def __mul__(self, other):
            other = other if isinstance(other, V) else V(other)
            return self._op(
                self.data * other.data, (self, other), [lambda: other.data, lambda: self.data]
            )

        def __pow__(self, k):
            return self._op(self.data**k, (self,), [lambda: k * self.data ** (k - 1)])

        def tanh(self):
            t = math.tanh(self.data)
            local = tanh_grad(self.data) if tanh_grad else 1 - t**2
            return self._op(t, (self,), [lambda: local])

        def exp(self):
            return self._op(math.exp(self.data), (self,), [lambda: math.exp(self.data)])

        def log(self):
            return self._op(math.log(self.data), (self,), [lambda: 1 / self.data])

        def relu(self):
            return self._op(max(self.data, 0.0), (self,), [lambda: float(self.data > 0)])

        __radd__ = __add__
        __rmul__ = __mul__

        def __neg__(self):
            return self * -1.0

        def __sub__(self, other):
            return self + (-other)

        def __rsub__(self, other):
            return (-self) + other

        def __truediv__(self, other):
            return self * (other if isinstance(other, V) else V(other)) ** -1.0

        def __rtruediv__(self, other):
            return V(other) * self**-1.0

        def backward(self):
            if seed:
                self.grad = 1.0
            if order == "recursive":  # no topological sort: a shared node runs twice
                self._backward()
                for child in self._prev:
                    child.backward_no_seed()
                return
            nodes, seen, frontier = [], set(), [self]
            if order == "bfs":  # breadth-first from the output: a node can run too early
                while frontier:
                    node = frontier.pop(0)
                    if id(node) not in seen:
                        seen.add(id(node))
                        nodes.append(node)
                        frontier.extend(node._prev)
            else:
                topo = []

                def visit(node):
                    if id(node) not in seen:
                        seen.add(id(node))
                        for child in node._prev:
                            visit(child)
                        topo.append(node)

                visit(self)
                nodes = topo if order == "forward" else topo[::-1]
            for node in nodes:
                node._backward()

        def backward_no_seed(self):
            self._backward()
            for child in self._prev:
                child.backward_no_seed()

    return V


def test_check_value():
    l03.check_value(Value)
    l03.check_value(_engine())  # the test's own engine is right with its defaults
    for wrong, message in [
        (_engine(accumulate=False), "receive BOTH contributions"),
        (_engine(order="recursive"), "ran twice"),
        (_engine(order="bfs"), "REVERSED topological order"),
        (_engine(order="forward"), "no gradient reached"),
        (_engine(tanh_grad=lambda a: 1 - a**2), "used the input"),
        (_engine(tanh_grad=lambda a: 1 - math.tanh(a)), "derivative squares tanh"),
        (_engine(chain=False), "ignores out.grad"),
        (_engine(seed=False), "dout/dout = 1"),
    ]:
        with pytest.raises(CheckError, match=message):
            l03.check_value(wrong)


def test_check_value_refuses_a_stub_of():
    class StubValue:
        def __init__(self, data, children=(), op=""):
            self.data, self.grad = float(data), 0.0

        __add__ = __mul__ = _stub_of("Value")

    with pytest.raises(NotAttempted, match="write `Value`"):
        l03.check_value(StubValue)


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


def _momentum(theta, grad, velocity, lr, mu, dampening=0.0, lr_inside=False, nesterov=False):
    velocity = mu * velocity + (1 - dampening) * (lr * grad if lr_inside else grad)
    step = velocity if lr_inside else lr * (grad + mu * velocity if nesterov else velocity)
    return theta - step, velocity


def _momentum_old_velocity(theta, grad, velocity, lr, mu):
    return theta - lr * velocity, mu * velocity + grad


def test_check_momentum_step():
    l04.check_momentum_step(_momentum)
    for wrong, message in [
        (lambda *a: _momentum(*a, dampening=1 - a[-1]), "average"),
        (lambda *a: _momentum(*a, lr_inside=True), "folded the learning rate"),
        (_momentum_old_velocity, "previous velocity"),
        (lambda *a: _momentum(*a, nesterov=True), "Nesterov"),
        (lambda t, g, v, lr, mu: _momentum(t, g, v, lr, 0.0), "not carried over"),
        (lambda t, g, v, lr, mu: (t + lr * (mu * v + g), mu * v + g), "UP the gradient"),
        (lambda *a: _momentum(*a)[0], "pair"),
    ]:
        with pytest.raises(CheckError, match=message):
            l04.check_momentum_step(wrong)
    with pytest.raises(NotAttempted, match="momentum_step"):
        l04.check_momentum_step(_stub_of("momentum_step"))


class _AdamW:
    """AdamW as the lecture writes it; the flags make the classic mistakes."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 decay="decoupled", correct=True, eps_inside=False, read_lr=True,
                 no_grad=True):  # fmt: skip
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.weight_decay, self.t, self.initial_lr = weight_decay, 0, lr
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.decay, self.correct, self.eps_inside = decay, correct, eps_inside
        self.read_lr, self.no_grad = read_lr, no_grad

    def step(self):
        with torch.no_grad() if self.no_grad else contextlib.nullcontext():
            self._step()

    def _step(self):
        self.t += 1
        (beta1, beta2), lr = self.betas, self.lr if self.read_lr else self.initial_lr
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            grad = p.grad + self.weight_decay * p if self.decay == "l2" else p.grad
            if self.decay == "decoupled":
                p.mul_(1 - lr * self.weight_decay)
            elif self.decay == "unscaled":
                p.mul_(1 - self.weight_decay)
            m.mul_(beta1).add_((1 - beta1) * grad)
            v.mul_(beta2).add_((1 - beta2) * grad**2)
            m_hat, v_hat = m, v
            if self.correct:
                m_hat, v_hat = m / (1 - beta1**self.t), v / (1 - beta2**self.t)
            denominator = (v_hat + self.eps).sqrt() if self.eps_inside else v_hat.sqrt() + self.eps
            p.sub_(lr * m_hat / denominator)
            if self.decay == "after":
                p.mul_(1 - lr * self.weight_decay)


def _adamw(**flags):
    return lambda params, **kw: _AdamW(params, **kw, **flags)


class _AdamWRebinds(_AdamW):
    def _step(self):
        for p in self.params:
            p = p - self.lr * p.grad  # noqa: PLW2901 -- the mistake: rebinds a local name


def test_check_adamw():
    l04.check_adamw(_AdamW)
    for wrong, message in [
        (_adamw(decay="l2"), "L2 regularisation"),
        (_adamw(correct=False), "bias correction"),
        (_adamw(decay="after"), "UPDATED parameters"),
        (_adamw(decay="unscaled"), "not scaled by the learning rate"),
        (_adamw(read_lr=False), "optimizer.lr before every step"),
        (_adamw(eps_inside=True), "inside the square root"),
        (_adamw(decay="none"), "never decayed"),
        (_adamw(no_grad=False), "torch.no_grad"),
        (_AdamWRebinds, "IN PLACE"),
    ]:
        with pytest.raises(CheckError, match=message):
            l04.check_adamw(wrong)
    with pytest.raises(NotAttempted, match="AdamW"):
        l04.check_adamw(_stub_of("AdamW"))


def _schedule(step, max_lr, min_lr, warmup, total, zero_start=False, le=False, floor=None,
              whole=False, clamp=True):  # fmt: skip
    low = min_lr if floor is None else floor
    if step < warmup or (le and step <= warmup):
        return max_lr * (step if zero_start else step + 1) / warmup
    if step >= total and clamp:
        return low
    start, length = (0, total) if whole else (warmup, max(1, total - warmup))
    return low + 0.5 * (max_lr - low) * (1 + math.cos(math.pi * (step - start) / length))


def test_check_lr_schedule():
    l04.check_lr_schedule(_schedule)
    l04.check_lr_schedule(
        lambda s, hi, lo, w, n: lr_at(s, TrainConfig(lr=hi, min_lr=lo, warmup_steps=w, steps=n))
    )
    for wrong, message in [
        (lambda *a: _schedule(*a, zero_start=True), "step 0 gets lr 0"),
        (lambda *a: _schedule(*a, le=True), "warmup boundary"),
        (lambda *a: _schedule(*a, floor=0.0), "decays to 0"),
        (lambda *a: _schedule(*a, whole=True), "wrong interval"),
        (lambda *a: _schedule(*a, clamp=False), "climbs back"),
        (lambda s, hi, lo, w, n: hi * (s + 1) / w if s < w else lo, "wrong values"),
        (lambda *a: None, "must return a number"),
    ]:
        with pytest.raises(CheckError, match=message):
            l04.check_lr_schedule(wrong)
    with pytest.raises(NotAttempted, match="lr_schedule"):
        l04.check_lr_schedule(_stub_of("lr_schedule"))


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
