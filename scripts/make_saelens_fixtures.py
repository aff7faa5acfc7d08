"""Small SAELens SAE files, with SAELens's own outputs, for ``tests/test_sae_saelens.py``.

SAELens lives in its own venv (``make saelens-venv``: it needs transformer-lens < 4).
Three commands::

    # in the main venv: our SAEs (every architecture decoding_gpt trains), saved by
    # decoding_gpt.sae.save_sae, with our outputs
    .venv/bin/python scripts/make_saelens_fixtures.py ours --out tests/fixtures/saelens
    # in the SAELens venv: SAELens's SAEs (every architecture and option it can write,
    # d_in 16, d_sae 32, seeded), with SAELens's outputs, plus a manifest
    .venv-saelens/bin/python scripts/make_saelens_fixtures.py saelens --out tests/fixtures/saelens
    # in the SAELens venv: load folders written by save_sae in SAELens and compare its
    # outputs with ours (io.safetensors of each folder); prints one JSON line
    .venv-saelens/bin/python scripts/make_saelens_fixtures.py check-ours DIR [DIR ...]

Each case is a folder ``<case>/`` with ``cfg.json`` + ``sae_weights.safetensors`` (the
files as written) and ``io.safetensors``: the input ``x``, ``encode`` = ``encode(x)``,
``decode`` = ``decode(encode(x))`` right after it (SAELens's ``constant_norm_rescale`` and
``layer_norm`` undo the normalisation with the statistics ``encode`` stored), ``forward``
= ``sae(x)``, and, where decode needs no statistics, ``f_random`` and
``decode_random = decode(f_random)``. ``manifest.json`` lists the cases with the SAELens
version and, for the cases decoding_gpt refuses, the field it must name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

D_IN, D_SAE, K, N = 16, 32, 4, 8
HOOK = "blocks.0.hook_resid_post"
HOOK_Z = "blocks.0.attn.hook_z"  # reshape_activations="hook_z": x is [N, 4 heads, 4]


def _inputs(seed: int, hook_z: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    x = 2.0 * torch.randn(N, D_IN, generator=gen) + torch.randn(D_IN, generator=gen)
    return x.view(N, 4, D_IN // 4) if hook_z else x


def _random_weights(sae, seed: int) -> None:
    """Seeded random values for every parameter: non-unit decoder rows, non-zero biases,
    thresholds of both signs, so that every option changes the numbers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(sae.named_parameters()):
            scale = {"W_enc": 0.4, "W_dec": 0.4, "b_dec": 0.5, "threshold": 0.3}.get(name, 0.2)
            p.copy_(scale * torch.randn(p.shape, generator=gen))
        if hasattr(sae, "W_dec"):  # decoder row norms spread over [0.5, 2.5]
            norms = 0.5 + 2 * torch.rand(sae.W_dec.shape[0], generator=gen)
            sae.W_dec.mul_((norms / sae.W_dec.norm(dim=-1))[:, None])


def _record(sae, x: torch.Tensor, stateful: bool, seed: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        f = sae.encode(x)
        out = {"x": x, "encode": f, "decode": sae.decode(f), "forward": sae(x)}
        if not stateful:
            gen = torch.Generator().manual_seed(2000 + seed)
            values = torch.rand(N, D_SAE, generator=gen)
            f_random = values * (torch.rand(N, D_SAE, generator=gen) < 0.2)
            out["f_random"] = f_random
            out["decode_random"] = sae.decode(f_random)
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def write_saelens(out: Path) -> None:
    import sae_lens  # lazy: only in the SAELens venv
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    norms = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
    norms += ("covariance_whitening",)
    cases: list[tuple[str, type, type, dict, str | None]] = []  # name, class, cfg, kw, refuse
    for norm in norms:
        kw = {"normalize_activations": norm}
        cases.append((f"standard__{norm}", StandardSAE, StandardSAEConfig, kw, None))
        cases.append((f"topk__{norm}", TopKSAE, TopKSAEConfig, {**kw, "k": K}, None))
        rescale = {**kw, "k": K, "rescale_acts_by_decoder_norm": True}
        cases.append((f"topk_rescale__{norm}", TopKSAE, TopKSAEConfig, rescale, None))
        cases.append((f"jumprelu__{norm}", JumpReLUSAE, JumpReLUSAEConfig, kw, None))
    no_b_dec = {"apply_b_dec_to_input": False}
    cases.append(("standard_no_b_dec__none", StandardSAE, StandardSAEConfig, no_b_dec, None))
    cases.append(("topk_no_b_dec__none", TopKSAE, TopKSAEConfig, {**no_b_dec, "k": K}, None))
    hook_z = {"reshape_activations": "hook_z"}
    cases.append(("standard_hook_z__none", StandardSAE, StandardSAEConfig, hook_z, None))
    cases.append(("gated__none", GatedSAE, GatedSAEConfig, {}, "architecture"))
    # saved by SAELens's training SAEs, as its trainer saves them (save_inference_model)
    train_kw = {"k": K, "rescale_acts_by_decoder_norm": True}
    cases.append(("batchtopk_saved__none", BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig,
                  train_kw, None))  # fmt: skip
    cases.append(("topk_training_saved__none", TopKTrainingSAE, TopKTrainingSAEConfig,
                  train_kw, None))  # fmt: skip

    manifest = {"sae_lens_version": sae_lens.__version__, "cases": {}}
    for seed, (name, cls, cfg_cls, kw, refuse) in enumerate(cases):
        hook = HOOK_Z if kw.get("reshape_activations") == "hook_z" else HOOK
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook), **kw)
        torch.manual_seed(seed)
        sae = cls(cfg)
        _random_weights(sae, seed)
        folder = out / name
        if hasattr(sae, "save_inference_model"):
            if hasattr(sae, "topk_threshold"):  # BatchTopK: one learned threshold > 0
                sae.topk_threshold = torch.tensor(0.3)
            sae.save_inference_model(folder)
        else:
            sae.save_model(folder)
        # SAELens's outputs from the files as written, loaded the way users load them
        loaded = sae_lens.SAE.load_from_disk(folder)
        stateful = loaded.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm")
        x = _inputs(seed, hook_z=hook == HOOK_Z)
        save_file(_record(loaded, x, stateful, seed), str(folder / "io.safetensors"))
        manifest["cases"][name] = {
            "saelens_class": type(loaded).__name__,
            "architecture": loaded.cfg.architecture(),
            "normalize_activations": loaded.cfg.normalize_activations,
            "refused_field": refuse,
        }
        print(f"{name:40s} {type(loaded).__name__}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    ours = sorted(p for p in out.glob("ours_*") if (p / "io.safetensors").is_file())
    if ours:
        print("our files in SAELens:", json.dumps(check_ours(ours), indent=2))


def check_ours(folders: list[Path]) -> dict[str, dict]:
    """Load each folder (written by save_sae) in SAELens; max |SAELens - ours| per output."""
    import sae_lens  # lazy: only in the SAELens venv

    result = {}
    for folder in folders:
        ref = load_file(str(Path(folder) / "io.safetensors"))
        sae = sae_lens.SAE.load_from_disk(folder)
        with torch.no_grad():
            f = sae.encode(ref["x"])
            got = {"encode": f, "decode": sae.decode(f), "forward": sae(ref["x"])}
            got["decode_random"] = sae.decode(ref["f_random"])
        diffs = {k: (got[k] - ref[k]).abs().max().item() for k in got}
        result[Path(folder).name] = {"saelens_class": type(sae).__name__, "max_abs_diff": diffs}
    return result


def write_ours(out: Path) -> None:
    from decoding_gpt.sae import ARCHITECTURES, SAE, SAEConfig, save_sae  # lazy: main venv

    for seed, arch in enumerate(ARCHITECTURES):
        cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K, hook_name=HOOK)
        sae = SAE(cfg, torch.Generator().manual_seed(seed))
        with torch.no_grad():  # what training leaves: biases, a positive threshold
            gen = torch.Generator().manual_seed(100 + seed)
            sae.b_enc.copy_(0.2 * torch.randn(D_SAE, generator=gen))
            sae.b_dec.copy_(0.5 * torch.randn(D_IN, generator=gen))
            sae.W_enc.mul_(20)
            if arch == "batchtopk":
                sae.threshold.copy_(0.3 * torch.rand(D_SAE, generator=gen))
        folder = save_sae(sae, out / f"ours_{arch}")
        save_file(_record(sae, _inputs(seed), False, seed), str(folder / "io.safetensors"))
        print(f"ours_{arch}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("saelens", "ours", "check-ours"))
    p.add_argument("folders", nargs="*", type=Path, help="check-ours: folders to load")
    p.add_argument("--out", type=Path, default=Path("tests/fixtures/saelens"))
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.command == "ours":
        write_ours(args.out)
    elif args.command == "saelens":
        write_saelens(args.out)
    else:
        print(json.dumps(check_ours(args.folders)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
