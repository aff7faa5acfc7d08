"""Tests for decoding_gpt.lens on tiny TransformerLens bridges (random weights, offline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from decoding_gpt import lens


def _bridge(**kw) -> TransformerBridge:
    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=16, act_fn="gelu")
    cfg.update(kw)
    if not cfg.get("attn_only"):
        cfg.setdefault("d_mlp", 64)
    torch.manual_seed(0)
    model = TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))
    with torch.no_grad():  # non-trivial LayerNorm weights and biases everywhere
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TransformerBridge:
    return _bridge(normalization_type="LN")


@pytest.fixture(scope="module")
def run(model):
    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return tokens, logits, cache


def test_logit_lens_last_layer_equals_model_logits(model, run):
    _, logits, cache = run
    lens_logits, labels = lens.logit_lens(model, cache)
    assert labels == ["0_pre", "1_pre", "final_post"]
    torch.testing.assert_close(lens_logits[-1], logits, atol=1e-5, rtol=1e-5)
    # The old bug (no final LayerNorm) would NOT match: the test can tell the difference.
    no_ln = cache["blocks.1.hook_resid_post"] @ model.W_U + model.b_U
    assert (no_ln - logits).abs().max() > 1e-2


def test_logit_lens_intermediate_matches_bridge_modules(model, run):
    _, _, cache = run
    lens_logits, _ = lens.logit_lens(model, cache)
    x = cache["blocks.1.hook_resid_pre"]
    with torch.no_grad():
        reference = model.unembed(model.ln_final(x))  # TransformerLens's own modules
    torch.testing.assert_close(lens_logits[1], reference, atol=1e-5, rtol=1e-5)
    one_pos, _ = lens.logit_lens(model, cache, pos=-1)
    torch.testing.assert_close(one_pos[:, :, 0], lens_logits[:, :, -1])


def test_logit_lens_top_k_at_last_layer_is_model_top_k(model, run):
    tokens, logits, _ = run
    ids, probs, _ = lens.logit_lens_top_k(model, tokens, k=3, pos=-1, batch=1)
    ref = logits[1, -1].softmax(-1).topk(3)
    assert torch.equal(ids[-1], ref.indices)
    torch.testing.assert_close(probs[-1], ref.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("by", ["layer", "head", "neuron"])
def test_dla_sums_to_logit_difference(model, run, by):
    _, logits, cache = run
    answers = torch.tensor([[1, 2], [3, 4], [5, 6]])
    contrib, labels = lens.direct_logit_attribution(model, cache, answers, pos=-1, by=by)
    assert contrib.shape == (len(labels), 3)
    reference = logits[:, -1, answers[:, 0]].diagonal() - logits[:, -1, answers[:, 1]].diagonal()
    torch.testing.assert_close(contrib.sum(0), reference, atol=1e-4, rtol=1e-4)


def test_dla_heads_add_up_to_their_layer(model, run):
    _, _, cache = run
    answers = torch.tensor([[1, 2], [3, 4], [5, 6]])
    by_layer, layer_labels = lens.direct_logit_attribution(model, cache, answers, by="layer")
    by_head, head_labels = lens.direct_logit_attribution(model, cache, answers, by="head")
    heads_l1 = [i for i, lab in enumerate(head_labels) if lab.startswith("L1H") or lab == "L1_b_O"]
    torch.testing.assert_close(
        by_head[heads_l1].sum(0), by_layer[layer_labels.index("L1_attn_out")], atol=1e-5, rtol=1e-4
    )


def test_dla_without_layernorm_attn_only():
    model = _bridge(normalization_type=None, attn_only=True)
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    answers = torch.tensor([[0, 1], [2, 3]])
    contrib, labels = lens.direct_logit_attribution(model, cache, answers, by="head")
    assert not any("mlp" in lab for lab in labels)
    torch.testing.assert_close(
        contrib.sum(0), lens.logit_difference(logits, answers), atol=1e-4, rtol=1e-4
    )


def test_dla_rejects_bad_answers(model, run):
    _, _, cache = run
    with pytest.raises(ValueError, match=r"\[batch, 2\]"):
        lens.direct_logit_attribution(model, cache, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="by must be"):
        lens.direct_logit_attribution(model, cache, torch.tensor([[1, 2]] * 3), by="block")


def test_tuned_lens_starts_at_logit_lens_and_lowers_kl(model, run):
    tokens, _, cache = run
    untrained = lens.TunedLens(model)
    lens_logits, _ = lens.logit_lens(model, cache)
    torch.testing.assert_close(
        untrained(cache["blocks.1.hook_resid_pre"], 1), lens_logits[1], atol=1e-5, rtol=1e-5
    )
    trained, losses = lens.train_tuned_lens(model, [tokens], n_steps=40, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]
    kl_logit = lens.lens_kl(model, tokens)
    kl_tuned = lens.lens_kl(model, tokens, trained)
    assert torch.all(kl_tuned[:-1] < kl_logit[:-1])
    assert abs(float(kl_tuned[-1])) < 1e-5  # final layer: no translator, lens == model
    # KL computed independently with torch's definition sum p (log p - log q)
    p = F.log_softmax(run[1].flatten(0, 1), -1)
    q = F.log_softmax(lens_logits[0].flatten(0, 1), -1)
    ref = (p.exp() * (p - q)).sum(-1).mean()
    torch.testing.assert_close(kl_logit[0], ref, atol=1e-5, rtol=1e-4)


def test_works_on_our_gpt_too():
    """Duck typing: the same functions on decoding_gpt.transformer.GPT (TL hook names)."""
    transformer = pytest.importorskip("decoding_gpt.transformer")
    torch.manual_seed(0)
    cfg = transformer.GPTConfig(d_vocab=50, n_ctx=16, d_model=32, n_layers=2, n_heads=4, d_mlp=64)
    model = transformer.GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        tokens = torch.randint(0, 50, (2, 6))
        logits, cache = model.run_with_cache(tokens)
    lens_logits, _ = lens.logit_lens(model, cache)
    torch.testing.assert_close(lens_logits[-1], logits, atol=1e-5, rtol=1e-5)
    answers = torch.tensor([[1, 2], [3, 4]])
    contrib, _ = lens.direct_logit_attribution(model, cache, answers, by="head")
    torch.testing.assert_close(
        contrib.sum(0), lens.logit_difference(logits, answers), atol=1e-4, rtol=1e-4
    )


# ------------------------------------------------------------------- additions for lecture 10
def test_decompose_resid_matches_transformer_lens(model, run):
    _, _, cache = run
    stack, labels = lens.decompose_resid(model, cache)
    reference, ref_labels = cache.decompose_resid(return_labels=True)  # TransformerLens's own
    assert labels == ref_labels
    torch.testing.assert_close(stack, reference)
    torch.testing.assert_close(stack.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=0)


def test_decompose_resid_attn_only_without_positions():
    model = _bridge(attn_only=True, normalization_type=None, positional_embedding_type="rotary")
    tokens = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    stack, labels = lens.decompose_resid(model, cache)
    assert labels == ["embed", "0_attn_out", "1_attn_out"]
    torch.testing.assert_close(stack.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=0)


def test_kl_to_final_is_the_written_out_kl():
    gen = torch.Generator().manual_seed(3)
    final, other = torch.randn(5, 11, generator=gen), torch.randn(5, 11, generator=gen)
    p, q = final.softmax(-1), other.softmax(-1)
    written = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(lens.kl_to_final(final, other), written)
    assert lens.kl_to_final(final, final).abs() < 1e-6


def test_token_neighbours_brute_force():
    gen = torch.Generator().manual_seed(4)
    W_E = torch.randn(30, 8, generator=gen) + 3.0  # a large shared component, as trained rows
    ids, sims = lens.token_neighbours(W_E, 7, k=4)
    centred = W_E - W_E.mean(0)
    brute = sorted(
        (
            (F.cosine_similarity(centred[7], centred[j], dim=0).item(), j)
            for j in range(30)
            if j != 7
        ),
        reverse=True,
    )[:4]
    assert ids.tolist() == [j for _, j in brute]
    torch.testing.assert_close(sims, torch.tensor([s for s, _ in brute]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lens.token_neighbours(W_E, 30)
