"""Homework 3 checks: the references pass, known-wrong implementations are rejected.

The "students" here are a from-scratch transformer (the shape of the homework's
solution) with a ``bug`` switch: each wrong implementation is the correct code with one
classic mistake, and each test pins the part of the check's message that names it.
Forbidden-module variants are separate classes, because the check reads their source.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.functional import scaled_dot_product_attention as sdpa

from decoding_gpt.attention import AttentionHead, MultiHeadAttention, attention_pattern
from decoding_gpt.checks import CheckError, hw3
from decoding_gpt.generation import generate
from decoding_gpt.transformer import (
    GPT,
    MLP,
    GPTConfig,
    LayerNorm,
    TransformerBlock,
    next_token_loss,
)

BUG: str | None = None  # the bug the scratch classes below build in (set by `_with_bug`)


# ====================================================================== a scratch transformer
def scratch_pattern(q: Tensor, k: Tensor, bug: str | None = None) -> Tensor:
    scores = q @ k.transpose(-2, -1)
    if bug != "no_scale":
        scores = scores / math.sqrt(q.shape[-1] if bug != "scale_by_d" else q.shape[-1] ** 2)
    n_q, n_k = q.shape[-2], k.shape[-2]
    ones = torch.ones(n_q, n_k, dtype=torch.bool)
    allowed = {
        "off_by_one": torch.tril(ones, diagonal=1),
        "transposed": torch.triu(ones),
        "no_diagonal": torch.tril(ones, diagonal=-1),
        "no_mask": ones,
    }.get(bug, torch.tril(ones))
    if bug == "times_inf":  # the classic: a 0/-inf mask MULTIPLIED in
        scores = scores * torch.triu(torch.full((n_q, n_k), float("-inf")), diagonal=1)
    else:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-2 if bug == "query_axis" else -1)


class ScratchHead(nn.Module):
    def __init__(self, d_model: int, d_head: int):
        super().__init__()
        self.bug = BUG
        self.W_Q = nn.Parameter(torch.randn(d_model, d_head) * 0.02)
        self.W_K = nn.Parameter(torch.randn(d_model, d_head) * 0.02)
        self.W_V = nn.Parameter(torch.randn(d_model, d_head) * 0.02)
        self.W_O = nn.Parameter(torch.randn(d_head, d_model) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = x @ self.W_Q, x @ self.W_K, x @ self.W_V
        if self.bug == "sqrt_d_model":
            q = q * math.sqrt(q.shape[-1] / x.shape[-1])
        pattern = scratch_pattern(q, k, self.bug)
        if self.bug == "values_at_query":
            z = torch.einsum("bqk,bqd->bqd", pattern, v)
        else:
            z = pattern @ v
        return z if self.bug == "no_W_O" else z @ self.W_O


class ScratchAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__()
        self.bug = BUG
        self.n_heads = n_heads
        for name in ("W_Q", "W_K", "W_V"):
            setattr(self, name, nn.Parameter(torch.randn(n_heads, d_model, d_head) * 0.02))
            setattr(self, "b" + name[1:], nn.Parameter(torch.zeros(n_heads, d_head)))
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) * 0.02)
        self.b_O = nn.Parameter(torch.zeros(d_model))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return scratch_pattern(q, k, self.bug) @ v

    def forward(self, x: Tensor) -> Tensor:
        q = torch.einsum("bpm,hmd->bhpd", x, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("bpm,hmd->bhpd", x, self.W_K) + self.b_K[:, None]
        v = torch.einsum("bpm,hmd->bhpd", x, self.W_V) + self.b_V[:, None]
        z = self.attend(q, k, v)  # [batch, head, pos, d_head]
        if self.bug == "mixed_heads":  # heads and d_head mixed by a reshape (no transpose)
            b, h, p, d = z.shape
            z = z.transpose(1, 2).reshape(b, p, d, h).permute(0, 3, 1, 2)
        out = torch.einsum("bhpd,hdm->bpm", z, self.W_O)
        if self.bug == "mean_heads":
            out = out / self.n_heads
        return out if self.bug == "no_b_O" else out + self.b_O


class SdpaAttention(ScratchAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class AliasedSdpaAttention(ScratchAttention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return sdpa(q, k, v, is_causal=True)  # the source never says the forbidden name


class TorchAttention(ScratchAttention):
    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__(d_model, n_heads, d_head)
        self.inner = nn.MultiheadAttention(d_model, n_heads, batch_first=True)


class EncoderLayerAttention(ScratchAttention):
    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__(d_model, n_heads, d_head)
        self.layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, batch_first=True)


class ScratchLayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.bug, self.eps = BUG, eps
        if self.bug == "buffers":
            self.register_buffer("w", torch.ones(d_model))
            self.register_buffer("b", torch.zeros(d_model))
        else:
            self.w = nn.Parameter(torch.ones(d_model))
            self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        dim = 1 if self.bug == "wrong_axis" else -1
        centred = x - x.mean(dim, keepdim=True)
        var = x.var(dim, keepdim=True, unbiased=self.bug == "unbiased")
        if self.bug == "eps_outside":
            return centred / (var.sqrt() + self.eps) * self.w + self.b
        return centred / (var + self.eps).sqrt() * self.w + self.b


ACTS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class ScratchMLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.bug = BUG
        d_mlp = 4 * cfg.d_model if self.bug == "hard_d_mlp" else cfg.d_mlp
        self.act = {
            "relu": F.relu,
            "no_act": lambda x: x,
            "tanh_gelu": ACTS["gelu_new"],
        }.get(self.bug, ACTS[cfg.act_fn])
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, d_mlp) * cfg.init_range)
        if self.bug != "no_b_in":
            self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_mlp, cfg.d_model) * cfg.init_range)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x: Tensor) -> Tensor:
        pre = x @ self.W_in + (self.b_in if hasattr(self, "b_in") else 0)
        return self.act(pre) @ self.W_out + self.b_out


class ScratchBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.bug = BUG
        self.ln1 = ScratchLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attn = ScratchAttention(cfg.d_model, cfg.n_heads, cfg.d_head)
        self.ln2 = ScratchLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.mlp = ScratchMLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        if self.bug == "post_ln":
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        if self.bug == "no_residual":
            return self.mlp(self.ln2(self.attn(self.ln1(x))))
        if self.bug == "parallel":
            return x + self.attn(self.ln1(x)) + self.mlp(self.ln2(x))
        mid = x + self.attn(self.ln1(x))
        ln = self.ln1 if self.bug == "ln1_twice" else self.ln2
        return mid + self.mlp(ln(mid))


class ScratchGPT(nn.Module):
    BLOCKS = "blocks"  # the attribute holding the blocks (renamed in a name_map test)

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.bug, self.cfg = BUG, cfg
        std = 1.0 if self.bug == "init_std_1" else cfg.init_range
        self.embed = nn.Module()
        self.embed.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model) * std)
        self.pos_embed = nn.Module()
        self.pos_embed.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) * std)
        setattr(self, self.BLOCKS, nn.ModuleList(ScratchBlock(cfg) for _ in range(cfg.n_layers)))
        self.ln_final = ScratchLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.unembed = nn.Module()
        if self.bug != "tied":
            self.unembed.W_U = nn.Parameter(torch.randn(cfg.d_model, cfg.d_vocab) * std)
        b_U = torch.randn(cfg.d_vocab) * 3 if self.bug == "random_b_U" else torch.zeros(cfg.d_vocab)
        self.unembed.b_U = nn.Parameter(b_U)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed.W_E[tokens]
        if self.bug in ("constant", "no_input"):
            x = torch.zeros_like(x)
        if self.bug not in ("no_pos", "no_input"):
            x = x + self.pos_embed.W_pos[: tokens.shape[1]]
        blocks = getattr(self, self.BLOCKS)
        blocks = reversed(blocks) if self.bug == "reverse_blocks" else blocks
        for block in blocks:
            x = block(x)
        if self.bug != "no_ln_final":
            x = self.ln_final(x)
        W_U = self.embed.W_E.T if self.bug == "tied" else self.unembed.W_U
        logits = x @ W_U + self.unembed.b_U
        if self.bug == "softmax_out":
            return logits.softmax(-1)
        if self.bug == "last_only":
            return logits[:, -1]
        return logits.detach() if self.bug == "detach" else logits


def _with_bug(cls: type, bug: str | None) -> type:
    """A subclass of ``cls`` whose instances (and submodules) are built with ``bug``.

    A class, not a factory function: the shared checks tell homework 3's class form from
    the lectures' function form by ``isinstance(impl, type)``.
    """

    def __init__(self: nn.Module, *args: object) -> None:
        global BUG
        BUG = bug
        try:
            cls.__init__(self, *args)
        finally:
            BUG = None

    return type(cls.__name__, (cls,), {"__init__": __init__})


# ====================================================================== 1. attention pattern
def test_pattern_accepts_references():
    hw3.check_attention_pattern(attention_pattern)
    hw3.check_attention_pattern(scratch_pattern)


PATTERN_BUGS = [
    ("no_scale", "without the 1/sqrt\\(d_head\\) scale"),
    ("scale_by_d", "divided the scores by d_head"),
    ("query_axis", "softmax over the query axis"),
    ("off_by_one", "off by one"),
    ("transposed", "transposed"),
    ("no_mask", "no causal mask"),
    ("no_diagonal", "hides the diagonal"),
    ("times_inf", "0 \\* -inf = NaN"),
]


@pytest.mark.parametrize(("bug", "message"), PATTERN_BUGS)
def test_pattern_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_attention_pattern(lambda q, k: scratch_pattern(q, k, bug))


def test_pattern_rejects_wrong_shape_and_rows():
    with pytest.raises(CheckError, match="shape"):
        hw3.check_attention_pattern(lambda q, k: attention_pattern(q, k)[..., 0])
    with pytest.raises(CheckError, match="sum to values"):
        hw3.check_attention_pattern(lambda q, k: attention_pattern(q, k) * 0.5)


# ====================================================================== 2. one head
def test_head_accepts_references():
    hw3.check_attention_head(AttentionHead)
    hw3.check_attention_head(ScratchHead)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("values_at_query", "values are taken at the QUERY"),
        ("no_W_O", "multiply z by W_O"),
        ("no_mask", "future positions"),
        ("no_scale", "missing the 1/sqrt\\(d_head\\)"),
        ("sqrt_d_model", "not sqrt\\(d_model\\)"),
    ],
)
def test_head_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_attention_head(_with_bug(ScratchHead, bug))


def test_head_rejects_wrong_layout():
    class Transposed(ScratchHead):
        def __init__(self, d_model: int, d_head: int):
            super().__init__(d_model, d_head)
            self.W_Q = nn.Parameter(torch.zeros(d_head, d_model))

    with pytest.raises(CheckError, match="W_Q has shape"):
        hw3.check_attention_head(Transposed)


# ====================================================================== 3. multi-head attention
class SlowReferenceAttention(MultiHeadAttention):
    """The course's attention with its fused path (sdpa, forbidden here) switched off."""

    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__(d_model, n_heads, d_head, use_fast_attention=False)


def test_multihead_accepts_references():
    hw3.check_multi_head_attention(SlowReferenceAttention)
    hw3.check_multi_head_attention(ScratchAttention)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("no_b_O", "missing the output bias b_O"),
        ("mean_heads", "averaged the heads"),
        ("mixed_heads", "reshape without a transpose"),
        ("no_scale", "1/sqrt\\(d_head\\)"),
        ("no_mask", "from the future into the past.* missing"),
        ("transposed", "looks transposed"),
        ("off_by_one", "off by one"),
        ("times_inf", "has NaNs: 0 \\* -inf"),
        ("no_diagonal", "has NaNs"),
    ],
)
def test_multihead_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_multi_head_attention(_with_bug(ScratchAttention, bug))


FORBIDDEN = [
    (SdpaAttention, "the source of SdpaAttention uses \\['scaled_dot_product_attention'\\]"),
    (AliasedSdpaAttention, "the forward pass calls \\['scaled_dot_product_attention'\\]"),
    (TorchAttention, "forbidden module MultiheadAttention at inner"),
    (EncoderLayerAttention, "forbidden module TransformerEncoderLayer at layer"),
]


@pytest.mark.parametrize(("cls", "message"), FORBIDDEN)
def test_multihead_rejects_forbidden(cls, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_multi_head_attention(cls)


@pytest.mark.parametrize(("cls", "message"), FORBIDDEN)
def test_no_forbidden_modules_rejects(cls, message):
    model = cls(12, 3, 4)
    with pytest.raises(CheckError, match=message):
        hw3.check_no_forbidden_modules(model, torch.randn(1, 5, 12))


def test_no_forbidden_modules_accepts_scratch_and_reference():
    hw3.check_no_forbidden_modules(ScratchAttention(12, 3, 4), torch.randn(1, 5, 12))
    reference = MultiHeadAttention(12, 3, 4, use_fast_attention=False)
    hw3.check_no_forbidden_modules(reference, torch.randn(1, 5, 12))
    with pytest.raises(CheckError, match="forward pass calls"):  # its fast path is sdpa
        hw3.check_no_forbidden_modules(MultiHeadAttention(12, 3, 4), torch.randn(1, 5, 12))


# ====================================================================== 4. LN, MLP, block
def test_layernorm_accepts_references():
    hw3.check_layer_norm(LayerNorm)
    hw3.check_layer_norm(ScratchLayerNorm)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("unbiased", "unbiased variance"),
        ("eps_outside", "eps goes INSIDE the square root"),
        ("wrong_axis", "over the LAST axis"),
        ("buffers", "parameter names differ.*missing \\['w', 'b'\\]"),
    ],
)
def test_layernorm_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_layer_norm(_with_bug(ScratchLayerNorm, bug))


def test_mlp_accepts_references():
    hw3.check_mlp(MLP)
    hw3.check_mlp(ScratchMLP)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("relu", "act_fn is 'gelu' but you used ReLU"),
        ("no_act", "no activation"),
        ("tanh_gelu", "not the tanh approximation"),
        ("no_b_in", "missing \\['b_in'\\]"),
        ("hard_d_mlp", "W_in has shape \\(24, 96\\), expected \\(24, 36\\)"),
    ],
)
def test_mlp_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_mlp(_with_bug(ScratchMLP, bug))


def test_mlp_rejects_gelu_when_relu_asked():
    class AlwaysGelu(ScratchMLP):
        def __init__(self, cfg: GPTConfig):
            super().__init__(cfg)
            self.act = F.gelu

    with pytest.raises(CheckError, match="act_fn is 'relu' but you used GELU"):
        hw3.check_mlp(AlwaysGelu)


def test_block_accepts_references():
    hw3.check_pre_ln_block(TransformerBlock)
    hw3.check_pre_ln_block(ScratchBlock)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("post_ln", "post-LN"),
        ("no_residual", "residual connections are missing"),
        ("parallel", "the MLP reads x, not x_mid"),
        ("ln1_twice", "the MLP branch uses ln1"),
    ],
)
def test_block_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_pre_ln_block(_with_bug(ScratchBlock, bug))


# ====================================================================== 5. the GPT
def reference_gpt(cfg: GPTConfig) -> GPT:
    """The course's GPT with its fused attention switched off (the fast path is sdpa)."""
    model = GPT(cfg)
    for block in model.blocks:
        block.attn.use_fast_attention = False
    return model


def test_gpt_accepts_references():
    hw3.check_gpt(reference_gpt)
    hw3.check_gpt(ScratchGPT)


def test_gpt_rejects_the_fused_reference():
    with pytest.raises(CheckError, match="forward pass calls"):
        hw3.check_gpt(GPT)


def test_gpt_name_map():
    class Renamed(ScratchGPT):
        """The same model with its blocks under another name."""

        BLOCKS = "layers"

    hw3.check_matches_reference(Renamed, name_map={"blocks.": "layers."})
    hw3.check_matches_reference(Renamed, name_map=lambda n: n.replace("blocks.", "layers."))
    with pytest.raises(CheckError, match="missing \\['blocks.0.ln1.w'"):
        hw3.check_matches_reference(Renamed)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("hard_d_mlp", "trainable parameters.*blocks"),
        ("tied", "trainable parameters.*unembed"),
        ("last_only", "logits have shape \\(2, 29\\) for tokens"),
    ],
)
def test_config_shapes_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_config_shapes(_with_bug(ScratchGPT, bug))


def test_config_shapes_accepts_references():
    hw3.check_config_shapes(GPT)
    hw3.check_config_shapes(ScratchGPT)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("no_ln_final", "apply ln_final"),
        ("no_pos", "add the positional embedding"),
        ("reverse_blocks", "in order blocks\\[0\\], blocks\\[1\\]"),
        ("post_ln", "logits has wrong values"),
    ],
)
def test_matches_reference_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_matches_reference(_with_bug(ScratchGPT, bug))


def test_causality_accepts_references():
    for model in (GPT(hw3.CFG), ScratchGPT(hw3.CFG)):
        hw3.check_causality(model, hw3.CFG.d_vocab, hw3.CFG.n_ctx)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("no_mask", "information flows from the future.* missing"),
        ("transposed", "looks transposed"),
        ("off_by_one", "off by one"),
        ("constant_attention", "did not change the output at position"),
    ],
)
def test_causality_rejects(bug, message):
    if bug == "constant_attention":  # an MLP-free model that ignores its tokens
        model = _with_bug(ScratchGPT, "constant")(hw3.CFG)
    else:
        model = _with_bug(ScratchGPT, bug)(hw3.CFG)
    with pytest.raises(CheckError, match=message):
        hw3.check_causality(model, hw3.CFG.d_vocab, hw3.CFG.n_ctx)


@pytest.mark.parametrize(("bug", "message"), [("no_mask", "missing"), ("transposed", "transp")])
def test_gpt_rejects_acausal(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_gpt(_with_bug(ScratchGPT, bug))


# ====================================================================== 6. loss and training
def test_loss_accepts_references():
    hw3.check_next_token_loss(next_token_loss)
    hw3.check_next_token_loss(
        lambda logits, tokens: F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
        )
    )


def _ce(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )


def batch_shift_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    return _ce(logits[:-1], tokens[1:])


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (batch_shift_loss, "shifted along the BATCH axis"),
        (lambda logits, tokens: _ce(logits, tokens), "you did not shift"),
        (lambda logits, tokens: _ce(logits[:, 1:], tokens[:, :-1]), "shift goes the wrong way"),
        (lambda logits, tokens: _ce(logits[:, :-1], tokens[:, 1:], "sum"), "summed"),
        (lambda logits, tokens: next_token_loss(logits, tokens).item(), "scalar tensor"),
        (lambda logits, tokens: next_token_loss(logits.detach(), tokens), "does not require grad"),
        (lambda logits, tokens: _ce(logits[:, :-1], tokens[:, 1:], "none"), "scalar tensor"),
    ],
)
def test_loss_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_next_token_loss(wrong)


def test_initial_loss_accepts_references():
    hw3.check_initial_loss(GPT)
    hw3.check_initial_loss(ScratchGPT)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("init_std_1", "initial loss .* expected ln\\(d_vocab\\) = 6.215"),
        ("random_b_U", "initial loss"),
        ("softmax_out", "returns probabilities"),
    ],
)
def test_initial_loss_rejects(bug, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_initial_loss(_with_bug(ScratchGPT, bug))


def test_overfits_accepts_references():
    hw3.check_overfits(GPT, next_token_loss)
    hw3.check_overfits(ScratchGPT, next_token_loss)


@pytest.mark.parametrize(
    ("bug", "loss_fn", "message"),
    [
        ("detach", next_token_loss, "the loss has no gradient"),
        ("no_input", next_token_loss, "cannot memorise"),
        (None, batch_shift_loss, "cannot memorise"),
        (None, lambda logits, tokens: _ce(logits, tokens), "cannot memorise"),
        (None, lambda lg, t: torch.tensor(next_token_loss(lg, t).item()), "no gradient"),
    ],
)
def test_overfits_rejects(bug, loss_fn, message):
    with pytest.raises(CheckError, match=message):
        hw3.check_overfits(_with_bug(ScratchGPT, bug), loss_fn)


def test_overfits_rejects_frozen_model():
    def frozen(cfg: GPTConfig) -> nn.Module:
        return GPT(cfg).requires_grad_(False)

    with pytest.raises(CheckError, match="no trainable parameters"):
        hw3.check_overfits(frozen, next_token_loss)


# ====================================================================== 7. generate
def scratch_generate(model, tokens, max_new_tokens, temperature=1.0, seed=None, bug=None):
    """A from-scratch ``generate``; ``bug`` builds in one classic mistake."""
    gen = torch.Generator().manual_seed(seed) if seed is not None and bug != "no_seed" else None
    seq = tokens.clone()
    steps = max_new_tokens + (1 if bug == "one_extra" else 0)
    for _ in range(steps):
        window = seq if bug == "no_truncation" else seq[-model.cfg.n_ctx :]
        if bug == "first_window":
            window = seq[: model.cfg.n_ctx]
        with torch.no_grad():
            logits = model(window[None])[0, 0 if bug == "position_0" else -1]
        if temperature == 0 or bug == "always_argmax":
            next_token = logits.argmax()
        else:
            probs = (logits / temperature).softmax(-1)
            next_token = torch.multinomial(probs, 1, generator=gen)[0]
        if bug == "no_append":
            seq = torch.cat([seq[:-1], next_token[None]])
        else:
            seq = torch.cat([seq, next_token[None]])
    return seq[len(tokens) :] if bug == "new_only" else seq


def test_generate_accepts_references():
    def reference(model, tokens, max_new_tokens, temperature=1.0, seed=None):
        return generate(model, tokens, max_new_tokens, temperature=temperature, seed=seed)

    hw3.check_generate(reference)
    hw3.check_generate(scratch_generate)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        ("no_append", "never appended"),
        ("position_0", "logits at position 0"),
        ("one_extra", "One token too many"),
        ("new_only", "Return the prompt FOLLOWED"),
        ("no_truncation", "feed the model only the LAST n_ctx tokens"),
        ("first_window", "differs from the reference at index"),
        ("no_seed", "two calls with seed=3 gave different tokens"),
        ("always_argmax", "you must SAMPLE"),
    ],
)
def test_generate_rejects(bug, message):
    def wrong(model, tokens, max_new_tokens, temperature=1.0, seed=None):
        return scratch_generate(model, tokens, max_new_tokens, temperature, seed, bug=bug)

    with pytest.raises(CheckError, match=message):
        hw3.check_generate(wrong)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hw3.check_pre_ln_block(ScratchBlock)
    hw3.check_matches_reference(ScratchGPT)
    assert torch.equal(torch.rand(3), expected)
