"""Tests for the standard-library corpus: the split by file, tokenize labels, the code
tokenizer."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tokenize

import numpy as np
import pytest

from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.bpe import TOKENIZER_DIR
from decoding_gpt.data.labels import align_char_labels
from decoding_gpt.data.stdlib_corpus import (
    CODE_LABEL_NAMES,
    code_char_labels,
    split_of,
    stdlib_documents,
)
from decoding_gpt.tools.build_data import check_tokenizer, texts_sha256, training_texts

SNIPPET = '''import os  # the os module


def f(x, y=(1, [2])):
    """Doc (not a bracket)."""
    if x:
        # nested comment
        return {"k": x}
    return y
'''


@pytest.fixture(scope="module")
def docs():
    return stdlib_documents()


def test_split_is_by_file_disjoint_and_stable(docs):
    train, val = stdlib_documents("train"), stdlib_documents("val")
    train_paths, val_paths = {d.path for d in train}, {d.path for d in val}
    assert train_paths.isdisjoint(val_paths)
    assert train_paths | val_paths == {d.path for d in docs}
    assert len(docs) == len({d.path for d in docs})  # one document per file
    # The split is a function of the path alone: recompute it from sha256 here.
    for d in val:
        h = int.from_bytes(hashlib.sha256(d.path.encode()).digest()[:8], "big")
        assert h < 0.05 * 2**64
    assert 0.02 < len(val) / len(docs) < 0.1
    assert split_of("json/decoder.py") == split_of("json/decoder.py")


def test_documents_exclude_tests_and_include_topics(docs):
    paths = [d.path for d in docs]
    assert not any(set(p.split("/")[:-1]) & {"test", "tests", "idle_test"} for p in paths)
    assert not any(p.startswith("_sysconfigdata") for p in paths)
    assert "json/decoder.py" in paths and "pydoc_data/topics/lambda" in paths
    n_py = sum(p.endswith(".py") for p in paths)
    assert paths[:n_py] == sorted(paths[:n_py]) and paths[n_py:] == sorted(paths[n_py:])
    assert all(p.startswith("pydoc_data/topics/") for p in paths[n_py:])
    with pytest.raises(ValueError, match="split"):
        stdlib_documents("test")


def _reference_labels(source: str) -> dict[str, list[int]]:
    """Independent per-character labels: walk Python's tokenize with (row, col) spans."""
    lines = source.split("\n")
    n = len(source)
    label = {name: [0] * n for name in CODE_LABEL_NAMES}

    def pos(row: int, col: int) -> int:
        return sum(len(line) + 1 for line in lines[: row - 1]) + col

    depth, level = 0, 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        s, e = pos(*tok.start), pos(*tok.end)
        if tok.type == tokenize.STRING:
            label["inside_string"][s:e] = [1] * (e - s)
        if tok.type == tokenize.COMMENT:
            label["inside_comment"][s:e] = [1] * (e - s)
        if tok.string in "([{" and tok.type == tokenize.OP:
            label["bracket_depth"][s + 1 :] = [depth + 1] * (n - s - 1)
            depth += 1
        if tok.string in ")]}" and tok.type == tokenize.OP:
            depth -= 1
            label["bracket_depth"][s:] = [depth] * (n - s)
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            level += 1 if tok.type == tokenize.INDENT else -1
            start = pos(tok.start[0], 0)
            label["indent_level"][start:] = [level] * (n - start)
    return label


def test_code_labels_match_tokenize_on_snippet():
    labels = code_char_labels(SNIPPET)
    reference = _reference_labels(SNIPPET)
    for name in CODE_LABEL_NAMES:
        assert labels[name].tolist() == reference[name], name


def test_code_labels_by_hand():
    labels = code_char_labels(SNIPPET)

    def at(fragment: str, name: str) -> int:
        return int(labels[name][SNIPPET.index(fragment)])

    assert at("# the os", "inside_comment") == 1 and at("import", "inside_comment") == 0
    assert at("Doc (not", "inside_string") == 1 and at('"k"', "inside_string") == 1
    assert at("(not a bracket)", "bracket_depth") == 0  # a paren inside a string
    assert at("[2]", "bracket_depth") == 2 and at("2]", "bracket_depth") == 3
    assert at("x, y=", "bracket_depth") == 1 and at("def", "bracket_depth") == 0
    assert at("if x", "indent_level") == 1 and at("return {", "indent_level") == 2
    assert at("return y", "indent_level") == 1


def test_code_labels_on_a_real_file_and_bad_source(docs):
    doc = next(d for d in docs if d.path == "json/decoder.py")
    labels = code_char_labels(doc.text)
    assert all(len(v) == len(doc.text) for v in labels.values())
    assert labels["bracket_depth"].min() == 0 and labels["indent_level"].min() == 0
    assert labels["inside_string"].any() and labels["inside_comment"].any()
    with pytest.raises(ValueError, match="tokenize"):
        code_char_labels('x = """never closed\n')


def test_code_token_labels_align(docs):
    tok = get_tokenizer("code")
    lt = align_char_labels(SNIPPET, code_char_labels(SNIPPET), tok)
    assert lt.ids.tolist() == tok.encode(SNIPPET).ids
    for (a, b), in_str in zip(lt.offsets.tolist(), lt.labels["inside_string"], strict=True):
        if SNIPPET[a:b].strip() == "Doc":
            assert in_str == 1
        if SNIPPET[a:b].strip() == "def":
            assert in_str == 0


def test_shipped_code_tokenizer():
    tok = get_tokenizer("code")
    assert check_tokenizer(tok, "code") == []
    assert tok.decode(tok.encode(SNIPPET).ids) == SNIPPET
    assert np.unique(tok.encode(SNIPPET).ids).size > 10
    manifest = json.loads((TOKENIZER_DIR / "manifest.json").read_text())["code"]
    shipped = (TOKENIZER_DIR / "code.json").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == manifest["tokenizer_sha256"]
    assert tok.get_vocab_size() == manifest["vocab_size"]


def test_code_training_text_matches_manifest_on_same_python():
    manifest = json.loads((TOKENIZER_DIR / "manifest.json").read_text())["code"]
    if manifest["python"] != ".".join(map(str, sys.version_info[:3])):
        pytest.skip(f"code tokenizer was built on Python {manifest['python']}")
    assert texts_sha256(training_texts("code")) == manifest["training_sha256"]
