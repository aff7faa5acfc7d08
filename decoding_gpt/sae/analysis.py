"""Reading one latent: where it fires most, and what adding its direction does.

A latent's "meaning" read off its top-activating examples is a hypothesis; test it by
intervening (steer with the decoder direction, watch the behaviour change) and, where
the true features are known, with ``metrics.ground_truth_score``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from decoding_gpt.activations import ActivationSet
from decoding_gpt.probes import add_direction
from decoding_gpt.sae.metrics import feature_acts_of
from decoding_gpt.sae.model import SAE


@dataclass
class TopExample:
    """One token where a latent fires: its activation, document and position."""

    value: float
    doc: int
    pos: int


@torch.no_grad()
def top_activating_examples(
    sae: SAE, activations: ActivationSet, latent: int, k: int = 10
) -> list[TopExample]:
    """The ``k`` tokens (document, position) where ``latent`` is most active."""
    if not 0 <= latent < sae.cfg.d_sae:
        raise ValueError(f"latent must be in [0, {sae.cfg.d_sae}), got {latent}")
    f = feature_acts_of(sae, activations.acts)[:, latent]
    top = f.topk(min(k, len(f)))
    return [
        TopExample(v, int(activations.doc[i]), int(activations.pos[i]))
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


@contextlib.contextmanager
def steer_with_latent(
    model: Any, sae: SAE, latent: int, alpha: float, hook_name: str | None = None
) -> Iterator[Any]:
    """Context manager adding ``alpha * W_dec[latent] / ||W_dec[latent]||`` at the SAE's
    hook in every forward pass (feature steering)."""
    hook_name = hook_name or sae.cfg.hook_name
    with add_direction(model, hook_name, sae.W_dec[latent].detach(), alpha) as m:
        yield m
