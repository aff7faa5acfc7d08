"""Homework 1 checks: the reference passes, known-wrong implementations are rejected.

Every wrong implementation below is a mistake students make; each test pins the part of
the check's message that names it.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from decoding_gpt.checks import CheckError, hw1
from decoding_gpt.ngram import bigram_counts, row_normalize, stationary_distribution, to_dense
from decoding_gpt.tokenizer import BytePairEncoding, merge_pair, pretokenize


# ------------------------------------------------------------------ markov chain
def _reference_chain(ids, vocab_size):
    return to_dense(row_normalize(bigram_counts(ids, vocab_size)))


def _counts(ids, vocab_size, stop=1, wrap=False):
    c = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    for t in range(len(ids) - stop):
        c[ids[t], ids[t + 1]] += 1
    if wrap:
        c[ids[-1], ids[0]] += 1
    return c


def _naive_normalise(c):
    return c / c.sum(dim=1, keepdim=True)  # 0 / 0 = NaN on empty rows


def test_markov_chain_accepts_reference():
    hw1.check_markov_chain(_reference_chain)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda ids, v: _naive_normalise(_counts(ids, v)), "0 by 0"),
        (lambda ids, v: _reference_chain(ids, v).T, "transposed"),
        (lambda ids, v: _counts(ids, v) / _counts(ids, v).sum(0).clamp_min(1), "transposed"),
        (lambda ids, v: _counts(ids, v) / _counts(ids, v).sum(), "normalise each ROW"),
        (lambda ids, v: _naive_normalise(_counts(ids, v) + 1), "empty rows must stay"),
        (lambda ids, v: _reference_chain(ids, v)[:-1], "shape"),
        (lambda ids, v: _reference_chain(ids[:-2] + ids[-1:], v), "adjacent pair"),
        (lambda ids, v: row_normalize(_counts(ids, v, wrap=True)), "M has wrong values"),
    ],
)
def test_markov_chain_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw1.check_markov_chain(wrong)


# ------------------------------------------------------------------ stationary distribution
def _eigvec(m, transpose=True, normalise="sum"):
    values, vectors = torch.linalg.eig(m.T if transpose else m)
    v = vectors[:, int(torch.argmin((values - 1).abs()))].real
    return v / v.sum() if normalise == "sum" else v / v.norm()


def test_stationary_accepts_reference_and_power_iteration():
    hw1.check_stationary_distribution(stationary_distribution)
    hw1.check_stationary_distribution(lambda m: torch.linalg.matrix_power(m, 300)[0])


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda m: _eigvec(m, transpose=False), "RIGHT eigenvector"),
        (lambda m: _eigvec(m, normalise="norm").abs(), "divide by pi.sum"),
        (lambda m: -_eigvec(m, normalise="norm").abs(), "negative entries"),
        (lambda m: torch.linalg.eig(m.T)[1][:, 0], "complex"),
        (lambda m: m[0], "pi M != pi"),
        (lambda m: _eigvec(m)[:-1], "shape"),
        (lambda m: None, "return"),
    ],
)
def test_stationary_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw1.check_stationary_distribution(wrong)


# ------------------------------------------------------------------ BPE merges
def _train(text, n_merges, split=True, weight=True, pick=max, first_id=256):
    """A small BPE trainer with switches for the classic mistakes."""
    chunks = pretokenize(text) if split else [text]
    if not weight:  # each distinct pre-token counted once, not as often as it occurs
        chunks = list(dict.fromkeys(chunks))
    words = [list(w.encode()) for w in chunks]
    merges = []
    for k in range(n_merges):
        counts = Counter()
        for w in words:
            counts.update(zip(w, w[1:], strict=False))
        pair = pick(counts, key=counts.get)
        merges.append(pair)
        words = [merge_pair(w, pair, first_id + k) for w in words]
    return merges


def test_bpe_accepts_reference_and_a_plain_trainer():
    hw1.check_bpe_merges(lambda text, n: BytePairEncoding.train(text, 256 + n).merges)
    hw1.check_bpe_merges(_train)  # breaks ties differently from HF: still accepted


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda t, n: _train(t, n, split=False), "never occurs inside one pre-token"),
        (lambda t, n: _train(t, n, weight=False), "MOST frequent pair"),
        (lambda t, n: _train(t, n, pick=min), "MOST frequent pair"),
        (lambda t, n: _train(t, n, first_id=257), "256 \\+ k"),
        (lambda t, n: _train(t, n - 1), "asked for 30 merges"),
        (lambda t, n: [[str(a), str(b)] for a, b in _train(t, n)], "pair of int"),
    ],
)
def test_bpe_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw1.check_bpe_merges(wrong)
