"""From documents to training data: packed uint16 token arrays and ``datasets.Dataset``.

Training reads one long array of token ids in which documents follow each other, each
one closed by ``<|endoftext|>`` (as in GPT-2 and nanoGPT), and samples random windows
from it. Ids are stored as ``uint16``, which holds any vocabulary up to 65,536.

Arrays are cached as ``.npy`` files (never pickled) in ``$DGPT_CACHE`` or
``~/.cache/decoding_gpt``, under a name that records everything they depend on:
corpus, split, seed, size, generator version, a hash of the tokenizer file and, for
the code corpus, the Python version whose standard library was read.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from jaxtyping import UInt16

from decoding_gpt.data.bpe import eos_id, get_tokenizer, tokenizer_path
from decoding_gpt.data.chants import CHANT_VERSION, chant_story, named_chant_story
from decoding_gpt.data.labels import TokenLabels, align_char_labels
from decoding_gpt.data.stdlib_corpus import code_char_labels, stdlib_documents
from decoding_gpt.data.stories import (
    GENERATOR_VERSION,
    Split,
    Story,
    generate_stories,
    generate_story,
)

if TYPE_CHECKING:
    import datasets

DEFAULT_STORY_TOKENS: dict[str, int] = {"train": 20_000_000, "val": 500_000}
# generated corpora (tokenized with the stories tokenizer) and the story each index gives
STORY_CORPORA: dict[str, Callable[[int, int, Split], Story]] = {
    "stories": generate_story,
    "chant-stories": chant_story,  # decoding_gpt.data.chants
    "named-chant-stories": named_chant_story,  # the same, over the named characters
}
_STORY_CHUNK = 2048  # stories tokenized per encode_batch call
_PARALLEL_TOKENS = 4_000_000  # requests at least this large generate in parallel


def pack(token_lists: Iterable[Sequence[int]], eos_id: int) -> UInt16[np.ndarray, " n"]:
    """Concatenate documents, each followed by ``eos_id``, as one uint16 array."""
    if not 0 <= eos_id < 2**16:
        raise ValueError(f"eos_id {eos_id} does not fit in uint16")
    pieces: list[np.ndarray] = []
    for ids in token_lists:
        arr = np.asarray(ids, dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError(f"each document must be a 1-D list of ids, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
            raise ValueError(f"token ids must lie in [0, 65536), got {arr.min()}..{arr.max()}")
        pieces.append(arr)
        pieces.append(np.array([eos_id], dtype=np.int64))
    if not pieces:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate(pieces).astype(np.uint16)


def cache_dir() -> Path:
    """``$DGPT_CACHE`` if set, else ``~/.cache/decoding_gpt``."""
    return Path(os.environ.get("DGPT_CACHE") or Path.home() / ".cache" / "decoding_gpt")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _cache_path(corpus: str, split: str, n_tokens: int | None, seed: int) -> Path:
    tok = _file_hash(tokenizer_path("stories" if corpus in STORY_CORPORA else corpus))
    if corpus == "stories":
        tag = f"gen{GENERATOR_VERSION}"
    elif corpus in STORY_CORPORA:  # the chant corpora of decoding_gpt.data.chants
        tag = f"gen{GENERATOR_VERSION}-chants{CHANT_VERSION}"
    else:
        tag = f"py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    size = "all" if n_tokens is None else str(n_tokens)
    return cache_dir() / "tokens" / f"{corpus}-{split}-seed{seed}-{size}-{tag}-tok{tok}.npy"


def _encode_story_range(args: tuple[str, int, int, int, Split]) -> np.ndarray:
    """Packed ids of stories ``start .. start + count - 1`` (runs in a worker process)."""
    corpus, start, count, seed, split = args
    tok = get_tokenizer("stories")
    story = STORY_CORPORA[corpus]
    texts = [story(i, seed, split).text for i in range(start, start + count)]
    return pack((e.ids for e in tok.encode_batch(texts)), eos_id(tok))


def _worker_pool(workers: int) -> multiprocessing.pool.Pool:
    """A process pool: fork on Linux (cheap, no re-import of torch), spawn elsewhere."""
    method = "fork" if sys.platform == "linux" else "spawn"
    # Each worker is single-threaded; the variable also silences tokenizers' fork warning.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return multiprocessing.get_context(method).Pool(workers)
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _story_tokens(corpus: str, split: Split, n_tokens: int, seed: int) -> np.ndarray:
    """Generate stories ``0, 1, 2, ...`` of ``(seed, split)`` until ``n_tokens`` are packed.

    Large requests use one process per CPU core. Each story is a pure function of its
    index and chunks are joined in index order, so the result does not depend on the
    number of processes.
    """
    workers = min(os.cpu_count() or 1, 32) if n_tokens >= _PARALLEL_TOKENS else 1
    out = np.empty(n_tokens, dtype=np.uint16)
    filled, index = 0, 0
    pool = None
    if workers > 1:
        pool = _worker_pool(workers)
    try:
        while filled < n_tokens:
            # ~120 tokens a story: do not generate far more stories than the request needs.
            count = min(_STORY_CHUNK, (n_tokens - filled) // 100 + 8)
            jobs = [(corpus, index + k * count, count, seed, split) for k in range(workers)]
            index += workers * count
            chunks = pool.map(_encode_story_range, jobs) if pool else map(_encode_story_range, jobs)
            for chunk in chunks:
                take = min(len(chunk), n_tokens - filled)
                out[filled : filled + take] = chunk[:take]
                filled += take
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return out


def _code_tokens(split: str, seed: int) -> np.ndarray:
    """All documents of the split in a ``seed``-shuffled order, packed."""
    tok = get_tokenizer("code")
    docs = stdlib_documents(split)
    order = np.random.default_rng(seed).permutation(len(docs))
    return pack((e.ids for e in tok.encode_batch([docs[i].text for i in order])), eos_id(tok))


def _cached(path: Path, n_tokens: int | None, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``path`` if present (checking dtype and length), else build and save it."""
    if path.is_file():
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint16 or arr.ndim != 1 or (n_tokens and len(arr) != n_tokens):
            raise ValueError(f"cached token file {path} is corrupt; delete it to rebuild")
        return arr
    arr = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted run never leaves a truncated cache file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(f.name, path)
    return arr


def load_token_array(
    corpus: Literal["stories", "chant-stories", "named-chant-stories", "code"],
    split: Literal["train", "val"],
    n_tokens: int | None = None,
    seed: int = 0,
) -> UInt16[np.ndarray, " n_tokens"]:
    """Packed token ids of a corpus split, built once and then read from the cache.

    ``stories`` (and ``chant-stories``, ``named-chant-stories``:
    :mod:`decoding_gpt.data.chants`): the first stories of the seeded generator, exactly
    ``n_tokens`` ids (default :data:`DEFAULT_STORY_TOKENS`). ``code``: every document of
    the split in a ``seed``-shuffled order (cached whole), cut to ``n_tokens`` if given.
    """
    if corpus not in (*STORY_CORPORA, "code"):
        raise ValueError(f"corpus must be one of {(*STORY_CORPORA, 'code')}, got {corpus!r}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if n_tokens is not None and n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    if corpus in STORY_CORPORA:
        n = DEFAULT_STORY_TOKENS[split] if n_tokens is None else n_tokens
        return _cached(
            _cache_path(corpus, split, n, seed), n, lambda: _story_tokens(corpus, split, n, seed)
        )
    arr = _cached(_cache_path(corpus, split, None, seed), None, lambda: _code_tokens(split, seed))
    if n_tokens is not None and n_tokens > len(arr):
        raise ValueError(
            f"the code {split} split has only {len(arr):,} tokens; asked for {n_tokens:,}"
        )
    return arr if n_tokens is None else arr[:n_tokens]


def as_dataset(
    corpus: Literal["stories", "code"],
    split: Literal["train", "val"],
    n_docs: int | None = None,
    seed: int = 0,
    with_labels: bool = False,
) -> datasets.Dataset:
    """The corpus as a ``datasets.Dataset`` with a ``text`` column (and a ``path`` for code).

    ``with_labels=True`` adds ``input_ids`` and one per-token label column per name
    (stories: :data:`~decoding_gpt.data.stories.LABEL_NAMES`; code:
    :data:`~decoding_gpt.data.stdlib_corpus.CODE_LABEL_NAMES`, ``.py`` files only).
    ``n_docs`` defaults to 1,000 stories, or every code document of the split (in path
    order); ``seed`` picks the stories corpus and is not used for code.
    """
    import datasets  # lazy: slow to import, and only this function needs it

    tok = get_tokenizer(corpus) if with_labels else None
    rows: dict[str, list] = {"text": []}
    if corpus == "stories":
        for story in generate_stories(1000 if n_docs is None else n_docs, seed, split):
            rows["text"].append(story.text)
            if tok is not None:
                _add_labels(rows, align_char_labels(story.text, story.char_labels(), tok))
    elif corpus == "code":
        docs = stdlib_documents(split)
        if with_labels:
            docs = [d for d in docs if d.path.endswith(".py")]
        rows["path"] = []
        for d in docs[:n_docs]:
            rows["text"].append(d.text)
            rows["path"].append(d.path)
            if tok is not None:
                _add_labels(rows, align_char_labels(d.text, code_char_labels(d.text), tok))
    else:
        raise ValueError(f"corpus must be 'stories' or 'code', got {corpus!r}")
    return datasets.Dataset.from_dict(rows)


def _add_labels(rows: dict[str, list], token_labels: TokenLabels) -> None:
    rows.setdefault("input_ids", []).append(token_labels.ids.tolist())
    for name, values in token_labels.labels.items():
        rows.setdefault(name, []).append(values.tolist())
