"""Tokenizers: from characters to byte-level BPE.

A language model reads integers, not text. A *tokenizer* is the pair of maps

    encode: str -> list[int]        decode: list[int] -> str

with ``decode(encode(s)) == s`` for every string ``s`` it promises to handle. This module
builds three of them from a corpus, in order of sophistication:

* :class:`CharTokenizer`: one id per character seen in the corpus. Small vocabulary, long
  sequences; characters never seen map to ``<unk>``.
* :class:`WordTokenizer`: one id per word or punctuation mark, keeping the ``max_vocab``
  most frequent; every other word maps to ``<unk>``. Short sequences, huge vocabulary,
  and the spaces are lost (decoding re-inserts them by rule).
* :class:`BytePairEncoding`: GPT-2's byte-level BPE, written out for teaching. Start from
  the 256 byte values (so *every* string is encodable: no ``<unk>``), then repeatedly
  merge the most frequent adjacent pair of tokens into a new token. The ordered list of
  merges *is* the tokenizer.

For production use, :func:`train_hf_bpe` trains the same algorithm with HF ``tokenizers``
(Rust, ~1000x faster) and :func:`as_pretrained_tokenizer_fast` wraps it for
``transformers`` and TransformerLens (``to_tokens``/``to_string``/``to_str_tokens``).

Tests check our BPE against HF ``tokenizers`` trained on the same corpus with the same
pre-tokenisation (``tests/test_tokenizer.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import regex
import tokenizers
import torch
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import Tensor

if TYPE_CHECKING:  # transformers is heavy to import; only the wrapper needs it
    from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
UNK = "<unk>"

# GPT-2's pre-tokenisation pattern (Radford et al. 2019; identical to the one inside HF's
# ``ByteLevel`` pre-tokenizer with ``use_regex=True``). Text is first cut into chunks:
# English contractions ('s 't 're 've 'm 'll 'd), a run of letters with at most one
# leading space, a run of digits (ditto), a run of other symbols (ditto), and runs of
# whitespace (a trailing whitespace run gives up its last space to the next word, by the
# ``\s+(?!\S)`` branch). BPE merges never cross chunk boundaries, so " the" can become one
# token but "e." never can.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_REGEX = regex.compile(GPT2_PATTERN)


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer in the course provides."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _check_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Raise a clear error for ids outside ``[0, vocab_size)``."""
    bad = [i for i in ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")


def _texts(text_or_texts: str | Iterable[str]) -> list[str]:
    return [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)


# --------------------------------------------------------------------------------------
# Character level
# --------------------------------------------------------------------------------------
class _VocabTokenizer:
    """Shared by the char and word tokenizers: a list of units ``itos``, ``<unk>`` at id 0."""

    itos: list[str]
    stoi: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def unk_id(self) -> int:
        return 0

    def _lookup(self, units: Iterable[str]) -> list[int]:
        """Ids of ``units``; a unit outside the vocabulary maps to ``<unk>``."""
        return [self.stoi.get(u, 0) for u in units]


class CharTokenizer(_VocabTokenizer):
    """One token per Unicode character (code point) seen in the corpus.

    Id 0 is ``<unk>``; the corpus's characters follow in sorted order. A character not in
    the corpus encodes to 0 and decodes to the string ``"<unk>"``, so
    ``decode(encode(s)) == s`` exactly when every character of ``s`` was in the corpus.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer expects single characters")
        self.itos: list[str] = [UNK, *chars]
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos) if i > 0}

    @classmethod
    def from_corpus(cls, text_or_texts: str | Iterable[str]) -> CharTokenizer:
        return cls(c for text in _texts(text_or_texts) for c in text)

    def encode(self, text: str) -> list[int]:
        return self._lookup(text)

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        return "".join(self.itos[int(i)] for i in ids)


# --------------------------------------------------------------------------------------
# Word level
# --------------------------------------------------------------------------------------
# Words are runs of word characters (letters, digits, underscore, with inner apostrophes
# as in "don't"); every other non-space character is a token of its own.
WORD_PATTERN = r"\w+(?:'\w+)*|[^\w\s]"
_WORD_REGEX = regex.compile(WORD_PATTERN)
_NO_SPACE_BEFORE = set(".,;:!?)]}'\"%")
_NO_SPACE_AFTER = set("([{$")


class WordTokenizer(_VocabTokenizer):
    """One token per word or punctuation mark (see ``WORD_PATTERN``).

    The vocabulary keeps the ``max_vocab - 1`` most frequent tokens of the corpus (ties
    broken alphabetically, so it is deterministic) plus ``<unk>`` at id 0. Whitespace is
    not a token: ``decode`` joins tokens with single spaces, except before closing
    punctuation and after opening brackets. Round trips are therefore exact only up to
    whitespace, and out-of-vocabulary words come back as ``"<unk>"``.
    """

    def __init__(self, words: Sequence[str], lowercase: bool = False) -> None:
        self.lowercase = lowercase
        self.itos: list[str] = [UNK, *[w for w in words if w != UNK]]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    @staticmethod
    def split(text: str, lowercase: bool = False) -> list[str]:
        """Cut ``text`` into word and punctuation strings."""
        return _WORD_REGEX.findall(text.lower() if lowercase else text)

    @classmethod
    def from_corpus(
        cls,
        text_or_texts: str | Iterable[str],
        max_vocab: int | None = None,
        lowercase: bool = False,
    ) -> WordTokenizer:
        counts = Counter(w for t in _texts(text_or_texts) for w in cls.split(t, lowercase))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            if max_vocab < 1:
                raise ValueError("max_vocab must be >= 1 (id 0 is <unk>)")
            ranked = ranked[: max_vocab - 1]
        return cls(ranked, lowercase=lowercase)

    def encode(self, text: str) -> list[int]:
        return self._lookup(self.split(text, self.lowercase))

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size)
        out: list[str] = []
        for i in ids:
            word = self.itos[int(i)]
            if out and word[0] not in _NO_SPACE_BEFORE and out[-1][-1] not in _NO_SPACE_AFTER:
                out.append(" ")
            out.append(word)
        return "".join(out)


# --------------------------------------------------------------------------------------
# Byte-level BPE, from scratch
# --------------------------------------------------------------------------------------
def pretokenize(text: str) -> list[str]:
    """Cut text into GPT-2 pre-tokens (see ``GPT2_PATTERN``); merges stay inside them."""
    return _GPT2_REGEX.findall(text)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (control characters, the space)
    are shifted to code points 256 and up, so a space shows as ``'Ġ'`` and a newline as
    ``'Ċ'``. HF ``tokenizers`` writes byte-level vocabularies with this alphabet.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


@lru_cache(maxsize=1)
def _printable_rank() -> list[int]:
    """Rank of each byte when bytes are sorted by their printable character."""
    table = bytes_to_unicode()
    ranked = sorted(range(256), key=lambda b: table[b])
    rank = [0] * 256
    for r, b in enumerate(ranked):
        rank[b] = r
    return rank


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids``, left to right.

    ``merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]``: after a match we skip both tokens.
    """
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pair_counts(words: list[list[int]], freqs: list[int]) -> Counter[tuple[int, int]]:
    counts: Counter[tuple[int, int]] = Counter()
    for word, freq in zip(words, freqs, strict=True):
        for pair in zip(word, word[1:], strict=False):
            counts[pair] += freq
    return counts


class BytePairEncoding:
    """Byte-level BPE (Sennrich et al. 2016; GPT-2's variant), written out for teaching.

    Ids 0-255 are the raw bytes of the UTF-8 encoding; merge ``k`` (0-based) creates id
    ``256 + k`` from the pair ``merges[k]``. Training, on the multiset of pre-tokens:

        repeat until vocab_size: find the most frequent adjacent pair (a, b) (counted
        with multiplicity, non-overlapping within each pre-token) and replace it by a
        new token everywhere.

    Ties between equally frequent pairs go to the pair that sorts first when bytes are
    ordered as their printable characters (see :func:`bytes_to_unicode`; so ``'e'`` comes
    before ``'Ġ'``, the space) and merged tokens after all bytes, by age. That is HF
    ``tokenizers``' rule (smallest pair of its ids), so both trainers learn the same merge
    list on the same corpus (tested). Encoding a new string
    replays the merges in training order inside each pre-token, which is what GPT-2 does.
    Every byte string is encodable, so ``decode(encode(s)) == s`` for any ``s``.
    """

    def __init__(self, merges: Sequence[tuple[int, int]] = (), pattern: str = GPT2_PATTERN):
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        self.merges: list[tuple[int, int]] = []
        self.ranks: dict[tuple[int, int], int] = {}
        self.vocab: list[bytes] = [bytes([b]) for b in range(256)]
        self.merge_counts: list[int] = []  # pair frequency at the time of each merge
        for a, b in merges:
            self._add_merge((int(a), int(b)))
        self._cache: dict[str, list[int]] = {}

    def _add_merge(self, pair: tuple[int, int], count: int = 0) -> int:
        if not (0 <= pair[0] < len(self.vocab) and 0 <= pair[1] < len(self.vocab)):
            raise ValueError(f"merge {pair} refers to a token that does not exist yet")
        new_id = len(self.vocab)
        self.ranks[pair] = len(self.merges)
        self.merges.append(pair)
        self.vocab.append(self.vocab[pair[0]] + self.vocab[pair[1]])
        self.merge_counts.append(count)
        return new_id

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def train(
        cls, text_or_texts: str | Iterable[str], vocab_size: int, pattern: str = GPT2_PATTERN
    ) -> BytePairEncoding:
        """Learn ``vocab_size - 256`` merges from the corpus (fewer if pairs run out).

        Pair counts are updated incrementally: after merging (a, b) only the pre-tokens
        that contained it are recounted, which keeps training on ~100 kB of text to
        seconds in pure Python.
        """
        if vocab_size < 256:
            raise ValueError(f"a byte-level vocabulary has at least 256 tokens, got {vocab_size}")
        bpe = cls(pattern=pattern)
        byte_rank = _printable_rank()

        def order(pair: tuple[int, int]) -> tuple[int, int]:
            # tie-break: bytes in printable-alphabet order, then merged tokens by age
            a, b = (byte_rank[i] if i < 256 else i for i in pair)
            return a, b

        chunks = Counter(c for t in _texts(text_or_texts) for c in bpe._regex.findall(t))
        words = [list(c.encode("utf-8")) for c in chunks]
        freqs = list(chunks.values())
        counts = _pair_counts(words, freqs)
        where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of words holding it
        for w, word in enumerate(words):
            for pair in zip(word, word[1:], strict=False):
                where.setdefault(pair, set()).add(w)
        while bpe.vocab_size < vocab_size and counts:
            pair, count = min(counts.items(), key=lambda kv: (-kv[1], order(kv[0])))
            if count <= 0:
                break
            new_id = bpe._add_merge(pair, count)
            for w in where.pop(pair, ()):
                old, new = words[w], merge_pair(words[w], pair, new_id)
                for p in zip(old, old[1:], strict=False):  # remove the word's old pairs ...
                    counts[p] -= freqs[w]
                for p in zip(new, new[1:], strict=False):  # ... and add its new ones
                    counts[p] += freqs[w]
                    where.setdefault(p, set()).add(w)
                words[w] = new
            counts = +counts  # drop pairs whose count fell to zero
        return bpe

    def _encode_chunk(self, chunk: str) -> list[int]:
        if chunk in self._cache:
            return self._cache[chunk]
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            # the applicable merge learned earliest goes first
            pair = min(zip(ids, ids[1:], strict=False), key=lambda p: self.ranks.get(p, 1 << 60))
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, 256 + self.ranks[pair])
        if len(self._cache) < 100_000:
            self._cache[chunk] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        return [i for chunk in self._regex.findall(text) for i in self._encode_chunk(chunk)]

    def decode(self, ids: Sequence[int]) -> str:
        """Concatenate the tokens' bytes and decode UTF-8 (invalid bytes become U+FFFD)."""
        _check_ids(ids, self.vocab_size)
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_strings(self) -> list[str]:
        """Every token in GPT-2's printable byte alphabet (e.g. ``'Ġthe'``)."""
        table = bytes_to_unicode()
        return ["".join(table[b] for b in token) for token in self.vocab]

    def merge_strings(self) -> list[tuple[str, str]]:
        """The merges as pairs of printable strings, the format of HF's ``merges``."""
        strings = self.token_strings()
        return [(strings[a], strings[b]) for a, b in self.merges]

    def to_hf(self) -> tokenizers.Tokenizer:
        """The same tokenizer as an HF ``tokenizers.Tokenizer`` (same ids, same merges)."""
        if self.pattern != GPT2_PATTERN:
            raise ValueError("to_hf needs the GPT-2 pre-tokenisation pattern")
        strings = self.token_strings()
        model = models.BPE(vocab={s: i for i, s in enumerate(strings)}, merges=self.merge_strings())
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok

    def save(self, path: str | Path) -> None:
        """Write the merges (and pattern) as JSON."""
        data = {"type": "BytePairEncoding", "pattern": self.pattern, "merges": self.merges}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> BytePairEncoding:
        try:
            data = json.loads(Path(path).read_text())
            merges = [(int(a), int(b)) for a, b in data["merges"]]
            pattern = data["pattern"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} is not a BytePairEncoding file: {err}") from err
        return cls(merges, pattern=pattern)


# --------------------------------------------------------------------------------------
# HF tokenizers: production BPE and the transformers wrapper
# --------------------------------------------------------------------------------------
def train_hf_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...] = (END_OF_TEXT,)
) -> tokenizers.Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer with HF ``tokenizers``.

    Same algorithm and pre-tokenisation as :class:`BytePairEncoding`; the vocabulary holds
    the special tokens first, then the 256 byte symbols, then ``vocab_size - 256 - len(
    special_tokens)`` merges.
    """
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def hf_merges(tok: tokenizers.Tokenizer) -> list[tuple[str, str]]:
    """The ordered merges of a trained HF BPE tokenizer, e.g. ``[('Ġ', 't'), ...]``."""
    data = json.loads(tok.to_str())
    if data["model"]["type"] != "BPE":
        raise ValueError(f"not a BPE tokenizer: {data['model']['type']}")
    merges = []
    for m in data["model"]["merges"]:  # "a b" strings (older files) or [a, b] pairs
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((a, b))
    return merges


def as_pretrained_tokenizer_fast(
    tok: tokenizers.Tokenizer, special_token: str = END_OF_TEXT
) -> PreTrainedTokenizerFast:
    """Wrap an HF ``tokenizers.Tokenizer`` for ``transformers`` and TransformerLens.

    bos, eos and pad are all ``special_token`` (as in GPT-2), so TransformerLens's
    ``to_tokens`` prepends it and batches pad with it. Calling the wrapper directly also
    prepends it (``add_bos_token=True``, which TransformerLens needs); pass
    ``add_special_tokens=False`` for the bare ids. We build
    ``PreTrainedTokenizerFast(tokenizer_object=...)`` because in transformers 5
    ``GPT2TokenizerFast(vocab_file=...)`` silently yields an empty tokenizer.
    """
    from transformers import PreTrainedTokenizerFast  # lazy: heavy

    if tok.token_to_id(special_token) is None:
        raise ValueError(f"{special_token!r} is not in the tokenizer's vocabulary")
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special_token, eos_token=special_token,
        pad_token=special_token, add_bos_token=True,
    )  # fmt: skip
    # TransformerLens re-loads a tokenizer from the hub by ``name_or_path`` unless it
    # already adds BOS; a name plus add_bos_token=True keeps it offline and on this object.
    wrapped.init_kwargs.setdefault("name_or_path", "decoding_gpt-bpe")
    if len(wrapped) != tok.get_vocab_size() or len(wrapped) == 0:
        raise RuntimeError(
            f"wrapping lost the vocabulary ({len(wrapped)} vs {tok.get_vocab_size()} tokens)"
        )
    return wrapped


def load_hf_tokenizer(path: str | Path) -> tokenizers.Tokenizer:
    """Read a ``tokenizer.json``; a missing or corrupt file raises a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"{path} is not a valid tokenizer.json: {err}") from err


# --------------------------------------------------------------------------------------
# Zipf's law
# --------------------------------------------------------------------------------------
def token_frequencies(ids: Sequence[int] | Tensor) -> Tensor:
    """Counts of each distinct token, sorted in decreasing order (rank 1 first)."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("no tokens to count")
    return torch.unique(ids, return_counts=True)[1].sort(descending=True).values


def zipf_exponent(counts: Tensor, min_rank: int = 1, max_rank: int | None = None) -> float:
    """Least-squares slope ``s`` of ``log count = c - s log rank`` (Zipf: ``s`` near 1).

    Ranks ``min_rank..max_rank`` (1-based, inclusive) are used; the tail of words seen
    once or twice is flat and usually left out.
    """
    counts = counts.double()
    ranks = torch.arange(1, len(counts) + 1, dtype=torch.float64)
    sl = slice(min_rank - 1, max_rank)
    x, y = ranks[sl].log(), counts[sl].log()
    if len(x) < 2:
        raise ValueError("need at least two ranks to fit a slope")
    x = x - x.mean()
    return float(-(x * (y - y.mean())).sum() / (x * x).sum())
