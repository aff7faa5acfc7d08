"""Exercise checks of lecture 17: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (no shift, the prompt scored, a mean
instead of a sum, beta outside the sigmoid, the reference forgotten, chosen and rejected
swapped, exp overflow, the argmin, one seed per sample); the test pins the part of the
message that names it. A stub of the student edition is refused as not attempted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.alignment import best_of_n, dpo_loss, optimal_policy
from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture17 as l17
from decoding_gpt.generation import generate


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


@pytest.mark.parametrize(
    "check",
    [l17.check_sequence_logprob, l17.check_optimal_policy, l17.check_dpo_loss,
     l17.check_best_of_n],
)  # fmt: skip
def test_stub_is_not_attempted(check):
    with pytest.raises(NotAttempted, match="not attempted"):
        check(_stub)


# ------------------------------------------------------------------- sequence log-prob
def _seq(logits, tokens, mask):
    per = F.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (per * mask[:, 1:]).sum(-1)


def _seq_loop(logits, tokens, mask):
    out = torch.zeros(tokens.shape[0], dtype=logits.dtype)
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if mask[b, t]:
                out[b] += torch.log_softmax(logits[b, t - 1], -1)[tokens[b, t]]
    return out


def test_sequence_logprob_accepts_references():
    l17.check_sequence_logprob(_seq)
    l17.check_sequence_logprob(_seq_loop)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda lg, tk, m: (F.log_softmax(lg, -1).gather(-1, tk[..., None])[..., 0] * m).sum(-1),
         "predict token t \\+ 1"),
        (lambda lg, tk, m: _seq(lg, tk, torch.ones_like(m)), "scores the prompt"),
        (lambda lg, tk, m: _seq(lg, tk, m) / m[:, 1:].sum(-1), "MEAN log-prob"),
        (lambda lg, tk, m: (lg.softmax(-1)[:, :-1].gather(-1, tk[:, 1:, None])[..., 0]
                            * m[:, 1:]).sum(-1), "sums probabilities"),
        (lambda lg, tk, m: (lg[:, :-1].gather(-1, tk[:, 1:, None])[..., 0] * m[:, 1:]).sum(-1),
         "raw logits"),
        (lambda lg, tk, m: _seq(lg, tk, m)[:1], "shape"),
    ],
)  # fmt: skip
def test_sequence_logprob_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l17.check_sequence_logprob(wrong)


# ------------------------------------------------------------------- optimal policy
def test_optimal_policy_accepts_references():
    l17.check_optimal_policy(optimal_policy)
    l17.check_optimal_policy(lambda p, r, b: F.softmax(torch.log(p) + r / b, dim=-1))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda p, r, b: (p.log() + r * b).softmax(-1), "multiplied by beta"),
        (lambda p, r, b: (r / b).softmax(-1), "prior"),
        (lambda p, r, b: p * (r / b).exp(), "does not sum to 1"),
        (lambda p, r, b: (p + r / b).softmax(-1), "LOG"),
        (lambda p, r, b: p * (r / b).exp() / (p * (r / b).exp()).sum(-1, keepdim=True),
         "overflows"),
    ],
)  # fmt: skip
def test_optimal_policy_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l17.check_optimal_policy(wrong)


# ------------------------------------------------------------------- DPO loss
def _dpo_by_hand(pc, pr, rc, rr, beta):
    margin = beta * ((pc - rc) - (pr - rr))
    return F.softplus(-margin).mean()


def test_dpo_loss_accepts_references():
    l17.check_dpo_loss(dpo_loss)
    l17.check_dpo_loss(_dpo_by_hand)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean(), "reference model"),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pr - rr) - (pc - rc))).mean(), "swapped"),
        (lambda pc, pr, rc, rr, b: -b * F.logsigmoid((pc - rc) - (pr - rr)).mean(), "INSIDE"),
        (lambda pc, pr, rc, rr, b: -torch.sigmoid(b * ((pc - rc) - (pr - rr))).mean(), "LOG"),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).sum(), "mean"),
        (lambda pc, pr, rc, rr, b: -torch.log(torch.sigmoid(b * ((pc - rc) - (pr - rr)))).mean(),
         "underflows"),
        (lambda pc, pr, rc, rr, b: torch.tensor(dpo_loss(pc, pr, rc, rr, b).item()), "gradient"),
    ],
)  # fmt: skip
def test_dpo_loss_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l17.check_dpo_loss(wrong)


# ------------------------------------------------------------------- best-of-n
def _bon_loop(model, prompt, n, reward_fn, max_new_tokens, seed):
    out = generate(model, prompt[None].repeat(n, 1), max_new_tokens, seed=seed)
    completions = out[:, len(prompt) :]
    rewards = reward_fn(completions)
    return completions[int(torch.argmax(rewards))], rewards


def test_best_of_n_accepts_references():
    l17.check_best_of_n(lambda m, p, n, f, k, s: best_of_n(m, p, n, f, k, seed=s))
    l17.check_best_of_n(_bon_loop)


def _argmin(model, prompt, n, reward_fn, k, seed):
    out = generate(model, prompt[None].expand(n, -1), k, seed=seed)[:, len(prompt) :]
    r = reward_fn(out)
    return out[int(r.argmin())], r


def _with_prompt(model, prompt, n, reward_fn, k, seed):
    out = generate(model, prompt[None].expand(n, -1), k, seed=seed)
    r = reward_fn(out)
    return out[int(r.argmax())], r


def _one_seed_each(model, prompt, n, reward_fn, k, seed):
    out = torch.stack([generate(model, prompt, k, seed=seed)[len(prompt) :] for _ in range(n)])
    r = reward_fn(out)
    return out[int(r.argmax())], r


def _one_at_a_time(model, prompt, n, reward_fn, k, seed):
    outs = [generate(model, prompt, k, seed=seed + i)[len(prompt) :] for i in range(n)]
    rewards = torch.cat([reward_fn(o[None]) for o in outs])
    return outs[int(rewards.argmax())], rewards


def _first(model, prompt, n, reward_fn, k, seed):
    out = generate(model, prompt[None].expand(n, -1), k, seed=seed)[:, len(prompt) :]
    return out[0], reward_fn(out)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_argmin, "LOWEST"),
        (_with_prompt, "prompt \\+ completion"),
        (_one_seed_each, "identical"),
        (_one_at_a_time, "one call"),
        (_first, "not the highest"),
        (lambda m, p, n, f, k, s: _bon_loop(m, p, n, f, k, s)[0], "pair"),
    ],
)
def test_best_of_n_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l17.check_best_of_n(wrong)
