"""Exercise checks of lecture 09: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (the batch-axis shift is a bug of
earlier course materials); the test pins the part of the message that names the mistake.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture09 as l09
from decoding_gpt.scaling import fit_power_law, fit_saturating_power_law


# ------------------------------------------------------------------- sequence perplexity
def _nll(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _perplexity(logits, tokens):
    return torch.exp(_nll(logits[:, :-1], tokens[:, 1:])).item()


def test_sequence_perplexity_accepts_reference_and_a_loop():
    l09.check_sequence_perplexity(_perplexity)

    def loop(logits, tokens):  # an independent formulation: sum of -log p, then exp
        total, count = 0.0, 0
        for b in range(tokens.shape[0]):
            for t in range(tokens.shape[1] - 1):
                total -= torch.log_softmax(logits[b, t], -1)[tokens[b, t + 1]].item()
                count += 1
        return math.exp(total / count)

    l09.check_sequence_perplexity(loop)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda lg, tk: _nll(lg[:, :-1], tk[:, 1:]).item(), "exp\\(mean NLL\\)"),
        (lambda lg, tk: (2 ** _nll(lg[:, :-1], tk[:, 1:])).item(), "natural logs"),
        (lambda lg, tk: torch.exp(_nll(lg, tk)).item(), "not shifted"),
        (lambda lg, tk: torch.exp(_nll(lg[:-1], tk[1:])).item(), "BATCH axis"),
        (lambda lg, tk: torch.exp(_nll(lg[:, 1:], tk[:, :-1])).item(), "PREVIOUS token"),
        (
            lambda lg, tk: np.mean([_perplexity(lg[i : i + 1], tk[i : i + 1]) for i in range(3)]),
            "mean of per-sequence",
        ),
        (lambda lg, tk: torch.exp(_nll(lg[:, :-1], tk[:, 1:])) * torch.ones(2), "one number"),
        (lambda lg, tk: None, "return"),
        (lambda lg, tk: 1.1 * _perplexity(lg, tk), "wrong values"),
    ],
)  # fmt: skip
def test_sequence_perplexity_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l09.check_sequence_perplexity(wrong)


# ------------------------------------------------------------------- bits per byte
def test_bits_per_byte_accepts_reference():
    l09.check_bits_per_byte(lambda nll, t, b: nll * t / b / math.log(2))
    l09.check_bits_per_byte(lambda nll, t, b: np.float64(nll / math.log(2)) * (t / b))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda nll, t, b: nll * t / b, "nats per byte"),
        (lambda nll, t, b: nll / math.log(2), "bits per TOKEN"),
        (lambda nll, t, b: nll * b / (t * math.log(2)), "swapped"),
        (lambda nll, t, b: nll * t * math.log(2) / b, "instead of dividing"),
        (lambda nll, t, b: math.exp(nll) * t / b, "perplexity"),
        (lambda nll, t, b: None, "return"),
        (lambda nll, t, b: nll * t / (b * math.log(10)), "wrong values"),
    ],
)
def test_bits_per_byte_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l09.check_bits_per_byte(wrong)


# ------------------------------------------------------------------- log-log fit
def _polyfit(n, loss):
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    return math.exp(intercept), slope


def test_fit_loglog_accepts_reference_package_and_log10():
    l09.check_fit_loglog(_polyfit)
    l09.check_fit_loglog(
        lambda n, loss: (fit_power_law(n, loss).a, fit_power_law(n, loss).exponent)
    )

    def base10(n, loss):  # the slope is base-free; the prefactor must undo the same base
        slope, intercept = np.polyfit(np.log10(n), np.log10(loss), 1)
        return 10**intercept, slope

    l09.check_fit_loglog(base10)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, loss: (_polyfit(n, loss)[0], -_polyfit(n, loss)[1]), "wrong sign"),
        (lambda n, loss: (1.0, np.polyfit(n, loss, 1)[0]), "linear space"),
        (lambda n, loss: (1.0, np.polyfit(n, np.log(loss), 1)[0]), "log of N too"),
        (
            lambda n, loss: (1.0, 1 / np.polyfit(np.log(loss), np.log(n), 1)[0]),
            "wrong way round",
        ),
        (lambda n, loss: (math.log(_polyfit(n, loss)[0]), _polyfit(n, loss)[1]), "exp\\(int"),
        (lambda n, loss: _polyfit(n, loss)[1], "pair"),
        (lambda n, loss: None, "return"),
        (lambda n, loss: (2 * _polyfit(n, loss)[0], _polyfit(n, loss)[1]), "prefactor a"),
    ],
)  # fmt: skip
def test_fit_loglog_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l09.check_fit_loglog(wrong)


# ------------------------------------------------------------------- saturating law
def _saturating(n, loss, clamp=True, grid=400, refine=True):
    """Independent: a 2-column lstsq for (a, l_inf) at each exponent of a grid, then a
    finer grid around the best one."""

    def best_for(b):
        z = n**b
        (a, l_inf), *_ = np.linalg.lstsq(np.stack([z, np.ones_like(z)], 1), loss, rcond=None)
        if clamp and l_inf < 0:  # the constrained optimum is on the boundary l_inf = 0
            a, l_inf = (z @ loss) / (z @ z), 0.0
        return float(np.sum((loss - a * z - l_inf) ** 2)), a, l_inf

    exponents = -np.geomspace(1e-3, 3.0, grid)
    i = int(np.argmin([best_for(b)[0] for b in exponents]))
    b = exponents[i]
    if refine:
        fine = np.linspace(exponents[max(i - 1, 0)], exponents[min(i + 1, grid - 1)], 401)
        b = min(fine, key=lambda e: best_for(e)[0])
    _, a, l_inf = best_for(b)
    return a, b, l_inf


def test_fit_saturating_accepts_reference_and_package():
    l09.check_fit_saturating(_saturating)
    l09.check_fit_saturating(
        lambda n, loss: (lambda f: (f.a, f.exponent, f.l_inf))(fit_saturating_power_law(n, loss))
    )


def _reordered(order):
    return lambda n, loss: tuple(_saturating(n, loss)[i] for i in order)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, loss: (lambda r: (r[0], -r[1], r[2]))(_saturating(n, loss)), "wrong sign"),
        (_reordered((0, 2, 1)), "floor and the exponent are swapped"),
        (_reordered((1, 0, 2)), "a and the exponent are swapped"),
        (
            lambda n, loss: (fit_power_law(n, loss).a, fit_power_law(n, loss).exponent, 0.0),
            "pure power law",
        ),
        (lambda n, loss: _saturating(n, loss, clamp=False), "cannot be negative"),
        (lambda n, loss: _saturating(n, loss, grid=8, refine=False), "residual sum of squares"),
        (lambda n, loss: _saturating(n, loss)[:2], "triple"),
        (lambda n, loss: None, "return"),
    ],
)
def test_fit_saturating_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l09.check_fit_saturating(wrong)


def test_fit_saturating_rejects_a_fit_of_log_loss():
    """Least squares on log L weighs the small losses more: not the optimum in L."""

    def log_space(n, loss):
        best = None
        for b in -np.geomspace(1e-3, 3.0, 150):
            for l_inf in np.linspace(0, 0.99 * loss.min(), 60):
                z = np.log(loss - l_inf) - b * np.log(n)  # = log a, if the law held exactly
                log_a = z.mean()
                err = np.sum((np.log(loss) - np.log(np.exp(log_a) * n**b + l_inf)) ** 2)
                if best is None or err < best[0]:
                    best = (err, np.exp(log_a), b, l_inf)
        return best[1:]

    with pytest.raises(CheckError, match="residual sum of squares|wrong sign"):
        l09.check_fit_saturating(log_space)


# ------------------------------------------------------------------- stubs
@pytest.mark.parametrize(
    "check",
    [
        l09.check_sequence_perplexity,
        l09.check_bits_per_byte,
        l09.check_fit_loglog,
        l09.check_fit_saturating,
    ],
    ids=lambda c: c.__name__,
)
def test_every_check_refuses_a_stub(check):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"{STUB_PREFIX} write `answer` here.")

    with pytest.raises(NotAttempted, match="not attempted yet"):
        check(stub)
