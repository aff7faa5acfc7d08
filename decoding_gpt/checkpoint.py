"""Checkpoints on disk: safetensors for tensors, JSON for everything else.

A checkpoint is a directory::

    model.safetensors       the model's weights (state_dict, tied tensors stored once)
    config.json             {"format_version", "model_class", "model": {...}, "train": {...}}
    metrics.json            the training history (see ``decoding_gpt.training.train``)
    optimizer.safetensors   AdamW state tensors, flattened as "state.{i}.{name}"  (resume only)
    trainer_state.json      step, tokens seen, clock, optimizer hyper-parameters   (resume only)
    snapshots.safetensors   float16 weights at chosen steps, "step_{n}/{name}"  (some runs)

Nothing is pickled: ``torch.load`` on an untrusted file can run arbitrary code, while a
safetensors file is a JSON header plus raw bytes, and JSON is data. Every reader here
checks what it reads, and a truncated file, bad JSON, a missing or unexpected tensor, or
a shape that does not match the model's config raises ``CheckpointError`` naming the
file and the problem, rather than loading a silently wrong model. So does a weight that is
NaN or infinite, and a ``config.json`` whose ``model`` section was edited after saving in
a way that keeps every shape (``act_fn``, ``layer_norm_eps``, the positional embedding,
the normalization): ``save_checkpoint`` records the sha256 of that section
(:func:`config_sha256`) in ``model.safetensors``'s metadata under ``"config_sha256"``,
and ``load_checkpoint`` compares. Files without that record (the shipped models, whose
``config.json`` the registry's sha256 protects) load as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

from decoding_gpt.transformer import GPT, GPTConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
SNAPSHOTS_FILE = "snapshots.safetensors"  # weights at chosen steps of a run
CONFIG_SHA_KEY = "config_sha256"  # metadata of model.safetensors: sha256 of the model config


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


# --------------------------------------------------------------------------- helpers


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (so multi-GB weights never sit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict from a config: a dict, an object with ``to_dict()``, or a dataclass."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    raise TypeError(f"cannot turn a {type(config).__name__} into a config dict")


def config_sha256(config: Any) -> str:
    """Hex SHA-256 of a model config as stored in ``config.json``: canonical JSON (sorted
    keys, no spaces) of :func:`config_to_dict`, so the dict written at save time and the
    one read back at load time hash alike (JSON round-trips floats exactly)."""
    canonical = json.dumps(
        config_to_dict(config), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    def write(tmp: Path) -> None:
        # allow_nan=False: NaN is not JSON; a NaN loss should fail loudly here.
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")

    _write_atomic(path, write)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def _shared_with(state: Mapping[str, torch.Tensor]) -> dict[str, set[str]]:
    """For each state-dict name, the other names whose tensors share its storage (ties)."""
    by_storage: dict[tuple[int, int], set[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        by_storage.setdefault(key, set()).add(name)
    return {name: group - {name} for group in by_storage.values() for name in group}


# --------------------------------------------------------------------------- weights


def save_weights(path: str | os.PathLike, model: nn.Module, config: Any = None) -> None:
    """Write ``model.state_dict()`` as safetensors (tied tensors are stored once).

    With ``config`` (the model config that goes to ``config.json``), its
    :func:`config_sha256` is recorded in the file's metadata, for ``load_checkpoint`` to
    check the config it is given against.
    """
    metadata = None if config is None else {CONFIG_SHA_KEY: config_sha256(config)}
    _write_atomic(Path(path), lambda tmp: save_model(model, str(tmp), metadata=metadata))


def _read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors header (empty when there is none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def _check_finite(path: Path, tensors: Mapping[str, Tensor]) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointError(
                f"{path}: tensor '{name}' is not finite ({n_nan} NaN, {n_inf} inf of "
                f"{t.numel()} values); the weights are corrupt or the run diverged"
            )


M = TypeVar("M", bound=nn.Module)


def load_weights(path: str | os.PathLike, model: M) -> M:
    """Load a safetensors file into ``model`` in place, after checking names and shapes.

    Raises:
        CheckpointError: the file is missing or corrupt, a tensor is missing or
            unexpected, a tensor's shape differs from the model's, or a floating-point
            tensor holds NaN or inf.
    """
    path = Path(path)
    expected = model.state_dict()
    device = next((t.device for t in expected.values()), torch.device("cpu"))
    tensors = _read_safetensors(path, device)
    ties = _shared_with(expected)
    missing = [n for n in expected if n not in tensors and not (ties.get(n, set()) & set(tensors))]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match {type(model).__name__}; "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {tuple(t.shape)} but the model built "
                f"from the config expects {tuple(expected[name].shape)} "
                "(config.json and model.safetensors disagree)"
            )
    _check_finite(path, tensors)
    model.load_state_dict(tensors, strict=False)  # strict checks were done above, with ties
    return model


# --------------------------------------------------------------------------- optimizer


def save_optimizer(directory: str | os.PathLike, optimizer: torch.optim.Optimizer) -> dict:
    """Flatten an optimizer's state: tensors to ``optimizer.safetensors``, the rest returned.

    ``optimizer.state_dict()`` is ``{"state": {i: {name: tensor | scalar}}, "param_groups":
    [...]}``; tensors go to the safetensors file as ``state.{i}.{name}``, scalars and the
    param groups come back as a JSON-ready dict (stored in ``trainer_state.json``).
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    _write_atomic(Path(directory) / OPTIMIZER_FILE, lambda tmp: save_file(tensors, str(tmp)))
    return {"param_groups": groups, "scalar_state": scalars}


def load_optimizer(
    directory: str | os.PathLike, optimizer: torch.optim.Optimizer, saved: dict
) -> None:
    """Restore ``optimizer`` from ``optimizer.safetensors`` and the dict ``save_optimizer`` gave."""
    path = Path(directory) / OPTIMIZER_FILE
    tensors = _read_safetensors(path)
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise CheckpointError(f"{path}: unexpected tensor name '{name}'")
        state.setdefault(int(parts[1]), {})[parts[2]] = t
    for idx, entry in saved.get("scalar_state", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    try:
        groups = [
            {k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
            for g in saved["param_groups"]
        ]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for idx, entry in state.items():
            for key, t in entry.items():
                shaped = isinstance(t, torch.Tensor) and t.dim() > 0
                if shaped and t.shape != params[idx].shape:
                    raise CheckpointError(
                        f"{path}: state.{idx}.{key} has shape {tuple(t.shape)}, "
                        f"parameter {idx} has shape {tuple(params[idx].shape)}"
                    )
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: optimizer state does not fit this model ({err})") from err


# --------------------------------------------------------------------------- directories


def copy_with_weights_as(
    source: str | os.PathLike, target: str | os.PathLike, dtype: torch.dtype
) -> Path:
    """Copy a checkpoint's weights, config and metrics to ``target``, the weights cast to
    ``dtype`` (e.g. ``torch.float16``: half the bytes of float32); integer and bool
    tensors are copied as they are.

    The copy loads like any checkpoint: ``load_weights`` casts each tensor to the
    model's own dtype. Optimizer and trainer state are not copied (a cast checkpoint is
    for inference, not for resuming).

    Raises:
        CheckpointError: a weight is not finite in ``dtype`` (it overflows its range).
    """
    source, target = Path(source), Path(target)
    tensors = _read_safetensors(source / WEIGHTS_FILE)
    cast = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
    for name, t in cast.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{source / WEIGHTS_FILE}: tensor '{name}' does not fit in {dtype} "
                f"(largest magnitude {tensors[name].abs().max().item():.3g})"
            )
    metadata = _read_metadata(source / WEIGHTS_FILE) or None  # e.g. the config's sha256
    target.mkdir(parents=True, exist_ok=True)
    _write_atomic(target / WEIGHTS_FILE, lambda tmp: save_file(cast, str(tmp), metadata))
    for file_name in (CONFIG_FILE, METRICS_FILE):
        _write_json(target / file_name, _read_json(source / file_name))
    return target


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    model_config: Any,
    *,
    train_config: Any = None,
    metrics: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (see the module docstring); returns its path.

    ``optimizer`` and ``trainer_state`` are only needed to resume training; a
    checkpoint without them still loads for inference.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_FILE, model, model_config)
    cls = type(model)
    config = {
        "format_version": FORMAT_VERSION,
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "model": config_to_dict(model_config),
        "train": config_to_dict(train_config) if train_config is not None else None,
    }
    _write_json(directory / CONFIG_FILE, config)
    _write_json(directory / METRICS_FILE, dict(metrics or {}))
    if optimizer is not None:
        state = dict(trainer_state or {})
        state["optimizer"] = save_optimizer(directory, optimizer)
        _write_json(directory / TRAINER_STATE_FILE, state)
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint, checked for its required keys."""
    path = Path(directory) / CONFIG_FILE
    config = _read_json(path)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: expected an object with a 'model' section")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
    return config


def read_metrics(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``metrics.json`` of a checkpoint."""
    path = Path(directory) / METRICS_FILE
    metrics = _read_json(path)
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return metrics


def read_trainer_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``trainer_state.json`` (present only in resumable checkpoints)."""
    path = Path(directory) / TRAINER_STATE_FILE
    state = _read_json(path)
    if not isinstance(state, dict) or "step" not in state or "optimizer" not in state:
        raise CheckpointError(f"{path}: expected an object with 'step' and 'optimizer'")
    return state


def _build_config(config_cls: type, values: dict[str, Any], path: Path) -> Any:
    try:
        if hasattr(config_cls, "from_dict"):
            return config_cls.from_dict(values)
        return config_cls(**values)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path}: the 'model' section is not a valid {config_cls.__name__} ({err})"
        ) from err


@overload
def load_checkpoint(
    directory: str | os.PathLike,
    model_cls: None = None,
    config_cls: type | None = None,
    device: str | torch.device = "cpu",
) -> tuple[GPT, Any, dict[str, Any]]: ...
@overload
def load_checkpoint(
    directory: str | os.PathLike,
    model_cls: type[M],
    config_cls: type | None = None,
    device: str | torch.device = "cpu",
) -> tuple[M, Any, dict[str, Any]]: ...
def load_checkpoint(
    directory: str | os.PathLike,
    model_cls: type[nn.Module] | None = None,
    config_cls: type | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild a model from a checkpoint directory: ``(model, model_config, metrics)``.

    Args:
        directory: the checkpoint directory.
        model_cls: the model class, called as ``model_cls(config)``; default
            ``decoding_gpt.transformer.GPT``.
        config_cls: the config class (``from_dict`` is used when it has one);
            default ``decoding_gpt.transformer.GPTConfig``.
        device: where the weights are loaded.

    The model comes back in eval mode.

    Raises:
        CheckpointError: a file is missing or corrupt, the config is invalid, the weights
            do not fit it or are not finite, or ``config.json``'s ``model`` section is not
            the one the weights were saved with (its sha256 differs from the one recorded
            in ``model.safetensors``, when there is one).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    model_cls = model_cls or GPT
    config_cls = config_cls or GPTConfig
    config = read_config(directory)
    model_config = _build_config(config_cls, config["model"], directory / CONFIG_FILE)
    metrics = read_metrics(directory)
    model = model_cls(model_config).to(device)
    load_weights(directory / WEIGHTS_FILE, model)  # shape edits are named there, first
    _check_config_sha(directory, config["model"])
    return model.eval(), model_config, metrics


def _check_config_sha(directory: Path, model_section: dict[str, Any]) -> None:
    """Compare ``config.json``'s model section with the sha256 recorded at save time."""
    recorded = _read_metadata(directory / WEIGHTS_FILE).get(CONFIG_SHA_KEY)
    if recorded is None:  # saved without a record (e.g. the shipped models): nothing to check
        return
    actual = config_sha256(model_section)
    if actual != recorded:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: the 'model' section (sha256 {actual[:12]}...) is not "
            f"the config {WEIGHTS_FILE} was saved with (sha256 {recorded[:12]}...); "
            "config.json was edited after saving (e.g. act_fn, layer_norm_eps, positions or "
            "normalization), which would load these weights into a different model"
        )


# --------------------------------------------------------------------------- snapshots


def save_snapshots(path: str | os.PathLike, snapshots: dict[int, dict[str, Tensor]]) -> None:
    """A run's weights at several steps, in one safetensors file with keys
    ``step_{n}/{parameter}`` (float16: snapshots are for analysis, not for resuming)."""
    flat = {
        f"step_{step}/{name}": tensor.to(torch.float16).contiguous()
        for step, state in sorted(snapshots.items())
        for name, tensor in state.items()
    }
    save_file(flat, str(path))


def read_snapshots(path: str | os.PathLike) -> dict[int, dict[str, Tensor]]:
    """Inverse of :func:`save_snapshots`: state dicts in float32, by step."""
    path = Path(path)
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    out: dict[int, dict[str, Tensor]] = {}
    for key, tensor in flat.items():
        head, _, name = key.partition("/")
        if not head.startswith("step_") or not head[5:].isdigit() or not name:
            raise ValueError(f"{path}: unexpected key {key!r}; expected 'step_<n>/<parameter>'")
        out.setdefault(int(head[5:]), {})[name] = tensor.float()
    return dict(sorted(out.items()))


def load_snapshots(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[list[int], list[GPT]]:
    """The snapshots of the run in ``directory`` as ``(steps, models)`` in step order.

    The run's ``config.json`` gives the architecture; each snapshot is a :class:`GPT` in
    eval mode. A snapshot whose parameters do not match the config raises ``ValueError``.
    """
    directory = Path(directory)
    cfg = GPTConfig.from_dict(read_config(directory)["model"])
    steps, models = [], []
    for step, state in read_snapshots(directory / SNAPSHOTS_FILE).items():
        model = GPT(cfg)
        expected = set(model.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"{directory / SNAPSHOTS_FILE}: step {step} has parameters "
                f"{sorted(set(state) ^ expected)[:6]} that do not match the config"
            )
        model.load_state_dict(state)
        steps.append(step)
        models.append(model.to(device).eval())
    return steps, models
