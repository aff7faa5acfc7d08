"""Tests for decoding_gpt.checkpoint: round trips, and clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import decoding_gpt.checkpoint as checkpoint_module
from decoding_gpt.checkpoint import (
    CheckpointError,
    config_sha256,
    copy_with_weights_as,
    file_sha256,
    load_checkpoint,
    load_optimizer,
    load_weights,
    read_trainer_state,
    save_checkpoint,
    save_optimizer,
    save_weights,
)
from decoding_gpt.training import TrainConfig
from decoding_gpt.transformer import GPT, GPTConfig

CFG = GPTConfig(d_vocab=40, n_ctx=12, d_model=16, n_layers=2, n_heads=2)


def make_gpt(cfg: GPTConfig = CFG, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    model = make_gpt()
    metrics = {"step": [1, 2], "train_loss": [3.5, 3.25]}
    return save_checkpoint(
        tmp_path / "ckpt", model, CFG, train_config=TrainConfig(steps=2), metrics=metrics
    )


def test_round_trip_gives_identical_logits(ckpt: Path):
    model, config, metrics = load_checkpoint(ckpt)
    tokens = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(tokens), make_gpt().eval()(tokens))
    assert config == CFG
    assert metrics == {"step": [1, 2], "train_loss": [3.5, 3.25]}
    stored = json.loads((ckpt / "config.json").read_text())
    assert TrainConfig.from_dict(stored["train"]) == TrainConfig(steps=2)
    assert stored["model_class"] == "decoding_gpt.transformer.GPT"


def test_float16_copy_halves_the_file_and_loads_into_float32(ckpt: Path, tmp_path: Path):
    half = copy_with_weights_as(ckpt, tmp_path / "half", torch.float16)
    stored = load_file(half / "model.safetensors")
    original = load_file(ckpt / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    for name, t in original.items():  # each weight is the float32 one rounded to float16
        assert torch.equal(stored[name], t.half()), name
    size = (half / "model.safetensors").stat().st_size
    assert size < 0.55 * (ckpt / "model.safetensors").stat().st_size
    model, config, metrics = load_checkpoint(half)
    assert config == CFG and metrics == {"step": [1, 2], "train_loss": [3.5, 3.25]}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tokens = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # float16 keeps 11 significant bits: logits move by ~1e-3 relative at most
        torch.testing.assert_close(model(tokens), make_gpt().eval()(tokens), atol=1e-2, rtol=0)
    assert sorted(p.name for p in half.iterdir()) == sorted(
        ["config.json", "metrics.json", "model.safetensors"]
    )


def test_float16_copy_refuses_a_weight_out_of_range(tmp_path: Path):
    model = make_gpt()
    with torch.no_grad():
        model.embed.W_E[0, 0] = 1e6  # float16's largest finite value is 65504
    ckpt = save_checkpoint(tmp_path / "big", model, CFG)
    with pytest.raises(CheckpointError, match="W_E.*does not fit in torch.float16"):
        copy_with_weights_as(ckpt, tmp_path / "half", torch.float16)


def test_checkpoint_holds_only_safetensors_and_json(ckpt: Path):
    """No pickle anywhere: every file parses as JSON or as a safetensors header."""
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["config.json", "metrics.json", "model.safetensors"]
    header_len = int.from_bytes((ckpt / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((ckpt / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert "embed.W_E" in header or any(k.endswith("W_E") for k in header)


def test_checkpoint_modules_never_pickle():
    import decoding_gpt.tools.train as train_cli
    import decoding_gpt.training as training

    for module in (checkpoint_module, training, train_cli):
        source = Path(module.__file__).read_text()
        for banned in ("torch.save(", "torch.load(", "import pickle", "allow_pickle=True"):
            assert banned not in source, f"{module.__name__} uses {banned}"


def test_truncated_weights_name_the_file(ckpt: Path):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors"):
        load_checkpoint(ckpt)


def test_bad_json_names_the_file(ckpt: Path):
    (ckpt / "config.json").write_text('{"format_version": 1, "model": {')
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(ckpt)


def test_missing_file_and_directory(ckpt: Path, tmp_path: Path):
    (ckpt / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match=r"metrics\.json: file is missing"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_unknown_config_field_is_reported(ckpt: Path):
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["d_modle"] = 16
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: the 'model' section is not a valid"):
        load_checkpoint(ckpt)


def test_missing_tensor_is_named(ckpt: Path):
    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=rf"missing \['{dropped}'\]"):
        load_checkpoint(ckpt)


def test_config_weight_shape_mismatch_is_reported(ckpt: Path):
    config = json.loads((ckpt / "config.json").read_text())
    config["model"]["d_mlp"] = 48  # weights were saved with d_mlp = 4 * 16 = 64
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*mlp.*' has shape"):
        load_checkpoint(ckpt)


def test_tied_weights_round_trip(tmp_path: Path):
    """Tensors that share storage are stored once and come back tied."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.unembed = nn.Linear(4, 10, bias=False)
            self.unembed.weight = self.embed.weight

    torch.manual_seed(0)
    src = Tied()
    save_weights(tmp_path / "w.safetensors", src)
    assert list(load_file(tmp_path / "w.safetensors")) == ["embed.weight"]
    dst = Tied()
    load_weights(tmp_path / "w.safetensors", dst)
    assert torch.equal(dst.unembed.weight, src.embed.weight)
    assert dst.unembed.weight.data_ptr() == dst.embed.weight.data_ptr()


def adam_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens = torch.randint(0, 40, (2, 12), generator=g)
        model(tokens).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()


def test_optimizer_state_round_trip_continues_identically(tmp_path: Path):
    model = make_gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    adam_steps(model, opt, 2, seed=0)
    saved = save_optimizer(tmp_path, opt)
    json.dumps(saved)  # the non-tensor part is plain JSON

    clone = make_gpt(seed=1)
    clone.load_state_dict(model.state_dict())
    clone_opt = torch.optim.AdamW(clone.parameters(), lr=123.0)
    load_optimizer(tmp_path, clone_opt, json.loads(json.dumps(saved)))
    assert clone_opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert clone_opt.param_groups[0]["lr"] == 1e-2
    adam_steps(model, opt, 2, seed=1)
    adam_steps(clone, clone_opt, 2, seed=1)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_optimizer_state_for_another_model_is_refused(tmp_path: Path):
    model = make_gpt()
    opt = torch.optim.AdamW(model.parameters())
    adam_steps(model, opt, 1, seed=0)
    saved = save_optimizer(tmp_path, opt)
    other = GPT(GPTConfig(d_vocab=40, n_ctx=12, d_model=24, n_layers=2, n_heads=2))
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: state\.\d+\.\w+ has shape"):
        load_optimizer(tmp_path, torch.optim.AdamW(other.parameters()), saved)


def test_trainer_state_requires_step(tmp_path: Path):
    (tmp_path / "trainer_state.json").write_text('{"optimizer": {}}')
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: expected an object"):
        read_trainer_state(tmp_path)


def test_file_sha256_known_vector(tmp_path: Path):
    (tmp_path / "abc").write_bytes(b"abc")  # the FIPS 180-2 test vector
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_sha256(tmp_path / "abc") == expected
    assert file_sha256(tmp_path / "abc", chunk_size=1) == expected


# --------------------------------------------------------------------------- silent corruption
def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _edit_model_config(ckpt: Path, **changes) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["model"].update(changes)
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_is_named(ckpt: Path, value: float):
    path = ckpt / "model.safetensors"
    tensors = load_file(path)
    tensors["blocks.1.mlp.W_in"][3, 5] = value
    save_file(tensors, path, metadata=_metadata(path))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: tensor 'blocks\.1\.mlp\.W_in' is not finite"
    ):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not finite"):
        load_weights(path, make_gpt())


def test_save_records_the_sha256_of_the_model_config(ckpt: Path):
    stored = json.loads((ckpt / "config.json").read_text())["model"]
    recorded = _metadata(ckpt / "model.safetensors")["config_sha256"]
    assert recorded == config_sha256(stored) == config_sha256(CFG)
    assert config_sha256(CFG.to_dict() | {"act_fn": "relu"}) != recorded


@pytest.mark.parametrize(
    "change",
    [
        {"act_fn": "relu"},
        {"act_fn": "gelu_new"},
        {"layer_norm_eps": 1e-3},
        {"init_range": 0.5},
    ],
)
def test_shape_preserving_config_edit_is_refused(ckpt: Path, change: dict):
    """Every tensor still fits, so only the recorded sha256 can tell the model changed."""
    _edit_model_config(ckpt, **change)
    with pytest.raises(
        CheckpointError, match=r"config\.json: the 'model' section .* was saved with"
    ):
        load_checkpoint(ckpt)


def test_positional_type_edit_is_refused(tmp_path: Path):
    """Rotary and sinusoidal positions have no stored tensor: the names and shapes agree."""
    cfg = GPTConfig(d_vocab=40, n_ctx=12, d_model=16, n_layers=1, n_heads=2,
                    positional_embedding_type="rotary")  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "rotary", make_gpt(cfg), cfg)
    _edit_model_config(ckpt, positional_embedding_type="sinusoidal")
    with pytest.raises(CheckpointError, match=r"config\.json: .*edited after saving"):
        load_checkpoint(ckpt)


def test_normalization_edit_is_refused(tmp_path: Path):
    cfg = GPTConfig(d_vocab=40, n_ctx=12, d_model=16, n_layers=1, n_heads=2)
    ckpt = save_checkpoint(tmp_path / "ln", make_gpt(cfg), cfg)
    _edit_model_config(ckpt, normalization_type=None)
    with pytest.raises(CheckpointError, match="unexpected"):  # the LN tensors have no place
        load_checkpoint(ckpt)


def test_reformatted_config_and_edited_train_section_still_load(ckpt: Path):
    config = json.loads((ckpt / "config.json").read_text())
    config["model"] = dict(reversed(config["model"].items()))
    config["train"]["steps"] = 1000  # not the model: not recorded
    (ckpt / "config.json").write_text(json.dumps(config))
    model, cfg, _ = load_checkpoint(ckpt)
    assert cfg == CFG


def test_weights_without_a_config_record_load_as_before(ckpt: Path):
    """Files saved before the record existed (like the shipped models) are not checked."""
    path = ckpt / "model.safetensors"
    save_file(load_file(path), path)  # no metadata
    _edit_model_config(ckpt, act_fn="relu")
    _, cfg, _ = load_checkpoint(ckpt)
    assert cfg.act_fn == "relu"


def test_float16_copy_keeps_the_config_record(ckpt: Path, tmp_path: Path):
    half = copy_with_weights_as(ckpt, tmp_path / "half", torch.float16)
    assert _metadata(half / "model.safetensors") == _metadata(ckpt / "model.safetensors")
    load_checkpoint(half)
    _edit_model_config(half, act_fn="relu")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(half)
