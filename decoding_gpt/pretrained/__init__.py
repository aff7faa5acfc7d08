"""The small models this course trains and ships, and the door to hub models.

Every notebook runs on shipped models by default, offline::

    from decoding_gpt import pretrained
    pretrained.list_models()                  # names of the shipped models
    model = pretrained.load("attn-only-2l")   # a TransformerLens TransformerBridge
    gpt = pretrained.load_native("attn-only-2l")  # the same weights in our GPT
    steps, models = pretrained.load_snapshots("modadd-1l")  # weights across a training run

Each shipped model is a checkpoint folder under ``pretrained/models/<name>/``
(``model.safetensors``, ``config.json``, ``metrics.json``, ``card.md``); ``registry.json``
records the sha256 of every file, which is checked on every load. Hub names such as
``"gpt2-small"`` or ``"pythia-70m"`` go to TransformerLens when the hub is reachable; offline
they fail within seconds with a message naming the shipped alternatives.
"""

from decoding_gpt.pretrained.registry import (
    HubUnavailableError,
    ModelInfo,
    PretrainedError,
    list_models,
    load,
    load_native,
    load_snapshots,
    load_tokenizer,
    model_dir,
    model_info,
    verify,
)

__all__ = [
    "HubUnavailableError",
    "ModelInfo",
    "PretrainedError",
    "list_models",
    "load",
    "load_native",
    "load_snapshots",
    "load_tokenizer",
    "model_dir",
    "model_info",
    "verify",
]
