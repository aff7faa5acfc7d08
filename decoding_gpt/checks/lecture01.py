"""Checks for the exercises of lecture 01 (why decode GPT: a tour).

The exercises use a model only through ``model(tokens) -> logits`` (and, for the logit
lens, ``run_with_cache``), so the checks run the student's function on a small randomly
initialised :class:`~decoding_gpt.transformer.GPT` (seeded, no shipped weights needed) and
compare it with the package's references: the chain rule written out (exercise 1),
:func:`decoding_gpt.generation.generate` (exercise 2), the distribution
:func:`decoding_gpt.generation.sample_next_token` samples from (exercise 3), and
:func:`decoding_gpt.lens.logit_lens` (exercise 4).

A sampler is checked by what it draws: many draws with a seeded generator, whose
frequencies must match ``softmax(top_k(z / T))`` within sampling noise; a classic mistake
is named when the frequencies match *its* distribution instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_numpy,
)
from decoding_gpt.generation import generate, top_k_filter
from decoding_gpt.hooks import hook_name
from decoding_gpt.lens import logit_lens
from decoding_gpt.transformer import GPT, GPTConfig, LayerNorm

__all__ = [
    "check_greedy_decode",
    "check_logit_lens",
    "check_sample_top_k",
    "check_sequence_log_prob",
]


def _tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(d_vocab=37, n_ctx=24, d_model=32, n_layers=2, n_heads=4)
    model = GPT(config).eval()
    with torch.no_grad():  # a sharper next-token distribution than the near-uniform init
        model.unembed.W_U.mul_(20.0)
    return model


def _tokens(seed: int, length: int, d_vocab: int = 37) -> torch.Tensor:
    return torch.randint(0, d_vocab, (length,), generator=torch.Generator().manual_seed(seed))


def reference_sequence_log_prob(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """``sum_{t >= 1} log p(x_t | x_{<t})``: position ``t - 1`` predicts token ``t``."""
    with torch.no_grad():
        log_probs = model(tokens[None])[0].log_softmax(-1)  # [pos, d_vocab]
    return log_probs[:-1].gather(-1, tokens[1:, None]).sum()


# ----------------------------------------------------------------------------- exercise 1
@exercise
def check_sequence_log_prob(fn: Callable[[GPT, torch.Tensor], torch.Tensor]) -> None:
    """``fn(model, tokens[pos]) -> log p(x_1 .. x_T | x_0)`` as a scalar tensor."""
    model = _tiny_model()
    for seed, length in [(0, 6), (1, 15)]:
        tokens = _tokens(seed, length)
        got = to_numpy(fn(model, tokens), "log_prob")
        want = reference_sequence_log_prob(model, tokens)
        if got.shape != ():
            raise CheckError(
                f"log_prob has shape {got.shape}: sum the per-token log-probabilities "
                "into one number."
            )
        if got > 0:
            raise CheckError(
                f"log_prob = {float(got):.3f} > 0, but a log-probability is <= 0: did you "
                "sum raw logits (or probabilities) instead of log_softmax?"
            )
        with torch.no_grad():
            log_probs = model(tokens[None])[0].log_softmax(-1)
        same_position = log_probs.gather(-1, tokens[:, None])[1:].sum()
        if abs(float(got) - float(same_position)) < 1e-4:
            raise CheckError(
                "you scored token t with the logits at position t. The logits at position "
                "t predict token t + 1: use logits[:-1] against tokens[1:]."
            )
        compare_tensors(
            got, want, "log_prob", atol=1e-4,
            hint="Sum log_softmax(logits)[t - 1, x_t] over t = 1 .. T-1 (the first token "
            "has no prediction).",
        )  # fmt: skip
    passed("check_sequence_log_prob")


# ----------------------------------------------------------------------------- exercise 2
@exercise
def check_greedy_decode(fn: Callable[[GPT, torch.Tensor, int], torch.Tensor]) -> None:
    """``fn(model, tokens[pos], n_new) -> tokens[pos + n_new]``, greedy (argmax) decoding."""
    model = _tiny_model(1)
    for seed, length, n_new in [(2, 3, 5), (3, 8, 10)]:
        prompt = _tokens(seed, length)
        got = fn(model, prompt.clone(), n_new)
        if not isinstance(got, torch.Tensor):
            raise CheckError(f"return a tensor of token ids, got {type(got).__name__}.")
        want = generate(model, prompt, n_new, greedy=True)
        if got.shape[-1] == n_new:
            raise CheckError(
                "you returned only the new tokens: return the prompt followed by them."
            )
        if got.shape[-1] == length:
            raise CheckError(
                f"the output has the prompt's length {length}: append each new token to "
                "the sequence before predicting the next one."
            )
        if tuple(got.shape) != tuple(want.shape):
            raise CheckError(f"output has shape {tuple(got.shape)}, expected {tuple(want.shape)}.")
        if not torch.equal(got[:length], prompt):
            raise CheckError("the output does not start with the prompt.")
        if not torch.equal(got, want):
            first = int((got != want).nonzero()[0, 0])
            raise CheckError(
                f"token {first} is {int(got[first])}, greedy decoding gives {int(want[first])}: "
                "take the argmax of the logits at the LAST position (logits[-1]), then "
                "append it and run the model again on the longer sequence."
            )
    passed("check_greedy_decode")


# ----------------------------------------------------------------------------- exercise 3
def reference_top_k_probs(logits: Tensor, temperature: float, k: int) -> Tensor:
    """``softmax(top_k(z / T))``: the distribution ``sample_next_token`` draws from."""
    return top_k_filter(logits[None].double() / temperature, k)[0].softmax(-1)


def _draw(
    fn: Callable[[Tensor, float, int, torch.Generator], object],
    logits: Tensor,
    temperature: float,
    k: int,
    seed: int,
    n: int,
) -> np.ndarray:
    """``n`` tokens from ``fn`` with one generator seeded ``seed``, as integer ids."""
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(n):
        token = fn(logits.clone(), temperature, k, generator)
        try:
            draws.append(int(token))  # type: ignore[call-overload]
        except (TypeError, ValueError, RuntimeError) as err:
            raise CheckError(
                f"return one token id (an int or a 0-d tensor), got {token!r}."
            ) from err
    return np.array(draws)


def _sampler_mistakes(logits: Tensor, temperature: float, k: int) -> dict[str, Tensor]:
    """Distributions of the classic wrong samplers, each with what the student sees."""
    return {
        "you multiplied the logits by the temperature; divide them, softmax(z / T), so "
        "that T < 1 sharpens and T > 1 flattens the distribution.": reference_top_k_probs(
            logits, 1 / temperature, k
        ),
        "the temperature had no effect: divide the LOGITS by T before the softmax "
        "(dividing the probabilities by T changes nothing once they are renormalised).": (
            reference_top_k_probs(logits, 1.0, k)
        ),
    }


def _total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@exercise
def check_sample_top_k(fn: Callable[[Tensor, float, int, torch.Generator], object]) -> None:
    """``fn(logits [d_vocab], temperature, k, generator) -> token id`` drawn from
    ``softmax(top_k(logits / temperature))`` with ``torch.multinomial(..., generator=...)``.

    Run on two seeded logit vectors with T < 1 and T > 1, 3,000 draws each: the draws must
    be reproducible from the generator, stay inside the top k, reach every top-k token,
    and have frequencies within total-variation distance 0.05 of the reference (the
    sampling noise is about 0.01).
    """
    gen = torch.Generator().manual_seed(5)
    for temperature, k in [(0.5, 4), (2.0, 6)]:
        logits = 2.0 * torch.randn(10, generator=gen)
        want = reference_top_k_probs(logits, temperature, k).numpy()
        first = _draw(fn, logits, temperature, k, seed=1, n=40)
        if len(set(first.tolist())) == 1 and want.max() < 0.9:
            raise CheckError(
                f"40 draws all gave token {first[0]}: you took the argmax. Sample: "
                "torch.multinomial(probs, 1, generator=generator)."
            )
        if not np.array_equal(first, _draw(fn, logits, temperature, k, seed=1, n=40)):
            raise CheckError(
                "the same seed gave different tokens: pass the generator to the sampler, "
                "torch.multinomial(probs, 1, generator=generator), so runs are reproducible."
            )
        draws = _draw(fn, logits, temperature, k, seed=2, n=3000)
        if draws.min() < 0 or draws.max() >= len(logits):
            raise CheckError(f"drew token {int(draws.max())}, outside the vocabulary [0, 10).")
        freq = np.bincount(draws, minlength=len(logits)) / len(draws)
        outside = np.flatnonzero((freq > 0) & (want == 0))
        if outside.size:
            raise CheckError(
                f"with k={k} you drew token {int(outside[0])}, which is not among the {k} "
                f"most likely (your draws hold {int((freq > 0).sum())} distinct tokens). Set "
                "every logit below the k-th largest to -inf BEFORE the softmax."
            )
        missing = np.flatnonzero((freq == 0) & (want > 0.02))
        if missing.size:
            raise CheckError(
                f"with k={k}, token {int(missing[0])} is among the {k} most likely "
                f"(p = {want[missing[0]]:.3f}) but was never drawn: keep exactly k tokens, "
                "those with a logit >= the k-th largest (logits.topk(k).values[-1])."
            )
        distance = _total_variation(freq, want)
        if distance > 0.05:
            for message, wrong in _sampler_mistakes(logits, temperature, k).items():
                if _total_variation(freq, wrong.numpy()) < 0.05:
                    raise CheckError(message)
            raise CheckError(
                f"with T={temperature}, k={k} your frequencies {freq.round(3).tolist()} are "
                f"{distance:.3f} (total variation) from softmax(top_k(z / T)) = "
                f"{want.round(3).tolist()}."
            )
    passed("check_sample_top_k")


# ----------------------------------------------------------------------------- exercise 4
def _final_ln(model: GPT) -> LayerNorm:
    ln = model.ln_final
    assert isinstance(ln, LayerNorm)  # the checks' models are built with normalization "LN"
    return ln


def _lens_model() -> GPT:
    """A tiny GPT whose final LayerNorm and unembedding bias are not the identity and zero,
    so a lens that skips either of them gives different numbers."""
    model = _tiny_model(2)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        _final_ln(model).w.copy_(1 + 0.5 * torch.randn(model.cfg.d_model, generator=gen))
        _final_ln(model).b.copy_(0.5 * torch.randn(model.cfg.d_model, generator=gen))
        model.unembed.b_U.copy_(torch.randn(model.cfg.d_vocab, generator=gen))
    return model


def reference_logit_lens_probs(model: GPT, tokens: Tensor) -> Tensor:
    """``softmax(LN_final(x_l) W_U + b_U)`` at the last position for ``l = 0 .. L``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None])
        logits, _ = logit_lens(model, cache, pos=-1)  # [L + 1, batch, 1, d_vocab]
    return logits[:, 0, 0].softmax(-1)


def _stream(model: GPT, tokens: Tensor, pos: int = -1) -> tuple[Tensor, Tensor]:
    """``x_0 .. x_L`` at ``pos`` ([L + 1, d_model]) and the final LayerNorm's cached scale."""
    _, cache = model.run_with_cache(tokens[None])
    L = model.cfg.n_layers
    names = [hook_name("resid_pre", layer) for layer in range(L)]
    names.append(hook_name("resid_post", L - 1))
    resid = torch.stack([cache[name][0, pos] for name in names])
    return resid, cache["ln_final.hook_scale"][0, pos]


def _lens_mistakes() -> list[Mistake]:
    def unembed(model: GPT, x: Tensor, bias: bool = True) -> Tensor:
        logits = x @ model.unembed.W_U
        return (logits + model.unembed.b_U if bias else logits).softmax(-1)

    def frozen_scale(model: GPT, tokens: Tensor) -> Tensor:
        resid, scale = _stream(model, tokens)
        centred = resid - resid.mean(-1, keepdim=True)
        ln = _final_ln(model)
        return unembed(model, centred / scale * ln.w + ln.b)

    return [
        Mistake(
            "no_final_ln",
            lambda model, tokens: unembed(model, _stream(model, tokens)[0]),
            "you unembedded the raw residual stream: apply the final LayerNorm first, "
            "model.unembed(model.ln_final(x)). Without it even the last row is not the "
            "model's own prediction.",
        ),
        Mistake(
            "frozen_scale",
            frozen_scale,
            "you divided every layer's residual by the final LayerNorm's cached scale (the "
            "norm of x_L). The lens applies LN_final as a function: it recomputes the "
            "scale of each x_l (call model.ln_final on it).",
        ),
        Mistake(
            "no_b_U",
            lambda model, tokens: unembed(model, model.ln_final(_stream(model, tokens)[0]), False),
            "the unembedding bias b_U is missing: logits = LN_final(x) W_U + b_U "
            "(model.unembed adds it).",
        ),
        Mistake(
            "first_position",
            lambda model, tokens: unembed(model, model.ln_final(_stream(model, tokens, 0)[0])),
            "you read the first position; the lens is taken at the LAST one ([0, -1]), "
            "where the next token is predicted.",
        ),
    ]


@exercise
def check_logit_lens(fn: Callable[[GPT, Tensor], Tensor]) -> None:
    """``fn(model, tokens [pos]) -> probs [n_layers + 1, d_vocab]``: the logit lens
    ``softmax(LN_final(x_l) W_U + b_U)`` at the last position for ``x_0 .. x_L``."""
    model = _lens_model()
    L = model.cfg.n_layers
    for seed, length in [(4, 9), (5, 17)]:
        tokens = _tokens(seed, length)
        with torch.no_grad():
            got = to_numpy(fn(model, tokens.clone()), "lens probabilities")
            want = reference_logit_lens_probs(model, tokens)
        if got.ndim == 2 and got.shape[0] == L:
            raise CheckError(
                f"{L} rows for a {L}-layer model: the lens has L + 1 rows, x_0 (the "
                "embedding, blocks.0.hook_resid_pre) up to x_L "
                f"(blocks.{L - 1}.hook_resid_post)."
            )
        if got.shape == tuple(want.shape) and not np.allclose(got.sum(-1), 1.0, atol=1e-4):
            along_layers = np.allclose(got.sum(0), 1.0, atol=1e-4)
            raise CheckError(
                "the softmax ran over the layer axis: normalise each row over the "
                "vocabulary (softmax(-1))."
                if along_layers
                else "the rows do not sum to 1: return probabilities, softmax(-1) of the "
                "lens logits."
            )
        judge(
            got, want, _lens_mistakes(), (model, tokens), what="lens probabilities",
            atol=1e-4,
            hint="Row l is softmax(model.unembed(model.ln_final(x_l))) at the last position; "
            "the last row must equal the model's own next-token distribution.",
        )  # fmt: skip
    passed("check_logit_lens")
