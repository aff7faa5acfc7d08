"""Exercise checks of lecture 15: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (an uncentred variance, FVU for
explained variance, per-dimension averages; a hook that does not return the
reconstruction, an inverted or mean-ablated CE score; precision, recall or accuracy for
F1; unnormalised or absolute cosines); the test pins the part of the message that names
the mistake. A stub of the student edition is refused as not attempted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture15 as l15
from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.stories import generate_stories
from decoding_gpt.pretrained import load_native
from decoding_gpt.sae import SAE, SAEConfig
from decoding_gpt.sae.ground_truth import packed_story_tokens

HOOK = "blocks.1.hook_resid_post"


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


@pytest.fixture(scope="module")
def lm():
    model = load_native("stories-4l", device="cpu")
    tokens = packed_story_tokens(
        generate_stories(8, seed=3, split="val"), get_tokenizer("stories"), model.cfg.n_ctx
    )
    torch.manual_seed(0)
    sae = SAE(SAEConfig(model.cfg.d_model, 64, "topk", k=8, hook_name=HOOK))
    with torch.no_grad():  # a crude SAE: its decoder spans the data's top directions
        sae.b_dec.data = torch.zeros(model.cfg.d_model)
    return model, sae, tokens


def test_stubs_are_not_attempted(lm):
    for check in (l15.check_explained_variance, l15.check_latent_f1, l15.check_match_decoder_rows):
        with pytest.raises(NotAttempted, match="not attempted"):
            check(_stub)
    with pytest.raises(NotAttempted, match="not attempted"):
        l15.check_ce_loss_recovered(_stub, *lm)


# ---------------------------------------------------------------------- explained variance
def _ev(x, x_hat):
    return (1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def test_explained_variance_accepts_the_reference():
    l15.check_explained_variance(_ev)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x, xh: (1 - (x - xh).pow(2).sum() / x.pow(2).sum()).item(), "MEAN activation"),
        (lambda x, xh: 1 - _ev(x, xh), "UNexplained"),
        (
            lambda x, xh: (1 - (x - xh).pow(2).sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean(),
            "DIMENSION",
        ),
        (
            lambda x, xh: (
                1 - ((x - xh) - (x - xh).mean(0)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            ),
            "centred",
        ),
    ],
)
def test_explained_variance_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l15.check_explained_variance(wrong)


# ---------------------------------------------------------------------- CE loss recovered
def _losses(model, tokens, hook, replace):
    return model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook, lambda a, hook: replace(a))]
    ).item()


def _ce(model, tokens, sae, hook, *, zero=torch.zeros_like, invert=False):
    clean = model(tokens, return_type="loss").item()
    spliced = _losses(model, tokens, hook, sae)
    ablated = _losses(model, tokens, hook, zero)
    score = (ablated - spliced) / (ablated - clean)
    return 1 - score if invert else score


@torch.no_grad()
def test_ce_loss_recovered_accepts_the_reference(lm):
    l15.check_ce_loss_recovered(lambda *a: _ce(*a), *lm)


@torch.no_grad()
def test_ce_loss_recovered_rejects_a_hook_that_returns_nothing(lm):
    def not_spliced(model, tokens, sae, hook):
        return _ce(model, tokens, lambda a: a, hook)  # the hook leaves the activation alone

    with pytest.raises(CheckError, match="RETURNING"):
        l15.check_ce_loss_recovered(not_spliced, *lm)


@torch.no_grad()
def test_ce_loss_recovered_rejects_inverted_and_mean_ablation(lm):
    with pytest.raises(CheckError, match="inverted"):
        l15.check_ce_loss_recovered(lambda *a: _ce(*a, invert=True), *lm)

    def mean(a):
        return a.mean((0, 1), keepdim=True).expand_as(a)

    with pytest.raises(CheckError, match="MEAN"):
        l15.check_ce_loss_recovered(lambda *a: _ce(*a, zero=mean), *lm)


@torch.no_grad()
def test_ce_loss_recovered_rejects_a_ratio_of_losses(lm):
    def ratio(model, tokens, sae, hook):
        return model(tokens, return_type="loss").item() / _losses(model, tokens, hook, sae)

    with pytest.raises(CheckError, match="ratio of losses"):
        l15.check_ce_loss_recovered(ratio, *lm)


# ---------------------------------------------------------------------- F1
def _f1(acts, label):
    fires = acts > 0
    tp = (fires & label).sum().item()
    return 2 * tp / (fires.sum().item() + label.sum().item())


def test_latent_f1_accepts_the_reference():
    l15.check_latent_f1(_f1)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda a, y: ((a > 0) & y).sum().item() / (a > 0).sum().item(), "PRECISION"),
        (lambda a, y: ((a > 0) & y).sum().item() / y.sum().item(), "RECALL"),
        (lambda a, y: ((a > 0) == y).float().mean().item(), "accuracy"),
        (lambda a, y: 2 * (y.sum().item()) / (len(a) + y.sum().item()), "acts > 0"),
        (
            lambda a, y: (
                (
                    ((a > 0) & y).sum().item() / (a > 0).sum().item()
                    + ((a > 0) & y).sum().item() / y.sum().item()
                )
                / 2
            ),
            "HARMONIC",
        ),
    ],
)
def test_latent_f1_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l15.check_latent_f1(wrong)


# ---------------------------------------------------------------------- decoder rows
def _match(w_a, w_b):
    return (F.normalize(w_b, dim=-1) @ F.normalize(w_a, dim=-1).T).max(-1)


def test_match_decoder_rows_accepts_the_reference():
    l15.check_match_decoder_rows(lambda a, b: tuple(_match(a, b)))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda a, b: tuple((b @ a.T).max(-1)), "not normalised"),
        (lambda a, b: tuple((F.normalize(b, dim=-1) @ a.T).max(-1)), "W_a too"),
        (
            lambda a, b: tuple((F.normalize(b, dim=-1) @ F.normalize(a, dim=-1).T).abs().max(-1)),
            "OPPOSITE",
        ),
        (
            lambda a, b: tuple((F.normalize(b, dim=-1) @ F.normalize(a, dim=-1).T).max(0)),
            "one entry per row of W_a",
        ),
    ],
)
def test_match_decoder_rows_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l15.check_match_decoder_rows(wrong)
