"""Use SAELens with a decoding_gpt model: export it to a TransformerLens 3.x
``HookedTransformer`` and train a SAELens SAE on one of its hooks.

Run in the SAELens venv (``make saelens-venv``; SAELens 6 needs transformer-lens < 4,
so it cannot share the course's venv)::

    .venv-saelens/bin/python scripts/saelens_recipe.py \\
        --model-dir decoding_gpt/pretrained/models/stories-4l \\
        --reference ref.safetensors --out runs/saelens-sae

The recipe:

1. ``HookedTransformerConfig`` from the ``"model"`` block of our ``config.json`` (our
   :class:`GPTConfig` fields are TransformerLens's, ``layer_norm_eps`` -> ``eps``).
2. ``model.safetensors`` holds our ``GPT``'s state dict, whose names and shapes *are*
   ``HookedTransformer``'s (``embed.W_E``, ``blocks.0.attn.W_Q [n_heads, d_model,
   d_head]``, ...): ``load_state_dict`` takes it as is; only the attention masks, which
   TransformerLens rebuilds itself, are not in the file.
3. With ``--reference`` (``tokens`` and our ``logits``, written in the main venv), the
   logits are compared.
4. A few SAELens training steps (``TopKTrainingSAE`` + ``SAETrainer``) on activations
   of the hook, evaluated by MSE, explained variance, L0 and the CE loss with the SAE
   spliced in; the SAE is saved with ``save_inference_model`` to ``--out``, where
   ``decoding_gpt.sae.load_sae`` reads it.

Prints one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def hooked_transformer(model_dir: Path):
    """Our shipped model (a checkpoint folder) as a TransformerLens 3.x HookedTransformer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig  # lazy: TL 3

    c = json.loads((model_dir / "config.json").read_text())["model"]
    cfg = HookedTransformerConfig(
        d_model=c["d_model"], d_head=c["d_head"], n_layers=c["n_layers"], n_ctx=c["n_ctx"],
        d_vocab=c["d_vocab"], n_heads=c["n_heads"], act_fn=c["act_fn"],
        d_mlp=None if c["attn_only"] else c["d_mlp"], attn_only=c["attn_only"],
        normalization_type=c["normalization_type"], eps=c["layer_norm_eps"],
        positional_embedding_type=c["positional_embedding_type"],
        rotary_base=c["rotary_base"], rotary_dim=c["d_head"], device="cpu",
    )  # fmt: skip
    model = HookedTransformer(cfg)
    state = load_file(str(model_dir / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    rebuilt = [n for n in missing if n.endswith((".mask", ".IGNORE", "rotary_sin", "rotary_cos"))]
    if unexpected or sorted(missing) != sorted(rebuilt):
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--reference", type=Path, help="safetensors with tokens and our logits")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--d-sae", type=int, default=256)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", type=Path, help="folder for the trained SAE (SAELens format)")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import sae_lens  # lazy: only in the SAELens venv
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    model = hooked_transformer(args.model_dir)
    result: dict = {"sae_lens": sae_lens.__version__, "model": type(model).__name__}
    if args.reference is None:
        tokens = torch.randint(model.cfg.d_vocab, (16, 64), generator=torch.Generator())
    else:
        ref = load_file(str(args.reference))
        tokens = ref["tokens"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=args.hook)
    if args.reference is not None:
        result["logits_max_abs_diff"] = (logits - ref["logits"]).abs().max().item()

    acts = cache[args.hook].flatten(0, -2)  # [tokens, d_model]
    acts = acts[torch.randperm(len(acts))]
    n_test = len(acts) // 4
    train, test = acts[n_test:], acts[:n_test]

    def provider():
        while True:
            for i in range(0, len(train) - args.batch_size + 1, args.batch_size):
                yield train[i : i + args.batch_size]

    cfg = TopKTrainingSAEConfig(
        d_in=acts.shape[-1], d_sae=args.d_sae, k=args.k,
        metadata=SAEMetadata(hook_name=args.hook),
    )  # fmt: skip
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch_size,
        train_batch_size_samples=args.batch_size, lr=args.lr, lr_end=args.lr, device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    SAETrainer(trainer_cfg, sae, provider()).fit()

    def mse_ev_l0(s):
        with torch.no_grad():
            f = s.encode(test)
            resid = (s.decode(f) - test).pow(2)
        ev = 1 - (resid.sum() / (test - test.mean(0)).pow(2).sum()).item()
        return resid.sum(-1).mean().item(), ev, (f != 0).sum(-1).float().mean().item()

    def splice(act, hook):
        return sae(act.flatten(0, -2)).view_as(act)

    with torch.no_grad():
        untrained = TopKTrainingSAE(cfg)
        result["untrained_mse"] = mse_ev_l0(untrained)[0]
        result["mse"], result["explained_variance"], result["l0"] = mse_ev_l0(sae)
        result["ce_clean"] = model(tokens, return_type="loss").item()
        result["ce_with_sae"] = model.run_with_hooks(
            tokens, return_type="loss", fwd_hooks=[(args.hook, splice)]
        ).item()
    result["steps"], result["hook"] = args.steps, args.hook
    if args.out is not None:
        sae.save_inference_model(args.out)
        with torch.no_grad():
            f = sae.encode(test[:32])
            io = {"x": test[:32], "encode": f, "decode": sae.decode(f), "forward": sae(test[:32])}
        save_file({k: v.contiguous() for k, v in io.items()}, str(args.out / "io.safetensors"))
        result["saved"] = str(args.out)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
