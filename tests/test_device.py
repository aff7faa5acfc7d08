"""Device selection and seeding (decoding_gpt.device)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import decoding_gpt
from decoding_gpt.device import DEVICE_ENV_VAR, get_device, set_seed


def test_default_is_best_available(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert get_device().type == expected


def test_env_override(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    assert get_device() == torch.device("cpu")


def test_argument_beats_env(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "not-a-device")
    assert get_device("cpu") == torch.device("cpu")


def test_malformed_override_raises(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "gpu-please")
    with pytest.raises(ValueError, match="not a device string"):
        get_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_override_raises_instead_of_falling_back(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="not available"):
        get_device()


def _draw() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand())  # noqa: NPY002, torch.rand(3).tolist()


def test_set_seed_repeats_all_generators():
    set_seed(123)
    first = _draw()
    set_seed(123)
    assert _draw() == first
    set_seed(124)
    assert _draw() != first


def test_version_matches_metadata():
    from importlib.metadata import version

    assert decoding_gpt.__version__ == version("decoding-gpt")
