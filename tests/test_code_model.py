"""code-4l's inside-a-string probe evaluation (decoding_gpt.pretrained.string_probe).

References: the stdlib documents re-tokenized here with the code tokenizer, Python's
``ast`` (string-literal spans, independent of ``tokenize``), and an untrained model as
the negative control that the 95 % bar is not met for free.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

from decoding_gpt.data import eos_id, get_tokenizer
from decoding_gpt.data.labels import align_char_labels
from decoding_gpt.data.stdlib_corpus import code_char_labels, split_of, stdlib_documents
from decoding_gpt.pretrained import string_probe
from decoding_gpt.transformer import GPT, GPTConfig

N_CTX = 128


@pytest.fixture(scope="module")
def windows():
    return string_probe.string_windows(N_CTX)


def test_windows_are_labelled_slices_of_val_files(windows):
    """Each window is a slice of a val file (after the EOS that precedes every document
    in training) that begins the file or starts outside a string, labelled per token
    from the text."""
    tokens, labels, source = windows
    docs = [d for d in stdlib_documents("val") if d.path.endswith(".py")]
    assert all(split_of(d.path) == "val" for d in docs)  # never trained on
    tok = get_tokenizer("code")
    assert tokens.shape == labels.shape and tokens.shape[1] == N_CTX
    assert set(labels.unique().tolist()) == {0, 1}
    assert len(source.unique()) >= 10
    file_starts = 0
    for row in range(0, len(tokens), 17):  # a sample of windows, re-derived from the text
        text = docs[int(source[row])].text
        enc = tok.encode(text)
        ids = np.asarray([eos_id(tok), *enc.ids])
        starts = np.flatnonzero(ids[: len(ids) - N_CTX + 1] == int(tokens[row, 0]))
        start = next(s for s in starts if (ids[s : s + N_CTX] == tokens[row].numpy()).all())
        file_starts += start == 0
        inside = code_char_labels(text)["inside_string"]
        token_inside = [0] + [_first_char_label(text, span, inside) for span in enc.offsets]
        # the window starts a file or outside any string: every open quote is in view
        assert start == 0 or token_inside[start] == 0, row
        for k in range(N_CTX):
            assert labels[row, k] == token_inside[start + k], (row, k)
    assert file_starts > 0  # windows at a file's start open with its EOS


def _first_char_label(text: str, span: tuple[int, int], inside) -> int:
    """The label of a token's first non-whitespace character (its first if all blank)."""
    a, b = span
    piece = text[a:b]
    return int(inside[a + len(piece) - len(piece.lstrip()) if piece.strip() else a])


def test_boundary_tokens_take_the_side_they_start_on():
    """Against ``ast``'s string-literal spans: a token is inside iff its first
    non-whitespace character lies in a literal (quotes and prefix included)."""
    source = 'x = f("a b", \'c\') + len(b\'dd\')  # note\ny = [r"""doc"""]\n'
    spans = [
        (node.lineno, node.col_offset, node.end_col_offset)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    ]
    line_start = [0, source.index("\n") + 1]
    in_literal = np.zeros(len(source), dtype=np.int64)
    for line, a, b in spans:
        in_literal[line_start[line - 1] + a : line_start[line - 1] + b] = 1
    labelled = align_char_labels(source, code_char_labels(source), get_tokenizer("code"))
    for span, label in zip(labelled.offsets, labelled.labels["inside_string"], strict=True):
        assert label == _first_char_label(source, span, in_literal), source[span[0] : span[1]]


def test_untrained_model_does_not_pass_the_bar():
    """Negative control: random weights stay below 95 %, and the reported numbers are
    consistent (best = max over hooks, majority baseline in [0.5, 1])."""
    torch.manual_seed(0)
    cfg = GPTConfig(d_vocab=4096, n_ctx=N_CTX, d_model=16, n_layers=1, n_heads=2, d_mlp=32)
    metrics = string_probe.evaluate_string_probe(GPT(cfg).eval())
    hooks = string_probe.residual_stream_hooks(cfg.n_layers)
    assert list(hooks.values()) == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"
    ]  # fmt: skip
    per_hook = {h: metrics[f"string_probe_accuracy_{short}"] for short, h in hooks.items()}
    assert metrics["inside_string_probe_accuracy"] == max(per_hook.values())
    assert per_hook[metrics["inside_string_best_hook"]] == max(per_hook.values())
    assert 0.5 <= metrics["inside_string_majority_baseline"] < 0.95
    assert metrics["inside_string_probe_accuracy"] < 0.95


def test_context_longer_than_every_file_is_an_error():
    with pytest.raises(ValueError, match="at least two files"):
        string_probe.string_windows(10**6)


def test_attention_only_models_have_no_mid_stream():
    """Without an MLP a block's stream after attention is its output: no resid_mid hook."""
    hooks = string_probe.residual_stream_hooks(2, attn_only=True)
    assert hooks == {
        "embed": "blocks.0.hook_resid_pre",
        "post_0": "blocks.0.hook_resid_post",
        "post_1": "blocks.1.hook_resid_post",
    }
