r"""A scalar reverse-mode autodiff engine (micrograd-sized) and an MLP built on it.

A :class:`Value` holds a number ``data``, the gradient ``grad`` of the final output with
respect to it, and the values it was computed from. Every operation creates a new
``Value`` and a closure ``_backward`` that, given ``out.grad``, adds the contribution
of ``out`` to its inputs' gradients by the chain rule:

.. math::
    \bar a \mathrel{+}= \bar o\, \frac{\partial o}{\partial a}, \qquad
    \bar o = \frac{\partial L}{\partial o}.

Local derivatives: :math:`o = a + b`: 1 and 1; :math:`o = ab`: :math:`b` and :math:`a`;
:math:`o = a^k` (number :math:`k`): :math:`k a^{k-1}`; :math:`o = \tanh a`:
:math:`1 - o^2`; :math:`o = e^a`: :math:`o`; :math:`o = \log a`: :math:`1/a`;
:math:`o = \mathrm{relu}(a)`: :math:`[a > 0]`. Subtraction, negation and division are
built from these (:math:`a - b = a + (-1) b`, :math:`a / b = a\, b^{-1}`).

:meth:`Value.backward` sets the output's gradient to 1 and runs every node's
``_backward`` once, in reverse topological order: a node passes its gradient on only
after every node that uses it has added its contribution. Gradients are *accumulated*
(``+=``): a value used twice, as in :math:`a \cdot a`, receives both contributions.

:class:`ValueMLP` is the tanh network of :mod:`decoding_gpt.foundations.backprop`
(``z_l = h_{l-1} W_l^T + b_l``, tanh hidden layers, linear logits) written with
``Value``s, one example at a time, and :func:`cross_entropy_values` its mean softmax
cross-entropy; together they give the same loss and gradients as
:func:`~decoding_gpt.foundations.backprop.loss_and_grads`. Both take the class of the
scalars as an argument, so lecture 03 runs them on the engine the student wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from decoding_gpt.foundations.backprop import Params

__all__ = ["Value", "ValueMLP", "cross_entropy_values", "topological_order"]


def _no_op() -> None:
    """The ``_backward`` of a leaf: nothing to pass on."""


class Value:
    """A scalar that remembers how it was computed, for reverse-mode differentiation."""

    def __init__(self, data: float, children: tuple[Value, ...] = (), op: str = "") -> None:
        self.data = float(data)
        self.grad = 0.0  # dL/d(self), filled in by backward()
        self._prev = children
        self._op = op  # for printing the graph
        self._backward: Callable[[], None] = _no_op

    def __repr__(self) -> str:
        return f"Value(data={self.data:.4g}, grad={self.grad:.4g})"

    # ----------------------------------------------------------------- the primitives

    def __add__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            self.grad += out.grad  # d(a + b)/da = 1
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:
            self.grad += other.data * out.grad  # d(ab)/da = b
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, exponent: float) -> Value:
        if isinstance(exponent, Value):
            raise TypeError("only a number exponent is supported: a ** k with k a float")
        out = Value(self.data**exponent, (self,), f"**{exponent:g}")

        def _backward() -> None:
            self.grad += exponent * self.data ** (exponent - 1) * out.grad

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        out = Value(math.tanh(self.data), (self,), "tanh")

        def _backward() -> None:
            self.grad += (1.0 - out.data**2) * out.grad  # tanh' = 1 - tanh^2

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def _backward() -> None:
            self.grad += float(self.data > 0) * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward() -> None:
            self.grad += out.data * out.grad  # (e^a)' = e^a

        out._backward = _backward
        return out

    def log(self) -> Value:
        out = Value(math.log(self.data), (self,), "log")

        def _backward() -> None:
            self.grad += out.grad / self.data

        out._backward = _backward
        return out

    # ------------------------------------------------------- built from the primitives

    def __neg__(self) -> Value:
        return self * -1.0

    def __radd__(self, other: float) -> Value:
        return self + other

    def __sub__(self, other: Value | float) -> Value:
        return self + (-other)

    def __rsub__(self, other: float) -> Value:
        return (-self) + other

    def __rmul__(self, other: float) -> Value:
        return self * other

    def __truediv__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        return self * other**-1.0

    def __rtruediv__(self, other: float) -> Value:
        return Value(other) * self**-1.0

    # ---------------------------------------------------------------------- backward

    def backward(self) -> None:
        """``grad = dself/dv`` for every value ``v`` this one was computed from.

        Gradients accumulate: call it on a fresh graph, or zero the leaves' ``grad`` first.
        """
        self.grad = 1.0
        for node in reversed(topological_order(self)):
            node._backward()


def topological_order(root: Value) -> list[Value]:
    """Every value ``root`` depends on, each once, inputs before the values built from them.

    Depth-first, with a ``visited`` set so that a value reached along two paths is listed
    (and later back-propagated) once. Iterative, so deep graphs do not hit Python's
    recursion limit.
    """
    order: list[Value] = []
    visited: set[int] = set()
    stack: list[tuple[Value, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))  # appended after all of its children
        stack.extend((child, False) for child in node._prev if id(child) not in visited)
    return order


# --------------------------------------------------------------------------- an MLP


def _dot(weights: Sequence[Value], inputs: Sequence[Value | float]) -> Value:
    """``sum_i w_i x_i``, started from the first product so the sum is a ``Value``."""
    terms = [w * x for w, x in zip(weights, inputs, strict=True)]
    return sum(terms[1:], terms[0])


class ValueMLP:
    """The tanh MLP of :mod:`~decoding_gpt.foundations.backprop`, one ``Value`` per weight.

    Args:
        params: ``[(W_l [out, in], b_l [out]), ...]`` as made by
            :func:`~decoding_gpt.foundations.backprop.init_mlp`.
        value: the scalar class to build the weights from: :class:`Value`, or any class
            with its interface (lecture 03 passes the one the student wrote).
    """

    def __init__(self, params: Params, value: type[Value] = Value) -> None:
        self.value = value
        self.layers = [
            ([[value(float(w)) for w in row] for row in weight], [value(float(b)) for b in bias])
            for weight, bias in params
        ]

    def __call__(self, x: Sequence[float]) -> list[Value]:
        """Logits of one example ``x`` ``[in]``: ``z_l = W_l h_{l-1} + b_l``, tanh between."""
        h: Sequence[Value | float] = x
        for layer, (weight, bias) in enumerate(self.layers):
            # _dot starts from a product w * x, a Value even where the inputs are floats
            z = [_dot(row, h) + b for row, b in zip(weight, bias, strict=True)]
            h = z if layer == len(self.layers) - 1 else [z_j.tanh() for z_j in z]
        return list(h)  # type: ignore[arg-type]

    def parameters(self) -> list[Value]:
        """Every weight and bias, in the order of :func:`~backprop.flatten_params`."""
        return [p for weight, bias in self.layers for row in [*weight, bias] for p in row]

    def to_params(self) -> Params:
        """The current weights as NumPy arrays (``data``), in the layout of ``params``."""
        return [
            (np.array([[w.data for w in row] for row in weight]), np.array([b.data for b in bias]))
            for weight, bias in self.layers
        ]

    def grads(self) -> Params:
        """The gradients (``grad``) in the layout of ``params``."""
        return [
            (np.array([[w.grad for w in row] for row in weight]), np.array([b.grad for b in bias]))
            for weight, bias in self.layers
        ]


def cross_entropy_values(logits: Sequence[Sequence[Value]], y: Sequence[int]) -> Value:
    r"""Mean softmax cross-entropy :math:`\frac1N\sum_n (\log\sum_j e^{z_{nj}} - z_{n y_n})`.

    The maximum logit is subtracted first, as a plain number (a constant shift leaves the
    loss and its gradient unchanged), so ``exp`` cannot overflow.
    """
    if len(logits) != len(y) or not len(y):
        raise ValueError(f"need one label per example, got {len(logits)} rows, {len(y)} labels")
    losses = []
    for row, label in zip(logits, y, strict=True):
        shift = max(z.data for z in row)
        exps = [(z - shift).exp() for z in row]
        losses.append(sum(exps[1:], exps[0]).log() - (row[int(label)] - shift))
    return sum(losses[1:], losses[0]) * (1.0 / len(y))
