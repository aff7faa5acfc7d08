"""Lecture 01 checks: the references pass, known-wrong implementations are rejected."""

from __future__ import annotations

import pytest
import torch

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks.lecture01 import (
    check_greedy_decode,
    check_logit_lens,
    check_sample_top_k,
    check_sequence_log_prob,
)


# ---------------------------------------------------------------- sequence log-probability
def log_prob_reference(model, tokens):
    log_probs = model(tokens[None])[0].log_softmax(-1)
    return log_probs[:-1].gather(-1, tokens[1:, None]).sum()


def log_prob_same_position(model, tokens):  # scores x_t with the logits that predict x_t+1
    return model(tokens[None])[0].log_softmax(-1).gather(-1, tokens[:, None])[1:].sum()


def log_prob_raw_logits(model, tokens):  # forgot the softmax normalisation
    return model(tokens[None])[0][:-1].gather(-1, tokens[1:, None]).sum()


def log_prob_probabilities(model, tokens):  # sums probabilities, not log-probabilities
    return model(tokens[None])[0].softmax(-1)[:-1].gather(-1, tokens[1:, None]).sum()


def log_prob_per_token(model, tokens):  # forgot to sum
    return model(tokens[None])[0].log_softmax(-1)[:-1].gather(-1, tokens[1:, None])[:, 0]


def log_prob_mean(model, tokens):  # the mean (a per-token loss), not the joint log-prob
    return model(tokens[None])[0].log_softmax(-1)[:-1].gather(-1, tokens[1:, None]).mean()


def test_sequence_log_prob_accepts_reference(capsys):
    check_sequence_log_prob(log_prob_reference)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (log_prob_same_position, "position t predict token t \\+ 1"),
        (log_prob_raw_logits, "log_softmax"),
        (log_prob_probabilities, "log_softmax"),
        (log_prob_per_token, "sum the per-token"),
        (log_prob_mean, "wrong values"),
    ],
)
def test_sequence_log_prob_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        check_sequence_log_prob(wrong)


# ---------------------------------------------------------------- greedy decoding
def greedy_reference(model, tokens, n_new):
    for _ in range(n_new):
        next_token = model(tokens[None])[0, -1].argmax()
        tokens = torch.cat([tokens, next_token[None]])
    return tokens


def greedy_never_appends(model, tokens, n_new):  # the old course's bug
    for _ in range(n_new):
        model(tokens[None])[0, -1].argmax()
    return tokens


def greedy_first_position(model, tokens, n_new):  # reads the logits at position 0
    for _ in range(n_new):
        tokens = torch.cat([tokens, model(tokens[None])[0, 0].argmax()[None]])
    return tokens


def greedy_only_new(model, tokens, n_new):
    return greedy_reference(model, tokens, n_new)[len(tokens) :]


def greedy_sampling(model, tokens, n_new):  # samples instead of taking the argmax
    gen = torch.Generator().manual_seed(0)
    for _ in range(n_new):
        probs = model(tokens[None])[0, -1].softmax(-1)
        tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)])
    return tokens


def test_greedy_decode_accepts_reference(capsys):
    with torch.no_grad():
        check_greedy_decode(greedy_reference)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (greedy_never_appends, "append each new token"),
        (greedy_first_position, "LAST position"),
        (greedy_only_new, "only the new tokens"),
        (greedy_sampling, "greedy decoding gives"),
    ],
)
def test_greedy_decode_rejects(wrong, message):
    with torch.no_grad(), pytest.raises(CheckError, match=message):
        check_greedy_decode(wrong)


# ---------------------------------------------------------------- temperature and top-k sampling
def sample_reference(logits, temperature, k, generator):
    scaled = logits / temperature
    scaled = scaled.masked_fill(scaled < scaled.topk(k).values[-1], float("-inf"))
    return int(torch.multinomial(scaled.softmax(-1), 1, generator=generator))


def sample_argmax(logits, temperature, k, generator):  # greedy, not a sample
    return int(logits.argmax())


def sample_global_rng(logits, temperature, k, generator):  # ignores the generator
    scaled = logits / temperature
    scaled = scaled.masked_fill(scaled < scaled.topk(k).values[-1], float("-inf"))
    return int(torch.multinomial(scaled.softmax(-1), 1))


def sample_no_top_k(logits, temperature, k, generator):  # forgot the filter
    return int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))


def sample_k_minus_one(logits, temperature, k, generator):  # strict > drops the k-th token
    scaled = logits / temperature
    scaled = scaled.masked_fill(scaled <= scaled.topk(k).values[-1], float("-inf"))
    return int(torch.multinomial(scaled.softmax(-1), 1, generator=generator))


def sample_times_temperature(logits, temperature, k, generator):  # z * T, not z / T
    return sample_reference(logits * temperature**2, temperature, k, generator)


def sample_probs_over_temperature(logits, temperature, k, generator):  # T after the softmax
    probs = logits.masked_fill(logits < logits.topk(k).values[-1], float("-inf")).softmax(-1)
    return int(torch.multinomial(probs / temperature, 1, generator=generator))


def sample_returns_probs(logits, temperature, k, generator):  # the distribution, not a token
    return (logits / temperature).softmax(-1)


def test_sample_top_k_accepts_reference(capsys):
    check_sample_top_k(sample_reference)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (sample_argmax, "you took the argmax"),
        (sample_global_rng, "pass the generator"),
        (sample_no_top_k, "not among the 6 most likely"),
        (sample_k_minus_one, "keep exactly k tokens"),
        (sample_times_temperature, "multiplied the logits by the temperature"),
        (sample_probs_over_temperature, "temperature had no effect"),
        (sample_returns_probs, "return one token id"),
    ],
)
def test_sample_top_k_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        check_sample_top_k(wrong)


# ---------------------------------------------------------------- the logit lens
def _stream(model, tokens, pos=-1):
    _, cache = model.run_with_cache(tokens[None])
    L = model.cfg.n_layers
    resid = [cache[f"blocks.{layer}.hook_resid_pre"][0, pos] for layer in range(L)]
    return torch.stack([*resid, cache[f"blocks.{L - 1}.hook_resid_post"][0, pos]]), cache


def lens_reference(model, tokens):
    resid, _ = _stream(model, tokens)
    return model.unembed(model.ln_final(resid)).softmax(-1)


def lens_no_final_ln(model, tokens):  # the old course's bug: raw residual unembedded
    resid, _ = _stream(model, tokens)
    return model.unembed(resid).softmax(-1)


def lens_frozen_scale(model, tokens):  # x_L's cached LayerNorm scale for every layer
    resid, cache = _stream(model, tokens)
    centred = resid - resid.mean(-1, keepdim=True)
    scale = cache["ln_final.hook_scale"][0, -1]
    return model.unembed(centred / scale * model.ln_final.w + model.ln_final.b).softmax(-1)


def lens_no_b_u(model, tokens):
    resid, _ = _stream(model, tokens)
    return (model.ln_final(resid) @ model.unembed.W_U).softmax(-1)


def lens_first_position(model, tokens):
    resid, _ = _stream(model, tokens, pos=0)
    return model.unembed(model.ln_final(resid)).softmax(-1)


def lens_resid_post_only(model, tokens):  # forgets x_0, the embedding
    _, cache = model.run_with_cache(tokens[None])
    L = model.cfg.n_layers
    resid = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0, -1] for layer in range(L)])
    return model.unembed(model.ln_final(resid)).softmax(-1)


def lens_logits(model, tokens):  # logits, not probabilities
    resid, _ = _stream(model, tokens)
    return model.unembed(model.ln_final(resid))


def lens_softmax_over_layers(model, tokens):
    resid, _ = _stream(model, tokens)
    return model.unembed(model.ln_final(resid)).softmax(0)


def test_logit_lens_accepts_reference(capsys):
    with torch.no_grad():
        check_logit_lens(lens_reference)
    assert "all checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lens_no_final_ln, "apply the final LayerNorm first"),
        (lens_frozen_scale, "cached scale"),
        (lens_no_b_u, "b_U is missing"),
        (lens_first_position, "LAST one"),
        (lens_resid_post_only, "L \\+ 1 rows"),
        (lens_logits, "return probabilities"),
        (lens_softmax_over_layers, "over the layer axis"),
    ],
)
def test_logit_lens_rejects(wrong, message):
    with torch.no_grad(), pytest.raises(CheckError, match=message):
        check_logit_lens(wrong)


# ---------------------------------------------------------------- stubs are not attempts
def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `it` here.")


@pytest.mark.parametrize(
    "check",
    [check_sequence_log_prob, check_greedy_decode, check_sample_top_k, check_logit_lens],
)
def test_checks_refuse_a_stub(check, capsys):
    with pytest.raises(NotAttempted, match="not attempted yet"):
        check(_stub)
    assert "passed" not in capsys.readouterr().out
