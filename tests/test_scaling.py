"""Scaling-law fits against closed-form answers, bad input, and a tiny size sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from decoding_gpt.data import load_token_array
from decoding_gpt.scaling import (
    bootstrap_exponent,
    fit_power_law,
    fit_saturating_power_law,
    load_sweep,
    load_sweep_model,
    non_embedding_params,
    power_law,
    sweep_configs,
    train_size_sweep,
)
from decoding_gpt.tools.scaling_sweep import main
from decoding_gpt.training import evaluate
from decoding_gpt.transformer import GPT, GPTConfig

N = np.geomspace(1e3, 1e7, 9)


def _noisy(loss: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    return loss * np.exp(np.random.default_rng(seed).normal(0.0, scale, size=loss.shape))


# ------------------------------------------------------------------- pure power law
def test_power_law_matches_polyfit_in_log_space():
    loss = _noisy(7.0 * N**-0.08, 0.01)
    fit = fit_power_law(N, loss)
    slope, intercept = np.polyfit(np.log(N), np.log(loss), 1)  # independent least squares
    assert fit.exponent == pytest.approx(slope, abs=1e-10)
    assert fit.a == pytest.approx(math.exp(intercept), rel=1e-10)
    assert fit.l_inf == 0.0 and fit.alpha == -fit.exponent
    assert abs(fit.exponent - (-0.08)) < 0.01


def test_power_law_exact_data_is_recovered_exactly():
    fit = fit_power_law(N, 3.0 * N**-0.5)
    assert fit.exponent == pytest.approx(-0.5, abs=1e-12)
    assert fit.a == pytest.approx(3.0, rel=1e-10)
    assert fit.rss < 1e-20


# ------------------------------------------------------------------- saturating power law
def test_saturating_exact_data_is_recovered():
    loss = power_law(N, 40.0, -0.35, 1.8)
    fit = fit_saturating_power_law(N, loss)
    assert fit.exponent == pytest.approx(-0.35, abs=1e-6)
    assert fit.l_inf == pytest.approx(1.8, abs=1e-6)
    assert fit.a == pytest.approx(40.0, rel=1e-5)
    np.testing.assert_allclose(fit.predict(N), loss, rtol=1e-8)


@pytest.mark.parametrize(("a", "exponent", "l_inf"), [(40.0, -0.35, 1.8), (5.0, -0.2, 0.7)])
def test_saturating_recovers_law_from_noisy_data(a, exponent, l_inf):
    loss = _noisy(power_law(N, a, exponent, l_inf), 0.002, seed=1)
    fit = fit_saturating_power_law(N, loss)
    assert abs(fit.exponent - exponent) < 0.03
    assert abs(fit.l_inf - l_inf) < 0.05
    # the pure power law cannot bend: it finds a far shallower slope and fits worse
    pure = fit_power_law(N, loss)
    assert pure.exponent > fit.exponent + 0.05


def test_saturating_floor_is_never_negative():
    fit = fit_saturating_power_law(N, 2.0 * N**-0.3)  # true floor 0: a boundary optimum
    assert fit.l_inf >= 0.0
    assert fit.l_inf < 1e-3
    assert fit.exponent == pytest.approx(-0.3, abs=1e-3)


def test_bootstrap_interval_covers_truth_and_is_seeded():
    loss = _noisy(power_law(N, 40.0, -0.35, 1.8), 0.003, seed=2)
    fit = bootstrap_exponent(N, loss, n_boot=60, seed=0)
    low, high = fit.exponent_ci
    assert fit.exponent_std > 0
    assert low <= fit.exponent <= high
    assert low - 0.02 <= -0.35 <= high + 0.02
    again = bootstrap_exponent(N, loss, n_boot=60, seed=0)
    assert again.exponent_ci == fit.exponent_ci
    pure = bootstrap_exponent(N, _noisy(3.0 * N**-0.1, 0.01), saturating=False, n_boot=60)
    assert pure.exponent_ci[0] < -0.1 < pure.exponent_ci[1]
    assert json.loads(json.dumps(fit.to_dict()))["alpha"] == pytest.approx(-fit.exponent)


# ------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fit", [fit_power_law, fit_saturating_power_law])
@pytest.mark.parametrize(
    ("n", "loss", "message"),
    [
        ([1e3, 0.0, 1e5], [3.0, 2.0, 1.0], "N must be positive"),
        ([1e3, -1e4, 1e5], [3.0, 2.0, 1.0], "N must be positive"),
        ([1e3, 1e4], [3.0, 2.0], "at least 3"),
        ([1e3, 1e4, 1e5], [3.0, 2.0], "equal length"),
        ([1e3, 1e4, 1e5], [3.0, float("nan"), 1.0], "finite"),
        ([1e3, 1e4, 1e5], [3.0, 0.0, 1.0], "losses must be positive"),
        ([1e4, 1e4, 1e4], [3.0, 2.0, 1.0], "all sizes N are equal"),
    ],
)
def test_bad_input_raises(fit, n, loss, message):
    with pytest.raises(ValueError, match=message):
        fit(n, loss)


def test_bad_bootstrap_and_range_raise():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_exponent(N, 2.0 * N**-0.3, n_boot=1)
    with pytest.raises(ValueError, match="exponent_range"):
        fit_saturating_power_law(N, 2.0 * N**-0.3, exponent_range=(1.0, 0.5))


# ------------------------------------------------------------------- parameter counts, sweep
def test_non_embedding_params_counts_modules_outside_the_tables():
    cfg = GPTConfig(d_vocab=50, n_ctx=8, d_model=16, n_layers=2, n_heads=2)
    model = GPT(cfg)
    tables = ("embed.", "pos_embed.", "unembed.")
    counted = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(tables))
    assert non_embedding_params(cfg) == counted
    assert cfg.n_params == sum(p.numel() for p in model.parameters())
    # attention 4 d^2 + MLP 8 d^2 per layer, plus biases and LayerNorms
    assert 12 * 2 * 16**2 < non_embedding_params(cfg) < 14 * 2 * 16**2


def test_sweep_configs_validates_shapes():
    configs = sweep_configs([16, 48], 2, d_vocab=10, n_ctx=8)
    assert [(c.d_model, c.n_layers, c.n_heads) for c in configs] == [(16, 2, 1), (48, 2, 3)]
    with pytest.raises(ValueError, match="one depth per width"):
        sweep_configs([16, 32], [1, 2, 3], d_vocab=10, n_ctx=8)
    with pytest.raises(ValueError, match="widths is empty"):
        sweep_configs([], 1, d_vocab=10, n_ctx=8)


def test_two_size_three_step_sweep():
    train = load_token_array("stories", "train", n_tokens=20_000)
    val = load_token_array("stories", "val", n_tokens=5000)
    rows = train_size_sweep(
        [8, 16], 1, n_tokens=3 * 4 * 16, n_ctx=16, batch_size=4, d_head=8,
        eval_batches=2, train_data=train, val_data=val,
    )  # fmt: skip
    assert [(r.d_model, r.steps, r.tokens) for r in rows] == [(8, 3, 192), (16, 3, 192)]
    for row in rows:
        cfg = GPTConfig(
            d_vocab=1369, n_ctx=16, d_model=row.d_model, n_layers=1, n_heads=row.n_heads
        )
        assert row.n_params == sum(p.numel() for p in GPT(cfg).parameters())
        assert row.n_params_non_embedding < row.n_params
        # three steps barely move a fresh model off the uniform loss ln(V)
        assert abs(row.val_loss - math.log(1369)) < 1.0
    with pytest.raises(ValueError, match="less than one batch"):
        train_size_sweep([8], 1, n_tokens=10, n_ctx=16, batch_size=4, train_data=train)


def test_cli_writes_table_and_fit(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "sweep.json"
    argv = ["--out", str(out), "--widths", "8", "16", "32", "--depths", "1", "--n-tokens", "128"]
    argv += ["--n-ctx", "16", "--batch-size", "4", "--n-val-tokens", "5000"]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m decoding_gpt.tools.scaling_sweep --out")
    assert result["config"]["widths"] == [8, 16, 32]
    assert "cores" in result["machine"] and "torch" in result["machine"]
    assert [row["d_model"] for row in result["rows"]] == [8, 16, 32]
    assert {"exponent", "alpha", "l_inf", "exponent_ci"} <= set(result["fit_saturating"])
    assert result["fit_power_law"]["l_inf"] == 0.0


def test_cli_weights_reload_to_the_reported_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out, weights = tmp_path / "sweep.json", tmp_path / "weights"
    argv = ["--out", str(out), "--widths", "8", "16", "--depths", "1", "--n-tokens", "128"]
    argv += ["--n-ctx", "16", "--batch-size", "4", "--n-val-tokens", "5000"]
    assert main([*argv, "--weights", str(weights)]) == 0
    result = load_sweep(out)
    val = load_token_array("stories", "val", n_tokens=5000)
    for index, row in enumerate(result["rows"]):
        model = load_sweep_model(index, out)
        assert model.cfg.d_model == row["d_model"]
        # the reloaded weights give the loss the sweep recorded (same fixed val batches)
        loss = evaluate(model, val, batch_size=4, n_ctx=16, n_batches=8, seed=0)
        assert loss == pytest.approx(row["val_loss"], abs=1e-5)
    with pytest.raises(IndexError, match="has 2 sizes"):
        load_sweep_model(2, out)
    (weights / "d8-l1.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256 does not match"):
        load_sweep_model(0, out)


def test_committed_sweep_loads_and_loss_falls_with_size(tmp_path):
    result = load_sweep()
    rows = sorted(result["rows"], key=lambda r: r["n_params_non_embedding"])
    assert len(rows) >= 5 and result["command"].startswith(
        "python -m decoding_gpt.tools.scaling_sweep"
    )
    assert all(r["n_params"] > r["n_params_non_embedding"] > 0 for r in rows)
    n = [r["n_params_non_embedding"] for r in rows]
    loss = [r["val_loss"] for r in rows]
    assert fit_power_law(n, loss).exponent < 0
    assert loss[-1] < loss[0]
    with pytest.raises(FileNotFoundError, match="python -m decoding_gpt.tools.scaling_sweep"):
        load_sweep(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"rows": [')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sweep(corrupt)
    corrupt.write_text('{"rows": [{"val_loss": 2.0}]}')
    with pytest.raises(ValueError, match="n_params"):
        load_sweep(corrupt)


def test_committed_scaling_family_reproduces_its_losses():
    """The shipped weights of every size give the validation loss the sweep recorded."""
    result = load_sweep()
    config = result["config"]
    val = load_token_array("stories", "val", n_tokens=config["n_val_tokens"])
    for index, row in enumerate(result["rows"]):
        model = load_sweep_model(index)
        assert model.cfg.n_params == row["n_params"]
        loss = evaluate(
            model, val, batch_size=config["batch_size"], n_ctx=config["n_ctx"], n_batches=8,
            seed=config["seed"],
        )  # fmt: skip
        assert loss == pytest.approx(row["val_loss"], abs=1e-4), row["d_model"]
