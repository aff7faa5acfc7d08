"""The scalar autodiff engine (decoding_gpt.foundations.micrograd) against torch.autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decoding_gpt.foundations.backprop import init_mlp, loss_and_grads, mlp_loss_torch
from decoding_gpt.foundations.micrograd import (
    Value,
    ValueMLP,
    cross_entropy_values,
    topological_order,
)

# Each op maps operands to a result; the same lambdas run on Values and on torch scalars,
# and every argument of log, division and fractional powers is kept positive.
UNARY = {
    "tanh": lambda a: a.tanh(),
    "exp_tanh": lambda a: a.tanh().exp(),
    "log": lambda a: (a * a + 1.0).log(),
    "square": lambda a: a**2,
    "cube": lambda a: a**3.0,
    "sqrt": lambda a: (a * a + 0.5) ** 0.5,
    "neg": lambda a: -a,
    "relu": lambda a: a.relu(),
    "rdiv": lambda a: 1.0 / (a * a + 1.0),
    "radd_rmul": lambda a: 2.0 * a + 1.0,
    "rsub": lambda a: 3.0 - a,
}
BINARY = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "sub": lambda a, b: a - b,
    "div": lambda a, b: a / (b * b + 1.0),
}


def _program(rng: np.random.Generator, n_leaves: int, n_ops: int) -> list[tuple[str, int, int]]:
    """Random ops, each reading one or two earlier nodes (often the same one twice)."""
    program = []
    for k in range(n_ops):
        size = n_leaves + k
        op = str(rng.choice([*UNARY, *BINARY]))
        program.append((op, int(rng.integers(size)), int(rng.integers(size))))
    return program


def _run(program, nodes):
    nodes = list(nodes)
    for op, i, j in program:
        nodes.append(UNARY[op](nodes[i]) if op in UNARY else BINARY[op](nodes[i], nodes[j]))
    # the output sums the last few nodes, so several paths lead back to each leaf
    return nodes[-1] + nodes[-2] * nodes[-3]


@pytest.mark.parametrize("seed", range(20))
def test_random_expressions_match_autograd(seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=4)
    program = _program(rng, len(data), 12)
    leaves = [Value(x) for x in data]
    out = _run(program, leaves)
    out.backward()
    tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in data]
    reference = _run(program, tensors)
    reference.backward()
    assert out.data == pytest.approx(reference.item(), rel=1e-12, abs=1e-12)
    for leaf, tensor in zip(leaves, tensors, strict=True):
        want = 0.0 if tensor.grad is None else tensor.grad.item()  # None: a leaf never used
        assert leaf.grad == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_local_derivatives():
    a = Value(0.7)
    for make, derivative in [
        (lambda v: v.tanh(), 1 - math.tanh(0.7) ** 2),
        (lambda v: v.exp(), math.exp(0.7)),
        (lambda v: v.log(), 1 / 0.7),
        (lambda v: v**3, 3 * 0.7**2),
        (lambda v: v.relu(), 1.0),
        (lambda v: (-v).relu(), 0.0),
        (lambda v: 2.0 / v, -2 / 0.7**2),
    ]:
        a.grad = 0.0
        make(a).backward()
        assert a.grad == pytest.approx(derivative, rel=1e-12)


def test_value_used_twice_accumulates():
    a = Value(3.0)
    (a * a).backward()
    assert a.grad == 6.0
    b = Value(2.0)
    (b + b + b).backward()
    assert b.grad == 3.0


def test_diamond_runs_each_backward_once():
    # x -> u -> (v, w) -> out: u is reached along two paths and must pass its gradient once
    x = Value(0.5)
    u = x * 2.0
    out = (u + 1.0) * (u * 3.0)
    out.backward()
    assert x.grad == pytest.approx(2.0 * (6 * u.data + 3.0))  # d/dx (2x+1)(6x) = 24x + 6
    order = topological_order(out)
    assert len(order) == len({id(node) for node in order})
    position = {id(node): k for k, node in enumerate(order)}
    for node in order:
        assert all(position[id(child)] < position[id(node)] for child in node._prev)


def test_deep_graph_does_not_recurse():
    x = Value(0.1)
    out = x
    for _ in range(5000):
        out = out * 1.0 + 0.0
    out.backward()
    assert x.grad == pytest.approx(1.0)


def test_pow_rejects_a_value_exponent():
    with pytest.raises(TypeError, match="number exponent"):
        Value(2.0) ** Value(3.0)  # type: ignore[operator]


def test_mlp_matches_numpy_backprop_and_torch():
    params = init_mlp([3, 5, 4], seed=0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)), rng.integers(0, 4, size=6)
    model = ValueMLP(params)
    loss = cross_entropy_values([model(row) for row in x.tolist()], y.tolist())
    loss.backward()
    want_loss, want_grads = loss_and_grads(params, x, y)
    assert loss.data == pytest.approx(want_loss, abs=1e-12)
    for (dw, db), (rw, rb) in zip(model.grads(), want_grads, strict=True):
        np.testing.assert_allclose(dw, rw, atol=1e-12)
        np.testing.assert_allclose(db, rb, atol=1e-12)
    tensors = [(torch.tensor(w), torch.tensor(b)) for w, b in params]
    torch_loss = mlp_loss_torch(tensors, torch.tensor(x), torch.tensor(y))
    assert loss.data == pytest.approx(torch_loss.item(), abs=1e-12)
    for (w, b), (w2, b2) in zip(model.to_params(), params, strict=True):
        assert np.array_equal(w, w2) and np.array_equal(b, b2)
    assert len(model.parameters()) == sum(w.size + b.size for w, b in params)


def test_cross_entropy_values_is_stable_and_checks_lengths():
    logits = [[Value(1000.0), Value(0.0)], [Value(0.0), Value(-1000.0)]]
    loss = cross_entropy_values(logits, [0, 1])
    expected = torch.nn.functional.cross_entropy(
        torch.tensor([[1000.0, 0.0], [0.0, -1000.0]], dtype=torch.float64), torch.tensor([0, 1])
    )
    assert loss.data == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="one label per example"):
        cross_entropy_values(logits, [0])
