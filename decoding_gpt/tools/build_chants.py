"""The ``chants-2l`` run: the induction-head phase change, measured across its snapshots.

``chants-2l`` trains like every language model (:mod:`decoding_gpt.tools.train` on its
config, on :mod:`decoding_gpt.data.chants`), keeping its weights at the steps of the
config's ``[snapshots]`` table. This module holds what differs: the evaluation (induction
on repeated random tokens drawn from the tokens the training text contains, the
previous-token head, the in-context learning score) and the phase change read off the
shipped snapshots (:func:`decoding_gpt.incontext.phase_change_curves`), which of the run's
snapshots ship (:func:`ship_snapshots`), and the card's table of the curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from decoding_gpt.checkpoint import SNAPSHOTS_FILE, load_snapshots, read_snapshots, save_snapshots
from decoding_gpt.data import eos_id, get_tokenizer, load_token_array
from decoding_gpt.data.chants import CHANT_IN_PLACE_OF_ACTION, CHANT_LENGTH, CHANT_NUMBERS
from decoding_gpt.heads import induction_score_on_repeated_tokens
from decoding_gpt.incontext import PhaseCurves, phase_change_curves, transition_window
from decoding_gpt.transformer import GPT

CORPUS: Final = "chant-stories"
VOCAB_SAMPLE = 500_000  # "the tokens the training text contains": those in its start
N_TEXT_WINDOWS = 32  # held-out windows of n_ctx tokens: loss, ICL and previous-token scores
# Olsson et al. compare the 500th and 50th tokens of 512; scaled to n_ctx = 256, with ten
# neighbours averaged: tokens 240-249 against 20-29.
ICL_LATE, ICL_EARLY = 240, 20
REPEAT_LEN = 50  # [EOS, r_1..r_50, r_1..r_50]: the length every shipped model is tested at
N_SHIPPED = 20  # snapshots that ship: 10 across the run, 10 around the induction window
# The phase change is read off the middle half of each curve's change (25 % to 75 %),
# after the first fifth of the run: there the loss falls fast as the model learns the
# grammar, and the ICL score falls with it (names and songs recur in every story, and a
# one-layer model can already use that), before any induction head.
WINDOW = (0.25, 0.75)
SETTLING = 0.2


def training_token_ids() -> Int[Tensor, " n"]:
    """The ids that occur in the first :data:`VOCAB_SAMPLE` training tokens. Random tokens
    are drawn from these: a token the text never contains has an embedding that no
    training step moved, and no text-trained model copies it."""
    start = load_token_array(CORPUS, "train", n_tokens=VOCAB_SAMPLE)  # the first stories
    return torch.from_numpy(np.unique(start).astype(np.int64))


def text_windows(n_ctx: int) -> Int[Tensor, "window pos"]:
    """The first :data:`N_TEXT_WINDOWS` windows of ``n_ctx`` tokens of the val split."""
    val = load_token_array(CORPUS, "val", n_tokens=N_TEXT_WINDOWS * n_ctx)
    return torch.from_numpy(val.astype(np.int64)).view(N_TEXT_WINDOWS, n_ctx)


def repeat_test(token_ids: Tensor | None) -> dict[str, Any]:
    """The keyword arguments of the repeated-random-tokens test (16 rows, seed 0)."""
    prefix = eos_id(get_tokenizer("stories"))
    return dict(seq_len=REPEAT_LEN, batch=16, seed=0, prefix=prefix, token_ids=token_ids)


def curves_of(steps: list[int], models: list[GPT]) -> PhaseCurves:
    text = text_windows(int(models[0].cfg.n_ctx))
    repeat = repeat_test(training_token_ids())
    return phase_change_curves(steps, models, text, ICL_LATE, ICL_EARLY, repeat)


def phase_change(curves: PhaseCurves) -> dict[str, float]:
    """When the ICL and induction scores make the middle half of their change after the
    first fifth of the run (:data:`WINDOW`, :data:`SETTLING`), as fractions of the run, and
    the gap between the two windows (0: they overlap or touch)."""
    run = curves.steps[-1]
    icl = settled_window(curves.steps, curves.icl_score)
    ind = settled_window(curves.steps, curves.induction_score)
    gap = max(0, max(icl[0], ind[0]) - min(icl[1], ind[1]))  # 0: they overlap or touch
    return {
        "icl_window_start": icl[0],
        "icl_window_end": icl[1],
        "icl_window_fraction": round((icl[1] - icl[0]) / run, 4),
        "induction_window_start": ind[0],
        "induction_window_end": ind[1],
        "induction_window_fraction": round((ind[1] - ind[0]) / run, 4),
        "windows_gap_fraction": round(gap / run, 4),
    }


def settled_window(steps: list[int], values: list[float]) -> tuple[int, int]:
    """:func:`transition_window` (at :data:`WINDOW`) of the curve from the first snapshot
    at or after :data:`SETTLING` of the run."""
    first = next(i for i, s in enumerate(steps) if s >= SETTLING * steps[-1])
    return transition_window(steps[first:], values[first:], *WINDOW)


def evaluate(model: GPT, checkpoint: Path) -> dict[str, float | str]:
    """Induction (random training tokens, and for reference any tokens), the
    previous-token head, the final ICL score, and the phase change across the snapshots
    in ``checkpoint``."""
    used = training_token_ids()
    result = induction_score_on_repeated_tokens(model, **repeat_test(used))
    anything = induction_score_on_repeated_tokens(model, **repeat_test(None))
    scores = result.scores  # [layer, head]
    best = int(scores.flatten().argmax())
    steps, models = load_snapshots(checkpoint)
    curves = curves_of(steps, models)
    return {
        "max_induction_score": round(float(scores.max()), 4),
        "best_induction_head": f"{best // scores.shape[1]}.{best % scores.shape[1]}",
        "induction_heads_above_half": float((scores > 0.5).sum()),
        "loss_first_half": round(result.loss_first_half, 4),
        "loss_repeated_half": round(result.loss_repeated_half, 4),
        "max_induction_score_any_tokens": round(float(anything.scores.max()), 4),
        "previous_token_score_layer0": round(curves.previous_token_score[-1], 4),
        "icl_score": round(curves.icl_score[-1], 4),
        "icl_score_first_snapshot": round(curves.icl_score[0], 4),
        "n_snapshots": float(len(steps)),
        **phase_change(curves),
    }


def choose_snapshots(curves: PhaseCurves, n: int = N_SHIPPED) -> list[int]:
    """``n`` of the run's snapshot steps: the first and the last, half around the
    induction score's window (:func:`settled_window`, widened on each side by half its
    length or a tenth of the run, whichever is more), the rest spread over the rest of
    the run."""
    start, end = settled_window(curves.steps, curves.induction_score)
    # a jump between two snapshots gives start == end: still show its approach and wake
    margin = max((end - start) // 2, curves.steps[-1] // 10)
    ends = {curves.steps[0], curves.steps[-1]}
    inside = [s for s in curves.steps if start - margin <= s <= end + margin and s not in ends]
    outside = [s for s in curves.steps if s not in inside and s not in ends]
    chosen = ends | set(_spread(inside, n // 2))
    chosen |= set(_spread(outside, n - len(chosen)))
    return sorted(chosen)


def _spread(items: list[int], k: int) -> list[int]:
    """``k`` items spread evenly by index (all of them if there are no more than ``k``)."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else []


def ship_snapshots(checkpoint: Path, target: Path) -> None:
    """Write the chosen snapshots of the run in ``checkpoint`` to ``target``."""
    steps, models = load_snapshots(checkpoint)
    keep = choose_snapshots(curves_of(steps, models))
    taken = read_snapshots(checkpoint / SNAPSHOTS_FILE)
    save_snapshots(target / SNAPSHOTS_FILE, {step: taken[step] for step in keep})


def card_section(metrics: dict[str, Any]) -> list[str]:
    """The data, the phase change and the requirements missed, in words, for the card."""
    missed = []
    if metrics["max_induction_score"] <= 0.5:
        missed.append(f"max induction score {metrics['max_induction_score']:.3f} (asked: > 0.5)")
    if metrics["previous_token_score_layer0"] <= 0.5:
        missed.append(
            f"previous-token score {metrics['previous_token_score_layer0']:.3f} in layer 0 "
            "(asked: > 0.5)"
        )
    if metrics["loss_repeated_half"] >= 1.0:
        missed.append(
            f"loss on the repeated half {metrics['loss_repeated_half']:.2f} nats (asked: < 1.0)"
        )
    return [
        "## Data", "",
        f"`{CORPUS}` (`decoding_gpt.data.chants`): the stories grammar with invented names "
        "and songs; after the opening a child makes up a chant of "
        f"{CHANT_LENGTH[0]}-{CHANT_LENGTH[1]} random words of the stories' own words "
        f"(capitalised words, and years for {CHANT_NUMBERS:.0%} of them), "
        f"chanted again in place of {CHANT_IN_PLACE_OF_ACTION:.0%} of the action events "
        "and before the ending, often from a middle word. Every recitation is framed alike, "
        "the first too, so only the earlier copy tells that a chant is a repeat. "
        "Every token is a training target: "
        "no copy-task stage, no loss mask, no planted spans.", "",
        *(["## Not met", "", *[f"- {m}" for m in missed], ""] if missed else []),
        "## The phase change", "",
        f"Across the {metrics['n_snapshots']:.0f} shipped snapshots, the in-context learning "
        f"score (loss at tokens {ICL_LATE}-{ICL_LATE + 9} minus tokens "
        f"{ICL_EARLY}-{ICL_EARLY + 9} of held-out text) makes the middle half of its change "
        "after the first fifth of the run "
        f"between steps {metrics['icl_window_start']} and {metrics['icl_window_end']}, the "
        f"best induction score {_steps_phrase(metrics)} (gap between the windows: "
        f"{metrics['windows_gap_fraction']:.0%} of the run).", "",
    ]  # fmt: skip


def _steps_phrase(metrics: dict[str, Any]) -> str:
    start, end = metrics["induction_window_start"], metrics["induction_window_end"]
    if start == end:  # both quartiles crossed between two consecutive snapshots
        return f"within one interval between snapshots, ending at step {start}"
    return f"between steps {start} and {end}"
