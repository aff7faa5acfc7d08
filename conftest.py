"""Repository-wide pytest configuration.

nbval compares every output of every notebook cell. Rich outputs that embed random
ids or large JavaScript bundles (HTML, JavaScript, widgets, plotly, CircuitsVis) are
not stable across runs, so they are excluded from the comparison here; their cells
still execute, so an exception in them still fails the test.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")

SKIPPED_MIME_TYPES = (
    "text/html",
    "application/javascript",
    "application/vnd.jupyter.widget-view+json",
    "application/vnd.jupyter.widget-state+json",
    "application/vnd.plotly.v1+json",
    "image/svg+xml",
)


def pytest_collectstart(collector):
    """Extend nbval's list of output keys it does not compare (images already are)."""
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += SKIPPED_MIME_TYPES
