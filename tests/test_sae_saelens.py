"""SAELens files: ``load_sae`` reproduces SAELens's outputs or refuses by name; our files
load in SAELens with our outputs; the recipe for using SAELens with our models.

The fixtures under ``tests/fixtures/saelens`` were written by SAELens itself
(``scripts/make_saelens_fixtures.py``, see its docstring) with its ``encode``, ``decode``
and forward outputs, so the first group of tests needs no SAELens. The second group runs
the real SAELens in its own venv, ``.venv-saelens`` (``make saelens-venv``), and skips
without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from decoding_gpt.sae import SAE, SAEConfig, load_sae, save_sae
from decoding_gpt.sae.model import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "saelens"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
SAELENS_PYTHON = ROOT / ".venv-saelens" / "bin" / "python"
SCRIPTS = ROOT / "scripts"
# TopK's rescale_acts_by_decoder_norm is folded into the encoder at load (unit decoder
# rows): the same function, computed in another order, so equal to float32 rounding.
FOLDED = {name for name in MANIFEST["cases"] if "rescale" in name or "training_saved" in name}
LOADED = sorted(n for n, c in MANIFEST["cases"].items() if c["refused_field"] is None)
REFUSED = sorted(n for n, c in MANIFEST["cases"].items() if c["refused_field"] is not None)
OURS = sorted(p.name for p in FIXTURES.glob("ours_*"))


def _load(folder: Path) -> SAE:
    with warnings.catch_warnings():  # expected_average_only_in, covariance_whitening
        warnings.simplefilter("ignore", UserWarning)
        return load_sae(folder)


def _ours(sae: SAE, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our outputs on the fixture's input, shaped like SAELens's (hook_z: heads flat)."""
    x = io["x"]
    flat = x.flatten(-2) if x.shape[-1] != sae.cfg.d_in else x
    with torch.no_grad():
        f = sae.encode(flat)
        out = {"encode": f, "decode": sae.decode(f), "forward": sae(flat)}
        if "f_random" in io:
            out["decode_random"] = sae.decode(io["f_random"])
    return {k: v.reshape(io[k].shape) for k, v in out.items()}


def test_manifest_covers_every_architecture_and_normalization():
    assert MANIFEST["sae_lens_version"].startswith("6.")
    cases = MANIFEST["cases"]
    assert {c["architecture"] for c in cases.values()} >= {"standard", "topk", "jumprelu"}
    for arch in ("standard", "topk", "topk_rescale", "jumprelu"):
        for norm in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"):
            assert f"{arch}__{norm}" in cases
    assert cases["batchtopk_saved__none"]["saelens_class"] == "JumpReLUSAE"
    assert set(OURS) == {f"ours_{a}" for a in ARCHITECTURES}
    size = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert size < 1_000_000


@pytest.mark.parametrize("case", LOADED)
def test_saelens_file_loads_with_saelens_outputs(case):
    io = load_file(str(FIXTURES / case / "io.safetensors"))
    ours = _ours(_load(FIXTURES / case), io)
    for name, got in ours.items():
        if case in FOLDED:
            torch.testing.assert_close(got, io[name], rtol=1.3e-6, atol=1e-5, msg=name)
        else:
            assert torch.equal(got, io[name]), f"{case} {name}: {(got - io[name]).abs().max()}"


@pytest.mark.parametrize("case", REFUSED)
def test_unsupported_saelens_file_is_refused_by_name(case):
    field = MANIFEST["cases"][case]["refused_field"]
    with pytest.raises(ValueError, match=f"{field}="):
        load_sae(FIXTURES / case)


def _edited(tmp_path: Path, case: str, **changes) -> Path:
    folder = tmp_path / case
    folder.mkdir()
    raw = json.loads((FIXTURES / case / "cfg.json").read_text())
    raw.update(changes)
    (folder / "cfg.json").write_text(json.dumps(raw))
    weights = (FIXTURES / case / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(weights)
    return folder


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("normalize_activations", "foo"),
        ("reshape_activations", "hook_q"),
        ("architecture", "matching_pursuit"),
        ("activation_fn", "tanh"),
        ("finetuning_scaling_factor", True),
    ],
)
def test_unsupported_field_values_are_refused_by_name(tmp_path, field, value):
    folder = _edited(tmp_path, "standard__none", **{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r} is not supported"):
        load_sae(folder)


def test_unscaled_normalizations_warn(tmp_path):
    with pytest.warns(UserWarning, match="expected_average_only_in"):
        load_sae(FIXTURES / "standard__expected_average_only_in")


@pytest.mark.parametrize(
    ("case", "ignored"),
    [
        ("topk_rescale__none", {"rescale_acts_by_decoder_norm": False}),
        ("standard__constant_norm_rescale", {"normalize_activations": "none"}),
        ("standard__layer_norm", {"normalize_activations": "none"}),
        ("standard_no_b_dec__none", {"apply_b_dec_to_input": True}),
    ],
)
def test_fixtures_detect_an_ignored_field(tmp_path, case, ignored):
    """A loader that ignored the field would give other numbers (the test can fail)."""
    io = load_file(str(FIXTURES / case / "io.safetensors"))
    wrong = _ours(load_sae(_edited(tmp_path, case, **ignored)), io)
    assert (wrong["forward"] - io["forward"]).abs().max() > 1e-2


def test_jumprelu_fixture_has_negative_thresholds_and_relu_matters():
    sae = _load(FIXTURES / "jumprelu__none")
    io = load_file(str(FIXTURES / "jumprelu__none" / "io.safetensors"))
    assert (sae.threshold < 0).any()
    pre = sae.hidden_pre(io["x"])
    without_relu = pre * (pre > sae.threshold)
    assert (without_relu - io["encode"]).abs().max() > 1e-2
    assert torch.equal(sae.encode(io["x"]), io["encode"])


def test_decode_needs_encode_with_stateful_normalization():
    sae = _load(FIXTURES / "standard__layer_norm")
    with pytest.raises(ValueError, match="normalize_activations='layer_norm'"):
        sae.decode(torch.zeros(2, sae.cfg.d_sae))


def test_training_refuses_normalization():
    sae = SAE(SAEConfig(d_in=4, d_sae=8, normalize_activations="layer_norm"))
    with pytest.raises(ValueError, match="normalize_activations='layer_norm'"):
        sae.training_loss(torch.randn(3, 4))


@pytest.mark.parametrize("case", OURS)
def test_our_committed_files_still_load_with_our_outputs(case):
    io = load_file(str(FIXTURES / case / "io.safetensors"))
    for name, got in _ours(load_sae(FIXTURES / case), io).items():
        assert torch.equal(got, io[name]), name


# ------------------------------------------------------------------ the real SAELens

needs_saelens = pytest.mark.skipif(
    not SAELENS_PYTHON.exists(),
    reason=f"{SAELENS_PYTHON.relative_to(ROOT)} not found (make saelens-venv)",
)


def _run_saelens(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(SAELENS_PYTHON), *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@needs_saelens
def test_our_saved_files_load_in_saelens_with_our_outputs(tmp_path):
    """Every architecture we train, trained a few steps and saved by save_sae, gives
    SAELens (load_from_disk) our outputs exactly."""
    from decoding_gpt.sae import train_sae

    gen = torch.Generator().manual_seed(0)
    data = torch.randn(512, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    folders = []
    for arch in ARCHITECTURES:
        cfg = SAEConfig(d_in=16, d_sae=48, architecture=arch, k=4, hook_name="blocks.0.hook_z")
        sae = SAE(cfg, torch.Generator().manual_seed(1))
        train_sae(sae, iter(data.split(64)), 8, lr=1e-2)
        x = data[:32]
        f_random = torch.rand(32, 48, generator=gen) * (torch.rand(32, 48, generator=gen) < 0.2)
        with torch.no_grad():
            f = sae.encode(x)
            io = {"x": x, "encode": f, "decode": sae.decode(f), "forward": sae(x)}
            io |= {"f_random": f_random, "decode_random": sae.decode(f_random)}
        folder = save_sae(sae, tmp_path / f"ours_{arch}")
        # a hook_z SAE reshapes [..., heads, d_head] in SAELens; ours takes it flat
        raw = json.loads((folder / "cfg.json").read_text())
        assert raw["reshape_activations"] == "hook_z"
        raw["reshape_activations"] = "none"
        (folder / "cfg.json").write_text(json.dumps(raw))
        save_file({k: v.contiguous() for k, v in io.items()}, str(folder / "io.safetensors"))
        folders.append(str(folder))
    out = _run_saelens(str(SCRIPTS / "make_saelens_fixtures.py"), "check-ours", *folders)
    result = json.loads(out.strip().splitlines()[-1])
    classes = {"standard": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE"}
    for arch, cls in classes.items():
        got = result[f"ours_{arch}"]
        assert got["saelens_class"] == cls
        assert max(got["max_abs_diff"].values()) == 0.0, (arch, got)


def _reference_tokens_and_logits(path: Path) -> None:
    from decoding_gpt import pretrained
    from decoding_gpt.data.stories import generate_stories

    gpt = pretrained.load_native("stories-4l", device="cpu")
    tok = pretrained.load_tokenizer("stories-4l")
    ids = [i for s in generate_stories(12, split="val") for i in tok(s.text)["input_ids"]]
    n_ctx = 64
    tokens = torch.tensor(ids[: len(ids) // n_ctx * n_ctx]).view(-1, n_ctx)[:16]
    with torch.no_grad():
        logits = gpt(tokens)
    save_file({"tokens": tokens, "logits": logits.contiguous()}, str(path))


@needs_saelens
def test_recipe_hooked_transformer_and_saelens_training(tmp_path):
    ref = tmp_path / "ref.safetensors"
    _reference_tokens_and_logits(ref)
    out = _run_saelens(
        str(SCRIPTS / "saelens_recipe.py"),
        "--model-dir",
        str(ROOT / "decoding_gpt/pretrained/models/stories-4l"),
        "--reference",
        str(ref),
        "--out",
        str(tmp_path / "sae"),
    )
    result = json.loads(out.split("RESULT ", 1)[1])
    print(result)
    assert result["model"] == "HookedTransformer"
    assert result["logits_max_abs_diff"] < 1e-4
    assert result["mse"] < 0.75 * result["untrained_mse"]  # it trained
    assert result["l0"] <= 16
    # the trained SAELens SAE loads here with SAELens's outputs
    sae = load_sae(tmp_path / "sae")
    io = load_file(str(tmp_path / "sae" / "io.safetensors"))
    for name, got in _ours(sae, io).items():
        torch.testing.assert_close(got, io[name], rtol=1.3e-6, atol=1e-5, msg=name)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@needs_saelens
def test_shipped_sae_loads_in_saelens_with_our_outputs(tmp_path):
    """The shipped stories-4l SAE, as its files are on disk, gives SAELens our outputs on
    the residual stream it was trained on."""
    import shutil

    from decoding_gpt import pretrained
    from decoding_gpt.data.stories import generate_stories
    from decoding_gpt.sae.shipped import list_saes, load_shipped_sae, sae_dir

    gpt = pretrained.load_native("stories-4l", device="cpu")
    tok = pretrained.load_tokenizer("stories-4l")
    gen = torch.Generator().manual_seed(0)
    folders = []
    for name in list_saes():
        sae = load_shipped_sae(name)
        ids = tok(generate_stories(1, split="val")[0].text)["input_ids"][:48]
        _, cache = gpt.run_with_cache(torch.tensor([ids]), names_filter=sae.cfg.hook_name)
        x = cache[sae.cfg.hook_name][0]
        f_random = torch.rand(len(ids), sae.cfg.d_sae, generator=gen)
        with torch.no_grad():
            f = sae.encode(x)
            io = {"x": x, "encode": f, "decode": sae.decode(f), "forward": sae(x)}
            io |= {"f_random": f_random, "decode_random": sae.decode(f_random)}
        folder = shutil.copytree(sae_dir(name), tmp_path / name)
        save_file({k: v.contiguous() for k, v in io.items()}, str(folder / "io.safetensors"))
        folders.append(str(folder))
    out = _run_saelens(str(SCRIPTS / "make_saelens_fixtures.py"), "check-ours", *folders)
    result = json.loads(out.strip().splitlines()[-1])
    for name in list_saes():
        assert max(result[name]["max_abs_diff"].values()) < 1e-4, result[name]
