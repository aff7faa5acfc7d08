"""Figures for the interpretability lectures: attention patterns, patching maps, lens tables.

Every function draws with matplotlib on the ``ax`` it is given (or a new one) and returns
the Axes, so notebooks can compose figures and tests can inspect what was drawn.
Committed notebook outputs use these static figures only.

:func:`circuitsvis_attention` wraps CircuitsVis's interactive view. CircuitsVis inlines a
~1.3 MB JavaScript bundle into every output, so keep such cells optional and never commit
their outputs; it is imported lazily and is not a dependency of the package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float
from matplotlib.axes import Axes
from torch import Tensor


def _axes(ax: Axes | None, figsize: tuple[float, float] = (5, 4)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def plot_attention_pattern(
    pattern: Float[Tensor, "q_pos k_pos"],
    tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Heatmap of one head's pattern: rows are queries (destination), columns keys (source)."""
    p = _numpy(pattern)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"pattern must be [q_pos, k_pos] and square, got {p.shape}")
    if tokens is not None and len(tokens) != p.shape[0]:
        raise ValueError(f"{len(tokens)} token labels for a pattern over {p.shape[0]} positions")
    ax = _axes(ax)
    im = ax.imshow(p, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    if tokens is not None:
        ax.set_xticks(range(len(tokens)), tokens, rotation=90)
        ax.set_yticks(range(len(tokens)), tokens)
    ax.set_xlabel("key (source) position")
    ax.set_ylabel("query (destination) position")
    if title:
        ax.set_title(title)
    return ax


def plot_patching_heatmap(
    result: Float[Tensor, "layer pos"],
    tokens: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    center: float = 0.0,
    ylabel: str = "layer",
) -> Axes:
    """Layer x position map of a patching result, colours symmetric around ``center``."""
    r = _numpy(result)
    if r.ndim != 2:
        raise ValueError(f"result must be [layer, pos], got shape {r.shape}")
    if tokens is not None and len(tokens) != r.shape[1]:
        raise ValueError(f"{len(tokens)} token labels for {r.shape[1]} positions")
    ax = _axes(ax, (max(4.0, 0.6 * r.shape[1]), max(3.0, 0.5 * r.shape[0])))
    half = float(np.nanmax(np.abs(r - center))) or 1.0
    im = ax.imshow(r, cmap="RdBu", vmin=center - half, vmax=center + half, aspect="auto")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    ax.set_yticks(range(r.shape[0]))
    if tokens is not None:
        ax.set_xticks(range(len(tokens)), [f"{t}|{i}" for i, t in enumerate(tokens)], rotation=90)
    ax.set_xlabel("position")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def logit_lens_table(
    top_ids: Sequence[Sequence[int]] | Tensor,
    top_probs: Sequence[Sequence[float]] | Tensor,
    layer_labels: Sequence[str],
    decode: Callable[[int], str] = str,
) -> str:
    """Plain-text table, one row per layer: the top tokens and their probabilities.

    Feed it :func:`decoding_gpt.lens.logit_lens_top_k`'s output; ``decode`` maps an id to
    its text (e.g. ``lambda i: tokenizer.decode([i])``).
    """
    ids = top_ids.tolist() if isinstance(top_ids, Tensor) else [list(r) for r in top_ids]
    probs = top_probs.tolist() if isinstance(top_probs, Tensor) else [list(r) for r in top_probs]
    if not (len(ids) == len(probs) == len(layer_labels)):
        raise ValueError("top_ids, top_probs and layer_labels need one row per layer")
    width = max(len(label) for label in layer_labels)
    lines = []
    for label, row_ids, row_p in zip(layer_labels, ids, probs, strict=True):
        cells = [f"{decode(int(i))!r} {p:.2f}" for i, p in zip(row_ids, row_p, strict=True)]
        lines.append(f"{label:>{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def plot_logit_lens(
    probs: Float[Tensor, "layer k"],
    labels: Sequence[Sequence[str]],
    layer_labels: Sequence[str],
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """The logit-lens table as a figure: cell ``(layer, j)`` shows the j-th token, coloured
    by its probability."""
    p = _numpy(probs)
    ax = _axes(ax, (1.3 * p.shape[1] + 1, 0.45 * p.shape[0] + 1))
    ax.imshow(p, cmap="Greens", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(labels):
        for j, text in enumerate(row):
            color = "white" if p[i, j] > 0.5 else "black"  # readable on dark cells
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_yticks(range(len(layer_labels)), layer_labels)
    ax.set_xticks(range(p.shape[1]), [f"top {j + 1}" for j in range(p.shape[1])])
    if title:
        ax.set_title(title)
    return ax


def plot_loss_curves(
    curves: Mapping[str, Sequence[float] | Tensor],
    ax: Axes | None = None,
    log_y: bool = False,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
) -> Axes:
    """One line per named curve (e.g. ``{"train": [...], "val": [...]}``)."""
    if not curves:
        raise ValueError("curves is empty")
    ax = _axes(ax)
    for name, values in curves.items():
        ax.plot(_numpy(torch.as_tensor(values)), label=name)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


def circuitsvis_attention(
    patterns: Float[Tensor, "head q_pos k_pos"], tokens: Sequence[str], **kwargs: Any
) -> Any:
    """CircuitsVis's interactive ``attention_patterns`` view (HTML; do not commit its output)."""
    try:
        import circuitsvis as cv  # noqa: PLC0415 (optional, heavy, renders HTML)
    except ImportError as err:
        raise ImportError(
            "circuitsvis is not installed; `pip install circuitsvis` for interactive attention "
            "views (or use plot_attention_pattern, which needs only matplotlib)"
        ) from err
    return cv.attention.attention_patterns(tokens=list(tokens), attention=patterns, **kwargs)
