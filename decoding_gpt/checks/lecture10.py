"""Checks for the exercises of lecture 10 (inside the residual stream).

Each ``check_*`` runs the student's code on a tiny seeded GPT (random weights, a final
LayerNorm whose gain and bias are far from 1 and 0, non-zero output biases, so that a
skipped step changes the numbers), compares the result with the package's reference in
:mod:`decoding_gpt.lens`, and, when they differ, first names the classic mistake whose
output the answer reproduces.

1. :func:`check_ablate_head` -- a hook that zeroes one head's output ``hook_z``.
2. :func:`check_decompose_resid` -- the final residual as a stack of component outputs.
3. :func:`check_translator_step` -- one optimisation step of a tuned-lens translator.
4. :func:`check_head_dla` -- direct logit attribution of heads, final-LN scale frozen.
5. :func:`check_nearest_tokens` -- nearest neighbours of a token in centred ``W_E``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoding_gpt.checks import CheckError, Mistake, compare_tensors, exercise, judge, passed
from decoding_gpt.checks import to_numpy as _to_numpy
from decoding_gpt.hooks import hook_name
from decoding_gpt.lens import (
    decompose_resid,
    direct_logit_attribution,
    kl_to_final,
    token_neighbours,
    unembed_with_final_ln,
)
from decoding_gpt.transformer import GPT, GPTConfig, LayerNorm

__all__ = [
    "check_ablate_head",
    "check_decompose_resid",
    "check_head_dla",
    "check_nearest_tokens",
    "check_translator_step",
]

D_VOCAB = 37


def _final_ln(model: GPT) -> LayerNorm:
    ln = model.ln_final
    assert isinstance(ln, LayerNorm)  # the check's models all have one
    return ln


def _model() -> GPT:
    """A tiny 2-layer GPT with non-trivial final LayerNorm, ``b_O`` and ``b_U``."""
    torch.manual_seed(0)
    cfg = GPTConfig(d_vocab=D_VOCAB, n_ctx=16, d_model=16, n_layers=2, n_heads=4, d_mlp=32)
    model = GPT(cfg).eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
        _final_ln(model).w.copy_(1 + 0.5 * torch.randn(cfg.d_model, generator=gen))
    return model


def _tokens(seed: int, batch: int = 3, pos: int = 9) -> Tensor:
    return torch.randint(0, D_VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _model_error(err: Exception, what: str) -> CheckError:
    return CheckError(f"the model raised {type(err).__name__} with your {what}: {err}")


# ----------------------------------------------------------------------------- exercise 1
ZHook = Callable[[Tensor, Any, int], Tensor | None]


def _edit_z(edit: Callable[[Tensor, int], None]) -> Callable[[Tensor, int], Tensor]:
    def hook(z: Tensor, head: int) -> Tensor:
        z = z.clone()
        edit(z, head)
        return z

    return hook


def _zero_head(z: Tensor, head: int) -> None:
    z[:, :, head] = 0.0  # [batch, pos, head, d_head]


def _zero_others(z: Tensor, head: int) -> None:
    keep = z[:, :, head].clone()
    z.zero_()
    z[:, :, head] = keep


def _zero_position(z: Tensor, head: int) -> None:
    z[:, head] = 0.0


def _zero_d_head(z: Tensor, head: int) -> None:
    z[..., head] = 0.0


def _zero_last(z: Tensor, head: int) -> None:
    z[:, -1, head] = 0.0


ABLATION_MISTAKES = (
    Mistake(
        "no_effect",
        _edit_z(lambda z, head: None),
        "the hook changed nothing: the logits are those of the clean model. Assigning "
        "`z = torch.zeros_like(z)` or `z = z.clone()` inside the hook only rebinds a local "
        "name; edit the tensor in place (z[:, :, head] = 0) or RETURN the edited tensor.",
    ),
    Mistake(
        "position_axis",
        _edit_z(_zero_position),
        "you zeroed a POSITION (z[:, head]): hook_z is [batch, pos, head, d_head], so one "
        "head is z[:, :, head].",
    ),
    Mistake(
        "d_head_axis",
        _edit_z(_zero_d_head),
        "you zeroed one coordinate of every head's d_head vector (z[..., head]): hook_z is "
        "[batch, pos, head, d_head], so one head is z[:, :, head].",
    ),
    Mistake(
        "inverted",
        _edit_z(_zero_others),
        "the ablation is inverted: you kept `head` and zeroed every OTHER head.",
    ),
    Mistake(
        "last_position",
        _edit_z(_zero_last),
        "you zeroed the head at the last position only; ablate it at EVERY position "
        "(z[:, :, head] = 0), since later positions read what earlier ones wrote.",
    ),
)


def _run_ablated(model: GPT, tokens: Tensor, layer: int, hook: Callable[..., Any]) -> Tensor:
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name("z", layer), hook)])


@exercise
def check_ablate_head(fn: ZHook) -> None:
    """``fn(z, hook, head)``: ``hook_z`` with head ``head`` zeroed at every position.

    Run through ``model.run_with_hooks`` (as in the notebook); the logits must equal
    those of the reference ablation, whether ``fn`` edits in place or returns a tensor.
    """
    model = _model()
    tokens = _tokens(1)
    for layer, head in [(0, 2), (1, 1), (1, 3)]:
        try:
            got = _run_ablated(model, tokens, layer, lambda z, hook, h=head: fn(z, hook, h))
        except CheckError:
            raise
        except Exception as err:
            raise _model_error(err, f"hook on {hook_name('z', layer)}") from err
        want = _run_ablated(model, tokens, layer, lambda z, hook, h=head: _edit_z(_zero_head)(z, h))
        catalogue = [
            Mistake(m.name, lambda m=m, h=head, at=layer: _run_ablated(
                model, tokens, at, lambda z, hook: m.wrong(z, h)
            ), m.message)
            for m in ABLATION_MISTAKES
        ]  # fmt: skip
        judge(
            got, want, catalogue, (), what=f"logits with L{layer}H{head} ablated", atol=1e-5,
            hint="Set z[:, :, head] = 0 and leave every other entry as it was.",
        )  # fmt: skip
    passed("check_ablate_head")


# ----------------------------------------------------------------------------- exercise 2
def _stack(cache: Any, names: list[str]) -> Tensor:
    return torch.stack([cache[n].expand_as(cache["hook_embed"]) for n in names])


def _decompose_mistakes(cache: Any, n_layers: int) -> list[Mistake]:
    layers = range(n_layers)
    attn = [hook_name("attn_out", layer) for layer in layers]
    mlp = [hook_name("mlp_out", layer) for layer in layers]
    interleaved = [n for pair in zip(attn, mlp, strict=True) for n in pair]
    running = [n for layer in layers for n in (hook_name("resid_mid", layer),
                                               hook_name("resid_post", layer))]  # fmt: skip
    return [
        Mistake(
            "running_sums",
            lambda: _stack(cache, ["hook_embed", "hook_pos_embed", *running]),
            "you stacked the residual stream itself (resid_mid / resid_post), which is a "
            "RUNNING SUM of everything before it; the components are what each sublayer "
            "ADDS: hook_attn_out and hook_mlp_out.",
        ),
        Mistake(
            "no_pos_embed",
            lambda: _stack(cache, ["hook_embed", *interleaved]),
            "the positional embedding is missing: x_0 = hook_embed + hook_pos_embed, so "
            "both are components (expand hook_pos_embed to [batch, pos, d_model] if needed).",
        ),
        Mistake(
            "no_mlp",
            lambda: _stack(cache, ["hook_embed", "hook_pos_embed", *attn]),
            "the MLP outputs are missing: every block adds hook_attn_out AND hook_mlp_out.",
        ),
        Mistake(
            "grouped",
            lambda: _stack(cache, ["hook_embed", "hook_pos_embed", *attn, *mlp]),
            "the components are in the wrong order: all attention layers, then all MLPs. "
            "Use the order they are added in: embed, pos_embed, attn_out 0, mlp_out 0, "
            "attn_out 1, ...",
        ),
        Mistake(
            "swapped",
            lambda: _stack(
                cache,
                [
                    "hook_embed",
                    "hook_pos_embed",
                    *[n for p in zip(mlp, attn, strict=True) for n in p],
                ],
            ),
            "within each layer the MLP comes before attention: a block adds attn_out "
            "first, then mlp_out (which reads resid_mid).",
        ),
    ]


@exercise
def check_decompose_resid(fn: Callable[[Any, int], Tensor]) -> None:
    """``fn(cache, n_layers) -> [2 + 2 n_layers, batch, pos, d_model]``: embed, pos_embed,
    then attn_out and mlp_out of each layer; the rows sum to the final residual."""
    model = _model()
    L = model.cfg.n_layers
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens(2))
        want, _ = decompose_resid(model, cache)
        got = fn(cache, L)
    judge(
        got, want, _decompose_mistakes(cache, L), (), what="components", atol=1e-6,
        hint="Stack cache['hook_embed'], cache['hook_pos_embed'], then for each layer "
        "cache[f'blocks.{l}.hook_attn_out'] and cache[f'blocks.{l}.hook_mlp_out'].",
    )  # fmt: skip
    compare_tensors(
        _to_numpy(got).sum(0), cache[hook_name("resid_post", L - 1)], "sum of the components",
        atol=1e-5,
    )  # fmt: skip
    passed("check_decompose_resid")


# ----------------------------------------------------------------------------- exercise 3
StepFn = Callable[[Tensor, Tensor, Tensor, Tensor, Callable[[Tensor], Tensor], Any], Any]
LR = 0.5


def _lens_data(model: GPT) -> tuple[Tensor, Tensor]:
    """Residuals before layer 1 and the final logits, one row per (batch, pos)."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(_tokens(3, batch=2, pos=8))
    return cache[hook_name("resid_pre", 1)].flatten(0, 1), logits.flatten(0, 1)


def _start(d_model: int) -> tuple[Tensor, Tensor]:
    """A translator away from zero, so that a missing identity or bias changes the step."""
    gen = torch.Generator().manual_seed(5)
    A = 0.1 * torch.randn(d_model, d_model, generator=gen)
    return A, 0.1 * torch.randn(d_model, generator=gen)


def _step_outcome(model: GPT, resid: Tensor, final: Tensor, kind: str = "right") -> Tensor:
    """[loss, A after, b after] of one SGD step in one of the ways to take it."""
    with torch.enable_grad():  # diagnose() calls mistakes under no_grad
        return _step_outcome_grad(model, resid, final, kind)


def _step_outcome_grad(model: GPT, resid: Tensor, final: Tensor, kind: str) -> Tensor:
    A0, b0 = _start(model.cfg.d_model)
    A, b = A0.clone().requires_grad_(), b0.clone().requires_grad_()
    # T(x) = x + x A + b, as TunedLens.translate (the identity keeps A = b = 0 the logit lens)
    translated = resid @ A + b if kind == "no_identity" else resid + resid @ A + b
    lens_logits = unembed_with_final_ln(model, translated)
    log_p, log_q = final.log_softmax(-1), lens_logits.log_softmax(-1)
    loss = {
        "reversed": lambda: (log_q.exp() * (log_q - log_p)).sum(-1).mean(),
        "sum": lambda: kl_to_final(final, lens_logits) * len(final),
        "elementwise_mean": lambda: kl_to_final(final, lens_logits) / final.shape[-1],
        "hard_labels": lambda: F.cross_entropy(lens_logits, final.argmax(-1)),
    }.get(kind, lambda: kl_to_final(final, lens_logits))()
    loss.backward()
    with torch.no_grad():
        stale = 1.0 if kind == "no_zero_grad" else 0.0  # the .grad the check leaves behind
        move = 0.0 if kind == "no_step" else LR
        A1 = A - move * (A.grad + stale)  # type: ignore[operator]
        b1 = b - move * (b.grad + stale)  # type: ignore[operator]
    return torch.cat([loss.detach()[None], A1.flatten(), b1.flatten()])


STEP_MISTAKES = {
    "reversed": "the KL is the wrong way round: the tuned lens minimises "
    "KL(p_final || p_lens) = sum p_final (log p_final - log p_lens). With F.kl_div, "
    "the FIRST argument is the lens's log-probabilities, the second the final ones.",
    "no_identity": "the translator is missing the identity: T(x) = x + x A + b, so that "
    "A = 0, b = 0 is the logit lens (you computed x A + b).",
    "sum": "the loss is summed over the rows: take the MEAN KL per row "
    "(F.kl_div(..., reduction='batchmean')).",
    "elementwise_mean": "the KL was averaged over rows AND vocabulary entries "
    "(F.kl_div's default reduction='mean'): sum over the vocabulary, mean over rows, "
    "i.e. reduction='batchmean'.",
    "hard_labels": "you trained on the final distribution's argmax (cross-entropy with hard "
    "labels); the tuned lens matches the WHOLE final distribution: KL(p_final || p_lens).",
    "no_zero_grad": "the gradients left from an earlier step were added to this one: call "
    "optimizer.zero_grad() before loss.backward().",
    "no_step": "A and b did not change: call optimizer.step() after loss.backward().",
}


@exercise
def check_translator_step(fn: StepFn) -> None:
    """``fn(A, b, resid, final_logits, unembed, optimizer) -> loss``: one step on the mean
    ``KL(p_final || softmax(unembed(resid + resid A + b)))``, returning the loss."""
    model = _model()
    resid, final = _lens_data(model)
    A0, b0 = _start(model.cfg.d_model)
    A, b = nn.Parameter(A0.clone()), nn.Parameter(b0.clone())
    A.grad, b.grad = torch.ones_like(A), torch.ones_like(b)  # stale, from an earlier step
    optimizer = torch.optim.SGD([A, b], lr=LR)
    loss = fn(
        A, b, resid.clone(), final.clone(), lambda x: unembed_with_final_ln(model, x), optimizer
    )
    value = _to_numpy(loss, "the returned loss")
    if value.size != 1:
        raise CheckError(f"return the loss as one number (loss.item()), got shape {value.shape}.")
    got = np.concatenate([value.reshape(1), _to_numpy(A).ravel(), _to_numpy(b).ravel()])
    want = _step_outcome(model, resid, final)
    catalogue = [
        Mistake(kind, lambda kind=kind: _step_outcome(model, resid, final, kind), message)
        for kind, message in STEP_MISTAKES.items()
    ]
    loss_only = [Mistake(m.name, lambda m=m: m.wrong()[:1], m.message) for m in catalogue]
    judge(
        got[:1], want[:1], loss_only, (), what="the returned loss", atol=1e-5,
        hint="loss = KL(p_final || p_lens) averaged over rows, computed BEFORE the step.",
    )  # fmt: skip
    judge(
        got, want, catalogue, (), what="[loss, A, b] after the step", atol=1e-5,
        hint="zero_grad, backward, step: A and b must move by -lr * their gradient.",
    )  # fmt: skip
    passed("check_translator_step")


# ----------------------------------------------------------------------------- exercise 4
DLAFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


def _head_dla_inputs(model: GPT) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-head outputs and the final-LN scale at the last position, answers, and the
    package's per-head DLA (the reference)."""
    tokens = _tokens(4, batch=5, pos=7)
    answers = torch.randint(0, D_VOCAB, (5, 2), generator=torch.Generator().manual_seed(6))
    answers[:, 1] = (answers[:, 0] + 1 + answers[:, 1] % (D_VOCAB - 1)) % D_VOCAB  # a != b
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        outs = [
            torch.einsum("bhk,hkm->hbm", cache[hook_name("z", layer)][:, -1], block.attn.W_O)
            for layer, block in enumerate(model.blocks)
        ]  # [head, batch, d_model] per layer, b_O left out
        dla, labels = direct_logit_attribution(model, cache, answers, by="head")
    rows = [i for i, label in enumerate(labels) if "H" in label and label.startswith("L")]
    return torch.cat(outs), cache["ln_final.hook_scale"][:, -1], answers, dla[rows]


def _dla_mistakes(model: GPT, heads: Tensor, scale: Tensor, answers: Tensor) -> list[Mistake]:
    w, ln_b = _final_ln(model).w, _final_ln(model).b
    W_U = model.unembed.W_U
    direction = (W_U[:, answers[:, 0]] - W_U[:, answers[:, 1]]).T  # [batch, d_model]
    centred = heads - heads.mean(-1, keepdim=True)

    def dot(x: Tensor, d: Tensor = direction) -> Tensor:
        return (x * d).sum(-1)

    return [
        Mistake("not_centred", lambda: dot(heads / scale * w),
                "you did not subtract each head output's mean over d_model: the final "
                "LayerNorm centres x before scaling, and it is linear, so each component "
                "is centred separately (y - y.mean(-1, keepdim=True))."),
        Mistake("no_scale", lambda: dot(centred * w),
                "you did not divide by the final LayerNorm's scale: the logits see "
                "(y - mean) / s * w, with s the cached ln_final.hook_scale of this input."),
        Mistake("no_gain", lambda: dot(centred / scale),
                "the final LayerNorm's gain w is missing: multiply by ln_w (TransformerLens "
                "folds it into W_U; here it is separate)."),
        Mistake("own_scale", lambda: dot(F.layer_norm(heads, w.shape, w, None, 1e-5)),
                "you applied LayerNorm to each head's output on its own, with its OWN "
                "scale: freeze the scale s of the whole residual stream (the cached one) "
                "so that the per-head terms add up."),
        Mistake("with_bias", lambda: dot(centred / scale * w + ln_b),
                "you added the LayerNorm bias to every head: the bias is a constant, "
                "counted once, not per component."),
        Mistake("reversed", lambda: -dot(centred / scale * w),
                "the sign is reversed: the direction is W_U[:, correct] - W_U[:, wrong] "
                "(answer_tokens[:, 0] is the correct one)."),
        Mistake("batch_mean", lambda: dot(centred / scale * w).mean(-1),
                "you averaged over the batch: return one number per head AND prompt, "
                "[head, batch]."),
    ]  # fmt: skip


@exercise
def check_head_dla(fn: DLAFn) -> None:
    """``fn(head_out [head, batch, d_model], scale [batch, 1], ln_w [d_model],
    W_U [d_model, d_vocab], answer_tokens [batch, 2]) -> [head, batch]``."""
    model = _model()
    heads, scale, answers, want = _head_dla_inputs(model)
    with torch.no_grad():
        got = fn(heads.clone(), scale.clone(), _final_ln(model).w.detach().clone(),
                 model.unembed.W_U.detach().clone(), answers.clone())  # fmt: skip
        judge(
            got, want, _dla_mistakes(model, heads, scale, answers), (), what="head DLA",
            atol=1e-5, hint="((y - mean(y)) / scale * ln_w) . (W_U[:, a] - W_U[:, b]).",
        )  # fmt: skip
    passed("check_head_dla")


# ----------------------------------------------------------------------------- exercise 5
def _embedding() -> Tensor:
    """Rows with a large shared component and unequal norms, as trained embeddings have."""
    gen = torch.Generator().manual_seed(8)
    rows = torch.randn(40, 12, generator=gen) * torch.rand(40, 1, generator=gen).mul(3).add(0.3)
    return rows + 2.0 * torch.randn(12, generator=gen)


def _neighbour_mistakes(W_E: Tensor, token: int, k: int) -> list[Mistake]:
    def top(scores: Tensor, largest: bool = True, drop_self: bool = True) -> Tensor:
        scores = scores.clone()
        if drop_self:
            scores[token] = float("-inf") if largest else float("inf")
        return scores.topk(k, largest=largest).indices

    centred = W_E - W_E.mean(0)
    unit = F.normalize(centred, dim=-1)
    raw = F.normalize(W_E, dim=-1)
    return [
        Mistake("not_centred", lambda: top(raw @ raw[token]),
                "you did not centre the embeddings: every row shares a large common "
                "direction, so raw cosines are high for unrelated tokens. Subtract "
                "W_E.mean(0) first."),
        Mistake("dot_product", lambda: top(centred @ centred[token]),
                "you ranked by the dot product, which favours long rows: normalise the "
                "centred rows to unit length (cosine similarity)."),
        Mistake("self_included", lambda: top(unit @ unit[token], drop_self=False),
                "the token itself is in the list (its cosine with itself is 1): leave it "
                "out."),
        Mistake("ascending", lambda: top(unit @ unit[token], largest=False),
                "you returned the LEAST similar tokens: sort by similarity in descending "
                "order (topk, largest=True)."),
    ]  # fmt: skip


@exercise
def check_nearest_tokens(fn: Callable[[Tensor, int, int], Tensor]) -> None:
    """``fn(W_E, token, k) -> ids [k]``: the ``k`` other tokens with the largest cosine
    similarity of centred embeddings, most similar first."""
    W_E = _embedding()
    for token, k in [(3, 5), (17, 4)]:
        want, _ = token_neighbours(W_E, token, k)
        got = fn(W_E.clone(), token, k)
        judge(
            torch.as_tensor(_to_numpy(got, "ids")), want, _neighbour_mistakes(W_E, token, k),
            (), what=f"neighbours of token {token}", atol=1e-9,
            hint="cosine similarity of W_E - W_E.mean(0), the token itself left out.",
        )  # fmt: skip
    passed("check_nearest_tokens")
