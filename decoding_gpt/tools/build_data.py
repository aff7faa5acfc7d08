"""Rebuild the shipped tokenizers: ``python -m decoding_gpt.tools.build_data [--out DIR]``.

The build is deterministic: the stories tokenizer is trained on the first
:data:`N_STORY_DOCS` stories of ``(seed=0, split="train")`` and the code tokenizer on the
train split of the standard library, both with digit pairs marked (see
:mod:`decoding_gpt.data.bpe`). ``manifest.json`` beside the tokenizers records the
vocabulary sizes, a hash of each training text and, for code, the Python version and
corpus fingerprint, because the standard library differs between Python versions: a
rebuild on another version gives a slightly different code tokenizer.

After training, :func:`check_tokenizer` verifies the properties the lectures rely on
(every character name and every town one token with a leading space; years split into
``" 17"`` + ``"32"``) and the build fails if one does not hold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer

from decoding_gpt.data.bpe import (
    CORPORA,
    TOKENIZER_DIR,
    VOCAB_SIZES,
    digit_pair_pre_tokenizer,
    mark_digit_pairs,
)
from decoding_gpt.data.stdlib_corpus import stdlib_documents
from decoding_gpt.data.stories import (
    CENTURIES,
    IOI_OBJECTS,
    KEY_OBJECTS,
    PLACES,
    generate_stories,
)
from decoding_gpt.data.world import CHARACTERS, COLORS, PETS, RIVERS, TOWNS
from decoding_gpt.tokenizer import train_hf_bpe
from decoding_gpt.tools import prog

N_STORY_DOCS = 3000


def training_texts(corpus: str) -> list[str]:
    """The exact texts (digit pairs marked) the tokenizer of ``corpus`` is trained on."""
    if corpus == "stories":
        return [mark_digit_pairs(s.text) for s in generate_stories(N_STORY_DOCS, seed=0)]
    if corpus == "code":
        return [mark_digit_pairs(d.text) for d in stdlib_documents("train")]
    raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")


def texts_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def build_tokenizer(corpus: str, texts: list[str] | None = None) -> Tokenizer:
    """Train the tokenizer of ``corpus`` and install the digit-pair pre-tokenizer."""
    texts = training_texts(corpus) if texts is None else texts
    tok = train_hf_bpe(texts, VOCAB_SIZES[corpus])
    tok.pre_tokenizer = digit_pair_pre_tokenizer()
    return tok


def single_token_words(tok: Tokenizer, words: list[str]) -> list[str]:
    """The words of ``words`` that do NOT encode to exactly one token."""
    return [w for w in words if len(tok.encode(w).ids) != 1]


def check_tokenizer(tok: Tokenizer, corpus: str) -> list[str]:
    """Problems with the tokenizer (an empty list when all is well)."""
    problems = []
    if bad := single_token_words(tok, [f"{yy:02d}" for yy in range(100)]):
        problems.append(f"not single tokens: {bad}")
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(" 1732")]
    if pieces != ["Ġ17", "32"]:
        problems.append(f"' 1732' pre-tokenizes to {pieces}")
    if corpus == "stories":
        if bad := single_token_words(tok, [f" {c}" for c in CENTURIES]):
            problems.append(f"not single tokens: {bad}")
        words = [c.name for c in CHARACTERS] + list(TOWNS + PETS + COLORS + RIVERS)
        words += list(PLACES + IOI_OBJECTS + KEY_OBJECTS)
        if bad := single_token_words(tok, [" " + w for w in words]):
            problems.append(f"not single tokens: {bad}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=prog("decoding_gpt.tools.build_data"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=TOKENIZER_DIR)
    parser.add_argument("--corpus", choices=[*CORPORA, "all"], default="all")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for corpus in CORPORA if args.corpus == "all" else (args.corpus,):
        texts = training_texts(corpus)
        tok = build_tokenizer(corpus, texts)
        if problems := check_tokenizer(tok, corpus):
            raise SystemExit(f"{corpus} tokenizer fails its checks: {problems}")
        path = args.out / f"{corpus}.json"
        path.write_text(tok.to_str() + "\n")
        entry = {
            "vocab_size": tok.get_vocab_size(),
            "target_vocab_size": VOCAB_SIZES[corpus],
            "n_training_docs": len(texts),
            "training_chars": sum(len(t) for t in texts),
            "training_sha256": texts_sha256(texts),
            "tokenizer_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        if corpus == "code":
            entry["python"] = ".".join(map(str, sys.version_info[:3]))
        manifest[corpus] = entry
        print(f"{corpus}: vocab {entry['vocab_size']}, {path.stat().st_size:,} bytes -> {path}")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
