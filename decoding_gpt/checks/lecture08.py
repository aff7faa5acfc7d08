"""Checks for the exercises of lecture 08 (the transformer).

Each ``check_*`` runs the student's function on seeded inputs and compares it with an
independent reference (``torch.nn.functional.layer_norm``, the package's
:class:`~decoding_gpt.transformer.TransformerBlock`, ``F.cross_entropy``, a brute-force
nucleus filter). When the answer is wrong, the check first compares it with the outputs
of the common mistakes (the batch-axis shift of the loss is a bug of earlier course
materials) and names the one that matches; only then does it fall back to a generic
value comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, passed, to_numpy
from decoding_gpt.transformer import GPTConfig, TransformerBlock

__all__ = ["check_layer_norm", "check_lm_loss", "check_pre_ln_block", "check_top_p_filter"]


def _same(got: np.ndarray, want: np.ndarray, atol: float = 1e-6) -> bool:
    """Equal shape and values up to ``atol`` plus a float32-sized relative error (``inf``
    matches ``inf`` of the same sign, NaN never matches)."""
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol, rtol=1e-5))


def _diagnose(got: np.ndarray, want: np.ndarray, mistakes: dict[str, Tensor], atol: float) -> None:
    """Raise the message of the first known mistake ``got`` reproduces (and the right
    answer does not)."""
    for message, wrong in mistakes.items():
        wrong_np = to_numpy(wrong, "wrong reference")
        if _same(got, wrong_np, atol) and not _same(want, wrong_np, atol):
            raise CheckError(message)


# ----------------------------------------------------------------------------- exercise 1
def _layer_norm_mistakes(x: Tensor, w: Tensor, b: Tensor, eps: float) -> dict[str, Tensor]:
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    x_hat = (x - mu) / (var + eps).sqrt()
    rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    over = {}
    for dim in (0, 1):  # the batch and the position axis
        var_d = x.var(dim, unbiased=False, keepdim=True)
        over[dim] = (x - x.mean(dim, keepdim=True)) / (var_d + eps).sqrt() * w + b
    return {
        "you used the unbiased variance (divides by d_model - 1; torch.var's default). "
        "LayerNorm uses the biased one, the mean of (x - mean)^2: "
        "x.var(-1, unbiased=False) or ((x - mu)**2).mean(-1).": (
            (x - mu) / (x.var(-1, keepdim=True) + eps).sqrt() * w + b
        ),
        "eps belongs inside the square root: (x - mu) / sqrt(var + eps), not "
        "(x - mu) / (sqrt(var) + eps).": ((x - mu) / (var.sqrt() + eps) * w + b),
        "the mean was not subtracted: x / sqrt(mean(x^2) + eps) is RMSNorm (used by "
        "LLaMA), not LayerNorm. Centre first: x - x.mean(-1, keepdim=True).": (x / rms * w + b),
        "you normalised over the batch axis (dim 0): that is BatchNorm. LayerNorm "
        "normalises each position's vector over d_model, the LAST axis (dim=-1, "
        "keepdim=True).": over[0],
        "you normalised over the position axis (dim 1), mixing different tokens. LayerNorm "
        "normalises each position's vector on its own, over d_model, the LAST axis "
        "(dim=-1, keepdim=True).": over[1],
        "the gain w and bias b are missing: return x_hat * w + b.": x_hat,
        "the bias is added before the gain multiplies: it is x_hat * w + b, not (x_hat + b) * w.": (
            (x_hat + b) * w
        ),
    }


def check_layer_norm(fn: Callable[[Tensor, Tensor, Tensor, float], Tensor]) -> None:
    """``fn(x, w, b, eps)``: LayerNorm of ``x [batch, pos, d_model]`` over ``d_model``."""
    gen = torch.Generator().manual_seed(8)
    for batch, pos, d_model, eps in [(2, 3, 4, 1e-5), (3, 5, 8, 0.5), (1, 4, 16, 1e-2)]:
        shape = (batch, pos, d_model)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2  # mean far from 0
        w = 1 + torch.rand(d_model, generator=gen, dtype=torch.float64)
        b = torch.randn(d_model, generator=gen, dtype=torch.float64)
        want = F.layer_norm(x, (d_model,), w, b, eps)
        got = to_numpy(fn(x.clone(), w.clone(), b.clone(), eps), "LayerNorm output")
        mistakes = _layer_norm_mistakes(x, w, b, eps)
        _diagnose(got, want.numpy(), mistakes, atol=1e-6)
        compare_tensors(
            got,
            want,
            f"LayerNorm of a {list(shape)} input (eps={eps:g})",
            atol=1e-6,
            hint="y = (x - mean) / sqrt(var + eps) * w + b, mean and biased var over dim=-1.",
        )
    passed("check_layer_norm")


# ----------------------------------------------------------------------------- exercise 2
BlockFn = Callable[..., Tensor]


def _test_block(seed: int) -> TransformerBlock:
    """A small block whose two LayerNorms differ (random gains and biases), so that
    swapping them, or skipping one, changes the output."""
    torch.manual_seed(seed)
    cfg = GPTConfig(d_vocab=11, n_ctx=8, d_model=16, n_layers=1, n_heads=2, init_range=0.3)
    block = TransformerBlock(cfg).double().eval()
    with torch.no_grad():
        for ln in (block.ln1, block.ln2):
            ln.w.copy_(1 + 0.5 * torch.randn_like(ln.w))
            ln.b.copy_(0.5 * torch.randn_like(ln.b))
    return block


def check_pre_ln_block(fn: BlockFn) -> None:
    """``fn(x, ln1, attn, ln2, mlp)``: one pre-LN transformer block on ``x``.

    The reference is :class:`decoding_gpt.transformer.TransformerBlock`:
    ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))``.
    """
    for seed, (batch, pos) in [(0, (2, 5)), (1, (1, 8))]:
        block = _test_block(seed)
        ln1, attn, ln2, mlp = block.ln1, block.attn, block.ln2, block.mlp
        gen = torch.Generator().manual_seed(seed)
        x = 2 * torch.randn(batch, pos, 16, generator=gen, dtype=torch.float64) + 1
        with torch.no_grad():
            want = block(x.clone())
            got = to_numpy(fn(x.clone(), ln1, attn, ln2, mlp), "block output")
            a = attn(ln1(x))
            mistakes = {
                "the residual connections are missing: each sublayer ADDS to the residual "
                "stream, x = x + attn(ln1(x)), then x = x + mlp(ln2(x)).": mlp(ln2(a)),
                "this is a post-LN block (the original 2017 Transformer): LayerNorm after "
                "the sum. GPT-2 style pre-LN normalises only the sublayer's INPUT, "
                "x = x + attn(ln1(x)), and leaves the residual stream itself un-normalised.": (
                    _post_ln(x, ln1, attn, ln2, mlp)
                ),
                "attention and MLP both read the input x (a 'parallel' block, as in GPT-J). "
                "Here they are sequential: the MLP reads the stream AFTER attention has "
                "added its output, x = x + mlp(ln2(x)) with the updated x.": (x + a + mlp(ln2(x))),
                "ln1 and ln2 are swapped: ln1 goes before attention, ln2 before the MLP "
                "(they have different learned gains and biases).": (
                    _sequential(x, ln2, attn, ln1, mlp)
                ),
                "you added the sublayer output to the NORMALISED stream (h = ln1(x); "
                "x = h + attn(h)). The residual stream is not normalised in place: "
                "x = x + attn(ln1(x)).": _add_to_normalised(x, ln1, attn, ln2, mlp),
                "the MLP sublayer is missing: after attention, x = x + mlp(ln2(x)).": x + a,
                "the attention sublayer is missing: first x = x + attn(ln1(x)).": (x + mlp(ln2(x))),
            }
        _diagnose(got, want.numpy(), mistakes, atol=1e-8)
        compare_tensors(
            got,
            want,
            f"block output for x of shape {[batch, pos, 16]}",
            atol=1e-8,
            hint="Pre-LN: x = x + attn(ln1(x)); then x = x + mlp(ln2(x)); return x.",
        )
    passed("check_pre_ln_block")


def _sequential(x: Tensor, ln1: BlockFn, attn: BlockFn, ln2: BlockFn, mlp: BlockFn) -> Tensor:
    x = x + attn(ln1(x))
    return x + mlp(ln2(x))


def _post_ln(x: Tensor, ln1: BlockFn, attn: BlockFn, ln2: BlockFn, mlp: BlockFn) -> Tensor:
    x = ln1(x + attn(x))
    return ln2(x + mlp(x))


def _add_to_normalised(
    x: Tensor, ln1: BlockFn, attn: BlockFn, ln2: BlockFn, mlp: BlockFn
) -> Tensor:
    h = ln1(x)
    x = h + attn(h)
    h = ln2(x)
    return h + mlp(h)


# ----------------------------------------------------------------------------- exercise 3
def _ce(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction
    )


def check_lm_loss(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``fn(logits [batch, pos, vocab], tokens [batch, pos])``: mean next-token loss.

    Position ``t`` predicts token ``t + 1`` of the SAME sequence: the shift is along the
    sequence axis (dim 1).
    """
    gen = torch.Generator().manual_seed(3)
    for batch, pos, vocab in [(3, 5, 7), (4, 9, 13)]:  # batch != pos: the axes can be told apart
        logits = 2 * torch.randn(batch, pos, vocab, generator=gen, dtype=torch.float64)
        tokens = torch.randint(vocab, (batch, pos), generator=gen)
        want = _ce(logits[:, :-1], tokens[:, 1:])
        result = fn(logits.clone(), tokens.clone())
        got = to_numpy(result, "loss")
        if got.shape != ():
            raise CheckError(
                f"the loss has shape {got.shape}; it should be one number (a 0-d tensor): "
                "the MEAN cross-entropy over every (sequence, position) prediction."
            )
        flat_logits, flat_tokens = logits.reshape(-1, vocab), tokens.reshape(-1)
        mistakes = {
            "the targets were shifted along the BATCH axis (dim 0): sequence b is trained "
            "to predict sequence b + 1, an old bug of this course. Shift along the sequence "
            "axis: logits[:, :-1] predict tokens[:, 1:].": _ce(logits[:-1], tokens[1:]),
            "there is no shift: position t is scored on its own input token, which it can "
            "simply copy. Position t must predict token t + 1: logits[:, :-1] vs "
            "tokens[:, 1:].": _ce(logits, tokens),
            "the shift goes the wrong way: logits[:, 1:] vs tokens[:, :-1] asks each "
            "position to predict the PREVIOUS token. Use logits[:, :-1] and "
            "tokens[:, 1:].": _ce(logits[:, 1:], tokens[:, :-1]),
            "you flattened the batch before shifting, so the last position of each "
            "sequence is trained to predict the first token of the NEXT sequence. Shift "
            "inside each sequence (logits[:, :-1], tokens[:, 1:]), then flatten.": _ce(
                flat_logits[:-1], flat_tokens[1:]
            ),
            "the loss is a SUM over predictions; use the mean (F.cross_entropy's default "
            "reduction), so it does not grow with batch size and length.": _ce(
                logits[:, :-1], tokens[:, 1:], reduction="sum"
            ),
            "you averaged over the sequence but summed over the batch (or the reverse): "
            "take the mean over all batch x (pos - 1) predictions.": _ce(
                logits[:, :-1], tokens[:, 1:], reduction="sum"
            )
            / (pos - 1),
        }
        _diagnose(got, want.numpy(), mistakes, atol=1e-6)
        compare_tensors(
            got,
            want,
            f"loss for logits of shape {[batch, pos, vocab]}",
            atol=1e-6,
            hint="F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1)).",
        )
    passed("check_lm_loss")


# ----------------------------------------------------------------------------- exercise 4
def _nucleus_reference(logits: Tensor, p: float) -> Tensor:
    """Brute force, row by row: keep the most likely tokens until their mass reaches p."""
    out = torch.full_like(logits, float("-inf"))
    probs = logits.softmax(-1)
    for row in range(logits.shape[0]):
        mass = 0.0
        for token in probs[row].argsort(descending=True).tolist():
            if mass >= p:
                break
            out[row, token] = logits[row, token]
            mass += float(probs[row, token])
    return out


def _cumulative_mask(logits: Tensor, p: float, inclusive: bool, sort: bool = True) -> Tensor:
    """Common wrong variants: keep where cumsum < p (inclusive) or cumsum in vocab order."""
    if not sort:
        probs = logits.softmax(-1)
        return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    cum = probs.cumsum(-1)
    drop = cum > p if inclusive else cum - probs >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _inverted(logits: Tensor, p: float) -> Tensor:
    keep = _nucleus_reference(logits, p).isfinite()
    return logits.masked_fill(keep, float("-inf"))


def check_top_p_filter(fn: Callable[[Tensor, float], Tensor]) -> None:
    """``fn(logits [batch, vocab], p)``: logits of the nucleus, ``-inf`` elsewhere.

    The nucleus is the smallest set of most likely tokens whose total probability is at
    least ``p``; the most likely token is always in it.
    """
    gen = torch.Generator().manual_seed(11)
    logits = 1.5 * torch.randn(4, 12, generator=gen, dtype=torch.float64)
    for p in (0.05, 0.5, 0.8, 0.95, 1.0):
        want = _nucleus_reference(logits, p)
        result = fn(logits.clone(), p)
        got = to_numpy(result, "filtered logits")
        if got.shape != tuple(logits.shape):
            raise CheckError(
                f"the filtered logits have shape {got.shape}, expected {tuple(logits.shape)}: "
                "return the logits in vocabulary order, dropped ones set to -inf."
            )
        if np.isnan(got).any():
            raise CheckError("the output contains NaN: dropped logits should be -inf.")
        sorted_logits = logits.sort(-1, descending=True).values
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        mistakes = {
            "you dropped the token whose probability takes the total past p, so the kept "
            "mass is below p. Keep a token if the mass BEFORE it (cumsum - its own "
            "probability) is < p.": _cumulative_mask(logits, p, inclusive=True),
            "the mask is inverted: you kept the unlikely tail and dropped the nucleus. Drop "
            "a token when the mass of the tokens before it is >= p.": _inverted(logits, p),
            "the cumulative sum ran over the tokens in vocabulary order. Sort the "
            "probabilities in DESCENDING order first (logits.sort(descending=True)).": (
                _cumulative_mask(logits, p, inclusive=False, sort=False)
            ),
            "the mask was computed in sorted order but applied in vocabulary order: map it "
            "back with the sort indices (mask.scatter(-1, order, mask_sorted)).": (
                logits.masked_fill(mass_before >= p, float("-inf"))
            ),
            "the result is in sorted order: return the logits in the original vocabulary "
            "order (only the dropped entries change).": (
                sorted_logits.masked_fill(mass_before >= p, float("-inf"))
            ),
            "dropped tokens were set to 0, but a logit of 0 still has probability "
            "exp(0) / Z > 0. Set them to -inf (masked_fill(drop, float('-inf'))).": (
                want.masked_fill(want.isinf(), 0.0)
            ),
            "you returned probabilities; return LOGITS, with -inf where a token is "
            "dropped (sampling applies the softmax afterwards).": want.softmax(-1),
        }
        _diagnose(got, want.numpy(), mistakes, atol=1e-9)
        if np.isinf(got).all(axis=-1).any():
            raise CheckError(
                f"with p={p} every token of a row was dropped, so nothing can be sampled. "
                "The most likely token is always kept: keep a token if the probability of "
                "the tokens MORE likely than it is still below p."
            )
        kept, should_keep = np.isfinite(got), np.isfinite(want.numpy())
        if not np.array_equal(kept, should_keep):
            row = int(np.argwhere((kept != should_keep).any(-1))[0, 0])
            raise CheckError(
                f"with p={p}, row {row} keeps {int(kept[row].sum())} tokens, the nucleus has "
                f"{int(should_keep[row].sum())}: tokens "
                f"{np.flatnonzero(should_keep[row]).tolist()}. Sort descending, keep a token "
                "while the mass of the tokens before it is < p."
            )
        compare_tensors(
            got[kept],
            want.numpy()[kept],
            f"kept logits (p={p})",
            atol=1e-9,
            hint="Kept logits must be returned unchanged (no temperature, no renormalising).",
        )
    passed("check_top_p_filter")
