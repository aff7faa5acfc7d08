"""Maintainer tool: train a shipped model, measure what it must show, and register it.

Usage::

    python -m decoding_gpt.pretrained.build attn-only-2l              # train, evaluate, register
    python -m decoding_gpt.pretrained.build attn-only-2l --checkpoint runs/attn-only-2l
                                                  # evaluate and register an existing run
    python -m decoding_gpt.pretrained.build attn-only-2l --set train.steps=20 --no-register

Each model has a config in ``decoding_gpt/pretrained/configs/NAME.toml`` (the same file
``python -m decoding_gpt.train`` reads) and an evaluation that measures, with package
functions, the phenomenon its lecture teaches (induction scores, IOI logit difference,
greater-than probability, fact recall). The measured numbers go into the registry and
into a model card next to the weights, with the exact command that reproduces the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoding_gpt.checkpoint import (
    copy_with_weights_as,
    load_checkpoint,
    read_config,
    read_metrics,
)
from decoding_gpt.transformer import GPT, GPTConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
INDUCTION_SEQ_LEN = 50  # [EOS, r_1..r_50, r_1..r_50] fits n_ctx = 128
N_IOI_PROMPTS = 200
N_YEAR_PROMPTS = 200

Evaluation = Callable[[GPT], dict[str, float | str]]  # str: a named best head or hook


@dataclass(frozen=True)
class ModelSpec:
    """What a shipped model is for and how its headline metrics are measured."""

    description: str
    lecture: str
    tokenizer: str | None
    evaluate: Evaluation
    requirements: str  # what the issue asks the metrics to show, for the card
    # a model with its own training loop (not decoding_gpt.train): its CLI, given the flags
    custom_main: Callable[[list[str]], int] | None = None
    # configs trained first, in order, each run starting from the previous one's weights
    # (a curriculum); the model's own config is the last stage
    stages: tuple[str, ...] = ()
    # the dtype the weights ship in: float16 halves the file, and the metrics are measured
    # from the cast weights, so the registry describes exactly what ships
    weights_dtype: torch.dtype = torch.float32


# --------------------------------------------------------------------------- evaluations


def evaluate_induction(model: GPT) -> dict[str, float]:
    """Induction scores per head and losses on ``[EOS, r, r]`` with ``r`` random tokens."""
    from decoding_gpt.heads import induction_score_on_repeated_tokens

    result = induction_score_on_repeated_tokens(
        model, seq_len=INDUCTION_SEQ_LEN, batch=16, seed=0, prefix=0
    )
    scores = result.scores  # [layer, head]
    best = int(scores.flatten().argmax())
    return {
        "max_induction_score": round(float(scores.max()), 4),
        "best_induction_head": f"{best // scores.shape[1]}.{best % scores.shape[1]}",
        "loss_first_half": round(result.loss_first_half, 4),
        "loss_repeated_half": round(result.loss_repeated_half, 4),
    }


def evaluate_stories_tasks(model: GPT) -> dict[str, float]:
    """IOI (held-out names and a held-out template), greater-than, and fact recall."""
    from decoding_gpt.data import get_tokenizer
    from decoding_gpt.data.stories import ioi_prompts, year_prompts
    from decoding_gpt.data.world import fact_prompts
    from decoding_gpt.evals import (
        fact_recall_correct,
        greater_than_probability,
        ioi_logit_difference,
    )

    tok = get_tokenizer("stories")
    # seed 1 draws names and places afresh: the eval prompts are not training sentences
    ioi = ioi_logit_difference(model, tok, ioi_prompts(N_IOI_PROMPTS, seed=1, templates="train"))
    ioi_new = ioi_logit_difference(
        model, tok, ioi_prompts(N_IOI_PROMPTS, seed=1, templates="held_out")
    )
    years = greater_than_probability(model, tok, year_prompts(N_YEAR_PROMPTS, seed=1))
    facts_train = fact_recall_correct(model, tok, fact_prompts("train"))
    facts_new = fact_recall_correct(model, tok, fact_prompts("held_out"))
    return {
        "ioi_logit_diff": round(float(ioi.mean()), 4),
        "ioi_logit_diff_held_out_template": round(float(ioi_new.mean()), 4),
        "ioi_accuracy": round(float((ioi > 0).float().mean()), 4),
        "greater_than_probability": round(float(years.mean()), 4),
        "fact_recall_train_phrasings": round(float(facts_train.float().mean()), 4),
        "fact_recall_held_out_phrasings": round(float(facts_new.float().mean()), 4),
    }


def evaluate_stories_with_induction(model: GPT) -> dict[str, float]:
    return {**evaluate_stories_tasks(model), **evaluate_induction(model)}


def evaluate_modular_addition(model: GPT) -> dict[str, float]:
    """Train/test loss and accuracy on the split of ``configs/modadd-1l.toml``."""
    from decoding_gpt.grokking import evaluate_shipped

    return evaluate_shipped(model)


def evaluate_code_string_probe(model: GPT) -> dict[str, float]:
    """Inside-a-string probe accuracy per residual hook on val-split stdlib files."""
    from decoding_gpt.pretrained.string_probe import evaluate_string_probe

    return evaluate_string_probe(model)


def grokking_main(argv: list[str]) -> int:
    from decoding_gpt.grokking import main as grokking_cli

    return grokking_cli(argv)


SPECS: dict[str, ModelSpec] = {
    "attn-only-1l": ModelSpec(
        "Attention-only transformer, 1 layer, on the stories corpus: bigram and "
        "skip-trigram statistics, and (by construction) no induction head.",
        lecture="10",
        tokenizer="stories",
        evaluate=evaluate_induction,
        requirements="no induction: max induction score < 0.2",
    ),
    "attn-only-2l": ModelSpec(
        "Attention-only transformer, 2 layers, on the stories corpus: forms a "
        "previous-token head and induction heads.",
        lecture="11",
        tokenizer="stories",
        evaluate=evaluate_induction,
        requirements="a head with induction score > 0.7; loss on the repeated half < 1.0 nat",
        stages=("attn-only-2l-copying",),
    ),
    "stories-4l": ModelSpec(
        "GPT with MLPs, 4 layers, on the stories corpus: indirect-object identification, "
        "greater-than on years, and factual recall.",
        lecture="12",
        tokenizer="stories",
        evaluate=evaluate_stories_with_induction,
        requirements=(
            "IOI mean logit difference > 3 (and > 1.5 on the held-out template); "
            "greater-than probability > 0.8; fact recall > 90 % top-1"
        ),
        stages=("stories-4l-pretrain",),
    ),
    "modadd-1l": ModelSpec(
        "One-layer transformer (ReLU MLP, no LayerNorm) trained with AdamW on modular "
        "addition (a + b) mod 113 with strong weight decay: it memorises, then groks; "
        "ships with training snapshots and curves.",
        lecture="16",
        tokenizer=None,
        evaluate=evaluate_modular_addition,
        requirements="grokked: train and test accuracy > 99 %",
        custom_main=grokking_main,
    ),
    "code-4l": ModelSpec(
        "GPT with MLPs, 4 layers, on Python standard-library source (code BPE tokenizer): "
        "whether a string literal is open after a token is linearly decodable from the "
        "residual stream at that token.",
        lecture="13",
        tokenizer="code",
        evaluate=evaluate_code_string_probe,
        requirements=(
            "val loss reported; a logistic probe for inside-a-string (a literal open just "
            "after the token; string_probe.py) > 95 % held-out accuracy at some layer "
            "(well above the majority-class baseline)"
        ),
        weights_dtype=torch.float16,  # 10.6 MB instead of 21.2: all models stay < 40 MB
    ),
}


# --------------------------------------------------------------------------- card


def machine_description() -> str:
    """The machine a run was measured on, in words."""
    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"{device}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def write_card(name: str, spec: ModelSpec, checkpoint: Path, metrics: dict[str, Any]) -> str:
    """Markdown model card: what, config, data, training, measured metrics, reproduction."""
    config = read_config(checkpoint)
    history = read_metrics(checkpoint)
    lines = [
        f"# {name}",
        "",
        spec.description,
        "",
        f"Lecture {spec.lecture}. Required: {spec.requirements}.",
        "",
        "## Measured",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in metrics.items()],
        "",
        "## Model config",
        "",
        "```json",
        json.dumps(config["model"], indent=2),
        "```",
        "",
        "## Training",
        "",
        f"- config: `decoding_gpt/pretrained/configs/{name}.toml` (data, optimiser, steps)",
        *[
            f"- curriculum stage {i + 1}, before it: `configs/{stage}.toml` "
            "(the next stage starts from its weights)"
            for i, stage in enumerate(spec.stages)
        ],
        f"- tokens seen: {metrics['tokens_seen']:,}",
        f"- final train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}",
        f"- wall time {metrics['train_wall_s']:.0f} s"
        + (f" (all stages: {metrics['total_train_wall_s']:.0f} s)" if spec.stages else "")
        + f" on {metrics['machine']} "
        "(the machine ran other jobs at the same time: an upper bound)",
        f"- training curves: `metrics.json` ({len(history.get('step', []))} logged steps)",
        *(
            [
                f"- weights stored in {_dtype_name(spec.weights_dtype)} "
                "(loaded into float32); the metrics above are measured from them"
            ]
            if spec.weights_dtype != torch.float32
            else []
        ),
        "",
        "## Reproduce",
        "",
        "```bash",
        f"python -m decoding_gpt.pretrained.build {name}",
        "```",
        "",
        "Training is seeded; the same machine and torch version give the same weights up to "
        "floating-point reduction order in multi-threaded kernels.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def stage_dir(out: Path, stage: str) -> Path:
    """Where an earlier curriculum stage of the run in ``out`` keeps its checkpoint."""
    return out / "stages" / stage


def train_model(name: str, out: Path, overrides: list[str]) -> None:
    """Run ``python -m decoding_gpt.train`` on the model's config, after its stages.

    ``overrides`` apply to every stage (so a smoke run shortens them all).
    """
    from decoding_gpt.train import main as train_main

    start: Path | None = None
    for config_name in (*SPECS[name].stages, name):
        run_dir = out if config_name == name else stage_dir(out, config_name)
        args = [str(CONFIG_DIR / f"{config_name}.toml"), "--out", str(run_dir)]
        if start is not None:
            args += ["--set", f'train.init_from="{start}"']
        for item in overrides:
            args += ["--set", item]
        train_main(args)
        start = run_dir


def _stage_totals(name: str, checkpoint: Path, history: dict[str, Any]) -> dict[str, Any]:
    """Tokens and wall time summed over the curriculum stages and the final run."""
    totals: dict[str, Any] = {}
    for stage in SPECS[name].stages:
        stage_history = read_metrics(stage_dir(checkpoint, stage))
        totals[f"{stage}_tokens_seen"] = int(stage_history["tokens_seen"][-1])
        totals[f"{stage}_train_wall_s"] = round(stage_history["train_time"], 1)
    if totals:
        totals["total_train_wall_s"] = round(
            history["train_time"] + sum(v for k, v in totals.items() if k.endswith("wall_s")), 1
        )
    return totals


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # torch.float16 -> "float16"


def weights_to_ship(name: str, checkpoint: Path) -> Path:
    """The folder whose weights ship: the run itself, or a copy beside it with the
    weights cast to the model's ``weights_dtype``."""
    dtype = SPECS[name].weights_dtype
    if dtype == torch.float32:
        return checkpoint
    target = checkpoint.with_name(f"{checkpoint.name}-{_dtype_name(dtype)}")
    return copy_with_weights_as(checkpoint, target, dtype)


def measure(name: str, checkpoint: Path, weights: Path | None = None) -> dict[str, Any]:
    """The model's headline metrics, measured on the weights in ``weights`` (default
    the run ``checkpoint``), plus the run's training summary."""
    model, _, history = load_checkpoint(weights or checkpoint, GPT, GPTConfig)
    metrics: dict[str, Any] = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokens_seen": int(history["tokens_seen"][-1]),
        "train_loss": round(history["train_loss"][-1], 4),
        "val_loss": round(history["val_loss"][-1], 4) if history.get("val_loss") else math.nan,
        "train_wall_s": round(history["train_time"], 1),
        **_stage_totals(name, checkpoint, history),
        "machine": machine_description(),
    }
    with torch.no_grad():
        metrics.update(SPECS[name].evaluate(model))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoding_gpt.pretrained.build")
    parser.add_argument("name", choices=sorted(SPECS))
    parser.add_argument("--checkpoint", help="evaluate this existing run instead of training")
    parser.add_argument("--out", help="run directory (default runs/NAME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-register", action="store_true", help="measure only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if SPECS[args.name].custom_main is not None:  # same flags, its own training loop
        flags = [
            f
            for key in ("checkpoint", "out")
            if getattr(args, key)
            for f in (f"--{key}", getattr(args, key))
        ]
        flags += [f for item in args.overrides for f in ("--set", item)]
        return SPECS[args.name].custom_main(flags + ["--no-register"] * args.no_register)
    checkpoint = Path(args.checkpoint or args.out or Path("runs") / args.name)
    if not args.checkpoint:
        train_model(args.name, checkpoint, args.overrides)
    shipped = weights_to_ship(args.name, checkpoint)
    metrics = measure(args.name, checkpoint, shipped)
    print(json.dumps(metrics, indent=2))
    if not args.no_register:
        from decoding_gpt.pretrained.registry import register

        spec = SPECS[args.name]
        card = write_card(args.name, spec, checkpoint, metrics)
        register(
            args.name, shipped, description=spec.description, lecture=spec.lecture,
            tokenizer=spec.tokenizer, metrics=metrics, card=card,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
