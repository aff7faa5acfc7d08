"""Generation: the sampling rules in closed form, and ``generate`` against step-by-step
recomputation with the plain forward pass (no cache, no helper)."""

import pytest
import torch

from decoding_gpt.generation import (
    KVCache,
    beam_search,
    generate,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)
from decoding_gpt.transformer import GPT, GPTConfig

N_CTX, VOCAB = 12, 29


def model_for(pos_type="standard") -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        d_vocab=VOCAB, n_ctx=N_CTX, d_model=32, n_layers=2, n_heads=4, init_range=0.5,
        positional_embedding_type=pos_type,
    )  # fmt: skip
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def model() -> GPT:
    return model_for()


def prompt(batch=2, pos=5, seed=3):
    return torch.randint(0, VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- filters
def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(4, 50)
    kept = torch.isfinite(top_k_filter(logits, 5))
    expected = torch.zeros_like(kept).scatter(1, logits.topk(5).indices, True)
    assert torch.equal(kept, expected)
    assert torch.isfinite(top_k_filter(logits, 500)).all()  # k > vocab keeps everything
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


@pytest.mark.parametrize("p, kept", [(0.4, [0]), (0.7, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2])])
def test_top_p_keeps_the_smallest_nucleus(p, kept):
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # sorted: 0.5 (1), 0.3 (3), 0.15 (0), 0.05
    order = [1, 3, 0, 2]
    out = top_p_filter(probs.log(), p)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == sorted(order[i] for i in kept)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(probs.log(), 0.0)


def test_sample_next_token_rules():
    logits = torch.randn(3, 20)
    argmax = logits.argmax(-1)
    assert torch.equal(sample_next_token(logits, greedy=True), argmax)
    assert torch.equal(sample_next_token(logits, temperature=0), argmax)
    assert torch.equal(sample_next_token(logits, top_k=1), argmax)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(
        sample_next_token(logits, generator=g1), sample_next_token(logits, generator=g2)
    )
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"):
        sample_next_token(logits[0])


def test_sampling_frequencies_follow_softmax_of_logits_over_temperature():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    samples = sample_next_token(logits, temperature=2.0, generator=g)
    freq = torch.bincount(samples, minlength=4).float() / 20000
    expected = torch.softmax(logits[0] / 2.0, dim=-1)
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)  # ~4 sigma at n = 20000


# --------------------------------------------------------------------------- generate
def test_generate_appends_argmax_of_the_last_position(model):
    """Reference: recompute the full forward pass at every step, take logits[:, -1]."""
    start = prompt()
    out = generate(model, start, 6, greedy=True)
    assert out.shape == (2, 5 + 6)
    assert torch.equal(out[:, :5], start)
    seq = start
    for _ in range(6):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("pos_type", ["standard", "rotary"])
@pytest.mark.parametrize("sampling", [{"greedy": True}, {"seed": 11, "top_k": 10, "top_p": 0.9}])
def test_kv_cache_generation_equals_no_cache(pos_type, sampling):
    model = model_for(pos_type)
    start = prompt(pos=7)  # 7 + 9 > n_ctx = 12: the window slides during generation
    with_cache = generate(model, start, 9, use_kv_cache=True, **sampling)
    without = generate(model, start, 9, use_kv_cache=False, **sampling)
    assert torch.equal(with_cache, without)


def test_kv_cache_logits_equal_full_forward(model):
    seq, cache = prompt(pos=8), KVCache(model.cfg.n_layers)
    logits = [model(seq[:, :5], kv_cache=cache)]
    logits += [model(seq[:, t : t + 1], kv_cache=cache) for t in range(5, 8)]
    assert cache.length == 8
    torch.testing.assert_close(torch.cat(logits, dim=1), model(seq), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="n_ctx"):
        model(prompt(pos=5), kv_cache=cache)  # 8 cached + 5 new > 12


def test_seeded_generation_is_deterministic(model):
    a = generate(model, prompt(), 8, seed=1)
    b = generate(model, prompt(), 8, seed=1)
    c = generate(model, prompt(), 8, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_long_prompt_is_truncated_on_the_left(model):
    long = prompt(batch=1, pos=20)  # longer than n_ctx = 12
    out = generate(model, long, 4, greedy=True)
    assert out.shape == (1, 24) and torch.equal(out[:, :20], long)
    short = generate(model, long[:, -N_CTX:], 4, greedy=True)
    assert torch.equal(out[:, 20:], short[:, N_CTX:])


def test_one_dimensional_prompt_and_method(model):
    start = prompt(batch=1)[0]
    out = model.generate(start, 3, greedy=True)
    assert out.shape == (8,)
    assert torch.equal(out, generate(model, start[None], 3, greedy=True)[0])
    assert torch.equal(generate(model, start, 0), start)


def test_eos_stops_generation_and_pads_finished_rows(model):
    start = prompt(batch=1)
    first = generate(model, start, 1, greedy=True)[0, -1].item()
    out = generate(model, start, 10, greedy=True, eos_token_id=first)
    assert out.shape == (1, 6) and out[0, -1].item() == first


def test_generate_restores_training_mode_and_rejects_bad_input(model):
    model.train()
    generate(model, prompt(), 2)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 2, 3, dtype=torch.long), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bool])
def test_generate_rejects_non_integer_token_ids_naming_the_dtype(model, dtype):
    """A float id would be truncated by ``.long()`` (1.7 -> 1, a different token) and a
    bool tensor read as ids 0 and 1: both are refused, on both entry points."""
    bad = torch.tensor([[1.7, 2.0, 3.0]]).to(dtype)
    for call in (lambda: generate(model, bad, 2), lambda: model.generate(bad[0], 2)):
        with pytest.raises(ValueError, match=rf"integer tensor.*got dtype {dtype}"):
            call()


def test_generate_accepts_every_integer_dtype_alike(model):
    start = prompt(batch=1)
    expected = generate(model, start, 3, greedy=True)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(generate(model, start.to(dtype), 3, greedy=True), expected)


# --------------------------------------------------------------------------- beam search
def _tiny_model(vocab=4, seed=1) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(d_vocab=vocab, n_ctx=8, d_model=16, n_layers=1, n_heads=2, init_range=1.0)
    return GPT(cfg).double().eval()  # float64: scores comparable to 1e-9


def _log_prob(model, prompt_ids, continuation) -> float:
    """log p(continuation | prompt) from ONE forward pass over the whole sequence."""
    seq = torch.cat([prompt_ids, continuation])[None]
    with torch.no_grad():
        log_p = model(seq)[0].double().log_softmax(-1)
    n = len(prompt_ids)
    return float(sum(log_p[n - 1 + i, int(c)] for i, c in enumerate(continuation)))


def _brute_force(model, prompt_ids, n_new, vocab):
    """The most probable n_new-token continuation, by scoring all vocab ** n_new of them."""
    grids = torch.cartesian_prod(*[torch.arange(vocab)] * n_new).reshape(-1, n_new)
    scores = [_log_prob(model, prompt_ids, c) for c in grids]
    best = max(range(len(scores)), key=scores.__getitem__)
    return grids[best], scores[best]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_wide_beam_search_is_exhaustive_search(seed):
    vocab, n_new = 4, 3
    model = _tiny_model(vocab, seed)
    prompt_ids = torch.tensor([0, 2])
    want, want_score = _brute_force(model, prompt_ids, n_new, vocab)
    out, score = beam_search(model, prompt_ids, n_new, beam_width=vocab ** (n_new - 1))
    assert torch.equal(out[:2], prompt_ids)
    assert torch.equal(out[2:], want)
    assert score == pytest.approx(want_score, abs=1e-9)


def test_beam_of_width_one_is_greedy_and_scores_are_log_probs():
    model = _tiny_model(5, 4)
    prompt_ids = torch.tensor([1, 3, 0])
    out, score = beam_search(model, prompt_ids, 5, beam_width=1)
    assert torch.equal(out, generate(model, prompt_ids, 5, greedy=True))
    assert score == pytest.approx(_log_prob(model, prompt_ids, out[3:]), abs=1e-9)
    out2, score2 = beam_search(model, prompt_ids, 5, beam_width=3)
    assert score2 == pytest.approx(_log_prob(model, prompt_ids, out2[3:]), abs=1e-9)


def test_beam_search_beats_greedy_on_some_model_and_never_exceeds_the_optimum():
    vocab, n_new, wins = 4, 3, 0
    for seed in range(8):
        model = _tiny_model(vocab, seed)
        prompt_ids = torch.tensor([1])
        _, best = _brute_force(model, prompt_ids, n_new, vocab)
        _, greedy = beam_search(model, prompt_ids, n_new, beam_width=1)
        _, beam2 = beam_search(model, prompt_ids, n_new, beam_width=2)
        assert beam2 <= best + 1e-9 and greedy <= best + 1e-9
        wins += beam2 > greedy + 1e-9
    assert wins > 0  # a width-2 beam found a better sequence than greedy at least once


def test_beam_search_slides_the_window_and_rejects_bad_input(model):
    prompt_ids = prompt(1, N_CTX - 2)[0]
    out, score = beam_search(model, prompt_ids, 4, beam_width=2)  # outgrows n_ctx = 12
    assert out.shape == (N_CTX + 2,) and score < 0
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(model, prompt_ids, 2, beam_width=0)
    with pytest.raises(ValueError, match="pos"):
        beam_search(model, prompt(2, 3), 2, beam_width=2)
    with pytest.raises(ValueError, match="integer"):
        beam_search(model, prompt_ids.float(), 2, beam_width=2)
