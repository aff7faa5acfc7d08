"""Modular addition data, Fourier progress measures, the training loop, the shipped model
(and its build: ``decoding_gpt.tools.build_modadd`` through ``tools.build_model``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt import grokking as g
from decoding_gpt import pretrained
from decoding_gpt.checkpoint import SNAPSHOTS_FILE, load_snapshots, read_snapshots
from decoding_gpt.pretrained import registry
from decoding_gpt.tools import build_modadd, build_model
from decoding_gpt.transformer import GPT

TINY = ["data.p=7", "model.d_model=16", "model.n_heads=2", "model.d_mlp=32"]


def _flags(settings: list[str]) -> list[str]:
    return [flag for item in settings for flag in ("--set", item)]


# --------------------------------------------------------------------------- data


def test_all_pairs_labels_match_python_arithmetic():
    p = 5
    tokens, labels = g.all_pairs(p)
    rows = [(a, b, p, (a + b) % p) for a in range(p) for b in range(p)]  # row a p + b
    assert tokens.tolist() == [list(r[:3]) for r in rows]
    assert labels.tolist() == [r[3] for r in rows]


def test_split_is_disjoint_covering_and_seeded():
    p, fraction = 13, 0.4
    data = g.make_dataset(p, fraction, seed=3)
    train, test = set(data.train_idx.tolist()), set(data.test_idx.tolist())
    assert not train & test
    assert train | test == set(range(p * p))
    assert len(train) == round(fraction * p * p)
    again = g.make_dataset(p, fraction, seed=3)
    assert torch.equal(again.train_idx, data.train_idx)
    assert not torch.equal(g.make_dataset(p, fraction, seed=4).train_idx, data.train_idx)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1e-4])
def test_split_rejects_empty_splits(fraction):
    with pytest.raises(ValueError, match="train_fraction"):
        g.make_dataset(7, fraction)


def test_model_config_rejects_a_vocab_that_does_not_fit_p():
    with pytest.raises(ValueError, match="d_vocab=8"):
        g.model_config(7, d_vocab=20)


# --------------------------------------------------------------------------- model


# --------------------------------------------------------------------------- Fourier


def test_fourier_basis_is_orthonormal():
    basis, names = g.fourier_basis(9)
    torch.testing.assert_close(basis @ basis.T, torch.eye(9), atol=1e-6, rtol=0)
    assert names[:3] == ["const", "cos 1", "sin 1"]


def test_fourier_basis_rejects_even_p():
    with pytest.raises(ValueError, match="odd p"):
        g.fourier_basis(10)


def test_frequency_norms_match_the_fft():
    """``||proj_k W||^2 = (2/p) sum_d |rfft(W)_k,d|^2`` for k >= 1, ``|X_0|^2 / p`` for k = 0."""
    p = 13
    W = torch.randn(p, 6, generator=torch.Generator().manual_seed(0))
    X = torch.fft.rfft(W.double(), dim=0)  # [(p+1)/2, d]
    power = X.abs().pow(2).sum(-1)
    expected = torch.cat([power[:1] / p, 2 * power[1:] / p]).sqrt()
    torch.testing.assert_close(g.frequency_norms(W).double(), expected, rtol=1e-5, atol=1e-6)


def test_constructed_embedding_has_its_key_frequencies():
    """``W = 2 cos(w_3 x) u + 2 sin(w_3 x) v + cos(w_7 x) u'``: norms ``2 sqrt(p)``,
    ``sqrt(p/2)`` at k = 3, 7 and 0 elsewhere; 8/9 of the energy sits at k = 3."""
    p, d = 31, 8
    x = torch.arange(p, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    W = (
        2 * torch.cos(2 * math.pi * 3 * x / p)[:, None] * eye[0]
        + 2 * torch.sin(2 * math.pi * 3 * x / p)[:, None] * eye[1]
        + torch.cos(2 * math.pi * 7 * x / p)[:, None] * eye[2]
    ).float()
    norms = g.frequency_norms(W)
    expected = torch.zeros((p + 1) // 2)
    expected[3], expected[7] = 2 * math.sqrt(p), math.sqrt(p / 2)
    torch.testing.assert_close(norms, expected, atol=1e-4, rtol=1e-5)
    assert g.key_frequencies(norms, energy=0.8) == [3]
    assert g.key_frequencies(norms, energy=0.95) == [3, 7]
    assert g.key_frequency_energy(W, [3]) == pytest.approx(8 / 9, abs=1e-5)


def test_restricted_and_excluded_loss_on_an_ideal_circuit():
    """Logits ``5 cos(w_2 (a + b - c))`` lie entirely in the k = 2 ``(a+b)`` components:
    restricting to k = 2 keeps them; excluding k = 2 leaves 0, i.e. loss ``log p``."""
    p, k = 11, 2
    tokens, labels = g.all_pairs(p)
    s = (tokens[:, 0] + tokens[:, 1]).double()[:, None]
    c = torch.arange(p, dtype=torch.float64)[None]
    logits = (5 * torch.cos(2 * math.pi * k * (s - c) / p)).float()  # [p^2, p]
    idx = torch.arange(p * p)
    full = F.cross_entropy(logits, labels).item()
    assert g.restricted_loss(logits, labels, idx, [k]) == pytest.approx(full, abs=1e-4)
    assert g.excluded_loss(logits, labels, idx, [k]) == pytest.approx(math.log(p), abs=1e-4)
    assert g.restricted_loss(logits, labels, idx, [3]) == pytest.approx(math.log(p), abs=1e-4)
    assert g.excluded_loss(logits, labels, idx, [3]) == pytest.approx(full, abs=1e-4)


def test_key_frequencies_out_of_range_are_rejected():
    logits, labels = torch.zeros(49, 7), torch.zeros(49, dtype=torch.long)
    with pytest.raises(ValueError, match="key frequencies"):
        g.restricted_loss(logits, labels, torch.arange(49), [4])


# --------------------------------------------------------------------------- training


def test_snapshot_schedule_is_on_the_log_grid_and_spans_the_run():
    steps = g.even_snapshot_steps(1000, 6, 30)
    assert steps[0] == 0 and steps[-1] == 1000
    assert all(e % 30 == 0 for e in steps[:-1])
    assert len(steps) == 6


def test_minibatches_cover_the_train_set_once_per_pass():
    it = g.batches(10, 3, seed=0)
    first_pass = torch.cat([next(it) for _ in range(3)])  # 3 batches of 3, one pair dropped
    assert len(set(first_pass.tolist())) == 9
    assert torch.equal(next(g.batches(10, None, seed=0)), torch.arange(10))


def test_training_loop_logs_curves_and_snapshots():
    data = g.make_dataset(7, 0.6, seed=0)
    torch.manual_seed(0)
    model = GPT(g.model_config(7, d_model=16, n_heads=2, d_mlp=32))
    cfg = g.GrokTrainConfig(steps=20, lr=1e-2, log_every=5, n_snapshots=8)
    run = g.train_modular_addition(model, data, cfg, log=None)
    h = run.history
    assert h["step"] == [0, 5, 10, 15, 20]
    assert all(len(h[key]) == 5 for key in ("train_loss", "test_loss", "test_accuracy"))
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert {0, 20} <= set(run.snapshots) and h["snapshot_steps"] == sorted(run.snapshots)
    # the last snapshot is the final model, in float16
    final = {k: v.to(torch.float16).float() for k, v in model.state_dict().items()}
    for name, tensor in run.snapshots[20].items():
        torch.testing.assert_close(tensor.float(), final[name])
    # the logged final metrics are the model's
    assert g.evaluate_modular_addition(model, data)["test_loss"] == pytest.approx(
        h["test_loss"][-1], abs=1e-5
    )


def test_cli_builds_a_run_whose_snapshots_load(tmp_path):
    sets = [*TINY, "train.steps=12", "train.log_every=3", "train.lr=1e-2"]
    assert (
        build_model.main(["modadd-1l", "--out", str(tmp_path), "--no-register", *_flags(sets)]) == 0
    )
    steps, models = load_snapshots(tmp_path)
    assert steps[0] == 0 and steps[-1] == 12 and steps == sorted(steps)
    history = json.loads((tmp_path / "metrics.json").read_text())
    data = g.make_dataset(7, 0.3, seed=0)  # the config's split with p = 7
    recorded = {s["step"]: s["test_accuracy"] for s in history["snapshots"]}
    for step, model in zip(steps, models, strict=True):
        assert g.evaluate_modular_addition(model, data)["test_accuracy"] == pytest.approx(
            recorded[step], abs=1e-6
        )


def test_corrupt_snapshots_file_is_reported(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        read_snapshots(tmp_path / "bad.safetensors")


def test_bad_config_keys_are_reported():
    with pytest.raises(ValueError, match="unknown"):
        build_modadd.read_run_config(build_model.CONFIG_DIR / "modadd-1l.toml", ["data.modulus=7"])


# --------------------------------------------------------------------------- shipped model

NAME = "modadd-1l"
shipped = pytest.mark.skipif(
    NAME not in pretrained.list_models(), reason="modadd-1l is not registered yet"
)


@shipped
def test_shipped_model_has_grokked():
    model = pretrained.load_native(NAME, device="cpu")
    metrics = g.evaluate_modular_addition(model, build_modadd.split_of(pretrained.model_dir(NAME)))
    assert metrics["train_accuracy"] > 0.99 and metrics["test_accuracy"] > 0.99, metrics


@shipped
def test_shipped_model_loads_in_transformer_lens_with_the_same_logits():
    native = pretrained.load_native(NAME, device="cpu")
    bridge = pretrained.load(NAME, device="cpu")
    tokens, _ = g.all_pairs(native.cfg.d_vocab - 1)
    tokens = tokens[::97]
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), native(tokens), rtol=1e-4, atol=1e-4)


@shipped
def test_shipped_snapshots_show_the_jump():
    steps, models = pretrained.load_snapshots(NAME)
    data = build_modadd.split_of(pretrained.model_dir(NAME))
    measured = [g.evaluate_modular_addition(m, data) for m in models]
    acc = [m["test_accuracy"] for m in measured]
    train_acc = [m["train_accuracy"] for m in measured]
    assert acc[0] < 0.05 and acc[-1] > 0.99, acc
    # grokking: some snapshot has memorised the train pairs while the test ones lag behind
    assert any(tr > 0.9 and te < 0.5 for tr, te in zip(train_acc, acc, strict=True)), acc
    history = json.loads((pretrained.model_dir(NAME) / "metrics.json").read_text())
    assert steps == history["snapshot_steps"]
    recorded = [s["test_accuracy"] for s in history["snapshots"]]
    assert acc == pytest.approx(recorded, abs=2e-3)


def test_registered_snapshots_are_checked_against_the_registry(tmp_path, monkeypatch):
    """``register(extra_files=...)`` hashes the snapshots too: a changed byte is caught."""
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(registry, "REGISTRY_FILE", tmp_path / "registry.json")
    run = tmp_path / "run"
    sets = [*TINY, "train.steps=2", "train.log_every=1"]
    build_model.main(["modadd-1l", "--out", str(run), "--no-register", *_flags(sets)])
    info = build_model.register(
        "tiny-modadd", run, description="test", lecture="16", tokenizer=None,
        metrics={}, card="# tiny\n", extra_files=(SNAPSHOTS_FILE,),
    )  # fmt: skip
    assert SNAPSHOTS_FILE in info.files
    registry.verify("tiny-modadd")
    path = registry.MODELS_DIR / "tiny-modadd" / SNAPSHOTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match=r"snapshots\.safetensors.*sha256"):
        registry.verify("tiny-modadd")


@pytest.mark.parametrize(("env", "shown"), [("1", False), ("0", True)])
def test_training_progress_bar_obeys_tqdm_disable(monkeypatch, capsys, env, shown):
    """TQDM_DISABLE=1 (``make test``, the notebook refresher) must print nothing."""
    monkeypatch.setenv("TQDM_DISABLE", env)
    data = g.make_dataset(7, 0.6, seed=0)
    model = GPT(g.model_config(7, d_model=16, n_heads=2, d_mlp=32))
    g.train_modular_addition(model, data, g.GrokTrainConfig(steps=4, log_every=2), log=None)
    out, err = capsys.readouterr()
    assert out == "" and ("train_modular_addition" in err) == shown and (err == "") != shown
