"""Lecture 01 checks: the references pass, known-wrong implementations are rejected."""

from __future__ import annotations

import pytest
import torch

from decoding_gpt.checks import CheckError
from decoding_gpt.checks.lecture01 import check_greedy_decode, check_sequence_log_prob


# ---------------------------------------------------------------- sequence log-probability
def log_prob_reference(model, tokens):
    log_probs = model(tokens[None])[0].log_softmax(-1)
    return log_probs[:-1].gather(-1, tokens[1:, None]).sum()


def log_prob_same_position(model, tokens):  # scores x_t with the logits that predict x_t+1
    return model(tokens[None])[0].log_softmax(-1).gather(-1, tokens[:, None])[1:].sum()


def log_prob_raw_logits(model, tokens):  # forgot the softmax normalisation
    return model(tokens[None])[0][:-1].gather(-1, tokens[1:, None]).sum()


def log_prob_probabilities(model, tokens):  # sums probabilities, not log-probabilities
    return model(tokens[None])[0].softmax(-1)[:-1].gather(-1, tokens[1:, None]).sum()


def log_prob_per_token(model, tokens):  # forgot to sum
    return model(tokens[None])[0].log_softmax(-1)[:-1].gather(-1, tokens[1:, None])[:, 0]


def log_prob_mean(model, tokens):  # the mean (a per-token loss), not the joint log-prob
    return model(tokens[None])[0].log_softmax(-1)[:-1].gather(-1, tokens[1:, None]).mean()


def test_sequence_log_prob_accepts_reference(capsys):
    check_sequence_log_prob(log_prob_reference)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (log_prob_same_position, "position t predict token t \\+ 1"),
        (log_prob_raw_logits, "log_softmax"),
        (log_prob_probabilities, "log_softmax"),
        (log_prob_per_token, "sum the per-token"),
        (log_prob_mean, "wrong values"),
    ],
)
def test_sequence_log_prob_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        check_sequence_log_prob(wrong)


# ---------------------------------------------------------------- greedy decoding
def greedy_reference(model, tokens, n_new):
    for _ in range(n_new):
        next_token = model(tokens[None])[0, -1].argmax()
        tokens = torch.cat([tokens, next_token[None]])
    return tokens


def greedy_never_appends(model, tokens, n_new):  # the old course's bug
    for _ in range(n_new):
        model(tokens[None])[0, -1].argmax()
    return tokens


def greedy_first_position(model, tokens, n_new):  # reads the logits at position 0
    for _ in range(n_new):
        tokens = torch.cat([tokens, model(tokens[None])[0, 0].argmax()[None]])
    return tokens


def greedy_only_new(model, tokens, n_new):
    return greedy_reference(model, tokens, n_new)[len(tokens) :]


def greedy_sampling(model, tokens, n_new):  # samples instead of taking the argmax
    gen = torch.Generator().manual_seed(0)
    for _ in range(n_new):
        probs = model(tokens[None])[0, -1].softmax(-1)
        tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)])
    return tokens


def test_greedy_decode_accepts_reference(capsys):
    with torch.no_grad():
        check_greedy_decode(greedy_reference)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (greedy_never_appends, "append each new token"),
        (greedy_first_position, "LAST position"),
        (greedy_only_new, "only the new tokens"),
        (greedy_sampling, "greedy decoding gives"),
    ],
)
def test_greedy_decode_rejects(wrong, message):
    with torch.no_grad(), pytest.raises(CheckError, match=message):
        check_greedy_decode(wrong)
