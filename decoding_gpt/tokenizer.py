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
  Special tokens (``<|endoftext|>``) get ids of their own and are never split or merged;
  :meth:`BytePairEncoding.encode_iterable` encodes a stream (a file) in flat memory.

For production use, :func:`train_hf_bpe` trains the same algorithm with HF ``tokenizers``
(Rust, ~1000x faster) and :func:`as_pretrained_tokenizer_fast` wraps it for
``transformers`` and TransformerLens (``to_tokens``/``to_string``/``to_str_tokens``).

Tests check our BPE against HF ``tokenizers`` trained on the same corpus with the same
pre-tokenisation (``tests/test_tokenizer.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
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


def tie_break_key(pair: tuple[int, int]) -> tuple[int, int]:
    """Sort key that breaks ties between equally frequent pairs in BPE training.

    Among the pairs with the highest count, training merges the one with the SMALLEST key.
    A byte (id < 256) ranks by its printable character (:func:`bytes_to_unicode`), so
    ``'e'`` comes before ``'Ġ'`` (the space, shifted to code point 288) although byte 32
    < byte 101; a merged token (id >= 256) ranks after every byte, older merges first.
    This is HF ``tokenizers``' rule (the smallest pair of its vocabulary ids), which is
    why our trainer and theirs learn the same merge list.
    """
    rank = _printable_rank()
    a, b = (rank[i] if i < 256 else i for i in pair)
    return a, b


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
    ``256 + k`` from the pair ``merges[k]``; special token ``j`` (if any) gets id
    ``256 + len(merges) + j``, after every merge. Training, on the multiset of pre-tokens:

        repeat until vocab_size: find the most frequent adjacent pair (a, b), counted
        at every position of every pre-token times the pre-token's frequency (so
        ``"aaa"`` holds ``(a, a)`` twice, as in HF ``tokenizers``), and replace its
        non-overlapping occurrences, left to right, by a new token everywhere
        (:func:`merge_pair`: ``"aaa"`` becomes ``[aa, a]``); then count again.

    Ties between equally frequent pairs go to the smallest :func:`tie_break_key`: bytes
    ordered as their printable characters (see :func:`bytes_to_unicode`; so ``'e'`` comes
    before ``'Ġ'``, the space) and merged tokens after all bytes, by age. That is HF
    ``tokenizers``' rule (smallest pair of its ids), so both trainers learn the same merge
    list on the same corpus (tested). Encoding a new string
    replays the merges in training order inside each pre-token, which is what GPT-2 does.
    Every byte string is encodable, so ``decode(encode(s)) == s`` for any ``s``.

    **Special tokens** (e.g. ``"<|endoftext|>"``, the document separator) are control
    symbols, not text. The rules, for encoding and training alike:

    1. *Split on special tokens first*, before pre-tokenisation and merges. Each
       occurrence becomes its own id; only the text between occurrences is pre-tokenised
       and merged. Otherwise GPT-2's pattern would cut ``"<|endoftext|>"`` into ``"<|"``,
       ``"endoftext"``, ``"|>"``, merges could fuse its bytes with its neighbours (``" <|"``),
       the model would never see the separator's id, and training would count pairs
       that straddle a document boundary (and learn merges of the marker's own bytes).
       So no merge ever crosses a special token's boundary, and training counts no pair
       across one.
    2. *Longest first* where specials overlap: at each position the longest special that
       matches wins, and matches are taken left to right (HF ``tokenizers``' leftmost-
       longest rule). With ``"<|endoftext|>"`` and ``"<|endoftext|><|endoftext|>"`` both
       special, the doubled string is one token. Shortest first would make the longer
       special unreachable: its id could never be produced.

    With no special tokens, the ids and merges are exactly those of plain byte-level BPE.
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]] = (),
        pattern: str = GPT2_PATTERN,
        *,
        special_tokens: Sequence[str] = (),
    ) -> None:
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        self.merges: list[tuple[int, int]] = []
        self.ranks: dict[tuple[int, int], int] = {}
        self.vocab: list[bytes] = [bytes([b]) for b in range(256)]
        self.merge_counts: list[int] = []  # pair frequency at the time of each merge
        self.special_tokens: list[str] = []
        self.special_ids: dict[str, int] = {}
        self._special_regex: regex.Pattern[str] | None = None
        self._special_prefixes: set[str] = set()  # proper prefixes of the specials
        for a, b in merges:
            self._add_merge((int(a), int(b)))
        self._add_specials(special_tokens)
        self._cache: dict[str, list[int]] = {}

    @staticmethod
    def _check_specials(special_tokens: Sequence[str]) -> list[str]:
        """Validate a list of special tokens: strings, non-empty, no duplicates."""
        if isinstance(special_tokens, str):
            raise TypeError(
                f"special_tokens must be a list of strings, not the string {special_tokens!r}"
            )
        specials = list(special_tokens)
        for j, s in enumerate(specials):
            if not isinstance(s, str):
                raise TypeError(f"special token {j} is {s!r}, not a string")
            if not s:
                raise ValueError(f"special token {j} is the empty string")
            if s in specials[:j]:
                raise ValueError(f"special token {s!r} is duplicated (position {j})")
        return specials

    def _add_specials(self, special_tokens: Sequence[str]) -> None:
        specials = self._check_specials(special_tokens)
        for s in specials:
            self.special_ids[s] = len(self.vocab)
            self.vocab.append(s.encode("utf-8"))
        self.special_tokens = specials
        if specials:
            # longest first, so an alternation tried in order takes the longest at each spot
            longest_first = sorted(specials, key=len, reverse=True)
            self._special_regex = regex.compile("|".join(map(regex.escape, longest_first)))
            self._special_prefixes = {s[:k] for s in specials for k in range(1, len(s))}

    def _add_merge(self, pair: tuple[int, int], count: int = 0) -> int:
        if self.special_tokens:
            raise RuntimeError("merges come before the special tokens' ids; add them first")
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
        """Bytes, merges and special tokens together."""
        return len(self.vocab)

    def split_special(self, text: str) -> list[tuple[str, bool]]:
        """Cut ``text`` at its special tokens (rule 1; longest first, rule 2).

        Returns ``(piece, is_special)`` pairs in order; empty ordinary pieces are left out.
        ``split_special("a<|endoftext|>b")`` is ``[("a", False), ("<|endoftext|>", True),
        ("b", False)]`` when ``"<|endoftext|>"`` is special.
        """
        return [(text[a:b], sid is not None) for a, b, sid in self._segments(text)]

    def _segments(self, text: str) -> Iterator[tuple[int, int, int | None]]:
        """``(start, end, special id or None)`` of the special tokens and the text between."""
        pos = 0
        if self._special_regex is not None:
            for m in self._special_regex.finditer(text):
                if m.start() > pos:
                    yield pos, m.start(), None
                yield m.start(), m.end(), self.special_ids[m.group()]
                pos = m.end()
        if pos < len(text):
            yield pos, len(text), None

    def _pieces(self, text: str) -> Iterator[tuple[int, int, int | None]]:
        """``(start, end, special id or None)`` of every special token and pre-token."""
        for a, b, sid in self._segments(text):
            if sid is not None:
                yield a, b, sid
            else:
                for m in self._regex.finditer(text[a:b]):
                    yield a + m.start(), a + m.end(), None

    @classmethod
    def train(
        cls,
        text_or_texts: str | Iterable[str],
        vocab_size: int,
        pattern: str = GPT2_PATTERN,
        *,
        special_tokens: Sequence[str] = (),
    ) -> BytePairEncoding:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges (fewer if pairs run out).

        ``vocab_size`` counts the 256 bytes, the merges and the special tokens. The text is
        split on the special tokens first (rule 1 of the class docstring), so no pair is
        counted across one and the specials' own bytes are never merged.

        Pair counts are updated incrementally: after merging (a, b) only the pre-tokens
        that contained it are recounted, which keeps training on ~100 kB of text to
        seconds in pure Python.
        """
        specials = cls._check_specials(special_tokens)
        if vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size {vocab_size} is too small: the 256 bytes and {len(specials)} "
                f"special tokens need at least {256 + len(specials)}"
            )
        bpe = cls(pattern=pattern)
        splitter = cls(pattern=pattern, special_tokens=specials)
        chunks = Counter(
            t[a:b]
            for t in _texts(text_or_texts)
            for a, b, sid in splitter._pieces(t)
            if sid is None
        )
        words = [list(c.encode("utf-8")) for c in chunks]
        freqs = list(chunks.values())
        counts = _pair_counts(words, freqs)
        where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of words holding it
        for w, word in enumerate(words):
            for pair in zip(word, word[1:], strict=False):
                where.setdefault(pair, set()).add(w)
        while bpe.vocab_size < vocab_size - len(specials) and counts:
            pair, count = min(counts.items(), key=lambda kv: (-kv[1], tie_break_key(kv[0])))
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
        bpe._add_specials(specials)
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

    def _encode_pieces(self, text: str, pieces: Iterable[tuple[int, int, int | None]]) -> list[int]:
        out: list[int] = []
        for a, b, sid in pieces:
            if sid is None:
                out.extend(self._encode_chunk(text[a:b]))
            else:
                out.append(sid)
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``: split on special tokens, pre-tokenise the rest, replay merges."""
        if self._special_regex is None:  # the plain path, as before special tokens existed
            return [i for chunk in self._regex.findall(text) for i in self._encode_chunk(chunk)]
        return self._encode_pieces(text, self._pieces(text))

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Encode a stream of strings (e.g. an open file: its lines) lazily.

        Yields exactly ``encode("".join(texts))``, while holding only a short tail of the
        text: after each item, the pieces (special tokens and pre-tokens) that more text
        cannot change are encoded and yielded; the rest waits for the next item. What can
        still change is (a) the last pre-token (``"hel"`` may continue as ``"hello"``; a
        whitespace run may give its last space to the next word) and (b) any tail that is
        a proper prefix of a special token (``"<|endof"`` may become ``"<|endoftext|>"``;
        a complete ``"<|endoftext|>"`` may grow into a longer special). Pieces are never
        cut, so a piece overlapping that tail waits too. Memory stays flat unless a single
        pre-token is huge. This relies on the pattern's matches other than the last not
        depending on later text, which holds for ``GPT2_PATTERN`` (tested).
        """
        tail = ""
        for item in texts:
            if not item:
                continue
            text = tail + item
            pieces = list(self._pieces(text))
            unstable = self._unstable_from(text, pieces)
            cut = next((a for a, b, _ in pieces if b > unstable), len(text))
            yield from self._encode_pieces(text, (p for p in pieces if p[1] <= cut))
            tail = text[cut:]
        if tail:
            yield from self.encode(tail)

    def _unstable_from(self, text: str, pieces: list[tuple[int, int, int | None]]) -> int:
        """First position of ``text`` whose piece more text could change (see above)."""
        unstable = len(text)
        if pieces and pieces[-1][2] is None:
            unstable = pieces[-1][0]
        if self._special_prefixes:
            longest = max(map(len, self._special_prefixes))
            for p in range(max(0, len(text) - longest), unstable):
                if text[p:] in self._special_prefixes:
                    return p
        return unstable

    def decode(self, ids: Sequence[int]) -> str:
        """Concatenate the tokens' bytes and decode UTF-8 (invalid bytes become U+FFFD).

        A special token's id decodes to its own text.
        """
        _check_ids(ids, self.vocab_size)
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_strings(self) -> list[str]:
        """Every token in GPT-2's printable byte alphabet (e.g. ``'Ġthe'``); specials as is."""
        table = bytes_to_unicode()
        n = 256 + len(self.merges)
        return ["".join(table[b] for b in token) for token in self.vocab[:n]] + self.special_tokens

    def merge_strings(self) -> list[tuple[str, str]]:
        """The merges as pairs of printable strings, the format of HF's ``merges``."""
        strings = self.token_strings()
        return [(strings[a], strings[b]) for a, b in self.merges]

    def to_hf(self) -> tokenizers.Tokenizer:
        """The same tokenizer as an HF ``tokenizers.Tokenizer`` (same ids, same merges).

        Special tokens become HF added special tokens, which HF also matches leftmost-
        longest before pre-tokenisation; they get the same ids, after the merges.
        """
        if self.pattern != GPT2_PATTERN:
            raise ValueError("to_hf needs the GPT-2 pre-tokenisation pattern")
        strings = self.token_strings()[: 256 + len(self.merges)]
        model = models.BPE(vocab={s: i for i, s in enumerate(strings)}, merges=self.merge_strings())
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if self.special_tokens:
            tok.add_special_tokens(self.special_tokens)
            for s, i in self.special_ids.items():
                if tok.token_to_id(s) != i:
                    raise RuntimeError(
                        f"HF gave special token {s!r} id {tok.token_to_id(s)}, not {i}"
                    )
        return tok

    def save(self, path: str | Path) -> None:
        """Write the merges, pattern and special tokens as JSON."""
        data = {
            "type": "BytePairEncoding",
            "pattern": self.pattern,
            "merges": self.merges,
            "special_tokens": self.special_tokens,
        }
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> BytePairEncoding:
        """Read a file written by :meth:`save` (files without special tokens load too)."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("type") != "BytePairEncoding":
                raise ValueError(f"type is {data.get('type')!r}")
            merges = [(int(a), int(b)) for a, b in data["merges"]]
            pattern = data["pattern"]
            specials = data.get("special_tokens", [])
            if not isinstance(specials, list):
                raise TypeError(f"special_tokens is {specials!r}, not a list")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path} is not a BytePairEncoding file: {err}") from err
        return cls(merges, pattern=pattern, special_tokens=specials)


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
