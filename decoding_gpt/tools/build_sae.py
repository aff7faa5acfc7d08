"""Command line: train a shipped SAE, measure it against the stories' ground truth, register it.

Usage::

    python -m decoding_gpt.tools.build_sae stories-4l-attn0-topk          # sweep, train, register
    python -m decoding_gpt.tools.build_sae stories-4l-attn0-topk --no-sweep --no-register
    python -m decoding_gpt.tools.build_sae stories-4l-attn0-topk --set train.steps=50 --no-register

Each SAE has a config ``decoding_gpt/pretrained/saes/configs/NAME.toml``: the model and
hook it reads, the architecture and width, the optimiser, the data (stories of the
train split for training, of the val split for every measurement) and a small sweep of
(hook, architecture, width, sparsity) whose table goes into the card beside the shipped
SAE's. Measured on the evaluation stories, with package functions
(:mod:`decoding_gpt.sae.metrics`, :mod:`decoding_gpt.sae.ground_truth`): L0, explained
variance, MSE, CE loss recovered (the SAE spliced into the model on packed 128-token
rows), dead latents, and for every ground-truth label the best single latent's AUROC
and F1 (:func:`decoding_gpt.sae.ground_truth.match_table`); and, at every hook of
``[ceiling]``, each label's linear-probe AUROC, what a single direction there reaches
(:func:`probe_ceilings`). The SAE is written in SAELens
format to ``decoding_gpt/pretrained/saes/NAME/`` with a ``card.md``, and
``saes/registry.json`` records the sha256 of its files and the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from decoding_gpt.checkpoint import file_sha256
from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.stories import generate_stories
from decoding_gpt.device import machine_description
from decoding_gpt.pretrained import load_native
from decoding_gpt.sae import SAE, SAEConfig, ce_loss_score, evaluate_sae, save_sae, train_sae
from decoding_gpt.sae.ground_truth import (
    LabelledActivations,
    best_per_label,
    collect_labelled,
    match_table,
    packed_story_tokens,
    probe_auroc_table,
)
from decoding_gpt.sae.metrics import dead_latents, feature_acts_of, firing_frequency
from decoding_gpt.sae.shipped import SAE_CONFIG_DIR, SAE_REGISTRY_FILE, SAES_DIR
from decoding_gpt.tools import prog

SHIPPED_FILES = ("cfg.json", "sae_weights.safetensors")
AUROC_MATCH = 0.9  # "a label matched by a single latent" (issue 20)


def config_path(name: str) -> Path:
    return SAE_CONFIG_DIR / f"{name}.toml"


def read_config(name: str, overrides: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The TOML config of ``name`` with ``section.key=value`` overrides (TOML values)."""
    path = config_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in SAE_CONFIG_DIR.glob("*.toml"))
        raise SystemExit(f"no config {path}; known SAEs: {', '.join(known) or 'none'}")
    cfg = tomllib.loads(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if not field or section not in cfg:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE with a known section")
        cfg[section][field] = tomllib.loads(f"v = {value}")["v"]
    return cfg


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    """Training activations and evaluation activations (with labels), per hook."""

    train: dict[str, LabelledActivations]
    test: dict[str, LabelledActivations]
    eval_tokens: torch.Tensor  # packed rows for the CE loss score


def collect(model: Any, cfg: dict[str, Any], hooks: list[str]) -> Data:
    """Activations of ``data.train_stories`` train-split and ``data.eval_stories`` val-split
    stories (seed ``data.seed``) at each hook."""
    tok = get_tokenizer("stories")
    d = cfg["data"]
    train = generate_stories(d["train_stories"], seed=d["seed"], split="train")
    test = generate_stories(d["eval_stories"], seed=d["seed"], split="val")
    return Data(
        {h: collect_labelled(model, train, tok, h) for h in hooks},
        {h: collect_labelled(model, test, tok, h) for h in hooks},
        packed_story_tokens(test, tok, model.cfg.n_ctx),
    )


# --------------------------------------------------------------------------- train


def sae_config(d_in: int, hook: str, arch: str, d_sae: int, sparsity: float) -> SAEConfig:
    """``sparsity`` is ``k`` for TopK, the L1 coefficient for ReLU + L1 (``standard``)."""
    if arch == "topk":
        return SAEConfig(d_in, d_sae, "topk", k=int(sparsity), hook_name=hook)
    return SAEConfig(d_in, d_sae, arch, l1_coefficient=float(sparsity), hook_name=hook)


def train_one(
    acts: torch.Tensor, hook: str, arch: str, d_sae: int, sparsity: float, train: dict[str, Any]
) -> SAE:
    """A seeded SAE trained with :func:`train_sae` on ``acts`` (the ``[train]`` settings)."""
    torch.manual_seed(train["seed"])
    sae = SAE(sae_config(acts.shape[1], hook, arch, d_sae, sparsity))
    steps = train["steps"]
    gen_seed = train["seed"]
    batches = _batches(acts, train["batch_size"], gen_seed)
    train_sae(
        sae,
        batches,
        steps,
        lr=train["lr"],
        l1_warmup_steps=int(train["l1_warmup_fraction"] * steps) if arch == "standard" else 0,
        lr_decay_steps=int(train["lr_decay_fraction"] * steps),
        log_every=max(1, steps // 10),
    )
    return sae.eval()


def _batches(acts: torch.Tensor, batch_size: int, seed: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(acts), generator=gen)
        for start in range(0, len(acts) - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


# --------------------------------------------------------------------------- measure


@torch.no_grad()
def measure(
    sae: SAE, model: Any, test: LabelledActivations, eval_tokens: torch.Tensor
) -> dict[str, Any]:
    """Headline metrics of ``sae`` on the evaluation stories (rounded for the registry)."""
    x = test.acts.acts
    basic = evaluate_sae(sae, x)
    f = feature_acts_of(sae, x)
    ce = ce_loss_score(model, eval_tokens, sae)
    rows = match_table(f, test.labels)
    metrics: dict[str, Any] = {
        "l0": round(basic["l0"], 3),
        "explained_variance": round(basic["explained_variance"], 4),
        "mse": round(basic["mse"], 4),
        "ce_loss_score": round(ce["ce_loss_score"], 4),
        "ce_loss_without_sae": round(ce["ce_loss_without_sae"], 4),
        "ce_loss_with_sae": round(ce["ce_loss_with_sae"], 4),
        "ce_loss_with_ablation": round(ce["ce_loss_with_ablation"], 4),
        "dead_fraction": round(float(dead_latents(firing_frequency(f)).float().mean()), 4),
        "eval_tokens": len(x),
    }
    for label, row in best_per_label(rows).items():
        metrics[f"{label}_class"] = row.klass
        metrics[f"{label}_latent"] = row.latent
        metrics[f"{label}_auroc"] = round(row.auroc, 4)
        metrics[f"{label}_f1"] = round(row.f1, 4)
    metrics["labels_matched"] = sum(
        1 for row in best_per_label(rows).values() if row.auroc > AUROC_MATCH
    )
    return metrics


def run_sweep(model: Any, cfg: dict[str, Any], data: Data) -> list[dict[str, Any]]:
    """Train and measure every ``(hook, arch, d_sae, sparsity)`` of ``[sweep]``."""
    sweep, rows = cfg["sweep"], []
    train = {**cfg["train"], "steps": sweep["steps"]}
    for hook in sweep["hooks"]:
        for arch, d_sae, sparsity in [("untrained", *sweep["runs"][0][1:]), *sweep["runs"]]:
            t0 = time.perf_counter()
            # the first row of each hook is a control: the first run's SAE before training
            # (random directions), the best-of-d_sae AUROC that chance alone gives
            run = {**train, "steps": 0} if arch == "untrained" else train
            arch_used = sweep["runs"][0][0] if arch == "untrained" else arch
            sae = train_one(data.train[hook].acts.acts, hook, arch_used, d_sae, sparsity, run)
            m = measure(sae, model, data.test[hook], data.eval_tokens)
            rows.append(
                {"hook": hook, "architecture": arch, "d_sae": d_sae, "sparsity": sparsity, **m}
            )
            print(_sweep_line(rows[-1]), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def probe_ceilings(
    model: Any, cfg: dict[str, Any], hooks: list[str], collected: Data | None = None
) -> list[dict[str, Any]]:
    """Per hook of ``[ceiling]``, every label's best class by the AUROC of a linear probe
    (:func:`decoding_gpt.sae.ground_truth.probe_auroc_table`: ridge regression fitted on the
    training stories' activations, scored on the evaluation stories). A latent is a
    direction made sparse, so this is roughly what the best single latent at the hook can
    reach: it tells a hook where no SAE can match a label from one where the SAE misses.
    Hooks already in ``collected`` (the sweep's) are not collected again."""
    rows = []
    for hook in hooks:  # one hook at a time: all of them at once hold ~2 GB of activations
        if collected is not None and hook in collected.train:
            data = collected
        else:
            data = collect(model, cfg, [hook])
        train, test = data.train[hook], data.test[hook]
        table = probe_auroc_table(train.acts.acts, train.labels, test.acts.acts, test.labels)
        row: dict[str, Any] = {"hook": hook}
        for (label, klass), auroc in table.items():
            if auroc > row.get(f"{label}_auroc", -1.0):
                row[f"{label}_auroc"], row[f"{label}_class"] = round(auroc, 4), klass
        row["labels_matched"] = sum(1 for k in _labels(row) if row[f"{k}_auroc"] > AUROC_MATCH)
        rows.append(row)
        aurocs = " ".join(f"{row[f'{n}_auroc']:.3f}" for n in _labels(row))
        print(f"probe ceiling {hook:26s} | {aurocs} | > {AUROC_MATCH}: {row['labels_matched']}")
    return rows


def _sweep_line(row: dict[str, Any]) -> str:
    aurocs = " ".join(f"{row[f'{n}_auroc']:.3f}" for n in _labels(row))
    return (
        f"{row['hook']:26s} {row['architecture']:8s} {row['d_sae']:5d} {row['sparsity']:>6} "
        f"L0 {row['l0']:6.1f} EV {row['explained_variance']:.3f} CE {row['ce_loss_score']:.3f} "
        f"dead {row['dead_fraction']:.3f} | {aurocs}"
    )


def _labels(metrics: dict[str, Any]) -> list[str]:
    return [k[: -len("_auroc")] for k in metrics if k.endswith("_auroc")]


# --------------------------------------------------------------------------- card


def write_card(
    name: str,
    cfg: dict[str, Any],
    metrics: dict[str, Any],
    sweep: list[dict],
    ceilings: list[dict] | None = None,
) -> str:
    """The model card: what it is, metrics, the ground-truth table, the probe ceilings by
    hook, the sweep, reproduce."""
    s = cfg["sae"]
    lines = [
        f"# {name}",
        "",
        cfg["description"],
        "",
        f"SAE on `{cfg['model']}` at `{cfg['hook_name']}`: {s['architecture']}, "
        f"d_sae {s['d_sae']}, sparsity {s['sparsity']} (k for TopK, L1 coefficient for "
        "ReLU + L1). SAELens format: `sae_lens.SAE.load_from_disk(this folder)`, or "
        f"`decoding_gpt.sae.shipped.load_shipped_sae({name!r})`.",
        "",
        f"Measured on {metrics['eval_tokens']} tokens of {cfg['data']['eval_stories']} "
        "val-split stories (BOS excluded); CE loss on the same stories packed into "
        "128-token rows.",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("l0", "explained_variance", "mse", "ce_loss_score", "ce_loss_without_sae",
                "ce_loss_with_sae", "ce_loss_with_ablation", "dead_fraction"):  # fmt: skip
        lines.append(f"| {key} | {metrics[key]} |")
    lines += [
        "",
        "## Ground truth: the best single latent per label",
        "",
        "Each label is made binary one-vs-rest per class, on the tokens where it is defined "
        "(`decoding_gpt.sae.ground_truth.TARGETS`): inside_quote (outside / inside, all "
        "tokens); current_speaker (the speaker's gender, tokens inside a quotation); "
        "subject_gender (female / male, tokens whose clause has one character as subject); "
        "story_sentiment (sad / happy, all tokens); holder_of_object (nobody / somebody holds "
        "the key object, all tokens); item_count (0 / 1 / 2 / >=3 items found, all tokens). "
        "For every class, the latent with the highest AUROC; per label, the best class. F1: "
        'of "the latent fires" as a classifier of the class.',
        "",
        "| label | class | latent | AUROC | F1 |",
        "|---|---|---|---|---|",
    ]
    for label in _labels(metrics):
        lines.append(
            f"| {label} | {metrics[f'{label}_class']} | {metrics[f'{label}_latent']} | "
            f"{metrics[f'{label}_auroc']} | {metrics[f'{label}_f1']} |"
        )
    lines += [
        "",
        f"Labels matched by a single latent with AUROC > {AUROC_MATCH}: "
        f"{metrics['labels_matched']} of {len(_labels(metrics))}.",
        "",
    ]
    if ceilings:
        lines += _ceiling_table(ceilings)
    if sweep:
        lines += _sweep_table(cfg, sweep)
    t = cfg["train"]
    lines += [
        "## Training",
        "",
        f"- config: `decoding_gpt/pretrained/saes/configs/{name}.toml`",
        f"- {cfg['data']['train_stories']} train-split stories (seed {cfg['data']['seed']}), "
        f"{metrics['train_tokens']} tokens; {t['steps']} Adam steps of {t['batch_size']} "
        f"tokens, lr {t['lr']}",
        f"- wall time {metrics['train_wall_s']} s (build with sweep: {metrics['build_wall_s']} s) "
        f"on {metrics['machine']}",
        "",
        "## Reproduce",
        "",
        "```bash",
        f"python -m decoding_gpt.tools.build_sae {name}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _ceiling_table(ceilings: list[dict]) -> list[str]:
    labels = _labels(ceilings[0])
    lines = [
        "## What one direction can reach: linear probes by hook",
        "",
        "A latent is a direction (its encoder column) made sparse, so a linear probe onto a "
        "class bounds, roughly, what a single latent at the same hook can reach. Per hook and "
        "label: the best class's AUROC of a ridge probe (`decoding_gpt.sae.ground_truth."
        "probe_auroc_table`, penalty 1.0) fitted on the training stories' activations and "
        f"scored on the evaluation stories; the last column counts the labels above {AUROC_MATCH}.",
        "",
        "| hook | " + " | ".join(labels) + f" | > {AUROC_MATCH} |",
        "|" + "---|" * (2 + len(labels)),
    ]
    for r in ceilings:
        cells = [r["hook"], *(f"{r[f'{n}_auroc']} ({r[f'{n}_class']})" for n in labels)]
        lines.append("| " + " | ".join(str(c) for c in [*cells, r["labels_matched"]]) + " |")
    return [*lines, ""]


def _sweep_table(cfg: dict[str, Any], sweep: list[dict]) -> list[str]:
    labels = _labels(sweep[0])
    head = "| hook | arch | d_sae | k or L1 | L0 | expl. var. | CE rec. | dead | "
    head += " | ".join(labels) + " | matched |"
    lines = [
        "## The sweep that chose it",
        "",
        f"Every run: {cfg['sweep']['steps']} steps, otherwise the training settings above; "
        "the label columns are the best single latent's AUROC (best class). `untrained`: "
        "the first run's SAE before any training step (random directions), the AUROC that "
        "the best of d_sae random latents reaches by chance.",
        "",
        head,
        "|" + "---|" * (9 + len(labels)),
    ]
    for r in sweep:
        cells = [r["hook"], r["architecture"], r["d_sae"], r["sparsity"], r["l0"],
                 r["explained_variance"], r["ce_loss_score"], r["dead_fraction"]]  # fmt: skip
        cells += [r[f"{n}_auroc"] for n in labels] + [r["labels_matched"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [*lines, ""]


# --------------------------------------------------------------------------- register


def register(name: str, cfg: dict[str, Any], sae: SAE, metrics: dict[str, Any], card: str) -> None:
    """Write the SAELens folder and card, and its entry in ``saes/registry.json``."""
    target = SAES_DIR / name
    save_sae(sae, target)
    (target / "card.md").write_text(card)
    entries = json.loads(SAE_REGISTRY_FILE.read_text()) if SAE_REGISTRY_FILE.exists() else {}
    entries[name] = {
        "model": cfg["model"],
        "hook_name": cfg["hook_name"],
        "description": cfg["description"],
        "lecture": cfg["lecture"],
        "files": {f: file_sha256(target / f) for f in SHIPPED_FILES},
        "metrics": metrics,
    }
    SAE_REGISTRY_FILE.write_text(json.dumps(entries, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("decoding_gpt.tools.build_sae"))
    parser.add_argument("name", help="config name under decoding_gpt/pretrained/saes/configs")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-sweep", action="store_true", help="train the shipped config only")
    parser.add_argument("--no-register", action="store_true", help="measure only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_build = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = read_config(args.name, args.overrides)
    model = load_native(cfg["model"], device="cpu")
    hooks = sorted({cfg["hook_name"], *([] if args.no_sweep else cfg["sweep"]["hooks"])})
    data = collect(model, cfg, hooks)
    sweep = [] if args.no_sweep else run_sweep(model, cfg, data)
    ceilings = [] if args.no_sweep else probe_ceilings(model, cfg, cfg["ceiling"]["hooks"], data)
    s, t0 = cfg["sae"], time.perf_counter()
    train_acts = data.train[cfg["hook_name"]].acts.acts
    sae = train_one(train_acts, cfg["hook_name"], s["architecture"], s["d_sae"], s["sparsity"],
                    cfg["train"])  # fmt: skip
    wall = round(time.perf_counter() - t0, 1)
    metrics = measure(sae, model, data.test[cfg["hook_name"]], data.eval_tokens)
    metrics.update(
        train_tokens=len(train_acts),
        train_wall_s=wall,
        build_wall_s=round(time.perf_counter() - t_build, 1),
        machine=machine_description(),
    )
    print(json.dumps(metrics, indent=2))
    if not args.no_register:
        register(args.name, cfg, sae, metrics, write_card(args.name, cfg, metrics, sweep, ceilings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
