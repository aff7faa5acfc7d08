"""Attention against independent references: ``F.scaled_dot_product_attention``,
closed-form masks, per-head loops, and the algebra of sinusoidal and rotary encodings."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes, build_alibi_tensor

from decoding_gpt.attention import (
    AttentionHead,
    LayerKVCache,
    MultiHeadAttention,
    alibi_attention,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    attention_pattern,
    causal_mask,
    causal_mask_bool,
    mask_future,
    ov_circuit,
    qk_circuit,
    scaled_dot_product_attention,
    sinusoidal_positional_encoding,
)
from decoding_gpt.transformer import GPTConfig, PosEmbed

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_causal_masks_allow_only_the_past_and_present():
    n = 5
    future = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)  # j > i
    assert torch.equal(causal_mask_bool(n), ~future)
    M = causal_mask(n)
    assert torch.all(M[~future] == 0), "M[i, j] must be 0 where j <= i (allowed)"
    assert torch.all(torch.isneginf(M[future])), "M[i, j] must be -inf where j > i (future)"
    # with a cache of 3 earlier keys, the 2 queries are the last two rows of the 5x5 mask
    assert torch.equal(causal_mask_bool(2, 5), causal_mask_bool(5)[-2:])
    with pytest.raises(ValueError, match="n_keys"):
        causal_mask_bool(4, 2)


def test_pattern_rows_are_distributions_with_no_weight_on_the_future():
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    pattern = attention_pattern(q, k)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 3, 6))
    assert torch.all(pattern.triu(diagonal=1) == 0)
    assert not torch.isnan(pattern).any()


@pytest.mark.parametrize("causal", [True, False])
def test_written_out_attention_matches_torch(causal):
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=causal), expected)


def test_attention_with_more_keys_than_queries_matches_the_last_rows():
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(
        scaled_dot_product_attention(q[..., -2:, :], k, v), full[..., -2:, :]
    )


def test_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 4))


def test_single_head_moves_values_from_key_positions():
    head = AttentionHead(d_model=16, d_head=4, init_range=0.5)
    x = torch.randn(2, 5, 16)
    q, k, v = x @ head.W_Q, x @ head.W_K, x @ head.W_V  # v = x_k W_V at every key position
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True) @ head.W_O
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(head.W_QK, head.W_Q @ head.W_K.T)
    torch.testing.assert_close(head.W_OV, head.W_V @ head.W_O)
    # changing an earlier token changes a later output: information moved from keys
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(head(x2)[:, 3], head(x)[:, 3])


def test_qk_and_ov_circuits_give_scores_and_outputs():
    mha = MultiHeadAttention(d_model=12, n_heads=3, d_head=4, init_range=0.5)
    W_QK, W_OV = qk_circuit(mha.W_Q, mha.W_K), ov_circuit(mha.W_V, mha.W_O)
    assert W_QK.shape == W_OV.shape == (3, 12, 12)
    x_i, x_j = torch.randn(12), torch.randn(12)
    for h in range(3):
        score = (x_i @ mha.W_Q[h]) @ (x_j @ mha.W_K[h])
        torch.testing.assert_close(x_i @ W_QK[h] @ x_j, score)
        torch.testing.assert_close(x_j @ W_OV[h], x_j @ mha.W_V[h] @ mha.W_O[h])


def _random_mha(rotary=False, **kw):
    mha = MultiHeadAttention(d_model=16, n_heads=4, d_head=6, rotary=rotary, init_range=0.3, **kw)
    with torch.no_grad():
        for p in (mha.b_Q, mha.b_K, mha.b_V, mha.b_O):
            p.normal_()
    return mha


def test_multihead_matches_a_per_head_loop_over_torch_attention():
    mha, x = _random_mha(), torch.randn(2, 7, 16)
    expected = mha.b_O.clone()
    for h in range(4):
        q, k, v = (x @ getattr(mha, f"W_{n}")[h] + getattr(mha, f"b_{n}")[h] for n in "QKV")
        expected = expected + F.scaled_dot_product_attention(q, k, v, is_causal=True) @ mha.W_O[h]
    torch.testing.assert_close(mha(x), expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("rotary", [False, True])
def test_fast_path_equals_written_out_path(rotary):
    mha, x = _random_mha(rotary=rotary), torch.randn(3, 9, 16)
    mha.use_fast_attention = True
    fast = mha(x)
    mha.use_fast_attention = False
    torch.testing.assert_close(fast, mha(x), atol=ATOL, rtol=1e-4)


def test_a_hook_on_the_pattern_forces_the_written_out_path():
    mha, x = _random_mha(use_fast_attention=True), torch.randn(2, 5, 16)
    seen = []
    mha.hook_pattern.register_forward_hook(lambda mod, inp, out: seen.append(out))
    mha(x)
    assert len(seen) == 1 and seen[0].shape == (2, 4, 5, 5)
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(2, 4, 5))


@pytest.mark.parametrize("rotary", [False, True])
def test_kv_cache_step_by_step_equals_full_sequence(rotary):
    mha, x = _random_mha(rotary=rotary), torch.randn(2, 6, 16)
    cache = LayerKVCache()
    first = mha(x[:, :4], kv_cache=cache)
    rest = [mha(x[:, t : t + 1], kv_cache=cache) for t in (4, 5)]
    assert cache.length == 6
    torch.testing.assert_close(torch.cat([first, *rest], 1), mha(x), atol=ATOL, rtol=1e-4)


def test_sinusoidal_encoding_closed_form_and_relative_shift():
    n_ctx, d = 32, 8
    pe = sinusoidal_positional_encoding(n_ctx, d)
    for p, i in [(0, 0), (3, 1), (17, 2), (31, 3)]:
        angle = p / 10000 ** (2 * i / d)
        assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    # PE[p + t] = PE[p] R_t for one fixed matrix R_t (all p): fit R_t, check the residual
    t = 5
    R = torch.linalg.lstsq(pe[:-t].double(), pe[t:].double()).solution
    torch.testing.assert_close(pe[:-t].double() @ R, pe[t:].double(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positional_encoding(4, 5)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8)  # [batch, pos=1, head, d_head]

    def score(p, s):
        return (apply_rotary(q, offset=p) * apply_rotary(k, offset=s)).sum(-1)

    torch.testing.assert_close(score(3, 1), score(10, 8))
    torch.testing.assert_close(score(0, 0), (q * k).sum(-1))  # position 0: no rotation
    assert not torch.allclose(score(3, 1), score(3, 2))  # but it does see the offset
    x = torch.randn(2, 5, 3, 8)
    torch.testing.assert_close(apply_rotary(x).norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_learned_positions_reject_positions_past_the_context():
    pos = PosEmbed(GPTConfig(d_vocab=5, n_ctx=4, d_model=4, n_layers=1, n_heads=1))
    assert pos(3, offset=1).shape == (3, 4)
    torch.testing.assert_close(pos(2, offset=2), pos.W_pos[2:4])
    with pytest.raises(ValueError, match="n_ctx"):
        pos(3, offset=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("n_q", "n_k"), [(5, 5), (2, 6)])
def test_mask_future_in_place_equals_adding_the_additive_mask(dtype, n_q, n_k):
    """The fast in-place masking of the pattern path gives exactly ``scores + M``,
    including float32 promotion of bf16 scores (the readable path's dtype)."""
    scores = torch.randn(2, 3, n_q, n_k).to(dtype)
    want = scores + causal_mask(n_q, n_k)
    got = mask_future(scores.clone())
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


# --------------------------------------------------------------------------- ALiBi
@pytest.mark.parametrize("n_heads", range(1, 17))
def test_alibi_slopes_match_bloom(n_heads):
    # Hugging Face's BLOOM implements the paper's rule, non-powers of two included.
    torch.testing.assert_close(
        alibi_slopes(n_heads).float(), _get_alibi_slopes(n_heads, torch.device("cpu"))
    )


def test_alibi_slopes_of_eight_heads_are_the_papers():
    assert alibi_slopes(8).tolist() == [1 / 2**h for h in range(1, 9)]
    with pytest.raises(ValueError, match="at least one head"):
        alibi_slopes(0)


def test_alibi_bias_is_a_distance_penalty_and_follows_a_cache():
    bias = alibi_bias(4, 6)
    i = torch.arange(6.0, dtype=torch.float64)
    expected = -alibi_slopes(4)[:, None, None] * (i[:, None] - i[None, :])
    torch.testing.assert_close(bias, expected)
    torch.testing.assert_close(alibi_bias(4, 2, 6), bias[:, -2:])  # the last two queries
    with pytest.raises(ValueError, match="n_keys"):
        alibi_bias(4, 5, 3)


def test_alibi_attention_matches_torch_with_a_float_mask():
    q, k, v = torch.randn(3, 2, 7, 8, 5, dtype=torch.float64)  # [batch, pos, heads, d_head]
    mask = alibi_bias(8, 7) + causal_mask(7).double()  # [heads, q, k]
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    ).transpose(1, 2)
    torch.testing.assert_close(alibi_attention(q, k, v), expected)


def test_alibi_attention_equals_blooms_key_position_form():
    # BLOOM adds m_h * j (the key's position) instead of -m_h (i - j): the two differ by
    # m_h * i, a constant along each softmax row, so the patterns agree.
    n_heads, n_pos = 4, 6
    q, k, v = torch.randn(3, 2, n_pos, n_heads, 8, dtype=torch.float64)
    bloom = build_alibi_tensor(torch.ones(2, n_pos), n_heads, torch.float64)  # [b*h, 1, k]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
    scores = scores + bloom.view(2, n_heads, 1, n_pos) + causal_mask(n_pos).double()
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    torch.testing.assert_close(alibi_attention(q, k, v), expected)
