"""Benchmark: a full layer x position residual-stream patching sweep, ours vs TransformerLens.

Both run in this process on the same TransformerBridge, prompts and metric:

- TransformerLens: ``transformer_lens.patching.get_act_patch_resid_pre`` (one forward pass
  per (layer, position) cell, the clean cache patched into the corrupt run: denoising);
- ours: ``decoding_gpt.patching.activation_patching(kind="resid_pre", direction="denoising")``
  (the patched copies of the prompt batched into a few forward passes).

The two results are checked equal before any time is reported. The model is the shipped
``stories-4l`` when ``decoding_gpt.pretrained`` has it, else a randomly initialised bridge of
that shape (4 layers, d_model 256, 8 heads, d_mlp 1024, vocab 4096).

Usage: ``python benchmarks/bench_patching.py [--batch 8] [--pos 20] [--repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # TL's sweep prints a progress bar otherwise

import torch  # noqa: E402
import transformer_lens.patching as tl_patching  # noqa: E402
from transformer_lens.config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

from decoding_gpt import patching as pt  # noqa: E402


def load_model() -> tuple[TransformerBridge, str]:
    try:
        from decoding_gpt.pretrained import list_models, load  # noqa: PLC0415

        if "stories-4l" in list_models():
            return load("stories-4l", device="cpu").eval(), "shipped stories-4l"
    except Exception as err:  # noqa: BLE001 (any failure: fall back to the random stand-in)
        print(f"(stories-4l unavailable: {type(err).__name__}: {err})")
    torch.manual_seed(0)
    cfg = TransformerBridgeConfig(
        n_layers=4,
        d_model=256,
        n_heads=8,
        d_head=32,
        d_mlp=1024,
        d_vocab=4096,
        n_ctx=256,
        act_fn="gelu",
        normalization_type="LN",
    )
    return TransformerBridge.boot_native(cfg).eval(), "random stories-4l-shaped bridge"


def best_of(fn, repeats: int) -> tuple[float, float, torch.Tensor]:
    """Best wall time and best process (CPU) time over ``repeats`` calls, and the result.

    CPU time is the fairer number on a shared machine: wall time includes waiting for cores.
    """
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, what = load_model()
    d_vocab = int(model.cfg.d_vocab)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, d_vocab, (args.batch, args.pos), generator=gen)
    corrupt = clean.clone()
    corrupt[:, args.pos // 3] = torch.randint(0, d_vocab, (args.batch,), generator=gen)
    answers = torch.randint(0, d_vocab, (args.batch, 2), generator=gen)
    metric = pt.logit_diff_metric(answers)

    def ours() -> torch.Tensor:
        return pt.activation_patching(
            model, clean, corrupt, metric, "resid_pre", "denoising", max_rows=args.max_rows
        )

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
            return tl_patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)

    ours()  # warm up both paths (allocator, hook setup)
    w_ours, c_ours, r_ours = best_of(ours, args.repeats)
    w_tl, c_tl, r_tl = best_of(theirs, args.repeats)
    max_diff = float((r_ours - r_tl.float()).abs().max())
    if max_diff > 1e-4:
        raise SystemExit(f"results differ (max |diff| = {max_diff:.2e}); timings not reported")

    n_layers = int(model.cfg.n_layers)
    tl_version = importlib.metadata.version("transformer-lens")
    cpu = platform.processor() or platform.machine()
    print(f"model: {what}; torch {torch.__version__}, transformer-lens {tl_version}")
    print(f"machine: {cpu}, torch threads {torch.get_num_threads()}")
    print(f"sweep: resid_pre, {n_layers} layers x {args.pos} positions, batch {args.batch}")
    print(f"results agree: max |ours - TL| = {max_diff:.1e}")
    print(f"best of {args.repeats}:                    wall s    CPU s")
    print(f"TransformerLens get_act_patch_resid_pre  {w_tl:7.3f}  {c_tl:7.3f}")
    print(f"decoding_gpt activation_patching         {w_ours:7.3f}  {c_ours:7.3f}")
    print(f"speed-up (TL / ours): wall {w_tl / w_ours:.2f}x, CPU {c_tl / c_ours:.2f}x")


if __name__ == "__main__":
    main()
