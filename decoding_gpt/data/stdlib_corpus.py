"""Real text every machine has: the Python standard library, with token-level labels.

Documents are the ``.py`` files of the running interpreter's standard library (test
folders, ``site-packages`` and machine-specific files left out) plus the English
reference prose of ``pydoc_data.topics`` (one document per topic). Each document has a
stable *path* (relative, ``/``-separated, e.g. ``"json/decoder.py"`` or
``"pydoc_data/topics/lambda"``), and the train/val split is a function of that path
alone: a document is in ``val`` when ``sha256(path)``, read as a fraction of
``2**64``, is below :data:`VAL_FRACTION`. The split never mixes parts of one file
across train and val, and a file keeps its side on every machine. The *contents* of
the standard library change between Python versions (files added, removed or
edited), so corpus sizes, cached token arrays and the code tokenizer's training text
are tied to the Python version; :func:`fingerprint` names the exact set.

:func:`code_char_labels` labels every character of a source file from Python's own
``tokenize``: inside a string literal (quotes and prefix included), inside a comment,
bracket depth, and indentation level.
"""

from __future__ import annotations

import hashlib
import io
import os
import sysconfig
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from jaxtyping import Int

VAL_FRACTION = 0.05
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
CODE_LABEL_NAMES: tuple[str, ...] = (
    "inside_string",
    "inside_comment",
    "bracket_depth",
    "indent_level",
)
_OPEN, _CLOSE = "([{", ")]}"


@dataclass(frozen=True)
class SourceDoc:
    """One document of the code corpus."""

    path: str
    text: str


def split_of(path: str, val_fraction: float = VAL_FRACTION) -> str:
    """``"val"`` or ``"train"``, decided by the hash of ``path`` alone."""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return "val" if h < val_fraction * 2**64 else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _keep(rel: Path) -> bool:
    if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
        return False
    name = rel.name
    # _sysconfigdata_* holds this machine's build paths; topics.py is added as prose.
    return not (
        name.startswith("test_")
        or name.startswith("_sysconfigdata")
        or rel.as_posix() == "pydoc_data/topics.py"
    )


def _read_source(path: Path) -> str | None:
    """Decode a source file the way Python does (PEP 263 cookie); None if undecodable."""
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (SyntaxError, UnicodeDecodeError):
        return None


@lru_cache(maxsize=1)
def _all_documents() -> tuple[SourceDoc, ...]:
    root = stdlib_root()
    docs = []
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune while walking: site-packages alone can be larger than the stdlib.
        dirnames[:] = [
            d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("config-")
        ]
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        rel = file.relative_to(root)
        if _keep(rel) and (text := _read_source(file)) is not None:
            docs.append(SourceDoc(rel.as_posix(), text))
    from pydoc_data.topics import topics  # lazy: a large module, read once

    docs.extend(SourceDoc(f"pydoc_data/topics/{key}", topics[key]) for key in sorted(topics))
    return tuple(docs)


def stdlib_documents(split: str | None = None) -> list[SourceDoc]:
    """Documents of ``split`` (``"train"``, ``"val"`` or None for all), sorted by path."""
    if split not in ("train", "val", None):
        raise ValueError(f"split must be 'train', 'val' or None, got {split!r}")
    return [d for d in _all_documents() if split is None or split_of(d.path) == split]


def fingerprint(docs: list[SourceDoc]) -> str:
    """sha256 over (path, text) of the documents: equal iff the corpus is identical."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.path.encode() + b"\0" + hashlib.sha256(d.text.encode()).digest())
    return h.hexdigest()


def _line_starts(source: str) -> list[int]:
    """Character offset of each line start, splitting on "\\n" exactly like tokenize."""
    starts = [0]
    pos = source.find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = source.find("\n", pos + 1)
    return starts


def _char_offset(line_starts: list[int], n_chars: int, row_col: tuple[int, int]) -> int:
    """Character offset of a ``tokenize`` (row, col) position."""
    row, col = row_col
    # tokenize may report a row past the last line (a final DEDENT or ENDMARKER).
    return n_chars if row > len(line_starts) else min(line_starts[row - 1] + col, n_chars)


def _located_tokens(source: str) -> list[tuple[tokenize.TokenInfo, int, int]]:
    """``tokenize``'s tokens of ``source``, each with its ``[start, end)`` character offsets.

    Raises ``ValueError`` if the source does not tokenize.
    """
    starts, n = _line_starts(source), len(source)
    try:
        return [
            (tok, _char_offset(starts, n, tok.start), _char_offset(starts, n, tok.end))
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        ]
    except (tokenize.TokenError, SyntaxError) as err:
        raise ValueError(f"source does not tokenize: {err}") from err


def _literal_spans(tokens: list[tuple[tokenize.TokenInfo, int, int]]) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of the string literals among located tokens."""
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    spans: list[tuple[int, int]] = []
    fstring_depth, fstring_from = 0, 0
    for tok, s, e in tokens:
        if fstring_start is not None and tok.type == fstring_start:
            if fstring_depth == 0:
                fstring_from = s
            fstring_depth += 1
        elif fstring_end is not None and tok.type == fstring_end:
            fstring_depth -= 1
            if fstring_depth == 0:
                spans.append((fstring_from, e))
        elif tok.type == tokenize.STRING and fstring_depth == 0:
            spans.append((s, e))
    return spans


def string_literal_spans(source: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of the string literals of ``source``, in order.

    A literal is one ``tokenize`` STRING token, prefix and quotes included (on Python
    >= 3.12 an f-string from its FSTRING_START to its FSTRING_END, ``{...}`` fields
    included). Implicitly concatenated literals (``'a' 'b'``, even ``'a''b'``) are
    separate spans. Raises ``ValueError`` if the source does not tokenize.
    """
    return _literal_spans(_located_tokens(source))


def code_char_labels(source: str) -> dict[str, Int[np.ndarray, " n_chars"]]:
    """Per-character labels of Python source from ``tokenize``.

    * ``inside_string``: 1 on a string literal (:func:`string_literal_spans`: prefix and
      quotes included; an f-string counts whole, its ``{...}`` fields too);
    * ``inside_comment``: 1 on a ``#`` comment token;
    * ``bracket_depth``: number of brackets open around the character; a bracket
      character itself counts as outside the pair it opens or closes;
    * ``indent_level``: number of INDENT tokens in force, counted from the start of the
      line that carries the INDENT/DEDENT token (tokenize emits those only on lines with
      code, so a comment-only or blank line keeps the level of the code above it).

    Raises ``ValueError`` if the source does not tokenize.
    """
    n = len(source)
    tokens = _located_tokens(source)
    # Each label is a running sum of +/-1 steps placed at character positions.
    steps = {name: np.zeros(n + 1, dtype=np.int64) for name in CODE_LABEL_NAMES}
    for s, e in _literal_spans(tokens):
        steps["inside_string"][s] += 1
        steps["inside_string"][e] -= 1
    in_string = np.cumsum(steps["inside_string"])
    starts = _line_starts(source)
    for tok, s, e in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.OP) and in_string[s]:
            continue  # inside an f-string's {...} field: part of the string
        if tok.type == tokenize.COMMENT:
            steps["inside_comment"][s] += 1
            steps["inside_comment"][e] -= 1
        elif tok.type == tokenize.OP and tok.string in _OPEN:
            steps["bracket_depth"][s + 1] += 1
        elif tok.type == tokenize.OP and tok.string in _CLOSE:
            steps["bracket_depth"][s] -= 1
        elif tok.type in (tokenize.INDENT, tokenize.DEDENT):
            line = _char_offset(starts, n, (tok.start[0], 0))
            steps["indent_level"][line] += 1 if tok.type == tokenize.INDENT else -1
    return {name: np.cumsum(arr)[:n] for name, arr in steps.items()}
