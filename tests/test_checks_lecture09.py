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

from decoding_gpt.checks import CheckError
from decoding_gpt.checks import lecture09 as l09
from decoding_gpt.scaling import fit_power_law


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
