"""The shipped SAEs load offline, match their sha256, and still measure what their cards say.

The headline metrics (L0, explained variance, CE loss recovered, dead latents, and every
label's best latent with its AUROC and F1) are re-measured from the committed files with
the build's own evaluation (``decoding_gpt.tools.build_sae.measure``) on its evaluation
stories, so a change to the model, the tokenizer, the story grammar or the metrics that
silently changes a shipped SAE fails here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from decoding_gpt.pretrained import PretrainedError, load_native
from decoding_gpt.sae import SAE, load_sae
from decoding_gpt.sae.shipped import (
    SAES_DIR,
    list_saes,
    load_shipped_sae,
    sae_dir,
    sae_info,
    verify_sae,
)
from decoding_gpt.tools import build_sae as build

SHIPPED = list_saes()
SIZE_BUDGET = 4 * 1024 * 1024  # bytes, all shipped SAE files together (issue 20)


def test_there_is_a_shipped_sae():
    assert SHIPPED, "decoding_gpt/pretrained/saes/registry.json lists no SAE"


def test_shipped_saes_fit_the_size_budget():
    total = sum(p.stat().st_size for p in SAES_DIR.rglob("*") if p.is_file())
    assert total <= SIZE_BUDGET, f"{total} bytes under {SAES_DIR}"


@pytest.mark.parametrize("name", SHIPPED)
def test_files_match_their_sha256_and_load_in_saelens_format(name):
    verify_sae(name)
    sae = load_shipped_sae(name)
    info = sae_info(name)
    assert isinstance(sae, SAE) and sae.cfg.hook_name == info.hook_name
    raw = json.loads((sae_dir(name) / "cfg.json").read_text())
    assert raw["architecture"] in ("standard", "topk", "jumprelu")  # SAELens's names
    assert raw["hook_name"] == info.hook_name
    again = load_sae(sae_dir(name))  # the plain SAELens-format loader gives the same SAE
    for key, value in sae.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert (sae_dir(name) / "card.md").is_file()
    assert build.config_path(name).is_file()


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    name = SHIPPED[0]
    import decoding_gpt.sae.shipped as shipped

    copy = tmp_path / name
    copy.mkdir()
    for f in sae_info(name).files:
        copy.joinpath(f).write_bytes((sae_dir(name) / f).read_bytes())
    with open(copy / "cfg.json", "a") as fh:
        fh.write(" ")
    monkeypatch.setattr(shipped, "SAES_DIR", tmp_path)
    with pytest.raises(PretrainedError, match="does not match"):
        shipped.verify_sae(name)


def test_unknown_sae_is_refused():
    with pytest.raises(PretrainedError, match="not a shipped SAE"):
        sae_info("no-such-sae")


@pytest.fixture(scope="module", params=SHIPPED)
def measured(request):
    name = request.param
    info = sae_info(name)
    cfg = build.read_config(name)
    model = load_native(info.model, device="cpu")
    data = build.collect(
        model, {**cfg, "data": {**cfg["data"], "train_stories": 1}}, [info.hook_name]
    )
    return name, build.measure(
        load_shipped_sae(name), model, data.test[info.hook_name], data.eval_tokens
    )


def test_metrics_reproduce_from_committed_files(measured):
    name, metrics = measured
    recorded = sae_info(name).metrics
    for key, value in metrics.items():
        if isinstance(value, str):
            assert value == recorded[key], key
        else:
            assert math.isclose(value, recorded[key], rel_tol=1e-3, abs_tol=2e-3), key


def test_sae_meets_the_quality_bars(measured):
    """Issue 20: CE loss recovered > 90 %, dead latents < 10 %."""
    _, metrics = measured
    assert metrics["ce_loss_score"] > 0.9
    assert metrics["dead_fraction"] < 0.1


def test_build_writes_the_probe_ceiling_table():
    """A tiny build (10 train stories, 5 evaluation stories, one hook) reaches the card's
    probe table: one row per ``[ceiling]`` hook, every label with its best class."""
    name = SHIPPED[0]
    hook = sae_info(name).hook_name
    cfg = build.read_config(
        name,
        ["data.train_stories=10", "data.eval_stories=5", f'ceiling.hooks=["{hook}"]'],
    )
    model = load_native(cfg["model"], device="cpu")
    rows = build.probe_ceilings(model, cfg, cfg["ceiling"]["hooks"])
    assert [r["hook"] for r in rows] == [hook]
    # the sweep's activations, when passed, give the same row without collecting again
    assert build.probe_ceilings(model, cfg, [hook], build.collect(model, cfg, [hook])) == rows
    assert all(0.0 <= rows[0][f"{label}_auroc"] <= 1.0 for label in build._labels(rows[0]))
    metrics = sae_info(name).metrics
    card = build.write_card(name, cfg, metrics, [], rows)
    assert "## What one direction can reach: linear probes by hook" in card
    assert f"| {hook} | {rows[0]['inside_quote_auroc']} ({rows[0]['inside_quote_class']}) |" in card
