"""Random tokens with repeated spans (decoding_gpt.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoding_gpt.data.synthetic import plant_repeated_spans, random_tokens, repeated_random_tokens


def test_repeated_random_tokens_repeat_after_the_prefix():
    tokens = repeated_random_tokens(d_vocab=50, seq_len=7, batch=3, seed=2, prefix=0)
    assert tokens.shape == (3, 15) and (tokens[:, 0] == 0).all()
    assert torch.equal(tokens[:, 1:8], tokens[:, 8:])
    assert int(tokens.max()) < 50
    assert torch.equal(tokens, repeated_random_tokens(50, 7, 3, seed=2, prefix=0))
    assert not torch.equal(tokens, repeated_random_tokens(50, 7, 3, seed=3, prefix=0))
    assert repeated_random_tokens(50, 7, 3).shape == (3, 14)


def test_random_tokens_are_uniform_ids_in_a_compact_dtype():
    tokens = random_tokens(400, 10, 50, seed=0)
    assert tokens.shape == (400, 10) and tokens.dtype == np.uint16
    assert tokens.min() == 0 and tokens.max() == 49  # 4000 draws cover all 50 ids
    np.testing.assert_array_equal(tokens, random_tokens(400, 10, 50, seed=0))
    assert random_tokens(2, 3, 2**17, seed=0).dtype == np.int64


def test_planted_spans_vary_in_offset_and_length():
    stream = np.arange(64 * 200) % 1000  # corpus stand-in: no token repeats within a row
    rows, _ = plant_repeated_spans(stream, n_ctx=64, d_vocab=50_000, repeat_fraction=0.5, seed=0)
    assert rows.shape == (200, 64)
    starts, lengths = set(), set()
    n_planted = 0
    for row, original in zip(rows, stream.reshape(200, 64), strict=True):
        changed = np.flatnonzero(row != original)
        if changed.size == 0:
            continue
        n_planted += 1
        first, last = int(changed[0]), int(changed[-1])
        span = (last - first + 1) // 2
        assert 8 <= span <= 32
        np.testing.assert_array_equal(row[first : first + span], row[first + span : last + 1])
        starts.add(first)
        lengths.add(span)
    assert 60 < n_planted < 140  # about half, by a binomial(200, 0.5)
    assert len(starts) > 10 and len(lengths) > 10  # no fixed layout to shortcut
    again, _ = plant_repeated_spans(stream, 64, 50_000, repeat_fraction=0.5, seed=0)
    np.testing.assert_array_equal(rows, again)


def test_planted_span_mask_marks_the_copyable_tokens():
    stream = np.arange(64 * 50) % 1000
    rows, mask = plant_repeated_spans(
        stream, n_ctx=64, d_vocab=50_000, repeat_fraction=1.0, seed=3, min_span=4
    )
    for row, marked in zip(rows, mask, strict=True):
        positions = np.flatnonzero(marked)
        # each marked token equals the token one span back, and so does its predecessor:
        # copying from the first occurrence predicts it
        first = positions[0] - 1  # the second copy's first token: nothing predicts it
        span = len(positions) + 1
        assert 4 <= span <= 32
        np.testing.assert_array_equal(row[positions], row[positions - span])
        assert positions.tolist() == list(range(first + 1, first + span))
    again, _ = plant_repeated_spans(stream, 64, 50_000, 1.0, seed=3, min_span=4)
    np.testing.assert_array_equal(rows, again)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeat_fraction": 1.5}, "repeat_fraction"),
        ({"min_span": 40}, "min_span"),
        ({"n_ctx": 10_000}, "holds no row"),
    ],
)
def test_plant_repeated_spans_rejects_bad_settings(kwargs, message):
    settings = {"n_ctx": 64, "d_vocab": 50, "repeat_fraction": 0.5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        plant_repeated_spans(np.arange(640) % 50, **settings)


def test_repeated_random_tokens_can_draw_from_given_ids():
    ids = torch.tensor([3, 7, 11])
    tokens = repeated_random_tokens(d_vocab=50, seq_len=40, batch=2, seed=0, token_ids=ids)
    assert set(tokens.unique().tolist()) == {3, 7, 11}
    assert torch.equal(tokens[:, :40], tokens[:, 40:])
    with pytest.raises(ValueError, match="token_ids"):
        repeated_random_tokens(d_vocab=10, seq_len=4, batch=1, token_ids=torch.tensor([10]))
