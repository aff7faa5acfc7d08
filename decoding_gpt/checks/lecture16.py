r"""Checks for the exercises of lecture 16 (parameter-based interpretability).

Each ``check_*`` runs the student's function on seeded inputs and compares it with the
package's reference: :func:`decoding_gpt.grokking.frequency_norms` (tested there against
an explicit DFT), the closed form of the Fourier algorithm, and
:func:`decoding_gpt.editing.restored_probability` / :func:`~decoding_gpt.editing.rank_one_update`
(tested in ``tests/test_editing.py`` against hook loops and a whitened pseudo-inverse).
Where the answer matches a classic mistake, the message names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from decoding_gpt.checks import CheckError, Mistake, exercise, judge, passed
from decoding_gpt.editing import rank_one_update, restored_probability
from decoding_gpt.grokking import fourier_basis, frequency_norms
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "check_fourier_logits",
    "check_frequency_norms",
    "check_rank_one_update",
    "check_trace_cell",
]


def _tensor(got: object, what: str) -> Tensor:
    if not isinstance(got, Tensor):
        raise CheckError(f"return a torch.Tensor ({what}), got {type(got).__name__}.")
    return got.detach()


# ----------------------------------------------------------------------------- exercise 1
def _coefficient_sq(W: Tensor, normalised: bool = True) -> Tensor:
    basis, _ = fourier_basis(W.shape[0])
    if not normalised:
        basis = basis * basis.abs().max(dim=1, keepdim=True).values.reciprocal()
    return (basis.double() @ W.double()).pow(2).sum(-1)


FREQ_MISTAKES = [
    Mistake(
        "squared",
        lambda W: (lambda sq: torch.cat([sq[:1], sq[1::2] + sq[2::2]]))(_coefficient_sq(W)),
        "these are the SQUARED norms (energies); take the square root, "
        "sqrt(||c_k^T W||^2 + ||s_k^T W||^2).",
    ),
    Mistake(
        "cos only",
        lambda W: (lambda sq: torch.cat([sq[:1], sq[1::2]]).sqrt())(_coefficient_sq(W)),
        "only the cosine row counts here: frequency k has a cos AND a sin row in the basis "
        "(rows 2k-1 and 2k); add their squared norms before the square root.",
    ),
    Mistake(
        "sin only",
        lambda W: (lambda sq: torch.cat([sq[:1], sq[2::2]]).sqrt())(_coefficient_sq(W)),
        "only the sine row counts here: frequency k has a cos AND a sin row in the basis "
        "(rows 2k-1 and 2k); add their squared norms before the square root.",
    ),
    Mistake(
        "unnormalised",
        lambda W: (lambda sq: torch.cat([sq[:1], sq[1::2] + sq[2::2]]).sqrt())(
            _coefficient_sq(W, normalised=False)
        ),
        "the basis vectors are not unit vectors: cos(w_k x) has norm sqrt(p/2), the "
        "constant sqrt(p). Use fourier_basis(p), whose rows are orthonormal.",
    ),
]


@exercise
def check_frequency_norms(fn: Callable[[Tensor], Tensor]) -> None:
    """``fn(W [p, d]) -> [(p+1)/2]``: the norm of ``W``'s component at each frequency
    ``k = 0 .. (p-1)/2`` in the orthonormal Fourier basis, compared with
    :func:`decoding_gpt.grokking.frequency_norms`; plus Parseval (the squares sum to
    ``||W||_F^2``) on a random matrix."""
    gen = torch.Generator().manual_seed(16)
    for p, d in [(7, 5), (11, 3), (13, 13)]:
        W = torch.randn(p, d, generator=gen, dtype=torch.float64)
        got = _tensor(fn(W.clone()), f"shape [{(p + 1) // 2}]")
        if got.shape == ((p - 1) // 2,):
            raise CheckError(
                f"got {(p - 1) // 2} frequencies; include k = 0 (the constant row) first, "
                f"for {(p + 1) // 2} in all."
            )
        if got.shape == (p,):
            raise CheckError(
                f"got {p} numbers, one per basis row; combine each frequency's cos and sin "
                f"rows into one norm, for {(p + 1) // 2} frequencies."
            )
        judge(
            got,
            frequency_norms(W).double(),
            FREQ_MISTAKES,
            (W,),
            what=f"frequency norms of a {p}x{d} matrix",
            atol=1e-5,
            hint="Coefficients F W with F = fourier_basis(p)[0]; frequency k > 0 combines "
            "rows 2k-1 and 2k.",
        )
    passed("check_frequency_norms")


# ----------------------------------------------------------------------------- exercise 2
def _ideal(
    a: Tensor,
    b: Tensor,
    p: int,
    keys: list[int],
    sign: int = -1,
    fn: Callable[[Tensor], Tensor] = torch.cos,
) -> Tensor:
    c = torch.arange(p, dtype=torch.float64)
    s = (a + b).double()[:, None] + sign * c[None, :]  # a + b - c
    return torch.stack([fn(2 * math.pi * k * s / p) for k in keys]).sum(0)


FOURIER_MISTAKES = [
    Mistake(
        "plus c",
        lambda a, b, p, keys: _ideal(a, b, p, keys, sign=+1),
        "this is cos(w_k (a + b + c)), which peaks at c = -(a + b); the answer c = a + b "
        "needs cos(w_k (a + b - c)).",
    ),
    Mistake(
        "sine",
        lambda a, b, p, keys: _ideal(a, b, p, keys, fn=torch.sin),
        "sin(w_k (a + b - c)) is 0 at c = a + b, not largest; the logits are cosines, "
        "cos(w_k (a + b - c)), which are 1 exactly there.",
    ),
    Mistake(
        "no 2 pi",
        lambda a, b, p, keys: sum(
            torch.cos(k * ((a + b).double()[:, None] - torch.arange(p)[None, :]) / p) for k in keys
        ),
        "the frequency is w_k = 2 pi k / p: without the 2 pi the wave is not periodic in p.",
    ),
]


@exercise
def check_fourier_logits(fn: Callable[[Tensor, Tensor, int, list[int]], Tensor]) -> None:
    """``fn(a [n], b [n], p, keys) -> [n, p]``: ``sum_k cos(2 pi k (a + b - c) / p)`` for
    each candidate ``c``, with a test that its argmax is ``(a + b) mod p``."""
    gen = torch.Generator().manual_seed(160)
    for p, keys in [(13, [2, 5]), (23, [1, 7, 10]), (113, [39, 18, 8, 16])]:
        a = torch.randint(0, p, (40,), generator=gen)
        b = torch.randint(0, p, (40,), generator=gen)
        got = _tensor(fn(a.clone(), b.clone(), p, list(keys)), f"shape [n, {p}]")
        if got.shape == (p, len(a)):
            raise CheckError(f"the axes are swapped: return [n pairs, {p} candidates c].")
        judge(
            got.double(),
            _ideal(a, b, p, keys),
            FOURIER_MISTAKES,
            (a, b, p, keys),
            what=f"ideal logits for p = {p}",
            atol=1e-6,
            hint="logit(c) = sum over keys of cos(2 pi k (a + b - c) / p).",
        )
        if not torch.equal(got.argmax(-1), (a + b) % p):
            raise CheckError("the largest logit is not at c = (a + b) mod p.")
    passed("check_fourier_logits")


# ----------------------------------------------------------------------------- exercise 3
def _trace_model() -> GPT:
    torch.manual_seed(1616)
    cfg = GPTConfig(d_vocab=40, n_ctx=12, d_model=24, n_layers=3, n_heads=4, init_range=0.15)
    return GPT(cfg).eval()


def _wrong_trace(model: GPT, tokens: Tensor, subject: list[int], answer: int, noise: Tensor,
                 layer: int, pos: int, kind: str, how: str) -> Tensor:  # fmt: skip
    if how == "no restore":
        return restored_probability(model, tokens, subject, answer, noise, [[]], kind)[0]  # type: ignore[arg-type]
    if how == "no noise":
        return restored_probability(model, tokens, subject, answer, 0 * noise, [[]], kind)[0]  # type: ignore[arg-type]
    if how == "all positions":
        cells = [(layer, i) for i in range(len(tokens))]
        return restored_probability(model, tokens, subject, answer, noise, [cells], kind)[0]  # type: ignore[arg-type]
    raise ValueError(how)


TRACE_MISTAKES = [
    Mistake(
        "all positions",
        lambda m, t, s, a, n, ly, p, k: _wrong_trace(m, t, s, a, n, ly, p, k, "all positions"),
        "you restored the whole layer (every position); restore only position `pos`.",
    ),
    Mistake(
        "no restore",
        lambda m, t, s, a, n, ly, p, k: _wrong_trace(m, t, s, a, n, ly, p, k, "no restore"),
        "this is the corrupted probability: the clean state was never put back. Cache the "
        "clean run, then in the noisy run replace act[:, pos] at the hook of `kind` and "
        "`layer` with its clean value.",
    ),
    Mistake(
        "no noise",
        lambda m, t, s, a, n, ly, p, k: _wrong_trace(m, t, s, a, n, ly, p, k, "no noise"),
        "this is the clean probability: the noise never reached the run. Add noise[s] to "
        "the token embeddings (hook_embed) at the subject positions.",
    ),
]


@exercise
def check_trace_cell(fn: Callable[..., float]) -> None:
    """``fn(model, tokens [pos], subject, answer, noise [sample, n_subject, d_model],
    layer, pos, kind) -> float``: the probability of ``answer`` at the last position,
    averaged over the noise samples, with the subject's token embeddings noised and the
    ``kind`` activation at ``(layer, pos)`` restored from the clean run; compared with
    :func:`decoding_gpt.editing.restored_probability` on a small random model."""
    model = _trace_model()
    gen = torch.Generator().manual_seed(61)
    tokens = torch.tensor([0, 5, 17, 23, 8, 30, 2, 11])
    subject, answer = [2, 3], 9
    noise = 1.5 * torch.randn(6, len(subject), 24, generator=gen)
    for layer, pos, kind in [
        (1, 7, "mlp_out"),  # first: here each mistake gives its own number
        (0, 3, "resid_post"),
        (2, 7, "attn_out"),
        (1, 5, "resid_post"),
    ]:  # fmt: skip
        args = (model, tokens, list(subject), answer, noise, layer, pos, kind)
        with torch.no_grad():
            got = fn(model, tokens.clone(), list(subject), answer, noise.clone(), layer, pos, kind)
        if isinstance(got, Tensor) and got.numel() == noise.shape[0]:
            raise CheckError("average the probability over the noise samples: return one number.")
        want = restored_probability(model, tokens, subject, answer, noise, [[(layer, pos)]], kind)  # type: ignore[arg-type]
        judge(
            got,
            want[0],
            TRACE_MISTAKES,
            args,
            what=f"p(answer) with {kind} restored at layer {layer}, position {pos}",
            atol=1e-5,
            hint="Noise at hook_embed (subject positions), clean value at "
            f"blocks.{layer}.hook_{kind}[:, {pos}], softmax at the last position.",
        )
    passed("check_trace_cell")


# ----------------------------------------------------------------------------- exercise 4
def _no_cov(W: Tensor, C: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.outer(v - W @ k, k) / (k @ k)


UPDATE_MISTAKES = [
    Mistake(
        "identity covariance",
        lambda W, C, k, v: _no_cov(W, C, k, v),
        "this update uses k* itself as the direction, (v* - W k*) k*^T / |k*|^2: it ignores C. "
        "Use u = C^{-1} k* (torch.linalg.solve(C, k)), so keys common in the corpus are "
        "disturbed least.",
    ),
    Mistake(
        "no residual",
        lambda W, C, k, v: (lambda u: torch.outer(v, u) / (u @ k))(torch.linalg.solve(C, k)),
        "W' k* = W k* + v*, not v*: subtract what W already does, (v* - W k*), before "
        "the outer product.",
    ),
    Mistake(
        "no denominator",
        lambda W, C, k, v: (lambda u: torch.outer(v - W @ k, u))(torch.linalg.solve(C, k)),
        "divide by k*^T C^{-1} k*, so that Delta k* = v* - W k* exactly.",
    ),
    Mistake(
        "plain denominator",
        lambda W, C, k, v: (lambda u: torch.outer(v - W @ k, u) / (k @ k))(
            torch.linalg.solve(C, k)
        ),
        "the denominator is k*^T C^{-1} k*, not k*^T k*: with it, Delta k* = v* - W k*.",
    ),
    Mistake(
        "transposed",
        lambda W, C, k, v: (lambda u: torch.outer(u, v - W @ k) / (u @ k))(
            torch.linalg.solve(C, k)
        ),
        "the outer product is transposed: Delta = (v* - W k*) (C^{-1} k*)^T, the residual "
        "as a column (d_out) times C^{-1} k* as a row (d_in).",
    ),
]


@exercise
def check_rank_one_update(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """``fn(W [d_out, d_in], C [d_in, d_in], k [d_in], v [d_out]) -> Delta [d_out, d_in]``:
    ROME's ``(v - W k)(C^{-1} k)^T / (k^T C^{-1} k)``, compared with
    :func:`decoding_gpt.editing.rank_one_update`; and ``(W + Delta) k == v``."""
    gen = torch.Generator().manual_seed(1606)
    for d_out, d_in in [(4, 6), (7, 3), (5, 5)]:
        A = torch.randn(d_in, 3 * d_in, generator=gen, dtype=torch.float64)
        C = A @ A.T / (3 * d_in) + 0.2 * torch.diag(
            torch.rand(d_in, generator=gen, dtype=torch.float64)
        )
        W = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
        k = torch.randn(d_in, generator=gen, dtype=torch.float64)
        v = torch.randn(d_out, generator=gen, dtype=torch.float64)
        got = _tensor(fn(W.clone(), C.clone(), k.clone(), v.clone()), f"shape [{d_out}, {d_in}]")
        if got.shape == (d_in, d_out) and d_in != d_out:
            raise CheckError(
                f"Delta has shape [{d_in}, {d_out}]: the outer product is (v* - W k*) "
                "(C^{-1} k*)^T, a column of size d_out times a row of size d_in."
            )
        judge(
            got.double(),
            rank_one_update(W, C, k, v),
            UPDATE_MISTAKES,
            (W, C, k, v),
            what=f"rank-one update of a {d_out}x{d_in} matrix",
            atol=1e-8,
            hint="Delta = (v - W k)(C^{-1} k)^T / (k^T C^{-1} k).",
        )
    passed("check_rank_one_update")
