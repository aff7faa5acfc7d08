"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine
    OpenMP threads contend (a 7 ms forward became 120 ms); run single-threaded."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


@pytest.fixture(scope="module")
def tiny_bridge():
    """A randomly initialised 2-layer TransformerLens bridge (d_model 64, vocab 100)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    torch.manual_seed(0)
    cfg = TransformerBridgeConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_vocab=100, n_ctx=64,
        act_fn="gelu", normalization_type="LN", d_mlp=256,
    )  # fmt: skip
    return TransformerBridge.boot_native(cfg)
