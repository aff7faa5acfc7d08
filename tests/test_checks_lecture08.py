"""Exercise checks of lecture 08: accept correct answers, reject known-wrong ones.

LayerNorm, the pre-LN block and the loss are checked by :mod:`decoding_gpt.checks.
components`, shared with homework 3: the catalogue tests below run every catalogued
mistake in both forms, the lecture's function and the homework's ``nn.Module`` class
(homework 3's own wrong classes are in ``test_checks_hw3.py``).

Each wrong implementation is a mistake students make (the batch-axis shift is a bug of
earlier course materials); the test pins the part of the message that names the mistake.
The correct answers come from independent code (torch.nn.functional, the package's
modules, written-out formulas), not from the checks' own references.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decoding_gpt.checks import CheckError, Mistake
from decoding_gpt.checks import lecture08 as l08
from decoding_gpt.checks.components import BLOCK_MISTAKES, LAYER_NORM_MISTAKES, LOSS_MISTAKES
from decoding_gpt.generation import top_p_filter
from decoding_gpt.transformer import LayerNorm, TransformerBlock, next_token_loss


# ------------------------------------------------------------------- LayerNorm
def _ln(x, w, b, eps, unbiased=False, eps_inside=True, centre=True, dim=-1):
    mu = x.mean(dim, keepdim=True) if centre else torch.zeros_like(x)
    var = ((x - mu) ** 2).sum(dim, keepdim=True) / (x.shape[dim] - unbiased)
    scale = (var + eps).sqrt() if eps_inside else var.sqrt() + eps
    return (x - mu) / scale * w + b


def test_layer_norm_accepts_reference():
    l08.check_layer_norm(lambda x, w, b, eps: F.layer_norm(x, w.shape, w, b, eps))
    l08.check_layer_norm(_ln)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, w, b, eps: _ln(x, w, b, eps, unbiased=True), "unbiased"),
        (lambda x, w, b, eps: _ln(x, w, b, eps, eps_inside=False), "INSIDE the square root"),
        (
            lambda x, w, b, eps: x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b,
            "RMSNorm",
        ),
        (lambda x, w, b, eps: _ln(x, w, b, eps, dim=0), "batch axis"),
        (lambda x, w, b, eps: _ln(x, w, b, eps, dim=1), "position axis"),
        (lambda x, w, b, eps: _ln(x, 1.0, 0.0, eps), "gain w and bias b are missing"),
        (lambda x, w, b, eps: (_ln(x, 1.0, 0.0, eps) + b) * w, "x_hat \\* w \\+ b"),
        (lambda x, w, b, eps: _ln(x, w, b, eps)[..., :-1], "shape"),
        (lambda x, w, b, eps: None, "return"),
    ],
)
def test_layer_norm_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l08.check_layer_norm(wrong)


def _layer_norm_class(fn):
    """A homework-style LayerNorm class whose forward is ``fn(x, w, b, eps)``."""

    class WrongLayerNorm(nn.Module):
        def __init__(self, d_model: int, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            self.w = nn.Parameter(torch.ones(d_model))
            self.b = nn.Parameter(torch.zeros(d_model))

        def forward(self, x):
            return fn(x, self.w, self.b, self.eps)

    return WrongLayerNorm


def test_layer_norm_accepts_both_forms():
    l08.check_layer_norm(_ln)  # the lecture's function
    l08.check_layer_norm(LayerNorm)  # homework 3's class
    l08.check_layer_norm(_layer_norm_class(_ln))


def _forms(catalogue: tuple[Mistake, ...]) -> list:
    return [pytest.param(m, form, id=f"{m.name}-{form}") for m in catalogue for form in m.forms]


@pytest.mark.parametrize(("mistake", "form"), _forms(LAYER_NORM_MISTAKES))
def test_layer_norm_rejects_every_catalogued_mistake(mistake, form):
    impl = mistake.wrong if form == "function" else _layer_norm_class(mistake.wrong)
    with pytest.raises(CheckError, match=re.escape(mistake.message)):
        l08.check_layer_norm(impl)


# ------------------------------------------------------------------- pre-LN block
def _pre_ln(x, ln1, attn, ln2, mlp):
    x = x + attn(ln1(x))
    return x + mlp(ln2(x))


def test_pre_ln_block_accepts_reference():
    l08.check_pre_ln_block(_pre_ln)


def _post_ln(x, ln1, attn, ln2, mlp):
    x = ln1(x + attn(x))
    return ln2(x + mlp(x))


def _normalised_stream(x, ln1, attn, ln2, mlp):
    x = ln1(x)
    x = x + attn(x)
    x = ln2(x)
    return x + mlp(x)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, ln1, attn, ln2, mlp: mlp(ln2(attn(ln1(x)))), "residual connections"),
        (_post_ln, "post-LN"),
        (lambda x, ln1, attn, ln2, mlp: x + attn(ln1(x)) + mlp(ln2(x)), "parallel"),
        (lambda x, ln1, attn, ln2, mlp: _pre_ln(x, ln2, attn, ln1, mlp), "swapped"),
        (_normalised_stream, "NORMALISED stream"),
        (lambda x, ln1, attn, ln2, mlp: x + attn(ln1(x)), "MLP sublayer is missing"),
        (lambda x, ln1, attn, ln2, mlp: 1.01 * _pre_ln(x, ln1, attn, ln2, mlp), "wrong values"),
    ],
)
def test_pre_ln_block_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l08.check_pre_ln_block(wrong)


def _block_class(fn):
    """A homework-style block class (the course's sublayers) whose forward is ``fn``."""

    class WrongBlock(TransformerBlock):
        def forward(self, x):
            return fn(x, self.ln1, self.attn, self.ln2, self.mlp)

    return WrongBlock


def test_pre_ln_block_accepts_both_forms():
    l08.check_pre_ln_block(_pre_ln)  # the lecture's function
    l08.check_pre_ln_block(TransformerBlock)  # homework 3's class
    l08.check_pre_ln_block(_block_class(_pre_ln))


@pytest.mark.parametrize(("mistake", "form"), _forms(BLOCK_MISTAKES))
def test_pre_ln_block_rejects_every_catalogued_mistake(mistake, form):
    impl = mistake.wrong if form == "function" else _block_class(mistake.wrong)
    with pytest.raises(CheckError, match=re.escape(mistake.message)):
        l08.check_pre_ln_block(impl)


# ------------------------------------------------------------------- next-token loss
def _loss_loop(logits, tokens):
    """Written out: -log p(token t+1) at every position t < pos - 1 of every sequence."""
    terms = [
        -logits[b, t].log_softmax(-1)[tokens[b, t + 1]]
        for b in range(tokens.shape[0])
        for t in range(tokens.shape[1] - 1)
    ]
    return torch.stack(terms).mean()


def test_next_token_loss_accepts_reference():
    l08.check_next_token_loss(next_token_loss)
    l08.check_next_token_loss(_loss_loop)


def _flat(logits, tokens):
    return logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)


def _batch_shift(logits, tokens):
    """The old course bug: targets shifted along dim 0."""
    return F.cross_entropy(*_flat(logits[:-1], tokens[1:]))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_batch_shift, "BATCH axis"),
        (lambda lg, t: F.cross_entropy(*_flat(lg, t)), "no shift"),
        (lambda lg, t: F.cross_entropy(*_flat(lg[:, 1:], t[:, :-1])), "wrong way"),
        (lambda lg, t: F.cross_entropy(_flat(lg, t)[0][:-1], _flat(lg, t)[1][1:]), "flattened"),
        (lambda lg, t: next_token_loss(lg, t) * (t.shape[0] * (t.shape[1] - 1)), "SUM"),
        (lambda lg, t: next_token_loss(lg, t) * t.shape[0], "summed over the batch"),
        (
            lambda lg, t: F.cross_entropy(*_flat(lg[:, :-1], t[:, 1:]), reduction="none"),
            "one number",
        ),
        (lambda lg, t: 1.1 * next_token_loss(lg, t), "wrong values"),
    ],
)
def test_next_token_loss_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l08.check_next_token_loss(wrong)


@pytest.mark.parametrize("mistake", LOSS_MISTAKES, ids=lambda m: m.name)
def test_next_token_loss_rejects_every_catalogued_mistake(mistake):
    """The loss has one form (a function, in the lecture and in homework 3)."""
    with pytest.raises(CheckError, match=re.escape(mistake.message)):
        l08.check_next_token_loss(mistake.wrong)


# ------------------------------------------------------------------- top-p filter
def _top_p_loop(logits, p):
    out = torch.full_like(logits, float("-inf"))
    for row in range(logits.shape[0]):
        probs = logits[row].softmax(-1)
        order = sorted(range(logits.shape[1]), key=lambda j: -float(probs[j]))
        total = 0.0
        for j in order:
            out[row, j] = logits[row, j]
            total += float(probs[j])
            if total >= p:
                break
    return out


def test_top_p_accepts_reference():
    l08.check_top_p_filter(top_p_filter)
    l08.check_top_p_filter(_top_p_loop)


def _inclusive(logits, p):
    sorted_logits, order = logits.sort(-1, descending=True)
    drop = sorted_logits.softmax(-1).cumsum(-1) > p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _inverted(logits, p):
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    keep = probs.cumsum(-1) - probs < p
    return logits.masked_fill(keep.scatter(-1, order, keep), float("-inf"))


def _drops_all_at_large_p(logits, p):
    return torch.full_like(logits, float("-inf")) if p > 0.9 else top_p_filter(logits, p)


def _unsorted(logits, p):
    probs = logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))


def _not_scattered(logits, p):
    sorted_logits, _ = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))


def _sorted_output(logits, p):
    sorted_logits, _ = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    return sorted_logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_inclusive, "past p"),
        (_drops_all_at_large_p, "every token of a row was dropped"),
        (_inverted, "inverted"),
        (_unsorted, "DESCENDING"),
        (_not_scattered, "map it back"),
        (_sorted_output, "sorted order: return"),
        (lambda lg, p: top_p_filter(lg, p).nan_to_num(neginf=0.0), "set to 0"),
        (lambda lg, p: top_p_filter(lg, p).softmax(-1), "returned probabilities"),
        (lambda lg, p: top_p_filter(lg, min(1.0, p + 0.1)), "row"),
        (lambda lg, p: top_p_filter(lg, p)[:, :-1], "shape"),
    ],
)
def test_top_p_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l08.check_top_p_filter(wrong)
