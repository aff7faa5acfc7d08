"""How good is an SAE? Reconstruction, sparsity, faithfulness to the model, and (where
the true features are known) how well latents match them. SAELens's metric names:

- ``l0``: mean number of non-zero latents per token.
- ``mse``: mean over tokens of ``||x - x_hat||^2`` (summed over dimensions, as
  SAELens's evals and training loss; divide by ``d_in`` for a per-element MSE).
- ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``.
- ``ce_loss_score``: splice the SAE into the model at its hook and compare the LM's
  cross-entropy with the clean model and with the hook zero-ablated:
  ``(CE_zero - CE_sae) / (CE_zero - CE_clean)`` (1 = as good as the clean model).
- dead latents (never fire on a sample) and dense latents (fire on > 10 % of tokens).

Ground truth (synthetic data, or any binary labels): per label, the best latent's AUROC
or F1 (:func:`ground_truth_score`); per true direction, the best cosine with a decoder
row (:func:`mean_max_cosine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from decoding_gpt.sae.model import SAE

# ------------------------------------------------------------------- reconstruction


def l0(feature_acts: Float[Tensor, "n d_sae"]) -> float:
    """Mean number of non-zero latents per token."""
    return (feature_acts != 0).sum(-1).float().mean().item()


def mse(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """SAELens's ``mse``: mean over tokens of ``||x - x_hat||^2`` (sum over dimensions)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    return (x - x_hat).pow(2).sum(-1).mean().item()


def explained_variance(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens (the fraction
    of the activations' total variance the reconstruction accounts for)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    x, x_hat = x.double(), x_hat.double()
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return (1 - resid / total).item()


@torch.no_grad()
def evaluate_sae(sae: SAE, x: Float[Tensor, "n d_in"]) -> dict[str, float]:
    """``l0``, ``mse`` and ``explained_variance`` of ``sae`` on ``x``."""
    f = sae.encode(x)
    x_hat = sae.decode(f)
    return {"l0": l0(f), "mse": mse(x, x_hat), "explained_variance": explained_variance(x, x_hat)}


# ------------------------------------------------------------------- faithfulness


def splice_hook(sae: SAE) -> Callable[..., Tensor]:
    """A forward hook replacing the activation by the SAE's reconstruction."""

    def hook(activation: Tensor, hook: Any = None) -> Tensor:
        shape = activation.shape
        out = sae(activation.reshape(*shape[:2], -1))
        return out.reshape(shape).to(activation.dtype)

    return hook


@torch.no_grad()
def ce_loss_score(
    model: Any, tokens: Int[Tensor, "batch pos"], sae: SAE, hook_name: str | None = None
) -> dict[str, float]:
    """CE loss recovered: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``.

    ``CE_clean``: the model as is; ``CE_sae``: the activation at ``hook_name`` replaced
    by ``sae(activation)``; ``CE_zero``: replaced by zeros. Returns SAELens's keys
    ``ce_loss_score``, ``ce_loss_without_sae``, ``ce_loss_with_sae``,
    ``ce_loss_with_ablation``.
    """
    hook_name = hook_name or sae.cfg.hook_name
    if not hook_name:
        raise ValueError("no hook name given and the SAE's cfg.hook_name is empty")
    clean = model(tokens, return_type="loss").item()
    spliced = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook_name, splice_hook(sae))]
    ).item()
    zero = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook_name, lambda a, hook: torch.zeros_like(a))]
    ).item()
    if abs(zero - clean) < 1e-8:
        raise ValueError("zero-ablating the hook does not change the loss; score undefined")
    return {
        "ce_loss_score": (zero - spliced) / (zero - clean),
        "ce_loss_without_sae": clean,
        "ce_loss_with_sae": spliced,
        "ce_loss_with_ablation": zero,
    }


# ------------------------------------------------------------------- firing statistics


@torch.no_grad()
def feature_acts_of(sae: SAE, x: Float[Tensor, "n d_in"], batch_size: int = 4096) -> Tensor:
    """``sae.encode`` in chunks (to bound memory)."""
    return torch.cat([sae.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def firing_frequency(feature_acts: Float[Tensor, "n d_sae"]) -> Float[Tensor, " d_sae"]:
    """Fraction of tokens on which each latent is non-zero."""
    return (feature_acts != 0).float().mean(0)


def dead_latents(freq: Float[Tensor, " d_sae"], threshold: float = 0.0) -> Bool[Tensor, " d_sae"]:
    """Latents firing on at most ``threshold`` of tokens (default: never)."""
    return freq <= threshold


def dense_latents(freq: Float[Tensor, " d_sae"], threshold: float = 0.1) -> Bool[Tensor, " d_sae"]:
    """Latents firing on more than ``threshold`` of tokens (default 10 %)."""
    return freq > threshold


# ------------------------------------------------------------------- ground truth


def mean_max_cosine(learned: Float[Tensor, "d_sae d"], true: Float[Tensor, "n_true d"]) -> float:
    """For each true feature the best cosine with any learned direction, averaged."""
    cos = F.normalize(true, dim=-1) @ F.normalize(learned, dim=-1).T
    return cos.max(-1).values.mean().item()


def _average_ranks(scores: Float[Tensor, "n m"]) -> Float[Tensor, "n m"]:
    """1-based ranks per column, tied values sharing their average rank."""
    cols = scores.T.contiguous()
    sorted_cols = cols.sort(-1).values
    low = torch.searchsorted(sorted_cols, cols, right=False)
    high = torch.searchsorted(sorted_cols, cols, right=True)
    return ((low + high + 1).double() / 2).T


def auroc_matrix(
    scores: Float[Tensor, "n m"], labels: Bool[Tensor, "n n_labels"]
) -> Float[Tensor, "m n_labels"]:
    """AUROC of every score column for every binary label (Mann-Whitney U with average
    ranks for ties): ``(sum of positives' ranks - P(P+1)/2) / (P N)``."""
    ranks = _average_ranks(scores)
    lab = labels.double()
    n_pos = lab.sum(0)
    n_neg = len(lab) - n_pos
    if bool(((n_pos == 0) | (n_neg == 0)).any()):
        raise ValueError("every label needs positive and negative examples for AUROC")
    return (ranks.T @ lab - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def f1_matrix(
    feature_acts: Float[Tensor, "n m"], labels: Bool[Tensor, "n n_labels"]
) -> Float[Tensor, "m n_labels"]:
    """F1 of "latent fires (> 0)" as a classifier of each label: ``2 TP / (fired + P)``."""
    fires = (feature_acts > 0).double()
    lab = labels.double()
    tp = fires.T @ lab
    precision_denom = fires.sum(0)[:, None]
    recall_denom = lab.sum(0)[None, :]
    return 2 * tp / (precision_denom + recall_denom).clamp_min(1)


@dataclass
class GroundTruthScore:
    """Per label: the best-matching latent and its score; ``mean`` over labels."""

    best_latent: Int[Tensor, " n_labels"]
    best_score: Float[Tensor, " n_labels"]
    mean: float


def ground_truth_score(
    feature_acts: Float[Tensor, "n d_sae"],
    labels: Bool[Tensor, "n n_labels"],
    metric: str = "auroc",
) -> GroundTruthScore:
    """How well latents match known binary labels: for each label the max over latents
    of AUROC (``metric="auroc"``) or F1 (``"f1"``), then the mean over labels."""
    if feature_acts.shape[0] != labels.shape[0]:
        raise ValueError("feature_acts and labels need the same number of rows")
    if metric == "auroc":
        table = auroc_matrix(feature_acts, labels.bool())
    elif metric == "f1":
        table = f1_matrix(feature_acts, labels.bool())
    else:
        raise ValueError(f"metric must be 'auroc' or 'f1', got {metric!r}")
    best = table.max(0)
    return GroundTruthScore(best.indices, best.values.float(), best.values.mean().item())
