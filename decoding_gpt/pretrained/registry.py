"""Registry of shipped models: integrity checks, loading, and hub fallback."""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from decoding_gpt import checkpoint
from decoding_gpt.checkpoint import file_sha256, load_checkpoint
from decoding_gpt.convert import to_transformer_lens
from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.bpe import Corpus
from decoding_gpt.device import get_device
from decoding_gpt.tokenizer import as_pretrained_tokenizer_fast
from decoding_gpt.transformer import GPT

if TYPE_CHECKING:  # heavy imports, for annotations only
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"
REGISTRY_FILE = PACKAGE_DIR / "registry.json"
HUB_PROBE_TIMEOUT_S = 3.0
OFFLINE_VALUES = {"1", "true", "yes", "on"}


class PretrainedError(RuntimeError):
    """A shipped model is unknown, missing, or its files do not match the registry."""


class HubUnavailableError(PretrainedError):
    """A hub model was requested but the hub cannot be reached (offline)."""


@dataclass(frozen=True)
class ModelInfo:
    """One registry entry: what the model is and the sha256 of each of its files."""

    name: str
    description: str
    lecture: str
    tokenizer: Corpus | None  # corpus name for decoding_gpt.data.get_tokenizer, or None
    files: dict[str, str]  # file name -> sha256
    metrics: dict[str, Any] = field(default_factory=dict)


def _registry() -> dict[str, ModelInfo]:
    if not REGISTRY_FILE.exists():
        return {}
    entries = json.loads(REGISTRY_FILE.read_text())
    return {name: ModelInfo(name=name, **entry) for name, entry in entries.items()}


def list_models() -> list[str]:
    """Names of the shipped models, in registry order."""
    return list(_registry())


def model_info(name: str) -> ModelInfo:
    """The registry entry of a shipped model (``PretrainedError`` if there is none)."""
    registry = _registry()
    if name not in registry:
        raise PretrainedError(
            f"{name!r} is not a shipped model; shipped models: {', '.join(registry) or 'none'}"
        )
    return registry[name]


def model_dir(name: str) -> Path:
    """The checkpoint folder of a shipped model."""
    model_info(name)
    return MODELS_DIR / name


def verify(name: str) -> None:
    """Check every file of a shipped model against the sha256 in the registry.

    Raises:
        PretrainedError: naming the file that is missing or whose content changed.
    """
    verify_files(MODELS_DIR / name, model_info(name).files, f"shipped model {name!r}")


def verify_files(folder: Path, files: dict[str, str], what: str) -> None:
    """Check each ``files`` entry (file name -> sha256) of ``folder``; ``what`` names the
    artifact in the error (a shipped model, a shipped SAE).

    Raises:
        PretrainedError: naming the file that is missing or whose content changed.
    """
    for file_name, expected in files.items():
        path = folder / file_name
        if not path.is_file():
            raise PretrainedError(f"{path}: file of {what} is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise PretrainedError(
                f"{path}: sha256 {actual[:12]}... does not match the registry's "
                f"{expected[:12]}...; the file is corrupt or was modified "
                "(restore it with `git checkout -- <file>`)"
            )


def load_native(name: str, device: str | torch.device | None = None) -> GPT:
    """A shipped model as our own :class:`decoding_gpt.transformer.GPT` (eval mode)."""
    verify(name)
    model, _, _ = load_checkpoint(MODELS_DIR / name, device=device or get_device())
    return model


def load_snapshots(name: str, device: str | torch.device = "cpu") -> tuple[list[int], list[GPT]]:
    """A shipped model's training snapshots as ``(steps, models)``, in step order.

    Only models that ship ``snapshots.safetensors`` have them (``modadd-1l``: its weights
    across the grokking run). The file is checked against the registry's sha256 first.
    """
    verify(name)
    if checkpoint.SNAPSHOTS_FILE not in model_info(name).files:
        raise PretrainedError(f"{name!r} ships no training snapshots")
    return checkpoint.load_snapshots(model_dir(name), device)


def load_tokenizer(name: str) -> PreTrainedTokenizerFast | None:
    """The tokenizer of a shipped model as a ``PreTrainedTokenizerFast`` (or None)."""
    info = model_info(name)
    if info.tokenizer is None:
        return None
    return as_pretrained_tokenizer_fast(get_tokenizer(info.tokenizer))


def load(name: str, device: str | torch.device | None = None) -> TransformerBridge:
    """A model as a TransformerLens ``TransformerBridge``: shipped, or from the hub.

    Shipped models load offline, with their tokenizer attached (``to_tokens``,
    ``to_str_tokens`` and ``generate`` work). Any other name is resolved as a
    TransformerLens model name (``"gpt2-small"``, ``"pythia-70m"``, ...) and loaded from
    the hub, which fails fast with :class:`HubUnavailableError` when offline (within
    ``HUB_PROBE_TIMEOUT_S`` seconds, even when DNS never answers).

    The bridge's ``generate`` is TransformerLens's: it accepts a negative ``temperature``
    and then samples the least likely tokens (see the package docstring).
    """
    if name in _registry():
        return to_transformer_lens(load_native(name, device), tokenizer=load_tokenizer(name))
    return _load_from_hub(name, device)


def _hub_endpoint() -> tuple[str, int]:
    from huggingface_hub import constants  # lazy: only hub requests need it

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def _connect_within(host: str, port: int, timeout: float) -> None:
    """Open (and close) a TCP connection to ``host:port``, the WHOLE probe, name resolution
    and connect together, bounded by ``timeout`` seconds; raise ``OSError`` otherwise.

    ``socket.create_connection(..., timeout=)`` bounds only the connect: its
    ``getaddrinfo`` waits as long as the system resolver does (12.4 s measured when DNS
    never answers). So resolution runs in a daemon thread that we wait for with a deadline;
    a resolver that never answers is left behind in that thread, which cannot keep the
    interpreter alive. The connects get whatever time the resolution left.
    """
    deadline = time.monotonic() + timeout
    answer: queue.Queue = queue.Queue(maxsize=1)

    def resolve() -> None:
        try:
            answer.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as err:
            answer.put(err)

    threading.Thread(target=resolve, name="hub-probe-resolve", daemon=True).start()
    try:
        addresses = answer.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"resolving {host!r} gave no answer within {timeout:.1f} s") from None
    if isinstance(addresses, OSError):
        raise addresses
    error: OSError = TimeoutError(f"no address of {host!r} answered within {timeout:.1f} s")
    for family, kind, proto, _, address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(remaining)
            try:
                sock.connect(address)
                return
            except OSError as err:
                error = err
    raise error


def _check_hub_reachable(name: str) -> None:
    """Raise ``HubUnavailableError`` unless the hub answers on its port within
    ``HUB_PROBE_TIMEOUT_S`` seconds, DNS resolution included."""
    shipped = ", ".join(list_models()) or "none"
    hint = f"the shipped models work offline: {shipped}"
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in OFFLINE_VALUES:
            raise HubUnavailableError(f"{name!r} needs the hub but {variable} is set; {hint}")
    host, port = _hub_endpoint()
    start = time.monotonic()
    try:
        _connect_within(host, port, HUB_PROBE_TIMEOUT_S)
    except OSError as err:
        waited = time.monotonic() - start
        raise HubUnavailableError(
            f"{name!r} needs the hub, which is unreachable ({type(err).__name__} after "
            f"{waited:.1f} s: {err}); {hint}"
        ) from err


def _load_from_hub(name: str, device: str | torch.device | None) -> TransformerBridge:
    from transformer_lens.supported_models import get_official_model_name  # lazy: heavy

    try:
        official = get_official_model_name(name)
    except ValueError:
        shipped = ", ".join(list_models()) or "none"
        raise PretrainedError(
            f"unknown model name {name!r}: not a shipped model ({shipped}) and not a "
            "TransformerLens model name (e.g. 'gpt2-small', 'pythia-70m')"
        ) from None
    _check_hub_reachable(name)
    from transformer_lens.model_bridge import TransformerBridge  # lazy: heavy, hub path only

    return TransformerBridge.boot_transformers(official, device=device or get_device())
