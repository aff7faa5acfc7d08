"""The SAEs this course ships, next to the shipped models, checked and loaded offline.

Each is a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, :mod:`.io`) with a
``card.md`` under ``decoding_gpt/pretrained/saes/<name>/``; its build config is
``decoding_gpt/pretrained/saes/configs/<name>.toml`` and ``saes/registry.json`` records the
model and hook it reads, the sha256 of each file (checked on every load) and the metrics
measured at build time (``python -m decoding_gpt.tools.build_sae NAME``)::

    from decoding_gpt.sae import shipped
    shipped.list_saes()                        # ['stories-4l-...']
    sae = shipped.load_shipped_sae(name)       # a decoding_gpt.sae.SAE
    shipped.sae_info(name).metrics["ce_loss_score"]

SAELens loads the same folder: ``sae_lens.SAE.load_from_disk(shipped.sae_dir(name))``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding_gpt.pretrained.registry import PACKAGE_DIR, PretrainedError, verify_files
from decoding_gpt.sae.io import load_sae
from decoding_gpt.sae.model import SAE

SAES_DIR = PACKAGE_DIR / "saes"
SAE_REGISTRY_FILE = SAES_DIR / "registry.json"
SAE_CONFIG_DIR = SAES_DIR / "configs"


@dataclass(frozen=True)
class SAEInfo:
    """One registry entry: the model and hook the SAE reads, its files' sha256, metrics."""

    name: str
    model: str
    hook_name: str
    description: str
    lecture: str
    files: dict[str, str]  # file name -> sha256
    metrics: dict[str, Any] = field(default_factory=dict)


def _registry() -> dict[str, SAEInfo]:
    if not SAE_REGISTRY_FILE.exists():
        return {}
    entries = json.loads(SAE_REGISTRY_FILE.read_text())
    return {name: SAEInfo(name=name, **entry) for name, entry in entries.items()}


def list_saes() -> list[str]:
    """Names of the shipped SAEs, in registry order."""
    return list(_registry())


def sae_info(name: str) -> SAEInfo:
    """The registry entry of a shipped SAE (``PretrainedError`` if there is none)."""
    registry = _registry()
    if name not in registry:
        raise PretrainedError(
            f"{name!r} is not a shipped SAE; shipped SAEs: {', '.join(registry) or 'none'}"
        )
    return registry[name]


def sae_dir(name: str) -> Path:
    """The SAELens folder of a shipped SAE."""
    sae_info(name)
    return SAES_DIR / name


def verify_sae(name: str) -> None:
    """Check every file of a shipped SAE against the sha256 in ``saes/registry.json``.

    Raises:
        PretrainedError: naming the file that is missing or whose content changed.
    """
    verify_files(SAES_DIR / name, sae_info(name).files, f"shipped SAE {name!r}")


def load_shipped_sae(name: str) -> SAE:
    """A shipped SAE (eval mode, on the CPU), after checking its files' sha256."""
    verify_sae(name)
    return load_sae(SAES_DIR / name).eval()
