"""Causal tracing and the rank-one edit, against closed forms and hand-written hook loops.

References: the minimum-norm solution of ``Delta k = r`` from ``torch.linalg.pinv`` after
whitening by the Cholesky factor of ``C`` (an independent derivation of ROME's formula),
explicit ``run_with_hooks`` calls per cell, and caches read directly.
"""

from __future__ import annotations

import pytest
import torch

from decoding_gpt import editing
from decoding_gpt.transformer import GPT, GPTConfig

D_VOCAB = 50


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(d_vocab=D_VOCAB, n_ctx=16, d_model=32, n_layers=3, n_heads=4, init_range=0.1)
    return GPT(cfg).eval()


def _spd(n: int, gen: torch.Generator) -> torch.Tensor:
    A = torch.randn(n, 2 * n, generator=gen, dtype=torch.float64)
    return A @ A.T / (2 * n) + 0.1 * torch.eye(n, dtype=torch.float64)


# ---------------------------------------------------------------------- rank-one update
def _problem(seed: int = 0, d_out: int = 6, d_in: int = 9):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
    C = _spd(d_in, gen)
    k = torch.randn(d_in, generator=gen, dtype=torch.float64)
    v = torch.randn(d_out, generator=gen, dtype=torch.float64)
    return W, C, k, v


def test_update_is_rank_one_and_stores_the_pair():
    W, C, k, v = _problem()
    delta = editing.rank_one_update(W, C, k, v)
    assert torch.linalg.matrix_rank(delta) == 1
    torch.testing.assert_close((W + delta) @ k, v)


def test_keys_orthogonal_in_the_c_inverse_metric_are_unchanged():
    W, C, k, v = _problem(1)
    u = torch.linalg.solve(C, k)
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        other = torch.randn(len(k), generator=gen, dtype=torch.float64)
        other = other - (other @ u) / (k @ u) * k  # now other^T C^-1 k = 0
        assert abs(float(other @ u)) < 1e-10
        torch.testing.assert_close((W + editing.rank_one_update(W, C, k, v)) @ other, W @ other)


def test_update_is_the_minimum_norm_solution_after_whitening():
    # min E||Delta k||^2 = ||Delta L||_F^2 (C = L L^T) s.t. Delta k* = r: with Y = Delta L,
    # Y z = r for z = L^-1 k*, whose least-norm solution is r pinv(z)
    W, C, k, v = _problem(2)
    L = torch.linalg.cholesky(C)
    z = torch.linalg.solve_triangular(L, k[:, None], upper=False)  # [d_in, 1]
    Y = (v - W @ k)[:, None] @ torch.linalg.pinv(z)
    want = Y @ torch.linalg.inv(L)
    torch.testing.assert_close(editing.rank_one_update(W, C, k, v), want)


def test_identity_covariance_by_hand():
    W = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k, v = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0])
    # r = v - W k = (2, -2); Delta = r k^T / |k|^2 = [[1, 1], [-1, -1]]
    delta = editing.rank_one_update(W, torch.eye(2), k, v)
    torch.testing.assert_close(delta, torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))


def test_update_keeps_dtype_and_rejects_bad_input():
    W, C, k, v = (t.float() for t in _problem(3))
    assert editing.rank_one_update(W, C, k, v).dtype == torch.float32
    with pytest.raises(ValueError, match="shapes do not fit"):
        editing.rank_one_update(W, C, v, v)
    with pytest.raises(ValueError, match="symmetric"):
        editing.rank_one_update(W, C + torch.triu(torch.ones_like(C)), k, v)
    with pytest.raises(ValueError, match="positive definite"):
        editing.rank_one_update(W, -C, k, v)


# ---------------------------------------------------------------------- causal tracing
def _prompt():
    return torch.tensor([0, 7, 12, 3, 9, 21, 4])


def test_noise_std_is_three_embedding_stds(model):
    W_E = model.embed.W_E.detach()
    assert editing.embedding_noise_std(model) == pytest.approx(3 * W_E.std().item())
    assert editing.embedding_noise_std(model, [1, 2], factor=2) == pytest.approx(
        2 * W_E[[1, 2]].std().item()
    )
    with pytest.raises(ValueError, match="positive"):
        editing.embedding_noise_std(model, factor=0)


def _by_hand(model, tokens, subject, answer, noise, cells, kind):
    """One run per noise sample, hooks written out: the reference for one condition."""
    clean = {}
    _, cache = model.run_with_cache(tokens[None])
    probs = []
    for eps in noise:

        def corrupt(act, hook, eps=eps):
            act = act.clone()
            act[0, subject] += eps
            return act

        hooks = [("hook_embed", corrupt)]
        for layer, pos in cells:
            name = f"blocks.{layer}.hook_{kind}"
            clean[name] = cache[name]

            def restore(act, hook, pos=pos, name=name):
                act = act.clone()
                act[0, pos] = clean[name][0, pos]
                return act

            hooks.append((name, restore))
        logits = model.run_with_hooks(tokens[None], fwd_hooks=hooks)
        probs.append(logits[0, -1].softmax(-1)[answer])
    return torch.stack(probs).mean()


@pytest.mark.parametrize("kind", ["resid_post", "mlp_out", "attn_out"])
def test_restored_probability_matches_a_loop_of_hooks(model, kind):
    tokens, subject, answer = _prompt(), [2, 3], 5
    noise = 0.5 * torch.randn(4, 2, 32, generator=torch.Generator().manual_seed(0))
    conditions = [[], [(0, 3)], [(1, 6), (2, 3)], [(2, 5)]]
    got = editing.restored_probability(model, tokens, subject, answer, noise, conditions, kind)
    for c, cells in enumerate(conditions):
        want = _by_hand(model, tokens, subject, answer, noise, cells, kind)
        torch.testing.assert_close(got[c], want, atol=1e-6, rtol=1e-5)


def test_restoring_every_state_recovers_the_clean_probability(model):
    tokens, subject, answer = _prompt(), [2, 3], 5
    trace = editing.causal_trace(model, tokens, subject, answer, noise_std=1.0, n_samples=4)
    assert abs(trace.clean - trace.corrupt) > 1e-4  # the noise does something
    noise = torch.randn(4, 2, 32, generator=torch.Generator().manual_seed(0))
    last = len(tokens) - 1
    every_layer = [(layer, pos) for layer in range(3) for pos in range(len(tokens))]
    at_last = [(layer, last) for layer in range(3)]
    # every layer's residual stream, or just the last one at the last position: clean
    for cells in (every_layer, [(2, last)]):
        p = editing.restored_probability(model, tokens, subject, answer, noise, [cells])
        assert p.item() == pytest.approx(trace.clean, abs=1e-6)
    # the attention and MLP outputs of every layer at the last position (where the
    # embedding was never noised) together rebuild its clean residual stream
    _, cache = model.run_with_cache(tokens[None])
    hooks = [
        (
            "hook_embed",
            lambda act, hook: (
                act + torch.cat([torch.zeros(4, 2, 32), noise, torch.zeros(4, 3, 32)], 1)
            ),
        )
    ]
    for layer, pos in at_last:
        for name in (f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_mlp_out"):

            def restore(act, hook, name=name, pos=pos):
                act = act.clone()
                act[:, pos] = cache[name][0, pos]
                return act

            hooks.append((name, restore))
    logits = model.run_with_hooks(tokens[None].expand(4, -1), fwd_hooks=hooks)
    probs = logits[:, -1].softmax(-1)[:, answer]
    torch.testing.assert_close(probs, torch.full((4,), trace.clean), atol=1e-6, rtol=0)
    only_mlp = editing.restored_probability(
        model, tokens, subject, answer, noise, [at_last], "mlp_out"
    )
    assert only_mlp.item() != pytest.approx(trace.clean, abs=1e-6)  # attention was noised


def test_trace_grid_is_the_single_cell_conditions(model):
    tokens, subject, answer = _prompt(), [3], 11
    trace = editing.causal_trace(model, tokens, subject, answer, 0.8, "mlp_out", 3, seed=1)
    assert trace.restored.shape == (3, len(tokens))
    noise = 0.8 * torch.randn(3, 1, 32, generator=torch.Generator().manual_seed(1))
    want = editing.restored_probability(
        model, tokens, subject, answer, noise, [[(1, 4)], []], "mlp_out"
    )
    assert trace.restored[1, 4].item() == pytest.approx(want[0].item(), abs=1e-6)
    assert trace.corrupt == pytest.approx(want[1].item(), abs=1e-6)
    # positions before the subject never see the noise: restoring them changes nothing
    torch.testing.assert_close(trace.restored[:, :3], torch.full((3, 3), trace.corrupt))
    norm = trace.normalised
    torch.testing.assert_close(norm[:, :3], torch.zeros(3, 3), atol=1e-5, rtol=0)


def test_trace_rejects_bad_input(model):
    tokens = _prompt()
    with pytest.raises(ValueError, match="one sequence"):
        editing.causal_trace(model, tokens[None], [1], 2, 1.0)
    with pytest.raises(ValueError, match="subject positions"):
        editing.causal_trace(model, tokens, [9], 2, 1.0)
    with pytest.raises(ValueError, match="answer id"):
        editing.causal_trace(model, tokens, [1], D_VOCAB, 1.0)
    with pytest.raises(ValueError, match="outside"):
        editing.restored_probability(model, tokens, [1], 2, torch.zeros(2, 1, 32), [[(3, 0)]])
    with pytest.raises(ValueError, match="noise must be"):
        editing.restored_probability(model, tokens, [1, 2], 2, torch.zeros(2, 1, 32), [[]])


# ---------------------------------------------------------------------- editing a model
def test_key_covariance_and_subject_key_read_the_cache(model):
    tokens = torch.randint(0, D_VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    keys = cache["blocks.1.mlp.hook_post"].reshape(-1, 128).double()
    want = torch.einsum("ni,nj->ij", keys, keys) / len(keys)
    torch.testing.assert_close(editing.key_covariance(model, 1, tokens), want, atol=1e-6, rtol=1e-6)
    ridged = editing.key_covariance(model, 1, tokens, ridge=0.5)
    ridge = 0.5 * want.diagonal().mean() * torch.eye(128, dtype=torch.float64)
    torch.testing.assert_close(ridged - want, ridge, atol=1e-6, rtol=1e-6)
    contexts = [tokens[0, :4], tokens[1, :7]]
    want_k = (cache["blocks.1.mlp.hook_post"][0, 3] + cache["blocks.1.mlp.hook_post"][1, 6]) / 2
    torch.testing.assert_close(editing.subject_key(model, 1, contexts), want_k)
    with pytest.raises(ValueError, match="layer"):
        editing.key_covariance(model, 3, tokens)


def test_optimised_value_is_what_the_edited_model_does(model):
    gen = torch.Generator().manual_seed(3)
    corpus = torch.randint(0, D_VOCAB, (8, 16), generator=gen)
    C = editing.key_covariance(model, 1, corpus, ridge=1e-3)
    prompts = [torch.tensor([0, 7, 12, 3, 9]), torch.tensor([4, 4, 7, 12, 3, 9])]
    key = editing.subject_key(model, 1, [prompts[0][:3], prompts[1][:4]])
    target = 17
    before = [model(p[None])[0, -1].log_softmax(-1)[target].item() for p in prompts]
    result = editing.optimise_value(model, 1, C, key, prompts, target, steps=15, lr=0.3)
    assert result.losses[-1] < result.losses[0]
    delta = editing.mlp_edit(model, 1, C, key, result.value)
    assert torch.linalg.matrix_rank(delta) == 1  # float32 tolerance
    W = model.blocks[1].mlp.W_out.detach().T
    torch.testing.assert_close((W + delta) @ key, result.value, atol=1e-4, rtol=1e-4)
    original = model.blocks[1].mlp.W_out.detach().clone()
    with editing.applied_edit(model, 1, delta):
        for p, b in zip(prompts, before, strict=True):
            edited = model(p[None])[0, -1]
            # the same run through the hook that optimise_value used
            r = editing.edit_weights(model, 1, C, key, p)
            assert r.shape == (len(p),)
            after = edited.log_softmax(-1)[target].item()
            assert after > b
    assert torch.equal(model.blocks[1].mlp.W_out, original)
    with editing.applied_edit(model, 1, delta):
        r = editing.edit_weights(model, 1, C, key, prompts[0])
    hooked = model.run_with_hooks(
        prompts[0][None],
        fwd_hooks=[
            ("blocks.1.hook_mlp_out", lambda act, hook: act + r[None, :, None] * result.delta)
        ],
    )
    with editing.applied_edit(model, 1, delta):
        torch.testing.assert_close(model(prompts[0][None]), hooked, atol=1e-4, rtol=1e-4)


def test_applied_edit_restores_on_error(model):
    original = model.blocks[0].mlp.W_out.detach().clone()
    delta = torch.ones(32, 128)
    with pytest.raises(RuntimeError, match="boom"), editing.applied_edit(model, 0, delta):
        assert not torch.equal(model.blocks[0].mlp.W_out, original)
        raise RuntimeError("boom")
    assert torch.equal(model.blocks[0].mlp.W_out, original)
    with (
        pytest.raises(ValueError, match="delta has shape"),
        editing.applied_edit(model, 0, delta.T),
    ):
        pass
    attn_only = GPT(
        GPTConfig(d_vocab=10, n_ctx=8, d_model=16, n_layers=1, n_heads=2, attn_only=True)
    )
    with pytest.raises(ValueError, match="no MLP"):
        editing.key_covariance(attn_only, 0, torch.zeros(1, 4, dtype=torch.long))
