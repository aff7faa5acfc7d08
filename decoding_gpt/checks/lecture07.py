"""Checks for the exercises of lecture 07 (positional information).

References are written here from the formulas (NumPy for the sinusoidal table, complex
multiplication for RoPE, ``numpy.fft`` for spectra), independent of
:mod:`decoding_gpt.attention`; ALiBi attention is compared with
:func:`decoding_gpt.attention.alibi_attention` (itself tested against Hugging Face's BLOOM
slopes and ``F.scaled_dot_product_attention``), its mistakes written out here. Known
mistakes -- including a bug of earlier course materials, the Fourier transform of
positional embeddings taken across the model dimension instead of along the positions --
are tried first and named.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from decoding_gpt.attention import alibi_attention
from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_numpy,
)

__all__ = [
    "check_alibi_attention",
    "check_position_spectrum",
    "check_rotary",
    "check_sinusoidal",
]


def _diagnose(got: np.ndarray, mistakes: Sequence[tuple[np.ndarray, str]], atol: float) -> None:
    """Raise the message of the first known mistake whose output equals ``got``."""
    for wrong, message in mistakes:
        if got.shape == wrong.shape and np.allclose(got, wrong, atol=atol, rtol=0):
            raise CheckError(message)


# ----------------------------------------------------------------------------- exercise 1
def _sinusoidal(
    n_ctx: int, d: int, exponent: str = "2i/d", start: int = 0, order: str = "interleaved"
) -> np.ndarray:
    p = np.arange(start, start + n_ctx)[:, None]
    i = np.arange(d // 2)[None, :]
    power = 2 * i / d if exponent == "2i/d" else i / d
    angles = p / 10000.0**power  # [n_ctx, d / 2]
    sin, cos = np.sin(angles), np.cos(angles)
    if order == "halves":
        return np.concatenate([sin, cos], axis=1)
    pe = np.empty((n_ctx, d))
    first, second = (sin, cos) if order == "interleaved" else (cos, sin)
    pe[:, 0::2], pe[:, 1::2] = first, second
    return pe


@exercise
def check_sinusoidal(fn: Callable[[int, int], Tensor]) -> None:
    """``fn(n_ctx, d_model) -> PE`` with ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] =
    cos(p / 10000^(2i/d))``; shape ``[n_ctx, d_model]``."""
    for n_ctx, d in [(10, 6), (33, 16)]:
        got = to_numpy(fn(n_ctx, d), "PE")
        want = _sinusoidal(n_ctx, d)
        if got.shape == (d, n_ctx) and got.shape != want.shape:
            raise CheckError(
                f"PE has shape {got.shape} = [d_model, n_ctx]: transpose it; row p is the "
                "vector added at position p."
            )
        if got.shape != want.shape:
            raise CheckError(f"PE has shape {got.shape}, expected ({n_ctx}, {d}).")
        _diagnose(
            got,
            [
                (
                    _sinusoidal(n_ctx, d, order="swapped"),
                    "sin and cos are swapped: even columns 2i hold sin, odd columns 2i+1 "
                    "hold cos (so PE[0] = [0, 1, 0, 1, ...]).",
                ),
                (
                    _sinusoidal(n_ctx, d, order="halves"),
                    "PE is [all sines | all cosines] (the tensor2tensor layout). This course "
                    "interleaves them: column 2i = sin, column 2i+1 = cos of the same angle.",
                ),
                (
                    _sinusoidal(n_ctx, d, exponent="i/d"),
                    "the frequencies use 10000^(i/d) with i = 0..d/2-1: the exponent is "
                    "2i/d, so the slowest clock has period about 2 pi * 10000.",
                ),
                (
                    _sinusoidal(n_ctx, d, start=1),
                    "positions start at 1: the first position is p = 0, PE[0] = [0, 1, ...].",
                ),
            ],
            atol=1e-5,
        )
        compare_tensors(
            got,
            want,
            f"PE for n_ctx={n_ctx}, d_model={d}",
            atol=1e-5,
            hint="angle[p, i] = p / 10000 ** (2 i / d_model).",
        )
    passed("check_sinusoidal")


# ----------------------------------------------------------------------------- exercise 2
def _rope(
    x: np.ndarray, base: float, pairs: str = "adjacent", sign: float = 1.0, start: int = 0
) -> np.ndarray:
    """Reference RoPE: each pair of features is a complex number times ``exp(i p theta)``."""
    n_pos, d = x.shape[1], x.shape[-1]
    theta = base ** (-np.arange(0, d, 2) / d)  # [d / 2]
    angle = np.arange(start, start + n_pos)[:, None] * theta  # [pos, d / 2]
    phase = np.exp(1j * sign * angle)[None, :, None, :]
    if pairs == "adjacent":
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * phase
        return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
    half = d // 2  # GPT-NeoX "rotate half": pairs (i, i + d/2)
    z = (x[..., :half] + 1j * x[..., half:]) * phase
    return np.concatenate([z.real, z.imag], axis=-1)


@exercise
def check_rotary(fn: Callable[[Tensor, float], Tensor]) -> None:
    """``fn(x, base) -> x_rot`` for ``x: [batch, pos, n_heads, d_head]``: rotate each pair
    ``(x[2i], x[2i+1])`` at position ``p`` by the angle ``p * base^(-2i/d_head)``."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 7, 3, 8, generator=gen, dtype=torch.float64)
    base = 100.0  # a small base so even the slowest pair turns visibly within 7 positions
    got = to_numpy(fn(x.clone(), base), "x_rot")
    xn = x.numpy()
    want = _rope(xn, base)
    if got.shape != want.shape:
        raise CheckError(f"x_rot has shape {got.shape}, expected {want.shape} (same as x).")
    if np.allclose(got, xn, atol=1e-9):
        raise CheckError("x_rot equals x: nothing was rotated.")
    norms_got, norms_x = np.linalg.norm(got, axis=-1), np.linalg.norm(xn, axis=-1)
    if not np.allclose(norms_got, norms_x, atol=1e-6):
        raise CheckError(
            "x_rot changes the length of the vectors: a rotation preserves norms. Use "
            "(a cos - b sin, a sin + b cos) for each pair (a, b), not an addition."
        )
    _diagnose(
        got,
        [
            (
                _rope(xn, base, pairs="half"),
                "the pairs are (x[i], x[i + d/2]) (GPT-NeoX's rotate-half layout). This course "
                "(RoFormer, TransformerLens's native model) rotates ADJACENT pairs "
                "(x[2i], x[2i+1]).",
            ),
            (
                _rope(xn, base, sign=-1.0),
                "the rotation goes the wrong way: (a, b) -> (a cos + b sin, -a sin + b cos) "
                "rotates by -theta. Use (a cos - b sin, a sin + b cos).",
            ),
            (
                _rope(xn, base, start=1),
                "positions start at 1: position 0 must be left unrotated (angle 0).",
            ),
            (
                _rope(xn, base**0.5),
                "the frequencies are base^(-i/d) with i = 0..d/2-1; they are "
                "theta_i = base^(-2i/d), i = 0..d/2-1.",
            ),
        ],
        atol=1e-6,  # float32 angles (as in most RoPE code) are accepted
    )
    compare_tensors(
        got, want, "x_rot", atol=1e-6, hint="angle[p, i] = p * base ** (-2 i / d_head)."
    )
    passed("check_rotary")


# ----------------------------------------------------------------------------- exercise 3
@exercise
def check_position_spectrum(fn: Callable[[Tensor], Tensor]) -> None:
    """``fn(W_pos) -> S`` for ``W_pos: [n_ctx, d_model]``: the magnitude of the real DFT of
    every column ALONG THE POSITION AXIS, ``S[f, m] = |sum_p W_pos[p, m] e^{-2 pi i f p /
    n_ctx}|`` for ``f = 0..n_ctx // 2``; shape ``[n_ctx // 2 + 1, d_model]``."""
    gen = torch.Generator().manual_seed(10)
    for n_ctx, d in [(24, 10), (16, 16)]:
        w = torch.randn(n_ctx, d, generator=gen, dtype=torch.float64)
        got = to_numpy(
            fn(w.clone()),
            "S",
            complex_hint="return the magnitude of the DFT (.abs()), a real number per "
            "frequency and column.",
        )
        wn = w.numpy()
        across_model = np.abs(np.fft.rfft(wn, axis=1))  # the old bug: DFT over d_model
        if got.shape == across_model.shape and np.allclose(got, across_model, atol=1e-8):
            raise CheckError(
                "S is the DFT across the MODEL dimension (dim=-1): that mixes unrelated "
                "features of one position. The question is how each feature varies with "
                "position, so transform along the position axis: torch.fft.rfft(W_pos, dim=0)."
            )
        if got.shape == across_model.T.shape and np.allclose(got, across_model.T, atol=1e-8):
            raise CheckError(
                "S is the DFT across the MODEL dimension, transposed: transform along the "
                "position axis, torch.fft.rfft(W_pos, dim=0), shape [n_ctx // 2 + 1, d_model]."
            )
        want = np.abs(np.fft.rfft(wn, axis=0))
        if got.shape == (n_ctx, d):
            full = np.abs(np.fft.fft(wn, axis=0))
            hint = "it looks like the full fft: " if np.allclose(got, full, atol=1e-8) else ""
            raise CheckError(
                f"S has shape {got.shape}, expected {want.shape}: {hint}a real signal's "
                "spectrum is symmetric (S[f] = S[n_ctx - f]), so use torch.fft.rfft, which "
                "keeps the frequencies 0..n_ctx // 2."
            )
        if got.shape == want.T.shape and got.shape != want.shape:
            raise CheckError(
                f"S has shape {got.shape}: expected [n_ctx // 2 + 1, d_model] = {want.shape}; "
                "keep the frequency axis first (transform along dim=0 and do not transpose)."
            )
        _diagnose(
            got,
            [
                (
                    want**2,
                    "S is the squared magnitude (power spectrum); return the magnitude "
                    "|rfft(W_pos, dim=0)| itself.",
                ),
                (
                    want / np.sqrt(n_ctx),
                    "S is normalised by 1/sqrt(n_ctx) (norm='ortho'); use the default "
                    "(unnormalised) rfft.",
                ),
                (
                    want / n_ctx,
                    "S is divided by n_ctx (norm='forward'); use the default rfft.",
                ),
            ],
            atol=1e-8,
        )
        compare_tensors(
            got,
            want,
            f"S for W_pos of shape ({n_ctx}, {d})",
            atol=1e-8,
            hint="S = torch.fft.rfft(W_pos, dim=0).abs().",
        )
    passed("check_position_spectrum")


# ----------------------------------------------------------------------------- exercise 4
def _alibi_variant(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    slopes: str = "paper",
    sign: float = -1.0,
    causal: bool = True,
    bias_scaled: bool = False,
    scale: bool = True,
    distance: str = "signed",
) -> Tensor:
    """ALiBi attention written out head by head, or one of its classic mistakes.

    ``slopes``: ``"paper"`` (``2^(-8h/n)``, ``h = 1..n``), ``"from_zero"`` (``h = 0..n-1``),
    ``"reversed"``, ``"no_n"`` (``2^-h``), ``"shared"`` (one slope, ``1/2``), ``"none"``.
    """
    n_pos, n_heads, d_head = q.shape[1], q.shape[2], q.shape[3]
    h = torch.arange(1, n_heads + 1, dtype=torch.float64)
    m = {
        "paper": 2.0 ** (-8.0 * h / n_heads),
        "from_zero": 2.0 ** (-8.0 * (h - 1) / n_heads),
        "reversed": 2.0 ** (-8.0 * h.flip(0) / n_heads),
        "no_n": 2.0**-h,
        "shared": torch.full((n_heads,), 0.5, dtype=torch.float64),
        "none": torch.zeros(n_heads, dtype=torch.float64),
    }[slopes]
    i = torch.arange(n_pos, dtype=torch.float64)
    offset = i[:, None] - i[None, :]  # [q, k]: i - j
    offset = offset.abs() if distance == "abs" else offset
    bias = sign * m[:, None, None] * offset  # [h, q, k]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    divisor = math.sqrt(d_head) if scale else 1.0
    scores = (scores + bias) / divisor if bias_scaled else scores / divisor + bias
    if causal:
        future = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def _alibi_mistake(**flags: object) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda q, k, v: _alibi_variant(q, k, v, **flags)  # type: ignore[arg-type]


_ALIBI_MISTAKES = [
    Mistake(
        "slopes from zero",
        _alibi_mistake(slopes="from_zero"),
        "the slopes start at 2^0 = 1: they are m_h = 2^(-8h/n_heads) for h = 1..n_heads "
        "(8 heads: 1/2, 1/4, ..., 1/256), so the first head's slope is 2^(-8/n_heads).",
    ),
    Mistake(
        "slopes reversed",
        _alibi_mistake(slopes="reversed"),
        "the slopes are in reverse order: head 0 gets the STEEPEST slope 2^(-8/n_heads) "
        "and the last head the gentlest, 2^-8.",
    ),
    Mistake(
        "slopes without n",
        _alibi_mistake(slopes="no_n"),
        "the slopes are 2^-h: the exponent is -8h/n_heads, so that they always run from "
        "2^(-8/n_heads) down to 2^-8 whatever the number of heads.",
    ),
    Mistake(
        "one slope",
        _alibi_mistake(slopes="shared"),
        "every head has the same slope: ALiBi gives each head its own, a geometric "
        "sequence m_h = 2^(-8h/n_heads), so heads look back over different distances.",
    ),
    Mistake(
        "no bias",
        _alibi_mistake(slopes="none"),
        "this is plain causal attention: the scores carry no position. Subtract "
        "m_h (i - j) from head h's scores.",
    ),
    Mistake(
        "sign",
        _alibi_mistake(sign=1.0),
        "the bias rewards distance: it is a PENALTY, -m_h (i - j) (zero on the diagonal, "
        "more negative the further back the key).",
    ),
    Mistake(
        "no mask",
        _alibi_mistake(causal=False),
        "the future is visible: add the causal mask (-inf where key j > query i) as well "
        "as the bias.",
    ),
    Mistake(
        "abs, no mask",
        _alibi_mistake(causal=False, distance="abs"),
        "the bias -m |i - j| is right for the past, but without the causal mask the "
        "future is visible: add -inf where key j > query i.",
    ),
    Mistake(
        "bias scaled",
        _alibi_mistake(bias_scaled=True),
        "the bias is divided by sqrt(d_head) too: scale the dot products only, "
        "q k^T / sqrt(d_head) - m_h (i - j).",
    ),
    Mistake(
        "no scaling",
        _alibi_mistake(scale=False),
        "the scores are not divided by sqrt(d_head): q k^T / sqrt(d_head) - m_h (i - j).",
    ),
]


@exercise
def check_alibi_attention(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``fn(q, k, v) -> out`` for ``q, k, v: [batch, pos, n_heads, d_head]``: per head,
    ``softmax(q k^T / sqrt(d_head) - m_h (i - j) + M) v`` with the causal mask ``M`` and
    ``m_h = 2^(-8h/n_heads)``, ``h = 1..n_heads``; same shape as ``q``. Compared with
    :func:`decoding_gpt.attention.alibi_attention` for 4 and 8 heads."""
    gen = torch.Generator().manual_seed(11)
    for n_heads in (4, 8):
        q, k, v = torch.randn(3, 2, 9, n_heads, 4, generator=gen, dtype=torch.float64)
        got_tensor = fn(q.clone(), k.clone(), v.clone())
        got = to_numpy(got_tensor, "out")
        want = alibi_attention(q, k, v)
        if got.shape == (2, n_heads, 9, 4) and got.shape != tuple(want.shape):
            raise CheckError(
                f"out has shape {got.shape} = [batch, n_heads, pos, d_head]: transpose it "
                "back to the layout of q, [batch, pos, n_heads, d_head]."
            )
        judge(
            got,
            want,
            _ALIBI_MISTAKES,
            (q, k, v),
            what=f"out for {n_heads} heads",
            atol=1e-5,  # float32 code is accepted
            hint="scores[h, i, j] = q_i . k_j / sqrt(d_head) - m_h (i - j), -inf for j > i; "
            "softmax over j; then the weighted sum of v over j.",
        )
    passed("check_alibi_attention")
