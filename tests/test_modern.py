"""The modern block against independent references: Hugging Face's LLaMA modules
(``LlamaRMSNorm``, ``LlamaMLP``, ``LlamaAttention`` with ``LlamaRotaryEmbedding``,
``LlamaDecoderLayer``) on the same weights, and ``F.rms_norm``.

Weights cross over as: ``W = linear.weight.T`` (HF stores ``[out, in]``), each head's query
and key columns permuted by ``halves_to_pairs`` (HF rotates the halves ``(i, i + d/2)``,
``apply_rotary`` adjacent pairs ``(2i, 2i + 1)``). Everything in float32; tolerance
``ATOL`` (absolute, outputs of order 1) with ``assert_close``'s default float32 ``rtol``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from decoding_gpt.attention import LayerKVCache, MultiHeadAttention, apply_rotary
from decoding_gpt.modern import (
    ModernBlock,
    ModernConfig,
    RMSNorm,
    SwiGLU,
    halves_to_pairs,
    swiglu_width,
)
from decoding_gpt.transformer import GPTConfig, TransformerBlock

ATOL = 1e-5
D_MODEL, N_HEADS, D_HEAD, D_MLP, BASE, EPS = 64, 4, 16, 176, 500.0, 1e-6


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS, rms_norm_eps=EPS, rope_theta=BASE,
        max_position_embeddings=64, attn_implementation="eager",
    )  # fmt: skip


def modern_config() -> ModernConfig:
    return ModernConfig(D_MODEL, N_HEADS, d_mlp=D_MLP, rotary_base=BASE, norm_eps=EPS)


def randomise(module: torch.nn.Module) -> None:
    """Random weights everywhere (norm gains too), so no copy can pass by being all ones."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


def position_embeddings(x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    positions = torch.arange(offset, offset + x.shape[1])[None].expand(x.shape[0], -1)
    return LlamaRotaryEmbedding(llama_config())(x, positions)


def causal_additive_mask(n: int) -> torch.Tensor:
    """``[1, 1, n, n]``: 0 on and below the diagonal, -inf above (HF's eager mask format)."""
    return torch.full((n, n), float("-inf")).triu(1)[None, None]


@torch.no_grad()
def load_llama_attention(attn: MultiHeadAttention, hf: LlamaAttention) -> None:
    h, d = attn.n_heads, attn.d_head
    perm = halves_to_pairs(d)

    def per_head(w: torch.Tensor) -> torch.Tensor:  # [h * d, d_model] -> [h, d_model, d]
        return w.unflatten(0, (h, d)).transpose(1, 2)

    attn.W_Q.copy_(per_head(hf.q_proj.weight)[..., perm])
    attn.W_K.copy_(per_head(hf.k_proj.weight)[..., perm])
    attn.W_V.copy_(per_head(hf.v_proj.weight))
    attn.W_O.copy_(hf.o_proj.weight.T.unflatten(0, (h, d)))  # [d_model, h d] -> [h, d, d_model]


@torch.no_grad()
def load_llama_mlp(mlp: SwiGLU, hf: LlamaMLP) -> None:
    mlp.W_gate.copy_(hf.gate_proj.weight.T)
    mlp.W_in.copy_(hf.up_proj.weight.T)
    mlp.W_out.copy_(hf.down_proj.weight.T)


def force_written_out(*hook_points: torch.nn.Module) -> None:
    """Attach a no-op hook: RMSNorm and attention then take their written-out paths."""
    for hook_point in hook_points:
        hook_point.register_forward_hook(lambda module, inputs, output: None)


# --------------------------------------------------------------------------- RMSNorm
@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "written_out"])
def test_rmsnorm_matches_hf_and_torch(hooked):
    norm, hf = RMSNorm(D_MODEL, EPS), LlamaRMSNorm(D_MODEL, eps=EPS)
    randomise(hf)
    with torch.no_grad():
        norm.w.copy_(hf.weight)
    if hooked:
        force_written_out(norm.hook_scale)
    x = torch.randn(2, 7, D_MODEL) * 3
    out = norm(x)
    torch.testing.assert_close(out, hf(x), atol=ATOL, rtol=1.3e-6)
    torch.testing.assert_close(out, F.rms_norm(x, (D_MODEL,), hf.weight, EPS), atol=ATOL, rtol=0)


def test_rmsnorm_hooks_and_no_centring():
    norm = RMSNorm(D_MODEL, EPS)
    seen = {}
    for name in ("hook_scale", "hook_normalized"):
        getattr(norm, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    x = torch.randn(2, 5, D_MODEL) + 4.0  # a large mean: LayerNorm would remove it
    norm(x)
    assert seen["hook_scale"].shape == (2, 5, 1)
    torch.testing.assert_close(seen["hook_scale"], (x.pow(2).mean(-1, keepdim=True) + EPS).sqrt())
    rms = seen["hook_normalized"].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(2, 5), atol=1e-5, rtol=0)
    # no centring: a constant vector keeps its direction (LayerNorm maps it to b = 0)
    constant = torch.full((1, 1, D_MODEL), 2.5)
    torch.testing.assert_close(norm(constant), torch.ones(1, 1, D_MODEL), atol=1e-6, rtol=0)
    assert list(dict(norm.named_parameters())) == ["w"], "RMSNorm has a gain and no bias"


# --------------------------------------------------------------------------- SwiGLU
def test_swiglu_matches_llama_mlp_and_hooks():
    hf, mlp = LlamaMLP(llama_config()), SwiGLU(D_MODEL, D_MLP)
    load_llama_mlp(mlp, hf)
    seen = {}
    for name in ("hook_pre", "hook_pre_linear", "hook_post"):
        getattr(mlp, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    x = torch.randn(2, 7, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), hf(x), atol=ATOL, rtol=1.3e-6)
        torch.testing.assert_close(seen["hook_pre"], hf.gate_proj(x))  # the gate, before silu
        torch.testing.assert_close(seen["hook_pre_linear"], hf.up_proj(x))
        torch.testing.assert_close(seen["hook_post"], F.silu(hf.gate_proj(x)) * hf.up_proj(x))
    assert sorted(dict(mlp.named_parameters())) == ["W_gate", "W_in", "W_out"]  # no biases


def test_swiglu_width_is_llamas():
    assert swiglu_width(4096, multiple_of=256) == 11008  # LLaMA-7B's intermediate_size
    assert swiglu_width(5120, multiple_of=256) == 13824  # LLaMA-13B
    assert swiglu_width(64) == 176  # int(8 * 64 / 3) = 170, rounded up to a multiple of 8
    assert ModernConfig(64, 4).d_mlp == 176
    cfg = ModernConfig(96, 4)  # 3 matrices at ~8/3 d_model ~ GPT's 2 at 4 d_model
    assert cfg.d_mlp is not None and abs(3 * cfg.d_mlp - 8 * 96) <= 3 * 8


# --------------------------------------------------------------------------- rotary
def test_rotary_pairs_equal_hf_halves_after_the_permutation():
    """HF rotates ``(x[i], x[i + d/2])``, we rotate ``(x[2i], x[2i+1])``, same angles."""
    perm = halves_to_pairs(D_HEAD)
    assert perm.tolist()[:6] == [0, 8, 1, 9, 2, 10]
    x = torch.randn(2, 9, N_HEADS, D_HEAD)  # [batch, pos, head, d_head], HF's layout
    cos, sin = position_embeddings(x, offset=3)
    hf_q, _ = apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=2)
    torch.testing.assert_close(apply_rotary(x[..., perm], BASE, offset=3), hf_q[..., perm])
    # without the permutation the conventions disagree
    assert not torch.allclose(apply_rotary(x, BASE, offset=3), hf_q, atol=1e-3)
    with pytest.raises(ValueError, match="even d_head"):
        halves_to_pairs(7)


# --------------------------------------------------------------------------- attention
@pytest.mark.parametrize("hooked", [False, True], ids=["sdpa", "written_out"])
def test_rotary_attention_matches_llama_attention(hooked):
    hf = LlamaAttention(llama_config(), layer_idx=0)
    block = ModernBlock(modern_config())
    load_llama_attention(block.attn, hf)
    if hooked:
        force_written_out(block.attn.hook_pattern)
    x = torch.randn(2, 11, D_MODEL)
    with torch.no_grad():
        expected, _ = hf(x, position_embeddings(x), causal_additive_mask(11))
        torch.testing.assert_close(block.attn(x), expected, atol=ATOL, rtol=1.3e-6)


def test_attention_biases_are_zero_frozen_and_stay_zero():
    block = ModernBlock(modern_config())
    biases = [block.attn.b_Q, block.attn.b_K, block.attn.b_V, block.attn.b_O]
    assert all(not b.requires_grad and not b.any() for b in biases)
    optimizer = torch.optim.AdamW(block.parameters(), lr=0.1, weight_decay=0.1)
    block(torch.randn(2, 6, D_MODEL)).pow(2).sum().backward()
    optimizer.step()
    assert all(b.grad is None and not b.any() for b in biases)
    assert block.attn.W_Q.grad is not None
    trainable = sum(p.numel() for p in block.parameters() if p.requires_grad)
    assert trainable == modern_config().n_params


# --------------------------------------------------------------------------- the block
@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "written_out"])
def test_block_matches_llama_decoder_layer(hooked):
    hf = LlamaDecoderLayer(llama_config(), layer_idx=0)
    randomise(hf)  # gains too; attention and MLP outputs of order 1, like the residual
    block = ModernBlock(modern_config())
    load_llama_attention(block.attn, hf.self_attn)
    load_llama_mlp(block.mlp, hf.mlp)
    with torch.no_grad():
        block.ln1.w.copy_(hf.input_layernorm.weight)
        block.ln2.w.copy_(hf.post_attention_layernorm.weight)
    if hooked:
        force_written_out(block.ln1.hook_scale, block.ln2.hook_scale, block.attn.hook_pattern)
    x = torch.randn(2, 11, D_MODEL)
    with torch.no_grad():
        expected = hf(x, causal_additive_mask(11), position_embeddings=position_embeddings(x))
        torch.testing.assert_close(block(x), expected, atol=ATOL, rtol=1.3e-6)
        # with a KV cache: positions 0..6, then 7..10 at the right rotary offset
        cache = LayerKVCache()
        pieces = [block(x[:, :7], cache), block(x[:, 7:], cache)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=ATOL, rtol=1.3e-6)


def test_block_hook_names_are_gpt_blocks_plus_the_gate():
    def hook_names(module: torch.nn.Module) -> set[str]:
        return {name for name, m in module.named_modules() if name.split(".")[-1][:5] == "hook_"}

    gpt_block = TransformerBlock(GPTConfig(d_vocab=10, n_ctx=8, d_model=D_MODEL, n_layers=1,
                                           n_heads=N_HEADS))  # fmt: skip
    assert hook_names(ModernBlock(modern_config())) == hook_names(gpt_block) | {
        "mlp.hook_pre_linear"
    }
    block, seen = ModernBlock(modern_config()), {}
    for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out"):
        getattr(block, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    out = block(torch.randn(1, 5, D_MODEL))
    torch.testing.assert_close(
        seen["hook_resid_mid"], seen["hook_resid_pre"] + seen["hook_attn_out"]
    )
    torch.testing.assert_close(out, seen["hook_resid_mid"] + seen["hook_mlp_out"])


# --------------------------------------------------------------------------- bad input
def test_wrong_widths_and_bad_configs_raise_clear_errors():
    cfg = modern_config()
    x = torch.randn(2, 5, D_MODEL + 1)
    for module, who in [
        (RMSNorm(D_MODEL), "RMSNorm"),
        (SwiGLU(D_MODEL, D_MLP), "SwiGLU"),
        (ModernBlock(cfg), "ModernBlock"),
    ]:
        with pytest.raises(ValueError, match=rf"{who} expects inputs \[\.\.\., d_model=64\]"):
            module(x)
    with pytest.raises(ValueError, match="not divisible"):
        ModernConfig(64, 5)
    with pytest.raises(ValueError, match="even d_head"):
        ModernConfig(60, 4)  # d_head 15
    with pytest.raises(ValueError, match="positive"):
        ModernConfig(0, 4)
    with pytest.raises(ValueError, match="d_mlp"):
        ModernConfig(64, 4, d_mlp=0)
