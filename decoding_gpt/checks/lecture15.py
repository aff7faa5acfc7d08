r"""Checks for the exercises of lecture 15 (sparse autoencoders).

Each ``check_*`` runs the student's function on seeded inputs and compares it with the
package's reference in :mod:`decoding_gpt.sae.metrics` (itself tested against SAELens's
formulas and scikit-learn); where the answer matches a classic mistake, the message
names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_scalar,
)
from decoding_gpt.sae.metrics import ce_loss_score, explained_variance, f1_matrix
from decoding_gpt.sae.model import SAE

__all__ = [
    "check_ce_loss_recovered",
    "check_explained_variance",
    "check_latent_f1",
    "check_match_decoder_rows",
]


# ----------------------------------------------------------------------------- exercise 1
def _ev(x: Tensor, x_hat: Tensor, centre: bool = True) -> float:
    total = (x - x.mean(0)) if centre else x
    return float(1 - (x - x_hat).pow(2).sum() / total.pow(2).sum())


EV_MISTAKES = [
    Mistake(
        "uncentred",
        lambda x, x_hat: _ev(x, x_hat, centre=False),
        "the denominator is sum ||x||^2: the variance is measured around the MEAN activation, "
        "sum ||x - mean(x)||^2 (else a reconstruction that only gets the mean right already "
        "explains most of the 'variance').",
    ),
    Mistake(
        "fvu",
        lambda x, x_hat: 1 - _ev(x, x_hat),
        "this is the fraction of variance UNexplained (FVU); explained variance is 1 - FVU.",
    ),
    Mistake(
        "per_dimension",
        lambda x, x_hat: float(
            (1 - (x - x_hat).pow(2).sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean()
        ),
        "this averages one explained variance per DIMENSION; pool the squared errors over "
        "all dimensions first: 1 - sum_tokens,dims (x - x_hat)^2 / sum_tokens,dims "
        "(x - mean)^2 (a dimension of tiny variance must not weigh as much as a big one).",
    ),
    Mistake(
        "residual_variance",
        lambda x, x_hat: float(
            1 - ((x - x_hat) - (x - x_hat).mean(0)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        ),
        "the error x - x_hat is centred: a reconstruction off by a constant would score "
        "perfectly. Use the raw error sum ||x - x_hat||^2 in the numerator.",
    ),
]


@exercise
def check_explained_variance(fn: Callable[[Tensor, Tensor], float]) -> None:
    """``fn(x [n, d], x_hat [n, d]) -> float``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean||^2``,
    compared with :func:`decoding_gpt.sae.metrics.explained_variance` on reconstructions
    with noise, with an offset, and with dimensions of very different scales."""
    gen = torch.Generator().manual_seed(15)
    scales = torch.logspace(-1, 1, 12, dtype=torch.float64)
    for offset, noise in [(0.0, 0.3), (0.5, 0.1), (2.0, 0.5)]:
        x = torch.randn(200, 12, generator=gen, dtype=torch.float64) * scales + 3.0
        x_hat = x + noise * torch.randn(200, 12, generator=gen, dtype=torch.float64) + offset
        got = to_scalar(fn(x.clone(), x_hat.clone()), "explained_variance")
        judge(
            got,
            explained_variance(x, x_hat),
            EV_MISTAKES,
            (x, x_hat),
            what="explained variance",
            atol=1e-9,
            hint="1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, summed over tokens and dims.",
        )
    passed("check_explained_variance")


# ----------------------------------------------------------------------------- exercise 2
def _three_losses(
    model: Any, tokens: Tensor, hook: str, replace: Callable[[Tensor], Tensor]
) -> float:
    return model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook, lambda a, hook: replace(a))]
    ).item()


@exercise
@torch.no_grad()
def check_ce_loss_recovered(
    fn: Callable[[Any, Tensor, SAE, str], float], model: Any, sae: SAE, tokens: Tensor
) -> None:
    """``fn(model, tokens, sae, hook_name) -> float``: the CE loss recovered
    ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``, compared with
    :func:`decoding_gpt.sae.metrics.ce_loss_score` on the given model, SAE and tokens,
    and on a damaged copy of the SAE (its decoder scaled by 0.5, so the score is lower)."""
    hook = sae.cfg.hook_name
    damaged = SAE(sae.cfg)
    damaged.load_state_dict(sae.state_dict())
    damaged.W_dec.data *= 0.5
    for which, s in (("the SAE", sae), ("the SAE with its decoder halved", damaged)):
        got = to_scalar(fn(model, tokens, s, hook), "ce_loss_recovered")
        ref = ce_loss_score(model, tokens, s, hook)
        want = ref["ce_loss_score"]
        clean, spliced, zero = (
            ref["ce_loss_without_sae"],
            ref["ce_loss_with_sae"],
            ref["ce_loss_with_ablation"],
        )
        if math.isclose(got, want, abs_tol=1e-4):
            continue
        if math.isclose(got, 1.0, abs_tol=1e-6):
            raise CheckError(
                f"score 1.0 for {which} (expected {want:.4f}): the spliced run has the clean "
                "loss, so the activation was not replaced. A TransformerLens hook replaces "
                "the activation by RETURNING the new value: `return sae(activation)`."
            )
        mean_abl = _three_losses(
            model, tokens, hook, lambda a: a.mean((0, 1), keepdim=True).expand_as(a)
        )
        wrong = {
            "the score is inverted: (CE_sae - CE_clean) / (CE_zero - CE_clean) is the fraction "
            "LOST; recovered is (CE_zero - CE_sae) / (CE_zero - CE_clean)": 1 - want,
            "this is CE_clean / CE_sae, a ratio of losses: compare the SAE's loss with the two "
            "ends of the scale, zero ablation and the clean model": clean / spliced,
            "the ablation baseline replaces the activation by its MEAN; this metric (SAELens's "
            "ce_loss_score) uses zeros": (mean_abl - spliced) / (mean_abl - clean),
            "the denominator is CE_zero: divide by the gap CE_zero - CE_clean": (zero - spliced)
            / zero,
        }
        for message, value in wrong.items():
            if math.isclose(got, value, abs_tol=1e-4):
                raise CheckError(f"score {got:.4f} for {which}, expected {want:.4f}: {message}.")
        raise CheckError(
            f"score {got:.4f} for {which}, expected {want:.4f} (CE clean {clean:.4f}, with the "
            f"SAE {spliced:.4f}, zero-ablated {zero:.4f})."
        )
    passed("check_ce_loss_recovered")


# ----------------------------------------------------------------------------- exercise 3
def _counts(acts: Tensor, label: Tensor, fires: Tensor | None = None) -> tuple[float, float, float]:
    fires = acts > 0 if fires is None else fires
    tp = float((fires & label).sum())
    return tp, float(fires.sum()), float(label.sum())


F1_MISTAKES = [
    Mistake(
        "precision",
        lambda a, y: _counts(a, y)[0] / _counts(a, y)[1],
        "this is the PRECISION (true positives / tokens where it fires); F1 is the harmonic "
        "mean of precision and recall: 2 TP / (fired + positives).",
    ),
    Mistake(
        "recall",
        lambda a, y: _counts(a, y)[0] / _counts(a, y)[2],
        "this is the RECALL (true positives / positive tokens); F1 is the harmonic mean of "
        "precision and recall: 2 TP / (fired + positives).",
    ),
    Mistake(
        "accuracy",
        lambda a, y: float(((a > 0) == y).double().mean()),
        "this is the accuracy of 'fires' as a prediction, which is high for any latent that "
        "rarely fires when the label is rare; F1 ignores the true negatives.",
    ),
    Mistake(
        "nonnegative",
        lambda a, y: 2 * _counts(a, y, a >= 0)[0] / (_counts(a, y, a >= 0)[1] + float(y.sum())),
        "'fires' is acts > 0: a ReLU latent is >= 0 everywhere, so acts >= 0 predicts "
        "every token positive.",
    ),
    Mistake(
        "arithmetic_mean",
        lambda a, y: (
            (_counts(a, y)[0] / _counts(a, y)[1] + _counts(a, y)[0] / _counts(a, y)[2]) / 2
        ),
        "this is the arithmetic mean of precision and recall; F1 is their HARMONIC mean, "
        "2 P R / (P + R).",
    ),
]


@exercise
def check_latent_f1(fn: Callable[[Tensor, Tensor], float]) -> None:
    """``fn(acts [n], label [n] bool) -> float``: the F1 score of "the latent fires"
    (``acts > 0``) as a classifier of ``label``, compared with
    :func:`decoding_gpt.sae.metrics.f1_matrix`."""
    gen = torch.Generator().manual_seed(15)
    for n, p_label, p_fire in [(500, 0.1, 0.2), (400, 0.3, 0.1), (300, 0.5, 0.6)]:
        label = torch.rand(n, generator=gen) < p_label
        noise = torch.rand(n, generator=gen)
        acts = F.relu(torch.randn(n, generator=gen)) * ((noise < p_fire) | (label & (noise < 0.7)))
        got = to_scalar(fn(acts.clone(), label.clone()), "f1")
        want = float(f1_matrix(acts[:, None], label[:, None])[0, 0])
        judge(
            got,
            want,
            F1_MISTAKES,
            (acts, label),
            what="F1",
            atol=1e-9,
            hint="F1 = 2 TP / (tokens where it fires + positive tokens).",
        )
    passed("check_latent_f1")


# ----------------------------------------------------------------------------- exercise 4
def _rows(a: Tensor, b: Tensor) -> Tensor:
    return F.normalize(b, dim=-1) @ F.normalize(a, dim=-1).T  # [n_b, n_a]


@exercise
def check_match_decoder_rows(fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """``fn(W_a [n_a, d], W_b [n_b, d]) -> (cos [n_b], index [n_b])``: for every decoder row
    of ``W_b``, the largest cosine similarity with a row of ``W_a`` and that row's index.

    The rows have very different norms, and some are nearly anti-parallel to a row of
    ``W_a``, so unnormalised dot products and absolute cosines both give wrong answers.
    """
    gen = torch.Generator().manual_seed(15)
    n_a, n_b, d = 20, 50, 16
    w_a = torch.randn(n_a, d, generator=gen) * torch.logspace(-1, 1, n_a)[:, None]
    parent = torch.randint(0, n_a, (n_b,), generator=gen)
    sign = torch.where(torch.rand(n_b, generator=gen) < 0.2, -1.0, 1.0)
    w_b = sign[:, None] * F.normalize(w_a[parent], dim=-1) + 0.4 * torch.randn(
        n_b, d, generator=gen
    )
    w_b = w_b * torch.logspace(1, -1, n_b)[:, None]
    out = fn(w_a.clone(), w_b.clone())
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckError("return a tuple (cos, index), one entry per row of W_b each.")
    cos = _rows(w_a, w_b)
    want_cos, want_idx = cos.max(-1)
    got_cos, got_idx = out[0], out[1]
    if isinstance(got_cos, Tensor) and got_cos.shape == (n_a,):
        raise CheckError(
            f"cos has shape ({n_a},), one entry per row of W_a: return one per row of W_b "
            "(the larger dictionary), the best match among the rows of W_a."
        )
    dots = F.normalize(w_b, dim=-1) @ w_a.T
    wrong = {
        "the rows are not normalised: a cosine divides the dot product by both norms "
        "(F.normalize each row first)": (w_b @ w_a.T).max(-1),
        "only W_b's rows are normalised: a cosine divides by the norms of BOTH rows "
        "(F.normalize the rows of W_a too)": dots.max(-1),
        "this takes |cos|: a row pointing the OPPOSITE way (cosine -1) is a different "
        "feature, since latents are non-negative; take the largest signed cosine": cos.abs().max(
            -1
        ),
    }
    for message, (v, _) in wrong.items():  # the values tell the mistakes apart
        if (
            isinstance(got_cos, Tensor)
            and got_cos.shape == v.shape
            and torch.allclose(got_cos.detach().float(), v, atol=1e-5)
        ):
            raise CheckError(message + ".")
    for message, (_, i) in wrong.items():  # then the indices alone
        same = isinstance(got_idx, Tensor) and got_idx.shape == i.shape
        if same and torch.equal(got_idx.long(), i) and not torch.equal(i, want_idx):
            raise CheckError(message + ".")
    compare_tensors(got_cos, want_cos, "cos", atol=1e-5, hint="Largest cosine per row of W_b.")
    compare_tensors(got_idx, want_idx, "index", atol=0, hint="argmax over the rows of W_a.")
    passed("check_match_decoder_rows")
