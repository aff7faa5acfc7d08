"""Which snapshots of the chants-2l run ship, and how the card words the phase change."""

from __future__ import annotations

from decoding_gpt.incontext import PhaseCurves
from decoding_gpt.tools.build_chants import N_SHIPPED, _steps_phrase, choose_snapshots


def _curves(steps: list[int], induction: list[float]) -> PhaseCurves:
    flat = [0.0] * len(steps)
    return PhaseCurves(steps, [], flat, flat, induction, flat, flat)


def test_a_jump_between_two_snapshots_still_ships_its_approach_and_wake():
    """The induction score jumps between steps 5500 and 5750 of a 10,000-step run with a
    snapshot every 250 steps: the window is one step wide, and the shipped snapshots must
    still cover the tenth of the run on each side of it, plus the first and last."""
    steps = list(range(0, 10_001, 250))
    induction = [0.05 if s <= 5500 else 0.45 for s in steps]
    chosen = choose_snapshots(_curves(steps, induction))
    assert len(chosen) == N_SHIPPED and chosen == sorted(set(chosen))
    assert chosen[0] == 0 and chosen[-1] == 10_000
    assert set(range(4750, 6751, 250)) <= set(chosen)  # the jump, a tenth of the run each side
    assert len([s for s in chosen if s < 4750]) >= 5  # and the run before it


def test_a_wide_window_is_widened_by_half_its_length():
    """A ramp from step 2,000 to 8,000: the middle half of the change is steps 3,500-6,500,
    and half its length (1,500) is more than a tenth of the run (1,000), so the shipped
    snapshots around it reach from step 2,000 to 8,000."""
    steps = list(range(0, 10_001, 100))
    induction = [min(1.0, max(0.0, (s - 2000) / 6000)) for s in steps]
    chosen = choose_snapshots(_curves(steps, induction))
    assert len(chosen) == N_SHIPPED
    assert {2000, 8000} <= set(chosen)  # the widened window's ends (a tenth: 2,500, 7,500)
    assert len([s for s in chosen if 2000 <= s <= 8000]) >= N_SHIPPED // 2


def test_the_card_words_a_one_interval_window():
    assert _steps_phrase({"induction_window_start": 5750, "induction_window_end": 5750}) == (
        "within one interval between snapshots, ending at step 5750"
    )
    phrase = _steps_phrase({"induction_window_start": 4800, "induction_window_end": 5200})
    assert phrase == "between steps 4800 and 5200"
