"""Checks for homework 1 (Markov chains and tokenisation).

Independent references: brute-force counting loops for the bigram chain and HF
``tokenizers``' BPE trainer for the merges; the stationary distribution's check is shared
with lecture 05 (:func:`decoding_gpt.checks.markov.check_stationary_distribution`). Each
check raises :class:`~decoding_gpt.checks.CheckError` naming the likely mistake.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed
from decoding_gpt.checks.markov import (
    brute_bigram_counts,
    check_stationary_distribution,
    dense_numpy,
)
from decoding_gpt.tokenizer import (
    BytePairEncoding,
    bytes_to_unicode,
    hf_merges,
    merge_pair,
    pretokenize,
    train_hf_bpe,
)

__all__ = [
    "BPE_CORPUS",
    "check_bpe_merges",
    "check_markov_chain",
    "check_stationary_distribution",
]

# A fixed corpus; its first merges are unique maxima, later ones include ties.
BPE_CORPUS = (
    "the cat sat on the mat. the cat ate the rat. that rat sat on that hat. "
    "then the cat and the rat had a chat; the chat was about the hat that the cat sat on. "
    "a mat, a hat, a rat, a cat: there they sat, and that was that."
)
BPE_MERGES = 30


# ------------------------------------------------------------------ 1. the bigram chain
def _normalise_rows(counts: np.ndarray) -> np.ndarray:
    """``M[i, j] = c(i, j) / sum_k c(i, k)``, rows without successors left at 0."""
    sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)


@exercise
def check_markov_chain(fn: Callable[[list[int], int], torch.Tensor]) -> None:
    """``fn(ids, vocab_size) -> M [V, V]``: the bigram transition matrix of ``ids``.

    ``M[i, j]`` is the fraction of occurrences of ``i`` (with a successor) followed by
    ``j``; a state never followed by anything (e.g. only the last token) has an all-zero
    row. Checked on a sequence whose last token occurs nowhere else and a vocabulary with
    unused ids, so both kinds of empty row appear.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (60,), generator=gen).tolist() + [7]  # 6 unused, 7 = dead end
    vocab_size = 8
    got = dense_numpy(fn(list(ids), vocab_size), "M")
    counts = brute_bigram_counts(ids, vocab_size)
    want = _normalise_rows(counts)
    if got.shape != want.shape:
        raise CheckError(f"M has shape {got.shape}, expected {want.shape}: one row per state.")
    if np.isnan(got).any():
        rows = sorted({int(i) for i in np.argwhere(np.isnan(got))[:, 0]})
        raise CheckError(
            f"M has NaNs in rows {rows}: those states have no successor, so you divided "
            "0 by 0. Leave empty rows all-zero (divide only where the row sum is > 0)."
        )
    if (got < 0).any():
        raise CheckError("M has negative entries: transition probabilities are >= 0.")
    sums = got.sum(axis=1)
    empty = want.sum(axis=1) == 0
    if np.allclose(got, _normalise_rows(counts.T).T, atol=1e-6) or np.allclose(
        got, want.T, atol=1e-6
    ):
        raise CheckError(
            "M is transposed (columns normalised): row i must hold the successors of i, "
            "M[i, j] = P(next = j | current = i), and each ROW sums to 1."
        )
    if not np.allclose(sums[empty], 0.0) and np.allclose(sums, 1.0, atol=1e-6):
        raise CheckError(
            f"rows {np.flatnonzero(empty).tolist()} have no observed successor but sum to 1: "
            "empty rows must stay all-zero (no smoothing, no uniform fill)."
        )
    bad = np.flatnonzero(~empty & ~np.isclose(sums, 1.0, atol=1e-6))
    if bad.size:
        raise CheckError(
            f"rows {bad[:5].tolist()} sum to {np.round(sums[bad[:5]], 4).tolist()}, not 1: "
            "normalise each ROW by its own sum (sum over dim=1, keepdim=True)."
        )
    compare_tensors(
        got,
        want,
        "M",
        atol=1e-6,
        hint="Count every adjacent pair (ids[t], ids[t+1]) for t = 0..n-2 exactly once.",
    )
    passed("check_markov_chain")


# ------------------------------------------------------------------ 3. BPE merges
def _reference_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """The first ``n_merges`` merges HF ``tokenizers`` learns (GPT-2 byte-level BPE)."""
    return hf_merges(train_hf_bpe([text], vocab_size=256 + n_merges, special_tokens=()))


def _pair_counts_after(text: str, merges: list[tuple[int, int]]) -> Counter[tuple[int, int]]:
    """Pair counts within pre-tokens after replaying ``merges``."""
    words = [list(w.encode("utf-8")) for w in pretokenize(text)]
    for k, pair in enumerate(merges):
        words = [merge_pair(w, pair, 256 + k) for w in words]
    return Counter(p for w in words for p in zip(w, w[1:], strict=False))


@exercise
def check_bpe_merges(fn: Callable[[str, int], list[tuple[int, int]]]) -> None:
    """``fn(text, n_merges) -> merges``: byte-level BPE training, compared with HF.

    ``merges[k] = (a, b)`` are token ids (bytes 0-255, merge ``k`` creates id ``256 + k``);
    the text is split with :func:`decoding_gpt.tokenizer.pretokenize` and pairs never
    cross pre-token boundaries. Every merge must be a most frequent pair at its step;
    where that pair is unique it must be HF's merge, and ties may be broken either way
    (HF's tie rule depends on its internal byte alphabet; a student need not copy it).
    """
    got = fn(BPE_CORPUS, BPE_MERGES)
    if got is None:
        raise CheckError("merges is None: did you forget to `return` it?")
    got = list(got)
    if len(got) != BPE_MERGES:
        raise CheckError(f"asked for {BPE_MERGES} merges, got {len(got)}.")
    if not all(
        isinstance(p, tuple | list) and len(p) == 2 and all(isinstance(i, int) for i in p)
        for p in got
    ):
        raise CheckError("each merge must be a pair of int token ids, e.g. (116, 104).")
    got = [(int(a), int(b)) for a, b in got]
    try:
        got_strings = BytePairEncoding(got).merge_strings()
    except ValueError as err:
        raise CheckError(
            f"{err}: merge k must create the id 256 + k (ids 0-255 are the raw bytes)."
        ) from None
    want = _reference_merges(BPE_CORPUS, BPE_MERGES)
    table = bytes_to_unicode()
    same_so_far = True  # the student's merges equal HF's up to step k
    for k, (mine, ref) in enumerate(zip(got_strings, want, strict=True)):
        counts = _pair_counts_after(BPE_CORPUS, got[:k])
        best = max(counts.values())
        n_best = sum(c == best for c in counts.values())
        count = counts.get(got[k], 0)
        readable = "".join(mine).replace(table[32], " ")
        if count == 0:
            raise CheckError(
                f"merge {k} joins {mine} ({readable!r}), a pair that never occurs inside one "
                "pre-token: split the text with pretokenize() first and count pairs within "
                "each pre-token only (a merge never crosses a word boundary)."
            )
        if count < best:
            raise CheckError(
                f"merge {k} is {mine} with count {count}, but the most frequent pair at "
                f"that step occurs {best} times (HF tokenizers merges {tuple(ref)}): merge "
                "the MOST frequent pair, counting every occurrence of every pre-token."
            )
        if same_so_far and n_best == 1 and tuple(mine) != tuple(ref):
            raise CheckError(f"merge {k} is {mine}; HF tokenizers merges {tuple(ref)}.")
        # ties (n_best > 1) may be broken either way: both are valid BPE merges
        same_so_far = same_so_far and tuple(mine) == tuple(ref)
    passed("check_bpe_merges")
