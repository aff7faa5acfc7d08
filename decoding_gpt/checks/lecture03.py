"""Checks for the exercises of lecture 03 (autodiff and backprop).

References: :mod:`decoding_gpt.foundations.backprop` for the NumPy pieces, PyTorch autograd for the
gradients of the full network and of random scalar expressions (the autodiff engine), and
:mod:`decoding_gpt.foundations.micrograd` for the engine's expected gradients on small graphs
built to expose one mistake each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    diagnose,
    exercise,
    passed,
    to_numpy,
)
from decoding_gpt.foundations.backprop import (
    Params,
    cross_entropy,
    flatten_params,
    init_mlp,
    linear_backward,
    loss_and_grads,
    mlp_loss_torch,
    taylor_remainders,
)
from decoding_gpt.foundations.micrograd import Value

__all__ = [
    "check_cross_entropy_grad",
    "check_linear_backward",
    "check_mlp_backward",
    "check_taylor_remainders",
    "check_torch_loss",
    "check_value",
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


# --------------------------------------------------------------------------- MLP backward


def _two_layer_grads(
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    tanh_grad: Callable[[np.ndarray, np.ndarray], Any] = lambda z, h: 1.0 - h**2,
    bias_sum: Callable[..., np.ndarray] = np.sum,
    mean: bool = True,
) -> np.ndarray:
    """Flattened gradients of the 2-layer tanh MLP, with a mistake switched on by an argument:
    ``tanh_grad(z, h)`` the activation's derivative, ``bias_sum`` the batch reduction of the
    bias gradients, ``mean`` whether dL/dlogits carries the 1/N of the mean loss."""
    (w1, b1), (w2, b2) = params
    z1 = x @ w1.T + b1
    h1 = np.tanh(z1)
    dlogits = cross_entropy(h1 @ w2.T + b2, y)[1] * (1.0 if mean else len(y))
    dz1 = (dlogits @ w2) * tanh_grad(z1, h1)
    grads = [(dz1.T @ x, bias_sum(dz1, axis=0)), (dlogits.T @ h1, bias_sum(dlogits, axis=0))]
    return flatten_params(grads)


MLP_BACKWARD_MISTAKES = (
    Mistake(
        "sum loss",
        lambda params, x, y: _two_layer_grads(params, x, y, mean=False),
        "every gradient is N times too large: the loss is the MEAN over the batch, so "
        "dL/dlogits = (softmax(z2) - onehot(y)) / N.",
    ),
    Mistake(
        "no activation derivative",
        lambda params, x, y: _two_layer_grads(params, x, y, tanh_grad=lambda z, h: 1.0),
        "the second layer's gradients are right, the first layer's are not: on the way back "
        "through tanh multiply by its derivative, dz1 = (dlogits @ W2) * (1 - h1**2).",
    ),
    Mistake(
        "tanh' at the pre-activation",
        lambda params, x, y: _two_layer_grads(params, x, y, tanh_grad=lambda z, h: 1.0 - z**2),
        "tanh'(z) = 1 - tanh(z)^2 = 1 - h1**2: square the cached activation h1 = tanh(z1), "
        "not the pre-activation z1.",
    ),
    Mistake(
        "tanh applied twice",
        lambda params, x, y: _two_layer_grads(
            params, x, y, tanh_grad=lambda z, h: 1.0 - np.tanh(h) ** 2
        ),
        "h1 is already tanh(z1): the derivative is 1 - h1**2, not 1 - tanh(h1)**2.",
    ),
    Mistake(
        "tanh' without the square",
        lambda params, x, y: _two_layer_grads(params, x, y, tanh_grad=lambda z, h: 1.0 - h),
        "tanh'(z) = 1 - tanh(z)^2: the derivative squares h1 (1 - h1**2).",
    ),
    Mistake(
        "bias mean",
        lambda params, x, y: _two_layer_grads(params, x, y, bias_sum=np.mean),
        "the bias gradients are N times too small: b is added to every example, so its "
        "gradient SUMS the upstream gradient over the batch (.sum(axis=0), not .mean).",
    ),
)


def _autograd_grads(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
    """Loss and gradients from torch.autograd (the independent reference)."""
    tensors = [
        (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True))
        for w, b in params
    ]
    loss = mlp_loss_torch(tensors, torch.tensor(x), torch.tensor(y))
    loss.backward()
    grads = [(w.grad.numpy(), b.grad.numpy()) for w, b in tensors]  # type: ignore[union-attr]
    return float(loss.detach()), grads


def _grad_pairs(result: object) -> tuple[object, list[tuple[Any, Any]]]:
    """``(loss, [(dW1, db1), (dW2, db2)])`` from a student's answer, or a CheckError."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckError("mlp_loss_and_grads must return a pair (loss, grads).")
    loss, grads = result
    if not isinstance(grads, (list, tuple)) or len(grads) != 2:
        raise CheckError("grads must be a list of two pairs: [(dW1, db1), (dW2, db2)].")
    if not all(isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in grads):
        raise CheckError("each entry of grads must be a pair (dW, db), one per layer.")
    return loss, [(pair[0], pair[1]) for pair in grads]


@exercise
def check_mlp_backward(
    loss_and_grads_fn: Callable[[Params, np.ndarray, np.ndarray], tuple[float, Params]],
) -> None:
    """``fn(params, x, y) -> (loss, [(dW1, db1), (dW2, db2)])`` for the 2-layer tanh MLP.

    Compared with torch.autograd on two batches whose sizes (batch, input, hidden, classes)
    are all different, so a transposed gradient shows as a wrong shape.
    """
    for seed, sizes, n in [(0, [4, 6, 3], 8), (1, [3, 7, 5], 5)]:
        params = init_mlp(sizes, seed=seed)
        rng = np.random.default_rng(seed)
        params = [(w, rng.normal(size=b.shape) * 0.5) for w, b in params]  # nonzero biases
        x, y = rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], size=n)
        copies = [(w.copy(), b.copy()) for w, b in params]
        loss, grads = _grad_pairs(loss_and_grads_fn(copies, x.copy(), y.copy()))
        want_loss, want_grads = _autograd_grads(params, x, y)
        got_loss = float(to_numpy(loss, "loss"))
        if np.isclose(got_loss, want_loss * n, rtol=1e-9):
            raise CheckError("the loss is the SUM over the batch; use the mean (divide by N).")
        compare_tensors(
            got_loss, want_loss, "loss", atol=1e-9, hint="mean softmax cross-entropy of z2."
        )
        for layer, ((dw, db), (w, b)) in enumerate(zip(grads, params, strict=True), start=1):
            got_dw, got_db = to_numpy(dw, f"dW{layer}"), to_numpy(db, f"db{layer}")
            if got_dw.shape == w.shape[::-1]:
                raise CheckError(
                    f"dW{layer} has shape {got_dw.shape}, W{layer} has {w.shape}: a gradient "
                    f"has the shape of its parameter, dW{layer} = delta{layer}.T @ (its input)."
                )
            if got_db.shape == (n, b.size):
                raise CheckError(
                    f"db{layer} has shape {got_db.shape}, b{layer} has {b.shape}: b is shared "
                    "by every example, so its gradient sums the upstream gradient over the "
                    "batch (.sum(axis=0))."
                )
        got = np.concatenate([to_numpy(a, "gradient").ravel() for pair in grads for a in pair])
        if got.size == flatten_params(params).size:
            diagnose(got, flatten_params(want_grads), MLP_BACKWARD_MISTAKES, (params, x, y), 1e-9)
        for layer, ((dw, db), (want_dw, want_db)) in enumerate(
            zip(grads, want_grads, strict=True), start=1
        ):
            compare_tensors(dw, want_dw, f"dW{layer}", atol=1e-9, hint="dW = delta.T @ input.")
            compare_tensors(db, want_db, f"db{layer}", atol=1e-9, hint="db = delta.sum(axis=0).")
    passed("check_mlp_backward")


# --------------------------------------------------------------------------- the engine

Build = Callable[..., Any]

# Single operations at a = 0.7 (b = -1.3): the value and the gradient of each leaf.
_SINGLE_OPS: tuple[tuple[str, Build, tuple[float, ...]], ...] = (
    ("a + b", lambda a, b: a + b, (0.7, -1.3)),
    ("a * b", lambda a, b: a * b, (0.7, -1.3)),
    ("a * 2.0", lambda a: a * 2.0, (0.7,)),
    ("a ** 3", lambda a: a**3, (0.7,)),
    ("a ** -1.5", lambda a: a**-1.5, (0.7,)),
    ("a.tanh()", lambda a: a.tanh(), (0.7,)),
    ("a.exp()", lambda a: a.exp(), (0.7,)),
    ("a.log()", lambda a: a.log(), (0.7,)),
)
# Built from the primitives: checked after the chain rule, so a wrong one means a wrong
# given method (or a primitive that breaks when its input is not a leaf).
_COMPOSITE_OPS: tuple[tuple[str, Build, tuple[float, ...]], ...] = (
    ("a - b", lambda a, b: a - b, (0.7, -1.3)),
    ("a / b", lambda a, b: a / b, (0.7, -1.3)),
    ("2.0 * a + 1.0", lambda a: 2.0 * a + 1.0, (0.7,)),
)
# The same operations feeding a multiplication by 3, so out.grad = 3 when they run.
_CHAINED: tuple[tuple[str, Build, tuple[float, ...]], ...] = tuple(
    (f"({name}) * 3.0", lambda *v, build=build: build(*v) * 3.0, inputs)
    for name, build, inputs in _SINGLE_OPS
)


def _hints(name: str, a: float, got: float) -> str:
    """The likely mistake behind a wrong gradient ``got`` of ``name`` at ``a``."""
    t = math.tanh(a)
    known = {
        "a.tanh()": [
            (1 - a**2, "You used the input: tanh'(a) = 1 - tanh(a)^2 = 1 - out.data**2."),
            (1 - t, "The derivative squares tanh: 1 - out.data**2."),
            (t**2 - 1, "Wrong sign: tanh'(a) = 1 - out.data**2 > 0."),
        ],
        "a * b": [(a, "Swapped: d(a*b)/da = b, so self.grad += other.data * out.grad.")],
        "a ** 3": [
            (3 * a**3, "d(a^k)/da = k a^(k-1): the exponent drops by one."),
            (a**2, "d(a^k)/da = k a^(k-1): you forgot the factor k."),
        ],
        "a.log()": [(math.log(a), "d(log a)/da = 1/a, not log(a).")],
    }
    for value, hint in known.get(name, []):
        if math.isclose(got, value, rel_tol=1e-9):
            return hint
    return ""


def _run(
    value_cls: type[Any], build: Build, inputs: tuple[float, ...], name: str
) -> tuple[Any, list]:
    """Build ``name`` from fresh leaves, run ``backward()``; return (out, leaves)."""
    leaves = [value_cls(x) for x in inputs]
    out: Any = build(*leaves)
    if not isinstance(out, value_cls):
        raise CheckError(
            f"`{name}` returned {type(out).__name__}, not a Value: every operation must "
            "build and `return out`."
        )
    out.backward()
    return out, leaves


def _expected(build: Build, inputs: tuple[float, ...]) -> tuple[float, list[float]]:
    """Value and leaf gradients from the reference engine."""
    leaves = [Value(x) for x in inputs]
    out = build(*leaves)
    out.backward()
    return out.data, [leaf.grad for leaf in leaves]


def _check_ops(value_cls: type[Any], probes: tuple, chained: bool) -> None:
    for name, build, inputs in probes:
        out, leaves = _run(value_cls, build, inputs, name)
        want_data, want_grads = _expected(build, inputs)
        if not math.isclose(float(out.data), want_data, rel_tol=1e-9, abs_tol=1e-12):
            raise CheckError(f"`{name}` computes {float(out.data):.6g}, expected {want_data:.6g}.")
        if float(out.grad) != 1.0:
            raise CheckError(
                f"after out.backward() on `{name}`, out.grad is {float(out.grad):.6g}: "
                "backward() starts by setting the output's own gradient, dout/dout = 1."
            )
        for leaf, want, label in zip(leaves, want_grads, "ab", strict=False):
            got = float(leaf.grad)
            if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                continue
            if got == 0.0:
                raise CheckError(
                    f"`{name}`: no gradient reached {label} (expected {want:.6g}). Does each "
                    "operation set "
                    "`out._backward = _backward`, and does backward() call the _backward of "
                    "every node, from the output back to the inputs (reversed topological order)?"
                )
            where = f"d({name})/d{label} at a = {inputs[0]}"
            if chained:
                op = name.removeprefix("(").removesuffix(") * 3.0")
                raise CheckError(
                    f"{where} is {got:.6g}, expected {want:.6g} = 3 x the local derivative: "
                    f"the _backward of `{op}` ignores out.grad. Multiply the local derivative "
                    "by out.grad (the chain rule)."
                )
            hint = _hints(name, inputs[0], got)
            raise CheckError(f"{where} is {got:.6g}, expected {want:.6g}. {hint}".rstrip())


def _check_reuse(value_cls: type[Any]) -> None:
    """A value used twice must get both contributions (+=), and only those (each _backward
    runs once)."""
    probes: tuple[tuple[str, Build, tuple[float, ...]], ...] = (
        ("a * a", lambda a: a * a, (3.0,)),
        ("a + a", lambda a: a + a, (3.0,)),
        (
            "u = a * 2.0; u.tanh() + u.exp()",
            lambda a: (lambda u: u.tanh() + u.exp())(a * 2.0),
            (0.3,),
        ),
    )
    for name, build, inputs in probes:
        out, (leaf,) = _run(value_cls, build, inputs, name)
        got, want = float(leaf.grad), _expected(build, inputs)[1][0]
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if got < want:
            raise CheckError(
                f"`{name}`: da is {got:.6g}, expected {want:.6g}. A value used twice must "
                "receive BOTH contributions: accumulate with `self.grad += ...` in every "
                "_backward, never `self.grad = ...`."
            )
        raise CheckError(
            f"`{name}`: da is {got:.6g}, expected {want:.6g}: too large, as if a _backward ran "
            "twice. Visit each node once (a `visited` set in the topological sort)."
        )


def _check_order(value_cls: type[Any]) -> None:
    """Each _backward runs once, after every node that uses its output."""
    probes: tuple[tuple[str, Build, tuple[float, ...]], ...] = (
        (
            "u = a * 2.0; (u + 1.0) * (u * 3.0)",
            lambda a: (lambda u: (u + 1.0) * (u * 3.0))(a * 2.0),
            (0.5,),
        ),
        ("u = a * 2.0; u + u * 3.0", lambda a: (lambda u: u + u * 3.0)(a * 2.0), (0.5,)),
    )
    for name, build, inputs in probes:
        out, (leaf,) = _run(value_cls, build, inputs, name)
        got, want = float(leaf.grad), _expected(build, inputs)[1][0]
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        if got > want:
            raise CheckError(
                f"`{name}`: da is {got:.6g}, expected {want:.6g}: u is reached along two paths "
                "and its _backward ran twice (passing on its gradient twice). Build the "
                "topological order once, with a `visited` set, then call each node's "
                "_backward exactly once."
            )
        raise CheckError(
            f"`{name}`: da is {got:.6g}, expected {want:.6g}: u passed its gradient on before "
            "every value that uses it had added its share. Call _backward in REVERSED "
            "topological order (a node after all the nodes built from it), not breadth-first."
        )


_UNARY: dict[str, Build] = {
    "tanh": lambda a: a.tanh(),
    "exp(tanh)": lambda a: a.tanh().exp(),
    "log(a*a+1)": lambda a: (a * a + 1.0).log(),
    "square": lambda a: a**2,
    "sqrt(a*a+0.5)": lambda a: (a * a + 0.5) ** 0.5,
    "neg": lambda a: -a,
    "relu": lambda a: a.relu(),
    "1/(a*a+1)": lambda a: 1.0 / (a * a + 1.0),
}
_BINARY: dict[str, Build] = {
    "+": lambda a, b: a + b,
    "*": lambda a, b: a * b,
    "-": lambda a, b: a - b,
    "/(b*b+1)": lambda a, b: a / (b * b + 1.0),
}


def _random_program(rng: np.random.Generator, n_leaves: int, n_ops: int) -> list:
    program = []
    for k in range(n_ops):
        op = str(rng.choice([*_UNARY, *_BINARY]))
        program.append((op, int(rng.integers(n_leaves + k)), int(rng.integers(n_leaves + k))))
    return program


def _evaluate(program: list, leaves: list) -> Any:
    nodes = list(leaves)
    for op, i, j in program:
        nodes.append(_UNARY[op](nodes[i]) if op in _UNARY else _BINARY[op](nodes[i], nodes[j]))
    return nodes[-1] + nodes[-2] * nodes[-3]


def _check_random(value_cls: type[Any]) -> None:
    """Random expressions with shared subexpressions, against torch.autograd."""
    rng = np.random.default_rng(0)
    for trial in range(8):
        data = rng.normal(size=4)
        program = _random_program(rng, 4, 10)
        leaves = [value_cls(float(x)) for x in data]
        out = _evaluate(program, leaves)
        out.backward()
        tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in data]
        _evaluate(program, tensors).backward()
        ops = ", ".join(op for op, _, _ in program)
        for k, (leaf, tensor) in enumerate(zip(leaves, tensors, strict=True)):
            want = 0.0 if tensor.grad is None else float(tensor.grad)
            if not math.isclose(float(leaf.grad), want, rel_tol=1e-8, abs_tol=1e-10):
                raise CheckError(
                    f"random expression {trial} (ops: {ops}): leaf {k} has grad "
                    f"{float(leaf.grad):.6g}, torch.autograd gives {want:.6g}."
                )


@exercise
def check_value(value_cls: type[Any]) -> None:
    """The scalar autodiff engine ``Value``: +, *, ** (number), tanh, exp, log and backward().

    In order: each operation's value and local derivative; the chain-rule factor out.grad;
    accumulation for a value used twice; the order of the backward sweep (each node once,
    after all its users); then random expressions with shared parts against torch.autograd.
    """
    _check_ops(value_cls, _SINGLE_OPS, chained=False)
    _check_ops(value_cls, _CHAINED, chained=True)
    _check_ops(value_cls, _COMPOSITE_OPS, chained=False)
    _check_reuse(value_cls)
    _check_order(value_cls)
    _check_random(value_cls)
    passed("check_value")
