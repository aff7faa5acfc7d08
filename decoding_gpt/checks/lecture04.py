"""Checks for the exercises of lecture 04 (optimisation, CNNs, RNNs).

Independent references: ``torch.nn.Conv2d`` for the output size, ``torch.optim.Adam``
for the Adam update, ``torch.cumsum`` for prefix parities.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy

__all__ = ["check_adam_step", "check_conv_output_size", "check_prefix_parity"]


def _conv2d_size(n: int, k: int, s: int, p: int) -> int:
    """Ground truth: run a real ``nn.Conv2d`` on an ``n x n`` input."""
    conv = nn.Conv2d(1, 1, kernel_size=k, stride=s, padding=p, bias=False)
    with torch.no_grad():
        return conv(torch.zeros(1, 1, n, n)).shape[-1]


@exercise
def check_conv_output_size(conv_size: Callable[[int, int, int, int], int]) -> None:
    """``conv_size(n, kernel_size, stride, padding)`` must match ``nn.Conv2d`` everywhere."""
    for n, k, s, p in itertools.product([5, 8, 11, 28], [1, 2, 3, 5], [1, 2, 3], [0, 1, 2]):
        if k > n + 2 * p:
            continue
        want = _conv2d_size(n, k, s, p)
        got = conv_size(n, k, s, p)
        if isinstance(got, float) and not float(got).is_integer():
            raise CheckError(
                f"conv_size({n}, k={k}, s={s}, p={p}) returned the float {got}: sizes are "
                "integers; the stride division is a floor (use //)."
            )
        if got == want:
            continue
        config = f"n={n}, kernel={k}, stride={s}, padding={p}"
        hints = {
            (n + 2 * p - k) // s: "you forgot the +1 (a kernel that fits exactly gives 1 output).",
            (n + p - k) // s + 1: "padding is added on BOTH sides: use n + 2p.",
            -(-(n + 2 * p - k) // s) + 1: "the stride division rounds DOWN (floor), not up.",
            (n - k) // s + 1: "padding is missing from your formula.",
        }
        hint = hints.get(got, "expected floor((n + 2p - k) / s) + 1.")
        raise CheckError(f"for {config}: got {got}, nn.Conv2d gives {want}. {hint}")
    passed("check_conv_output_size")


@exercise
def check_adam_step(adam_step: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """``adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps) -> (theta, m, v)``, t from 1.

    Five consecutive steps must match ``torch.optim.Adam``.
    """
    rng = np.random.default_rng(0)
    # eps large enough that putting it inside the square root changes the step visibly
    lr, beta1, beta2, eps = 0.1, 0.9, 0.999, 1e-3
    theta0 = rng.normal(size=4)
    grads = [0.1 * rng.normal(size=4) for _ in range(5)]
    reference = torch.tensor(theta0, requires_grad=True)
    optimizer = torch.optim.Adam([reference], lr=lr, betas=(beta1, beta2), eps=eps)
    theta, m, v = theta0.copy(), np.zeros(4), np.zeros(4)
    for t, grad in enumerate(grads, start=1):
        reference.grad = torch.tensor(grad)
        optimizer.step()
        result = adam_step(theta, grad, m, v, t, lr, beta1, beta2, eps)
        if not isinstance(result, tuple) or len(result) != 3:
            raise CheckError("adam_step must return the triple (theta, m, v).")
        theta, m, v = (to_numpy(a, n) for a, n in zip(result, ["theta", "m", "v"], strict=True))
        want_m = (1 - beta1) * sum(beta1 ** (t - i) * g for i, g in enumerate(grads[:t], 1))
        want_v = (1 - beta2) * sum(beta2 ** (t - i) * g**2 for i, g in enumerate(grads[:t], 1))
        compare_tensors(
            m, want_m, f"m after step {t}", atol=1e-12, hint="m = beta1 * m + (1 - beta1) * grad."
        )
        compare_tensors(
            v,
            want_v,
            f"v after step {t}",
            atol=1e-12,
            hint="v = beta2 * v + (1 - beta2) * grad**2 (the SQUARED gradient).",
        )
        uncorrected = theta0 - lr * grads[0] * (1 - beta1) / (
            np.sqrt((1 - beta2) * grads[0] ** 2) + eps
        )
        if t == 1 and np.allclose(theta, uncorrected, atol=1e-9):
            raise CheckError(
                "step 1 moves by about lr * (1-beta1)/sqrt(1-beta2) = 3.2 lr instead of lr: "
                "you left out the bias correction m / (1 - beta1**t), v / (1 - beta2**t)."
            )
        compare_tensors(
            theta,
            reference.detach(),
            f"theta after step {t} (vs torch.optim.Adam)",
            atol=1e-9,
            hint="theta -= lr * m_hat / (sqrt(v_hat) + eps); eps goes OUTSIDE the square root.",
        )
    passed("check_adam_step")


@exercise
def check_prefix_parity(prefix_parity: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``prefix_parity(bits [n, T]) -> [n, T]`` with ``y_t = (x_1 + ... + x_t) mod 2``."""
    bits = torch.randint(0, 2, (6, 9), generator=torch.Generator().manual_seed(0))
    bits[0] = 1  # all ones: the running sum exceeds 1, so a missing "mod 2" shows
    got = prefix_parity(bits.clone())
    if not isinstance(got, torch.Tensor):
        raise CheckError(f"prefix_parity must return a tensor, got {type(got).__name__}.")
    want = bits.cumsum(dim=1) % 2
    if got.shape == want.shape:
        if torch.equal(got, bits.cumsum(dim=1)):
            raise CheckError("the targets are running sums, not parities: take them mod 2.")
        if torch.equal(got, (bits.sum(dim=1, keepdim=True) % 2).expand_as(bits)):
            raise CheckError(
                "every position holds the parity of the WHOLE sequence: position t may only "
                "see bits 1..t (use a cumulative sum)."
            )
        if torch.equal(got[:, 1:], want[:, :-1]):
            raise CheckError("the targets are shifted by one: y_t includes bit t itself.")
    compare_tensors(got, want, "prefix parities", atol=0, hint="y = bits.cumsum(dim=1) % 2.")
    if got.dtype.is_floating_point:
        raise CheckError("return integer labels (cross_entropy needs a long tensor), not floats.")
    passed("check_prefix_parity")
