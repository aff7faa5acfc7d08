"""Benchmark: our SAE trainer vs SAELens's ``SAETrainer`` on the same cached activations.

Both train a TopK SAE (L0 matched: at most k per token) with Adam at the same learning
rate and schedule (constant, then linear decay to 0), batch size and number of steps,
on the same activations in the same order, on CPU with the same number of threads.
Both keep TopK's decoder norms the same way (SAELens's ``rescale_acts_by_decoder_norm``
from a 0.1-norm init; ``--project-decoder`` gives ours the older re-projection).
We report training throughput (tokens/s, the training loop only: no imports, no data
generation) and MSE / explained variance / L0 on held-out activations, then the
ratios (ours / SAELens).

The activations are synthetic with known sparse features (``x = sum_i a_i g_i``,
ACTIVE features per token among N_TRUE unit directions), so the ground-truth
recovery score (mean max-cosine of the true directions with the decoder, and the
mean best-latent AUROC against the true labels) is reported too.

SAELens 6.x pins transformer-lens < 4, so it lives in its own venv; this script runs
it as a subprocess (``--saelens-python``, default ``$SAELENS_PYTHON`` or
``/tmp/saelens-venv/bin/python``) that reads the activations from a safetensors file.
The same subprocess also loads our saved SAEs (every architecture) with
``sae_lens.SAE.load_from_disk`` and checks that its outputs equal ours.

    python benchmarks/bench_sae.py            # about a minute or two on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from decoding_gpt.sae import (
    SAE,
    SAEConfig,
    evaluate_sae,
    ground_truth_score,
    mean_max_cosine,
    save_sae,
    train_sae,
)

SAELENS_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from safetensors.torch import load_file
    from sae_lens import SAE, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    data = load_file(args["data"])
    train, test = data["train"], data["test"]
    bs, steps = args["batch_size"], args["steps"]

    def provider():
        while True:
            for i in range(0, len(train) - bs + 1, bs):
                yield train[i : i + bs]

    torch.manual_seed(args["seed"])
    cfg = TopKTrainingSAEConfig(d_in=train.shape[1], d_sae=args["d_sae"], k=args["k"])
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * bs, train_batch_size_samples=bs, lr=args["lr"],
        lr_end=args["lr"], lr_decay_steps=args["lr_decay_steps"],
        device="cpu", logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(trainer_cfg, sae, provider())
    clock = time.process_time if args["clock"] == "cpu" else time.perf_counter
    t0 = clock()
    trainer.fit()
    seconds = clock() - t0
    with torch.no_grad():
        f = sae.encode(test)
        x_hat = sae.decode(f)
    resid = (x_hat - test).pow(2)
    out = {
        "seconds": seconds,
        "tokens_per_s": steps * bs / seconds,
        "mse": resid.sum(-1).mean().item(),  # SAELens's convention, as decoding_gpt.sae.mse
        "explained_variance": 1 - (resid.sum() / (test - test.mean(0)).pow(2).sum()).item(),
        "l0": (f != 0).sum(-1).float().mean().item(),
        "W_dec": sae.W_dec.detach().tolist(),
        "version": __import__("sae_lens").__version__,
    }
    # our saved SAEs, loaded by SAELens: do its outputs equal ours?
    ref = load_file(args["ours_out"])
    out["load_from_disk_max_abs_diff"] = {}
    for name, path in args["saved"].items():
        loaded = SAE.load_from_disk(path)
        with torch.no_grad():
            y = loaded(test)
        diff = (y - ref[name]).abs().max().item()
        out["load_from_disk_max_abs_diff"][name] = [type(loaded).__name__, diff]
    print("RESULT " + json.dumps(out))
    """
)


def synthetic_activations(n: int, d_in: int, n_true: int, active: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    true = F.normalize(torch.randn(n_true, d_in, generator=gen), dim=-1)
    on = torch.rand(n, n_true, generator=gen) < active / n_true
    mags = torch.rand(n, n_true, generator=gen) + 0.5
    return (on * mags) @ true, on, true


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--n-true", type=int, default=256)
    p.add_argument("--active", type=float, default=4.0)
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-decay-steps", type=int, default=120, help="linear decay to 0 (both)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time the training loops by wall clock or by process CPU time (steadier "
        "than wall clock when other jobs share the cores; use with --threads 1)",
    )
    p.add_argument(
        "--project-decoder",
        action="store_true",
        help="ours: re-project decoder rows after each step (the pre-2026-11-23 default) "
        "instead of SAELens's rescale_acts_by_decoder_norm",
    )
    default_py = os.environ.get("SAELENS_PYTHON", "/tmp/saelens-venv/bin/python")
    p.add_argument("--saelens-python", default=default_py)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    n_train = args.steps * args.batch_size
    x, on, true = synthetic_activations(n_train + 8192, args.d_in, args.n_true, args.active)
    train, test, test_on = x[:n_train], x[n_train:], on[n_train:]
    print(
        f"activations: {n_train} train / {len(test)} test tokens, d_in={args.d_in}, "
        f"{args.n_true} true features, ~{args.active} active per token; TopK d_sae="
        f"{args.d_sae}, k={args.k}, batch {args.batch_size}, {args.steps} steps, "
        f"lr {args.lr} (decay over last {args.lr_decay_steps}), {args.threads} thread(s); "
        f"ours: {'re-projected' if args.project_decoder else 'rescaled'} decoder; "
        f"{args.clock} clock"
    )

    # --- ours
    torch.manual_seed(args.seed)
    sae = SAE(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, architecture="topk", k=args.k))
    batches = (train[i : i + args.batch_size] for i in range(0, n_train, args.batch_size))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    t0 = clock()
    train_sae(
        sae,
        batches,
        n_steps=args.steps,
        lr=args.lr,
        lr_decay_steps=args.lr_decay_steps,
        log_every=10**9,
        rescale_acts_by_decoder_norm=not args.project_decoder,
    )
    ours_s = clock() - t0
    ours = evaluate_sae(sae, test)
    ours["tokens_per_s"] = n_train / ours_s
    ours["recovery"] = mean_max_cosine(sae.W_dec.detach(), true)
    ours["gt_auroc"] = ground_truth_score(sae.encode(test).detach(), test_on).mean

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "acts.safetensors"
        save_file({"train": train.contiguous(), "test": test.contiguous()}, str(data_path))
        # one saved SAE per architecture, with our outputs on the test set
        saved, outputs = {}, {}
        for arch in ("standard", "topk", "batchtopk"):
            s = SAE(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, architecture=arch, k=args.k))
            with torch.no_grad():
                s.b_enc.normal_(0, 0.1)
                s.b_dec.normal_(0, 0.1)
                if arch == "batchtopk":
                    s.threshold.fill_(0.1)
            saved[arch] = str(save_sae(s, Path(tmp) / arch))
            outputs[arch] = s(test).detach().contiguous()
        saved["topk_trained"] = str(save_sae(sae, Path(tmp) / "topk_trained"))
        outputs["topk_trained"] = sae(test).detach().contiguous()
        ours_out = Path(tmp) / "ours_out.safetensors"
        save_file(outputs, str(ours_out))

        sub_args = vars(args) | {"data": str(data_path), "saved": saved, "ours_out": str(ours_out)}
        if not Path(args.saelens_python).exists():
            print(f"SAELens python {args.saelens_python} not found; ours only: {ours}")
            sys.exit(1)
        proc = subprocess.run(
            [args.saelens_python, "-c", SAELENS_SCRIPT, json.dumps(sub_args)],
            capture_output=True,
            text=True,
            env=os.environ | {"WANDB_MODE": "disabled", "TQDM_DISABLE": "1"},
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        sys.exit(f"SAELens run failed (exit {proc.returncode})")
    theirs = json.loads(lines[-1][len("RESULT ") :])
    w_dec = torch.tensor(theirs.pop("W_dec"))
    theirs["recovery"] = mean_max_cosine(w_dec, true)

    print(f"{'':22s}{'ours':>12s}{'SAELens ' + theirs['version']:>18s}{'ratio':>10s}")
    for key, fmt in [
        ("tokens_per_s", ".0f"),
        ("mse", ".4f"),
        ("explained_variance", ".4f"),
        ("l0", ".2f"),
        ("recovery", ".4f"),
    ]:
        ratio = ours[key] / theirs[key]
        print(f"{key:22s}{ours[key]:>12{fmt}}{theirs[key]:>18{fmt}}{ratio:>10.3f}")
    print(f"ground-truth AUROC (ours): {ours['gt_auroc']:.4f}")
    print("SAELens load_from_disk of our saved SAEs (class, max |output diff|):")
    for name, (cls, diff) in theirs["load_from_disk_max_abs_diff"].items():
        print(f"  {name:14s} -> {cls:14s} {diff:.2e}")
    speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
    print(
        f"throughput ratio {speed:.2f}x; MSE ratio {ours['mse'] / theirs['mse']:.3f} "
        f"(goal: >= 1.0x throughput at <= 1.0 MSE ratio)"
    )


if __name__ == "__main__":
    main()
