"""Activation collection (decoding_gpt.activations) against TransformerLens's own cache."""

from __future__ import annotations

import pytest
import torch

from decoding_gpt.activations import collect_activations

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model(tiny_bridge):
    return tiny_bridge


def _padded_batch(lengths: list[int], pad_to: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 100, (len(lengths), pad_to), generator=gen)
    mask = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        tokens[i, n:] = 0  # pad id
    return tokens, mask


def test_stored_activations_equal_run_with_cache(model):
    tokens, mask = _padded_batch([12, 7, 9], 12)
    got = collect_activations(model, tokens, HOOK, mask)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    ref = cache[HOOK]
    # the old bug stored zeros: the activations must be real, and equal the cache's
    assert got.acts.abs().sum() > 0
    assert (got.acts.norm(dim=-1) > 1e-3).all()
    torch.testing.assert_close(got.acts, ref[got.doc, got.pos])
    assert got.acts.shape == (int(mask.sum()) - 3, 64)  # minus one BOS per document


def test_padding_and_bos_excluded(model):
    lengths = [10, 4, 7]
    tokens, mask = _padded_batch(lengths, 10, seed=1)
    got = collect_activations(model, tokens, HOOK, mask)
    for d, n in enumerate(lengths):
        kept = sorted(got.pos[got.doc == d].tolist())
        assert kept == list(range(1, n))  # no BOS (pos 0), no padding (pos >= n)
    with_bos = collect_activations(model, tokens, HOOK, mask, exclude_bos=False)
    assert len(with_bos) == sum(lengths)
    assert (with_bos.pos == 0).sum() == len(lengths)


def test_document_ids_continue_across_batches(model):
    a, ma = _padded_batch([6, 6], 6, seed=2)
    b, mb = _padded_batch([6, 3, 5], 6, seed=3)
    got = collect_activations(model, [a, b], HOOK, [ma, mb])
    assert got.doc.unique().tolist() == [0, 1, 2, 3, 4]
    _, cache = model.run_with_cache(b, names_filter=[HOOK])
    sel = got.doc >= 2
    torch.testing.assert_close(got.acts[sel], cache[HOOK][got.doc[sel] - 2, got.pos[sel]])


def test_head_activations_are_flattened(model):
    tokens, _ = _padded_batch([8, 8], 8, seed=4)
    got = collect_activations(model, tokens, "blocks.0.attn.hook_z")
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"])
    assert got.acts.shape == (2 * 7, 4 * 16)
    torch.testing.assert_close(got.acts, cache["blocks.0.attn.hook_z"][:, 1:].reshape(14, 64))


def test_bad_inputs_raise(model):
    tokens, mask = _padded_batch([5, 5], 5)
    with pytest.raises(ValueError, match="mask shape"):
        collect_activations(model, tokens, HOOK, mask[:, :3])
    with pytest.raises(ValueError, match="batch, pos"):
        collect_activations(model, tokens[0], HOOK)
    with pytest.raises(ValueError, match="masks"):
        collect_activations(model, [tokens, tokens], HOOK, [mask])


def test_batches_cover_the_set(model):
    tokens, mask = _padded_batch([9, 9, 9, 9], 9, seed=5)
    got = collect_activations(model, tokens, HOOK, mask)  # 32 tokens
    it = got.batches(8, seed=0)
    seen = torch.cat([next(it) for _ in range(4)])  # one epoch
    assert seen.shape == (32, 64)
    torch.testing.assert_close(seen.sum(0), got.acts.sum(0))
    with pytest.raises(ValueError, match="exceeds"):
        next(got.batches(64))


@pytest.mark.parametrize("hook", ["ln_final.hook_normalized", "blocks.1.hook_resid_post"])
def test_native_gpt_collects_every_hook_as_its_cache(hook):
    """Our GPT, as TransformerLens, runs ln_final even with ``return_type=None``."""
    from decoding_gpt.transformer import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(d_vocab=100, n_ctx=16, d_model=32, n_layers=2, n_heads=2)).eval()
    tokens = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    got = collect_activations(gpt, tokens, hook)
    _, cache = gpt.run_with_cache(tokens)
    torch.testing.assert_close(got.acts, cache[hook][got.doc, got.pos])
