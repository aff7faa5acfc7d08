"""Checks for the exercises of lecture 05 (language modelling).

Each ``check_*`` takes the student's function, compares it on seeded inputs with the
reference in :mod:`decoding_gpt.ngram` / :mod:`decoding_gpt.tokenizer` (or a brute-force
loop), and raises :class:`CheckError` naming the likely mistake when it disagrees.

Exercise 1, :func:`check_stationary_distribution`, is shared with homework 1 and lives in
:mod:`decoding_gpt.checks.markov`. Exercise 5, :func:`check_train_bpe`, compares the
student's whole BPE training loop with :meth:`decoding_gpt.tokenizer.BytePairEncoding.train`
and, when they disagree, replays the classic wrong trainers (:data:`BPE_MISTAKES`) to name
the one the student wrote.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.checks.markov import (
    brute_bigram_counts,
    check_stationary_distribution,
    dense_numpy,
)
from decoding_gpt.data.stories import generate_stories
from decoding_gpt.ngram import row_normalize
from decoding_gpt.tokenizer import (
    END_OF_TEXT,
    BytePairEncoding,
    merge_pair,
    pretokenize,
    tie_break_key,
)

__all__ = [
    "check_bigram_counts",
    "check_merge_pair",
    "check_perplexity",
    "check_row_normalize",
    "check_stationary_distribution",
    "check_train_bpe",
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


# ----------------------------------------------------------------------------- exercise 5
Merges = list[tuple[int, int]]
Pair = tuple[int, int]


@dataclass(frozen=True)
class BPETrainer:
    """A BPE trainer, right or wrong in one named way; :meth:`train` runs it.

    With every flag at its default this is the textbook loop (recount every pair after
    every merge), an implementation independent of the package's incremental trainer
    that the tests prove equal to it. Each :data:`BPE_MISTAKES` entry flips one flag.
    """

    split_specials: bool = True  # cut the text at <|endoftext|> first
    pretokenise: bool = True  # count pairs inside GPT-2 pre-tokens only
    weighted: bool = True  # a pre-token's pairs count as often as the pre-token occurs
    recount: bool = True  # count the pairs again after every merge
    overlapping: bool = True  # "aaa" holds (a, a) at two positions, and both count
    skip_both: bool = True  # a merge consumes both tokens ("aaa" -> [aa, a])

    def words(self, text: str) -> tuple[list[list[int]], list[int]]:
        """The distinct pre-tokens as byte lists, and how often each occurs."""
        docs = text.split(END_OF_TEXT) if self.split_specials else [text]
        chunks = Counter(c for d in docs for c in (pretokenize(d) if self.pretokenise else [d]))
        chunks.pop("", None)
        freqs = list(chunks.values()) if self.weighted else [1] * len(chunks)
        return [list(c.encode("utf-8")) for c in chunks], freqs

    def merge(self, ids: list[int], pair: Pair, new_id: int) -> list[int]:
        if self.skip_both:
            return merge_pair(ids, pair, new_id)
        # the step-by-one bug: every position that starts the pair emits the new token
        return [new_id if (a, b) == pair else a for a, b in zip(ids, [*ids[1:], -1], strict=True)]

    def train(self, text: str, n_merges: int) -> Merges:
        words, freqs = self.words(text)
        merges: Merges = []
        counts = pair_counts(words, freqs, self.overlapping)
        for k in range(n_merges):
            if self.recount:
                counts = pair_counts(words, freqs, self.overlapping)
            if not counts:
                break
            pair = min(counts, key=lambda p: (-counts[p], tie_break_key(p)))
            merges.append(pair)
            words = [self.merge(w, pair, 256 + k) for w in words]
            if not self.recount:
                del counts[pair]  # take the next most frequent pair of the first count
        return merges


def pair_counts(
    words: Sequence[list[int]], freqs: Sequence[int], overlapping: bool = True
) -> Counter[Pair]:
    """Adjacent pairs at every position of every word, each counted ``freq`` times.

    ``overlapping=False`` is a mistake: it skips the position after a repeated pair, so
    ``"aaa"`` counts ``(a, a)`` once.
    """
    counts: Counter[Pair] = Counter()
    for word, freq in zip(words, freqs, strict=True):
        previous: Pair | None = None
        for pair in zip(word, word[1:], strict=False):
            if overlapping or pair != previous:
                counts[pair] += freq
                previous = pair
            else:
                previous = None  # "aaaa": count positions 0 and 2, not 1
    return counts


BPE_MISTAKES: tuple[tuple[str, BPETrainer, str], ...] = (
    (
        "across_documents",
        BPETrainer(split_specials=False),
        "your merges count pairs across <|endoftext|> (and merge the bytes of the marker "
        "itself). Special tokens are not text: split the text on them first, "
        "text.split(END_OF_TEXT), and pre-tokenise and count each document on its own.",
    ),
    (
        "across_words",
        BPETrainer(pretokenise=False),
        "your merges count pairs across word boundaries (e.g. a letter followed by ' '): cut "
        "each document into pre-tokens with pretokenize(doc) and count pairs inside each "
        "pre-token only, as GPT-2 does.",
    ),
    (
        "unweighted",
        BPETrainer(weighted=False),
        "you count each distinct pre-token once: weight its pairs by how often it occurs "
        "(a Counter of pre-tokens, then counts[pair] += freq).",
    ),
    (
        "no_recount",
        BPETrainer(recount=False),
        "you counted the pairs once, before any merge, and took the most frequent ones in "
        "turn: after each merge the words change, so count the pairs again (a pair with a "
        "merged token, like ' t' + 'he', only exists after ' t' was merged).",
    ),
    (
        "non_overlapping_counts",
        BPETrainer(overlapping=False),
        "you count a repeated pair once where it overlaps itself: 'aaa' holds (a, a) at "
        "positions 0 and 1 and BOTH count (as in HF tokenizers), although merging it gives "
        "[aa, a]. Count every adjacent pair, zip(word, word[1:]).",
    ),
    (
        "step_by_one",
        BPETrainer(skip_both=False),
        "your merge step does not consume both tokens of a match: 'ab' must become [ab] "
        "and 'aaa' [aa, a], but yours keeps the second token. After a match skip BOTH "
        "tokens (i += 2), as merge from exercise 4 does.",
    ),
)

# Cases, in order: each mistake shows on the first; ties and exhaustion on the later ones.
_RUNS_TEXT = "aaa aaa bc bc bc bc bc<|endoftext|>aaaa"
_EXHAUSTED_TEXT = "ab ab<|endoftext|>ab"


def _stories_text() -> str:
    docs = [story.text for story in generate_stories(12, seed=7)]
    docs += [" Zzzz, the bees said: zzzzz!", " Hmmm... ooooh, whoooosh."]
    return END_OF_TEXT.join(docs)


def _as_merges(result: object, n_merges: int) -> Merges:
    if result is None:
        raise CheckError("train_bpe returned None: did you forget to `return` the merges?")
    try:
        merges = [(int(a), int(b)) for a, b in result]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as err:
        raise CheckError("return a list of merges, each a pair (a, b) of token ids.") from err
    if len(merges) > n_merges:
        raise CheckError(f"you returned {len(merges)} merges for n_merges = {n_merges}.")
    for k, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + k and 0 <= b < 256 + k):
            raise CheckError(
                f"merge {k} is {(a, b)}, but only ids 0..{255 + k} exist before it: the 256 "
                "bytes, then merge j creates id 256 + j."
            )
    return merges


def _show(pair: Pair, strings: list[str]) -> str:
    return f"({strings[pair[0]]!r}, {strings[pair[1]]!r})"


def _diagnose_bpe(text: str, n_merges: int, got: Merges, want: Merges) -> CheckError:
    """The error for a merge list that differs from the reference on ``text``."""
    k = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if k is None:  # one list is a prefix of the other
        k = min(len(got), len(want))
        if len(got) < len(want):
            return CheckError(
                f"you stopped after {len(got)} merges, but {len(want)} were possible on this "
                f"text: stop only when no pair is left (or after n_merges = {n_merges})."
            )
        return CheckError(
            f"you returned {len(got)} merges, but after {len(want)} no pair is left on this "
            "text: stop when the pair counts are empty."
        )
    for _, trainer, message in BPE_MISTAKES:
        wrong = trainer.train(text, n_merges)
        agree = next((i for i, (a, b) in enumerate(zip(got, wrong, strict=False)) if a != b), None)
        if (agree is None or agree > k) and wrong[: k + 1] != want[: k + 1]:
            return CheckError(message)
    words, freqs = BPETrainer().words(text)
    for j, pair in enumerate(want[:k]):
        words = [merge_pair(w, pair, 256 + j) for w in words]
    counts = pair_counts(words, freqs)
    strings = BytePairEncoding(want[:k]).token_strings()
    mine, best = _show(got[k], strings), _show(want[k], strings)
    if counts[got[k]] == counts[want[k]]:
        return CheckError(
            f"merge {k}: you merged {mine}, but {best} is as frequent ({counts[want[k]]} "
            "times) and wins the tie: among the most frequent pairs take the one with the "
            "smallest tie_break_key(pair), min(counts, key=lambda p: (-counts[p], "
            "tie_break_key(p)))."
        )
    return CheckError(
        f"merge {k}: you merged {mine}, which occurs {counts[got[k]]} times after your first "
        f"{k} (right) merges, but {best} occurs {counts[want[k]]} times."
    )


@exercise
def check_train_bpe(fn: Callable[[str, int], Merges]) -> None:
    """``fn(text, n_merges) -> merges``: byte-level BPE training with ``<|endoftext|>``.

    Compared on three texts with ``BytePairEncoding.train(text, 256 + n_merges + 1,
    special_tokens=[END_OF_TEXT]).merges``: runs of one letter (overlapping pairs), a
    text whose pairs run out before ``n_merges``, and a dozen stories.
    """
    for text, n_merges in [(_RUNS_TEXT, 4), (_EXHAUSTED_TEXT, 5), (_stories_text(), 40)]:
        want = BytePairEncoding.train(text, 256 + n_merges + 1, special_tokens=[END_OF_TEXT])
        try:
            result = fn(text, n_merges)
        except (ValueError, IndexError, KeyError) as err:
            raise CheckError(
                f"train_bpe raised {type(err).__name__}: {err} on a text of "
                f"{len(text)} characters with n_merges = {n_merges}. If no pair is left "
                "(every pre-token is a single token), stop and return the merges so far."
            ) from err
        got = _as_merges(result, n_merges)
        if got != want.merges:
            raise _diagnose_bpe(text, n_merges, got, want.merges)
    passed("check_train_bpe")


# ----------------------------------------------------------------------------- exercise 6
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
