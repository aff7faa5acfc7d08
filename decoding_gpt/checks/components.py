"""Checks of the transformer's components: one check per concept, for both forms.

Lectures 06 and 08 ask for each component as a plain function (``layer_norm(x, w, b,
eps)``); homework 3 asks for it as an ``nn.Module`` class (``LayerNorm(d_model, eps)``).
Each check here takes either (through the adapters of
:mod:`decoding_gpt.checks.adapters`), runs it on seeded inputs next to an independent
reference (``F.layer_norm``, attention written out here, ``F.cross_entropy``, the
package's :class:`~decoding_gpt.transformer.TransformerBlock`), and when the answer is
wrong names the mistake: it compares the answer with every entry of the concept's
catalogue of classic mistakes (``*_MISTAKES``, a table of :class:`~decoding_gpt.checks.
Mistake`: name, wrong reference implementation, message) and only then falls back to a
generic comparison. Several mistakes are bugs of earlier course materials: the value
term ``x_q V``, targets shifted along the batch axis.

==============================  ====================================================
check                           the function form / the class form
==============================  ====================================================
:func:`check_attention_head`    ``fn(x [pos, d_model], W_Q, W_K, W_V, W_O)`` /
                                ``cls(d_model, d_head)``, ``forward(x [batch, pos, d_model])``
:func:`check_multi_head_        ``fn(x [batch, pos, d_model], W_Q, W_K, W_V, W_O)`` /
attention`                      ``cls(d_model, n_heads, d_head)`` with biases ``b_Q ... b_O``
:func:`check_layer_norm`        ``fn(x, w, b, eps)`` / ``cls(d_model, eps)`` with ``w, b``
:func:`check_pre_ln_block`      ``fn(x, ln1, attn, ln2, mlp)`` / ``cls(cfg)`` with
                                submodules ``ln1, attn, ln2, mlp``
:func:`check_next_token_loss`   ``fn(logits, tokens)`` (one form)
==============================  ====================================================

Function forms are checked in float64 (tight tolerances), classes in their float32.
Classes also pass ``name_map`` when their parameter names differ from TransformerLens's,
and multi-head attention classes must not use ``nn.MultiheadAttention`` or
``F.scaled_dot_product_attention`` (homework 3's rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    diagnose,
    exercise,
    judge,
    passed,
    to_numpy,
)
from decoding_gpt.checks.adapters import (
    Adapted,
    NameMap,
    build_module,
    check_no_forbidden_modules,
    is_module_class,
    load_weights,
    randomise,
    seeded,
)
from decoding_gpt.transformer import GPTConfig, TransformerBlock

__all__ = [
    "BLOCK_MISTAKES",
    "HEAD_MISTAKES",
    "LAYER_NORM_MISTAKES",
    "LOSS_MISTAKES",
    "MULTI_HEAD_MISTAKES",
    "AttentionWeights",
    "assert_causal",
    "check_attention_head",
    "check_layer_norm",
    "check_multi_head_attention",
    "check_next_token_loss",
    "check_pre_ln_block",
]


def _adapt(
    impl: Any,
    atol: tuple[float, float],
    from_class: Callable[[type], Callable[..., Any]],
    from_function: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda fn: fn,
) -> Adapted:
    """``impl`` as one function of the check's inputs, with its form's dtype and ``atol``
    (``atol = (function form, class form)``)."""
    if is_module_class(impl):
        return Adapted(from_class(impl), "class", torch.float32, atol[1])
    if not callable(impl):
        raise CheckError(f"pass a function or an nn.Module class, got {type(impl).__name__}.")
    return Adapted(from_function(impl), "function", torch.float64, atol[0])


def _attend(
    q: Float[Tensor, "... q d_head"],
    k: Float[Tensor, "... k d_head"],
    v: Float[Tensor, "... k d_head"],
    causal: bool = True,
    scale: float | None = None,
) -> Float[Tensor, "... q d_head"]:
    """``softmax(q k^T * scale + M) v``, ``scale`` by default ``1 / sqrt(d_head)``.

    Written out rather than ``F.scaled_dot_product_attention``, so that a wrong reference
    of the catalogue can also run inside a homework class, where sdpa is forbidden.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # [..., q, k]
    if causal:
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, -math.inf)
    return scores.softmax(-1) @ v


# ======================================================================== one head
def _head(
    x: Float[Tensor, "batch pos d_model"],
    W_Q: Tensor,
    W_K: Tensor,
    W_V: Tensor,
    W_O: Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """``softmax(x W_Q (x W_K)^T / sqrt(d_head) + M) x W_V W_O``, the reference head."""
    return _attend(x @ W_Q, x @ W_K, x @ W_V, causal, scale) @ W_O


def _head_by_hand(
    x: Tensor,
    W_Q: Tensor,
    W_K: Tensor,
    W_V: Tensor,
    W_O: Tensor,
    softmax_dim: int = -1,
    mask_after: bool = False,
) -> Tensor:
    """The head written out, with the softmax axis and where the mask goes as switches."""
    scores = (x @ W_Q) @ (x @ W_K).transpose(-2, -1) / math.sqrt(W_Q.shape[-1])
    future = torch.ones(x.shape[-2], x.shape[-2], dtype=torch.bool).triu(1)
    if mask_after:
        pattern = scores.softmax(-1).masked_fill(future, 0.0)
    else:
        pattern = scores.masked_fill(future, -math.inf).softmax(softmax_dim).nan_to_num()
    return pattern @ (x @ W_V) @ W_O


HEAD_MISTAKES = (
    Mistake(
        "values_at_query",
        lambda x, W_Q, W_K, W_V, W_O: x @ W_V @ W_O,
        "out[i] = x_i W_V W_O: the values are taken at the QUERY position (x_q V). Each row "
        "of the pattern sums to 1, so this ignores every other position and moves no "
        "information. Output i is sum_j pattern[i, j] (x_j W_V) W_O: pattern @ (x @ W_V).",
    ),
    Mistake(
        "no_output_projection",
        lambda x, W_Q, W_K, W_V, W_O: _attend(x @ W_Q, x @ W_K, x @ W_V),
        "out is z = pattern @ v, of width d_head: multiply z by W_O [d_head, d_model] to "
        "write back to the residual stream.",
    ),
    Mistake(
        "no_causal_mask",
        partial(_head, causal=False),
        "out matches attention WITHOUT the causal mask: it attends to future positions "
        "(query i reads keys j > i). Add M (0 for j <= i, -inf for j > i) to the scores "
        "before the softmax.",
    ),
    Mistake(
        "no_scale",
        partial(_head, scale=1.0),
        "the scores are not scaled: the head is missing the 1/sqrt(d_head) scale. Divide "
        "q k^T by sqrt(d_head) before the softmax.",
    ),
    Mistake(
        "scale_sqrt_d_model",
        lambda x, *weights: _head(x, *weights, scale=x.shape[-1] ** -0.5),
        "the scores are divided by sqrt(d_model): divide them by sqrt(d_head), not "
        "sqrt(d_model); d_head is the dimension of q and k.",
    ),
    Mistake(
        "softmax_over_queries",
        partial(_head_by_hand, softmax_dim=-2),
        "the softmax runs over the query axis (dim=-2): each ROW (one query, all keys) must "
        "sum to 1, so use softmax(dim=-1).",
    ),
    Mistake(
        "mask_after_softmax",
        partial(_head_by_hand, mask_after=True),
        "the mask is applied AFTER the softmax (zeroing future weights): the rows no longer "
        "sum to 1. Add -inf to the scores BEFORE the softmax instead.",
    ),
)


def _head_from_class(cls: type, name_map: NameMap) -> Callable[..., Tensor]:
    """The class form as ``f(x [batch, pos, d_model], W_Q, W_K, W_V, W_O)``."""

    def run(x: Tensor, W_Q: Tensor, W_K: Tensor, W_V: Tensor, W_O: Tensor) -> Tensor:
        head = build_module(cls, *W_Q.shape, what="your AttentionHead class")
        weights = {"W_Q": W_Q, "W_K": W_K, "W_V": W_V, "W_O": W_O}
        load_weights(head, weights, name_map, "attention head")
        return head(x)

    return run


def _head_over_batch(fn: Callable[..., Any]) -> Callable[..., Tensor]:
    """The lecture's head reads one sequence ``[pos, d_model]``: map it over the batch."""

    def run(x: Tensor, *weights: Tensor) -> Tensor:
        outs = [to_numpy(fn(seq.clone(), *(w.clone() for w in weights)), "out") for seq in x]
        return torch.as_tensor(np.stack(outs))

    return run


@exercise
def check_attention_head(impl: Callable[..., Any], name_map: NameMap = None) -> None:
    """One causal attention head,
    ``out = softmax(x W_Q (x W_K)^T / sqrt(d_head) + M) x W_V W_O`` with
    ``W_Q, W_K, W_V [d_model, d_head]``, ``W_O [d_head, d_model]`` and
    ``M[i, j] = -inf`` for keys ``j > i``.

    ``impl`` is a function ``fn(x [pos, d_model], W_Q, W_K, W_V, W_O) -> [pos, d_model]``
    (lecture 06) or a class ``cls(d_model, d_head)`` whose ``forward(x [batch, pos,
    d_model])`` uses its parameters ``W_Q, W_K, W_V, W_O`` (homework 3; other names via
    ``name_map``). Compared with attention written out here, on the same weights,
    whose ``W_Q, W_K`` make scores of order 1-5, so the softmax is far from uniform and a
    wrong scale shows.
    """
    answer = _adapt(
        impl, (1e-8, 1e-5), partial(_head_from_class, name_map=name_map), _head_over_batch
    )
    gen = torch.Generator().manual_seed(6)
    for batch, pos, d_model, d_head in [(2, 6, 12, 3), (1, 5, 12, 4)]:
        x = torch.randn(batch, pos, d_model, generator=gen, dtype=torch.float64)
        shapes = [(d_model, d_head)] * 3 + [(d_head, d_model)]
        weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        weights[0], weights[1] = 0.6 * weights[0], 0.6 * weights[1]
        x, weights = x.to(answer.dtype), [w.to(answer.dtype) for w in weights]
        want = _head(x, *weights)
        got = to_numpy(answer.run(x.clone(), *(w.clone() for w in weights)), "out")
        judge(
            got,
            want,
            HEAD_MISTAKES,
            (x, *weights),
            what=f"out for x of shape {[batch, pos, d_model]}",
            atol=answer.atol,
            hint="out = softmax(q k^T / sqrt(d_head) + M) v W_O with q, k, v = x W_Q, x W_K, "
            "x W_V: pattern [pos, pos] @ values [pos, d_head] @ W_O [d_head, d_model].",
            form=answer.form,
        )
    passed("check_attention_head")


# ======================================================================== multi-head
class AttentionWeights(NamedTuple):
    """Per-head weights in TransformerLens's layout (biases are zero in the function form,
    which takes none)."""

    W_Q: Float[Tensor, "n_heads d_model d_head"]
    W_K: Float[Tensor, "n_heads d_model d_head"]
    W_V: Float[Tensor, "n_heads d_model d_head"]
    W_O: Float[Tensor, "n_heads d_head d_model"]
    b_Q: Float[Tensor, "n_heads d_head"]
    b_K: Float[Tensor, "n_heads d_head"]
    b_V: Float[Tensor, "n_heads d_head"]
    b_O: Float[Tensor, " d_model"]


def _z(
    x: Float[Tensor, "batch pos d_model"],
    p: AttentionWeights,
    causal: bool = True,
    scale: float | None = None,
) -> Float[Tensor, "batch head pos d_head"]:
    q, k, v = (
        torch.einsum("bpm,hmd->bhpd", x, W) + b[:, None]
        for W, b in ((p.W_Q, p.b_Q), (p.W_K, p.b_K), (p.W_V, p.b_V))
    )
    return _attend(q, k, v, causal, scale)


def _per_head(
    x: Tensor, p: AttentionWeights, **kwargs: Any
) -> Float[Tensor, "batch head pos d_model"]:
    """Each head's output ``z_h W_O[h]``, before the sum over heads and ``b_O``."""
    return torch.einsum("bhpd,hdm->bhpm", _z(x, p, **kwargs), p.W_O)


def _multi_head(x: Tensor, p: AttentionWeights) -> Float[Tensor, "batch pos d_model"]:
    """The reference: ``sum_h z_h W_O[h] + b_O``."""
    return _per_head(x, p).sum(1) + p.b_O


def _reshaped_without_transpose(x: Tensor, p: AttentionWeights) -> Tensor:
    z = _z(x, p)  # [batch, head, pos, d_head]
    n_heads, d_head, d_model = p.W_O.shape
    flat = z.reshape(x.shape[0], x.shape[1], n_heads * d_head)  # mixes heads and positions
    return flat @ p.W_O.reshape(n_heads * d_head, d_model) + p.b_O


MULTI_HEAD_MISTAKES = (
    Mistake(
        "heads_averaged",
        lambda x, p: _per_head(x, p).mean(1) + p.b_O,
        "you averaged the heads: out is the MEAN of the heads' outputs, but multi-head "
        "attention SUMS them (the same as concatenating z and multiplying by the stacked W_O).",
    ),
    Mistake(
        "first_head_only",
        lambda x, p: _per_head(x, p)[:, 0] + p.b_O,
        "out equals head 0 alone: loop over (or broadcast across) all n_heads heads and sum "
        "their outputs.",
    ),
    Mistake(
        "no_causal_mask",
        lambda x, p: _per_head(x, p, causal=False).sum(1) + p.b_O,
        "out matches attention without the causal mask: information flows from the future "
        "into the past, the causal mask is missing. Each head must mask keys j > i.",
    ),
    Mistake(
        "no_scale",
        lambda x, p: _per_head(x, p, scale=1.0).sum(1) + p.b_O,
        "the scores are not scaled: each head divides q k^T by sqrt(d_head) (the "
        "1/sqrt(d_head) scale).",
    ),
    Mistake(
        "scale_sqrt_d_model",
        lambda x, p: _per_head(x, p, scale=x.shape[-1] ** -0.5).sum(1) + p.b_O,
        "the scores are divided by sqrt(d_model); each head scales by sqrt(d_head).",
    ),
    Mistake(
        "heads_reshaped_without_transpose",
        _reshaped_without_transpose,
        "z [batch, head, pos, d_head] was flattened to [batch, pos, head * d_head] by a "
        "reshape without a transpose: transpose(1, 2) before flattening, or the positions "
        "and heads get mixed up.",
    ),
    Mistake(
        "no_output_bias",
        lambda x, p: _per_head(x, p).sum(1),
        "attn(x) is missing the output bias b_O: out = sum_h z_h W_O[h] + b_O.",
        forms=("class",),
    ),
)


def _multi_head_from_class(cls: type, name_map: NameMap) -> Callable[[AttentionWeights], Any]:
    """The class form as ``bind(weights) -> f(x)``: build, check for forbidden modules,
    load the weights."""

    def bind(p: AttentionWeights) -> nn.Module:
        n_heads, d_model, d_head = p.W_Q.shape
        attn = build_module(cls, d_model, n_heads, d_head, what="your MultiHeadAttention class")
        probe = torch.randn(2, 5, d_model, generator=torch.Generator().manual_seed(7))
        check_no_forbidden_modules(attn, probe)
        load_weights(attn, p._asdict(), name_map, "multi-head attention")
        return attn

    return bind


def _multi_head_function(fn: Callable[..., Any]) -> Callable[[AttentionWeights], Any]:
    """The function form as ``bind(weights) -> f(x)`` (it takes no biases)."""
    return lambda p: lambda x: fn(x, *(w.clone() for w in p[:4]))


def _attention_weights(
    gen: torch.Generator, d_model: int, n_heads: int, d_head: int, biases: bool, dtype: torch.dtype
) -> AttentionWeights:
    """Seeded weights; ``W_Q, W_K`` halved so the softmax is neither flat nor one-hot."""
    shapes: list[tuple[int, ...]] = [*[(n_heads, d_model, d_head)] * 3, (n_heads, d_head, d_model)]
    shapes += [*[(n_heads, d_head)] * 3, (d_model,)]
    scales = [0.5, 0.5, 0.5, 0.5] + [0.4 if biases else 0.0] * 4
    return AttentionWeights(
        *(
            s * torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            for shape, s in zip(shapes, scales, strict=True)
        )
    )


# [batch, pos, d_model, n_heads, d_head]; for classes also d_head != d_model / n_heads,
# so a class that derives d_head from d_model instead of using its argument fails
_MULTI_HEAD_SIZES = [(2, 5, 12, 3, 4)]
_CLASS_ONLY_MULTI_HEAD_SIZES = [(2, 7, 12, 3, 5)]


@exercise
def check_multi_head_attention(impl: Callable[..., Any], name_map: NameMap = None) -> None:
    """Causal multi-head attention, ``out = sum_h z_h W_O[h] + b_O`` with
    ``z_h = softmax(q_h k_h^T / sqrt(d_head) + M) v_h`` and ``q_h = x W_Q[h] + b_Q[h]``.

    ``impl`` is a function ``fn(x [batch, pos, d_model], W_Q, W_K, W_V, W_O)`` with
    ``W_Q, W_K, W_V [n_heads, d_model, d_head]``, ``W_O [n_heads, d_head, d_model]`` and
    no biases (lecture 06), or a class ``cls(d_model, n_heads, d_head)`` with those
    parameters plus ``b_Q, b_K, b_V [n_heads, d_head]``, ``b_O [d_model]`` (homework 3;
    no forbidden modules, see :func:`~decoding_gpt.checks.adapters.
    check_no_forbidden_modules`). Compared with attention written out here, on the same
    weights; also checked causal by perturbing one position at a time.
    """
    answer = _adapt(
        impl,
        (1e-8, 1e-4),
        partial(_multi_head_from_class, name_map=name_map),
        _multi_head_function,
    )
    sizes = _MULTI_HEAD_SIZES + (_CLASS_ONLY_MULTI_HEAD_SIZES if answer.form == "class" else [])
    gen = torch.Generator().manual_seed(8)
    for batch, pos, d_model, n_heads, d_head in sizes:
        x = torch.randn(batch, pos, d_model, generator=gen, dtype=torch.float64).to(answer.dtype)
        p = _attention_weights(gen, d_model, n_heads, d_head, answer.form == "class", answer.dtype)
        attn = answer.run(p)
        want = _multi_head(x, p)
        got = to_numpy(attn(x.clone()), "out")
        if got.shape != tuple(want.shape):
            raise CheckError(
                f"out has shape {got.shape}, expected {tuple(want.shape)} = [batch, pos, "
                "d_model]: the heads' outputs z_h W_O[h] are summed, not stacked."
            )
        diagnose(got, want, MULTI_HEAD_MISTAKES, (x, p), answer.atol, answer.form)
        if np.isnan(got).any():
            raise CheckError(
                "attn(x) has NaNs: 0 * -inf = NaN (multiply-by-mask), or a query with every "
                "key masked. Add a 0/-inf mask (or masked_fill) and keep the diagonal."
            )
        assert_causal(attn, x, _bump_position, "position")
        compare_tensors(
            got,
            want,
            "out",
            atol=answer.atol,
            hint="Check q = x W_Q[h] + b_Q[h] per head (einsum 'bpm,hmd->bphd'), the scale "
            "1/sqrt(d_head), and that heads are not mixed by a reshape without a transpose; "
            "out = sum over h of softmax(...)_h (x W_V[h]) W_O[h] (+ b_O).",
        )
    passed("check_multi_head_attention")


def _bump_position(x: Tensor, pos: int) -> Tensor:
    x = x.clone()
    x[:, pos] += 1.0
    return x


# ======================================================================== causality
def _changed_positions(
    f: Callable[[Tensor], Any], a: Tensor, b: Tensor, tol: float = 1e-5
) -> list[int]:
    """Positions (axis 1) whose outputs differ between inputs ``a`` and ``b``."""
    with torch.no_grad():
        diff = np.abs(to_numpy(f(a), "output") - to_numpy(f(b), "output"))
    return [p for p in range(diff.shape[1]) if diff[:, p].max() > tol]


def assert_causal(f: Callable[[Tensor], Any], x: Tensor, perturb: Callable, what: str) -> None:
    """Changing input position ``t`` (``perturb(x, t)``) must leave the outputs at every
    ``p < t`` unchanged and change the output at ``t``; the message names the mask bug
    (missing, off by one, transposed) the leak pattern points to."""
    n = x.shape[1]
    for t in (n - 1, n // 2):
        changed = _changed_positions(f, x, perturb(x, t))
        early = [p for p in changed if p < t]
        if early and t - 1 in early and 0 not in early:  # a leak of one position per layer
            raise CheckError(
                f"changing {what} {t} changed the outputs at positions {early} just before "
                f"it: the mask is off by one (query i sees key i + 1). Hide keys j > i: "
                "torch.triu(ones, diagonal=1) is the part to mask."
            )
        if early:
            later = _changed_positions(f, x, perturb(x, 0))
            hint = (
                " The mask looks transposed (triu kept instead of tril): position 0 "
                "reads the whole sequence while later positions ignore position 0."
                if not [p for p in later if p > 0]
                else " Is the causal mask missing?"
            )
            raise CheckError(
                f"changing {what} {t} changed the outputs at earlier positions {early[:5]}: "
                f"information flows from the future into the past.{hint}"
            )
        if t not in changed:
            raise CheckError(
                f"changing {what} {t} did not change the output at position {t}: query i "
                "must attend key i itself (mask only j > i) and read x at the key positions."
            )


# ======================================================================== layer norm
def _normalise(
    x: Tensor, eps: float, dim: int = -1, unbiased: bool = False, eps_inside: bool = True
) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``dim``, or one of its classic variants."""
    centred = x - x.mean(dim, keepdim=True)
    var = x.var(dim, unbiased=unbiased, keepdim=True)
    return centred / ((var + eps).sqrt() if eps_inside else var.sqrt() + eps)


def _rms_norm(x: Tensor, eps: float) -> Tensor:
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


LAYER_NORM_MISTAKES = (
    Mistake(
        "unbiased_variance",
        lambda x, w, b, eps: _normalise(x, eps, unbiased=True) * w + b,
        "you used the unbiased variance (divides by d_model - 1; torch.var's default). "
        "LayerNorm uses the biased one, the mean of (x - mean)^2: "
        "x.var(-1, unbiased=False) or ((x - mu)**2).mean(-1).",
    ),
    Mistake(
        "eps_outside_sqrt",
        lambda x, w, b, eps: _normalise(x, eps, eps_inside=False) * w + b,
        "eps goes INSIDE the square root: (x - mu) / sqrt(var + eps), not "
        "(x - mu) / (sqrt(var) + eps), i.e. not std + eps.",
    ),
    Mistake(
        "rms_norm",
        lambda x, w, b, eps: _rms_norm(x, eps) * w + b,
        "the mean was not subtracted: x / sqrt(mean(x^2) + eps) is RMSNorm (used by LLaMA), "
        "not LayerNorm. Centre first: x - x.mean(-1, keepdim=True).",
    ),
    Mistake(
        "batch_axis",
        lambda x, w, b, eps: _normalise(x, eps, dim=0) * w + b,
        "you normalised over the batch axis (dim 0): that is BatchNorm. LayerNorm normalises "
        "each position's vector over d_model, the LAST axis (dim=-1, keepdim=True).",
    ),
    Mistake(
        "position_axis",
        lambda x, w, b, eps: _normalise(x, eps, dim=1) * w + b,
        "you normalised over the position axis (dim 1), mixing different tokens. LayerNorm "
        "normalises each position's vector on its own, over the LAST axis (d_model, "
        "dim=-1, keepdim=True).",
    ),
    Mistake(
        "no_gain_no_bias",
        lambda x, w, b, eps: _normalise(x, eps),
        "the gain w and bias b are missing: return x_hat * w + b.",
    ),
    Mistake(
        "bias_before_gain",
        lambda x, w, b, eps: (_normalise(x, eps) + b) * w,
        "the bias is added before the gain multiplies: it is x_hat * w + b, not (x_hat + b) * w.",
    ),
)


def _layer_norm_from_class(cls: type, name_map: NameMap) -> Callable[..., Tensor]:
    """The class form as ``f(x, w, b, eps)``: ``cls(d_model, eps)`` holding ``w, b``."""

    def run(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
        ln = build_module(cls, x.shape[-1], eps, what="your LayerNorm class")
        load_weights(ln, {"w": w, "b": b}, name_map, "LayerNorm")
        return ln(x)

    return run


def _layer_norm_inputs(gen: torch.Generator, shape: tuple[int, int, int], small: bool) -> Tensor:
    """Mean far from 0 (so a missing centring shows); ``small``: spread 3e-3 around a
    per-position offset, a variance so small that where eps goes matters even at 1e-5."""
    if small:
        spread = torch.randn(shape, generator=gen, dtype=torch.float64) * 3e-3
        return spread + torch.randn(*shape[:2], 1, generator=gen, dtype=torch.float64)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2


@exercise
def check_layer_norm(impl: Callable[..., Any], name_map: NameMap = None) -> None:
    """LayerNorm over the LAST axis: ``(x - mean) / sqrt(var + eps) * w + b`` with the
    biased variance (divide by d_model), ``x [batch, pos, d_model]``.

    ``impl`` is a function ``fn(x, w, b, eps)`` (lecture 08) or a class ``cls(d_model,
    eps)`` with parameters ``w, b [d_model]`` (homework 3; other names via ``name_map``).
    Compared with ``F.layer_norm`` on four inputs: eps large enough to matter (0.5, 1e-2),
    and a variance small enough that eps = 1e-5 matters; batch != pos, so the axes can be
    told apart.
    """
    answer = _adapt(impl, (1e-6, 1e-4), partial(_layer_norm_from_class, name_map=name_map))
    gen = torch.Generator().manual_seed(8)
    cases = [
        ((2, 3, 4), 1e-5, False),
        ((3, 5, 8), 0.5, False),
        ((1, 4, 16), 1e-2, False),
        ((2, 5, 8), 1e-5, True),
    ]
    for shape, eps, small in cases:
        x = _layer_norm_inputs(gen, shape, small).to(answer.dtype)
        w = (1 + torch.rand(shape[-1], generator=gen, dtype=torch.float64)).to(answer.dtype)
        b = torch.randn(shape[-1], generator=gen, dtype=torch.float64).to(answer.dtype)
        want = F.layer_norm(x, (shape[-1],), w, b, eps)
        got = to_numpy(answer.run(x.clone(), w.clone(), b.clone(), eps), "LayerNorm output")
        judge(
            got,
            want,
            LAYER_NORM_MISTAKES,
            (x, w, b, eps),
            what=f"LayerNorm of a {list(shape)} input (eps={eps:g})",
            atol=answer.atol,
            hint="y = (x - mean) / sqrt(var + eps) * w + b: normalise each position over the "
            "LAST axis (d_model) with mean(-1, keepdim=True) and the biased var, then scale "
            "by w and shift by b.",
            form=answer.form,
        )
    passed("check_layer_norm")


# ======================================================================== pre-LN block
Sublayer = Callable[[Tensor], Tensor]


def _pre_ln(x: Tensor, ln1: Sublayer, attn: Sublayer, ln2: Sublayer, mlp: Sublayer) -> Tensor:
    x = x + attn(ln1(x))
    return x + mlp(ln2(x))


def _post_ln(x: Tensor, ln1: Sublayer, attn: Sublayer, ln2: Sublayer, mlp: Sublayer) -> Tensor:
    x = ln1(x + attn(x))
    return ln2(x + mlp(x))


def _add_to_normalised(
    x: Tensor, ln1: Sublayer, attn: Sublayer, ln2: Sublayer, mlp: Sublayer
) -> Tensor:
    h = ln1(x)
    x = h + attn(h)
    h = ln2(x)
    return h + mlp(h)


def _mlp_reads_ln1(
    x: Tensor, ln1: Sublayer, attn: Sublayer, ln2: Sublayer, mlp: Sublayer
) -> Tensor:
    mid = x + attn(ln1(x))
    return mid + mlp(ln1(mid))


BLOCK_MISTAKES = (
    Mistake(
        "no_residual",
        lambda x, ln1, attn, ln2, mlp: mlp(ln2(attn(ln1(x)))),
        "the residual connections are missing: each sublayer ADDS to the residual stream, "
        "x = x + attn(ln1(x)), then x = x + mlp(ln2(x)).",
    ),
    Mistake(
        "post_ln",
        _post_ln,
        "this is a post-LN block (the original 2017 Transformer): LayerNorm after the "
        "residual add. GPT-2 style pre-LN normalises only the sublayer's INPUT, "
        "x = x + attn(ln1(x)), and leaves the residual stream itself un-normalised.",
    ),
    Mistake(
        "parallel",
        lambda x, ln1, attn, ln2, mlp: x + attn(ln1(x)) + mlp(ln2(x)),
        "attention and MLP both read the input x (a 'parallel' block, as in GPT-J): the MLP "
        "reads x, not x_mid. Here they are sequential: the MLP reads the stream AFTER "
        "attention has added its output, x_mid + mlp(ln2(x_mid)) with "
        "x_mid = x + attn(ln1(x)).",
    ),
    Mistake(
        "layer_norms_swapped",
        lambda x, ln1, attn, ln2, mlp: _pre_ln(x, ln2, attn, ln1, mlp),
        "ln1 and ln2 are swapped: ln1 goes before attention, ln2 before the MLP (they have "
        "different learned gains and biases).",
    ),
    Mistake(
        "mlp_uses_ln1",
        _mlp_reads_ln1,
        "the MLP branch uses ln1: each sublayer has its own LayerNorm (ln2 before the MLP).",
    ),
    Mistake(
        "residual_normalised",
        _add_to_normalised,
        "you added the sublayer output to the NORMALISED stream (h = ln1(x); x = h + attn(h)). "
        "The residual stream is not normalised in place: x = x + attn(ln1(x)).",
    ),
    Mistake(
        "no_mlp",
        lambda x, ln1, attn, ln2, mlp: x + attn(ln1(x)),
        "the MLP sublayer is missing: after attention, x = x + mlp(ln2(x)).",
    ),
    Mistake(
        "no_attention",
        lambda x, ln1, attn, ln2, mlp: x + mlp(ln2(x)),
        "the attention sublayer is missing: first x = x + attn(ln1(x)).",
    ),
)

# every size differs between the two configs, so a hard-coded size shows
_BLOCK_CASES = [  # (cfg, seed, (batch, pos))
    (GPTConfig(d_vocab=11, n_ctx=8, d_model=16, n_layers=1, n_heads=2), 0, (2, 5)),
    (GPTConfig(d_vocab=11, n_ctx=8, d_model=16, n_layers=1, n_heads=2), 1, (1, 8)),
    (GPTConfig(d_vocab=29, n_ctx=10, d_model=24, n_layers=2, n_heads=3, d_mlp=36), 12, (2, 6)),
]


def _reference_block(cfg: GPTConfig, seed: int, dtype: torch.dtype) -> TransformerBlock:
    """A block with random weights, its two LayerNorms different, so that swapping or
    skipping one changes the output; the written-out attention path (no sdpa)."""
    with seeded(seed):
        block = randomise(TransformerBlock(cfg), seed=seed, scale=0.3)
    block.attn.use_fast_attention = False
    return block.to(dtype).eval()


def _block_from_class(cls: type, name_map: NameMap) -> Callable[..., Tensor]:
    """The class form as ``f(x, reference_block, cfg)``: ``cls(cfg)`` holding its weights."""

    def run(x: Tensor, reference: TransformerBlock, cfg: GPTConfig) -> Tensor:
        block = build_module(cls, cfg, what="your TransformerBlock class")
        load_weights(block, dict(reference.named_parameters()), name_map, "block")
        return block(x)

    return run


def _block_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function form as ``f(x, reference_block, cfg)``: it gets the sublayers."""
    return lambda x, ref, cfg: fn(x, ref.ln1, ref.attn, ref.ln2, ref.mlp)


@exercise
def check_pre_ln_block(impl: Callable[..., Any], name_map: NameMap = None) -> None:
    """One pre-LN transformer block: ``x_mid = x + attn(ln1(x))``, then
    ``out = x_mid + mlp(ln2(x_mid))``.

    ``impl`` is a function ``fn(x, ln1, attn, ln2, mlp)`` given the sublayers (lecture 08)
    or a class ``cls(cfg)`` with submodules ``ln1, attn, ln2, mlp`` (homework 3; parameter
    names ``ln1.w``, ``attn.W_Q``, ``mlp.W_in``..., others via ``name_map``). Compared with
    :class:`decoding_gpt.transformer.TransformerBlock` holding the same random weights.
    """
    answer = _adapt(
        impl, (1e-8, 1e-4), partial(_block_from_class, name_map=name_map), _block_function
    )
    for cfg, seed, (batch, pos) in _BLOCK_CASES:
        block = _reference_block(cfg, seed, answer.dtype)
        gen = torch.Generator().manual_seed(seed)
        x = 2 * torch.randn(batch, pos, cfg.d_model, generator=gen, dtype=torch.float64) + 1
        x = x.to(answer.dtype)
        with torch.no_grad():
            want = block(x.clone())
            got = to_numpy(answer.run(x.clone(), block, cfg), "block output")
        sublayers = (block.ln1, block.attn, block.ln2, block.mlp)
        judge(
            got,
            want,
            BLOCK_MISTAKES,
            (x, *sublayers),
            what=f"block output for x of shape {[batch, pos, cfg.d_model]}",
            atol=answer.atol,
            hint="Pre-LN: x = x + attn(ln1(x)); then x = x + mlp(ln2(x)); return x. In a "
            "stack, each block must see the previous block's output.",
            form=answer.form,
        )
    passed("check_pre_ln_block")


# ======================================================================== next-token loss
def _ce(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )


def _flattened_then_shifted(logits: Tensor, tokens: Tensor) -> Tensor:
    flat_logits, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)
    return _ce(flat_logits[:-1], flat_tokens[1:])


LOSS_MISTAKES = (
    Mistake(
        "batch_shift",
        lambda logits, tokens: _ce(logits[:-1], tokens[1:]),
        "the targets were shifted along the BATCH axis (dim 0): sequence b is trained to "
        "predict sequence b + 1, an old bug of this course. Shift along the sequence axis "
        "(dim 1): logits[:, :-1] predict tokens[:, 1:].",
    ),
    Mistake(
        "no_shift",
        lambda logits, tokens: _ce(logits, tokens),
        "you did not shift: there is no shift, so position t is scored on its own input "
        "token, which it can simply copy. Position t must predict token t + 1: "
        "logits[:, :-1] vs tokens[:, 1:].",
    ),
    Mistake(
        "reversed_shift",
        lambda logits, tokens: _ce(logits[:, 1:], tokens[:, :-1]),
        "the shift goes the wrong way: logits[:, 1:] vs tokens[:, :-1] asks each position "
        "to predict the PREVIOUS token. Use logits[:, :-1] and tokens[:, 1:].",
    ),
    Mistake(
        "flattened_before_shift",
        _flattened_then_shifted,
        "you flattened the batch before shifting, so the last position of each sequence is "
        "trained to predict the first token of the NEXT sequence. Shift inside each "
        "sequence (logits[:, :-1], tokens[:, 1:]), then flatten.",
    ),
    Mistake(
        "sum",
        lambda logits, tokens: _ce(logits[:, :-1], tokens[:, 1:], reduction="sum"),
        "the loss is a SUM over predictions: you summed the per-token losses. Take the mean "
        "(F.cross_entropy's default reduction), so it does not grow with batch size and length.",
    ),
    Mistake(
        "sum_over_batch",
        lambda logits, tokens: _ce(logits[:, :-1], tokens[:, 1:], "sum") / (tokens.shape[1] - 1),
        "you averaged over the sequence but summed over the batch: take the mean over all "
        "batch x (pos - 1) predictions.",
    ),
    Mistake(
        "sum_over_sequence",
        lambda logits, tokens: _ce(logits[:, :-1], tokens[:, 1:], "sum") / tokens.shape[0],
        "you averaged over the batch but summed over the sequence: take the mean over all "
        "batch x (pos - 1) predictions.",
    ),
)


def _as_scalar_with_grad(loss: Any) -> Tensor:
    """The loss must be a 0-d tensor still attached to the graph (it is trained on)."""
    if loss is None:
        raise CheckError("the loss is None: did you forget to `return` it?")
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        raise CheckError(
            f"the loss must be one number, a scalar tensor (0-d), got {type(loss).__name__} "
            f"of shape {tuple(getattr(loss, 'shape', ()))}: the MEAN cross-entropy over every "
            "(sequence, position) prediction, kept a tensor."
        )
    if not loss.requires_grad:
        raise CheckError(
            "the loss does not require grad: you left the graph (.item(), .detach(), numpy, "
            "torch.no_grad()); return the tensor from F.cross_entropy."
        )
    return loss.detach()


@exercise
def check_next_token_loss(
    fn: Callable[[Float[Tensor, "batch pos d_vocab"], Int[Tensor, "batch pos"]], Tensor],
) -> None:
    """``fn(logits [batch, pos, d_vocab], tokens [batch, pos])``: the mean cross-entropy of
    predicting ``tokens[:, t + 1]`` from ``logits[:, t]``,
    ``L = -1/(B (T-1)) sum_b sum_{t<T-1} log softmax(logits[b, t])[tokens[b, t + 1]]``.

    The shift is along the SEQUENCE axis (dim 1), within each sequence; the loss must be
    a scalar tensor that keeps the graph. Compared with ``F.cross_entropy`` on three
    shapes with batch != pos - 1, so every wrong axis and reduction shows.
    """
    gen = torch.Generator().manual_seed(3)
    for batch, pos, vocab in [(3, 5, 7), (4, 9, 13), (3, 6, 11)]:
        logits = 2 * torch.randn(batch, pos, vocab, generator=gen, dtype=torch.float64)
        tokens = torch.randint(vocab, (batch, pos), generator=gen)
        leaf = logits.clone().requires_grad_()
        got = _as_scalar_with_grad(fn(leaf.clone(), tokens.clone()))
        want = _ce(logits[:, :-1], tokens[:, 1:])
        judge(
            got,
            want,
            LOSS_MISTAKES,
            (logits, tokens),
            what=f"loss for logits of shape {[batch, pos, vocab]}",
            atol=1e-6,
            hint="F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1)).",
        )
    passed("check_next_token_loss")
