"""In-context learning, measured from the loss, and when it appears during training.

Olsson et al. (2022) define a model's **in-context learning score** as the loss on a late
token of a context minus the loss on an early one (the 500th and the 50th of 512): how
much the model gains from having read more of the text. It goes negative when induction
heads form, and it does so abruptly, in the same short window of training in which the
induction heads appear and the training loss shows a bump: the induction-head phase
change. With snapshots of a run (:func:`decoding_gpt.checkpoint.load_snapshots`) both
curves can be drawn on one step axis; :func:`transition_window` says where each one makes
most of its change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from decoding_gpt.heads import induction_score_on_repeated_tokens, previous_token_score
from decoding_gpt.hooks import HookedModel, hook_name


def loss_by_position(
    model: HookedModel, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " pos_minus_1"]:
    """Mean next-token loss at each position: entry ``p`` is
    ``mean_b -log P(tokens[b, p + 1] | tokens[b, :p + 1])``, so it has ``pos - 1`` entries."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 2, got {tuple(tokens.shape)}")
    with torch.no_grad():
        return _position_losses(model(tokens), tokens)


def _position_losses(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " pos_minus_1"]:
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return losses.mean(0)


def in_context_learning_score(
    losses: Float[Tensor, " n"], late: int, early: int, width: int = 10
) -> float:
    """Olsson et al.'s score: mean loss at positions ``late .. late + width - 1`` minus
    the mean at ``early .. early + width - 1`` (averaging a few neighbours steadies the
    estimate). Negative: later tokens are predicted better, thanks to the context."""
    if not 0 <= early < late or late + width > losses.shape[0] or width < 1:
        raise ValueError(
            f"need 0 <= early < late and late + width <= {losses.shape[0]} "
            f"(got early={early}, late={late}, width={width})"
        )
    return float(losses[late : late + width].mean() - losses[early : early + width].mean())


def transition_window(
    steps: Sequence[int], values: Sequence[float], low: float = 0.1, high: float = 0.9
) -> tuple[int, int]:
    """The steps at which a training curve has first made ``low`` and ``high`` of its
    total change ``values[-1] - values[0]`` (default 10 % and 90 %).

    A phase change is a short window: ``(end - start) / steps[-1]`` is small. The curve
    is read as measured, not smoothed: a curve that overshoots still counts its first
    crossings.
    """
    if len(steps) != len(values) or len(steps) < 2:
        raise ValueError("steps and values must have the same length, at least 2")
    if not 0 < low < high < 1:
        raise ValueError(f"need 0 < low < high < 1, got low={low}, high={high}")
    total = values[-1] - values[0]
    if total == 0:
        raise ValueError("the curve ends where it starts: it has no transition")
    progress = [(v - values[0]) / total for v in values]
    start = next(s for s, p in zip(steps, progress, strict=True) if p >= low)
    end = next(s for s, p in zip(steps, progress, strict=True) if p >= high)
    return start, end


@dataclass
class PhaseCurves:
    """What :func:`phase_change_curves` measures on each snapshot, in step order."""

    steps: list[int]
    losses_by_position: list[Tensor]  # loss_by_position on the text windows
    loss: list[float]  # mean next-token loss on the text windows
    icl_score: list[float]  # in_context_learning_score on the same windows
    induction_score: list[float]  # best head's score on repeated random tokens
    previous_token_score: list[float]  # best layer-0 head's, on the text windows
    repeated_loss: list[float]  # loss on the second copy of the random tokens


def phase_change_curves(
    steps: Sequence[int],
    models: Sequence[HookedModel],
    text: Int[Tensor, "batch pos"],
    late: int,
    early: int,
    repeat: dict[str, Any],
) -> PhaseCurves:
    """Loss, in-context learning score, induction and previous-token scores of each
    snapshot: the curves on which the induction-head phase change shows.

    ``text`` are windows of held-out text (loss, ICL score, previous-token score);
    ``repeat`` the keyword arguments of
    :func:`~decoding_gpt.heads.induction_score_on_repeated_tokens` (``seq_len``, ``batch``,
    ``seed``, ``prefix``, ``token_ids``).
    """
    curves = PhaseCurves(list(steps), [], [], [], [], [], [])
    layer0 = hook_name("pattern", 0)
    for model in models:
        with torch.no_grad():  # one pass: the logits and layer 0's patterns
            logits, cache = model.run_with_cache(text, names_filter=layer0)
        losses = _position_losses(logits, text)
        curves.losses_by_position.append(losses)
        curves.loss.append(float(losses.mean()))
        curves.icl_score.append(in_context_learning_score(losses, late, early))
        pattern = cache[layer0]
        curves.previous_token_score.append(float(previous_token_score(pattern).max()))
        result = induction_score_on_repeated_tokens(model, **repeat)
        curves.induction_score.append(float(result.scores.max()))
        curves.repeated_loss.append(result.loss_repeated_half)
    return curves
