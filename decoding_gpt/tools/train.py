"""Command line: train a GPT from a TOML config.

Usage::

    python -m decoding_gpt.tools.train configs/tiny-smoke.toml
    python -m decoding_gpt.tools.train CONFIG.toml --set train.steps=20 --out DIR
    python -m decoding_gpt.tools.train CONFIG.toml --resume        # continue from DIR's checkpoint
        # (same model and hyper-parameters, train.steps may grow; other changes: init_from)
    torchrun --standalone --nproc_per_node=2 -m decoding_gpt.tools.train CONFIG.toml   # DDP

The config has three tables, and an optional fourth:

``[model]``
    ``decoding_gpt.transformer.GPTConfig`` fields (``d_vocab``, ``n_ctx``, ``d_model``, ...).
``[data]``
    one source:

    - ``corpus = "NAME"``: ``decoding_gpt.data.load_token_array(NAME, "train"/"val")``
      (optionally cut to ``n_tokens`` / ``val_n_tokens``); with ``repeat_fraction > 0``
      the training stream is cut into ``n_ctx``-token rows and that fraction of the
      rows gets a random span written twice at a random offset
      (``decoding_gpt.data.synthetic.plant_repeated_spans``): copying it is what induction
      heads do, and such rows make those heads form much sooner. The validation split
      stays pure corpus;
    - ``path = "train.npy"`` (and optionally ``val_path``; otherwise the last
      ``val_fraction`` of the stream is held out): raw integer arrays, loaded with
      ``allow_pickle=False``; relative paths are read from the config file's folder;
    - ``kind = "random"``: uniform random tokens, ``n_seqs`` rows of ``n_ctx`` tokens; a
      ``repeat_fraction`` of the rows get a repeated span planted as for a corpus (the
      second copy is predictable only by copying, which is what induction heads learn).

    ``min_span`` (default 8) is the shortest planted span, and ``loss_on = "repeats"``
    makes only the predictable part of each second copy a training target (the mask of
    ``decoding_gpt.transformer.next_token_loss``); the default ``loss_on = "all"`` trains on
    every token.
``[train]``
    ``decoding_gpt.training.TrainConfig`` fields. ``init_from = "DIR"`` starts from the
    weights of the checkpoint in ``DIR`` (a curriculum's earlier stage); with
    ``init_heads = [h, ...]`` that checkpoint may have fewer heads per layer, which become
    heads ``h, ...`` of this model (``place_heads``; attn-only-2l's second stage).
``[snapshots]``
    ``steps = [0, 100, ...]``: the weights at those steps (float16) go to
    ``snapshots.safetensors`` in the run folder (:class:`Snapshots`; chants-2l's phase
    change is read off them). A resumed run keeps the snapshots it had.

The run writes a checkpoint directory (``decoding_gpt.checkpoint``) to ``--out`` (or
``train.out_dir``, default ``runs/<config name>``) and prints a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from decoding_gpt.checkpoint import (
    SNAPSHOTS_FILE,
    CheckpointError,
    load_checkpoint,
    read_snapshots,
    save_snapshots,
)
from decoding_gpt.data import load_token_array
from decoding_gpt.data.synthetic import plant_repeated_spans, random_tokens
from decoding_gpt.device import set_seed
from decoding_gpt.tools import prog
from decoding_gpt.training import TrainConfig, init_distributed, train
from decoding_gpt.transformer import GPT, GPTConfig

SECTIONS = ("model", "data", "train", "snapshots")


# --------------------------------------------------------------------------- config


def _parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``20``, ``1e-3``, ``true``, ``"x"``); bare words as strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a parsed config (in place; returned)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in SECTIONS or not name:
            raise ValueError(
                f"--set expects SECTION.KEY=VALUE with SECTION in {SECTIONS}: {item!r}"
            )
        config.setdefault(section, {})[name] = _parse_value(value.strip())
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a TOML run config and apply overrides; unknown tables are an error."""
    path = Path(path)
    try:
        config = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise SystemExit(f"{path}: config file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise SystemExit(f"{path}: invalid TOML ({err})") from err
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"{path}: unknown table(s) {unknown}; expected {list(SECTIONS)}")
    return apply_overrides(config, overrides or [])


# --------------------------------------------------------------------------- data


def _resolve_path(value: str, base: Path) -> Path:
    path = Path(value)
    if not path.is_absolute() and (base / path).exists():
        return base / path
    return path


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise SystemExit(f"{path}: data file not found") from err
    except ValueError as err:
        raise SystemExit(f"{path}: not a plain numeric .npy array ({err})") from err
    if not np.issubdtype(arr.dtype, np.integer):
        raise SystemExit(f"{path}: token ids must be integers, got dtype {arr.dtype}")
    return arr


class RunData(NamedTuple):
    """A run's token arrays, and which training tokens are targets (``None``: all)."""

    train: np.ndarray
    val: np.ndarray | None
    loss_mask: np.ndarray | None = None


def load_data(
    section: dict[str, Any], *, n_ctx: int, d_vocab: int, seed: int, base: Path = Path(".")
) -> RunData:
    """The train and val token arrays (and loss mask) named by a config's ``[data]`` table."""
    section = dict(section)
    loss_on = section.get("loss_on", "all")
    if loss_on not in ("all", "repeats"):
        raise SystemExit(f"[data]: loss_on must be 'all' or 'repeats', got {loss_on!r}")
    if "corpus" in section:
        name = section["corpus"]
        n_train, n_val = section.get("n_tokens"), section.get("val_n_tokens")
        val_arr = load_token_array(name, "val", n_tokens=n_val)
        train_arr = load_token_array(name, "train", n_tokens=n_train)
        frac = float(section.get("repeat_fraction", 0.0))
        if frac == 0:
            if loss_on == "repeats":
                raise SystemExit("[data]: loss_on = 'repeats' needs repeat_fraction > 0")
            return RunData(train_arr, val_arr)
        seed_ = int(section.get("seed", seed))
        rows, mask = _plant_spans(train_arr, section, n_ctx, d_vocab, frac, seed_)
        return RunData(rows, val_arr, mask if loss_on == "repeats" else None)
    if "path" in section:
        train_arr = _load_npy(_resolve_path(section["path"], base))
        if "val_path" in section:
            return RunData(train_arr, _load_npy(_resolve_path(section["val_path"], base)))
        frac = float(section.get("val_fraction", 0.1))
        if frac <= 0:
            return RunData(train_arr, None)
        cut = int(len(train_arr) * (1 - frac))
        return RunData(train_arr[:cut], train_arr[cut:])
    return _random_data(section, n_ctx, d_vocab, seed, loss_on)


def _plant_spans(
    stream: np.ndarray, section: dict[str, Any], n_ctx: int, d_vocab: int, frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``plant_repeated_spans`` with the config's ``min_span`` (default 8)."""
    min_span = int(section.get("min_span", 8))
    try:
        return plant_repeated_spans(stream, n_ctx, d_vocab, frac, seed, min_span=min_span)
    except ValueError as err:
        raise SystemExit(f"[data]: {err}") from err


def _random_data(
    section: dict[str, Any], n_ctx: int, d_vocab: int, seed: int, loss_on: str
) -> RunData:
    """``kind = "random"``: uniform tokens, a fraction of the rows holding a repeated span."""
    kind = section.get("kind", "random")
    if kind != "random":
        raise SystemExit(f"[data]: give corpus=..., path=..., or kind='random' (got kind={kind!r})")
    n_seqs = int(section.get("n_seqs", 2048))
    vocab = int(section.get("vocab", d_vocab))
    frac = float(section.get("repeat_fraction", 0.0))
    data_seed = int(section.get("seed", seed))
    if loss_on == "repeats" and frac == 0:
        raise SystemExit("[data]: loss_on = 'repeats' needs repeat_fraction > 0")

    def make(n: int, seed_: int) -> tuple[np.ndarray, np.ndarray]:
        noise = random_tokens(n, n_ctx, vocab, seed_).reshape(-1)
        return _plant_spans(noise, section, n_ctx, vocab, frac, seed_ + 1_000_003)

    (train, mask), (val, _) = make(n_seqs, data_seed), make(max(1, n_seqs // 8), data_seed + 1)
    return RunData(train, val, mask if loss_on == "repeats" else None)


def _check_vocab(arr: np.ndarray | None, d_vocab: int, what: str) -> None:
    if arr is None or arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= d_vocab:
        raise SystemExit(
            f"{what} data holds token ids in [{lo}, {hi}] but model.d_vocab = {d_vocab}"
        )


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("decoding_gpt.tools.train"), description="Train a GPT from a TOML config."
    )
    parser.add_argument("config", help="TOML file with [model], [data], [train] tables")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set train.steps=20",
    )
    parser.add_argument("--out", help="checkpoint directory (overrides train.out_dir)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in the out directory"
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model and data from the config, train, and return the history."""

    config_path = Path(args.config)
    config = load_config(config_path, args.overrides)
    train_section = dict(config.get("train", {}))
    if args.out:
        train_section["out_dir"] = args.out
    train_section.setdefault("out_dir", str(Path("runs") / config_path.stem))
    try:
        train_cfg = TrainConfig.from_dict(train_section)
        model_cfg = GPTConfig(**config.get("model", {}))
    except (TypeError, ValueError) as err:
        raise SystemExit(f"{config_path}: {err}") from err

    info = init_distributed(train_cfg.device)
    set_seed(train_cfg.seed, deterministic=False)  # same seed: every rank builds the same model
    train_data, val_data, loss_mask = load_data(
        config.get("data", {}),
        n_ctx=model_cfg.n_ctx,
        d_vocab=model_cfg.d_vocab,
        seed=train_cfg.seed,
        base=config_path.parent,
    )
    _check_vocab(train_data, model_cfg.d_vocab, "train")
    _check_vocab(val_data, model_cfg.d_vocab, "val")
    model = GPT(model_cfg)
    if train_cfg.init_from and not args.resume:
        _start_from(model, Path(train_cfg.init_from), train_cfg.init_heads)

    resume = None
    if args.resume:
        assert train_cfg.out_dir is not None  # defaulted above: runs/<config name>
        resume = Path(train_cfg.out_dir)
        if not (resume / "trainer_state.json").is_file():
            raise SystemExit(f"--resume: no resumable checkpoint in {resume}")
    snapshots = Snapshots(model, _snapshot_steps(config, train_cfg.steps))
    if resume is not None and (resume / SNAPSHOTS_FILE).is_file():
        snapshots.taken.update(read_snapshots(resume / SNAPSHOTS_FILE))
    elif 0 in snapshots.steps:
        snapshots(0, {})  # the initialisation
    start = time.perf_counter()
    history = train(
        model,
        train_data,
        val_data,
        train_cfg,
        snapshots if snapshots.steps else None,
        model_config=model_cfg,
        resume_from=resume,
        loss_mask=loss_mask,
    )
    wall = time.perf_counter() - start
    if info.is_main:
        if snapshots.steps:
            assert train_cfg.out_dir is not None  # defaulted above: runs/<config name>
            save_snapshots(Path(train_cfg.out_dir) / SNAPSHOTS_FILE, snapshots.taken)
        _print_summary(model, history, train_cfg, info.world_size, wall)
    return history


class Snapshots:
    """A ``train`` callback that keeps the weights at chosen steps (float16, on the CPU).

    The run writes them to ``snapshots.safetensors`` in its folder
    (:func:`decoding_gpt.checkpoint.save_snapshots`): how a phenomenon forms during
    training is read off these, e.g. the induction-head phase change.
    """

    def __init__(self, model: torch.nn.Module, steps: Sequence[int]) -> None:
        self.model = model
        self.steps = frozenset(steps)
        self.taken: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, step: int, history: dict[str, Any]) -> None:
        if step in self.steps:
            self.taken[step] = {
                name: value.detach().to("cpu", torch.float16).clone()
                for name, value in self.model.state_dict().items()
            }


def _snapshot_steps(config: dict[str, Any], n_steps: int) -> list[int]:
    """The ``[snapshots] steps`` of a config (``[]`` without the table), checked."""
    steps = config.get("snapshots", {}).get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, int) for s in steps):
        raise SystemExit(f"[snapshots]: steps must be a list of integers, got {steps!r}")
    outside = [s for s in steps if not 0 <= s <= n_steps]
    if outside:
        raise SystemExit(f"[snapshots]: steps {outside} lie outside 0..train.steps={n_steps}")
    return sorted(set(steps))


def _start_from(model: GPT, directory: Path, heads: tuple[int, ...] | None = None) -> None:
    """Copy the weights of the checkpoint in ``directory`` into ``model``.

    This is how a curriculum runs: a later stage starts where an earlier one stopped,
    with its own data, optimiser state and schedule. The configs must be equal, except
    that with ``heads`` (``train.init_heads``) the checkpoint may have fewer heads per
    layer: its head ``i`` becomes head ``heads[i]`` (:func:`place_heads`).
    """

    try:
        start, start_cfg, _ = load_checkpoint(directory)
    except CheckpointError as err:
        raise SystemExit(f"train.init_from: {err}") from err
    if heads is not None:
        try:
            place_heads(start, model, heads)
        except ValueError as err:
            raise SystemExit(f"train.init_from: {directory}: {err}") from err
        return
    if start_cfg != model.cfg:
        raise SystemExit(
            f"train.init_from: {directory} holds a model with config {start_cfg}, "
            f"but this run's [model] is {model.cfg}"
        )
    model.load_state_dict(start.state_dict())


# Attention parameters with a leading head axis ([n_heads, ...]); b_O is shared.
PER_HEAD = {"W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"}


def place_heads(source: GPT, target: GPT, heads: Sequence[int]) -> None:
    """Copy ``source`` into ``target``, a model with more attention heads per layer.

    Head ``i`` of every layer of ``source`` becomes head ``heads[i]`` of ``target``; the
    other heads keep ``target``'s random initialisation, except that their output
    matrices are set to zero. A head's output is :math:`z W_O`, so heads with
    :math:`W_O = 0` write nothing, and ``target`` computes exactly ``source``'s function
    when training starts: the new heads join only as far as the gradient grows their
    :math:`W_O`. Every other parameter is copied as it is.
    """
    same = dataclasses.replace(target.cfg, n_heads=source.cfg.n_heads)
    if same != source.cfg:
        raise ValueError(f"only n_heads may differ: checkpoint {source.cfg}, this run {target.cfg}")
    n_new = target.cfg.n_heads
    if len(heads) != source.cfg.n_heads or len(set(heads)) != len(heads):
        raise ValueError(
            f"init_heads {list(heads)} must name {source.cfg.n_heads} distinct heads "
            "(one per head of the checkpoint)"
        )
    if not all(0 <= h < n_new for h in heads):
        raise ValueError(f"init_heads {list(heads)}: heads are 0..{n_new - 1}")
    index = torch.tensor(list(heads))
    fresh = torch.tensor([h for h in range(n_new) if h not in heads], dtype=torch.long)
    state = target.state_dict()
    with torch.no_grad():
        for name, value in source.state_dict().items():
            if name.split(".")[-1] in PER_HEAD:
                state[name][index] = value
                if name.endswith("W_O"):
                    state[name][fresh] = 0.0
            else:
                state[name] = value.clone()
    target.load_state_dict(state)


def _print_summary(
    model: GPT, history: dict[str, Any], cfg: TrainConfig, world_size: int, wall: float
) -> None:
    n_params = sum(p.numel() for p in model.parameters())

    def last(key: str) -> float:
        return history[key][-1] if history[key] else math.nan

    lines = [
        f"params          {n_params:,}",
        f"steps           {history['step'][-1] if history['step'] else 0} "
        f"(world size {world_size})",
        f"train loss      {last('train_loss'):.4f}",
        f"val loss        {last('val_loss'):.4f}",
        f"tokens/s        {history['tokens_per_s']:,.0f}",
        f"wall time       {wall:.1f} s",
        f"checkpoint      {cfg.out_dir}",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m decoding_gpt.tools.train`` and the ``dgpt-train`` script."""
    args = build_parser().parse_args(argv)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA; no effect on CPU
    try:
        run(args)
    finally:
        torch.set_float32_matmul_precision(precision)  # main() may run inside a test process
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
