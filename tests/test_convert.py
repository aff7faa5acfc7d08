"""Our GPT against TransformerLens's native bridge and HF GPT-2 on copied weights."""

import pytest
import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformers import GPT2Config, GPT2LMHeadModel

from decoding_gpt.convert import (
    from_hf_gpt2,
    from_transformer_lens,
    to_hf_gpt2,
    to_transformer_lens,
)
from decoding_gpt.transformer import GPT, GPTConfig

ATOL = 1e-4
TINY = dict(d_vocab=53, n_ctx=16, d_model=32, n_layers=2, n_heads=4)


def perturbed(**overrides) -> GPT:
    """Random weights everywhere (LayerNorm gains and all biases too), so a swapped or
    transposed weight cannot go unnoticed."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "init_range": 0.2, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def toks():
    return torch.randint(0, TINY["d_vocab"], (2, 12), generator=torch.Generator().manual_seed(5))


# --------------------------------------------------------------------------- TransformerLens
@pytest.mark.parametrize(
    "overrides",
    [
        {"act_fn": "gelu_new"},
        {"positional_embedding_type": "rotary", "act_fn": "relu"},
        {"attn_only": True, "normalization_type": None},
    ],
)
def test_transformer_lens_bridge_gives_identical_logits_and_loss(overrides, toks):
    model = perturbed(**overrides)
    bridge = to_transformer_lens(model)
    torch.testing.assert_close(bridge(toks), model(toks), atol=ATOL, rtol=0)
    tl_loss = bridge(toks, return_type="loss")
    torch.testing.assert_close(tl_loss, model(toks, return_type="loss"), atol=ATOL, rtol=0)


def test_attention_pattern_and_z_match_transformer_lens(toks):
    model = perturbed(positional_embedding_type="rotary")
    _, tl_cache = to_transformer_lens(model).run_with_cache(toks)
    _, cache = model.run_with_cache(toks)
    for layer in range(TINY["n_layers"]):
        for name in ("attn.hook_pattern", "attn.hook_z", "hook_resid_post", "hook_attn_out"):
            key = f"blocks.{layer}.{name}"
            assert cache[key].shape == tl_cache[key].shape, key
            torch.testing.assert_close(cache[key], tl_cache[key], atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos_type", ["standard", "rotary"])
def test_from_a_natively_initialised_bridge(pos_type, toks):
    tl_cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_layers=2, n_ctx=16, d_vocab=53, n_heads=4, act_fn="gelu",
        positional_embedding_type=pos_type, seed=3,
    )  # fmt: skip
    bridge = TransformerBridge.boot_native(tl_cfg)
    model = from_transformer_lens(bridge)
    assert model.cfg.positional_embedding_type == pos_type
    torch.testing.assert_close(model(toks), bridge(toks), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos_type", ["sinusoidal", "none"])
def test_positions_transformer_lens_cannot_represent_raise(pos_type):
    with pytest.raises(NotImplementedError, match="standard' and 'rotary"):
        to_transformer_lens(perturbed(positional_embedding_type=pos_type))


# --------------------------------------------------------------------------- HF GPT-2
def test_hf_gpt2_round_trip_gives_identical_logits(toks):
    model = perturbed(act_fn="gelu_new")
    with torch.no_grad():
        model.unembed.b_U.zero_()  # GPT-2's lm_head has no bias
    hf = to_hf_gpt2(model)
    assert isinstance(hf, GPT2LMHeadModel)
    torch.testing.assert_close(hf(toks).logits, model(toks), atol=ATOL, rtol=0)
    torch.testing.assert_close(from_hf_gpt2(hf)(toks), model(toks), atol=ATOL, rtol=0)


def test_from_a_freshly_initialised_tied_hf_gpt2(toks):
    torch.manual_seed(1)
    hf_cfg = GPT2Config(vocab_size=53, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    model = from_hf_gpt2(hf)
    assert model.cfg.act_fn == "gelu_new" and model.cfg.d_mlp == 128
    torch.testing.assert_close(model(toks), hf(toks).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"positional_embedding_type": "rotary"}, "learned positions"),
        ({"normalization_type": None}, "LayerNorm"),
        ({"attn_only": True}, "MLP"),
        ({"d_head": 4}, "n_heads \\* d_head"),
    ],
)
def test_hf_rejects_what_gpt2_cannot_represent(overrides, match):
    with pytest.raises(NotImplementedError, match=match):
        to_hf_gpt2(perturbed(**overrides))


def test_hf_rejects_a_nonzero_unembedding_bias():
    with pytest.raises(ValueError, match="b_U"):
        to_hf_gpt2(perturbed())
