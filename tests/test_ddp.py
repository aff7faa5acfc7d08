"""Data parallel training: 2 CPU processes (gloo, under torchrun) match 1 process.

Each rank draws the same seeded global batch and trains on its half; DDP averages the
two half-batch gradients, which is the full-batch gradient. So after the same number of
steps the weights, losses and evaluation agree with a single-process run up to float
summation order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from decoding_gpt.checkpoint import read_metrics
from decoding_gpt.tools.train import main

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny-smoke.toml"
OVERRIDES = [
    "--set",
    "train.steps=6",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.eval_batches=2",
    "--set",
    "train.log_every=1",
    "--set",
    "data.n_seqs=64",
]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path):
    env = os.environ | {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "DGPT_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [
        "-m",
        "decoding_gpt.tools.train",
        str(TINY_CONFIG),
        *OVERRIDES,
        "--out",
        str(tmp_path / "2"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    assert proc.stdout.count("tokens/s") == 1  # rank 0 alone reports

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(TINY_CONFIG), *OVERRIDES, "--out", str(tmp_path / "1")]) == 0
    finally:
        torch.set_num_threads(before)

    one, two = (
        load_file(tmp_path / "1" / "model.safetensors"),
        load_file(tmp_path / "2" / "model.safetensors"),
    )
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=0), name
    m1, m2 = read_metrics(tmp_path / "1"), read_metrics(tmp_path / "2")
    assert m1["step"] == m2["step"] == [1, 2, 3, 4, 5, 6]
    assert m1["tokens_seen"] == m2["tokens_seen"]  # global tokens, not per rank
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], abs=1e-5)
    assert m1["val_step"] == m2["val_step"] == [0, 3, 6]
    assert m1["val_loss"] == pytest.approx(m2["val_loss"], abs=1e-5)
    # and training did something: the first and last losses differ
    assert abs(m1["train_loss"][0] - m1["train_loss"][-1]) > 1e-4
