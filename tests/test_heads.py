"""Tests for decoding_gpt.heads: closed forms, hand-built heads, TransformerLens references."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from decoding_gpt import heads

N_CTX, D_VOCAB = 16, 20
# Residual subspaces of the hand-built models (d_model = 96)
POS, TOK, PREV, OUT = slice(0, 16), slice(16, 36), slice(36, 56), slice(56, 76)


def _bridge(**kw) -> TransformerBridge:
    cfg = dict(n_layers=2, d_model=96, n_heads=3, d_head=32, d_vocab=D_VOCAB, n_ctx=N_CTX)
    cfg.update(kw)
    torch.manual_seed(0)
    return TransformerBridge.boot_native(TransformerBridgeConfig(**cfg)).eval()


def _set(model, name: str, value: torch.Tensor) -> None:
    model.load_state_dict({name: value}, strict=False)


def _set_head(model, layer: int, head: int, **w: torch.Tensor) -> None:
    """Write TransformerLens-shaped head weights (W_Q [d_model, d_head], W_O [d_head, d_model])."""
    sd = model.state_dict()
    dh = model.cfg.d_head
    rows = slice(head * dh, (head + 1) * dh)
    for key, value in w.items():
        name = f"blocks.{layer}.attn.{key[-1].lower()}.weight"
        weight = sd[name].clone()
        if key == "W_O":
            weight[:, rows] = value.T  # o(z) = z @ o.weight.T
        else:
            weight[rows, :] = value.T  # q(x) = x @ q.weight.T
        _set(model, name, weight)
    for b in "qkvo":
        _set(
            model,
            f"blocks.{layer}.attn.{b}.bias",
            torch.zeros_like(sd[f"blocks.{layer}.attn.{b}.bias"]),
        )
    for key, value in w.items():  # the bridge's TL-style view must show what we wrote
        torch.testing.assert_close(getattr(model.blocks[layer].attn, key)[head], value)


def _block(rows: slice, cols: slice, shape: tuple[int, int], scale: float = 1.0) -> torch.Tensor:
    """Matrix with ``scale * I`` in the block ``[rows, cols]`` (placed at the top-left of each)."""
    m = torch.zeros(shape)
    n = min(rows.stop - rows.start, cols.stop - cols.start)
    m[rows.start + torch.arange(n), cols.start + torch.arange(n)] = scale
    return m


def _zero_all_heads(model) -> None:
    for name, value in model.state_dict().items():
        if ".attn." in name:
            _set(model, name, torch.zeros_like(value))


def _hand_built_induction_model() -> TransformerBridge:
    """L0H0: previous-token head copying token identity into PREV; L1H0: induction head.

    Positions are one-hot in POS, tokens one-hot in TOK. L0H0 scores q_p . k_j = 100 [j = p-1];
    its OV copies TOK -> PREV. L1H0 scores q . k = 100 [PREV(k) = TOK(q)], i.e. it attends to
    the position after an earlier copy of the current token, and copies that token TOK -> OUT,
    which the unembedding reads.
    """
    model = _bridge(attn_only=True, normalization_type=None)
    d, dh = 96, 32
    _zero_all_heads(model)
    W_E = torch.zeros(D_VOCAB, d)
    W_E[torch.arange(D_VOCAB), TOK.start + torch.arange(D_VOCAB)] = 1
    W_pos = torch.zeros(N_CTX, d)
    W_pos[torch.arange(N_CTX), torch.arange(N_CTX)] = 1
    W_U = torch.zeros(d, D_VOCAB)
    W_U[OUT.start + torch.arange(D_VOCAB), torch.arange(D_VOCAB)] = 20
    _set(model, "embed.weight", W_E)
    _set(model, "pos_embed.weight", W_pos)
    _set(model, "unembed.weight", W_U.T)
    _set(model, "unembed.bias", torch.zeros(D_VOCAB))
    shift = torch.zeros(d, dh)  # key at position j holds one-hot(j + 1)
    shift[torch.arange(N_CTX - 1), torch.arange(1, N_CTX)] = 1
    _set_head(
        model,
        0,
        0,
        W_Q=_block(POS, slice(0, 16), (d, dh), 100.0),
        W_K=shift,
        W_V=_block(TOK, slice(0, 20), (d, dh)),
        W_O=_block(slice(0, 20), PREV, (dh, d)),
    )
    _set_head(
        model,
        1,
        0,
        W_Q=_block(TOK, slice(0, 20), (d, dh), 100.0),
        W_K=_block(PREV, slice(0, 20), (d, dh)),
        W_V=_block(TOK, slice(0, 20), (d, dh)),
        W_O=_block(slice(0, 20), OUT, (dh, d)),
    )
    return model


@pytest.fixture(scope="module")
def induction_model() -> TransformerBridge:
    return _hand_built_induction_model()


# ----------------------------------------------------------------- pattern scores, closed form


def _uniform_causal(batch: int, n_heads: int, n: int) -> torch.Tensor:
    p = torch.ones(n, n).tril()
    return (p / p.sum(-1, keepdim=True)).expand(batch, n_heads, n, n)


def test_pattern_scores_closed_form():
    n = 6
    uniform = _uniform_causal(2, 1, n)
    expected = torch.tensor([1 / (q + 1) for q in range(1, n)]).mean()
    torch.testing.assert_close(heads.previous_token_score(uniform)[0], expected)
    torch.testing.assert_close(heads.first_token_score(uniform)[0], expected)
    prev = torch.zeros(1, 1, n, n)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, n), torch.arange(n - 1)] = 1
    assert heads.previous_token_score(prev)[0] == pytest.approx(1.0)
    assert heads.first_token_score(prev)[0] == pytest.approx(1 / (n - 1))  # only q = 1 hits 0


def test_duplicate_and_induction_scores_on_ideal_patterns():
    tokens = torch.tensor([[7, 3, 9, 7, 3, 9]])
    dup = torch.zeros(1, 1, 6, 6)
    dup[0, 0, torch.arange(6), torch.tensor([0, 1, 2, 0, 1, 2])] = 1
    ind = torch.zeros(1, 1, 6, 6)
    ind[0, 0, torch.arange(6), torch.tensor([0, 1, 2, 1, 2, 3])] = 1
    assert heads.duplicate_token_score(dup, tokens)[0] == pytest.approx(1.0)
    assert heads.induction_score(ind, tokens)[0] == pytest.approx(1.0)
    assert heads.induction_score(dup, tokens)[0] == pytest.approx(0.0)
    assert heads.duplicate_token_score(ind, tokens)[0] == pytest.approx(0.0)


def test_pattern_score_rejects_bad_shapes():
    with pytest.raises(ValueError, match="pattern must be"):
        heads.previous_token_score(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="no query"):
        heads.duplicate_token_score(_uniform_causal(1, 1, 3), torch.tensor([[1, 2, 3]]))


# ----------------------------------------------------------------- hand-built heads


def test_hand_built_previous_token_head(induction_model):
    tokens = torch.randint(0, D_VOCAB, (4, N_CTX), generator=torch.Generator().manual_seed(0))
    scores = heads.head_scores(induction_model, tokens, "previous_token")
    assert scores[0, 0] > 0.99
    assert scores[0, 1:].max() < 0.5  # zeroed heads attend uniformly


def test_induction_score_hand_built_high_random_low(induction_model):
    result = heads.induction_score_on_repeated_tokens(induction_model, seq_len=7, batch=16, seed=0)
    assert result.scores.shape == (2, 3)
    # Random tokens from 20 repeat by chance; the head then (rightly) splits its attention
    # between all earlier matches, so the diagonal score is below 1 ...
    assert result.scores[1, 0] > 0.7
    assert result.loss_repeated_half < 1.0 < 2.0 < result.loss_first_half
    # Same definition via the general token-based score agrees on repeated random tokens.
    # ... while the token-based score counts every match and is higher.
    general = heads.head_scores(induction_model, result.tokens, "induction")
    assert general[1, 0] > 0.9
    random = heads.induction_score_on_repeated_tokens(_bridge(attn_only=True), 7, 16, seed=0)
    assert random.scores.max() < 0.3


def test_induction_loss_matches_cross_entropy(induction_model):
    result = heads.induction_score_on_repeated_tokens(induction_model, 5, 4, seed=3, prefix=0)
    tokens = result.tokens
    assert tokens.shape == (4, 11) and torch.all(tokens[:, 0] == 0)
    assert torch.equal(tokens[:, 1:6], tokens[:, 6:])
    with torch.no_grad():
        logits = induction_model(tokens)
    second = torch.nn.functional.cross_entropy(
        logits[:, 6:-1].flatten(0, 1), tokens[:, 7:].flatten()
    )
    assert result.loss_repeated_half == pytest.approx(float(second), rel=1e-5)
    with pytest.raises(ValueError, match="n_ctx"):
        heads.induction_score_on_repeated_tokens(induction_model, seq_len=9)


# ----------------------------------------------------------------- weights


def test_composition_score_closed_form():
    d = 8
    u = torch.randn(d)
    u = u / u.norm()
    P = torch.outer(u, u)
    assert float(heads.composition_score(P, P)) == pytest.approx(1.0, abs=1e-6)
    eye = torch.eye(d)
    assert float(heads.composition_score(eye, eye)) == pytest.approx(d**-0.5, abs=1e-6)
    A, B = torch.zeros(d, d), torch.zeros(d, d)
    A[:, :4], B[4:, :] = torch.randn(d, 4), torch.randn(4, d)  # A writes where B does not read
    assert float(heads.composition_score(A, B)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_transformer_lens(kind):
    model = _bridge(n_layers=3, d_model=32, n_heads=2, d_head=8, d_mlp=64)
    ours = heads.composition_scores(model, kind)
    reference = model.all_composition_scores(kind).scores
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    dense_b = {
        "Q": heads.qk_matrix(model, 2)[1],
        "K": heads.qk_matrix(model, 2)[1].T,
        "V": heads.ov_matrix(model, 2)[1],
    }[kind]
    dense = heads.composition_score(heads.ov_matrix(model, 0)[0], dense_b)
    torch.testing.assert_close(ours[0, 0, 2, 1], dense, atol=1e-5, rtol=1e-4)
    assert torch.all(ours[:, :, 0] == 0)  # nothing composes into layer 0


def test_k_composition_of_hand_built_induction_circuit(induction_model):
    k_comp = heads.composition_scores(induction_model, "K")
    # OV of L0H0 is the identity TOK -> PREV and L1H0 keys read PREV: like the composition of
    # two 20-dim identities, the score is 1/sqrt(20); its queries read TOK, so no Q-composition.
    assert float(k_comp[0, 0, 1, 0]) == pytest.approx(20**-0.5, rel=1e-4)
    assert float(heads.composition_scores(induction_model, "Q")[0, 0, 1, 0]) < 1e-6
    assert float(heads.composition_scores(induction_model, "V")[0, 0, 1, 0]) < 1e-6


def test_copying_score_plus_and_minus_one(induction_model):
    model = _bridge(attn_only=True, n_layers=1, normalization_type=None)
    W_E = model.W_E.detach().clone()
    _set(model, "unembed.weight", W_E)  # W_U = W_E^T, so W_E W_OV W_U = W_E W_OV W_E^T
    d, dh = 96, 32
    W_V = torch.randn(d, dh)
    _set_head(model, 0, 0, W_V=W_V, W_O=W_V.T.clone())  # W_OV = W_V W_V^T: PSD
    assert heads.copying_score(model, 0, 0) == pytest.approx(1.0, abs=1e-4)
    _set_head(model, 0, 0, W_V=W_V, W_O=-W_V.T)
    assert heads.copying_score(model, 0, 0) == pytest.approx(-1.0, abs=1e-4)
    assert heads.copying_scores(model).shape == (1, 3)
    assert heads.copying_score(induction_model, 1, 0) > 0.99  # TOK -> OUT -> same token's logit


def test_full_circuits_equal_dense_products(induction_model):
    model = _bridge(d_model=32, n_heads=2, d_head=8, d_mlp=64)
    W_E, W_U = model.W_E, model.W_U
    attn = model.blocks[1].attn
    ov = heads.full_ov_circuit(model, 1, 1)
    qk = heads.full_qk_circuit(model, 1, 1)
    assert ov.shape == (D_VOCAB, D_VOCAB)
    torch.testing.assert_close(ov.AB, W_E @ attn.W_V[1] @ attn.W_O[1] @ W_U, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        qk.AB, W_E @ attn.W_Q[1] @ attn.W_K[1].T @ W_E.T, atol=1e-5, rtol=1e-4
    )
    # Hand-built induction head copies: the attended token gets the highest logit.
    full = heads.full_ov_circuit(induction_model, 1, 0).AB
    assert torch.equal(full.argmax(-1), torch.arange(D_VOCAB))
