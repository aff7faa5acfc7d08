"""code-4l's headline measurement: is "inside a string literal" linearly decodable?

Data: the ``.py`` files of the code corpus's *val* split (never trained on), tokenized
with the code tokenizer; the string literals are ``tokenize``'s
(:func:`~decoding_gpt.data.stdlib_corpus.string_literal_spans`, quotes and prefix
included).

Label: a token is *inside* when the text just after it is inside a literal, i.e. when
a literal is open at the boundary between this token and the next. That is the state a
causal model has to carry at the token's position: it has read the token whole, and
what may come next depends on whether a string is open. A token wholly in a literal or
wholly in code takes the side of its characters; a token holding a quote takes the
side it leaves the text on: ``'("'`` and an opening ``' "'`` are inside, ``'",'`` and a
closing ``'"'`` outside.

The data set's per-token label (``as_dataset("code", ..., with_labels=True)``,
:mod:`decoding_gpt.data.labels`) anchors a token on its *first* non-whitespace
character instead, which puts every quote inside, the closing one too (it belongs to
the STRING token), and ``'("'`` outside: at those tokens it asks the probe for the state
*before* the token. For comparison the probe at the best hook is also scored on that
label (``inside_string_first_char_label_accuracy``).

Windows: each file, preceded by the EOS token as in the packed training stream, is cut
into windows of ``n_ctx`` tokens starting every ``n_ctx - CONTEXT`` tokens (and one flush
with the file's end), each moved forward to the next boundary where no literal is open:
a window opening in the middle of a long docstring shows no quote, and whether its
tokens are inside a string cannot be read from the context at all. The first
:data:`CONTEXT` positions of each window are left out, so the scored positions cover
each file about once. At every point of the residual stream
(:func:`residual_stream_hooks`: ``blocks.0.hook_resid_pre`` = token + position
embedding, then in each layer ``blocks.l.hook_resid_mid`` after attention and
``blocks.l.hook_resid_post`` after the MLP) a logistic probe (``decoding_gpt.probes``) is
cross-validated over :data:`N_FOLDS` folds of files (``cross_validated_accuracy``: each
file is held out once, never on both sides). Reported: held-out accuracy per hook, the
best and its hook, and the majority-class accuracy (the 95 % means something only well
above it); the embedding hook is the token-identity baseline.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Int
from tokenizers import Tokenizer
from torch import Tensor

from decoding_gpt.activations import collect_activations
from decoding_gpt.data import eos_id, get_tokenizer
from decoding_gpt.data.labels import align_char_labels
from decoding_gpt.data.stdlib_corpus import stdlib_documents, string_literal_spans
from decoding_gpt.hooks import hook_name
from decoding_gpt.probes import cross_validated_accuracy
from decoding_gpt.transformer import GPT

CONTEXT = 16  # positions of each window left out: the model has not seen the quote yet
N_FOLDS = 5  # every val file is held out once: 39 files, ~8 a fold


class LabelledFile(NamedTuple):
    """One val file: token ids and two inside-a-string labels per token."""

    ids: list[int]
    inside: list[int]  # a literal is open just after the token
    inside_first_char: list[int]  # the token's first non-blank character is in one


class StringWindows(NamedTuple):
    """Token windows of the val files with both labels, and each window's file index."""

    tokens: Int[Tensor, "window pos"]
    inside: Int[Tensor, "window pos"]
    inside_first_char: Int[Tensor, "window pos"]
    source: Int[Tensor, " window"]


def open_after(
    token_ends: Int[np.ndarray, " n_tokens"], spans: list[tuple[int, int]]
) -> Int[np.ndarray, " n_tokens"]:
    """1 where the boundary after a token lies strictly inside a literal.

    With the literals as sorted, disjoint character spans ``[start, stop)``, the boundary
    at character offset ``b`` is inside one iff ``start < b < stop`` for the last literal
    that starts before ``b``: ``b == start`` is just before its opening quote, ``b == stop``
    just after its closing one.
    """
    if not spans:
        return np.zeros(len(token_ends), dtype=np.int64)
    starts, stops = np.asarray(spans, dtype=np.int64).T
    last = np.searchsorted(starts, token_ends, side="left") - 1
    return ((last >= 0) & (token_ends < stops[np.maximum(last, 0)])).astype(np.int64)


def label_source(text: str, tokenizer: Tokenizer) -> LabelledFile:
    """Tokenize Python source and give each token both inside-a-string labels."""
    spans = string_literal_spans(text)
    char_inside = np.zeros(len(text), dtype=np.int64)  # code_char_labels' inside_string
    for start, stop in spans:
        char_inside[start:stop] = 1
    labelled = align_char_labels(text, {"inside_string": char_inside}, tokenizer)
    inside = open_after(labelled.offsets[:, 1], spans)
    first_char = labelled.labels["inside_string"]
    return LabelledFile(labelled.ids.tolist(), inside.tolist(), first_char.tolist())


@lru_cache(maxsize=1)
def labelled_val_files() -> tuple[LabelledFile, ...]:
    """Each val ``.py`` file of the code corpus, labelled per token, in path order.

    Each file starts with the EOS token (labelled outside), as in the packed training
    stream, where every document follows the EOS of the one before it: a window at
    the start of a file then shows the model the boundary it learned, instead of
    putting the file's first token (often a docstring's opening quote) at position 0.
    """
    tok = get_tokenizer("code")
    eos = eos_id(tok)
    files = []
    for doc in stdlib_documents("val"):
        if doc.path.endswith(".py"):
            ids, inside, first_char = label_source(doc.text, tok)
            files.append(LabelledFile([eos, *ids], [0, *inside], [0, *first_char]))
    return tuple(files)


def window_starts(inside: list[int], n_ctx: int) -> list[int]:
    """Starts of the windows of one file (see the module docstring); none if the file is
    shorter than a window."""
    last = len(inside) - n_ctx
    if last < 0:
        return []
    candidates = [*range(0, last + 1, n_ctx - CONTEXT), last]
    starts = {_next_start_outside_string(inside, start, last) for start in candidates}
    return sorted(s for s in starts if s is not None)


def _next_start_outside_string(inside: list[int], start: int, last: int) -> int | None:
    """The first position in ``[start, last]`` that begins the file or follows a token
    after which no literal is open. A window starting there shows the opening quote of
    every string it holds."""
    while start <= last:
        if start == 0 or not inside[start - 1]:
            return start
        start += 1
    return None


def string_windows(n_ctx: int) -> StringWindows:
    """Token windows of the val ``.py`` files, both labels, and each window's file."""
    tokens, inside, first_char, source = [], [], [], []
    for doc, file in enumerate(labelled_val_files()):
        for start in window_starts(file.inside, n_ctx):
            tokens.append(file.ids[start : start + n_ctx])
            inside.append(file.inside[start : start + n_ctx])
            first_char.append(file.inside_first_char[start : start + n_ctx])
            source.append(doc)
    if len(set(source)) < 2:
        raise ValueError(f"need windows of n_ctx={n_ctx} tokens from at least two files")
    return StringWindows(*map(torch.tensor, (tokens, inside, first_char, source)))


def residual_stream_hooks(n_layers: int, attn_only: bool = False) -> dict[str, str]:
    """Every point of the residual stream, in order, as ``{short name: hook}``: the
    embedding (``embed``), then in each layer the stream after attention (``mid_l``, a
    layer with an MLP only) and after the whole block (``post_l``)."""
    hooks = {"embed": hook_name("resid_pre", 0)}
    for layer in range(n_layers):
        if not attn_only:
            hooks[f"mid_{layer}"] = hook_name("resid_mid", layer)
        hooks[f"post_{layer}"] = hook_name("resid_post", layer)
    return hooks


def evaluate_string_probe(
    model: GPT, only_hooks: Collection[str] | None = None
) -> dict[str, float | str]:
    """Cross-validated accuracy of an inside-string logistic probe at each residual hook.

    ``only_hooks`` (hook names) limits the probes to those hooks, "best" then meaning
    the best of them: every hook costs five probe fits on ~110k tokens (about 80 s on
    one CPU core), so a test re-measures the recorded best hook alone.
    """
    hooks = residual_stream_hooks(model.cfg.n_layers, model.cfg.attn_only)
    if only_hooks is not None:
        if not only_hooks or set(only_hooks) - set(hooks.values()):
            raise ValueError(f"only_hooks must name some of {list(hooks.values())}: {only_hooks}")
        hooks = {short: hook for short, hook in hooks.items() if hook in only_hooks}
    windows = string_windows(model.cfg.n_ctx)
    keep = torch.zeros(windows.tokens.shape, dtype=torch.bool)
    keep[:, CONTEXT:] = True

    def probe_accuracy(hook: str, labels: Tensor) -> float:
        acts = collect_activations(model, windows.tokens, hook, mask=keep, exclude_bos=False)
        y = labels[acts.doc, acts.pos]
        doc = windows.source[acts.doc]
        return round(cross_validated_accuracy(acts.acts, y, doc, N_FOLDS, n_classes=2), 4)

    per_hook = {hook: probe_accuracy(hook, windows.inside) for hook in hooks.values()}
    best = max(per_hook, key=per_hook.__getitem__)
    scored = windows.inside[keep]
    inside = float(scored.float().mean())
    metrics: dict[str, float | str] = {
        f"string_probe_accuracy_{short}": per_hook[hook] for short, hook in hooks.items()
    }
    metrics["inside_string_probe_accuracy"] = per_hook[best]
    metrics["inside_string_best_hook"] = best
    metrics["inside_string_majority_baseline"] = round(max(inside, 1 - inside), 4)
    metrics["inside_string_first_char_label_accuracy"] = probe_accuracy(
        best, windows.inside_first_char
    )
    metrics["inside_string_test_tokens"] = float(len(scored))
    return metrics
