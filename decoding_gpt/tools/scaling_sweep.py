"""Command line: train the scaling family, fit ``L(N)`` and write the sweep table.

Usage::

    python -m decoding_gpt.tools.scaling_sweep \\
        --out decoding_gpt/pretrained/scaling/stories_sweep.json \\
        --weights decoding_gpt/pretrained/scaling/weights

Trains one GPT per ``(width, depth)`` with :func:`decoding_gpt.scaling.train_size_sweep`
(same token budget, batches and schedule for every size), fits the pure and the
saturating power law, and writes the table with its command, configuration and machine.
With ``--weights`` every trained model is saved too, which is how the lectures' scaling
family ships (:func:`decoding_gpt.scaling.load_sweep_model` reads it back).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decoding_gpt.checkpoint import file_sha256, save_weights
from decoding_gpt.device import machine_description
from decoding_gpt.scaling import (
    SweepRow,
    bootstrap_exponent,
    fit_power_law,
    train_size_sweep,
)
from decoding_gpt.tools import prog

DEFAULT_WIDTHS = (16, 24, 32, 48, 64, 96)
DEFAULT_DEPTHS = (1, 1, 2, 2, 2, 3)


def save_sweep_weights(rows: Sequence[SweepRow], directory: Path) -> list[dict[str, Any]]:
    """Write each row's trained model to ``directory``; the table entries that name them.

    One ``d{d_model}-l{n_layers}.safetensors`` per size (the sizes are the scaling
    family the lectures load); each entry records the file, its sha256 and the model
    config, so :func:`load_sweep_model` can rebuild and verify it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for row in rows:
        if row.model is None:
            raise ValueError("save_sweep_weights needs rows trained with keep_models=True")
        path = directory / f"d{row.d_model}-l{row.n_layers}.safetensors"
        save_weights(path, row.model)
        entries.append(
            {"file": path.name, "sha256": file_sha256(path), "config": row.model.cfg.to_dict()}
        )
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("decoding_gpt.tools.scaling_sweep"),
        description="Train a family of GPT sizes on the stories corpus at a fixed token "
        "budget, fit L(N), and write the table as JSON.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS))
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS))
    parser.add_argument("--n-tokens", type=int, default=250_000, help="tokens per model")
    parser.add_argument("--n-ctx", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-val-tokens", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weights", type=Path, help="also save every trained model (safetensors) in this folder"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    depths = args.depths[0] if len(args.depths) == 1 else args.depths
    start = time.perf_counter()
    rows = train_size_sweep(
        args.widths,
        depths,
        n_tokens=args.n_tokens,
        seed=args.seed,
        n_ctx=args.n_ctx,
        batch_size=args.batch_size,
        lr=args.lr,
        n_val_tokens=args.n_val_tokens,
        keep_models=args.weights is not None,
        verbose=True,
    )
    n = [r.n_params_non_embedding for r in rows]
    loss = [r.val_loss for r in rows]
    result: dict[str, Any] = {
        "command": "python -m decoding_gpt.tools.scaling_sweep " + " ".join(argv or sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_description(),
        "total_wall_time_s": time.perf_counter() - start,
        "rows": [r.to_dict() for r in rows],
    }
    if args.weights is not None:
        entries = save_sweep_weights(rows, args.weights)
        for row, entry in zip(result["rows"], entries, strict=True):
            row["weights"] = entry
        result["weights_dir"] = os.path.relpath(args.weights, args.out.parent)
    if len(rows) >= 3:
        result["fit_power_law"] = fit_power_law(n, loss).to_dict()
        result["fit_saturating"] = bootstrap_exponent(n, loss).to_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({len(rows)} sizes, {result['total_wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
