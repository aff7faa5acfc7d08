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

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decoding_gpt.checks import STUB_PREFIX, CheckError, Mistake, NotAttempted
from decoding_gpt.checks import lecture08 as l08
from decoding_gpt.checks.components import BLOCK_MISTAKES, LAYER_NORM_MISTAKES, LOSS_MISTAKES
from decoding_gpt.generation import beam_search, top_p_filter
from decoding_gpt.transformer import GPT, LayerNorm, TransformerBlock, next_token_loss


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


# ------------------------------------------------------------------- the whole GPT
def _gpt(tokens, p, cfg, *, final_ln=True, post_ln=False, pos="embed", parallel=False,
         causal=True, scale=None, tied=False):  # fmt: skip
    """An independent GPT from its weights: one head at a time, F.layer_norm, F.gelu;
    the keyword arguments reproduce one classic mistake each."""
    n, eps = tokens.shape[1], cfg.layer_norm_eps
    ln = lambda h, name: F.layer_norm(h, h.shape[-1:], p[name + ".w"], p[name + ".b"], eps)  # noqa: E731
    mask = torch.tril(torch.ones(n, n)).bool()

    def attn(h, pre):
        out = p[pre + "b_O"].expand_as(h).clone()
        for head in range(cfg.n_heads):
            q, k, v = (h @ p[pre + f"W_{m}"][head] + p[pre + f"b_{m}"][head] for m in "QKV")
            scores = q @ k.transpose(-1, -2) / (scale or cfg.d_head**0.5)
            if causal:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = out + scores.softmax(-1) @ v @ p[pre + "W_O"][head]
        return out

    def mlp(h, pre):
        return F.gelu(h @ p[pre + "W_in"] + p[pre + "b_in"]) @ p[pre + "W_out"] + p[pre + "b_out"]

    w_pos = p["pos_embed.W_pos"]
    x = p["embed.W_E"][tokens]
    if pos in ("embed", "by_token"):
        x = x + (w_pos[:n] if pos == "embed" else w_pos[tokens])
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        if post_ln:
            x = ln(x + attn(x, b + "attn."), b + "ln1")
            x = ln(x + mlp(x, b + "mlp."), b + "ln2")
        elif parallel:
            x = x + attn(ln(x, b + "ln1"), b + "attn.") + mlp(ln(x, b + "ln2"), b + "mlp.")
        else:
            x = x + attn(ln(x, b + "ln1"), b + "attn.")
            x = x + mlp(ln(x, b + "ln2"), b + "mlp.")
    if pos == "end":
        x = x + p["pos_embed.W_pos"][:n]
    if final_ln:
        x = ln(x, "ln_final")
    return x @ (p["embed.W_E"].T if tied else p["unembed.W_U"]) + p["unembed.b_U"]


def test_gpt_forward_accepts_an_independent_gpt_and_the_package_model():
    l08.check_gpt_forward(_gpt)

    def through_the_package(tokens, params, cfg):
        model = GPT(cfg).double()
        model.load_state_dict(params)
        return model(tokens)

    l08.check_gpt_forward(through_the_package)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_ln": False}, "final LayerNorm is missing"),
        ({"post_ln": True}, "post-LN"),
        ({"parallel": True}, "AFTER attention has written"),
        ({"pos": "none"}, "never added"),
        ({"pos": "end"}, "added at the end"),
        ({"pos": "by_token"}, "POSITIONS"),
        ({"causal": False}, "causal mask is missing"),
        ({"scale": 1.0}, "not divided by sqrt"),
        ({"tied": True}, "tied"),
    ],
)
def test_gpt_forward_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        l08.check_gpt_forward(lambda t, p, c: _gpt(t, p, c, **kwargs))


def test_gpt_forward_names_a_leak_from_the_future():
    def leaky(t, p, c):  # causal, but the last token leaks into every position
        out = _gpt(t, p, c)
        return out + 1e-3 * p["embed.W_E"][t[:, -1:]].sum(-1, keepdim=True)

    with pytest.raises(CheckError, match="future into the past"):
        l08.check_gpt_forward(leaky)


# ------------------------------------------------------------------- hooks
def _in_place(z, hook, head, mean_z):
    z[:, :, head] = mean_z[:, :, head]  # edit in place, return nothing (TransformerLens allows)


def _returned(z, hook, head, mean_z):
    keep = torch.arange(z.shape[2]) != head  # [head]: True for the heads that stay
    return torch.where(keep[:, None], z, mean_z)


def test_mean_ablate_head_accepts_in_place_and_returned_edits():
    l08.check_mean_ablate_head(_in_place)
    l08.check_mean_ablate_head(_returned)


def _with(edit):
    def hook(z, hook, head, mean_z):
        z = z.clone()
        edit(z, head, mean_z)
        return z

    return hook


def _replaced_by(value):
    """The head is replaced, but by ``value(z, mean_z)`` instead of ``mean_z``."""
    return lambda z, hook, head, mean_z: _returned(z, hook, head, value(z, mean_z))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda z, hook, head, mean_z: z, "changed nothing"),
        (lambda z, hook, head, mean_z: None, "changed nothing"),
        (_with(lambda z, h, m: z[:, h].copy_(m[:, h].expand_as(z[:, h]))), "POSITION"),
        (_with(lambda z, h, m: z[..., h].copy_(m[..., h].expand_as(z[..., h]))), "d_head"),
        (lambda z, hook, head, mean_z: mean_z.expand_as(z), "every head"),
        (_replaced_by(lambda z, mean_z: z.mean(0, keepdim=True)), "THIS batch"),
        (_replaced_by(lambda z, mean_z: mean_z.mean(1, keepdim=True)), "positions too"),
        (_replaced_by(lambda z, mean_z: 0 * mean_z), "set to zero"),
        (_with(lambda z, h, m: m.mul_(2)), "modified mean_z"),
    ],
)  # fmt: skip
def test_mean_ablate_head_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l08.check_mean_ablate_head(wrong)


# ------------------------------------------------------------------- beam search
def _beam_loop(model, tokens, n_new, width):
    """Independent: lists of (score, sequence), every extension of every beam sorted."""
    beams = [(0.0, tokens.tolist())]
    for _ in range(n_new):
        pool = []
        for score, seq in beams:
            log_p = model(torch.tensor([seq]))[0, -1].double().log_softmax(-1)
            pool += [(score + float(lp), seq + [v]) for v, lp in enumerate(log_p)]
        beams = sorted(pool, key=lambda c: -c[0])[:width]
    return torch.tensor(beams[0][1]), beams[0][0]


def test_beam_search_accepts_reference_and_a_loop():
    l08.check_beam_search(beam_search)
    l08.check_beam_search(_beam_loop)


def _beam_wrong(*, step_scores=None, accumulate=True, own_best=False, pos=-1, pick=0,
                width_one=False, as_prob=False):  # fmt: skip
    def search(model, tokens, n_new, width):
        width = 1 if width_one else width
        beams = [(0.0, tokens.tolist())]
        for step in range(n_new):
            pool = []
            for score, seq in beams:
                logits = model(torch.tensor([seq]))[0, pos].double()
                s = (step_scores or (lambda z: z.log_softmax(-1)))(logits)
                choices = [int(s.argmax())] if own_best and step > 0 else range(len(s))
                pool += [((score if accumulate else 0.0) + float(s[v]), score + float(s[v]),
                          seq + [v]) for v in choices]  # fmt: skip
            pool.sort(key=lambda c: -c[0])
            beams = [(total, seq) for _, total, seq in pool[:width]]
        score, seq = beams[pick]
        return torch.tensor(seq), math.exp(score) if as_prob else score

    return search


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_beam_wrong(width_one=True), "greedy decoding"),
        (_beam_wrong(own_best=True), "its own best token"),
        (_beam_wrong(accumulate=False), "newest token's log-probability alone"),
        (_beam_wrong(step_scores=lambda z: z), "raw logits"),
        (_beam_wrong(step_scores=lambda z: z.softmax(-1)), "added probabilities"),
        (_beam_wrong(pos=0), "FIRST position"),
        (_beam_wrong(pick=-1), "worst"),
        (_beam_wrong(as_prob=True), "LOG-probability"),
        (lambda m, t, n, w: beam_search(m, t, n, w)[0], "pair"),
        (lambda m, t, n, w: (beam_search(m, t, n, w)[0][len(t) :], 0.0), "prompt followed"),
    ],
)
def test_beam_search_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l08.check_beam_search(wrong)


# ------------------------------------------------------------------- stubs
def _stub(name):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"{STUB_PREFIX} write `{name}` here.")

    return stub


@pytest.mark.parametrize(
    "check",
    [
        l08.check_layer_norm,
        l08.check_pre_ln_block,
        l08.check_gpt_forward,
        l08.check_next_token_loss,
        l08.check_mean_ablate_head,
        l08.check_top_p_filter,
        l08.check_beam_search,
    ],
    ids=lambda c: c.__name__,
)
def test_every_check_refuses_a_stub(check):
    with pytest.raises(NotAttempted, match="not attempted yet"):
        check(_stub("answer"))
