"""Checks for the exercises of lecture 05 (language modelling).

Each ``check_*`` takes the student's function, compares it on seeded inputs with the
reference in :mod:`decoding_gpt.ngram` / :mod:`decoding_gpt.tokenizer` (or a brute-force
loop), and raises :class:`CheckError` naming the likely mistake when it disagrees.

Exercise 1, :func:`check_stationary_distribution`, is shared with homework 1 and lives in
:mod:`decoding_gpt.checks.markov`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.checks.markov import (
    brute_bigram_counts,
    check_stationary_distribution,
    dense_numpy,
)
from decoding_gpt.ngram import row_normalize
from decoding_gpt.tokenizer import merge_pair

__all__ = [
    "check_bigram_counts",
    "check_merge_pair",
    "check_perplexity",
    "check_row_normalize",
    "check_stationary_distribution",
]


# ----------------------------------------------------------------------------- exercise 2
@exercise
def check_bigram_counts(fn: Callable[[list[int], int], torch.Tensor]) -> None:
    """``fn(ids, V) -> C`` with ``C[i, j]`` = number of times ``j`` directly follows ``i``."""
    gen = torch.Generator().manual_seed(5)
    for n, vocab in [(2, 3), (40, 4), (300, 7)]:
        ids = torch.randint(vocab, (n,), generator=gen).tolist()
        want = brute_bigram_counts(ids, vocab)
        got = dense_numpy(fn(list(ids), vocab), "counts")
        if got.shape != want.shape:
            raise CheckError(f"counts has shape {got.shape}, expected ({vocab}, {vocab}).")
        if np.array_equal(got, brute_bigram_counts([*ids, ids[0]], vocab)):
            raise CheckError(
                f"counts sums to {int(got.sum())} = len(ids), but a sequence of n tokens has "
                "n - 1 bigrams: did you wrap around from the last token to the first?"
            )
        if np.array_equal(got, brute_bigram_counts(ids[:-1], vocab)) or np.array_equal(
            got, brute_bigram_counts(ids[1:], vocab)
        ):
            raise CheckError(
                "counts misses one bigram: loop over t in range(len(ids) - 1) so that the "
                "first pair and the last pair (ids[-2], ids[-1]) are both counted."
            )
        if not np.array_equal(got, want) and np.array_equal(got, want.T):
            raise CheckError(
                "counts is transposed: row = current token, column = next token, "
                "C[ids[t], ids[t + 1]] += 1."
            )
        compare_tensors(got, want, "counts", atol=0, hint="C[ids[t], ids[t + 1]] += 1.")
    passed("check_bigram_counts")


# ----------------------------------------------------------------------------- exercise 3
@exercise
def check_row_normalize(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """``fn(C) -> M``: rows divided by their sums; empty rows stay all zero (no NaN)."""
    counts = torch.tensor(
        [[2.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    got = dense_numpy(fn(counts.clone()), "M")
    want = row_normalize(counts).numpy()
    if got.shape != want.shape:
        raise CheckError(f"M has shape {got.shape}, expected {want.shape}.")
    if np.isnan(got).any():
        raise CheckError(
            "M has NaN in row 1, whose counts are all zero (0 / 0). Divide only rows with a "
            "positive sum, e.g. counts / sums.clamp_min(1) or torch.where(sums > 0, ...); "
            "empty rows stay zero. NaN rows crash sampling later."
        )
    if np.allclose(got.sum(axis=0)[got.sum(axis=0) > 0], 1.0) and not np.allclose(got, want):
        raise CheckError(
            "the COLUMNS of M sum to 1: normalise each row (sum over dim=1, keepdim=True); "
            "M[i, j] = P(next = j | current = i)."
        )
    if np.isclose(got.sum(), 1.0):
        raise CheckError("M sums to 1 overall: divide each row by its own sum, not by the total.")
    if np.allclose(got[1], 0.25):
        raise CheckError(
            "row 1 (no observed successors) is uniform; in this course empty rows stay all "
            "zero so the chain marks them as dead ends instead of inventing data."
        )
    compare_tensors(got, want, "M", atol=1e-9, hint="M[i] = C[i] / C[i].sum() for rows > 0.")
    passed("check_row_normalize")


# ----------------------------------------------------------------------------- exercise 4
@exercise
def check_perplexity(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    """``fn(logits, targets) -> float``: ``exp`` of the mean cross-entropy (natural log)."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(50, 11, generator=gen, dtype=torch.float64) * 2
    targets = torch.randint(11, (50,), generator=gen)
    nll = F.cross_entropy(logits, targets, reduction="none")
    want = math.exp(nll.mean().item())
    uniform = float(to_numpy(fn(torch.zeros(7, 11, dtype=torch.float64), targets[:7]), "ppl"))
    got = float(to_numpy(fn(logits.clone(), targets.clone()), "perplexity"))
    if math.isclose(got, math.exp(nll.sum().item()), rel_tol=1e-6) or got == math.inf:
        raise CheckError(
            "perplexity is exp of the SUM of the NLLs: use the mean (per-token) NLL, "
            "otherwise it grows with the length of the text."
        )
    if math.isclose(got, 2 ** nll.mean().item(), rel_tol=1e-6):
        raise CheckError(
            "perplexity is 2 ** (NLL in nats): cross_entropy uses natural logs, so "
            "perplexity = exp(mean NLL) (or 2 ** mean NLL in bits)."
        )
    if math.isclose(got, nll.exp().mean().item(), rel_tol=1e-6):
        raise CheckError("you averaged exp(NLL) per token: take exp of the mean NLL instead.")
    if not math.isclose(uniform, 11.0, rel_tol=1e-6):
        raise CheckError(
            f"a model with equal logits over 11 tokens should have perplexity 11, got "
            f"{uniform:.4g}. Are you turning logits into log-probabilities with log_softmax "
            "over the vocabulary axis (dim=-1)?"
        )
    if not math.isclose(got, want, rel_tol=1e-6):
        raise CheckError(
            f"perplexity is {got:.6g}, expected {want:.6g} = exp(F.cross_entropy(logits, "
            "targets)). Check that you use log_softmax over the vocabulary axis (dim=-1)."
        )
    passed("check_perplexity")


# ----------------------------------------------------------------------------- exercise 5
@exercise
def check_merge_pair(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """``fn(ids, pair, new_id)``: replace each non-overlapping occurrence, left to right."""
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 9),
        ([5, 5, 5], (5, 5), 9),
        ([5, 5, 5, 5], (5, 5), 9),
        ([3, 1, 2], (1, 2), 7),
        ([1, 2], (2, 1), 7),
        ([], (1, 2), 7),
    ]
    for ids, pair, new_id in cases:
        original = list(ids)
        got = fn(list(ids), pair, new_id)
        want = merge_pair(original, pair, new_id)
        if got is None:
            raise CheckError("merge returned None: did you forget to `return` the new list?")
        got = [int(x) for x in got]
        if got == want:
            continue
        where = f"merge({original}, {pair}, {new_id}) gave {got}, expected {want}"
        if got.count(new_id) < want.count(new_id):
            raise CheckError(
                f"{where}: some occurrences were not merged. Replace every occurrence, "
                "scanning the whole list left to right."
            )
        if len(got) > len(want):
            raise CheckError(
                f"{where}: after a merge both tokens of the pair are used up, so move on by "
                "2 positions (i += 2), not 1; [5, 5, 5] becomes [9, 5]."
            )
        if len(got) < len(want) and got == want[: len(got)]:
            raise CheckError(
                f"{where}: the last token was dropped. Loop while i < len(ids) and test "
                "i + 1 < len(ids) before comparing a pair."
            )
        raise CheckError(f"{where}. Scan left to right, merge a match and skip both tokens.")
    passed("check_merge_pair")
