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

**Sampling from a bridge.** ``load`` returns TransformerLens's own ``TransformerBridge``,
so ``bridge.generate`` is TransformerLens's sampler, not ours, and it does not check its
``temperature``: it divides the logits ``z`` by it, so ``temperature=-1`` samples from
``softmax(-z)``, the least likely tokens first (and ``-1e-6`` is arg-MIN decoding), with no
error. Pass ``temperature >= 0`` (``do_sample=False`` for greedy). Our sampler,
``GPT.generate`` (``load_native``) and ``decoding_gpt.generation.generate``, raises
``ValueError`` for a negative temperature. ``tests/test_pretrained.py`` pins both, so an
upgrade of TransformerLens that changes this shows up there.
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
