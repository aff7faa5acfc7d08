"""Time our GPT against nanoGPT, HF ``GPT2LMHeadModel`` and the TransformerLens bridge.

Ours, HF and TransformerLens hold the SAME weights (copied with :mod:`decoding_gpt.convert`);
nanoGPT (``nanogpt_reference.py``, its ``model.py``) has its own init, tied embeddings and no
biases, as its README config trains it. All run in one process, interleaved round by round
so background load hits them alike. Two measurements, reported as tokens/s (median over
rounds) and as our ratio to each:

- a training step: forward with next-token loss, backward, AdamW step, ``zero_grad``. Each
  model gets the AdamW its own training code builds: ours, HF and TL
  ``decoding_gpt.training.make_optimizer`` (weight decay on matrices only), nanoGPT its
  ``configure_optimizers`` (the same groups; fused on CUDA only);
- a forward pass with an activation cache, no grad, in three rows timed in the same
  interleaved rounds, after the training step (as this row always was: the allocator's
  state matters, see the README) with every model reset to the initial, shared weights
  (nanoGPT has no cache and is left out):

  1. full cache (every hook) vs HF hidden_states+attentions: ``run_with_cache`` for ours
     and TransformerLens (every hook point), ``output_hidden_states=True,
     output_attentions=True`` for HF as built (sdpa attention). NOT like for like: HF's
     sdpa path ignores ``output_attentions`` (it returns ``attentions=()``), so HF stores
     only its L+1 hidden states while ours and TL store every activation.
  2. like for like, hidden states + attention patterns: ours ``run_with_cache`` with
     ``names_filter`` = the tensors HF returns (``blocks.{l}.hook_resid_pre`` for each
     layer, ``blocks.{L-1}.hook_resid_post``, ``blocks.{l}.attn.hook_pattern``) vs HF with
     eager attention (the implementation that does return ``attentions``). Before timing,
     the script checks the two sets hold the same data: ``hidden_states[l]`` = our
     ``hook_resid_pre`` of block l, ``hidden_states[L]`` = ``ln_final`` of our last
     ``hook_resid_post`` (HF's last hidden state is after ``ln_f``), ``attentions[l]`` =
     our ``hook_pattern``.
  3. like for like, hidden states only: ours filtered to the residual names above vs HF
     (sdpa) with ``output_hidden_states=True``: what row 1's HF actually returns.

``--only cache`` (or ``train``) runs one of the two measurements.

Default config: nanoGPT's README CPU config (4 layers, 4 heads, d_model 128, block 64,
batch 12, dropout 0, exact GELU) with shakespeare_char's 65-token vocabulary. Usage::

    python benchmarks/bench_transformer.py --threads 2           # CPU, defaults
    python benchmarks/bench_transformer.py --threads 1 --clock cpu  # steadier under load
    python benchmarks/bench_transformer.py --device cuda --n-layers 12 --n-heads 12 \\
        --d-model 768 --n-ctx 1024 --batch 32 --vocab 50304 --bf16 --compile

``--compile`` applies ``torch.compile`` to the training step of ours, nanoGPT and HF
(TL's bridge is left uncompiled: its hook machinery is not meant for it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from nanogpt_reference import GPT as NanoGPT
from nanogpt_reference import GPTConfig as NanoGPTConfig

from decoding_gpt.convert import to_hf_gpt2, to_transformer_lens
from decoding_gpt.training import TrainConfig
from decoding_gpt.training import make_optimizer as make_our_optimizer
from decoding_gpt.transformer import GPT, GPTConfig

LR, WEIGHT_DECAY, BETAS = 3e-4, 0.1, (0.9, 0.95)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--act-fn", default="gelu", help="gelu (exact, nanoGPT's) or gelu_new")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile ours and HF")
    p.add_argument("--skip", default="", help="comma-separated: nanogpt,hf,tl")
    p.add_argument(
        "--only", choices=["train", "cache"], default=None, help="run one measurement only"
    )
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a loaded machine; CPU only)",
    )
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The AdamW each model's own training code builds (see the module docstring)."""
    if isinstance(model, NanoGPT):
        return model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, device.type)
    cfg = TrainConfig(lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS)
    return make_our_optimizer(model, cfg)


def train_step_fn(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, autocast):
    def step() -> None:
        with autocast():
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_rounds(fns: dict[str, Callable[[], object]], args, device) -> dict[str, float]:
    """Seconds per call, median over rounds; the models take turns within each round."""
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    sync(device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            for _ in range(args.steps):
                fn()
            sync(device)
            per_round[name].append((clock() - start) / args.steps)
    return {name: statistics.median(times) for name, times in per_round.items()}


def report(title: str, seconds: dict[str, float], n_tokens: int) -> None:
    print(f"\n{title}")
    ours = seconds["ours"]
    for name, s in seconds.items():
        ratio = "" if name == "ours" else f"   ours / {name} = {s / ours:.2f}x"
        print(f"  {name:>7}: {n_tokens / s:>12,.0f} tokens/s  ({1e3 * s:7.2f} ms){ratio}")


def check_same_loss(forwards: dict[str, Callable[[], torch.Tensor]], models: dict) -> None:
    """HF and TransformerLens hold our weights: their loss must equal ours before timing."""
    for m in models.values():
        m.eval()
    with torch.no_grad():
        ours = forwards["ours"]().item()
        for name in ("hf", "tl"):
            if name in models and abs(forwards[name]().item() - ours) > 1e-4:
                raise SystemExit(f"{name} loss differs from ours ({ours:.6f}): not comparable")


def hf_equivalent_names(n_layers: int) -> tuple[list[str], list[str]]:
    """Our hook names for what HF returns: the residual stream entering each block plus the
    last block's output (``hidden_states``, the last one before ``ln_f``) and the patterns."""
    resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    resid.append(f"blocks.{n_layers - 1}.hook_resid_post")
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    return resid, patterns


def check_same_cache(ours: GPT, hf_eager: torch.nn.Module, x: torch.Tensor) -> None:
    """The like-for-like row compares equal work: ours' filtered cache must hold the same
    tensors as HF's ``hidden_states`` and ``attentions``, to float32 rounding."""
    resid, patterns = hf_equivalent_names(ours.cfg.n_layers)
    with torch.no_grad():
        out = hf_eager(x, output_hidden_states=True, output_attentions=True)
        logits, cache = ours.run_with_cache(x, names_filter=resid + patterns)
        ours_hidden = [cache[name] for name in resid[:-1]]
        ours_hidden.append(ours.ln_final(cache[resid[-1]]))  # HF's last is after ln_f
    if sorted(cache) != sorted(resid + patterns):
        raise SystemExit(f"filtered cache holds {sorted(cache)}, not {resid + patterns}")
    if len(out.hidden_states) != len(resid) or len(out.attentions) != len(patterns):
        raise SystemExit(
            f"HF returned {len(out.hidden_states)} hidden states and {len(out.attentions)} "
            f"attention patterns, expected {len(resid)} and {len(patterns)}"
        )
    pairs = [("logits", out.logits, logits)]
    for i, (theirs, mine) in enumerate(zip(out.hidden_states, ours_hidden, strict=True)):
        pairs.append((f"hidden_states[{i}]", theirs, mine))
    for i, (theirs, name) in enumerate(zip(out.attentions, patterns, strict=True)):
        pairs.append((f"attentions[{i}]", theirs, cache[name]))
    for name, theirs, mine in pairs:
        if theirs.shape != mine.shape or not torch.allclose(theirs, mine, rtol=1e-4, atol=1e-5):
            diff = (theirs - mine).abs().max().item() if theirs.shape == mine.shape else "shape"
            raise SystemExit(f"HF {name} differs from ours (max abs diff {diff}): not comparable")
    worst = max((t - m).abs().max().item() for _, t, m in pairs)
    print(
        f"like-for-like cache check: {len(pairs)} tensors agree with HF (max abs diff {worst:.1e})"
    )


def cache_rows(models: dict, x: torch.Tensor, args, device, autocast, n_tokens: int) -> None:
    """Time and print the three cache rows (see the module docstring), interleaved."""
    ours = models["ours"]

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad(), autocast():
                return fn()

        return run

    for m in models.values():
        m.eval()
    hf_kw = {"output_hidden_states": True, "output_attentions": True}
    cached = {"ours": no_grad(lambda: ours.run_with_cache(x))}
    if "hf" in models:
        cached["hf"] = no_grad(lambda: models["hf"](x, **hf_kw))
    if "tl" in models:
        cached["tl"] = no_grad(lambda: models["tl"].run_with_cache(x))
    resid, patterns = hf_equivalent_names(ours.cfg.n_layers)
    if "hf" in models:
        hf_eager = to_hf_gpt2(ours)  # HF returns attention patterns only from eager attention
        hf_eager.set_attn_implementation("eager")
        check_same_cache(ours, hf_eager, x)
        cached["ours_lfl"] = no_grad(lambda: ours.run_with_cache(x, names_filter=resid + patterns))
        cached["hf_eager"] = no_grad(lambda: hf_eager(x, **hf_kw))
        cached["ours_resid"] = no_grad(lambda: ours.run_with_cache(x, names_filter=resid))
        cached["hf_hidden"] = no_grad(lambda: models["hf"](x, output_hidden_states=True))
    hf_note = ""
    if "hf" in models and not cached["hf"]().attentions:  # transformers 5's sdpa drops them
        hf_note = "; HF's sdpa ignores output_attentions: hf returns hidden states only"
    seconds = time_rounds(cached, args, device)  # every cache row in the same rounds
    report(
        "forward with activation cache: full cache (every hook) vs HF hidden_states+attentions"
        f"\n  (no grad{hf_note})",
        {name: seconds[name] for name in ("ours", "hf", "tl") if name in seconds},
        n_tokens,
    )
    if "hf" in models:
        report(
            "forward with activation cache, like for like: hidden_states + attentions\n"
            f"  (ours: names_filter = {len(resid)} resid + {len(patterns)} hook_pattern; "
            "hf: eager attention)",
            {"ours": seconds["ours_lfl"], "hf": seconds["hf_eager"]},
            n_tokens,
        )
        report(
            "forward with activation cache, like for like: hidden_states only\n"
            f"  (ours: names_filter = {len(resid)} resid; hf: sdpa, output_hidden_states)",
            {"ours": seconds["ours_resid"], "hf": seconds["hf_hidden"]},
            n_tokens,
        )


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    torch.manual_seed(0)
    cfg = GPTConfig(
        d_vocab=args.vocab, n_ctx=args.n_ctx, d_model=args.d_model, n_layers=args.n_layers,
        n_heads=args.n_heads, act_fn=args.act_fn,
    )  # fmt: skip
    ours = GPT(cfg).to(device)
    models: dict[str, torch.nn.Module] = {"ours": ours}
    if "nanogpt" not in skip:
        if args.act_fn != "gelu":
            raise SystemExit("nanoGPT uses exact GELU: pass --act-fn gelu or --skip nanogpt")
        nano_cfg = NanoGPTConfig(
            block_size=args.n_ctx, vocab_size=args.vocab, n_layer=args.n_layers,
            n_head=args.n_heads, n_embd=args.d_model, dropout=0.0, bias=False,
        )  # fmt: skip
        models["nanogpt"] = NanoGPT(nano_cfg).to(device)
    if "hf" not in skip:
        models["hf"] = to_hf_gpt2(ours)  # same weights (b_U is 0 at init)
    if "tl" not in skip:
        models["tl"] = to_transformer_lens(ours)  # already on ours' device
    x = torch.randint(0, args.vocab, (args.batch, args.n_ctx), device=device)
    y = x.roll(-1, dims=1)  # nanoGPT takes its targets as a separate tensor
    n_tokens = args.batch * args.n_ctx
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device={device}  threads={torch.get_num_threads()}  clock={args.clock}  "
        f"load(1 min)={load:.1f}  torch={torch.__version__}"
    )
    print(f"config: {cfg.to_dict()}  batch={args.batch}  params={cfg.n_params:,}")

    use_bf16 = args.bf16 and device.type == "cuda"

    def autocast():
        if use_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    forwards: dict[str, Callable[[], torch.Tensor]] = {
        "ours": lambda: ours(x, return_type="loss"),
        "nanogpt": lambda: models["nanogpt"](x, y)[1],
        "hf": lambda: models["hf"](input_ids=x, labels=x).loss,
        "tl": lambda: models["tl"](x, return_type="loss"),
    }
    if args.compile:
        for name in ("ours", "hf"):
            if name in models:
                compiled = torch.compile(models[name])
                forwards[name] = (
                    (lambda c=compiled: c(x, return_type="loss"))
                    if name == "ours"
                    else (lambda c=compiled: c(input_ids=x, labels=x).loss)
                )
        if "nanogpt" in models:
            compiled = torch.compile(models["nanogpt"])
            forwards["nanogpt"] = lambda c=compiled: c(x, y)[1]
    check_same_loss(forwards, models)
    initial = {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}
    if args.only != "cache":
        for m in models.values():
            m.train()
        steps = {
            name: train_step_fn(forwards[name], make_optimizer(m, device), autocast)
            for name, m in models.items()
        }
        report("training step (AdamW)", time_rounds(steps, args, device), n_tokens)
    if args.only != "train":
        for name, m in models.items():  # training moved them apart: back to the same weights
            m.load_state_dict(initial[name])
        check_same_loss(forwards, models)
        cache_rows(models, x, args, device, autocast, n_tokens)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload(1 min) at the end={load:.1f}")


if __name__ == "__main__":
    main()
