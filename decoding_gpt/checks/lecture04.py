"""Checks for the exercises of lecture 04 (optimisation, CNNs, RNNs).

Independent references: ``torch.optim.SGD`` (momentum) for the heavy ball,
``torch.optim.AdamW`` and ``torch.optim.Adam`` for the student's AdamW class,
:func:`decoding_gpt.training.lr_at` (the schedule lecture 08 trains with) for the
warmup + cosine schedule, ``torch.nn.Conv2d`` for the output size, ``torch.cumsum`` for
prefix parities. Each optimiser check runs several steps with a learning rate that
changes between them, as a schedule does, so mistakes that only show then are caught.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_numpy,
)
from decoding_gpt.training import TrainConfig, lr_at

__all__ = [
    "check_adamw",
    "check_conv_output_size",
    "check_lr_schedule",
    "check_momentum_step",
    "check_prefix_parity",
]


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


# ----------------------------------------------------------------------------- momentum
def _momentum_trajectory(
    theta0: np.ndarray,
    grads: list[np.ndarray],
    lrs: list[float],
    mu: float,
    *,
    dampening: float = 0.0,
    lr_inside: bool = False,
    old_velocity: bool = False,
    nesterov: bool = False,
    sign: float = 1.0,
) -> np.ndarray:
    """Heavy ball from ``v_0 = 0``, as ``torch.optim.SGD`` writes it, or a classic mistake.

    Returns ``[steps, 2, n]``: ``(theta_t, v_t)`` after every step.
    """
    theta, velocity, out = theta0.copy(), np.zeros_like(theta0), []
    for grad, lr in zip(grads, lrs, strict=True):
        previous = velocity
        velocity = mu * velocity + (1 - dampening) * (lr * grad if lr_inside else grad)
        if lr_inside:
            step = velocity
        elif old_velocity:
            step = lr * previous
        elif nesterov:
            step = lr * (grad + mu * velocity)
        else:
            step = lr * velocity
        theta = theta - sign * step
        out.append(np.stack([theta, velocity]))
    return np.stack(out)


_MOMENTUM_MISTAKES = [
    Mistake(
        "dampened",
        lambda t0, g, lrs, mu: _momentum_trajectory(t0, g, lrs, mu, dampening=1 - mu),
        "your velocity is an average, v = mu v + (1 - mu) g (torch's dampening = 1 - mu): "
        "the heavy ball SUMS, v = mu v + g, so a steady gradient builds a step 1 / (1 - mu) "
        "times larger.",
    ),
    Mistake(
        "lr inside",
        lambda t0, g, lrs, mu: _momentum_trajectory(t0, g, lrs, mu, lr_inside=True),
        "you folded the learning rate into the velocity (v = mu v + lr g, theta -= v). That "
        "agrees only while lr is constant; with a schedule the old velocity keeps the old lr. "
        "Keep torch's form: v = mu v + g, then theta -= lr v.",
    ),
    Mistake(
        "old velocity",
        lambda t0, g, lrs, mu: _momentum_trajectory(t0, g, lrs, mu, old_velocity=True),
        "theta moves with the previous velocity: update v first (v = mu v + g), then take "
        "the step with the NEW v.",
    ),
    Mistake(
        "nesterov",
        lambda t0, g, lrs, mu: _momentum_trajectory(t0, g, lrs, mu, nesterov=True),
        "that is Nesterov's step, theta -= lr (g + mu v). The heavy ball steps by lr v.",
    ),
    Mistake(
        "no momentum",
        lambda t0, g, lrs, mu: _momentum_trajectory(t0, g, lrs, 0.0),
        "the velocity is not carried over: each step uses only the current gradient (plain "
        "SGD). Return the new velocity and use it: v = mu v + g.",
    ),
    Mistake(
        "ascent",
        lambda t0, g, lrs, mu: _momentum_trajectory(t0, g, lrs, mu, sign=-1.0),
        "theta moves UP the gradient: subtract, theta -= lr v.",
    ),
]


@exercise
def check_momentum_step(
    momentum_step: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> None:
    """``momentum_step(theta, grad, velocity, lr, momentum) -> (theta, velocity)``.

    ``v_t = mu v_{t-1} + g_t``, ``theta_t = theta_{t-1} - lr v_t`` from ``v_0 = 0``: six
    steps, with the learning rate changing between them, must match ``torch.optim.SGD``
    with ``momentum=mu`` (its buffer is the velocity).
    """
    rng = np.random.default_rng(1)
    mu, theta0 = 0.9, rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(6)]
    lrs = [0.1, 0.1, 0.05, 0.05, 0.2, 0.02]  # changing: a schedule reaches the optimiser
    param = torch.tensor(theta0, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lrs[0], momentum=mu)
    theta, velocity, got, want = theta0.copy(), np.zeros(5), [], []
    for grad, lr in zip(grads, lrs, strict=True):
        param.grad = torch.tensor(grad)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        buffer = optimizer.state[param]["momentum_buffer"]
        want.append(np.stack([param.detach().numpy(), buffer.numpy()]))
        result = momentum_step(theta.copy(), grad.copy(), velocity.copy(), lr, mu)
        if not isinstance(result, tuple) or len(result) != 2:
            raise CheckError("momentum_step must return the pair (theta, velocity).")
        theta, velocity = (
            to_numpy(a, n) for a, n in zip(result, ["theta", "velocity"], strict=True)
        )
        if theta.shape != theta0.shape or velocity.shape != theta0.shape:
            raise CheckError(
                f"theta and velocity must keep the shape of theta {theta0.shape}; got "
                f"{theta.shape} and {velocity.shape}."
            )
        got.append(np.stack([theta, velocity]))
    judge(
        np.stack(got),
        np.stack(want),
        _MOMENTUM_MISTAKES,
        (theta0, grads, lrs, mu),
        what="(theta, velocity) after each of 6 steps (vs torch.optim.SGD, momentum=0.9)",
        atol=1e-10,
        hint="v = momentum * v + grad; theta = theta - lr * v.",
    )
    passed("check_momentum_step")


# ----------------------------------------------------------------------------- AdamW
def _adamw_trajectory(
    params0: list[np.ndarray],
    grads: list[list[np.ndarray]],
    lrs: list[float],
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    *,
    decay: str = "decoupled",
    bias_correction: bool = True,
    eps_inside: bool = False,
    fixed_lr: bool = False,
    square: bool = True,
) -> np.ndarray:
    """AdamW (``torch.optim.AdamW``'s algorithm) in NumPy, or one of its classic mistakes.

    ``decay``: ``"decoupled"`` (``theta *= 1 - lr wd`` before the Adam step), ``"l2"``
    (``g += wd theta``: Adam with L2), ``"after"`` (decay the updated theta), ``"unscaled"``
    (``theta *= 1 - wd``). Returns every parameter, flattened, after every step:
    ``[steps, n_total]``.
    """
    beta1, beta2 = betas
    thetas = [p.copy() for p in params0]
    m = [np.zeros_like(p) for p in params0]
    v = [np.zeros_like(p) for p in params0]
    out = []
    for t, (step_grads, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        lr = lrs[0] if fixed_lr else lr
        for i, grad in enumerate(step_grads):
            theta = thetas[i]
            if decay == "l2":
                grad = grad + weight_decay * theta
            elif decay == "decoupled":
                theta = theta * (1 - lr * weight_decay)
            elif decay == "unscaled":
                theta = theta * (1 - weight_decay)
            m[i] = beta1 * m[i] + (1 - beta1) * grad
            v[i] = beta2 * v[i] + (1 - beta2) * (grad**2 if square else np.abs(grad))
            m_hat, v_hat = m[i], v[i]
            if bias_correction:
                m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            denominator = np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps
            theta = theta - lr * m_hat / denominator
            if decay == "after":
                theta = theta * (1 - lr * weight_decay)
            thetas[i] = theta
        out.append(np.concatenate([theta.ravel() for theta in thetas]))
    return np.stack(out)


def _adamw_mistake(**flags: Any) -> Callable[..., np.ndarray]:
    return lambda *args: _adamw_trajectory(*args, **flags)


_ADAMW_MISTAKES = [
    Mistake(
        "l2",
        _adamw_mistake(decay="l2"),
        "you added weight_decay * theta to the gradient: that is L2 regularisation inside "
        "Adam (torch.optim.Adam's weight_decay), which Adam then rescales per coordinate. "
        "AdamW DECOUPLES the decay: theta -= lr * weight_decay * theta, outside m and v.",
    ),
    Mistake(
        "no bias correction",
        _adamw_mistake(bias_correction=False),
        "the first steps are too large (step 1 moves lr (1 - beta1) / sqrt(1 - beta2) "
        "instead of lr): you left out the bias correction m / (1 - beta1**t), "
        "v / (1 - beta2**t), with t the number of steps taken so far, from 1.",
    ),
    Mistake(
        "decay after",
        _adamw_mistake(decay="after"),
        "the decay multiplies the UPDATED parameters: decay the current ones, "
        "theta *= 1 - lr * weight_decay, then take the Adam step (torch.optim.AdamW's order).",
    ),
    Mistake(
        "decay unscaled",
        _adamw_mistake(decay="unscaled"),
        "the decay is not scaled by the learning rate: theta *= 1 - lr * weight_decay, "
        "not 1 - weight_decay (so it shrinks with the schedule, as in torch.optim.AdamW).",
    ),
    Mistake(
        "fixed lr",
        _adamw_mistake(fixed_lr=True),
        "your steps use the learning rate given to __init__: the training loop sets "
        "optimizer.lr before every step (that is how a schedule reaches the optimiser), so "
        "step() must read self.lr each time.",
    ),
    Mistake(
        "eps inside",
        _adamw_mistake(eps_inside=True),
        "eps is inside the square root: the denominator is sqrt(v_hat) + eps.",
    ),
    Mistake(
        "abs",
        _adamw_mistake(square=False),
        "v averages |g|: it is the moving average of the SQUARED gradient, "
        "v = beta2 v + (1 - beta2) g**2.",
    ),
    Mistake(
        "no decay",
        _adamw_mistake(decay="none"),
        "the parameters are never decayed: AdamW multiplies them by 1 - lr * weight_decay "
        "every step.",
    ),
]


def _run_adamw(
    adamw_class: Callable[..., Any],
    params0: list[np.ndarray],
    grads: list[list[np.ndarray]],
    lrs: list[float],
    hyper: dict[str, Any],
) -> np.ndarray:
    """Run the student's class on float64 copies of ``params0``: ``[steps, n_total]``."""
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    optimizer = adamw_class(params, lr=lrs[0], **hyper)
    out = []
    for t, (step_grads, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = torch.tensor(grad)
        optimizer.lr = lr
        try:
            optimizer.step()
        except RuntimeError as err:
            if "leaf Variable" in str(err):
                raise CheckError(
                    "step() changed a parameter in place while autograd was recording: "
                    "decorate step with @torch.no_grad() (or use `with torch.no_grad():`)."
                ) from err
            raise
        now = np.concatenate([p.detach().numpy().ravel() for p in params])
        if t == 1 and np.array_equal(now, np.concatenate([p.ravel() for p in params0])):
            raise CheckError(
                "the parameters did not change after step(): update them IN PLACE "
                "(p.mul_(...), p.add_(...) or p.addcdiv_(...)); `p = p - ...` only "
                "rebinds a local name."
            )
        out.append(now)
    return np.stack(out)


def _torch_trajectory(
    optimizer_class: type[torch.optim.Adam] | type[torch.optim.AdamW],
    params0: list[np.ndarray],
    grads: list[list[np.ndarray]],
    lrs: list[float],
    hyper: dict[str, Any],
) -> np.ndarray:
    params = [torch.tensor(p, requires_grad=True) for p in params0]
    optimizer = optimizer_class(params, lr=lrs[0], foreach=False, **hyper)
    out = []
    for step_grads, lr in zip(grads, lrs, strict=True):
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = torch.tensor(grad)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        out.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
    return np.stack(out)


@exercise
def check_adamw(adamw_class: Callable[..., Any]) -> None:
    """``AdamW(params, lr, betas, eps, weight_decay)`` with ``.lr`` and ``.step()``.

    Two float64 parameters (a matrix and a vector), six steps with given gradients and a
    learning rate that the loop changes between steps (``optimizer.lr = ...``): every
    parameter after every step must match ``torch.optim.AdamW``, and with
    ``weight_decay=0`` ``torch.optim.Adam``.
    """
    rng = np.random.default_rng(2)
    params0 = [rng.normal(size=(3, 4)), rng.normal(size=4)]
    grads = [[0.1 * rng.normal(size=p.shape) for p in params0] for _ in range(6)]
    lrs = [0.1, 0.1, 0.05, 0.2, 0.02, 0.1]
    # eps large enough that putting it inside the square root changes the step visibly
    for optimizer_class, weight_decay in [(torch.optim.Adam, 0.0), (torch.optim.AdamW, 0.1)]:
        hyper = {"betas": (0.9, 0.95), "eps": 1e-3, "weight_decay": weight_decay}
        want = _torch_trajectory(optimizer_class, params0, grads, lrs, hyper)
        got = _run_adamw(adamw_class, params0, grads, lrs, hyper)
        name = optimizer_class.__name__
        judge(
            got,
            want,
            _ADAMW_MISTAKES,
            (params0, grads, lrs, hyper["betas"], hyper["eps"], weight_decay),
            what=f"the parameters after each of 6 steps, weight_decay={weight_decay} "
            f"(vs torch.optim.{name})",
            atol=1e-10,
            hint="theta *= 1 - lr * wd; m, v moving averages of g and g**2; "
            "theta -= lr * m_hat / (sqrt(v_hat) + eps).",
        )
    passed("check_adamw")


# ----------------------------------------------------------------------------- schedule
def _schedule(
    steps: np.ndarray,
    max_lr: float,
    min_lr: float,
    warmup: int,
    total: int,
    *,
    warmup_from_zero: bool = False,
    boundary_in_warmup: bool = False,
    floor: float | None = None,
    whole_interval: bool = False,
    clamp: bool = True,
) -> np.ndarray:
    """Lecture 08's schedule written from its formula, or one of the classic mistakes."""
    low = min_lr if floor is None else floor
    out = []
    for s in steps:
        in_warmup = s < warmup or (boundary_in_warmup and s == warmup > 0)
        if in_warmup:
            out.append(max_lr * (s if warmup_from_zero else s + 1) / warmup)
            continue
        if s >= total and clamp:
            out.append(low)
            continue
        start, length = (0, total) if whole_interval else (warmup, max(1, total - warmup))
        progress = (s - start) / length
        out.append(low + 0.5 * (max_lr - low) * (1 + math.cos(math.pi * progress)))
    return np.array(out)


def _schedule_mistake(**flags: Any) -> Callable[..., np.ndarray]:
    return lambda *args: _schedule(*args, **flags)


_SCHEDULE_MISTAKES = [
    Mistake(
        "warmup from zero",
        _schedule_mistake(warmup_from_zero=True),
        "off by one in the warmup: step 0 gets lr 0 (a wasted step) and the warmup never "
        "reaches max_lr. Step s (from 0) gets max_lr * (s + 1) / warmup_steps, so the last "
        "warmup step is at max_lr.",
    ),
    Mistake(
        "boundary in warmup",
        _schedule_mistake(boundary_in_warmup=True),
        "off by one at the warmup boundary: step == warmup_steps is already the first "
        "cosine step (lr = max_lr); your warmup formula gives it more than max_lr. Warm up "
        "while step < warmup_steps.",
    ),
    Mistake(
        "to zero",
        _schedule_mistake(floor=0.0),
        "the cosine decays to 0: it must end at min_lr, "
        "lr = min_lr + (max_lr - min_lr) (1 + cos(pi p)) / 2.",
    ),
    Mistake(
        "whole interval",
        _schedule_mistake(whole_interval=True),
        "the cosine runs over the wrong interval: its progress starts after the warmup, "
        "p = (step - warmup_steps) / (total_steps - warmup_steps), so it starts at max_lr "
        "right after the warmup and reaches min_lr at total_steps.",
    ),
    Mistake(
        "no clamp",
        _schedule_mistake(clamp=False),
        "past total_steps your learning rate climbs back up the cosine: from total_steps on "
        "it stays at min_lr.",
    ),
]


@exercise
def check_lr_schedule(lr_schedule: Callable[[int, float, float, int, int], float]) -> None:
    """``lr_schedule(step, max_lr, min_lr, warmup_steps, total_steps) -> lr`` must equal
    :func:`decoding_gpt.training.lr_at` (lecture 08's schedule) at every step, from 0 to
    a few steps past ``total_steps``, for several settings (one without warmup)."""
    for max_lr, min_lr, warmup, total in [
        (1e-2, 1e-3, 5, 30),
        (3e-3, 3e-4, 20, 60),
        (1.0, 0.1, 0, 12),
    ]:
        config = TrainConfig(
            lr=max_lr, min_lr=min_lr, warmup_steps=warmup, steps=total, eval_every=0, log_every=0
        )
        steps = np.arange(total + 4)
        want = np.array([lr_at(int(s), config) for s in steps])
        setting = (
            f"max_lr={max_lr:g}, min_lr={min_lr:g}, warmup_steps={warmup}, total_steps={total}"
        )
        got = []
        for s in steps:
            try:
                got.append(float(lr_schedule(int(s), max_lr, min_lr, warmup, total)))
            except ZeroDivisionError as err:
                raise CheckError(
                    f"step {s} with {setting}: division by zero. With warmup_steps = 0 there "
                    "is no warmup: every step is on the cosine."
                ) from err
            except TypeError as err:  # float(None) and the like
                raise CheckError(f"lr_schedule({s}, ...) must return a number: {err}") from err
        judge(
            np.array(got),
            want,
            _SCHEDULE_MISTAKES,
            (steps, max_lr, min_lr, warmup, total),
            what=f"the learning rates at steps 0..{total + 3} for {setting} (vs lr_at)",
            atol=1e-12,
            hint="warmup: max_lr (step + 1) / warmup_steps while step < warmup_steps; then "
            "min_lr + (max_lr - min_lr) (1 + cos(pi p)) / 2, p = (step - warmup) / "
            "(total - warmup); min_lr from total_steps on.",
        )
    passed("check_lr_schedule")
