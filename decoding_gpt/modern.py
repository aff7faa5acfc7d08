"""The modern block: RMSNorm, SwiGLU, rotary attention, LLaMA's layout.

GPT-2's block (:class:`decoding_gpt.transformer.TransformerBlock`) and LLaMA's have the
same skeleton, a pre-norm residual block::

    x_mid   = x + Attn(Norm1(x))            hook_resid_pre, hook_attn_out, hook_resid_mid
    x_out   = x_mid + MLP(Norm2(x_mid))     hook_mlp_out, hook_resid_post

and differ in the three parts plugged into it. Each change is small; together they are
what most open models since 2023 (LLaMA, Mistral, Qwen, Gemma, ...) use.

- **RMSNorm instead of LayerNorm** (Zhang & Sennrich 2019). ``x / sqrt(mean(x^2) + eps) * w``:
  no mean subtracted (no centring) and no bias. LayerNorm's re-centring turned out not to
  matter for quality; dropping it saves a reduction and a parameter vector, and leaves the
  rescaling, which is what keeps the residual stream's scale under control.
- **SwiGLU instead of GELU(x W_in) W_out** (Shazeer 2020). ``(silu(x W_gate) * (x W_in)) W_out``:
  one branch is a gate, the other a linear read, multiplied element-wise, so a neuron's
  output is a product of two directions rather than a fixed non-linearity of one. It has
  three matrices instead of two, so LLaMA shrinks the hidden width from ``4 d_model`` to
  about ``8/3 d_model`` (:func:`swiglu_width`) to keep the parameter count of GPT's MLP.
  No biases (LLaMA has none anywhere).
- **Rotary positions instead of a learned position table** (RoPE, Su et al. 2021). ``q`` and
  ``k`` are rotated by position-dependent angles, so ``q_i . k_j`` depends on the offset
  ``i - j`` only; nothing is added to the residual stream, no table limits the length, and
  attention scores see relative positions directly. The rotation is
  :func:`decoding_gpt.attention.apply_rotary`, used through
  ``MultiHeadAttention(rotary=True)``.

**Attention biases.** LLaMA's q, k, v and o projections have no bias. ``MultiHeadAttention``
always holds ``b_Q, b_K, b_V`` and ``b_O``, initialised to zero; :class:`ModernBlock` freezes
them (``requires_grad=False``). Adding a zero is exact in floating point, a frozen parameter
gets no gradient (``.grad`` stays ``None``, so optimizers and weight decay skip it; the
training loop also builds its optimizer from ``requires_grad`` parameters only), so the
block computes exactly LLaMA's bias-free attention (tested against HF's ``LlamaAttention``).
They still appear in ``state_dict()``; loading nonzero values into them would add biases.

**Rotary convention (pairs, not halves).** ``apply_rotary`` rotates ADJACENT pairs
``(x[2i], x[2i+1])`` by ``theta_i`` (RoFormer, TransformerLens). Hugging Face's LLaMA
(``rotate_half``) rotates the pairs ``(x[i], x[i + d_head/2])``: first half against second
half, with the same frequencies ``theta_i = p * base^(-2i/d_head)``. The two are the same
rotation up to a fixed permutation of each head's ``d_head`` coordinates, and since ``q``
and ``k`` get the same permutation, ``q . k`` and so the attention are unchanged. To load
HF weights, permute the COLUMNS of each head's ``W_Q`` and ``W_K`` (the rows of HF's
``q_proj``/``k_proj`` weights) by :func:`halves_to_pairs`; ``W_V`` and ``W_O`` are untouched.
(This undoes the permutation Meta's ``convert_llama_weights_to_hf.py`` applied when it
moved the original interleaved checkpoints to HF's layout.)

Weights have TransformerLens's names and shapes: ``attn.W_Q [n_heads, d_model, d_head]``,
``mlp.W_gate, mlp.W_in [d_model, d_mlp]``, ``mlp.W_out [d_mlp, d_model]``, ``ln1.w``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from decoding_gpt.attention import LayerKVCache, MultiHeadAttention, has_hooks


def swiglu_width(d_model: int, multiple_of: int = 8) -> int:
    """LLaMA's SwiGLU hidden width: ``int(2/3 * 4 d_model)`` rounded up to ``multiple_of``.

    Three ``[d_model, d_mlp]`` matrices at ``d_mlp = 8/3 d_model`` hold as many weights as
    GPT's two at ``4 d_model``. LLaMA rounds to multiples of 256 (7B: 4096 -> 11008).
    """
    return multiple_of * -(-(8 * d_model // 3) // multiple_of)


def halves_to_pairs(d_head: int) -> Int[Tensor, " d_head"]:
    """The permutation from HF's rotary layout (halves) to :func:`apply_rotary`'s (pairs).

    ``ours[..., j] = hf[..., perm[j]]``: coordinate ``2i`` is HF's ``i`` and ``2i + 1`` is
    HF's ``i + d_head/2``, the partner ``rotate_half`` rotates it with. Applied to each
    head's query and key coordinates (``W_Q[h][:, j] = q_proj.weight[h*d_head + perm[j]]``).
    """
    if d_head % 2:
        raise ValueError(f"rotary embeddings need an even d_head, got {d_head}")
    half = torch.arange(d_head // 2)
    return torch.stack((half, half + d_head // 2), dim=-1).flatten()


def check_width(x: Tensor, d_model: int, who: str) -> None:
    """Raise a ``ValueError`` naming ``who`` unless ``x``'s last axis has ``d_model`` entries."""
    if x.ndim == 0 or x.shape[-1] != d_model:
        raise ValueError(
            f"{who} expects inputs [..., d_model={d_model}], got shape {tuple(x.shape)}"
        )


@dataclass
class ModernConfig:
    """The sizes of one :class:`ModernBlock` (LLaMA's defaults where it has one).

    Not :class:`~decoding_gpt.transformer.GPTConfig`: its ``act_fn``,
    ``normalization_type`` and ``positional_embedding_type`` name GPT's choices, which this
    block replaces, and its ``d_mlp`` default (``4 d_model``) is wrong for SwiGLU.
    """

    d_model: int
    n_heads: int
    d_head: int | None = None  # default d_model // n_heads; must be even (rotary)
    d_mlp: int | None = None  # default swiglu_width(d_model), about 8/3 d_model
    rotary_base: float = 10000.0  # LLaMA 1/2: 10000; LLaMA 3: 500000
    norm_eps: float = 1e-6  # HF LlamaConfig.rms_norm_eps (LLaMA 2 ships 1e-5)
    init_range: float = 0.02

    def __post_init__(self) -> None:
        if self.d_model <= 0 or self.n_heads <= 0:
            raise ValueError(f"d_model and n_heads must be positive, got {self}")
        if self.d_head is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} not divisible by n_heads={self.n_heads}")
        self.d_head = self.d_model // self.n_heads if self.d_head is None else self.d_head
        if self.d_head <= 0 or self.d_head % 2:
            raise ValueError(f"rotary attention needs a positive even d_head, got {self.d_head}")
        self.d_mlp = swiglu_width(self.d_model) if self.d_mlp is None else self.d_mlp
        if self.d_mlp <= 0:
            raise ValueError(f"d_mlp must be positive, got {self.d_mlp}")

    @property
    def n_params(self) -> int:
        """Trainable parameters of ``ModernBlock(self)`` (the frozen zero biases excluded)."""
        assert self.d_head is not None and self.d_mlp is not None  # set by __post_init__
        attn = 4 * self.n_heads * self.d_model * self.d_head  # W_Q, W_K, W_V, W_O
        return attn + 3 * self.d_model * self.d_mlp + 2 * self.d_model  # + SwiGLU + 2 gains


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * w`` over ``d_model``: LayerNorm without centring or bias.

    ``hook_scale`` (``[batch, pos, 1]``) is ``sqrt(mean(x^2) + eps)``, ``hook_normalized`` is
    ``x / scale``, as TransformerLens names them. Without hooks it runs the fused
    ``F.rms_norm`` (same math; tested against it and HF's ``LlamaRMSNorm``).
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        check_width(x, self.w.shape[0], "RMSNorm")
        if not (has_hooks(self.hook_scale) or has_hooks(self.hook_normalized)):
            return F.rms_norm(x, self.w.shape, self.w, self.eps)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w  # no "- mean", no "+ b"


class SwiGLU(nn.Module):
    """Gated MLP ``(silu(x W_gate) * (x W_in)) W_out`` at each position, no biases.

    HF LLaMA's ``gate_proj``, ``up_proj``, ``down_proj`` are ``W_gate``, ``W_in``, ``W_out``
    transposed. Hooks as TransformerLens names them for gated MLPs: ``hook_pre`` is the
    gate's pre-activation ``x W_gate``, ``hook_pre_linear`` the linear branch ``x W_in``,
    ``hook_post`` the product fed to ``W_out`` (all ``[batch, pos, d_mlp]``).
    """

    def __init__(self, d_model: int, d_mlp: int, init_range: float = 0.02):
        super().__init__()
        self.W_gate = nn.Parameter(torch.randn(d_model, d_mlp) * init_range)
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp) * init_range)
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model) * init_range)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]: x W_gate
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]: x W_in
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]: silu(pre) * pre_linear

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        check_width(x, self.W_in.shape[0], "SwiGLU")
        gate = self.hook_pre(x @ self.W_gate)
        linear_part = self.hook_pre_linear(x @ self.W_in)
        return self.hook_post(F.silu(gate) * linear_part) @ self.W_out


class ModernBlock(nn.Module):
    """LLaMA's block: ``x += attn(rms1(x))``, then ``x += swiglu(rms2(x))``.

    The layout and hook names of :class:`~decoding_gpt.transformer.TransformerBlock`
    (``ln1``, ``attn``, ``ln2``, ``mlp``; ``hook_resid_pre/mid/post``, ``hook_attn_out``,
    ``hook_mlp_out``), with RMSNorm, rotary ``MultiHeadAttention`` whose biases are frozen
    at zero, and SwiGLU. See the module docstring for what changed and why.
    """

    def __init__(self, cfg: ModernConfig):
        super().__init__()
        assert cfg.d_head is not None and cfg.d_mlp is not None  # set by __post_init__
        self.cfg = cfg
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, cfg.d_head, rotary=True, rotary_base=cfg.rotary_base,
            init_range=cfg.init_range, hook_factory=HookPoint,
        )  # fmt: skip
        for bias in (self.attn.b_Q, self.attn.b_K, self.attn.b_V, self.attn.b_O):
            bias.requires_grad_(False)  # LLaMA has no attention biases: zero and frozen
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_mlp, cfg.init_range)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], kv_cache: LayerKVCache | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        check_width(x, self.cfg.d_model, "ModernBlock")
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), kv_cache)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))
