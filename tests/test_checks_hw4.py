"""Homework 4 checks: the reference passes, known-wrong implementations are rejected."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import CheckError, hw4
from decoding_gpt.heads import previous_token_score
from decoding_gpt.hooks import hook_name
from decoding_gpt.patching import activation_patching


# ------------------------------------------------------------------ repeated tokens
def _repeated(batch, seq_len, d_vocab, bos, generator):
    r = torch.randint(0, d_vocab, (batch, seq_len), generator=generator)
    return torch.cat([torch.full((batch, 1), bos), r, r], dim=1)


def test_repeated_tokens_accepts_reference():
    hw4.check_repeated_tokens(_repeated)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda b, t, v, bos, g: _repeated(b, t, v, bos, g)[:, 1:], "BOS token is missing"),
        (lambda b, t, v, bos, g: _repeated(b, t, v, 0, g), "position 0"),
        (
            lambda b, t, v, bos, g: torch.cat(
                [
                    torch.full((b, 1), bos),
                    torch.randint(0, v, (b, t), generator=g),
                    torch.randint(0, v, (b, t), generator=g),
                ],
                dim=1,
            ),
            "not a copy",
        ),
        (
            lambda b, t, v, bos, g: torch.cat(
                [
                    torch.full((b, 1), bos),
                    torch.randint(0, v, (b, t), generator=g).repeat_interleave(2, 1),
                ],
                dim=1,
            ),
            "repeat_interleave",
        ),
        (lambda b, t, v, bos, g: _repeated(b, t, v, bos, None), "same generator seed"),
        (lambda b, t, v, bos, g: _repeated(b, t, v + 5, bos, g), r"\[0, d_vocab\)|differ"),
        (lambda b, t, v, bos, g: _repeated(b, t, v, bos, g).float(), "integers"),
    ],
)
def test_repeated_tokens_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw4.check_repeated_tokens(wrong)


# ------------------------------------------------------------------ induction score
def _induction(pattern, seq_len):
    diagonal = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # key k, query k+T-1
    return diagonal[..., 2:].mean((0, -1))  # queries T+1 .. 2T


def _induction_loop(pattern, seq_len):
    total = torch.zeros(pattern.shape[1], dtype=pattern.dtype)
    for q in range(seq_len + 1, 2 * seq_len + 1):
        total += pattern[:, :, q, q - seq_len + 1].mean(0)
    return total / seq_len


@pytest.mark.parametrize("fn", [_induction, _induction_loop])
def test_induction_score_accepts_reference(fn):
    hw4.check_induction_score(fn)


def _diag(offset, start, stop=None):
    def fn(pattern, seq_len):
        d = pattern.diagonal(offset(seq_len), dim1=-2, dim2=-1)
        return d[..., start:stop].mean((0, -1))

    return fn


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_diag(lambda t: -t, 1), "offset seq_len\\)"),
        (_diag(lambda t: -(t + 1), 0), "BEFORE the earlier copy"),
        (_diag(lambda t: -(t - 1), 0), "outside the second copy"),
        (_diag(lambda t: -(t - 1), 1), "FIRST copy"),
        (lambda p, t: _diag(lambda s: -(s - 1), 1, t + 1)(p, t), "no BOS"),
        (_diag(lambda t: -(t - 1), 3), "left out the first query"),
        (_diag(lambda t: t - 1, 0), "upper triangle"),
        (lambda p, t: p.diagonal(-(t - 1), -2, -1)[..., 2:].sum(-1).mean(0), "summed"),
        (lambda p, t: _induction(p, t).mean(), "single number"),
        (lambda p, t: p.diagonal(-(t - 1), -2, -1)[..., 2:].mean(-1), "average over the batch"),
        (lambda p, t: _induction(p, t) * 0.9, "wrong values"),
    ],
)
def test_induction_score_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw4.check_induction_score(wrong)


# ------------------------------------------------------------------ previous-token score
def _previous(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, -1))


@pytest.mark.parametrize("fn", [_previous, previous_token_score])
def test_previous_token_score_accepts_reference(fn):
    hw4.check_previous_token_score(fn)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda p: p.diagonal(0, -2, -1).mean((0, -1)), "OWN position"),
        (lambda p: p.diagonal(-2, -2, -1).mean((0, -1)), "two tokens back"),
        (lambda p: p.diagonal(1, -2, -1).mean((0, -1)), "upper triangle"),
        (lambda p: p.diagonal(-1, -2, -1)[..., 1:].mean((0, -1)), "left out query 1"),
        (lambda p: F.pad(p.diagonal(-1, -2, -1), (1, 0)).mean((0, -1)), "query 0"),
        (lambda p: p.diagonal(-1, -2, -1).sum(-1).mean(0), "summed"),
        (lambda p: _previous(p).mean(), "single number"),
    ],
)
def test_previous_token_score_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw4.check_previous_token_score(wrong)


# ------------------------------------------------------------------ repeated-half loss
def _loss(logits, tokens, seq_len):
    per = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return per[:, seq_len + 1 :].mean()


def _loss_loop(logits, tokens, seq_len):
    log_probs = logits.log_softmax(-1)
    values = [
        -log_probs[b, p - 1, tokens[b, p]]
        for b in range(tokens.shape[0])
        for p in range(seq_len + 2, 2 * seq_len + 1)
    ]
    return torch.stack(values).mean().item()


@pytest.mark.parametrize("fn", [_loss, _loss_loop])
def test_repeated_half_loss_accepts_reference(fn):
    hw4.check_repeated_half_loss(fn)


def _per(logits, tokens):
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            lambda lg, tk, t: F.cross_entropy(lg.transpose(1, 2), tk, reduction="none")[
                :, t + 2 :
            ].mean(),
            "not shifted",
        ),
        (lambda lg, tk, t: _per(lg, tk)[:, t:].mean(), "first token of the second copy"),
        (lambda lg, tk, t: _per(lg, tk).mean(), "whole sequence"),
        (lambda lg, tk, t: _per(lg, tk)[:, 1:t].mean(), "FIRST copy"),
        (lambda lg, tk, t: _per(lg, tk)[:, t + 1 :].sum(), "summed the losses"),
        (lambda lg, tk, t: _per(lg, tk)[:, t + 1 :].sum(-1).mean(), "summed over positions"),
        (lambda lg, tk, t: _per(lg, tk)[:, t + 1 :].mean(-1), "shape"),
    ],
)
def test_repeated_half_loss_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw4.check_repeated_half_loss(wrong)


# ------------------------------------------------------------------ logit difference
def _logit_diff(logits, answers):
    last = logits[:, -1]
    rows = torch.arange(last.shape[0])
    return (last[rows, answers[:, 0]] - last[rows, answers[:, 1]]).mean()


def _logit_diff_gather(logits, answers):
    picked = logits[:, -1].log_softmax(-1).gather(-1, answers)  # log-probs: same difference
    return (picked[:, 0] - picked[:, 1]).mean()


@pytest.mark.parametrize("fn", [_logit_diff, _logit_diff_gather])
def test_logit_difference_accepts_reference(fn):
    hw4.check_logit_difference(fn)


def _at(position):
    def fn(logits, answers):
        return _logit_diff(logits[:, position : position + 1], answers)

    return fn


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda lg, a: -_logit_diff(lg, a), "sign is flipped"),
        (lambda lg, a: _logit_diff(lg, a.flip(-1)), "sign is flipped"),
        (_at(0), "position 0"),
        (_at(-2), "position -2"),
        (lambda lg, a: _logit_diff(lg.mean(1, keepdim=True), a), "all positions"),
        (lambda lg, a: _logit_diff(lg.softmax(-1), a), "PROBABILITIES"),
        (
            lambda lg, a: (
                lg[torch.arange(lg.shape[0]), -1, a[:, 0]] - lg[:, -1].gather(-1, a)[:, 1]
            ),
            "mean over prompts",
        ),
    ],
)
def test_logit_difference_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw4.check_logit_difference(wrong)


# ------------------------------------------------------------------ head patching
def _patching(
    model,
    clean,
    corrupt,
    metric,
    direction="denoising",
    last_only=False,
    whole_layer=False,
    normalise=True,
    keep_hook=False,
):
    """A per-head loop with switches for the known mistakes."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name("z", layer) for layer in range(L)]
    base, source = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    with torch.no_grad():
        clean_value, corrupt_value = metric(model(clean)), metric(model(corrupt))
        _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
        out = torch.empty(L, H)
        for layer in range(L):
            for head in range(H):

                def hook(z: Any, hook: Any, layer=layer, head=head) -> Any:
                    heads = slice(None) if whole_layer else head
                    pos = slice(-1, None) if last_only else slice(None)
                    z[:, pos, heads] = cache[names[layer]][:, pos, heads]
                    return z

                with model.hooks(fwd_hooks=[(names[layer], hook)]):
                    out[layer, head] = metric(model(base))
    if keep_hook:
        model.add_hook(names[0], lambda z, hook: z)
    if not normalise:
        return out
    return (out - corrupt_value) / (clean_value - corrupt_value)


def _package(model, clean, corrupt, metric):
    return hw4.reference_head_patching(model, clean, corrupt, metric)


@pytest.mark.parametrize("fn", [_patching, _package])
def test_head_patching_accepts_reference(fn):
    hw4.check_head_patching(fn)


def test_reference_loop_matches_the_package():
    model, clean, corrupt, metric = hw4.tiny_patching_setup(seed=1)
    raw = activation_patching(model, clean, corrupt, metric, kind="z", by_pos=False)
    torch.testing.assert_close(_patching(model, clean, corrupt, metric, normalise=False), raw)


def _unnormalised_by_gap(model, clean, corrupt, metric):
    with torch.no_grad():
        corrupt_value = metric(model(corrupt))
    return _patching(model, clean, corrupt, metric, normalise=False) - corrupt_value


def _from_clean(model, clean, corrupt, metric):
    with torch.no_grad():
        clean_value, corrupt_value = metric(model(clean)), metric(model(corrupt))
    raw = _patching(model, clean, corrupt, metric, normalise=False)
    return (raw - clean_value) / (clean_value - corrupt_value)


def _same_prompt(model, clean, corrupt, metric, prompt="clean"):
    """Base and source are the same prompt (a mix-up of the two caches or runs)."""
    tokens = clean if prompt == "clean" else corrupt
    raw = _patching(model, tokens, tokens, metric, normalise=False)
    with torch.no_grad():
        clean_value, corrupt_value = metric(model(clean)), metric(model(corrupt))
    return (raw - corrupt_value) / (clean_value - corrupt_value)


def _clean_into_clean(*args):
    return _same_prompt(*args, prompt="clean")


def _corrupt_into_corrupt(*args):
    return _same_prompt(*args, prompt="corrupt")


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda *a: _patching(*a, direction="noising"), "CORRUPTED activations into the CLEAN"),
        (lambda *a: _patching(*a, normalise=False), "not normalised"),
        (_unnormalised_by_gap, "did not divide"),
        (_from_clean, "clean baseline"),
        (lambda *a: -_patching(*a), "sign is flipped"),
        (lambda *a: _patching(*a, whole_layer=True), "whole hook_z"),
        (lambda *a: _patching(*a, last_only=True), "only the last position"),
        (lambda *a: _patching(*a).T, "shape"),
        (lambda *a: _patching(*a, keep_hook=True), "still attached"),
        (_clean_into_clean, "CLEAN prompt"),
        (_corrupt_into_corrupt, "CLEAN run"),
    ],
)
def test_head_patching_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw4.check_head_patching(wrong)
