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
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from decoding_gpt.sae.model import ARCHITECTURES, NORMALIZATIONS, SAE, SAEConfig

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


# What a SAELens cfg.json may say, and what load_sae does with it. Anything else is refused.
_SAELENS_DTYPES = {f"torch.{name}": name for name in ("float32", "float64", "bfloat16")}
_RESHAPES = ("none", "hook_z")  # hook_z: [..., n_heads, d_head] flattened; ours takes it flat
_UNSCALED = ("expected_average_only_in", "covariance_whitening")


def _refuse(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"SAELens cfg.json: {field}={value!r} is not supported ({why})")


def _cfg_from_saelens(raw: dict[str, Any]) -> tuple[SAEConfig, bool]:
    """Our config from a ``cfg.json`` that SAELens (not :func:`save_sae`) wrote, and
    whether the decoder norms must be folded in (TopK ``rescale_acts_by_decoder_norm``).

    Reads exactly the fields SAELens's inference SAEs read (``architecture``, ``d_in``,
    ``d_sae``, ``dtype``, ``apply_b_dec_to_input``, ``normalize_activations``,
    ``reshape_activations``, ``k``, ``rescale_acts_by_decoder_norm``; pre-6.0 files:
    ``activation_fn``, ``activation_fn_kwargs``, ``finetuning_scaling_factor``) and
    refuses, naming the field, every value it does not implement.
    """
    saelens_name = raw.get("architecture", "standard")
    k = raw.get("k")
    activation_fn = raw.get("activation_fn")  # files older than SAELens 6
    if activation_fn == "topk" and (raw.get("activation_fn_kwargs") or {}).get("k") is not None:
        saelens_name, k = "topk", raw["activation_fn_kwargs"]["k"]
    elif activation_fn not in (None, "relu"):
        raise _refuse("activation_fn", activation_fn, "only 'relu' and 'topk'")
    if saelens_name not in _FROM_SAELENS:
        raise _refuse("architecture", saelens_name, f"decoding_gpt loads {tuple(_FROM_SAELENS)}")
    if raw.get("finetuning_scaling_factor"):
        raise _refuse("finetuning_scaling_factor", raw["finetuning_scaling_factor"], "only false")
    norm = raw.get("normalize_activations")
    if isinstance(norm, bool):  # SAELens < 6: true meant the April-update scaling
        norm = "expected_average_only_in" if norm else "none"
    norm = "none" if norm is None else norm
    if norm not in NORMALIZATIONS:
        raise _refuse("normalize_activations", norm, f"one of {NORMALIZATIONS}")
    if norm in _UNSCALED:
        warnings.warn(
            f"normalize_activations={norm!r}: the statistics SAELens scaled the training "
            "activations with are not in the file, so (as SAELens's load_from_disk) the "
            "SAE is applied to unscaled activations",
            stacklevel=3,
        )
    reshape = raw.get("reshape_activations", "none")
    if reshape not in _RESHAPES:
        raise _refuse("reshape_activations", reshape, f"one of {_RESHAPES}")
    fold = saelens_name == "topk" and bool(raw.get("rescale_acts_by_decoder_norm", False))
    hook = raw.get("hook_name") or (raw.get("meta") or raw.get("metadata") or {}).get("hook_name")
    dtype = raw.get("dtype", "float32")
    cfg = SAEConfig(
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        architecture=_FROM_SAELENS[saelens_name],
        k=min(32, raw["d_sae"]) if k is None else k,
        hook_name=hook or "",
        dtype=_SAELENS_DTYPES.get(dtype, dtype),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
    )
    return cfg, fold


def load_sae(path: str | Path) -> SAE:
    """Load an SAE saved by :func:`save_sae`, or by SAELens (``SAE.save_model``,
    ``save_inference_model``): its ``encode``, ``decode`` and forward give SAELens's
    outputs (tested against SAELens 6.54 on ``tests/fixtures/saelens``).

    SAELens ``"standard"``, ``"topk"`` and ``"jumprelu"`` (a saved BatchTopK is one)
    load, with every ``normalize_activations`` mode of SAELens 6 (see
    :meth:`SAE.normalize_in`; ``"expected_average_only_in"`` and
    ``"covariance_whitening"`` warn: their statistics are not in the file and SAELens's
    SAE leaves the input unscaled too), ``reshape_activations="hook_z"`` (our SAE takes
    the heads flattened, ``[..., n_heads * d_head]``, as ``decoding_gpt.activations``
    collects them) and TopK's ``rescale_acts_by_decoder_norm`` (folded into the
    encoder: unit decoder rows, the same outputs to float32 rounding). Any other
    architecture or field value is refused by name.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the config or the weights do not match (names, shapes), or a field
            value is not supported (the message names the field).
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
    if "decoding_gpt" in raw:
        cfg, fold = SAEConfig(**raw["decoding_gpt"]), False
    else:
        cfg, fold = _cfg_from_saelens(raw)
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
    if fold:  # SAELens: pre * ||W_dec[i]||, then f / ||W_dec[i]|| @ W_dec (same function)
        sae.fold_decoder_norm()
    return sae
