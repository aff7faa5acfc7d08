"""Tests for decoding_gpt.viz: what is drawn is the data given, labels in place, clear errors."""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from decoding_gpt import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_attention_pattern_heatmap_shows_pattern_and_tokens():
    pattern = torch.tril(torch.ones(4, 4))
    pattern = pattern / pattern.sum(-1, keepdim=True)
    tokens = ["<s>", "The", " cat", " sat"]
    ax = viz.plot_attention_pattern(pattern, tokens, title="L0H1")
    np.testing.assert_allclose(ax.images[0].get_array(), pattern.numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert ax.get_title() == "L0H1"
    with pytest.raises(ValueError, match="token labels"):
        viz.plot_attention_pattern(pattern, tokens[:3])
    with pytest.raises(ValueError, match="square"):
        viz.plot_attention_pattern(torch.ones(2, 3))


def test_patching_heatmap_colour_scale_is_symmetric():
    result = torch.tensor([[0.0, 0.2, -1.0], [0.5, 0.1, 0.3]])
    fig, ax = plt.subplots()
    out = viz.plot_patching_heatmap(result, ["a", "b", "c"], ax=ax)
    assert out is ax
    vmin, vmax = ax.images[0].get_clim()
    assert (vmin, vmax) == (-1.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a|0", "b|1", "c|2"]
    viz.plot_patching_heatmap(result, center=0.5)
    with pytest.raises(ValueError, match=r"\[layer, pos\]"):
        viz.plot_patching_heatmap(torch.zeros(3))


def test_logit_lens_table_and_figure():
    ids = torch.tensor([[1, 2], [3, 1]])
    probs = torch.tensor([[0.5, 0.25], [0.9, 0.05]])
    text = viz.logit_lens_table(ids, probs, ["0_pre", "final_post"], decode=lambda i: "abcd"[i])
    lines = text.splitlines()
    assert len(lines) == 2
    assert (
        lines[0].strip().startswith("0_pre") and "'b' 0.50" in lines[0] and "'c' 0.25" in lines[0]
    )
    assert "'d' 0.90" in lines[1]
    with pytest.raises(ValueError, match="one row per layer"):
        viz.logit_lens_table(ids, probs, ["only one"])
    ax = viz.plot_logit_lens(probs, [["b", "c"], ["d", "b"]], ["0_pre", "final_post"])
    assert [t.get_text() for t in ax.texts] == ["b", "c", "d", "b"]


def test_loss_curves():
    ax = viz.plot_loss_curves(
        {"train": [3.0, 2.0, 1.5], "val": torch.tensor([3.1, 2.4])}, log_y=True
    )
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["train", "val"]
    np.testing.assert_allclose(lines[0].get_ydata(), [3.0, 2.0, 1.5])
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="empty"):
        viz.plot_loss_curves({})


def test_circuitsvis_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "circuitsvis", None)  # import now raises ImportError
    with pytest.raises(ImportError, match="pip install circuitsvis"):
        viz.circuitsvis_attention(torch.ones(1, 2, 2), ["a", "b"])
