"""Where tensors live, how runs are made repeatable, and how they report progress.

Device choice: ``cuda`` if a CUDA GPU is visible, else ``mps`` (Apple silicon), else
``cpu``. The environment variable ``DGPT_DEVICE`` overrides the choice (for example
``DGPT_DEVICE=cpu`` on a GPU machine to reproduce the committed notebook outputs, which
were made on CPU). An override naming a device that is not available raises instead of
silently falling back, so a run never pretends to be on the GPU.
"""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

DEVICE_ENV_VAR = "DGPT_DEVICE"


def _available(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return False


def get_device(override: str | None = None) -> torch.device:
    """Return the device to run on: ``override``, else ``$DGPT_DEVICE``, else the best one.

    Args:
        override: a device string such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.

    Raises:
        ValueError: the requested device string is malformed.
        RuntimeError: the requested device is not available on this machine.
    """
    requested = override or os.environ.get(DEVICE_ENV_VAR, "").strip()
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as err:
            raise ValueError(
                f"{DEVICE_ENV_VAR}={requested!r} is not a device string "
                "(expected e.g. 'cpu', 'cuda', 'cuda:0', 'mps')"
            ) from err
        if not _available(device):
            raise RuntimeError(
                f"device {requested!r} was requested (argument or {DEVICE_ENV_VAR}) "
                "but is not available on this machine"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int = 0, *, deterministic: bool = True) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and every GPU) random generators.

    With ``deterministic=True`` PyTorch is also asked for deterministic kernels where
    it has them (``warn_only`` so ops without one still run), which is what makes a
    notebook's committed outputs reproducible run after run on the same machine.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global generator is what user code draws from)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def machine_description() -> str:
    """The machine a result was measured on, in words (model cards, sweeps, benchmarks).

    E.g. ``"CPU, 2 cores, x86_64, Python 3.11.7, torch 2.13.0+cpu"``: enough for a reader
    to judge a wall time.
    """
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"{device}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def progress_bar(
    iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None, **kwargs: Any
) -> tqdm:
    """A tqdm progress bar that ``TQDM_DISABLE=1`` turns off.

    tqdm reads that variable itself, but its notebook widget does not, and an executed
    notebook would then commit a widget per training loop; so it is read here. Extra
    ``kwargs`` go to tqdm (``initial``, ``disable`` for e.g. non-main DDP ranks, ...).
    """
    asked_off = kwargs.pop("disable", False)
    env_off = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(iterable, desc=desc, total=total, disable=asked_off or env_off, **kwargs)
