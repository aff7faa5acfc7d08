"""Saving and loading SAEs in SAELens's on-disk format.

A folder with ``cfg.json`` (SAELens's fields: ``architecture``, ``d_in``, ``d_sae``,
``dtype``, ``apply_b_dec_to_input``, ``hook_name``, ...; plus our whole
:class:`SAEConfig` under ``"decoding_gpt"``) and ``sae_weights.safetensors``
(``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, and ``threshold`` for a JumpReLU). Every
architecture loads in SAELens as an *inference* SAE with the same outputs; its SAELens
name is the ``saelens_name`` of its row of ``ARCHITECTURES``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from decoding_gpt.sae.model import ARCHITECTURES, SAE, SAEConfig

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
# SAELens architecture name -> ours (only where they differ: BatchTopK is a JumpReLU)
_FROM_SAELENS = {a.saelens_name: name for name, a in ARCHITECTURES.items()}


def _saelens_cfg(cfg: SAEConfig) -> dict[str, Any]:
    """The ``cfg.json`` dictionary."""
    saelens_name = ARCHITECTURES[cfg.architecture].saelens_name
    cfg_dict: dict[str, Any] = {
        "architecture": saelens_name,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "hook_name": cfg.hook_name,
        "metadata": {"hook_name": cfg.hook_name, **cfg.extra_meta},
        "decoding_gpt": asdict(cfg),
    }
    if saelens_name == "topk":  # saved with unit decoder rows, selected by pre alone
        cfg_dict["k"] = cfg.k
        cfg_dict["rescale_acts_by_decoder_norm"] = False
    return cfg_dict


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Save in SAELens's on-disk format: ``path/cfg.json`` + ``path/sae_weights.safetensors``.

    standard -> ``"standard"``, topk -> ``"topk"``, batchtopk -> ``"jumprelu"`` (with its
    ``threshold``). Our own fields ride along in ``cfg.json`` under ``decoding_gpt``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().contiguous().clone() for n, p in sae.state_dict().items()}
    (path / SAE_CFG_FILENAME).write_text(json.dumps(_saelens_cfg(sae.cfg), indent=2))
    save_file({n: t.cpu() for n, t in weights.items()}, str(path / SAE_WEIGHTS_FILENAME))
    return path


def _cfg_from_saelens(raw: dict[str, Any]) -> SAEConfig:
    """Our config from a ``cfg.json`` that SAELens (not :func:`save_sae`) wrote."""
    saelens_name = raw.get("architecture", "standard")
    hook = raw.get("hook_name") or (raw.get("meta") or raw.get("metadata") or {}).get("hook_name")
    return SAEConfig(
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        architecture=_FROM_SAELENS.get(saelens_name, saelens_name),
        k=raw.get("k", min(32, raw["d_sae"])),
        hook_name=hook or "",
        dtype=raw.get("dtype", "float32"),
        apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True),
    )


def load_sae(path: str | Path) -> SAE:
    """Load an SAE saved by :func:`save_sae` (or a SAELens standard/topk/jumprelu SAE).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the config or the weights do not match (names, shapes).
    """
    path = Path(path)
    cfg_path, w_path = path / SAE_CFG_FILENAME, path / SAE_WEIGHTS_FILENAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (expected SAELens format)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    cfg = SAEConfig(**raw["decoding_gpt"]) if "decoding_gpt" in raw else _cfg_from_saelens(raw)
    sae = SAE(cfg)
    try:
        weights = load_file(str(w_path))
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"{w_path} is not a valid safetensors file: {err}") from err
    expected = sae.state_dict()
    if set(weights) != set(expected):
        raise ValueError(f"weight names {sorted(weights)} != expected {sorted(expected)}")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    sae.load_state_dict(weights)
    return sae
