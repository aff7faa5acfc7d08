"""code-4l's headline measurement: is "inside a string literal" linearly decodable?

Data: the ``.py`` documents of the code corpus's *val* split (never trained on), each
tokenized with the code tokenizer and labelled per token by
``decoding_gpt.data.as_dataset("code", "val", with_labels=True)``. A token's label is
the label of its first non-whitespace character (``decoding_gpt.data.labels``), so a
token straddling a string boundary takes the side it *starts* on: ``'("'`` is outside
(it starts at the bracket), ``'",'`` is inside (it starts at the closing quote), and
quotes and prefixes count as inside (``tokenize``'s STRING token).

Each document gives up to :data:`WINDOWS_PER_DOC` windows of ``n_ctx`` tokens spread
evenly over the file, each moved forward to start *outside* a string: a window that
opens in the middle of a long docstring shows no quote, and whether its tokens are
inside a string cannot be read from the context at all. The first :data:`CONTEXT`
positions of each window are left out as well. At every residual-stream hook
(``blocks.0.hook_resid_pre`` = token + position embedding, then
``blocks.l.hook_resid_post``) a logistic probe (``decoding_gpt.probes``) is fitted on
the tokens of some documents and tested on the tokens of the others
(``split_by_document``: no file on both sides). Reported: test accuracy per hook, the
best, and the majority-class accuracy of the test tokens (the 95 % means something only
well above it); the embedding hook is the token-identity baseline.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from decoding_gpt.activations import collect_activations
from decoding_gpt.probes import accuracy, fit_logistic_probe, split_by_document
from decoding_gpt.transformer import GPT

WINDOWS_PER_DOC = 6
CONTEXT = 16  # positions of each window left out: the model has not seen the quote yet
TEST_FRACTION = 0.3
SEED = 0


@lru_cache(maxsize=1)
def labelled_val_files() -> tuple[tuple[list[int], list[int]], ...]:
    """``(token ids, inside_string per token)`` of each val ``.py`` file, in path order."""
    from decoding_gpt.data import as_dataset

    ds = as_dataset("code", "val", with_labels=True)
    return tuple(zip(ds["input_ids"], ds["inside_string"], strict=True))


def string_windows(
    n_ctx: int, windows_per_doc: int = WINDOWS_PER_DOC
) -> tuple[Int[Tensor, "window pos"], Int[Tensor, "window pos"], Int[Tensor, " window"]]:
    """Token windows of the val ``.py`` files, their inside-string labels, and the
    index of the file each window came from."""
    tokens, labels, source = [], [], []
    for doc, (ids, inside) in enumerate(labelled_val_files()):
        last_start = len(ids) - n_ctx  # files shorter than one window are skipped
        if last_start < 0:
            continue
        starts = np.unique(np.linspace(0, last_start, windows_per_doc).round().astype(int))
        for start in starts.tolist():
            start = _next_start_outside_string(inside, start, last_start)
            if start is None:
                continue
            tokens.append(ids[start : start + n_ctx])
            labels.append(inside[start : start + n_ctx])
            source.append(doc)
    if len(set(source)) < 2:
        raise ValueError(f"need windows of n_ctx={n_ctx} tokens from at least two files")
    return torch.tensor(tokens), torch.tensor(labels), torch.tensor(source)


def _next_start_outside_string(inside: list[int], start: int, last: int) -> int | None:
    """The first position in ``[start, last]`` that begins the file or is outside a string.

    A window starting there shows the opening quote of every string it holds.
    """
    while start <= last:
        if start == 0 or not inside[start]:
            return start
        start += 1
    return None


def evaluate_string_probe(model: GPT) -> dict[str, float]:
    """Held-out accuracy of an inside-string logistic probe at each residual hook."""
    tokens, labels, source = string_windows(model.cfg.n_ctx)
    keep = torch.zeros(tokens.shape, dtype=torch.bool)
    keep[:, CONTEXT:] = True
    hooks = ["blocks.0.hook_resid_pre"]
    hooks += [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    metrics: dict[str, float] = {}
    for i, hook in enumerate(hooks):
        acts = collect_activations(model, tokens, hook, mask=keep, exclude_bos=False)
        y = labels[acts.doc, acts.pos]
        train, test = split_by_document(source[acts.doc], TEST_FRACTION, seed=SEED)
        probe = fit_logistic_probe(acts.acts[train], y[train], n_classes=2)
        metrics[f"string_probe_accuracy_resid_{i}"] = round(
            accuracy(probe, acts.acts[test], y[test]), 4
        )
    y_test = y[test]
    majority = max(float(y_test.float().mean()), 1 - float(y_test.float().mean()))
    per_hook = [metrics[f"string_probe_accuracy_resid_{i}"] for i in range(len(hooks))]
    metrics["inside_string_probe_accuracy"] = max(per_hook)
    metrics["inside_string_best_resid"] = float(int(np.argmax(per_hook)))
    metrics["inside_string_majority_baseline"] = round(majority, 4)
    metrics["inside_string_test_tokens"] = float(int(test.sum()))
    return metrics
