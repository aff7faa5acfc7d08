"""A GPT-style decoder-only transformer with TransformerLens hook names.

The residual stream ``x`` (``[batch, pos, d_model]``) starts as token embedding plus
position embedding; each pre-LN block adds ``attn(LN(x))`` and then ``mlp(LN(x))`` to it,
and the unembedding reads logits off the final LayerNorm::

    x_0       = W_E[t] + W_pos[p]                            hook_embed, hook_pos_embed
    x_mid     = x_l + Attn(LN1(x_l))                         blocks.l.hook_resid_mid
    x_{l+1}   = x_mid + MLP(LN2(x_mid))                      blocks.l.hook_resid_post
    logits    = LN_final(x_L) W_U + b_U

Weights have TransformerLens's names and shapes (``W_E [d_vocab, d_model]``,
``attn.W_Q [n_heads, d_model, d_head]``, ``mlp.W_in [d_model, d_mlp]``,
``W_U [d_model, d_vocab]``) and every activation passes through a ``HookPoint`` with the
TransformerLens name, so ``run_with_cache``/``run_with_hooks`` read like TL code and
:mod:`decoding_gpt.convert` maps weights to TL and HF GPT-2 one to one.

Speed: with no hook attached, LayerNorm runs as ``F.layer_norm`` and attention as
``F.scaled_dot_product_attention`` (fused kernels, the numbers are equal to the
written-out formulas to float precision; tests check). Attaching a hook to
``hook_scale``/``hook_normalized`` or ``hook_attn_scores``/``hook_pattern`` switches that
module to the written-out path, so hooks always see the real intermediate values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from decoding_gpt.attention import (
    LayerKVCache,
    MultiHeadAttention,
    has_hooks,
    linear,
    sinusoidal_positional_encoding,
)
from decoding_gpt.generation import KVCache, check_token_ids, generate

ACT_FNS = {
    "gelu": F.gelu,  # exact: x * Phi(x)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "relu": F.relu,
}
POSITIONAL_TYPES = ("standard", "sinusoidal", "rotary", "none")


@dataclass
class GPTConfig:
    """Every size of a model; nothing is hard-coded elsewhere. ``n_params`` is exact."""

    d_vocab: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int | None = None  # default d_model // n_heads
    d_mlp: int | None = None  # default 4 * d_model
    act_fn: str = "gelu"  # "gelu" (exact), "gelu_new" (tanh, GPT-2), "relu"
    normalization_type: str | None = "LN"  # None: no LayerNorm anywhere
    attn_only: bool = False
    positional_embedding_type: str = "standard"  # "standard" (learned), "sinusoidal", ...
    rotary_base: int = 10000
    layer_norm_eps: float = 1e-5
    init_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "set d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.d_head <= 0 or self.d_mlp <= 0:
            raise ValueError(f"d_head and d_mlp must be positive, got {self.d_head}, {self.d_mlp}")
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn={self.act_fn!r} not in {sorted(ACT_FNS)}")
        if self.normalization_type not in ("LN", None):
            raise ValueError(
                f"normalization_type must be 'LN' or None, got {self.normalization_type!r}"
            )
        if self.positional_embedding_type not in POSITIONAL_TYPES:
            raise ValueError(
                f"positional_embedding_type={self.positional_embedding_type!r} "
                f"not in {POSITIONAL_TYPES}"
            )
        if self.positional_embedding_type == "rotary" and self.d_head % 2:
            raise ValueError(f"rotary embeddings need an even d_head, got {self.d_head}")
        if self.positional_embedding_type == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal embeddings need an even d_model, got {self.d_model}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    @property
    def n_params(self) -> int:
        """Exact number of trainable parameters of ``GPT(self)``."""
        assert self.d_head is not None and self.d_mlp is not None  # set by __post_init__
        d, h, dh, ln = self.d_model, self.n_heads, self.d_head, self.normalization_type == "LN"
        attn = 4 * h * d * dh + 3 * h * dh + d  # W_Q,K,V,O + b_Q,K,V + b_O
        mlp = 0 if self.attn_only else 2 * d * self.d_mlp + self.d_mlp + d
        norms_per_block = (1 if self.attn_only else 2) * 2 * d if ln else 0
        total = self.d_vocab * d + self.n_layers * (attn + mlp + norms_per_block)
        total += self.n_ctx * d if self.positional_embedding_type == "standard" else 0
        total += 2 * d if ln else 0  # ln_final
        return total + d * self.d_vocab + self.d_vocab  # W_U, b_U


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * w + b`` over ``d_model``; hooks as in TL."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if not (has_hooks(self.hook_scale) or has_hooks(self.hook_normalized)):
            return F.layer_norm(x, self.w.shape, self.w, self.b, self.eps)  # fused, same math
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class MLP(nn.Module):
    """``act(x W_in + b_in) W_out + b_out``, applied at each position separately."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_mlp is not None  # set by GPTConfig.__post_init__
        self.act = ACT_FNS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp) * cfg.init_range)
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.randn(cfg.d_mlp, cfg.d_model) * cfg.init_range)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(linear(x, self.W_in, self.b_in))  # x W_in + b_in
        post = self.hook_post(self.act(pre))
        return linear(post, self.W_out, self.b_out)


class Embed(nn.Module):
    """Token embedding: row ``t`` of ``W_E [d_vocab, d_model]``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model) * cfg.init_range)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    """``W_pos [n_ctx, d_model]``: learned ("standard") or fixed sinusoidal (a buffer);
    position ``p`` adds row ``p`` to the residual stream."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.positional_embedding_type == "standard":
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * cfg.init_range)
        else:  # sinusoidal: not trained, not saved (recomputed from the config)
            pe = sinusoidal_positional_encoding(cfg.n_ctx, cfg.d_model)
            self.register_buffer("W_pos", pe, persistent=False)

    def forward(self, n_pos: int, offset: int = 0) -> Float[Tensor, "pos d_model"]:
        """Rows ``offset .. offset + n_pos - 1``: the positions of the tokens in the input."""
        if offset + n_pos > self.W_pos.shape[0]:
            raise ValueError(f"positions up to {offset + n_pos} exceed n_ctx={self.W_pos.shape[0]}")
        return self.W_pos[offset : offset + n_pos]


class Unembed(nn.Module):
    """Logits ``x W_U + b_U`` with ``W_U [d_model, d_vocab]``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, cfg.d_vocab) * cfg.init_range)
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return linear(x, self.W_U, self.b_U)  # x W_U + b_U


def _norm(cfg: GPTConfig) -> LayerNorm | nn.Identity:
    return (
        LayerNorm(cfg.d_model, cfg.layer_norm_eps)
        if cfg.normalization_type == "LN"
        else nn.Identity()
    )


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x += attn(ln1(x))``; then ``x += mlp(ln2(x))`` unless attention-only."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_head is not None  # set by GPTConfig.__post_init__
        self.attn_only = cfg.attn_only
        self.ln1 = _norm(cfg)
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, cfg.d_head, init_range=cfg.init_range,
            rotary=cfg.positional_embedding_type == "rotary", rotary_base=cfg.rotary_base,
            hook_factory=HookPoint,
        )  # fmt: skip
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        if not cfg.attn_only:
            self.ln2 = _norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], kv_cache: LayerKVCache | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_resid_pre(x)
        x = x + self.hook_attn_out(self.attn(self.ln1(x), kv_cache))
        if not self.attn_only:
            x = self.hook_resid_mid(x)
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    loss_mask: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, ""]:
    """Mean cross-entropy of predicting ``tokens[:, t+1]`` from ``logits[:, t]``.

    The shift is along the SEQUENCE axis (dim 1): position t predicts the next token of
    the same sequence (shifting along the batch axis is a known bug; a test checks). With
    ``loss_mask``, only the tokens marked ``True`` count as targets and the mean is over
    those: e.g. only the second copy of a repeated span, which copying can predict.
    Computed in float32 whatever the logits' dtype (bf16 autocast). Raises
    ``ValueError`` on mismatched shapes or fewer than two positions.
    """
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            "next_token_loss expects logits [batch, pos, d_vocab] and tokens [batch, pos]; "
            f"got logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}"
        )
    if tokens.shape[1] < 2:
        raise ValueError(f"next_token_loss needs at least 2 positions, got {tokens.shape[1]}")
    pred = logits[:, :-1, :]  # predictions made at positions 0..T-2
    target = tokens[:, 1:]  # the tokens they predict, positions 1..T-1
    if loss_mask is not None:
        if loss_mask.shape != tokens.shape:
            raise ValueError(
                f"loss_mask {tuple(loss_mask.shape)} must match tokens {tuple(tokens.shape)}"
            )
        keep = loss_mask[:, 1:]
        if not keep.any():
            raise ValueError("loss_mask marks no target token (positions 1..T-1)")
        return F.cross_entropy(pred[keep].float(), target[keep])
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1))


if TYPE_CHECKING:

    class _Blocks(nn.ModuleList):
        """What ``GPT.blocks`` holds, for the type checker only (at run time a ModuleList)."""

        def __iter__(self) -> Iterator[TransformerBlock]: ...

        @overload
        def __getitem__(self, idx: slice) -> nn.ModuleList: ...
        @overload
        def __getitem__(self, idx: int) -> TransformerBlock: ...
        def __getitem__(self, idx: int | slice) -> TransformerBlock | nn.ModuleList: ...


class GPT(HookedRootModule):
    """Decoder-only transformer: ``tokens [batch, pos] -> logits [batch, pos, d_vocab]``.

    Initialisation: every weight matrix (and ``W_E``, learned ``W_pos``) ~ N(0, init_range^2),
    biases 0, LayerNorm gains 1 (as in GPT-2 / TransformerLens's "gpt2" init).
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed, self.hook_embed = Embed(cfg), HookPoint()
        if cfg.positional_embedding_type in ("standard", "sinusoidal"):
            self.pos_embed, self.hook_pos_embed = PosEmbed(cfg), HookPoint()
        # cast: nn.ModuleList is not generic (its items are typed Module); these are blocks
        self.blocks = cast(
            "_Blocks", nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        )
        self.ln_final = _norm(cfg)
        self.unembed = Unembed(cfg)
        self.setup()  # names every HookPoint for run_with_cache / run_with_hooks

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        kv_cache: KVCache | None = None,
    ) -> Any:
        """``logits [batch, pos, d_vocab]``, the next-token ``loss``, ``both`` or ``None``.

        With ``kv_cache`` (see :mod:`decoding_gpt.generation`) ``tokens`` are the NEW
        positions after the cached ones; logits are returned for those only. ``tokens`` may
        live on any device: they are moved to the model's (as TransformerLens's
        ``HookedTransformer`` does), so ids built on the CPU run on a GPU model.
        """
        offset = 0 if kv_cache is None else kv_cache.length
        self._check_tokens(tokens, offset)
        tokens = tokens.to(self.device)
        x = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
        if hasattr(self, "pos_embed"):
            pos = self.pos_embed(tokens.shape[1], offset).expand_as(x)  # [batch, pos, d_model]
            x = x + self.hook_pos_embed(pos)
        for layer, block in enumerate(self.blocks):
            x = block(x, None if kv_cache is None else kv_cache.layers[layer])
        x = self.ln_final(x)  # [batch, pos, d_model]
        if return_type is None:  # as TransformerLens: ln_final (and its hooks) still ran
            return None
        logits = self.unembed(x)  # [batch, pos, d_vocab]
        if return_type == "logits":
            return logits
        loss = next_token_loss(logits, tokens)
        return loss if return_type == "loss" else (logits, loss)

    def _check_tokens(self, tokens: Tensor, offset: int) -> None:
        if tokens.ndim != 2:
            raise ValueError(
                f"tokens must be an integer tensor [batch, pos], got {tokens.dtype} "
                f"{tuple(tokens.shape)} (use tokens[None] for a single sequence)"
            )
        check_token_ids(tokens, self.cfg.d_vocab)  # integer dtype, ids in [0, d_vocab)
        if offset + tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence length {offset + tokens.shape[1]} exceeds n_ctx={self.cfg.n_ctx}; "
                "truncate the input (generate() keeps the last n_ctx tokens)"
            )

    @torch.no_grad()
    def generate(
        self, tokens: Int[Tensor, "... pos"], max_new_tokens: int, **kwargs: Any
    ) -> Tensor:
        """Sample a continuation; see :func:`decoding_gpt.generation.generate`."""
        return generate(self, tokens, max_new_tokens, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device
