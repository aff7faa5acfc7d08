r"""Checks for the exercises of lecture 09 (evaluations and scaling laws).

Each ``check_*`` runs the student's function on seeded inputs, compares it with an
independent reference (``torch.nn.functional.cross_entropy``, ``numpy.polyfit``, closed
forms), and raises :class:`CheckError` naming the likely mistake when it disagrees: the
wrong answers of common mistakes are computed alongside and matched first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_scalar
from decoding_gpt.scaling import fit_power_law, fit_saturating_power_law

__all__ = [
    "check_bits_per_byte",
    "check_fit_loglog",
    "check_fit_saturating",
    "check_sequence_perplexity",
]


def _match(got: float, mistakes: dict[str, float], want: float, rel: float = 1e-6) -> None:
    """Raise with the message of the first mistake whose value ``got`` reproduces."""
    if math.isclose(got, want, rel_tol=rel, abs_tol=1e-12):
        return
    for message, value in mistakes.items():
        if math.isfinite(value) and math.isclose(got, value, rel_tol=rel, abs_tol=1e-12):
            raise CheckError(message)


# ----------------------------------------------------------------------------- exercise 1
def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _perplexity_mistakes(logits: Tensor, tokens: Tensor) -> dict[str, float]:
    pred, target = logits[:, :-1], tokens[:, 1:]
    nll = _nll(pred, target)
    per_sequence = torch.stack([_nll(pred[i], target[i]) for i in range(len(tokens))])
    return {
        "you returned the mean NLL (the loss, in nats): perplexity is its exponential, "
        "exp(mean NLL).": nll.item(),
        "this is 2 ** NLL with the NLL in nats: perplexity is exp(mean NLL) when the "
        "log-probabilities are natural logs (F.cross_entropy uses ln).": (2**nll).item(),
        "logits and targets are not shifted: the logits at position t predict token "
        "t + 1, so compare logits[:, :-1] with tokens[:, 1:].": torch.exp(
            _nll(logits, tokens)
        ).item(),
        "the shift is along the BATCH axis (logits[:-1] vs tokens[1:]): each sequence is "
        "then scored on ANOTHER sequence's tokens (a bug of earlier course materials). "
        "Shift along the sequence axis: logits[:, :-1], tokens[:, 1:].": torch.exp(
            _nll(logits[:-1], tokens[1:])
        ).item(),
        "this is the mean of per-sequence perplexities. Perplexity is exp of the mean "
        "NLL over ALL predicted tokens; by Jensen, the mean of exps is larger.": (
            per_sequence.exp().mean().item()
        ),
        "the shift is the wrong way round (logits[:, 1:] vs tokens[:, :-1]): that asks "
        "the model to predict the PREVIOUS token.": torch.exp(
            _nll(logits[:, 1:], tokens[:, :-1])
        ).item(),
    }


@exercise
def check_sequence_perplexity(fn: Callable[[Tensor, Tensor], float]) -> None:
    """``fn(logits [batch, pos, V], tokens [batch, pos]) -> float``: next-token perplexity."""
    gen = torch.Generator().manual_seed(9)
    for batch, pos, vocab in [(3, 6, 5), (2, 9, 11), (4, 4, 7)]:
        logits = 2 * torch.randn(batch, pos, vocab, generator=gen, dtype=torch.float64)
        tokens = torch.randint(vocab, (batch, pos), generator=gen)
        want = torch.exp(_nll(logits[:, :-1], tokens[:, 1:])).item()
        got = to_scalar(fn(logits.clone(), tokens.clone()), "perplexity")
        _match(got, _perplexity_mistakes(logits, tokens), want)
        compare_tensors(
            got,
            want,
            f"perplexity of a [{batch}, {pos}, {vocab}] batch",
            atol=1e-6 * want,
            hint="exp of F.cross_entropy(logits[:, :-1] flattened, tokens[:, 1:] flattened).",
        )
    # a model that puts all its mass on the right token has perplexity 1
    tokens = torch.tensor([[0, 1, 2, 3]])
    perfect = torch.full((1, 4, 4), -1e4, dtype=torch.float64)
    perfect[0, torch.arange(3), tokens[0, 1:]] = 0.0
    if not math.isclose(to_scalar(fn(perfect, tokens), "perplexity"), 1.0, abs_tol=1e-6):
        raise CheckError("a model that is always certain and right must have perplexity 1.")
    passed("check_sequence_perplexity")


# ----------------------------------------------------------------------------- exercise 2
@exercise
def check_bits_per_byte(fn: Callable[[float, int, int], float]) -> None:
    r"""``fn(mean_nll, n_tokens, n_bytes)``: total information in bits, per byte of text.

    ``bits/byte = mean_nll * n_tokens / (n_bytes * ln 2)``, ``mean_nll`` in nats per token.
    """
    for mean_nll, n_tokens, n_bytes in [(2.0, 1000, 3700), (0.9, 250, 1001), (3.3, 77, 200)]:
        want = mean_nll * n_tokens / (n_bytes * math.log(2))
        got = to_scalar(fn(mean_nll, n_tokens, n_bytes), "bits per byte")
        _match(
            got,
            {
                "this is nats per byte: divide by ln 2 to convert nats to bits "
                "(log2 x = ln x / ln 2).": mean_nll * n_tokens / n_bytes,
                "this is bits per TOKEN: multiply by the number of tokens and divide by "
                "the number of bytes, so that tokenizers with long and short tokens "
                "compare.": mean_nll / math.log(2),
                "tokens and bytes are swapped: the total is mean_nll * n_tokens, and it is "
                "shared out over n_bytes.": mean_nll * n_bytes / (n_tokens * math.log(2)),
                "you multiplied by ln 2 instead of dividing: bits = nats / ln 2.": (
                    mean_nll * n_tokens * math.log(2) / n_bytes
                ),
                "this uses the perplexity exp(mean_nll) in place of the NLL: bits come from "
                "the log-likelihood itself.": math.exp(mean_nll) * n_tokens / n_bytes,
            },
            want,
        )
        compare_tensors(
            got,
            want,
            f"bits per byte for mean NLL {mean_nll}, {n_tokens} tokens, {n_bytes} bytes",
            atol=1e-9,
            hint="bits/byte = mean_nll * n_tokens / (n_bytes * ln 2).",
        )
    passed("check_bits_per_byte")


# ----------------------------------------------------------------------------- exercise 3
@exercise
def check_fit_loglog(fn: Callable[[np.ndarray, np.ndarray], tuple[float, float]]) -> None:
    r"""``fn(n, loss) -> (a, exponent)``: least-squares line in log-log space, L = a N^b.

    Compared with ``numpy.polyfit(log N, log L, 1)``; ``exponent`` is negative when the
    loss falls with size.
    """
    rng = np.random.default_rng(3)
    for a_true, b_true, k in [(7.0, -0.08, 6), (3.0, -0.5, 5), (20.0, -0.3, 8)]:
        n = np.geomspace(1e3, 1e7, k)
        loss = a_true * n**b_true * np.exp(rng.normal(0, 0.02, size=k))
        result = fn(n.copy(), loss.copy())
        if result is None:
            raise CheckError("fit returned None: did you forget to `return a, exponent`?")
        if not isinstance(result, tuple | list) or len(result) != 2:
            raise CheckError(f"return a pair (a, exponent), got {type(result).__name__}.")
        a, b = (to_scalar(v, name) for v, name in zip(result, ("a", "exponent"), strict=True))
        slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
        if not math.isclose(b, slope, rel_tol=1e-6):
            linear_slope = np.polyfit(n, loss, 1)[0]
            semilog_slope = np.polyfit(n, np.log(loss), 1)[0]
            swapped = 1 / np.polyfit(np.log(loss), np.log(n), 1)[0]
            _match(
                b,
                {
                    "exponent has the wrong sign: we return b in L = a N^b, which is "
                    "NEGATIVE when the loss falls with size (papers quote alpha = -b).": -slope,
                    "the fit is in linear space: a power law is a straight line only in "
                    "log-log space, fit log L against log N.": linear_slope,
                    "only the loss is logged: take the log of N too, log L = log a + b log N.": (
                        semilog_slope
                    ),
                    "the regression is the wrong way round (log N on log L, then inverted): "
                    "regress log L (the y) on log N (the x).": swapped,
                },
                slope,
            )
            raise CheckError(
                f"exponent {b:.6g} differs from the least-squares slope {slope:.6g} of "
                "log L against log N (np.polyfit(np.log(n), np.log(loss), 1)[0])."
            )
        if math.isclose(a, intercept, rel_tol=1e-6) and not math.isclose(a, math.exp(intercept)):
            raise CheckError(
                f"a = {a:.4g} is the intercept log a of the log-log line: return exp(intercept)."
            )
        compare_tensors(
            a,
            math.exp(intercept),
            "prefactor a",
            atol=1e-6 * math.exp(intercept),
            hint="a = exp(intercept) of the least-squares line (natural logs).",
        )
    passed("check_fit_loglog")


# ----------------------------------------------------------------------------- exercise 4
# (a, exponent, l_inf, k points, noise): a clear floor, a shallow law, and data whose
# unconstrained best floor is negative, so that the optimum with l_inf >= 0 lies on the
# boundary l_inf = 0
_SATURATING_CASES = [
    (60.0, -0.45, 1.8, 6, 0.005),
    (8.0, -0.2, 0.6, 8, 0.003),
    (5.0, -0.1, -0.3, 7, 0.002),
]


def _rss(n: np.ndarray, loss: np.ndarray, a: float, b: float, l_inf: float) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(np.sum((loss - a * n**b - l_inf) ** 2))
    return value if math.isfinite(value) else math.inf


def _saturating_answer(result: object) -> tuple[float, float, float]:
    if result is None:
        raise CheckError("fit returned None: did you forget to `return a, exponent, l_inf`?")
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise CheckError(f"return a triple (a, exponent, l_inf), got {type(result).__name__}.")
    a, b, c = (
        to_scalar(v, name) for v, name in zip(result, ("a", "exponent", "l_inf"), strict=True)
    )
    return a, b, c


@exercise
def check_fit_saturating(
    fn: Callable[[np.ndarray, np.ndarray], tuple[float, float, float]],
) -> None:
    r"""``fn(n, loss) -> (a, exponent, l_inf)``: least squares in L for L = a N^b + L_inf.

    Minimise :math:`\sum_i (L_i - a N_i^b - L_\infty)^2` with :math:`L_\infty \ge 0`.
    Accepted when the answer's residual sum of squares is within 0.1 % of the optimum
    found by :func:`decoding_gpt.scaling.fit_saturating_power_law` (grid + golden
    section), with ``l_inf >= 0``; wrong answers are matched against the classic mistakes.
    """
    rng = np.random.default_rng(5)
    for a_true, b_true, floor_true, k, noise in _SATURATING_CASES:
        n = np.geomspace(1e3, 1e6, k)
        loss = (a_true * n**b_true + floor_true) * np.exp(rng.normal(0, noise, size=k))
        ref = fit_saturating_power_law(n, loss)
        a, b, l_inf = _saturating_answer(fn(n.copy(), loss.copy()))
        tolerance = ref.rss * 1e-3 + 1e-12
        if _rss(n, loss, a, b, l_inf) <= ref.rss + tolerance and l_inf >= -1e-9:
            continue
        what = f"for data from L = {a_true:g} N^{b_true:g} {floor_true:+g} ({k} points)"
        for answer, message in [
            ((a, -b, l_inf), "the exponent has the wrong sign: return b in L = a N^b + l_inf, "
             "NEGATIVE when the loss falls with size (papers quote alpha = -b)."),
            ((a, l_inf, b), "the floor and the exponent are swapped: return (a, exponent, l_inf)."),
            ((b, a, l_inf), "a and the exponent are swapped: return (a, exponent, l_inf)."),
        ]:  # fmt: skip
            if _rss(n, loss, *answer) <= ref.rss + tolerance:
                raise CheckError(message)
        if l_inf < -1e-9:
            raise CheckError(
                f"l_inf = {l_inf:.4g} < 0 {what}: a loss floor cannot be negative. Fit with "
                "l_inf >= 0: when the best unconstrained floor is negative, the optimum lies on "
                "l_inf = 0, where a = sum(L z) / sum(z z) with z = N^b."
            )
        pure = fit_power_law(n, loss)
        if abs(l_inf) < 1e-9 and math.isclose(b, pure.exponent, rel_tol=1e-4):
            raise CheckError(
                f"this is the pure power law (a straight line in log-log space, l_inf = 0) "
                f"{what}: fit the floor too, by least squares in L itself."
            )
        raise CheckError(
            f"{what} your fit has residual sum of squares {_rss(n, loss, a, b, l_inf):.4g}, "
            f"the least-squares optimum is {ref.rss:.4g} (a = {ref.a:.4g}, exponent = "
            f"{ref.exponent:.4g}, l_inf = {ref.l_inf:.4g}). Minimise the squared error of L "
            "itself (not of log L); for each exponent solve (a, l_inf) exactly, and search the "
            "exponent finely (a fine grid, then refine around its best point)."
        )
    passed("check_fit_saturating")
