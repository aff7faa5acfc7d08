"""Exercise checks of lecture 18: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (the variance for the standard
error, the unpooled rate, counts for rates; no end-of-text token, the mean over tokens,
a right-padded batch; the probe's decisions or probabilities for its scores, no bias;
saliency for gradient x input, absolute values, the positional embedding, every
position's score); the test pins the part of the message that names the mistake. A stub
of the student edition is refused as not attempted.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2_contingency

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture18 as l18
from decoding_gpt.data import eos_id
from decoding_gpt.probes import fit_logistic_probe


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


@pytest.mark.parametrize(
    "check",
    [
        l18.check_rate_difference_z,
        l18.check_last_token_activations,
        l18.check_probe_scores,
        l18.check_token_attribution,
    ],
)
def test_stub_is_not_attempted(check):
    with pytest.raises(NotAttempted, match="not attempted"):
        check(_stub)


# ------------------------------------------------------------------------------ z test
def _z(ka, na, kb, nb):
    p = (ka + kb) / (na + nb)
    return (ka / na - kb / nb) / math.sqrt(p * (1 - p) * (1 / na + 1 / nb))


def test_z_agrees_with_pearson_chi_square():
    """Independent reference: z^2 is Pearson's chi-square of the 2x2 table (no
    continuity correction)."""
    for ka, na, kb, nb in [(62, 200, 70, 200), (190, 200, 63, 200), (5, 50, 9, 40)]:
        chi2 = chi2_contingency([[ka, na - ka], [kb, nb - kb]], correction=False)[0]
        assert math.isclose(_z(ka, na, kb, nb) ** 2, chi2, rel_tol=1e-9)
    l18.check_rate_difference_z(_z)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda ka, na, kb, nb: _z(ka, na, kb, nb) ** 2 / abs(_z(ka, na, kb, nb)) * 0.9, "wrong"),
        (lambda ka, na, kb, nb: -_z(ka, na, kb, nb), "reversed"),
        (
            lambda ka, na, kb, nb: (
                (ka / na - kb / nb)
                / math.sqrt(ka / na * (1 - ka / na) / na + kb / nb * (1 - kb / nb) / nb)
            ),
            "pooling",
        ),
        (
            lambda ka, na, kb, nb: (
                (ka / na - kb / nb)
                / math.sqrt((ka + kb) / (na + nb) * (1 - (ka + kb) / (na + nb)) / (na + nb))
            ),
            "own sampling noise",
        ),
        (
            lambda ka, na, kb, nb: (
                (ka / na - kb / nb)
                / ((ka + kb) / (na + nb) * (1 - (ka + kb) / (na + nb)) * (1 / na + 1 / nb))
            ),
            "VARIANCE",
        ),
        (lambda ka, na, kb, nb: _z(ka, na, kb, nb) * (ka - kb) / (ka / na - kb / nb), "COUNTS"),
        (lambda ka, na, kb, nb: None, "return"),
    ],
)
def test_z_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l18.check_rate_difference_z(wrong)


# ------------------------------------------------------------------ last-token activations
def _run_one(model, tok, prompt, hook, with_eos=True):
    ids = [eos_id(tok), *tok.encode(prompt).ids] if with_eos else tok.encode(prompt).ids
    _, cache = model.run_with_cache(torch.tensor([ids]))
    return cache[hook][0]


def _last(model, tok, prompts, hook):
    return torch.stack([_run_one(model, tok, p, hook)[-1] for p in prompts])


def _padded_batch(model, tok, prompts, hook):
    """Right-padded batch, last column read for every prompt: padding for short ones."""
    rows = [[eos_id(tok), *tok.encode(p).ids] for p in prompts]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [eos_id(tok)] * (width - len(r)) for r in rows])
    _, cache = model.run_with_cache(tokens)
    return cache[hook][:, -1]


def test_last_token_activations_accepts_reference():
    l18.check_last_token_activations(_last)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            lambda m, t, ps, h: torch.stack([_run_one(m, t, p, h, False)[-1] for p in ps]),
            "end-of-text",
        ),
        (lambda m, t, ps, h: torch.stack([_run_one(m, t, p, h)[1:].mean(0) for p in ps]), "mean"),
        (lambda m, t, ps, h: torch.stack([_run_one(m, t, p, h)[0] for p in ps]), "position 0"),
        (_padded_batch, "padding"),
        (lambda m, t, ps, h: _last(m, t, ps, h)[:, :5], "shape"),
        (lambda m, t, ps, h: [1.0], "tensor"),
    ],
)
def test_last_token_activations_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l18.check_last_token_activations(wrong)


# --------------------------------------------------------------------------- probe scores
def _scores(x, y, test):
    logits = fit_logistic_probe(x, y)(test).detach()
    return logits[:, 1] - logits[:, 0]


def test_probe_scores_accepts_reference_and_sklearn_ranking():
    l18.check_probe_scores(_scores)
    # independent: scikit-learn's logistic regression ranks the test rows the same way
    from sklearn.linear_model import LogisticRegression

    x, y, test = l18._probe_data(180)
    sk = LogisticRegression(C=1e4, max_iter=500).fit(x.numpy(), y.numpy())
    ours = _scores(x, y, test)
    theirs = torch.tensor(sk.decision_function(test.numpy()))
    rank = lambda v: v.argsort().argsort().double()  # noqa: E731
    assert torch.corrcoef(torch.stack([rank(ours), rank(theirs)]))[0, 1] > 0.95


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, y, t: _scores(x, y, t).gt(0).float(), "decisions"),
        (lambda x, y, t: -_scores(x, y, t), "reversed"),
        (lambda x, y, t: _scores(x, y, t).sigmoid(), "probability"),
        (
            lambda x, y, t: (lambda w: t @ (w[1] - w[0]))(
                fit_logistic_probe(x, y).linear.weight.detach()
            ),
            "bias",
        ),
        (lambda x, y, t: _scores(x, y, t)[:5], "shape"),
        (lambda x, y, t: 3, "tensor"),
    ],
)
def test_probe_scores_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l18.check_probe_scores(wrong)


# ---------------------------------------------------------------------- token attribution
def _grad_input(model, tokens, direction, hook, start="hook_embed", all_pos=False):
    store = {}

    def keep(act, hook):
        act = act.detach().requires_grad_()
        store["in"] = act
        return act

    def record(act, hook):
        store["out"] = act

    with torch.enable_grad():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(start, keep), (hook, record)])
        score = (store["out"][0] @ direction).sum() if all_pos else store["out"][0, -1] @ direction
        (grad,) = torch.autograd.grad(score, store["in"])
    return grad[0], store["in"][0].detach()


def _attribution(model, tokens, direction, hook):
    grad, emb = _grad_input(model, tokens, direction, hook)
    return (grad * emb).sum(-1)


def test_token_attribution_accepts_reference():
    l18.check_token_attribution(_attribution)
    l18.check_token_attribution(lambda *a: _attribution(*a)[None])  # [1, pos] is fine too


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda m, t, d, h: _grad_input(m, t, d, h)[0].norm(dim=-1), "saliency"),
        (lambda m, t, d, h: (lambda g, e: (g * e).abs().sum(-1))(*_grad_input(m, t, d, h)), "sign"),
        (
            lambda m, t, d, h: (lambda g, e: (g * e).sum(-1))(
                *_grad_input(m, t, d, h, all_pos=True)
            ),
            "LAST position",
        ),
        (
            lambda m, t, d, h: (
                _grad_input(m, t, d, h)[0]
                * (_grad_input(m, t, d, h)[1] + _grad_input(m, t, d, h, "hook_pos_embed")[1])
            ).sum(-1),
            "positional",
        ),
        (lambda m, t, d, h: -_attribution(m, t, d, h), "wrong values"),
        (lambda m, t, d, h: "x", "tensor"),
    ],
)
def test_token_attribution_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l18.check_token_attribution(wrong)
