"""Exercise checks of lecture 16: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (squared norms, the cos row alone,
an unnormalised basis, a + b + c, sines, no 2 pi, a trace that never restores or never
corrupts or restores the whole layer, ROME without the covariance, without the residual
or the denominator, transposed); the test pins the part of the message that names the
mistake. A stub of the student edition is refused as not attempted.
"""

from __future__ import annotations

import math

import pytest
import torch

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture16 as l16
from decoding_gpt.grokking import fourier_basis


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


@pytest.mark.parametrize(
    "check",
    [
        l16.check_frequency_norms,
        l16.check_fourier_logits,
        l16.check_trace_cell,
        l16.check_rank_one_update,
    ],
)
def test_stub_is_not_attempted(check):
    with pytest.raises(NotAttempted, match="not attempted"):
        check(_stub)


# ------------------------------------------------------------------------ frequency norms
def _dft_norms(W, power=0.5, rows="both", normalise=True, constant=True):
    """An explicit loop over frequencies with cos/sin of the angles (not fourier_basis)."""
    p = W.shape[0]
    x = torch.arange(p, dtype=torch.float64)
    out = [W.double().sum(0).pow(2).sum() / p] if constant else []
    for k in range(1, (p - 1) // 2 + 1):
        c, s = torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)
        scale = 2 / p if normalise else 1.0
        cos_sq = (c @ W.double()).pow(2).sum() * scale
        sin_sq = (s @ W.double()).pow(2).sum() * scale
        out.append({"both": cos_sq + sin_sq, "cos": cos_sq}[rows])
    return torch.stack(out).pow(power)


def test_frequency_norms_accepts_an_explicit_loop():
    l16.check_frequency_norms(_dft_norms)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda W: _dft_norms(W, power=1.0), "SQUARED"),
        (lambda W: _dft_norms(W, rows="cos"), "cos AND a sin"),
        (lambda W: _dft_norms(W, normalise=False), "not unit vectors|wrong values"),
        (lambda W: _dft_norms(W, constant=False), "include k = 0"),
        (lambda W: (fourier_basis(W.shape[0])[0].double() @ W).norm(dim=-1), "one per basis row"),
        (lambda W: None, "return a torch.Tensor"),
    ],
)
def test_frequency_norms_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l16.check_frequency_norms(wrong)


# ------------------------------------------------------------------------ fourier logits
def _loop_logits(a, b, p, keys, sign=-1, fn=math.cos, two_pi=True):
    out = torch.zeros(len(a), p, dtype=torch.float64)
    for i in range(len(a)):
        for c in range(p):
            for k in keys:
                w = (2 * math.pi if two_pi else 1.0) * k / p
                out[i, c] += fn(w * (int(a[i]) + int(b[i]) + sign * c))
    return out


def test_fourier_logits_accepts_a_loop():
    l16.check_fourier_logits(_loop_logits)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda a, b, p, k: _loop_logits(a, b, p, k, sign=1), r"a \+ b \+ c"),
        (lambda a, b, p, k: _loop_logits(a, b, p, k, fn=math.sin), "sin"),
        (lambda a, b, p, k: _loop_logits(a, b, p, k, two_pi=False), "2 pi"),
        (lambda a, b, p, k: _loop_logits(a, b, p, k).T, "swapped"),
    ],
)
def test_fourier_logits_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l16.check_fourier_logits(wrong)


# ------------------------------------------------------------------------ trace cell
def _trace_by_hand(model, tokens, subject, answer, noise, layer, pos, kind, *, restore=True,
                   corrupt=True, every_pos=False, per_sample=False):  # fmt: skip
    name = f"blocks.{layer}.hook_{kind}"
    _, cache = model.run_with_cache(tokens[None])
    probs = []
    for eps in noise:

        def add_noise(act, hook, eps=eps):
            act = act.clone()
            if corrupt:
                act[0, subject] += eps
            return act

        def put_back(act, hook):
            act = act.clone()
            if every_pos:
                act[0] = cache[name][0]
            else:
                act[0, pos] = cache[name][0, pos]
            return act

        hooks = [("hook_embed", add_noise)] + ([(name, put_back)] if restore else [])
        logits = model.run_with_hooks(tokens[None], fwd_hooks=hooks)
        probs.append(logits[0, -1].softmax(-1)[answer])
    probs = torch.stack(probs)
    return probs if per_sample else probs.mean().item()


def test_trace_cell_accepts_a_loop_of_hooks():
    l16.check_trace_cell(_trace_by_hand)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"restore": False}, "never put back"),
        ({"corrupt": False}, "noise never reached"),
        ({"every_pos": True}, "whole layer"),
        ({"per_sample": True}, "average the probability"),
    ],
)
def test_trace_cell_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        l16.check_trace_cell(lambda *args: _trace_by_hand(*args, **kwargs))


# ------------------------------------------------------------------------ rank-one update
def _rome(W, C, k, v, cov=True, residual=True, denominator=True, transpose=False):
    u = torch.linalg.solve(C, k) if cov else k
    r = v - W @ k if residual else v
    delta = torch.outer(u, r) if transpose else torch.outer(r, u)
    return delta / (u @ k) if denominator else delta


def test_rank_one_update_accepts_the_formula():
    l16.check_rank_one_update(_rome)
    # and the same via the pseudo-inverse of C^{-1/2}-whitened keys
    l16.check_rank_one_update(
        lambda W, C, k, v: (
            torch.outer(v - W @ k, torch.linalg.pinv(C) @ k) / (k @ torch.linalg.pinv(C) @ k)
        )
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cov": False}, "ignores C"),
        ({"residual": False}, "subtract what W already does"),
        ({"denominator": False}, "divide by"),
        ({"transpose": True}, "transposed|shape"),
    ],
)
def test_rank_one_update_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        l16.check_rank_one_update(lambda *args: _rome(*args, **kwargs))
