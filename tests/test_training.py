"""Tests for decoding_gpt.training and the training CLI (decoding_gpt.tools.train).

References are independent of the code under test: a per-position log-softmax loop for
the loss, torch's CosineAnnealingLR closed form for the schedule, AdamW's decoupled
decay rule for the parameter groups, ln(d_vocab) for a fresh model's loss.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checkpoint import (
    SNAPSHOTS_FILE,
    load_checkpoint,
    read_config,
    read_metrics,
    read_snapshots,
)
from decoding_gpt.tools.train import apply_overrides, load_config, load_data, main, place_heads
from decoding_gpt.training import (
    TrainConfig,
    _step_generator,
    _window_index,
    evaluate,
    lr_at,
    make_optimizer,
    sample_batch,
    train,
)
from decoding_gpt.transformer import GPT, GPTConfig, next_token_loss

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny-smoke.toml"
PRETRAINED_CONFIGS = REPO / "decoding_gpt" / "pretrained" / "configs"


def tiny_gpt(d_vocab: int = 32, n_ctx: int = 16, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(d_vocab=d_vocab, n_ctx=n_ctx, d_model=32, n_layers=2, n_heads=2) | kw
    return GPT(GPTConfig(**cfg))


def quiet_cfg(**kw) -> TrainConfig:
    base = dict(steps=10, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, device="cpu")
    base |= dict(eval_every=0, eval_batches=1, log_every=1)
    return TrainConfig(**(base | kw))


# --------------------------------------------------------------------------- loss


def test_next_token_loss_matches_per_position_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 7), generator=g)
    terms = [
        -torch.log_softmax(logits[b, t], dim=-1)[tokens[b, t + 1]]
        for b in range(3)
        for t in range(6)
    ]
    assert torch.allclose(next_token_loss(logits, tokens), torch.stack(terms).mean(), atol=1e-6)


def test_next_token_loss_shifts_along_sequence_not_batch():
    """Logits that predict the NEXT token of the SAME sequence give ~0 loss.

    The historical bug paired sequence b with sequence b+1 (a batch-axis shift),
    which scores these logits near the maximum instead.
    """
    tokens = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(1))
    logits = torch.full((4, 9, 50), -30.0)
    logits[:, :-1].scatter_(-1, tokens[:, 1:, None], 30.0)
    assert next_token_loss(logits, tokens).item() < 1e-6
    batch_shifted = F.cross_entropy(logits[:-1].reshape(-1, 50), tokens[1:].reshape(-1))
    assert batch_shifted.item() > 10  # the wrong shift is very wrong on the same input


@pytest.mark.parametrize(
    "logits_shape, tokens_shape",
    [((2, 5, 7), (2, 6)), ((2, 5), (2, 5)), ((2, 1, 7), (2, 1)), ((3, 5, 7), (2, 5))],
)
def test_next_token_loss_rejects_bad_shapes(logits_shape, tokens_shape):
    with pytest.raises(ValueError, match="next_token_loss"):
        next_token_loss(torch.zeros(logits_shape), torch.zeros(tokens_shape, dtype=torch.long))


# --------------------------------------------------------------------------- schedule


def test_lr_warmup_is_linear_and_reaches_peak():
    cfg = quiet_cfg(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # lr * 1/10
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    warm = [lr_at(s, cfg) for s in range(10)]
    assert np.allclose(np.diff(warm), 1e-4)


def test_lr_cosine_matches_torch_cosine_annealing():
    """After warmup the schedule is torch's CosineAnnealingLR(T_max=steps-warmup, eta_min)."""
    cfg = quiet_cfg(steps=60, warmup_steps=10, lr=2e-3, min_lr=2e-4)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=cfg.min_lr)
    for k in range(50):
        assert lr_at(10 + k, cfg) == pytest.approx(sched._get_closed_form_lr()[0], rel=1e-9)
        opt.step()
        sched.step()
    assert lr_at(35, cfg) == pytest.approx((cfg.lr + cfg.min_lr) / 2)  # halfway: the mean
    assert lr_at(60, cfg) == pytest.approx(cfg.min_lr)
    assert lr_at(1000, cfg) == pytest.approx(cfg.min_lr)


def test_lr_without_warmup_starts_at_peak():
    cfg = quiet_cfg(steps=20, warmup_steps=0, lr=1e-3, min_lr=1e-3)
    assert all(lr_at(s, cfg) == pytest.approx(1e-3) for s in range(25))


# --------------------------------------------------------------------------- optimiser


def test_weight_decay_hits_matrices_only():
    """With zero gradients AdamW's update is pure decay: w <- w (1 - lr * wd)."""
    model = tiny_gpt()
    cfg = quiet_cfg(lr=0.1, weight_decay=0.5)
    opt = make_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    n_matrices = 0
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            n_matrices += 1
            assert torch.allclose(p, before[name] * (1 - 0.1 * 0.5), atol=1e-7), name
        else:
            assert torch.equal(p, before[name]), f"{name} (a {p.dim()}-D parameter) was decayed"
    assert n_matrices > 0


# --------------------------------------------------------------------------- batches


def test_sample_batch_stream_windows_are_contiguous():
    data = np.arange(1000, dtype=np.uint16)
    batch = sample_batch(data, 6, 10, torch.Generator().manual_seed(0))
    assert batch.shape == (6, 10) and batch.dtype == torch.long
    assert torch.equal(batch - batch[:, :1], torch.arange(10).expand(6, 10))
    assert int(batch.max()) < 1000
    again = sample_batch(data, 6, 10, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)


def test_sample_batch_documents_stay_inside_one_document():
    docs = np.arange(40 * 12).reshape(40, 12)  # row r holds 12r .. 12r+11
    batch = sample_batch(docs, 8, 5, torch.Generator().manual_seed(3))
    assert torch.equal(batch // 12, (batch[:, :1] // 12).expand(8, 5))
    assert torch.equal(torch.diff(batch, dim=1), torch.ones(8, 4, dtype=torch.long))


def test_sample_batch_rejects_short_data():
    with pytest.raises(ValueError, match="fewer than n_ctx"):
        sample_batch(np.arange(5), 2, 8, torch.Generator())


# --------------------------------------------------------------------------- training


def test_initial_loss_is_about_ln_vocab():
    model = tiny_gpt(d_vocab=64, n_ctx=16)
    data = np.random.default_rng(0).integers(0, 64, 5000)
    loss = evaluate(model, data, batch_size=8, n_batches=2, device="cpu")
    assert abs(loss - math.log(64)) < 0.05 * math.log(64)


def test_overfits_a_short_sequence():
    model = tiny_gpt(d_vocab=32, n_ctx=16)
    seq = np.random.default_rng(0).integers(0, 32, (1, 16))  # every batch: this sequence
    cfg = quiet_cfg(steps=60, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=5, log_every=1)
    history = train(model, seq, seq, cfg)
    assert history["train_loss"][0] > 2.0
    assert history["train_loss"][-1] < 0.05
    assert history["val_step"] == [60]  # eval_every=0: only the final evaluation
    assert history["val_loss"][0] < 0.05


def test_history_records_losses_lr_and_tokens():
    model = tiny_gpt()
    data = np.random.default_rng(1).integers(0, 32, 4000).astype(np.uint16)
    cfg = quiet_cfg(steps=6, log_every=2, eval_every=3, eval_batches=2)
    h = train(model, data, data, cfg)
    assert h["step"] == [2, 4, 6]
    assert h["tokens_seen"] == [2 * 4 * 16, 4 * 4 * 16, 6 * 4 * 16]
    assert h["lr"] == pytest.approx([lr_at(s - 1, cfg) for s in (2, 4, 6)])
    assert h["val_step"] == [0, 3, 6]  # step 0: the loss before any update
    assert all(np.isfinite(h["val_loss"])) and h["tokens_per_s"] > 0
    assert np.all(np.diff(h["elapsed"]) >= 0)


def test_callback_can_stop_training():
    model = tiny_gpt()
    data = np.random.default_rng(2).integers(0, 32, 2000)
    seen = []
    h = train(
        model, data, None, quiet_cfg(steps=50), callback=lambda s, _: seen.append(s) or s == 3
    )
    assert seen == [1, 2, 3] and h["step"][-1] == 3


def test_resume_equals_uninterrupted_run(tmp_path):
    data = np.random.default_rng(3).integers(0, 32, 5000).astype(np.uint16)
    cfg = quiet_cfg(steps=8, log_every=1, eval_every=4, eval_batches=1)

    full = tiny_gpt(seed=5)
    h_full = train(full, data, data, cfg)

    # interrupted: checkpoint every 3 steps, stop after step 5 (last checkpoint: step 3)
    part_cfg = quiet_cfg(**(cfg.to_dict() | dict(checkpoint_every=3, out_dir=str(tmp_path))))
    train(tiny_gpt(seed=5), data, data, part_cfg, callback=lambda s, _: s == 5)
    resumed = tiny_gpt(seed=99)  # different init: everything must come from the checkpoint
    h_res = train(resumed, data, data, part_cfg, resume_from=tmp_path)

    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    assert h_res["step"] == h_full["step"]
    assert h_res["train_loss"] == pytest.approx(h_full["train_loss"], abs=1e-6)
    assert h_res["val_loss"] == pytest.approx(h_full["val_loss"], abs=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(weight_decay=0.0), "train.weight_decay: checkpoint 0.1, this run 0.0"),
        (dict(batch_size=8), "train.batch_size: checkpoint 4, this run 8"),
        (dict(seed=3), "train.seed: checkpoint 0, this run 3"),
        (dict(betas=(0.9, 0.99)), "train.betas"),
    ],
)
def test_resume_refuses_a_different_run(tmp_path, change, message):
    # Without the check, weight_decay and betas came silently from the checkpoint's
    # optimiser state and a new batch_size or seed drew other batches.
    data = np.random.default_rng(3).integers(0, 32, 2000).astype(np.uint16)
    cfg = quiet_cfg(steps=3, weight_decay=0.1, out_dir=str(tmp_path))
    train(tiny_gpt(seed=5), data, None, cfg)
    changed = quiet_cfg(**(cfg.to_dict() | dict(steps=5) | change))
    with pytest.raises(ValueError, match="cannot resume") as err:
        train(tiny_gpt(seed=5), data, None, changed, resume_from=tmp_path)
    assert message in str(err.value) and "init_from" in str(err.value)


def test_resume_refuses_a_different_model(tmp_path):
    data = np.random.default_rng(3).integers(0, 32, 2000).astype(np.uint16)
    cfg = quiet_cfg(steps=3, out_dir=str(tmp_path))
    train(tiny_gpt(seed=5), data, None, cfg)
    wider = tiny_gpt(seed=5, d_mlp=64)  # default 4 * 32 = 128
    with pytest.raises(ValueError, match="model.d_mlp: checkpoint 128, this run 64"):
        train(wider, data, None, quiet_cfg(**(cfg.to_dict() | dict(steps=5))), resume_from=tmp_path)


def test_train_config_validation():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp8")
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict(TrainConfig(steps=7).to_dict()) == TrainConfig(steps=7)


def test_bf16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="bf16"):
        train(tiny_gpt(), np.arange(100) % 32, None, quiet_cfg(steps=1, dtype="bf16"))


def test_ddp_batch_must_split_evenly(monkeypatch):
    from decoding_gpt import training

    monkeypatch.setattr(training, "dist_info", lambda: training.DistInfo(0, 3, 0))
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        train(tiny_gpt(), np.arange(100) % 32, None, quiet_cfg(steps=1, batch_size=4))


# --------------------------------------------------------------------------- CLI


def test_overrides_parse_toml_values():
    config = apply_overrides({}, ["train.steps=20", "train.lr=1e-3", "data.kind=random"])
    assert config == {"train": {"steps": 20, "lr": 1e-3}, "data": {"kind": "random"}}
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        apply_overrides({}, ["steps=20"])


def test_cli_rejects_token_ids_outside_the_vocabulary(tmp_path):
    np.save(tmp_path / "tokens.npy", np.arange(500, dtype=np.uint16))
    # the first 90 % (ids 0..449) is the train split: already out of range
    with pytest.raises(
        SystemExit, match=r"train data holds token ids in \[0, 449\] but model.d_vocab = 64"
    ):
        main(
            [str(TINY_CONFIG), "--set", f'data.path="{tmp_path / "tokens.npy"}"']
            + ["--out", str(tmp_path / "run")]
        )


def test_cli_trains_and_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = os.environ | {"TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "decoding_gpt.tools.train", str(TINY_CONFIG)]
    cmd += ["--set", "train.steps=20", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout and "val loss" in proc.stdout
    model, config, metrics = load_checkpoint(out)
    assert isinstance(config, GPTConfig) and metrics["step"][-1] == 20
    assert metrics == read_metrics(out)
    # the reported val loss is the loss of the saved weights on the config's val data
    data = tomllib.loads(TINY_CONFIG.read_text())["data"]
    val = load_data(data, n_ctx=config.n_ctx, d_vocab=config.d_vocab, seed=0).val
    cfg = TrainConfig.from_dict(read_config(out)["train"])
    loss = evaluate(model, val, batch_size=cfg.batch_size, n_batches=cfg.eval_batches, seed=0)
    assert loss == pytest.approx(metrics["val_loss"][-1], abs=1e-5)
    assert metrics["val_step"][-1] == 20


def test_ranks_split_the_global_batch_exactly_once():
    from decoding_gpt.training import DistInfo, _local_rows

    rows = torch.arange(12)
    parts = [rows[_local_rows(12, DistInfo(r, 3, r))] for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert torch.equal(torch.cat(parts), rows)


# a few 4-row steps of configs/tiny-smoke.toml on 64 sequences, no evaluation
SMALL_RUN = [
    "--set",
    "data.n_seqs=64",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.eval_every=0",
]


def test_cli_resume_continues_a_finished_run_to_more_steps(tmp_path):
    small = SMALL_RUN
    out = ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match="no resumable checkpoint"):
        main([str(TINY_CONFIG), *small, *out, "--resume"])
    main([str(TINY_CONFIG), *small, "--set", "train.steps=3", *out])
    main([str(TINY_CONFIG), *small, "--set", "train.steps=5", *out, "--resume"])
    metrics = read_metrics(tmp_path / "run")
    assert metrics["step"] == [3, 5]  # log_every=10: only the last step of each run
    assert metrics["tokens_seen"] == [3 * 4 * 32, 5 * 4 * 32]


def test_next_token_loss_mask_averages_only_the_marked_targets():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 9, generator=g)
    tokens = torch.randint(0, 9, (2, 6), generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 3], mask[1, 1], mask[1, 5], mask[0, 0] = True, True, True, True  # (0, 0): no target
    expected = F.cross_entropy(
        torch.stack([logits[0, 2], logits[1, 0], logits[1, 4]]), tokens[[0, 1, 1], [3, 1, 5]]
    )
    assert torch.allclose(next_token_loss(logits, tokens, mask), expected, atol=1e-6)
    with pytest.raises(ValueError, match="marks no target"):
        next_token_loss(
            logits, tokens, torch.zeros(2, 6, dtype=torch.bool).index_fill(1, torch.tensor(0), True)
        )
    with pytest.raises(ValueError, match="must match tokens"):
        next_token_loss(logits, tokens, mask[:, :5])


def test_loss_on_repeats_trains_only_on_second_copies(tmp_path):
    section = {"kind": "random", "n_seqs": 16, "repeat_fraction": 1.0}
    section |= {"min_span": 4, "loss_on": "repeats"}
    data = load_data(section, n_ctx=32, d_vocab=64, seed=0)
    assert data.loss_mask is not None and data.loss_mask.shape == data.train.shape
    assert data.loss_mask.any(axis=1).all()
    with pytest.raises(SystemExit, match="needs repeat_fraction > 0"):
        load_data({"kind": "random", "loss_on": "repeats"}, n_ctx=32, d_vocab=64, seed=0)
    with pytest.raises(SystemExit, match="loss_on must be"):
        load_data(section | {"loss_on": "some"}, n_ctx=32, d_vocab=64, seed=0)
    # the trainer's logged loss is next_token_loss on its first batch with that batch's mask
    model, cfg = tiny_gpt(d_vocab=64, n_ctx=32), quiet_cfg(steps=1, batch_size=4)
    index = _window_index(torch.Size(data.train.shape), 4, 32, _step_generator(cfg.seed, 0))
    tokens = torch.as_tensor(data.train.astype(np.int64))[index]
    with torch.no_grad():
        masked = next_token_loss(
            model(tokens), tokens, torch.as_tensor(data.loss_mask)[index]
        ).item()
        unmasked = next_token_loss(model(tokens), tokens).item()
    history = train(model, data.train, None, cfg, loss_mask=data.loss_mask)
    assert history["train_loss"][0] == pytest.approx(masked, abs=1e-5)
    assert abs(masked - unmasked) > 1e-4  # the check could tell the two apart
    with pytest.raises(ValueError, match="must match the training data"):
        train(tiny_gpt(d_vocab=64, n_ctx=32), data.train, None, quiet_cfg(steps=1),
              loss_mask=data.loss_mask[:, :5])  # fmt: skip


def test_cli_init_from_starts_at_another_runs_weights(tmp_path):
    small = SMALL_RUN
    main([str(TINY_CONFIG), *small, "--set", "train.steps=2", "--out", str(tmp_path / "a")])
    start, _, _ = load_checkpoint(tmp_path / "a")
    # lr ~ 0: the second run ends where it started, at the first run's weights
    tiny_lr = ["--set", "train.lr=1e-12", "--set", "train.min_lr=0.0", "--set", "train.steps=1"]
    init = ["--set", f'train.init_from="{tmp_path / "a"}"']
    main([str(TINY_CONFIG), *small, *tiny_lr, *init, "--out", str(tmp_path / "b")])
    after, _, _ = load_checkpoint(tmp_path / "b")
    for (name, p), q in zip(start.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    with pytest.raises(SystemExit, match="holds a model with config"):
        main(
            [
                str(TINY_CONFIG),
                *small,
                *init,
                "--set",
                "model.d_model=16",
                "--out",
                str(tmp_path / "c"),
            ]
        )
    with pytest.raises(SystemExit, match="train.init_from"):
        main([str(TINY_CONFIG), *small, "--set", f'train.init_from="{tmp_path / "none"}"',
              "--out", str(tmp_path / "d")])  # fmt: skip


def test_place_heads_keeps_the_function_and_puts_heads_where_asked():
    source = tiny_gpt(seed=1, n_heads=2, d_head=8)
    target = tiny_gpt(seed=2, n_heads=4, d_head=8)
    place_heads(source, target, [3, 1])
    tokens = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        assert torch.allclose(source(tokens), target(tokens), atol=1e-5)
    for layer in range(2):
        old, new = source.blocks[layer].attn, target.blocks[layer].attn
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            assert torch.equal(getattr(new, name)[[3, 1]], getattr(old, name)), name
        assert torch.equal(new.W_O[[0, 2]], torch.zeros_like(new.W_O[[0, 2]]))
        assert new.W_Q[[0, 2]].abs().sum() > 0  # fresh heads keep their random init
    assert not torch.allclose(source(tokens), tiny_gpt(seed=2, n_heads=4, d_head=8)(tokens))


@pytest.mark.parametrize(
    "heads, target_kw, message",
    [
        ([0], dict(n_heads=4, d_head=8), "must name 2 distinct heads"),
        ([1, 1], dict(n_heads=4, d_head=8), "must name 2 distinct heads"),
        ([0, 4], dict(n_heads=4, d_head=8), r"heads are 0\.\.3"),
        ([0, 1], dict(n_heads=4, d_head=16), "only n_heads may differ"),
    ],
)
def test_place_heads_rejects_what_it_cannot_place(heads, target_kw, message):
    with pytest.raises(ValueError, match=message):
        place_heads(tiny_gpt(n_heads=2, d_head=8), tiny_gpt(**target_kw), heads)


def test_cli_init_heads_grows_a_checkpoint_with_fewer_heads(tmp_path):
    main([str(TINY_CONFIG), *SMALL_RUN, "--set", "train.steps=2", "--out", str(tmp_path / "a")])
    start, _, _ = load_checkpoint(tmp_path / "a")  # 2 heads per layer
    tiny_lr = ["--set", "train.lr=1e-12", "--set", "train.min_lr=0.0", "--set", "train.steps=1"]
    grow = ["--set", "model.n_heads=4", "--set", "model.d_head=16"]
    init = ["--set", f'train.init_from="{tmp_path / "a"}"', "--set", "train.init_heads=[2, 0]"]
    main([str(TINY_CONFIG), *SMALL_RUN, *tiny_lr, *grow, *init, "--out", str(tmp_path / "b")])
    grown, cfg, _ = load_checkpoint(tmp_path / "b")
    assert cfg.n_heads == 4 and read_config(tmp_path / "b")["train"]["init_heads"] == [2, 0]
    assert torch.allclose(grown.blocks[1].attn.W_Q[[2, 0]], start.blocks[1].attn.W_Q, atol=1e-6)
    tokens = torch.randint(0, 64, (2, 32))
    with torch.no_grad():
        assert torch.allclose(grown(tokens), start(tokens), atol=1e-4)
    with pytest.raises(SystemExit, match="must name 2 distinct heads"):
        bad = ["--set", f'train.init_from="{tmp_path / "a"}"', "--set", "train.init_heads=[1]"]
        main([str(TINY_CONFIG), *SMALL_RUN, *grow, *bad, "--out", str(tmp_path / "c")])


def test_cli_snapshots_keep_the_weights_at_the_chosen_steps(tmp_path):
    out = ["--out", str(tmp_path / "run")]
    snaps = ["--set", "snapshots.steps=[0, 2, 5]"]
    main([str(TINY_CONFIG), *SMALL_RUN, "--set", "train.steps=5", *snaps, *out])
    taken = read_snapshots(tmp_path / "run" / SNAPSHOTS_FILE)
    assert sorted(taken) == [0, 2, 5]
    model, _, _ = load_checkpoint(tmp_path / "run")
    for name, value in model.state_dict().items():  # the last one is the final model
        torch.testing.assert_close(taken[5][name], value.half().float())
    assert not torch.equal(taken[0]["embed.W_E"], taken[5]["embed.W_E"])
    # a resumed run keeps the snapshots it had and adds the new ones
    more = ["--set", "snapshots.steps=[0, 2, 5, 7]", "--set", "train.steps=7"]
    main([str(TINY_CONFIG), *SMALL_RUN, *more, *out, "--resume"])
    again = read_snapshots(tmp_path / "run" / SNAPSHOTS_FILE)
    assert sorted(again) == [0, 2, 5, 7]
    torch.testing.assert_close(again[2]["embed.W_E"], taken[2]["embed.W_E"])
    with pytest.raises(SystemExit, match="outside 0..train.steps=5"):
        main([str(TINY_CONFIG), *SMALL_RUN, "--set", "train.steps=5", "--set",
              "snapshots.steps=[9]", *out])  # fmt: skip


def test_the_stories_4l_chants_experiment_trains_in_two_stages(tmp_path, monkeypatch):
    """configs/experiments: stage 1 trains on named-chant-stories with snapshots, and the
    anneal starts from its weights (a few steps on a few stories)."""
    monkeypatch.setenv("DGPT_CACHE", str(tmp_path / "cache"))
    experiments = REPO / "configs" / "experiments"
    tiny = ["--set", "data.n_tokens=20000", "--set", "data.val_n_tokens=5000"]
    tiny += ["--set", "train.batch_size=2", "--set", "train.eval_every=0", "--set", "train.steps=2"]
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    stage1 = str(experiments / "stories-4l-chants.toml")
    main([stage1, *tiny, "--set", "snapshots.steps=[0, 2]", "--out", str(first)])
    anneal = str(experiments / "stories-4l-chants-anneal.toml")
    main([anneal, *tiny, "--set", f'train.init_from="{first}"', "--out", str(second)])
    start, _, _ = load_checkpoint(first)
    end, _, _ = load_checkpoint(second)
    assert (first / "snapshots.safetensors").is_file()
    # two warmup steps at lr <= 3e-4 / 50 move no weight by 1e-3; a fresh init differs by ~0.02
    for (name, a), b in zip(start.state_dict().items(), end.state_dict().values(), strict=True):
        assert (a - b).abs().max() < 1e-3, name


RUN_CONFIGS = sorted([*(REPO / "configs").rglob("*.toml"), *PRETRAINED_CONFIGS.glob("*.toml")])


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_corpus_configs_size_the_vocabulary_to_their_tokenizer(path):
    """A config training on a named corpus has one embedding row per tokenizer id: more
    rows stand for ids the tokenizer never produces, fewer fail on the first batch."""
    from decoding_gpt.data import get_tokenizer
    from decoding_gpt.data.packing import STORY_CORPORA

    config = load_config(path)
    corpus = config.get("data", {}).get("corpus")
    if corpus is None:
        pytest.skip("no named corpus")
    tokenizer = get_tokenizer("stories" if corpus in STORY_CORPORA else corpus)
    assert config["model"]["d_vocab"] == tokenizer.get_vocab_size()
