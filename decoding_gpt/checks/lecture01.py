"""Checks for the exercises of lecture 01 (why decode GPT: a tour).

The exercises use a model only through ``model(tokens) -> logits``, so the checks run
the student's function on a small randomly initialised :class:`~decoding_gpt.transformer.GPT`
(seeded, no shipped weights needed) and compare it with the chain rule written out
(exercise 1) and with :func:`decoding_gpt.generation.generate` (exercise 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy
from decoding_gpt.generation import generate
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = ["check_greedy_decode", "check_sequence_log_prob"]


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
