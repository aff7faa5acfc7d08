"""Exercise checks of lectures 06-07: accept the reference, reject known-wrong answers.

The accepted implementations come from :mod:`decoding_gpt.attention` (the package the
notebooks teach) and from independent formulations (``torch.nn.functional``, complex
numbers); the rejected ones are the mistakes students make, including bugs of earlier
course materials (anti-causal mask, value term ``x_q V``, FFT across the model dimension).
Each test pins the part of the message that names the mistake.

One head and multi-head attention are checked by :mod:`decoding_gpt.checks.components`,
shared with homework 3: the catalogue tests below run every catalogued mistake in both
forms, the lecture's function and the homework's ``nn.Module`` class (homework 3's own
wrong classes are in ``test_checks_hw3.py``).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decoding_gpt.attention import (
    AttentionHead,
    MultiHeadAttention,
    alibi_attention,
    apply_rotary,
    causal_mask,
    causal_mask_bool,
    ov_circuit,
    qk_circuit,
    scaled_dot_product_attention,
    sinusoidal_positional_encoding,
)
from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture06 as l06
from decoding_gpt.checks import lecture07 as l07
from decoding_gpt.checks.components import HEAD_MISTAKES, MULTI_HEAD_MISTAKES, AttentionWeights


def _forms(catalogue) -> list:
    return [pytest.param(m, form, id=f"{m.name}-{form}") for m in catalogue for form in m.forms]


# =================================================================== lecture 06: causal mask
def test_causal_mask_accepts_reference_and_finite_variant():
    l06.check_causal_mask(causal_mask)
    l06.check_causal_mask(lambda n: torch.full((n, n), -1e9).triu(1))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n: causal_mask(n).T, "anti-causal"),  # the old bug: "0 for i <= j"
        (lambda n: torch.full((n, n), -math.inf).triu(0), "diagonal is masked"),
        (lambda n: torch.ones(n, n).tril(), "multiplicative"),
        (lambda n: causal_mask_bool(n), "boolean"),
        (lambda n: torch.zeros(n, n), "no -inf"),
        (lambda n: causal_mask(n + 1), "shape"),
        (lambda n: None, "return"),
    ],
)
def test_causal_mask_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l06.check_causal_mask(wrong)


# =================================================================== lecture 06: one head
def _head_from_package(x, W_Q, W_K, W_V, W_O):
    head = AttentionHead(W_Q.shape[0], W_Q.shape[1]).double()
    with torch.no_grad():
        for name, w in zip(("W_Q", "W_K", "W_V", "W_O"), (W_Q, W_K, W_V, W_O), strict=True):
            getattr(head, name).copy_(w)
        return head(x[None])[0]


def _head_written_out(x, W_Q, W_K, W_V, W_O, *, value_at="key", causal=True, scale=None,
                      softmax_dim=-1, mask_after=False):  # fmt: skip
    q, k, v = x @ W_Q, x @ W_K, x @ W_V
    scores = q @ k.T / (math.sqrt(W_Q.shape[1]) if scale is None else scale)
    n = x.shape[0]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    if causal and not mask_after:
        scores = scores.masked_fill(future, -math.inf)
    pattern = scores.softmax(dim=softmax_dim)
    if mask_after:
        pattern = pattern.masked_fill(future, 0.0)
    if value_at == "query":  # the old bug: out[i] = sum_j A[i, j] x_i W_V
        return pattern.sum(-1, keepdim=True) * v @ W_O
    return pattern @ v @ W_O


def test_attention_head_accepts_references():
    l06.check_attention_head(_head_from_package)
    l06.check_attention_head(_head_written_out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"value_at": "query"}, "x_q V"),  # the old bug
        ({"causal": False}, "WITHOUT the causal mask"),
        ({"scale": 1.0}, "not scaled"),
        ({"scale": math.sqrt(12)}, "sqrt\\(d_model\\)"),
        ({"softmax_dim": -2}, "query axis"),
        ({"mask_after": True}, "AFTER the softmax"),
    ],
)
def test_attention_head_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        l06.check_attention_head(lambda *args: _head_written_out(*args, **kwargs))


def test_attention_head_rejects_shapes_and_none():
    with pytest.raises(CheckError, match="shape"):
        l06.check_attention_head(
            lambda x, W_Q, W_K, W_V, W_O: _head_written_out(x, W_Q, W_K, W_V, W_O)[:, :3]
        )  # noqa: E501
    with pytest.raises(CheckError, match="return"):
        l06.check_attention_head(lambda *args: None)


def _head_class(fn):
    """A homework-style head class whose forward is ``fn(x, W_Q, W_K, W_V, W_O)``."""

    class WrongHead(nn.Module):
        def __init__(self, d_model: int, d_head: int):
            super().__init__()
            self.W_Q, self.W_K, self.W_V = (
                nn.Parameter(torch.zeros(d_model, d_head)) for _ in range(3)
            )
            self.W_O = nn.Parameter(torch.zeros(d_head, d_model))

        def forward(self, x):
            return fn(x, self.W_Q, self.W_K, self.W_V, self.W_O)

    return WrongHead


def test_attention_head_accepts_both_forms():
    l06.check_attention_head(_head_written_out)  # the lecture's function
    l06.check_attention_head(AttentionHead)  # homework 3's class
    l06.check_attention_head(
        _head_class(lambda x, *w: torch.stack([_head_written_out(seq, *w) for seq in x]))
    )


@pytest.mark.parametrize(("mistake", "form"), _forms(HEAD_MISTAKES))
def test_attention_head_rejects_every_catalogued_mistake(mistake, form):
    if form == "function":  # the lecture's head reads one sequence [pos, d_model]
        impl = lambda x, *weights: mistake.wrong(x[None], *weights)[0]  # noqa: E731
    else:
        impl = _head_class(mistake.wrong)
    with pytest.raises(CheckError, match=re.escape(mistake.message)):
        l06.check_attention_head(impl)


# =================================================================== lecture 06: circuits
def test_circuits_accept_reference():
    l06.check_circuits(
        lambda W_Q, W_K, W_V, W_O: (
            qk_circuit(W_Q[None], W_K[None])[0],
            ov_circuit(W_V[None], W_O[None])[0],
        )
    )


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda W_Q, W_K, W_V, W_O: (W_K @ W_Q.T, W_V @ W_O), "W_QK is transposed"),
        (lambda W_Q, W_K, W_V, W_O: (W_Q @ W_K.T / math.sqrt(3), W_V @ W_O), "1/sqrt"),
        (lambda W_Q, W_K, W_V, W_O: (W_Q.T @ W_K, W_V @ W_O), "W_QK has shape"),
        (lambda W_Q, W_K, W_V, W_O: (W_Q @ W_K.T, W_O @ W_V), "value first"),
        (lambda W_Q, W_K, W_V, W_O: (W_Q @ W_K.T, W_O.T @ W_V.T), "W_OV is transposed"),
        (lambda W_Q, W_K, W_V, W_O: W_Q @ W_K.T, "pair"),
        (lambda W_Q, W_K, W_V, W_O: (W_Q @ W_Q.T, W_V @ W_O), "wrong values"),
    ],
)
def test_circuits_reject(wrong, message):
    with pytest.raises(CheckError, match=message):
        l06.check_circuits(wrong)


# =================================================================== lecture 06: multi-head
def _mha_from_package(x, W_Q, W_K, W_V, W_O):
    n_heads, d_model, d_head = W_Q.shape
    mha = MultiHeadAttention(d_model, n_heads, d_head).double()
    with torch.no_grad():
        for name, w in zip(("W_Q", "W_K", "W_V", "W_O"), (W_Q, W_K, W_V, W_O), strict=True):
            getattr(mha, name).copy_(w)
        return mha(x)


def _mha_torch_nn(x, W_Q, W_K, W_V, W_O):
    """torch.nn.MultiheadAttention with the same weights: an independent implementation."""
    n_heads, d_model, d_head = W_Q.shape
    ref = torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True).double()
    # torch splits the projected width into contiguous head blocks: columns h*d_head.. .
    flat = [W.permute(1, 0, 2).reshape(d_model, n_heads * d_head) for W in (W_Q, W_K, W_V)]
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat(flat, dim=1).T)  # torch stores W^T: [3 d, d]
        ref.out_proj.weight.copy_(W_O.reshape(n_heads * d_head, d_model).T)
        future = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        out, _ = ref(x, x, x, attn_mask=future, need_weights=False)
    return out


def _mha_loop(x, W_Q, W_K, W_V, W_O, reduce="sum", causal=True, scale=None, bad_reshape=False):
    q, k, v = (torch.einsum("bpm,hmd->bhpd", x, W) for W in (W_Q, W_K, W_V))
    z = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    n_heads, d_head, d_model = W_O.shape
    if bad_reshape:
        return z.reshape(x.shape[0], x.shape[1], -1) @ W_O.reshape(n_heads * d_head, d_model)
    per_head = torch.einsum("bhpd,hdm->bhpm", z, W_O)
    return {"sum": per_head.sum(1), "mean": per_head.mean(1), "first": per_head[:, 0]}[reduce]


def test_multi_head_attention_accepts_references():
    l06.check_multi_head_attention(_mha_from_package)
    l06.check_multi_head_attention(_mha_torch_nn)
    l06.check_multi_head_attention(_mha_loop)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduce": "mean"}, "MEAN"),
        ({"reduce": "first"}, "head 0 alone"),
        ({"causal": False}, "without the causal mask"),
        ({"scale": 12**-0.5}, "sqrt\\(d_model\\)"),
        ({"bad_reshape": True}, "transpose\\(1, 2\\)"),
    ],
)
def test_multi_head_attention_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        l06.check_multi_head_attention(lambda *args: _mha_loop(*args, **kwargs))


def test_multi_head_attention_rejects_stacked_heads():
    with pytest.raises(CheckError, match="summed, not stacked"):
        l06.check_multi_head_attention(
            lambda x, W_Q, W_K, W_V, W_O: torch.stack([_mha_loop(x, W_Q, W_K, W_V, W_O)] * 3, 1)
        )


def _multi_head_class(fn):
    """A homework-style attention class whose forward is ``fn(x, AttentionWeights)``."""

    class WrongAttention(nn.Module):
        def __init__(self, d_model: int, n_heads: int, d_head: int):
            super().__init__()
            shapes = {"W_Q": (n_heads, d_model, d_head), "W_K": (n_heads, d_model, d_head),
                      "W_V": (n_heads, d_model, d_head), "W_O": (n_heads, d_head, d_model),
                      "b_Q": (n_heads, d_head), "b_K": (n_heads, d_head),
                      "b_V": (n_heads, d_head), "b_O": (d_model,)}  # fmt: skip
            for name, shape in shapes.items():
                setattr(self, name, nn.Parameter(torch.zeros(shape)))

        def forward(self, x):
            return fn(x, AttentionWeights(*(getattr(self, n) for n in AttentionWeights._fields)))

    return WrongAttention


class SlowReferenceAttention(MultiHeadAttention):
    """The course's attention with its fused path (sdpa, forbidden in a class) off."""

    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__(d_model, n_heads, d_head, use_fast_attention=False)


def test_multi_head_attention_accepts_both_forms():
    l06.check_multi_head_attention(_mha_loop)  # the lecture's function
    l06.check_multi_head_attention(SlowReferenceAttention)  # homework 3's class


def _without_biases(fn):
    """The lecture's form: ``fn`` with the (here zero) biases filled in."""

    def run(x, W_Q, W_K, W_V, W_O):
        zeros = [torch.zeros(W_Q.shape[0], W_Q.shape[-1], dtype=x.dtype)] * 3
        return fn(x, AttentionWeights(W_Q, W_K, W_V, W_O, *zeros, torch.zeros(x.shape[-1])))

    return run


@pytest.mark.parametrize(("mistake", "form"), _forms(MULTI_HEAD_MISTAKES))
def test_multi_head_attention_rejects_every_catalogued_mistake(mistake, form):
    if form == "function":
        impl = _without_biases(mistake.wrong)
    else:
        impl = _multi_head_class(mistake.wrong)
    with pytest.raises(CheckError, match=re.escape(mistake.message)):
        l06.check_multi_head_attention(impl)


# =================================================================== lecture 06: KV cache
def _cached_reference(x_new, k_cache, v_cache, W_Q, W_K, W_V, W_O):
    """Independent of the package: F.scaled_dot_product_attention with an explicit mask."""
    q, k, v = (torch.einsum("pm,hmd->hpd", x_new, W) for W in (W_Q, W_K, W_V))
    k, v = torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1)
    n_new, n_all = q.shape[1], k.shape[1]
    allowed = torch.ones(n_all, n_all, dtype=torch.bool).tril()[-n_new:]  # last n_new rows
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return torch.einsum("hqd,hdm->qm", z, W_O), k, v


def _cached_wrong(x_new, k_cache, v_cache, W_Q, W_K, W_V, W_O, *, mask="causal", keys="all",
                  scale=None, cat_dim=1, return_old=False):  # fmt: skip
    q, k_new, v_new = (torch.einsum("pm,hmd->hpd", x_new, W) for W in (W_Q, W_K, W_V))
    k_all, v_all = torch.cat([k_cache, k_new], cat_dim), torch.cat([v_cache, v_new], cat_dim)
    k, v = {"all": (k_all, v_all), "past": (k_cache, v_cache), "new": (k_new, v_new)}[keys]
    scores = q @ k.transpose(-2, -1) / (scale or math.sqrt(W_Q.shape[-1]))
    if mask == "top_left":  # the square mask of the new tokens, padded: is_causal=True
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -math.inf)
    elif mask == "square":  # causal_mask(n_new): does not broadcast once n_past > 0
        scores = scores + causal_mask(x_new.shape[0]).to(scores.dtype)
    elif mask == "causal":
        n_new, n_all = scores.shape[-2:]
        scores = scores + causal_mask(n_all).to(scores.dtype)[-n_new:]
    out = torch.einsum("hqk,hkd,hdm->qm", scores.softmax(-1).nan_to_num(0.0), v, W_O)
    return (out, k_cache, v_cache) if return_old else (out, k_all, v_all)


def test_cached_attention_accepts_references():
    l06.check_cached_attention(_cached_reference)
    l06.check_cached_attention(_cached_wrong)  # with its defaults it is right


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": "top_left"}, "not shifted by the cache"),
        ({"mask": "none"}, "each other's future"),
        ({"mask": "square"}, "RuntimeError .* mask is \\[n_new, n_past \\+ n_new\\]"),
        ({"keys": "past", "mask": "none"}, "do not attend to themselves"),
        ({"keys": "new"}, "ignores the cache"),
        ({"scale": math.sqrt(12)}, "sqrt\\(d_model\\)"),
        ({"cat_dim": 0}, "position axis \\(dim=1\\)"),
        ({"return_old": True}, "along the position axis"),
    ],
)
def test_cached_attention_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        l06.check_cached_attention(lambda *args: _cached_wrong(*args, **kwargs))


def test_cached_attention_rejects_swapped_caches_and_wrong_returns():
    def swapped(*args):
        out, k, v = _cached_reference(*args)
        return out, v, k

    with pytest.raises(CheckError, match="returned k_cache"):
        l06.check_cached_attention(swapped)
    with pytest.raises(CheckError, match="triple"):
        l06.check_cached_attention(lambda *args: _cached_reference(*args)[0])


def test_cached_attention_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError(f"{STUB_PREFIX} write `attend_with_cache` here.")

    with pytest.raises(NotAttempted, match="attend_with_cache"):
        l06.check_cached_attention(stub)


# =================================================================== lecture 07: sinusoidal
def _sin_table(n_ctx, d, swap=False, halves=False, exponent=2.0, start=0):
    p = torch.arange(start, start + n_ctx, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)
    angles = p / 10000 ** (exponent * i / d)
    sin, cos = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
    if halves:
        return torch.cat([sin, cos], dim=1)
    return torch.stack([sin, cos], dim=-1).flatten(1)


def test_sinusoidal_accepts_reference():
    l07.check_sinusoidal(sinusoidal_positional_encoding)
    l07.check_sinusoidal(_sin_table)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, d: _sin_table(n, d, swap=True), "swapped"),
        (lambda n, d: _sin_table(n, d, halves=True), "interleaves"),
        (lambda n, d: _sin_table(n, d, exponent=1.0), "exponent"),
        (lambda n, d: _sin_table(n, d, start=1), "positions start at 1"),
        (lambda n, d: _sin_table(n, d).T, "transpose"),
        (lambda n, d: _sin_table(n, d)[:, :-1], "shape"),
        (lambda n, d: 2 * _sin_table(n, d), "wrong values"),
    ],
)
def test_sinusoidal_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l07.check_sinusoidal(wrong)


# =================================================================== lecture 07: RoPE
def _rope_matrix(x, base, half=False, sign=1.0, start=0, exponent=2.0):
    """RoPE by explicit 2x2 rotation matrices (no complex numbers)."""
    n_pos, d = x.shape[1], x.shape[-1]
    theta = base ** (-exponent * torch.arange(d // 2, dtype=x.dtype) / d)
    angle = sign * torch.arange(start, start + n_pos, dtype=x.dtype)[:, None] * theta
    cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]
    a, b = (x[..., : d // 2], x[..., d // 2 :]) if half else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.cat([ra, rb], -1) if half else torch.stack([ra, rb], -1).flatten(-2)


def test_rotary_accepts_references():
    l07.check_rotary(apply_rotary)
    l07.check_rotary(_rope_matrix)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, b: _rope_matrix(x, b, half=True), "rotate-half"),
        (lambda x, b: _rope_matrix(x, b, sign=-1.0), "wrong way"),
        (lambda x, b: _rope_matrix(x, b, start=1), "positions start at 1"),
        (lambda x, b: _rope_matrix(x, b, exponent=1.0), "base\\^\\(-2i/d\\)"),
        (lambda x, b: x.clone(), "nothing was rotated"),
        (lambda x, b: x + 0.1, "length"),
        (lambda x, b: _rope_matrix(x, b)[..., :-2], "shape"),
    ],
)
def test_rotary_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l07.check_rotary(wrong)


# =================================================================== lecture 07: spectrum
def _spectrum_by_sum(w):
    """The DFT written as a sum (no FFT library): an independent reference."""
    n = w.shape[0]
    f = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
    p = torch.arange(n, dtype=torch.float64)[None, :]
    angle = -2 * math.pi * f * p / n  # [freq, pos]
    real, imag = angle.cos() @ w, angle.sin() @ w
    return (real**2 + imag**2).sqrt()


def test_position_spectrum_accepts_references():
    l07.check_position_spectrum(lambda w: torch.fft.rfft(w, dim=0).abs())
    l07.check_position_spectrum(_spectrum_by_sum)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda w: torch.fft.rfft(w, dim=-1).abs(), "MODEL dimension"),  # the old bug
        (lambda w: torch.fft.rfft(w.T, dim=-1).abs(), "spectrum is symmetric|expected"),
        (lambda w: torch.fft.rfft(w, dim=-1).abs().T, "MODEL dimension, transposed"),
        (lambda w: torch.fft.fft(w, dim=0).abs(), "full fft"),
        (lambda w: torch.fft.rfft(w, dim=0), "complex"),
        (lambda w: torch.fft.rfft(w, dim=0).abs() ** 2, "squared"),
        (lambda w: torch.fft.rfft(w, dim=0, norm="ortho").abs(), "ortho"),
        (lambda w: torch.fft.rfft(w, dim=0).abs().T, "frequency axis first"),
    ],
)
def test_position_spectrum_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l07.check_position_spectrum(wrong)


# ----------------------------------------------------------------------------- ALiBi


def _alibi_loop(q, k, v, first_h=1, sign=-1.0, causal=True, scale=True, reverse=False,
                bias_scaled=False):  # fmt: skip
    """ALiBi one head, one query at a time: the student's straightforward loops."""
    batch, n_pos, n_heads, d_head = q.shape
    out = torch.zeros_like(q)
    for h in range(n_heads):
        head = n_heads - 1 - h if reverse else h
        m = 2.0 ** (-8.0 * (head + first_h) / n_heads)
        for i in range(n_pos):
            keys = range(n_pos) if not causal else range(i + 1)
            scores = torch.stack([(q[:, i, h] * k[:, j, h]).sum(-1) for j in keys], -1)
            bias = torch.tensor([sign * m * (i - j) for j in keys], dtype=q.dtype)
            divisor = math.sqrt(d_head) if scale else 1.0
            scores = (scores + bias) / divisor if bias_scaled else scores / divisor + bias
            weights = scores.softmax(-1)  # [batch, keys]
            out[:, i, h] = torch.einsum("bk,bkd->bd", weights, v[:, : len(keys), h])
    return out


def _alibi_stub(q, k, v):
    raise NotImplementedError(f"{STUB_PREFIX} write `alibi_attention` here.")


def test_alibi_attention_accepts_references():
    l07.check_alibi_attention(alibi_attention)
    l07.check_alibi_attention(_alibi_loop)
    l07.check_alibi_attention(lambda q, k, v: alibi_attention(q.float(), k.float(), v.float()))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda q, k, v: _alibi_loop(q, k, v, first_h=0), "start at 2\\^0 = 1"),
        (lambda q, k, v: _alibi_loop(q, k, v, reverse=True), "reverse order"),
        (lambda q, k, v: _alibi_loop(q, k, v, sign=1.0), "rewards distance"),
        (lambda q, k, v: _alibi_loop(q, k, v, causal=False), "future is visible"),
        (lambda q, k, v: _alibi_loop(q, k, v, bias_scaled=True), "divided by sqrt\\(d_head\\) too"),
        (lambda q, k, v: _alibi_loop(q, k, v, scale=False), "not divided by sqrt"),
        (lambda q, k, v: alibi_attention(q, k, v).transpose(1, 2), "transpose it"),
        (
            lambda q, k, v: scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2),
            "plain causal attention",
        ),
    ],
)
def test_alibi_attention_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l07.check_alibi_attention(wrong)


def test_alibi_attention_refuses_a_stub():
    with pytest.raises(NotAttempted, match="alibi_attention"):
        l07.check_alibi_attention(_alibi_stub)
