"""Attention, the one operation in a transformer that moves information between positions.

For a residual stream ``X`` of shape ``[pos, d_model]`` one attention head computes

.. math::

    A(X) = \\mathrm{softmax}\\Big(\\frac{X W_Q (X W_K)^\\top}{\\sqrt{d_\\mathrm{head}}} + M\\Big)
           \\, X W_V W_O

where row ``i`` of the softmax is the *pattern* of query position ``i`` over key positions
``j``. The value term is ``x_j W_V`` at the KEY position ``j`` (the information moved),
weighted by how much query ``i`` attends to ``j``; writing it with ``x_i`` (the query)
instead is a bug that makes attention unable to move anything.

``M`` is the causal mask: ``M[i, j] = 0`` when ``j <= i`` (query ``i`` may read key ``j``,
itself or earlier) and ``M[i, j] = -inf`` when ``j > i`` (the future), so after the softmax
the weight on every future position is exactly zero.

Two matrices describe a head completely (Elhage et al., *A Mathematical Framework for
Transformer Circuits*, 2021):

- the QK circuit ``W_Q W_K^T`` (``[d_model, d_model]``): which residual directions at a
  query attend to which at a key (the score is ``x_i W_Q W_K^T x_j^T``);
- the OV circuit ``W_V W_O`` (``[d_model, d_model]``): what an attended key position
  writes into the query's residual stream.

Positions enter in one of three ways in the model here: a learned table added to the
embeddings, the fixed sinusoidal table of *Attention Is All You Need*, or rotary embeddings
(RoPE, Su et al. 2021) that rotate ``q`` and ``k`` so the score ``q_i . k_j`` depends on
``i - j`` only. A fourth, ALiBi (Press et al. 2022), adds a per-head penalty
``-m_h (i - j)`` to the scores; it is written out here for lecture 07
(:func:`alibi_attention`), not used by the model.

Two computation paths give the same numbers (tested): the written-out path above, which
exposes the scores and the pattern to hooks, and a fast path through
``F.scaled_dot_product_attention`` (a fused kernel that never materialises the pattern).
**Rule:** :class:`MultiHeadAttention` takes the fast path only when ``use_fast_attention``
is on AND no hook is attached to ``hook_attn_scores`` or ``hook_pattern``; so
``run_with_cache`` and ``run_with_hooks`` on those names always see the written-out path.

This module does not import TransformerLens (slow to import); hook points are injected by
the caller through ``hook_factory`` (``transformer.py`` passes TransformerLens's
``HookPoint``; the default ``nn.Identity`` is a no-op).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

HookFactory = Callable[[], nn.Module]


# --------------------------------------------------------------------------- masks
def causal_mask_bool(
    n_queries: int, n_keys: int | None = None, device: torch.device | str | None = None
) -> Bool[Tensor, "q k"]:
    """Boolean causal mask: ``True`` where query ``i`` may attend key ``j`` (``j <= i``).

    With ``n_keys > n_queries`` (a KV cache holding ``n_keys - n_queries`` earlier
    positions) the queries are the LAST ``n_queries`` positions, so query ``i`` sits at
    absolute position ``i + n_keys - n_queries`` and may attend keys up to that position.
    """
    n_keys = n_queries if n_keys is None else n_keys
    if n_keys < n_queries:
        raise ValueError(f"n_keys ({n_keys}) must be >= n_queries ({n_queries})")
    ones = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=n_keys - n_queries)


def causal_mask(
    n_queries: int, n_keys: int | None = None, device: torch.device | str | None = None
) -> Float[Tensor, "q k"]:
    """Additive causal mask ``M``: ``0`` where ``j <= i`` (allowed), ``-inf`` where ``j > i``.

    Added to the scores before the softmax, so ``exp(-inf) = 0`` removes the future.
    """
    allowed = causal_mask_bool(n_queries, n_keys, device=device)
    mask = torch.zeros(allowed.shape, device=device)
    return mask.masked_fill(~allowed, float("-inf"))


def mask_future(scores: Float[Tensor, "... q k"]) -> Float[Tensor, "... q k"]:
    """``scores + causal_mask(q, k)``, computed in place: ``-inf`` where key ``j`` lies after
    query ``i`` (queries are the last ``q`` of ``k`` positions, as with a KV cache).

    The same values as adding the float32 additive mask, dtype promotion included (bf16
    scores come back in float32), without allocating the mask or a second score tensor.
    ``scores`` is overwritten unless it had to be promoted.
    """
    n_q, n_k = scores.shape[-2:]
    future = ~causal_mask_bool(n_q, n_k, device=scores.device)
    promoted = scores.to(torch.promote_types(scores.dtype, torch.float32))
    return promoted.masked_fill_(future, float("-inf"))


def linear(x: Float[Tensor, "... d_in"], W: Float[Tensor, "d_in d_out"], b: Tensor) -> Tensor:
    """``x W + b`` with the bias add fused into the matmul (``addmm``): one pass, not two."""
    return torch.addmm(b, x.flatten(0, -2), W).unflatten(0, x.shape[:-1])


def has_hooks(module: nn.Module) -> bool:
    """Whether a forward or backward hook is attached to ``module`` (e.g. a ``HookPoint``)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


# --------------------------------------------------------------------------- the core
def attention_pattern(
    q: Float[Tensor, "... q d_head"], k: Float[Tensor, "... k d_head"], causal: bool = True
) -> Float[Tensor, "... q k"]:
    """``softmax(q k^T / sqrt(d_head) + M)`` over keys; every row sums to 1."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores + causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    return scores.softmax(dim=-1)


def scaled_dot_product_attention(
    q: Float[Tensor, "... q d_head"],
    k: Float[Tensor, "... k d_head"],
    v: Float[Tensor, "... k d_head"],
    causal: bool = True,
) -> Float[Tensor, "... q d_head"]:
    """Written-out attention ``softmax(q k^T / sqrt(d_head) + M) v``.

    ``v`` is indexed by KEY position: output row ``i`` is ``sum_j pattern[i, j] v[j]``.
    Same contract as ``torch.nn.functional.scaled_dot_product_attention``.
    """
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
            "need q, k to share d_head and k, v to share the key axis"
        )
    return attention_pattern(q, k, causal=causal) @ v


# --------------------------------------------------------------------------- one head
class AttentionHead(nn.Module):
    """A single causal head with explicit ``W_Q, W_K, W_V: [d_model, d_head]`` and
    ``W_O: [d_head, d_model]`` (no biases), the object of lecture 06."""

    def __init__(self, d_model: int, d_head: int, init_range: float = 0.02):
        super().__init__()
        self.W_Q = nn.Parameter(torch.randn(d_model, d_head) * init_range)
        self.W_K = nn.Parameter(torch.randn(d_model, d_head) * init_range)
        self.W_V = nn.Parameter(torch.randn(d_model, d_head) * init_range)
        self.W_O = nn.Parameter(torch.randn(d_head, d_model) * init_range)

    def pattern(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch q k"]:
        return attention_pattern(x @ self.W_Q, x @ self.W_K)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        values = x @ self.W_V  # [batch, key_pos, d_head]: x_k W_V, at the KEY positions
        return self.pattern(x) @ values @ self.W_O

    @property
    def W_QK(self) -> Float[Tensor, "d_model d_model"]:
        return self.W_Q @ self.W_K.T

    @property
    def W_OV(self) -> Float[Tensor, "d_model d_model"]:
        return self.W_V @ self.W_O


# --------------------------------------------------------------------------- circuits
def qk_circuit(
    W_Q: Float[Tensor, "n_heads d_model d_head"], W_K: Float[Tensor, "n_heads d_model d_head"]
) -> Float[Tensor, "n_heads d_model d_model"]:
    """Per-head QK circuit ``W_Q W_K^T``: ``score(i, j) = x_i W_QK x_j^T / sqrt(d_head)``."""
    return W_Q @ W_K.transpose(-2, -1)


def ov_circuit(
    W_V: Float[Tensor, "n_heads d_model d_head"], W_O: Float[Tensor, "n_heads d_head d_model"]
) -> Float[Tensor, "n_heads d_model d_model"]:
    """Per-head OV circuit ``W_V W_O``: a key position ``x_j`` writes ``x_j W_OV``."""
    return W_V @ W_O


# --------------------------------------------------------------------------- positions
def sinusoidal_positional_encoding(
    n_ctx: int, d_model: int, base: float = 10000.0
) -> Float[Tensor, "n_ctx d_model"]:
    """``PE[p, 2i] = sin(p / base^(2i/d))``, ``PE[p, 2i+1] = cos(p / base^(2i/d))``.

    Each pair of columns is a clock of period ``2 pi base^(2i/d)``; ``PE[p + t]`` is a fixed
    rotation of ``PE[p]`` for every ``p``, so relative offsets are linear maps.
    """
    if d_model % 2:
        raise ValueError(f"sinusoidal encoding needs an even d_model, got {d_model}")
    position = torch.arange(n_ctx, dtype=torch.float32)[:, None]  # [n_ctx, 1]
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
    angles = position * inv_freq  # [n_ctx, d_model / 2]
    pe = torch.zeros(n_ctx, d_model)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe


def rotary_angles(
    n_pos: int,
    d_rot: int,
    base: float = 10000.0,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> Float[Tensor, "pos half"]:
    """Angles ``theta[p, i] = p * base^(-2i / d_rot)`` for positions ``offset..offset+n_pos``."""
    if d_rot % 2:
        raise ValueError(f"rotary embeddings need an even d_head, got {d_rot}")
    inv_freq = base ** (-torch.arange(0, d_rot, 2, dtype=torch.float32, device=device) / d_rot)
    position = torch.arange(offset, offset + n_pos, dtype=torch.float32, device=device)
    return position[:, None] * inv_freq[None, :]


def apply_rotary(
    x: Float[Tensor, "batch pos n_heads d_head"], base: float = 10000.0, offset: int = 0
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Rotate each adjacent pair ``(x[2i], x[2i+1])`` at position ``p`` by ``theta[p, i]``.

    Rotations compose, so ``R(p)^T R(s) = R(s - p)`` and ``<R(p) q, R(s) k>`` depends on
    ``s - p`` only: the relative-position property. Adjacent pairs as in RoFormer and
    TransformerLens's native model.
    """
    theta = rotary_angles(x.shape[1], x.shape[-1], base, offset, device=x.device)
    cos = theta.cos().to(x.dtype)[None, :, None, :]  # [1, pos, 1, d_head / 2]
    sin = theta.sin().to(x.dtype)[None, :, None, :]
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2)


# --------------------------------------------------------------------------- ALiBi
def alibi_slopes(n_heads: int) -> Float[Tensor, " n_heads"]:
    r"""ALiBi's per-head slopes (Press, Smith and Lewis 2022).

    For ``n_heads`` a power of two, the geometric sequence
    :math:`m_h = 2^{-8h/n}` for :math:`h = 1, \dots, n` (8 heads: 1/2, 1/4, ..., 1/256):
    the first head is the most local, the last looks furthest back. Otherwise the paper's
    rule: the slopes of the largest power of two :math:`n' < n`, then every other slope of
    :math:`2n'` until there are ``n_heads``.
    """
    if n_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got n_heads={n_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    closest = 2 ** int(math.log2(n_heads))
    slopes = geometric(closest) + geometric(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)


def alibi_bias(
    n_heads: int, n_queries: int, n_keys: int | None = None
) -> Float[Tensor, "n_heads q k"]:
    """``B[h, i, j] = -m_h (i - j)``: a penalty linear in the distance from query to key.

    Queries are the last ``n_queries`` of the ``n_keys`` positions (as with a KV cache), so
    query row ``i`` sits at position ``n_keys - n_queries + i``. Entries for future keys
    (``j > i``) are positive; the causal mask removes them. float64 (cast by the caller).
    """
    n_keys = n_queries if n_keys is None else n_keys
    if n_keys < n_queries:
        raise ValueError(f"n_keys={n_keys} < n_queries={n_queries}: queries must have keys")
    query_pos = torch.arange(n_keys - n_queries, n_keys, dtype=torch.float64)[:, None]
    distance = query_pos - torch.arange(n_keys, dtype=torch.float64)[None, :]  # [q, k]
    return -alibi_slopes(n_heads)[:, None, None] * distance


def alibi_attention(
    q: Float[Tensor, "batch pos n_heads d_head"],
    k: Float[Tensor, "batch pos n_heads d_head"],
    v: Float[Tensor, "batch pos n_heads d_head"],
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """Causal attention with linear biases, head by head:
    ``softmax(q k^T / sqrt(d_head) + B_h + M) v`` with ``B_h = -m_h (i - j)``
    (:func:`alibi_bias`) and the causal mask ``M``.

    Nothing is added to the embeddings or to ``q`` and ``k``: position enters only through
    the bias, which depends on the offset ``i - j`` alone (relative, like RoPE), and which
    exists for any length, so a model can run on sequences longer than it was trained on.
    """
    n_pos, n_heads = q.shape[1], q.shape[2]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, n_heads, pos, d_head]
    bias = alibi_bias(n_heads, n_pos, k.shape[-2]).to(q.dtype).to(q.device)  # [h, q, k]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
    scores = scores + causal_mask(n_pos, k.shape[-2], device=q.device)
    return (scores.softmax(dim=-1) @ v).transpose(1, 2)


# --------------------------------------------------------------------------- multi-head
@dataclass
class LayerKVCache:
    """Keys and values of the positions already processed by one attention layer.

    ``k`` and ``v`` are ``[batch, n_heads, pos, d_head]`` (keys after RoPE, if any);
    ``None`` before the first call. The attention layer appends to them in place.
    """

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Causal multi-head attention with TransformerLens weight shapes.

    ``W_Q, W_K, W_V: [n_heads, d_model, d_head]``, ``W_O: [n_heads, d_head, d_model]``,
    ``b_Q, b_K, b_V: [n_heads, d_head]``, ``b_O: [d_model]``. The output is the sum of
    the heads' outputs plus ``b_O``. Hooks: ``hook_q/k/v`` (``[batch, pos, head, d_head]``,
    before RoPE), ``hook_attn_scores``/``hook_pattern`` (``[batch, head, q, k]``), ``hook_z``.
    """

    # Set with setattr in __init__; declared here for the type checker.
    W_Q: nn.Parameter
    W_K: nn.Parameter
    W_V: nn.Parameter
    b_Q: nn.Parameter
    b_K: nn.Parameter
    b_V: nn.Parameter
    hook_q: nn.Module
    hook_k: nn.Module
    hook_v: nn.Module
    hook_attn_scores: nn.Module
    hook_pattern: nn.Module
    hook_z: nn.Module

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: int,
        *,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        init_range: float = 0.02,
        use_fast_attention: bool = True,
        hook_factory: HookFactory = nn.Identity,
    ):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.rotary, self.rotary_base = rotary, rotary_base
        self.use_fast_attention = use_fast_attention  # see the module docstring for the rule
        for name in ("W_Q", "W_K", "W_V"):
            setattr(self, name, nn.Parameter(torch.randn(n_heads, d_model, d_head) * init_range))
            setattr(self, "b" + name[1:], nn.Parameter(torch.zeros(n_heads, d_head)))
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) * init_range)
        self.b_O = nn.Parameter(torch.zeros(d_model))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", hook_factory())

    def _qkv(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """``q[b, p, h] = x[b, p] W_Q[h] + b_Q[h]`` (einsum ``"bpm,hmd->bphd"``), same for k, v.

        Computed as ONE matmul with the three weights side by side, ``[d_model, 3 h d]``.
        """
        W = torch.cat([self.W_Q, self.W_K, self.W_V]).permute(1, 0, 2).flatten(1)  # [m, 3hd]
        b = torch.cat([self.b_Q, self.b_K, self.b_V]).flatten()  # [3 h d]
        qkv = linear(x, W, b).unflatten(-1, (3 * self.n_heads, self.d_head))
        return qkv.split(self.n_heads, dim=-2)  # 3 x [batch, pos, n_heads, d_head]

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], kv_cache: LayerKVCache | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        offset = 0 if kv_cache is None else kv_cache.length
        q, k, v = self._qkv(x)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # [batch, pos, head, d_head]
        if self.rotary:
            q = apply_rotary(q, self.rotary_base, offset)
            k = apply_rotary(k, self.rotary_base, offset)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # [batch, head, k_pos, d_head]: past and new
        if self.use_fast_attention and not self._pattern_needed():
            z = self._fast_attention(q, k, v)
        else:
            scores = (q @ k.transpose(-2, -1)).div_(math.sqrt(self.d_head))  # [batch, head, q, k]
            scores = self.hook_attn_scores(mask_future(scores))  # in place: no copies
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = pattern @ v  # [batch, head, q, d_head]: values at the KEY positions
        z = self.hook_z(z.transpose(1, 2))  # [batch, q_pos, head, d_head]
        return linear(z.flatten(-2), self.W_O.flatten(0, 1), self.b_O)  # einsum "bqhd,hdm->bqm"

    def _pattern_needed(self) -> bool:
        return has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern)

    def _fast_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n_q, n_k = q.shape[-2], k.shape[-2]
        if n_q == n_k:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # KV cache: queries are the last n_q positions (is_causal would align top-left)
        mask = causal_mask_bool(n_q, n_k, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    @property
    def W_QK(self) -> Float[Tensor, "n_heads d_model d_model"]:
        return qk_circuit(self.W_Q, self.W_K)

    @property
    def W_OV(self) -> Float[Tensor, "n_heads d_model d_model"]:
        return ov_circuit(self.W_V, self.W_O)
