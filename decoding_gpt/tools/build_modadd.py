"""The ``modadd-1l`` run: its own training loop, summary and model-card section.

``modadd-1l`` is not trained by :mod:`decoding_gpt.tools.train` but by
:func:`decoding_gpt.grokking.train_modular_addition` (AdamW on pairs ``a b =``, loss at the
last position), and it ships training snapshots. :mod:`decoding_gpt.tools.build_model`
builds it like every other model (``python -m decoding_gpt.tools.build_model modadd-1l``);
this module holds the parts that differ: reading its TOML config, training it with
snapshots, the numbers its card records, and the card's progress-measure table.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from decoding_gpt.checkpoint import (
    SNAPSHOTS_FILE,
    read_config,
    read_metrics,
    save_checkpoint,
    save_snapshots,
)
from decoding_gpt.device import set_seed
from decoding_gpt.grokking import (
    GrokTrainConfig,
    ModAddData,
    evaluate_modular_addition,
    frequency_norms,
    key_frequencies,
    make_dataset,
    model_config,
    progress_measures,
    train_modular_addition,
)
from decoding_gpt.tools.train import load_config
from decoding_gpt.transformer import GPT, GPTConfig

DATA_DEFAULTS = {"p": 113, "train_fraction": 0.3, "seed": 0}


def read_run_config(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[GPTConfig, dict[str, Any], GrokTrainConfig]:
    """``(model config, data settings, training config)`` from a TOML file + overrides.

    ``[data]`` holds ``p``, ``train_fraction`` and ``seed``; ``[model]`` any
    :class:`GPTConfig` field (``d_vocab = p + 1`` and ``n_ctx = 3`` are derived);
    ``[train]`` the fields of :class:`GrokTrainConfig`.
    """
    raw = load_config(path, overrides)
    data = {**DATA_DEFAULTS, **raw.get("data", {})}
    unknown = sorted(set(data) - set(DATA_DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown [data] keys {unknown}; known: p, train_fraction, seed")
    train = raw.get("train", {})
    unknown = sorted(set(train) - {f.name for f in fields(GrokTrainConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown [train] keys {unknown}")
    return model_config(data["p"], **raw.get("model", {})), data, GrokTrainConfig(**train)


def split_of(checkpoint: Path) -> ModAddData:
    """The train/test split a built run was trained on (from its ``config.json``)."""
    data = read_config(checkpoint)["train"]["data"]
    return make_dataset(data["p"], data["train_fraction"], data["seed"])


def train_run(config_path: Path, out: Path, overrides: list[str]) -> None:
    """Train from the config; write a checkpoint and ``snapshots.safetensors`` to ``out``.

    Every snapshot is measured against the key frequencies of the *final* embedding, so
    the card's table shows the circuit forming.
    """
    model_cfg, data_cfg, train_cfg = read_run_config(config_path, overrides)
    data = make_dataset(data_cfg["p"], data_cfg["train_fraction"], data_cfg["seed"])
    set_seed(train_cfg.seed)
    model = GPT(model_cfg)
    run = train_modular_addition(model, data, train_cfg)
    keys = key_frequencies(frequency_norms(model.embed.W_E[: data.p].detach()))
    snaps = []
    for step, state in run.snapshots.items():
        snap = GPT(model_cfg)
        snap.load_state_dict({k: v.float() for k, v in state.items()})
        snaps.append({"step": step, **progress_measures(snap.eval(), data, keys)})
    run.history["key_frequencies"] = keys
    run.history["snapshots"] = snaps
    train_section = {"data": data_cfg, **asdict(train_cfg)}
    save_checkpoint(out, model, model_cfg, train_config=train_section, metrics=run.history)
    save_snapshots(out / SNAPSHOTS_FILE, run.snapshots)


def evaluate(model: GPT, checkpoint: Path) -> dict[str, float]:
    """Train/test loss and accuracy on the split the run in ``checkpoint`` trained on."""
    data = split_of(checkpoint)
    if model.cfg.d_vocab != data.p + 1:
        raise ValueError(f"model has d_vocab={model.cfg.d_vocab}, the split needs {data.p + 1}")
    return {k: round(v, 4) for k, v in evaluate_modular_addition(model, data).items()}


def first_step_above(history: dict[str, Any], key: str, level: float) -> int | None:
    """The first logged step at which ``history[key] > level`` (None if never)."""
    return next((s for s, v in zip(history["step"], history[key], strict=True) if v > level), None)


def summary(checkpoint: Path, model: GPT, history: dict[str, Any]) -> dict[str, Any]:
    """What the card records about the run: size, split, when it memorised and grokked."""
    data = split_of(checkpoint)
    return {
        "p": data.p,
        "n_train_pairs": len(data.train_idx),
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": history["step"][-1],
        "step_test_accuracy_above_0_99": first_step_above(history, "test_accuracy", 0.99),
        "step_train_accuracy_above_0_99": first_step_above(history, "train_accuracy", 0.99),
        "key_frequencies": ", ".join(map(str, history["key_frequencies"])),
        "n_snapshots": len(history["snapshot_steps"]),
        "train_wall_s": round(history["train_time"], 1),
    }


def card_section(name: str, checkpoint: Path, metrics: dict[str, Any]) -> list[str]:
    """The card's data/training lines and the progress measures at every snapshot."""
    train_cfg, history = read_config(checkpoint)["train"], read_metrics(checkpoint)
    size = train_cfg["batch_size"]
    batch = "full batch" if size is None else f"shuffled mini-batches of {size} pairs"
    rows = [
        f"| {s['step']} | {s['train_accuracy']:.3f} | {s['test_accuracy']:.3f} | "
        f"{s['test_loss']:.3f} | {s['key_frequency_energy']:.3f} | {s['excluded_loss']:.3f} | "
        f"{s['restricted_loss']:.3f} | {s['weight_norm_sq']:.0f} |"
        for s in history["snapshots"]
    ]
    return [
        "## Data and training", "",
        f"- all {train_cfg['data']['p']}^2 pairs `a b =` -> `(a + b) mod p`; a seeded random "
        f"{train_cfg['data']['train_fraction']:.0%} of them train, the rest test",
        f"- AdamW, {batch}, lr {train_cfg['lr']}, weight decay {train_cfg['weight_decay']}, "
        f"betas {tuple(train_cfg['betas'])}, {train_cfg['steps']} steps",
        f"- config: `decoding_gpt/pretrained/configs/{name}.toml`",
        f"- wall time {metrics['train_wall_s']:.0f} s on {metrics['machine']} "
        "(the machine ran other jobs at the same time: an upper bound)",
        f"- training curves: `metrics.json` ({len(history['step'])} logged steps: train/test "
        "loss and accuracy, sum of squared weights)",
        f"- snapshots: `{SNAPSHOTS_FILE}` (float16, keys `step_<n>/<parameter>`; "
        f'`decoding_gpt.pretrained.load_snapshots("{name}")`)', "",
        "## Progress measures at the snapshots", "",
        f"Key frequencies (of the final `W_E`): {metrics['key_frequencies']}. Energy: share of "
        "`W_E`'s non-constant squared Fourier norm at them; excluded loss: train loss without "
        "their `(a+b)` components; restricted loss: test loss with only those components.", "",
        "| step | train acc | test acc | test loss | key energy | excluded loss | "
        "restricted loss | sum w^2 |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
    ]  # fmt: skip
