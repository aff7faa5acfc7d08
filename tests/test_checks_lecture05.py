"""Exercise checks of lecture 05: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (several are bugs of earlier course
materials); the test pins the part of the message that names the mistake.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted, hw1
from decoding_gpt.checks import lecture05 as l05
from decoding_gpt.checks.markov import STATIONARY_MISTAKES
from decoding_gpt.ngram import bigram_counts, row_normalize, stationary_distribution
from decoding_gpt.tokenizer import (
    END_OF_TEXT,
    BytePairEncoding,
    merge_pair,
    pretokenize,
    tie_break_key,
)


def _left_eig(m: torch.Tensor, normalise: str = "sum", pick: str = "closest") -> torch.Tensor:
    values, vectors = torch.linalg.eig(m.T)
    k = int(torch.argmin(values.abs() if pick == "smallest" else (values - 1).abs()))
    v = vectors[:, k].real
    return v / v.sum() if normalise == "sum" else v


# ------------------------------------------------------------------- stationary distribution
def test_stationary_accepts_reference_and_power_iteration():
    l05.check_stationary_distribution(stationary_distribution)
    l05.check_stationary_distribution(lambda m: torch.linalg.matrix_power(m, 200)[0])


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda m: _left_eig(m.T), "RIGHT eigenvector"),  # the old bug: eig(M), not eig(M^T)
        (lambda m: _left_eig(m, normalise="none"), "divide by pi.sum"),
        (lambda m: -_left_eig(m, normalise="none"), "divide by pi.sum"),
        (lambda m: torch.linalg.eig(m.T)[1][:, 0], "complex"),
        (lambda m: _left_eig(m, pick="smallest"), "closest to 1"),
        (lambda m: _left_eig(m)[:-1], "shape"),
        (lambda m: None, "return"),
    ],
)
def test_stationary_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l05.check_stationary_distribution(wrong)


def test_stationary_is_one_check_shared_with_homework_1():
    assert l05.check_stationary_distribution is hw1.check_stationary_distribution


# one wrong answer per entry of the shared catalogue, with the phrase its message names
STATIONARY_WRONG = {
    "right_eigenvector": (lambda m: _left_eig(m.T), "RIGHT eigenvector"),
    "not_normalised": (lambda m: 3 * _left_eig(m), "divide by pi.sum"),
    "negative_entries": (lambda m: _left_eig(m, pick="smallest"), "negative entries"),
    "wrong_sum": (lambda m: 2 * m[0], "pi sums to 2"),
    "not_stationary": (lambda m: m[0], "pi M != pi"),
}


def test_stationary_catalogue_has_a_wrong_answer_for_every_entry():
    assert [name for name, _ in STATIONARY_MISTAKES] == list(STATIONARY_WRONG)


@pytest.mark.parametrize("name", list(STATIONARY_WRONG))
def test_stationary_rejects_every_catalogued_mistake(name):
    wrong, message = STATIONARY_WRONG[name]
    with pytest.raises(CheckError, match=message):
        l05.check_stationary_distribution(wrong)


# ------------------------------------------------------------------- bigram counts
def _counts_loop(ids, vocab, start=0, stop_offset=1, transpose=False):
    c = torch.zeros(vocab, vocab)
    for t in range(start, len(ids) - stop_offset):
        i, j = ids[t], ids[t + 1]
        c[(j, i) if transpose else (i, j)] += 1
    return c


def test_bigram_counts_accepts_reference():
    l05.check_bigram_counts(_counts_loop)
    l05.check_bigram_counts(bigram_counts)  # sparse output is fine too


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda ids, v: _counts_loop(ids, v, transpose=True), "transposed"),
        (lambda ids, v: _counts_loop(ids, v, stop_offset=2), "misses one bigram"),
        (lambda ids, v: _counts_loop(ids + ids[:1], v), "wrap around"),
        (lambda ids, v: _counts_loop(ids, v, start=1), "misses one bigram"),
        (lambda ids, v: torch.zeros(v, v + 1), "shape"),
        (lambda ids, v: 2 * _counts_loop(ids, v), "wrong values"),
    ],
)
def test_bigram_counts_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l05.check_bigram_counts(wrong)


# ------------------------------------------------------------------- row normalisation
def test_row_normalize_accepts_reference():
    l05.check_row_normalize(row_normalize)
    l05.check_row_normalize(lambda c: c / c.sum(1, keepdim=True).clamp_min(1))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda c: c / c.sum(1, keepdim=True), "NaN"),  # the old bug
        (lambda c: c / c.sum(0, keepdim=True).clamp_min(1), "COLUMNS"),
        (lambda c: c / c.sum(), "overall"),
        (lambda c: torch.nan_to_num(c / c.sum(1, keepdim=True), nan=0.25), "uniform"),
        (lambda c: c, "wrong values"),
    ],
)
def test_row_normalize_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l05.check_row_normalize(wrong)


# ------------------------------------------------------------------- perplexity
def _ppl(logits, targets):
    return math.exp(F.cross_entropy(logits, targets).item())


def test_perplexity_accepts_reference():
    l05.check_perplexity(_ppl)
    l05.check_perplexity(
        lambda lg, t: torch.exp(-lg.log_softmax(-1).gather(1, t[:, None]).mean()).item()
    )


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda lg, t: math.exp(F.cross_entropy(lg, t, reduction="sum").item()), "SUM"),
        (lambda lg, t: 2 ** F.cross_entropy(lg, t).item(), "natural logs"),
        (lambda lg, t: F.cross_entropy(lg, t, reduction="none").exp().mean().item(), "averaged"),
        (lambda lg, t: math.exp(-lg.gather(1, t[:, None]).mean().item()), "log_softmax"),
        (lambda lg, t: math.exp(F.nll_loss(lg.log_softmax(0), t).item()), "dim=-1"),
    ],
)
def test_perplexity_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l05.check_perplexity(wrong)


# ------------------------------------------------------------------- BPE merge step
def _merge_step_by_one(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return [*ids[:i], new_id, *ids[i + 2 :]]
    return list(ids)


def _merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def test_merge_pair_accepts_reference():
    l05.check_merge_pair(merge_pair)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_merge_step_by_one, "i \\+= 2"),
        (_merge_first_only, "not merged"),
        (_merge_drops_last, "last token was dropped"),
        (lambda ids, pair, new_id: None, "return"),
    ],
)
def test_merge_pair_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l05.check_merge_pair(wrong)


# ------------------------------------------------------------------- BPE training loop
def _train_bpe(text, n_merges, pick=None, stop=True):
    """The notebook's solution, written out; ``pick`` replaces the tie-break."""
    chunks = Counter(c for doc in text.split(END_OF_TEXT) for c in pretokenize(doc))
    words, freqs = [list(c.encode("utf-8")) for c in chunks], list(chunks.values())
    merges = []
    for k in range(n_merges):
        counts = Counter()
        for word, freq in zip(words, freqs, strict=True):
            for pair in zip(word, word[1:], strict=False):
                counts[pair] += freq
        if not counts and stop:
            break
        pair = (pick or (lambda c: min(c, key=lambda p: (-c[p], tie_break_key(p)))))(counts)
        words = [merge_pair(w, pair, 256 + k) for w in words]
        merges.append(pair)
    return merges


def _package_bpe(text, n_merges):
    return BytePairEncoding.train(text, 256 + n_merges + 1, special_tokens=[END_OF_TEXT]).merges


def test_train_bpe_accepts_references():
    l05.check_train_bpe(_package_bpe)
    l05.check_train_bpe(_train_bpe)
    l05.check_train_bpe(lambda text, n: l05.BPETrainer().train(text, n))


def test_textbook_trainer_equals_the_package_incremental_one():
    text = l05._stories_text()
    assert l05.BPETrainer().train(text, 120) == _package_bpe(text, 120)


@pytest.mark.parametrize(("name", "trainer", "message"), l05.BPE_MISTAKES, ids=lambda v: v)
def test_train_bpe_rejects_every_catalogued_mistake(name, trainer, message):
    with pytest.raises(CheckError) as err:
        l05.check_train_bpe(trainer.train)
    assert str(err.value) == message, name


@pytest.mark.parametrize(
    "pick",
    [
        lambda c: max(c, key=c.get),  # first seen among the most frequent
        lambda c: min(c, key=lambda p: (-c[p], p)),  # smallest raw byte ids (' ' = 32 first)
        lambda c: max(c, key=lambda p: (c[p], p)),  # largest ids
    ],
    ids=["first_seen", "raw_ids", "largest"],
)
def test_train_bpe_rejects_other_tie_breaks(pick):
    with pytest.raises(CheckError, match="wins the tie: .*tie_break_key"):
        l05.check_train_bpe(lambda text, n: _train_bpe(text, n, pick=pick))


def test_train_bpe_rejects_a_loop_that_never_stops():
    with pytest.raises(CheckError, match="no pair is left"):
        l05.check_train_bpe(lambda text, n: _train_bpe(text, n, stop=False))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda text, n: None, "return"),
        (lambda text, n: _train_bpe(text, n)[:-1], "stopped after"),
        (lambda text, n: [(a + 1, b) for a, b in _train_bpe(text, n)], "merge 0"),
        (lambda text, n: [257, 258], "list of merges"),
    ],
)
def test_train_bpe_rejects_malformed_answers(wrong, message):
    with pytest.raises(CheckError, match=message):
        l05.check_train_bpe(wrong)


def test_train_bpe_stub_is_not_attempted():
    def stub(text, n_merges):
        raise NotImplementedError(f"{STUB_PREFIX} write `train_bpe` here.")

    with pytest.raises(NotAttempted, match="train_bpe"):
        l05.check_train_bpe(stub)
