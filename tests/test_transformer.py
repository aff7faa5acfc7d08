"""The GPT model: config, exact parameter count, hook names, causality, loss, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.transformer import GPT, MLP, GPTConfig, LayerNorm, next_token_loss

TINY = dict(d_vocab=61, n_ctx=16, d_model=32, n_layers=2, n_heads=4)
VARIANTS = [
    {},
    {"attn_only": True},
    {"normalization_type": None},
    {"positional_embedding_type": "rotary"},
    {"positional_embedding_type": "sinusoidal"},
    {"positional_embedding_type": "none", "d_mlp": 48, "d_head": 6},
]


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides}))


def perturbed(**overrides) -> GPT:
    """A tiny model with every parameter (biases, LN gains too) away from its init."""
    model = tiny(init_range=0.2, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def tokens(batch=2, pos=12, vocab=TINY["d_vocab"], seed=1):
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- config
def test_config_defaults_and_round_trip():
    cfg = GPTConfig(**TINY)
    assert cfg.d_head == 8 and cfg.d_mlp == 128
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig keys.*'n_embd'"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_embd": 32})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"n_heads": 5}, "divisible"),
        ({"n_layers": 0}, "n_layers"),
        ({"act_fn": "swish"}, "act_fn"),
        ({"normalization_type": "RMS"}, "normalization_type"),
        ({"positional_embedding_type": "alibi"}, "positional_embedding_type"),
        ({"positional_embedding_type": "rotary", "d_head": 5}, "even"),
    ],
)
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY, **bad})


@pytest.mark.parametrize("overrides", VARIANTS)
def test_n_params_is_exact(overrides):
    model = tiny(**overrides)
    assert model.cfg.n_params == sum(p.numel() for p in model.parameters())


def test_init_scale_follows_init_range():
    model = tiny(init_range=0.05, d_model=64, d_vocab=500)
    assert model.embed.W_E.std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.all(model.blocks[0].attn.b_Q == 0) and torch.all(model.blocks[0].ln1.w == 1)


# --------------------------------------------------------------------------- modules
def test_layernorm_matches_torch_with_and_without_hooks():
    ln = LayerNorm(8)
    with torch.no_grad():
        ln.w.normal_(), ln.b.normal_()
    x = 3 * torch.randn(2, 5, 8) + 1
    expected = F.layer_norm(x, (8,), ln.w, ln.b, 1e-5)
    torch.testing.assert_close(ln(x), expected)
    ln.hook_normalized.add_hook(lambda act, hook: None)  # forces the written-out path
    torch.testing.assert_close(ln(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act_fn", ["gelu", "gelu_new", "relu"])
def test_mlp_activations_match_closed_forms(act_fn):
    mlp = MLP(GPTConfig(**TINY, act_fn=act_fn, init_range=0.3))
    x = torch.randn(2, 3, 32)
    pre = x @ mlp.W_in + mlp.b_in
    post = {
        "gelu": pre * 0.5 * (1 + torch.erf(pre / math.sqrt(2))),
        "gelu_new": 0.5
        * pre
        * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3))),
        "relu": pre.clamp(min=0),
    }[act_fn]
    torch.testing.assert_close(mlp(x), post @ mlp.W_out + mlp.b_out, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- hooks
EXPECTED_HOOKS = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
EXPECTED_HOOKS += [
    f"blocks.{layer}.{name}"
    for layer in range(2)
    for name in (
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
        "ln1.hook_scale",
        "ln1.hook_normalized",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_attn_scores",
        "attn.hook_pattern",
        "attn.hook_z",
        "mlp.hook_pre",
        "mlp.hook_post",
    )  # fmt: skip
]


def test_run_with_cache_has_every_transformer_lens_hook_name():
    model, toks = perturbed(), tokens()
    logits, cache = model.run_with_cache(toks)
    assert set(EXPECTED_HOOKS) <= set(cache.keys())
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, 4, 12, 12)
    assert cache["blocks.1.attn.hook_z"].shape == (2, 12, 4, 8)
    assert cache["blocks.0.mlp.hook_post"].shape == (2, 12, 128)
    assert cache["hook_pos_embed"].shape == cache["hook_embed"].shape == (2, 12, 32)
    # the cached run took the written-out paths; same logits as the fast, hook-free run
    torch.testing.assert_close(logits, model(toks), atol=1e-5, rtol=1e-5)
    # the residual stream decomposes: resid_post = resid_pre + attn_out + mlp_out
    c = cache
    torch.testing.assert_close(
        c["blocks.0.hook_resid_post"],
        c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"] + c["blocks.0.hook_mlp_out"],
    )


def test_attn_only_model_has_no_mlp_hooks():
    _, cache = tiny(attn_only=True).run_with_cache(tokens())
    assert "blocks.0.hook_attn_out" in cache and "blocks.0.hook_resid_mid" not in cache
    assert not any("mlp" in name for name in cache)


def test_run_with_hooks_changes_the_computation():
    model, toks = perturbed(), tokens()

    def zero(act, hook):
        return torch.zeros_like(act)

    logits = model.run_with_hooks(toks, fwd_hooks=[("ln_final.hook_normalized", zero)])
    # with the final normalised stream zeroed, logits are w * 0 + b then W_U: constant rows
    expected = model.ln_final.b @ model.unembed.W_U + model.unembed.b_U
    torch.testing.assert_close(logits, expected.expand_as(logits))
    assert not model.ln_final.hook_normalized.fwd_hooks, "hooks are removed afterwards"


# --------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("overrides", VARIANTS)
def test_changing_token_t_leaves_earlier_logits_unchanged(overrides):
    model, toks, t = perturbed(**overrides), tokens(), 7
    changed = toks.clone()
    changed[:, t] = (changed[:, t] + 1) % TINY["d_vocab"]
    before, after = model(toks), model(changed)
    torch.testing.assert_close(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_initial_loss_is_about_log_vocab():
    model = tiny(d_vocab=1000)
    loss = model(tokens(batch=8, pos=16, vocab=1000), return_type="loss").item()
    assert abs(loss - math.log(1000)) < 0.05


def test_loss_is_shifted_along_the_sequence_axis():
    model, toks = perturbed(), tokens(batch=3)
    logits, loss = model(toks, return_type="both")
    seq_shift = F.cross_entropy(logits[:, :-1].reshape(-1, 61), toks[:, 1:].reshape(-1))
    batch_shift = F.cross_entropy(logits[:-1].reshape(-1, 61), toks[1:].reshape(-1))
    torch.testing.assert_close(loss, seq_shift)
    assert not torch.isclose(loss, batch_shift)
    assert model(toks, return_type=None) is None
    with pytest.raises(ValueError, match="at least 2 positions"):
        next_token_loss(logits[:, :1], toks[:, :1])


def test_overfits_a_short_sequence():
    model = tiny(n_layers=1, d_model=32)
    seq = tokens(batch=1, pos=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        loss = model(seq, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after 150 steps"


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 17, dtype=torch.long), "exceeds n_ctx=16"),
        (torch.zeros(5, dtype=torch.long), r"\[batch, pos\]"),
        (torch.zeros(2, 5), "integer tensor.*got dtype torch.float32"),
        (torch.zeros(2, 5, dtype=torch.bool), "integer tensor.*got dtype torch.bool"),
        (torch.zeros(2, 5, dtype=torch.complex64), "integer tensor.*got dtype torch.complex64"),
        (torch.full((1, 4), 61), r"\[0, 61\)"),
    ],
)
def test_bad_input_raises_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny()(bad)


# --------------------------------------------------------------------------- fast path
def _force_written_out(model: GPT) -> None:
    """A no-op hook on every LayerNorm scale and attention pattern: the fused kernels
    (``F.layer_norm``, ``F.scaled_dot_product_attention``) are then skipped."""
    for name, hook in model.hook_dict.items():
        if name.endswith(("hook_scale", "attn.hook_pattern")):
            hook.add_hook(lambda act, hook: None)


def _logits_and_grads(model: GPT, toks: torch.Tensor) -> tuple[torch.Tensor, list]:
    model.zero_grad(set_to_none=True)
    logits, loss = model(toks, return_type="both")
    loss.backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_training_fast_path_equals_written_out_path(overrides):
    """Logits AND every gradient of a training step agree between the two paths."""
    model, toks = perturbed(**overrides), tokens()
    fast_logits, fast_grads = _logits_and_grads(model, toks)
    _force_written_out(model)
    slow_logits, slow_grads = _logits_and_grads(model, toks)
    model.reset_hooks()
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)
    pairs = zip(model.named_parameters(), fast_grads, slow_grads, strict=True)
    for (name, _), fast, slow in pairs:
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4, msg=name)


def test_logits_match_a_torch_functional_reference():
    """The whole forward rebuilt from ``torch.nn.functional`` on the model's own weights."""
    model, toks = perturbed(), tokens()
    cfg, pos = model.cfg, toks.shape[1]
    x = F.embedding(toks, model.embed.W_E) + model.pos_embed.W_pos[:pos]
    for block in model.blocks:
        a = block.attn
        h = F.layer_norm(x, (cfg.d_model,), block.ln1.w, block.ln1.b, cfg.layer_norm_eps)
        q, k, v = (
            (torch.einsum("bpm,hmd->bphd", h, W) + b).transpose(1, 2)
            for W, b in ((a.W_Q, a.b_Q), (a.W_K, a.b_K), (a.W_V, a.b_V))
        )
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [batch, head, pos, d]
        x = x + torch.einsum("bhpd,hdm->bpm", z, a.W_O) + a.b_O
        h = F.layer_norm(x, (cfg.d_model,), block.ln2.w, block.ln2.b, cfg.layer_norm_eps)
        m = block.mlp
        x = x + F.linear(F.gelu(F.linear(h, m.W_in.T, m.b_in)), m.W_out.T, m.b_out)
    x = F.layer_norm(x, (cfg.d_model,), model.ln_final.w, model.ln_final.b, cfg.layer_norm_eps)
    expected = F.linear(x, model.unembed.W_U.T, model.unembed.b_U)
    torch.testing.assert_close(model(toks), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_make_optimizer_steps_like_torch_reference_adamw(fused):
    """The trainer's AdamW against torch's plain for-loop AdamW with the same parameter
    groups, on the same batches: ``fused=False`` (``foreach``) gives bit-identical weights,
    the fused kernel (the default) the same weights up to float32 rounding."""
    from decoding_gpt.training import TrainConfig, make_optimizer

    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, fused=fused)
    models = [perturbed(), perturbed()]
    ours = make_optimizer(models[0], cfg)
    assert ours.defaults["fused"] is (True if fused else None)
    decay = [p for p in models[1].parameters() if p.dim() >= 2]
    no_decay = [p for p in models[1].parameters() if p.dim() < 2]
    reference = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2, betas=cfg.betas, foreach=False, fused=False,
    )  # fmt: skip
    for step in range(3):
        for model, opt in zip(models, (ours, reference), strict=True):
            model(tokens(seed=step), return_type="loss").backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if fused else {"atol": 0, "rtol": 0}
    pairs = zip(models[0].named_parameters(), models[1].parameters(), strict=True)
    for (name, p), q in pairs:
        if fused and name.endswith("b_K"):
            # softmax ignores a key bias (it adds q.b_K to a whole row of scores), so its
            # gradient is pure rounding noise, which Adam scales up to full-size steps.
            continue
        torch.testing.assert_close(p, q, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_tokens_run_on_a_cuda_model():
    """Ids built on the CPU are moved to the model's device, as HookedTransformer does:
    the CUDA model gives the CPU model's logits and loss (float32, no autocast)."""
    cpu_model = perturbed().eval()
    cuda_model = perturbed().eval().cuda()
    ids = tokens()
    with torch.no_grad():
        logits, loss = cuda_model(ids, return_type="both")
        expected, expected_loss = cpu_model(ids, return_type="both")
    assert logits.device.type == "cuda"
    torch.testing.assert_close(logits.cpu(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss.cpu(), expected_loss, rtol=1e-4, atol=1e-4)
