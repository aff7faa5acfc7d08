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

The checks of one head, multi-head attention, LayerNorm, the pre-LN block and the loss
are shared with lectures 06 and 08 (which ask for plain functions): they live in
:mod:`decoding_gpt.checks.components` and take this homework's classes through an
adapter (:mod:`decoding_gpt.checks.adapters`), with the same ``name_map``.

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

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from decoding_gpt.attention import attention_pattern
from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed
from decoding_gpt.checks.adapters import (
    FORBIDDEN_FUNCTIONS,
    FORBIDDEN_MODULES,
    NameMap,
    as_tensor,
    build_module,
    check_no_forbidden_modules,
    close,
    load_weights,
    randomise,
    seeded,
)
from decoding_gpt.checks.components import (
    assert_causal,
    check_attention_head,
    check_layer_norm,
    check_multi_head_attention,
    check_next_token_loss,
    check_pre_ln_block,
)
from decoding_gpt.generation import generate
from decoding_gpt.training import TrainConfig, make_optimizer
from decoding_gpt.transformer import GPT, MLP, GPTConfig, next_token_loss

__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "FORBIDDEN_MODULES",
    "check_attention_head",
    "check_attention_pattern",
    "check_causality",
    "check_config_shapes",
    "check_generate",
    "check_gpt",
    "check_initial_loss",
    "check_layer_norm",
    "check_matches_reference",
    "check_mlp",
    "check_multi_head_attention",
    "check_next_token_loss",
    "check_no_forbidden_modules",
    "check_overfits",
    "check_pre_ln_block",
]

# Small configs: every size differs, so a hard-coded size shows up as a wrong shape.
CFG = GPTConfig(d_vocab=29, n_ctx=10, d_model=24, n_layers=2, n_heads=3, d_mlp=36)
CFG_OTHER = GPTConfig(d_vocab=23, n_ctx=7, d_model=16, n_layers=1, n_heads=2, d_head=5, d_mlp=20)


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
    if close(got, attention_pattern(q * math.sqrt(d_head), k)):
        raise CheckError(
            "the pattern matches softmax(q k^T + M) without the 1/sqrt(d_head) scale: "
            "divide the scores by sqrt(d_head) (keeps their variance O(1))."
        )
    if close(got, attention_pattern(q / math.sqrt(d_head), k)):
        raise CheckError("you divided the scores by d_head; divide by sqrt(d_head).")


@exercise
def check_attention_pattern(
    fn: Callable[[Float[Tensor, "... q d_head"], Float[Tensor, "... k d_head"]], Tensor],
) -> None:
    """``fn(q, k) -> softmax(q k^T / sqrt(d_head) + M)``, ``[..., q, k]``, causal.

    Compared with :func:`decoding_gpt.attention.attention_pattern` on ``[batch, head,
    pos, d_head]`` inputs; every row must sum to 1 and put zero weight on keys ``j > i``.
    """
    q, k = _qk()
    got = as_tensor(fn(q.clone(), k.clone()), "pattern")
    want = attention_pattern(q, k)
    if got.shape != want.shape:
        raise CheckError(
            f"pattern has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
            "([..., query, key]: q @ k.transpose(-2, -1), keeping the leading axes)."
        )
    if not close(got, want):
        _diagnose_pattern(got, q, k)
    compare_tensors(got, want, "pattern", atol=1e-5)
    passed("check_attention_pattern")


# ======================================================================== 2-4. causality, the MLP
# (one head, multi-head attention, LayerNorm and the block: see decoding_gpt.checks.components)
@exercise
def check_causality(model: nn.Module, d_vocab: int, n_ctx: int) -> None:
    """Changing token ``t`` leaves the logits at every position ``< t`` unchanged (and
    changes the logits at ``t``). Run on a copy of ``model`` with large random weights,
    so any leak is visible.
    """
    model = randomise(copy.deepcopy(model), seed=4, scale=0.3).eval()
    tokens = torch.randint(0, d_vocab, (2, n_ctx), generator=torch.Generator().manual_seed(5))

    def perturb(t: Tensor, pos: int) -> Tensor:
        t = t.clone()
        t[:, pos] = (t[:, pos] + 1) % d_vocab
        return t

    assert_causal(model, tokens, perturb, "token")
    passed("check_causality")


@exercise
def check_mlp(cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None) -> None:
    """``cls(cfg)`` with ``W_in [d_model, d_mlp]``, ``b_in``, ``W_out [d_mlp, d_model]``,
    ``b_out``: ``act(x W_in + b_in) W_out + b_out`` with ``act`` from ``cfg.act_fn``
    (``"gelu"``: exact ``F.gelu``; ``"relu"``). Compared with
    :class:`decoding_gpt.transformer.MLP` for both activations.
    """
    for act_fn in ("gelu", "relu"):
        cfg = GPTConfig(**{**CFG.to_dict(), "act_fn": act_fn})
        with seeded(0):
            reference = randomise(MLP(cfg), seed=10, scale=0.5)
        mlp = build_module(cls, cfg, what="your MLP class")
        load_weights(mlp, dict(reference.named_parameters()), name_map, "MLP")
        x = torch.randn(2, 5, cfg.d_model, generator=torch.Generator().manual_seed(11))
        got = as_tensor(mlp(x.clone()), "mlp(x)")
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
                if close(got, variant, 1e-5) and not close(got, want, 1e-5):
                    raise CheckError(f"mlp(x) is wrong: {message}.")
        compare_tensors(
            got, want, f"mlp(x) with act_fn={act_fn!r}", atol=1e-4,
            hint="mlp(x) = act(x W_in + b_in) W_out + b_out, act chosen by cfg.act_fn.",
        )  # fmt: skip
    passed("check_mlp")


# ======================================================================== 5. the GPT
@exercise
def check_config_shapes(cls: Callable[[GPTConfig], nn.Module]) -> None:
    """For two configs (every size different, ``d_head != d_model / n_heads`` in one):
    the logits are ``[batch, pos, d_vocab]`` and the parameter count is exactly
    ``cfg.n_params`` (reference formula in :class:`decoding_gpt.transformer.GPTConfig`).
    """
    for cfg in (CFG, CFG_OTHER):
        model = build_module(cls, cfg, what="your GPT class")
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n_params != cfg.n_params:
            with seeded(0):
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
                logits = as_tensor(model(tokens), "logits")
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


@exercise
def check_matches_reference(
    cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None
) -> None:
    """Load a (randomised) :class:`decoding_gpt.transformer.GPT`'s weights into ``cls(cfg)``
    through ``name_map`` and compare the logits (``atol 1e-4``)."""
    with seeded(0):
        reference = randomise(GPT(CFG), seed=14, scale=0.3).eval()
    model = build_module(cls, CFG, what="your GPT class")
    load_weights(model, dict(reference.named_parameters()), name_map, "GPT")
    tokens = torch.randint(
        0, CFG.d_vocab, (2, CFG.n_ctx), generator=torch.Generator().manual_seed(21)
    )
    with torch.no_grad():
        got = as_tensor(model.eval()(tokens), "logits")
        want = reference(tokens)
        if got.shape == want.shape and not close(got, want, 1e-4):
            _, cache = reference.run_with_cache(tokens)
            last = cache[f"blocks.{CFG.n_layers - 1}.hook_resid_post"]
            if close(got, reference.unembed(last), 1e-4):
                raise CheckError("apply ln_final to the residual stream before the unembedding.")
            no_pos = reference.run_with_hooks(
                tokens, fwd_hooks=[("hook_pos_embed", lambda pos, hook: torch.zeros_like(pos))]
            )
            if close(got, no_pos, 1e-4):
                raise CheckError("add the positional embedding W_pos[:pos] to W_E[tokens].")
    compare_tensors(
        got, want, "logits", atol=1e-4,
        hint="Each block must see the previous block's output, in order blocks[0], blocks[1]...",
    )  # fmt: skip
    passed("check_matches_reference")


@exercise
def check_gpt(cls: Callable[[GPTConfig], nn.Module], name_map: NameMap = None) -> None:
    """All GPT checks: forbidden modules, config-driven shapes and exact parameter count,
    equivalence with the reference weights, causality."""
    model = build_module(cls, CFG, what="your GPT class")
    tokens = torch.randint(
        0, CFG.d_vocab, (2, CFG.n_ctx), generator=torch.Generator().manual_seed(21)
    )
    check_no_forbidden_modules(model, tokens)
    check_config_shapes(cls)
    check_causality(model, CFG.d_vocab, CFG.n_ctx)  # before the values: a sharper message
    check_matches_reference(cls, name_map)
    passed("check_gpt")


# ======================================================================== 6. loss, training
@exercise
def check_initial_loss(cls: Callable[[GPTConfig], nn.Module], tolerance: float = 0.25) -> None:
    """A freshly initialised model predicts nearly uniformly: its next-token loss on
    random tokens is ``ln(d_vocab)`` within ``tolerance`` nats (reference: ~0.02 off,
    with weights ~ N(0, 0.02^2) and zero biases)."""
    cfg = GPTConfig(d_vocab=500, n_ctx=16, d_model=32, n_layers=2, n_heads=4)
    model = build_module(cls, cfg, what="your GPT class")
    tokens = torch.randint(
        0, cfg.d_vocab, (4, cfg.n_ctx), generator=torch.Generator().manual_seed(16)
    )
    with torch.no_grad():
        logits = as_tensor(model(tokens), "logits")
    if (logits >= 0).all() and torch.allclose(logits.sum(-1), torch.ones(logits.shape[:2])):
        raise CheckError(
            "your model returns probabilities (rows sum to 1): return the LOGITS; "
            "F.cross_entropy applies the log-softmax itself."
        )
    loss = next_token_loss(logits, tokens).item()
    expected = math.log(cfg.d_vocab)
    if not math.isfinite(loss) or abs(loss - expected) > tolerance:
        raise CheckError(
            f"initial loss {loss:.3f}, expected ln(d_vocab) = {expected:.3f} +- {tolerance}: "
            "an untrained model should be unsure of every token. Initialise weights "
            "~ N(0, init_range^2) with cfg.init_range = 0.02 (not N(0, 1)) and biases at 0."
        )
    passed("check_initial_loss")


@exercise
def check_overfits(
    cls: Callable[[GPTConfig], nn.Module],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int = 60,
    threshold: float = 0.5,
) -> None:
    """Trained with ``loss_fn`` (AdamW from :func:`decoding_gpt.training.make_optimizer`,
    lr 1e-2, ``steps`` steps) on one repeated random sequence, the model memorises it: the
    reference loss :func:`~decoding_gpt.transformer.next_token_loss` drops below
    ``threshold``."""
    cfg = GPTConfig(d_vocab=40, n_ctx=12, d_model=32, n_layers=1, n_heads=2)
    model = build_module(cls, cfg, what="your GPT class").train()
    tokens = torch.randint(
        0, cfg.d_vocab, (1, cfg.n_ctx), generator=torch.Generator().manual_seed(17)
    )
    tokens = tokens.repeat(2, 1)  # a batch of two copies: a batch-axis shift shows up
    if not any(p.requires_grad for p in model.parameters()):
        raise CheckError("your model has no trainable parameters: wrap weights in nn.Parameter.")
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0, warmup_steps=0))
    with seeded(18):
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
            final = next_token_loss(model.eval()(tokens), tokens).item()
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
    with seeded(0):
        model = GPT(cfg)
    return randomise(model, seed=19, scale=scale).eval() if scale else model.eval()


def _call_generate(fn: Callable, model: GPT, prompt: Tensor, n: int, **kwargs: Any) -> Tensor:
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
    out = as_tensor(out, "generate(...)")
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


def _greedy_at_first_position(model: GPT, prompt: Tensor, n: int) -> Tensor:
    """The classic bug, for diagnosis: logits read at position 0 instead of -1."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            next_token = model(seq[-model.cfg.n_ctx :][None])[0, 0].argmax()
            seq = torch.cat([seq, next_token[None]])
    return seq


@exercise
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
