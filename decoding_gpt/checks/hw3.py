"""Checks for homework 3 (a transformer from scratch, the group project).

The student builds, in this order: the attention pattern and one head, causal
multi-head attention, LayerNorm, the MLP, a pre-LN block, the GPT, the next-token loss,
and ``generate``. Each check runs the student's code on seeded inputs next to the
course's references (:mod:`decoding_gpt.attention`, :mod:`decoding_gpt.transformer`,
:mod:`decoding_gpt.training`, :mod:`decoding_gpt.generation`), loading the SAME weights
into both, and raises :class:`~decoding_gpt.checks.CheckError` naming the likely mistake:
missing ``1/sqrt(d_head)``, softmax over the query axis, a mask that is off by one or
transposed, NaNs from ``0 * -inf``, values read at the query, post-LN blocks, targets
shifted along the batch axis, a ``generate`` that does not append or ignores its seed.

**Names.** Weights are compared through their ``state_dict`` names, which by default are
TransformerLens's (those of :class:`decoding_gpt.transformer.GPT`: ``embed.W_E``,
``pos_embed.W_pos``, ``blocks.0.ln1.w``, ``blocks.0.attn.W_Q`` ``[n_heads, d_model,
d_head]``, ``blocks.0.mlp.W_in`` ``[d_model, d_mlp]``, ``ln_final.b``, ``unembed.W_U``
...). A model with other names passes ``name_map``: a dict of substring replacements
applied in order to each reference name (``{"blocks.": "layers."}``), or a function from
reference name to the student's name. Shapes must be the reference's.

**Forbidden.** ``nn.MultiheadAttention``, ``nn.Transformer*`` and
``F.scaled_dot_product_attention`` (:func:`check_no_forbidden_modules`): found in the
module tree, in the source of the model's classes (``ast``), and at run time (a
``TorchFunctionMode`` that sees every torch function the forward pass calls, so an
aliased import is caught too).
"""

from __future__ import annotations

import ast
import copy
import inspect
import math
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from decoding_gpt.attention import AttentionHead, MultiHeadAttention, attention_pattern
from decoding_gpt.checks import CheckError, compare_tensors, passed
from decoding_gpt.generation import generate
from decoding_gpt.training import TrainConfig, lm_loss, make_optimizer
from decoding_gpt.transformer import GPT, MLP, GPTConfig, LayerNorm, TransformerBlock

__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "FORBIDDEN_MODULES",
    "check_attention_head",
    "check_attention_pattern",
    "check_block",
    "check_causality",
    "check_config_shapes",
    "check_generate",
    "check_gpt",
    "check_initial_loss",
    "check_layernorm",
    "check_loss",
    "check_matches_reference",
    "check_mlp",
    "check_multihead_attention",
    "check_no_forbidden_modules",
    "check_overfits",
]

NameMap = dict[str, str] | Callable[[str], str] | None

FORBIDDEN_MODULES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
# torch functions a forward pass must not call (as TorchFunctionMode reports them)
FORBIDDEN_FUNCTIONS = ("scaled_dot_product_attention", "multi_head_attention_forward")
_TRUSTED_PACKAGES = ("torch", "decoding_gpt", "transformer_lens", "builtins")
_FORBIDDEN_NAMES = {cls.__name__ for cls in FORBIDDEN_MODULES} | set(FORBIDDEN_FUNCTIONS)

# Small configs: every size differs, so a hard-coded size shows up as a wrong shape.
CFG = GPTConfig(d_vocab=29, n_ctx=10, d_model=24, n_layers=2, n_heads=3, d_mlp=36)
CFG_OTHER = GPTConfig(d_vocab=23, n_ctx=7, d_model=16, n_layers=1, n_heads=2, d_head=5, d_mlp=20)


# ======================================================================== helpers
@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without changing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomise(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Overwrite every parameter with N(0, scale^2) (LayerNorm gains: 1 + N(0, scale^2)).

    Biases and gains at their init (0 and 1) would hide a missing bias or gain; random
    values make every parameter matter.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            is_gain = name.split(".")[-1] == "w" and param.ndim == 1
            param.copy_(noise + 1.0 if is_gain else noise)
    return module


def _map_name(name: str, name_map: NameMap) -> str:
    if name_map is None:
        return name
    if callable(name_map):
        return name_map(name)
    for old, new in name_map.items():
        name = name.replace(old, new)
    return name


def _load_reference(student: nn.Module, reference: nn.Module, name_map: NameMap, what: str) -> None:
    """Copy the reference's parameters into ``student`` (names mapped, shapes equal)."""
    if not isinstance(student, nn.Module):
        raise CheckError(f"your {what} must be an nn.Module, got {type(student).__name__}.")
    want = {_map_name(k, name_map): v for k, v in reference.named_parameters()}
    have = dict(student.named_parameters())
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    if missing or unexpected:
        raise CheckError(
            f"your {what}'s parameter names differ from the reference's: missing "
            f"{missing[:6]}, unexpected {unexpected[:6]}. Use the TransformerLens names of "
            "the README (or pass name_map={reference_substring: yours}); every weight must "
            "be an nn.Parameter, and no extra parameters."
        )
    for key, value in want.items():
        if have[key].shape != value.shape:
            raise CheckError(
                f"parameter {key} has shape {tuple(have[key].shape)}, expected "
                f"{tuple(value.shape)} (TransformerLens layout, e.g. W_Q [n_heads, d_model, "
                "d_head], W_in [d_model, d_mlp]; x @ W, not W @ x)."
            )
    with torch.no_grad():
        for key, value in want.items():
            have[key].copy_(value)


def _build(cls: Callable[..., Any], *args: Any, what: str) -> nn.Module:
    with _seeded(0):
        module = cls(*args)
    if not isinstance(module, nn.Module):
        raise CheckError(f"{what} must build an nn.Module, got {type(module).__name__}.")
    return module


def _as_tensor(value: Any, name: str) -> Tensor:
    if value is None:
        raise CheckError(f"{name} is None: did you forget to `return` it?")
    if not isinstance(value, Tensor):
        raise CheckError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    return value.detach()


def _close(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol))


# ======================================================================== 1. attention pattern
def _qk() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    # scale 2: scores of order d_head, so a missing 1/sqrt(d_head) changes the pattern a lot
    q = torch.randn(2, 3, 6, 4, generator=gen) * 2  # [batch, head, pos, d_head]
    k = torch.randn(2, 3, 6, 4, generator=gen) * 2
    return q, k


def _diagnose_pattern(got: Tensor, q: Tensor, k: Tensor) -> None:
    """Raise a specific CheckError for the classic attention-pattern bugs."""
    n = q.shape[-2]
    if torch.isnan(got).any():
        rows = torch.isnan(got).any(dim=-1).flatten(0, -2).any(dim=0).nonzero().flatten()
        if rows.tolist() == [0]:
            raise CheckError(
                "the pattern has NaNs in row 0 only: query 0 has no key it may attend to, "
                "so your mask hides the diagonal. Query i attends keys j <= i "
                "(torch.tril(ones, diagonal=0)), itself included."
            )
        raise CheckError(
            "the pattern has NaNs: 0 * -inf = NaN. Do not MULTIPLY the scores by a mask of "
            "0/-inf (or 1/-inf); ADD a mask of 0/-inf or use scores.masked_fill(~allowed, "
            "float('-inf'))."
        )
    future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    leak = got[..., future].abs().amax().item()
    if leak > 1e-6:
        first_future = torch.diagonal(got, offset=1, dim1=-2, dim2=-1).abs().amax().item()
        far_future = got[..., torch.triu(torch.ones(n, n, dtype=torch.bool), 2)].abs().amax()
        past = got[..., future.T].abs().amax().item()
        if first_future > 1e-6 and far_future.item() <= 1e-6:
            raise CheckError(
                "the mask is off by one: query i attends key i + 1 (the next token). "
                "Mask keys j > i, i.e. torch.triu(ones, diagonal=1) is the part to hide."
            )
        if past <= 1e-6:
            raise CheckError(
                "the mask is transposed: query i attends keys j >= i (the future) and none "
                "before it. Query i may attend keys j <= i: keep the LOWER triangle (tril)."
            )
        raise CheckError(
            f"query i puts weight up to {leak:.3g} on future keys j > i: there is no "
            "causal mask. Add -inf to the scores where j > i before the softmax."
        )
    row_sums, col_sums = got.sum(-1), got.sum(-2)
    if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5):
        if torch.allclose(col_sums, torch.ones_like(col_sums), atol=1e-5):
            raise CheckError(
                "the COLUMNS of the pattern sum to 1, not the rows: you took the softmax "
                "over the query axis. Each query's weights over keys sum to 1: softmax(dim=-1)."
            )
        raise CheckError(
            f"rows of the pattern sum to values in [{row_sums.min():.3f}, "
            f"{row_sums.max():.3f}], not 1: apply a softmax over the key axis (dim=-1)."
        )
    d_head = q.shape[-1]
    if _close(got, attention_pattern(q * math.sqrt(d_head), k)):
        raise CheckError(
            "the pattern matches softmax(q k^T + M) without the 1/sqrt(d_head) scale: "
            "divide the scores by sqrt(d_head) (keeps their variance O(1))."
        )
    if _close(got, attention_pattern(q / math.sqrt(d_head), k)):
        raise CheckError("you divided the scores by d_head; divide by sqrt(d_head).")


def check_attention_pattern(
    fn: Callable[[Float[Tensor, "... q d_head"], Float[Tensor, "... k d_head"]], Tensor],
) -> None:
    """``fn(q, k) -> softmax(q k^T / sqrt(d_head) + M)``, ``[..., q, k]``, causal.

    Compared with :func:`decoding_gpt.attention.attention_pattern` on ``[batch, head,
    pos, d_head]`` inputs; every row must sum to 1 and put zero weight on keys ``j > i``.
    """
    q, k = _qk()
    got = _as_tensor(fn(q.clone(), k.clone()), "pattern")
    want = attention_pattern(q, k)
    if got.shape != want.shape:
        raise CheckError(
            f"pattern has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
            "([..., query, key]: q @ k.transpose(-2, -1), keeping the leading axes)."
        )
    if not _close(got, want):
        _diagnose_pattern(got, q, k)
    compare_tensors(got, want, "pattern", atol=1e-5)
    passed("check_attention_pattern")


# ======================================================================== 2. one head
def check_attention_head(cls: Callable[[int, int], nn.Module], name_map: NameMap = None) -> None:
    """``cls(d_model, d_head)``: one causal head with ``W_Q, W_K, W_V [d_model, d_head]``
    and ``W_O [d_head, d_model]``; ``forward(x [batch, pos, d_model])`` returns
    ``softmax(x W_Q (x W_K)^T / sqrt(d_head) + M) x W_V W_O``.

    Compared with :class:`decoding_gpt.attention.AttentionHead` holding the same weights.
    """
    d_model, d_head = 12, 4
    with _seeded(0):
        reference = _randomise(AttentionHead(d_model, d_head), seed=2, scale=0.5)
    head = _build(cls, d_model, d_head, what="your AttentionHead class")
    _load_reference(head, reference, name_map, "attention head")
    x = torch.randn(2, 6, d_model, generator=torch.Generator().manual_seed(3))
    got = _as_tensor(head(x.clone()), "head(x)")
    with torch.no_grad():
        want = reference(x)
        q, k, v = x @ reference.W_Q, x @ reference.W_K, x @ reference.W_V
        w_o = reference.W_O
        if got.shape == (2, 6, d_head):
            raise CheckError(
                f"head(x) has shape {tuple(got.shape)}, expected {tuple(want.shape)}: "
                "multiply z by W_O [d_head, d_model] to write back to the residual stream."
            )
        if _close(got, v @ w_o):
            raise CheckError(
                "head(x) equals x W_V W_O: the values are taken at the QUERY position "
                "(x_q W_V). Output i is sum_j pattern[i, j] (x_j W_V) W_O: pattern @ (x W_V)."
            )
        if _close(got, attention_pattern(q, k, causal=False) @ v @ w_o):
            raise CheckError("head(x) attends to future positions: apply the causal mask.")
        if _close(got, attention_pattern(q * math.sqrt(d_head), k) @ v @ w_o):
            raise CheckError("head(x) is missing the 1/sqrt(d_head) scale of the scores.")
        if _close(got, attention_pattern(q * math.sqrt(d_head / d_model), k) @ v @ w_o):
            raise CheckError("divide the scores by sqrt(d_head), not sqrt(d_model).")
    compare_tensors(got, want, "head(x)", atol=1e-5)
    passed("check_attention_head")


# ======================================================================== 3. multi-head
def check_no_forbidden_modules(model: nn.Module, example_input: Tensor | None = None) -> None:
    """No ``nn.MultiheadAttention``/``nn.Transformer*`` modules, no
    ``F.scaled_dot_product_attention``: in the module tree, in the source of every class
    of the tree outside torch and this course's package, and, if ``example_input`` is
    given, among the torch functions that ``model(example_input)`` calls.
    """
    for name, module in model.named_modules():
        if isinstance(module, FORBIDDEN_MODULES):
            raise CheckError(
                f"forbidden module {type(module).__name__} at {name or 'the top'}: this "
                "homework builds attention from scratch (no nn.MultiheadAttention, "
                "nn.Transformer*, F.scaled_dot_product_attention)."
            )
    for cls in {type(module) for module in model.modules()}:
        used = _forbidden_in_source(cls)
        if used:
            raise CheckError(
                f"the source of {cls.__name__} uses {sorted(used)}: forbidden in this "
                "homework; write the attention out (scores, mask, softmax, pattern @ v)."
            )
    if example_input is not None:
        with _Recorder() as recorder, torch.no_grad():
            model(example_input)
        used = recorder.seen & set(FORBIDDEN_FUNCTIONS)
        if used:
            raise CheckError(
                f"the forward pass calls {sorted(used)}: forbidden in this homework (even "
                "under another name); write the attention out (scores, mask, softmax, "
                "pattern @ v)."
            )


class _Recorder(TorchFunctionMode):
    """Records the name of every torch function called inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _forbidden_in_source(cls: type) -> set[str]:
    """Forbidden names used in the methods of ``cls`` (source read with ``inspect``)."""
    used: set[str] = set()
    own = [c for c in cls.__mro__ if c.__module__.split(".")[0] not in _TRUSTED_PACKAGES]
    for attr in (value for c in own for value in vars(c).values()):
        if not inspect.isfunction(attr):
            continue
        try:  # notebook cells have source via linecache; builtins and lambdas may not
            tree = ast.parse(textwrap.dedent(inspect.getsource(attr)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN_NAMES:
                used.add(node.attr)
            elif isinstance(node, ast.Name) and node.id in FORBIDDEN_FUNCTIONS:
                used.add(node.id)
            elif isinstance(node, ast.alias) and node.name in _FORBIDDEN_NAMES:
                used.add(node.name)
    return used


def _changed_positions(
    f: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, tol: float = 1e-5
) -> list[int]:
    """Positions (axis 1) whose outputs differ between inputs ``a`` and ``b``."""
    with torch.no_grad():
        diff = (_as_tensor(f(a), "output") - _as_tensor(f(b), "output")).abs()
    return [p for p in range(diff.shape[1]) if diff[:, p].amax().item() > tol]


def _causality(f: Callable[[Tensor], Tensor], x: Tensor, perturb: Callable, what: str) -> None:
    """Changing input position ``t`` must leave outputs at ``p < t`` unchanged."""
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


def check_causality(model: nn.Module, d_vocab: int, n_ctx: int) -> None:
    """Changing token ``t`` leaves the logits at every position ``< t`` unchanged (and
    changes the logits at ``t``). Run on a copy of ``model`` with large random weights,
    so any leak is visible.
    """
    model = _randomise(copy.deepcopy(model), seed=4, scale=0.3).eval()
    tokens = torch.randint(0, d_vocab, (2, n_ctx), generator=torch.Generator().manual_seed(5))

    def perturb(t: Tensor, pos: int) -> Tensor:
        t = t.clone()
        t[:, pos] = (t[:, pos] + 1) % d_vocab
        return t

    _causality(model, tokens, perturb, "token")
    passed("check_causality")


def check_multihead_attention(
    cls: Callable[[int, int, int], nn.Module], name_map: NameMap = None
) -> None:
    """``cls(d_model, n_heads, d_head)``: causal multi-head attention with parameters
    ``W_Q, W_K, W_V [n_heads, d_model, d_head]``, ``b_Q, b_K, b_V [n_heads, d_head]``,
    ``W_O [n_heads, d_head, d_model]``, ``b_O [d_model]``; output = sum over heads of
    ``z_h W_O[h]`` plus ``b_O``. Compared with :class:`decoding_gpt.attention.
    MultiHeadAttention` holding the same weights; also causal and forbidden-module free.
    """
    d_model, n_heads, d_head = 12, 3, 5  # d_head != d_model / n_heads on purpose
    with _seeded(0):
        reference = MultiHeadAttention(d_model, n_heads, d_head, use_fast_attention=False)
    _randomise(reference, seed=6, scale=0.4)
    attn = _build(cls, d_model, n_heads, d_head, what="your MultiHeadAttention class")
    x = torch.randn(2, 7, d_model, generator=torch.Generator().manual_seed(7))
    check_no_forbidden_modules(attn, x)
    _load_reference(attn, reference, name_map, "multi-head attention")

    def perturb(x: Tensor, pos: int) -> Tensor:
        x = x.clone()
        x[:, pos] += 1.0
        return x

    got = _as_tensor(attn(x.clone()), "attn(x)")
    with torch.no_grad():
        want = reference(x)
    if got.shape != want.shape:
        raise CheckError(
            f"attn(x) has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
            "[batch, pos, d_model]: sum the heads' outputs z_h W_O[h]."
        )
    if torch.isnan(got).any():
        raise CheckError(
            "attn(x) has NaNs: 0 * -inf = NaN (multiply-by-mask), or a query with every key "
            "masked. Add a 0/-inf mask (or masked_fill) and keep the diagonal."
        )
    _causality(attn, x, perturb, "position")
    if not _close(got, want, atol=1e-4):
        b_o = reference.b_O.detach()
        if _close(got + b_o, want, atol=1e-4):
            raise CheckError("attn(x) is missing the output bias b_O.")
        if _close(got * n_heads, want - b_o * (1 - n_heads), atol=1e-4):
            raise CheckError("you averaged the heads; their outputs are SUMMED.")
    compare_tensors(
        got, want, "attn(x)", atol=1e-4,
        hint="Check q = x W_Q[h] + b_Q[h] per head (einsum 'bpm,hmd->bphd'), the scale "
        "1/sqrt(d_head), and that heads are not mixed by a reshape without a transpose.",
    )  # fmt: skip
    passed("check_multihead_attention")


# ======================================================================== 4. LN, MLP, block
def check_layernorm(cls: Callable[[int, float], nn.Module], name_map: NameMap = None) -> None:
    """``cls(d_model, eps)`` with parameters ``w, b [d_model]``: ``(x - mean) /
    sqrt(var + eps) * w + b`` over the LAST axis, biased variance (divide by d_model).

    Compared with :class:`decoding_gpt.transformer.LayerNorm` (i.e. ``F.layer_norm``) on
    inputs of small variance, where ``eps`` matters.
    """
    d_model, eps = 8, 1e-5
    reference = _randomise(LayerNorm(d_model, eps), seed=8, scale=0.5)
    ln = _build(cls, d_model, eps, what="your LayerNorm class")
    _load_reference(ln, reference, name_map, "LayerNorm")
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 5, d_model, generator=gen) * 3e-3 + torch.randn(2, 5, 1, generator=gen)
    got = _as_tensor(ln(x.clone()), "ln(x)")
    with torch.no_grad():
        want = reference(x)
        w, b = reference.w, reference.b
        centred = x - x.mean(-1, keepdim=True)
        if _close(got, centred / x.std(-1, keepdim=True).pow(2).add(eps).sqrt() * w + b, 1e-4):
            raise CheckError(
                "you used the unbiased variance (divide by d_model - 1): LayerNorm uses the "
                "biased one, x.var(-1, unbiased=False) or ((x - mean)**2).mean(-1)."
            )
        if _close(got, centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w + b):
            raise CheckError("eps goes INSIDE the square root: sqrt(var + eps), not std + eps.")
    if got.shape == want.shape and not _close(got, want, atol=1e-4):
        raise CheckError(
            "ln(x) differs from the reference: normalise each position over the LAST axis "
            "(d_model) with mean(-1, keepdim=True), then scale by w and shift by b."
        )
    compare_tensors(got, want, "ln(x)", atol=1e-4)
    passed("check_layernorm")


def check_mlp(cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None) -> None:
    """``cls(cfg)`` with ``W_in [d_model, d_mlp]``, ``b_in``, ``W_out [d_mlp, d_model]``,
    ``b_out``: ``act(x W_in + b_in) W_out + b_out`` with ``act`` from ``cfg.act_fn``
    (``"gelu"``: exact ``F.gelu``; ``"relu"``). Compared with
    :class:`decoding_gpt.transformer.MLP` for both activations.
    """
    for act_fn in ("gelu", "relu"):
        cfg = GPTConfig(**{**CFG.to_dict(), "act_fn": act_fn})
        with _seeded(0):
            reference = _randomise(MLP(cfg), seed=10, scale=0.5)
        mlp = _build(cls, cfg, what="your MLP class")
        _load_reference(mlp, reference, name_map, "MLP")
        x = torch.randn(2, 5, cfg.d_model, generator=torch.Generator().manual_seed(11))
        got = _as_tensor(mlp(x.clone()), "mlp(x)")
        with torch.no_grad():
            want = reference(x)
            pre = x @ reference.W_in + reference.b_in
            variants = {
                "no activation: without a nonlinearity the MLP is one linear map": pre,
                f"cfg.act_fn is {act_fn!r} but you used ReLU": F.relu(pre),
                f"cfg.act_fn is {act_fn!r} but you used GELU": F.gelu(pre),
                "'gelu' is the exact F.gelu, not the tanh approximation ('gelu_new')": F.gelu(
                    pre, approximate="tanh"
                ),
            }
            for message, hidden in variants.items():
                variant = hidden @ reference.W_out + reference.b_out
                if _close(got, variant, 1e-5) and not _close(got, want, 1e-5):
                    raise CheckError(f"mlp(x) is wrong: {message}.")
        compare_tensors(
            got, want, f"mlp(x) with act_fn={act_fn!r}", atol=1e-4,
            hint="mlp(x) = act(x W_in + b_in) W_out + b_out, act chosen by cfg.act_fn.",
        )  # fmt: skip
    passed("check_mlp")


def check_block(cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None) -> None:
    """``cls(cfg)`` with submodules ``ln1, attn, ln2, mlp``: the pre-LN block
    ``x_mid = x + attn(ln1(x))``, ``out = x_mid + mlp(ln2(x_mid))``. Compared with
    :class:`decoding_gpt.transformer.TransformerBlock` holding the same weights.
    """
    with _seeded(0):
        reference = _randomise(TransformerBlock(CFG), seed=12, scale=0.3)
    reference.attn.use_fast_attention = False
    block = _build(cls, CFG, what="your TransformerBlock class")
    _load_reference(block, reference, name_map, "block")
    x = torch.randn(2, 6, CFG.d_model, generator=torch.Generator().manual_seed(13))
    got = _as_tensor(block(x.clone()), "block(x)")
    with torch.no_grad():
        want = reference(x)
        ln1, attn, ln2, mlp = reference.ln1, reference.attn, reference.ln2, reference.mlp
        mid = x + attn(ln1(x))
        post_mid = ln1(x + attn(x))
        variants = {
            "post-LN (LayerNorm after the residual add): this block is pre-LN, "
            "x + attn(ln1(x)), then x_mid + mlp(ln2(x_mid))": ln2(post_mid + mlp(post_mid)),
            "the residual connections are missing: ADD each sublayer's output to its "
            "input, x + attn(ln1(x))": mlp(ln2(attn(ln1(x)))),
            "the MLP reads x, not x_mid: it must see the attention output, "
            "x_mid + mlp(ln2(x_mid)) with x_mid = x + attn(ln1(x))": mid + mlp(ln2(x)),
            "the MLP branch uses ln1: each sublayer has its own LayerNorm (ln2 before the MLP)": mid
            + mlp(ln1(mid)),
        }
        for message, variant in variants.items():
            if _close(got, variant, 1e-4):
                raise CheckError(f"block(x) is wrong: {message}.")
    compare_tensors(got, want, "block(x)", atol=1e-4)
    passed("check_block")


# ======================================================================== 5. the GPT
def check_config_shapes(cls: Callable[[GPTConfig], nn.Module]) -> None:
    """For two configs (every size different, ``d_head != d_model / n_heads`` in one):
    the logits are ``[batch, pos, d_vocab]`` and the parameter count is exactly
    ``cfg.n_params`` (reference formula in :class:`decoding_gpt.transformer.GPTConfig`).
    """
    for cfg in (CFG, CFG_OTHER):
        model = _build(cls, cfg, what="your GPT class")
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n_params != cfg.n_params:
            with _seeded(0):
                ref_counts = _counts_by_part(GPT(cfg))
            mine = _counts_by_part(model)
            parts = sorted(set(mine) | set(ref_counts))
            diffs = [f"{p}: {mine.get(p, 0)} vs {ref_counts.get(p, 0)}" for p in parts if
                     mine.get(p, 0) != ref_counts.get(p, 0)]  # fmt: skip
            raise CheckError(
                f"your GPT has {n_params} trainable parameters for {cfg}, expected "
                f"{cfg.n_params} (yours vs reference by top-level part: {diffs[:5]}). Take "
                "every size from cfg (d_mlp, d_head, n_ctx...), untied W_E and W_U, biases "
                "as in the README."
            )
        for batch, pos in ((2, cfg.n_ctx), (3, 3)):
            tokens = torch.randint(
                0, cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(21)
            )
            with torch.no_grad():
                logits = _as_tensor(model(tokens), "logits")
            if tuple(logits.shape) != (batch, pos, cfg.d_vocab):
                raise CheckError(
                    f"logits have shape {tuple(logits.shape)} for tokens {(batch, pos)}, "
                    f"expected {(batch, pos, cfg.d_vocab)} [batch, pos, d_vocab] (with "
                    f"cfg.d_vocab={cfg.d_vocab}, cfg.n_ctx={cfg.n_ctx})."
                )
    passed("check_config_shapes")


def _counts_by_part(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        part = name.split(".")[0]
        counts[part] = counts.get(part, 0) + param.numel()
    return counts


def check_matches_reference(
    cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None
) -> None:
    """Load a (randomised) :class:`decoding_gpt.transformer.GPT`'s weights into ``cls(cfg)``
    through ``name_map`` and compare the logits (``atol 1e-4``)."""
    with _seeded(0):
        reference = _randomise(GPT(CFG), seed=14, scale=0.3).eval()
    model = _build(cls, CFG, what="your GPT class")
    _load_reference(model, reference, name_map, "GPT")
    tokens = torch.randint(
        0, CFG.d_vocab, (2, CFG.n_ctx), generator=torch.Generator().manual_seed(21)
    )
    with torch.no_grad():
        got = _as_tensor(model.eval()(tokens), "logits")
        want = reference(tokens)
        if got.shape == want.shape and not _close(got, want, 1e-4):
            _, cache = reference.run_with_cache(tokens)
            last = cache[f"blocks.{CFG.n_layers - 1}.hook_resid_post"]
            if _close(got, reference.unembed(last), 1e-4):
                raise CheckError("apply ln_final to the residual stream before the unembedding.")
            no_pos = reference.run_with_hooks(
                tokens, fwd_hooks=[("hook_pos_embed", lambda pos, hook: torch.zeros_like(pos))]
            )
            if _close(got, no_pos, 1e-4):
                raise CheckError("add the positional embedding W_pos[:pos] to W_E[tokens].")
    compare_tensors(
        got, want, "logits", atol=1e-4,
        hint="Each block must see the previous block's output, in order blocks[0], blocks[1]...",
    )  # fmt: skip
    passed("check_matches_reference")


def check_gpt(cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None) -> None:
    """All GPT checks: forbidden modules, config-driven shapes and exact parameter count,
    equivalence with the reference weights, causality."""
    model = _build(cls, CFG, what="your GPT class")
    tokens = torch.randint(
        0, CFG.d_vocab, (2, CFG.n_ctx), generator=torch.Generator().manual_seed(21)
    )
    check_no_forbidden_modules(model, tokens)
    check_config_shapes(cls)
    check_causality(model, CFG.d_vocab, CFG.n_ctx)  # before the values: a sharper message
    check_matches_reference(cls, name_map)
    passed("check_gpt")


# ======================================================================== 6. loss, training
def check_loss(
    fn: Callable[[Float[Tensor, "batch pos d_vocab"], Int[Tensor, "batch pos"]], Tensor],
) -> None:
    """``fn(logits, tokens)``: the mean cross-entropy of predicting ``tokens[:, t+1]``
    from ``logits[:, t]`` (shift along the SEQUENCE axis). Compared with
    :func:`decoding_gpt.training.lm_loss`; must keep the graph (``requires_grad``)."""
    gen = torch.Generator().manual_seed(15)
    logits = torch.randn(3, 6, 11, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 11, (3, 6), generator=gen)
    loss = fn(logits, tokens.clone())
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        raise CheckError(
            f"the loss must be a scalar tensor, got {type(loss).__name__} "
            f"{tuple(getattr(loss, 'shape', ()))} (reduce with the mean; keep it a tensor)."
        )
    if not loss.requires_grad:
        raise CheckError(
            "the loss does not require grad: you left the graph (.item(), .detach(), numpy, "
            "torch.no_grad()); return the tensor from F.cross_entropy."
        )
    got = loss.detach()
    want = lm_loss(logits.detach(), tokens)
    vocab = logits.shape[-1]
    with torch.no_grad():
        variants = {
            "you shifted along the BATCH axis (logits[:-1] vs tokens[1:]): each sequence "
            "then predicts another sequence. Shift along dim 1: logits[:, :-1] predict "
            "tokens[:, 1:]": F.cross_entropy(logits[:-1].reshape(-1, vocab), tokens[1:].flatten()),
            "you did not shift: position t must predict token t + 1, not token t "
            "(logits[:, :-1] vs tokens[:, 1:])": F.cross_entropy(
                logits.reshape(-1, vocab), tokens.flatten()
            ),
            "the shift goes the wrong way: logits[:, :-1] (positions 0..T-2) predict "
            "tokens[:, 1:]": F.cross_entropy(
                logits[:, 1:].reshape(-1, vocab), tokens[:, :-1].flatten()
            ),
            "you summed the per-token losses: take the mean": want * tokens[:, 1:].numel(),
        }
    for message, variant in variants.items():
        if _close(got, variant, 1e-5) and not _close(got, want, 1e-5):
            raise CheckError(f"wrong loss: {message}.")
    compare_tensors(got, want, "loss", atol=1e-5)
    passed("check_loss")


def check_initial_loss(cls: Callable[[GPTConfig], nn.Module], tolerance: float = 0.25) -> None:
    """A freshly initialised model predicts nearly uniformly: its next-token loss on
    random tokens is ``ln(d_vocab)`` within ``tolerance`` nats (reference: ~0.02 off,
    with weights ~ N(0, 0.02^2) and zero biases)."""
    cfg = GPTConfig(d_vocab=500, n_ctx=16, d_model=32, n_layers=2, n_heads=4)
    model = _build(cls, cfg, what="your GPT class")
    tokens = torch.randint(
        0, cfg.d_vocab, (4, cfg.n_ctx), generator=torch.Generator().manual_seed(16)
    )
    with torch.no_grad():
        logits = _as_tensor(model(tokens), "logits")
    if (logits >= 0).all() and torch.allclose(logits.sum(-1), torch.ones(logits.shape[:2])):
        raise CheckError(
            "your model returns probabilities (rows sum to 1): return the LOGITS; "
            "F.cross_entropy applies the log-softmax itself."
        )
    loss = lm_loss(logits, tokens).item()
    expected = math.log(cfg.d_vocab)
    if not math.isfinite(loss) or abs(loss - expected) > tolerance:
        raise CheckError(
            f"initial loss {loss:.3f}, expected ln(d_vocab) = {expected:.3f} +- {tolerance}: "
            "an untrained model should be unsure of every token. Initialise weights "
            "~ N(0, init_range^2) with cfg.init_range = 0.02 (not N(0, 1)) and biases at 0."
        )
    passed("check_initial_loss")


def check_overfits(
    cls: Callable[[GPTConfig], nn.Module],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int = 60,
    threshold: float = 0.5,
) -> None:
    """Trained with ``loss_fn`` (AdamW from :func:`decoding_gpt.training.make_optimizer`,
    lr 1e-2, ``steps`` steps) on one repeated random sequence, the model memorises it:
    the reference loss :func:`~decoding_gpt.training.lm_loss` drops below ``threshold``."""
    cfg = GPTConfig(d_vocab=40, n_ctx=12, d_model=32, n_layers=1, n_heads=2)
    model = _build(cls, cfg, what="your GPT class").train()
    tokens = torch.randint(
        0, cfg.d_vocab, (1, cfg.n_ctx), generator=torch.Generator().manual_seed(17)
    )
    tokens = tokens.repeat(2, 1)  # a batch of two copies: a batch-axis shift shows up
    if not any(p.requires_grad for p in model.parameters()):
        raise CheckError("your model has no trainable parameters: wrap weights in nn.Parameter.")
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0, warmup_steps=0))
    with _seeded(18):
        for _ in range(steps):
            loss = loss_fn(model(tokens), tokens)
            if not isinstance(loss, Tensor) or loss.grad_fn is None:
                raise CheckError(
                    "the loss has no gradient: the model's forward or the loss leaves the "
                    "graph (.detach(), .item(), .numpy(), torch.no_grad(), new tensors "
                    "built from .data)."
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            final = lm_loss(model.eval()(tokens), tokens).item()
    if not final < threshold:
        raise CheckError(
            f"after {steps} steps on one repeated sequence the loss is {final:.3f} (a correct "
            f"model reaches < {threshold}): the model cannot memorise it. Do the logits depend "
            "on the tokens and their positions, and does loss_fn compare logits[:, t] with "
            "tokens[:, t + 1]?"
        )
    passed("check_overfits")


# ======================================================================== 7. generate
def _generate_model(scale: float) -> GPT:
    cfg = GPTConfig(d_vocab=31, n_ctx=8, d_model=16, n_layers=1, n_heads=2)
    with _seeded(0):
        model = GPT(cfg)
    return _randomise(model, seed=19, scale=scale).eval() if scale else model.eval()


def _call_generate(fn: Callable, model: nn.Module, prompt: Tensor, n: int, **kwargs: Any) -> Tensor:
    try:
        out = fn(model, prompt.clone(), n, **kwargs)
    except ValueError as err:
        if "n_ctx" in str(err) and len(prompt) + n > model.cfg.n_ctx:
            raise CheckError(
                f"generate raised {err!r} for a prompt of {len(prompt)} tokens plus {n} new "
                f"ones (n_ctx={model.cfg.n_ctx}): feed the model only the LAST n_ctx tokens, "
                "seq[-n_ctx:], and keep the whole sequence in the output."
            ) from None
        raise
    out = _as_tensor(out, "generate(...)")
    if out.dtype.is_floating_point or out.dtype == torch.bool:
        raise CheckError(f"generate must return token ids (an integer tensor), got {out.dtype}.")
    if out.ndim != 1:
        raise CheckError(
            f"generate(model, prompt [pos], ...) must return a 1-D tensor, got shape "
            f"{tuple(out.shape)}."
        )
    expected = len(prompt) + n
    if len(out) != expected:
        hint = {
            len(prompt): " The sampled tokens are never appended to the sequence.",
            n: " Return the prompt FOLLOWED by the new tokens.",
            expected + 1: " One token too many: generate exactly max_new_tokens.",
            expected - 1: " One token too few: generate exactly max_new_tokens.",
        }.get(len(out), "")
        raise CheckError(
            f"generate returned {len(out)} tokens for a {len(prompt)}-token prompt and "
            f"max_new_tokens={n}, expected {expected}.{hint}"
        )
    if not torch.equal(out[: len(prompt)].cpu(), prompt):
        raise CheckError("the output must start with the prompt, unchanged.")
    return out.cpu()


def _greedy_at_first_position(model: nn.Module, prompt: Tensor, n: int) -> Tensor:
    """The classic bug, for diagnosis: logits read at position 0 instead of -1."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            next_token = model(seq[-model.cfg.n_ctx :][None])[0, 0].argmax()
            seq = torch.cat([seq, next_token[None]])
    return seq


def check_generate(fn: Callable[..., Tensor]) -> None:
    """``fn(model, prompt [pos], max_new_tokens, temperature=1.0, seed=None)``: returns
    the prompt followed by exactly ``max_new_tokens`` tokens. ``temperature=0`` is greedy
    and must equal :func:`decoding_gpt.generation.generate` (``greedy=True``), also for
    prompts longer than ``n_ctx`` (only the last ``n_ctx`` tokens condition the model);
    the same ``seed`` gives the same sample whatever the global RNG state, and different
    seeds different samples.
    """
    model = _generate_model(scale=0.5)
    n_ctx = model.cfg.n_ctx
    gen = torch.Generator().manual_seed(20)
    for length, n in ((3, 4), (n_ctx - 2, 6), (n_ctx + 5, 3)):
        prompt = torch.randint(0, model.cfg.d_vocab, (length,), generator=gen)
        got = _call_generate(fn, model, prompt, n, temperature=0.0)
        want = generate(model, prompt, n, greedy=True, use_kv_cache=False)
        if not torch.equal(got, want):
            if torch.equal(got, _greedy_at_first_position(model, prompt, n)):
                raise CheckError(
                    "greedy tokens come from the logits at position 0: the LAST position "
                    "predicts the next token, logits[:, -1]."
                )
            first = int((got != want).nonzero()[0])
            raise CheckError(
                f"greedy generation (temperature=0) differs from the reference at index "
                f"{first} (prompt of {length} tokens, n_ctx={n_ctx}): take argmax of "
                "logits[:, -1] of model(seq[-n_ctx:]) (the LAST n_ctx tokens) and append it."
            )
    flat = _generate_model(scale=0.0)  # near-uniform next-token distribution
    prompt = torch.randint(0, flat.cfg.d_vocab, (3,), generator=gen)
    samples = []
    for seed, global_seed in ((3, 0), (3, 1), (4, 0)):
        torch.manual_seed(global_seed)  # a seeded generate must not depend on this
        samples.append(_call_generate(fn, flat, prompt, 12, temperature=1.0, seed=seed))
    if not torch.equal(samples[0], samples[1]):
        raise CheckError(
            "two calls with seed=3 gave different tokens: sample with "
            "torch.Generator().manual_seed(seed) (torch.multinomial(..., generator=...))."
        )
    if torch.equal(samples[0], samples[2]):
        raise CheckError(
            "seeds 3 and 4 gave the same 12 tokens from a near-uniform model: with "
            "temperature=1 you must SAMPLE (torch.multinomial), not take the argmax."
        )
    passed("check_generate")
