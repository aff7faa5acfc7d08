"""Reading the residual stream as logits: logit lens, tuned lens, direct logit attribution.

A transformer writes every component's output into one residual stream ``x``; the
model's prediction is ``logits = LN_final(x_L) W_U + b_U``. Three ways to read the
stream before the end:

**Logit lens** (nostalgebraist, 2020). Decode an intermediate residual ``x_l`` as if it
were the last one::

    lens_l(x_l) = LN_final(x_l) W_U + b_U

The final LayerNorm is part of the lens: skipping it (an old bug of this course) gives
logits at the wrong scale and, for LN with a bias, the wrong ranking. At the last layer
the lens is the model's own output, exactly; :func:`logit_lens` is tested for that.
*Misleads* when early layers use a basis the unembedding cannot read: a poor lens
prediction does not mean the information is absent.

**Tuned lens** (Belrose et al., 2023). Learn one affine "translator" per layer,
``T_l(x) = x + A_l x + b_l`` (``A_l, b_l`` start at zero, so training starts from the
logit lens), and train it so that ``lens_l(T_l(x_l))`` matches the final distribution::

    L_l = KL( softmax(logits_final) || softmax(LN_final(T_l(x_l)) W_U + b_U) )

Model weights stay frozen. *Misleads* because the translator can compute: a strong
translator finds information a linear read-out of the model itself never uses.

**Direct logit attribution** (DLA). Split the final residual into the outputs of its
components, ``x_L = sum_c y_c`` (embeddings, each attention layer or head, each MLP layer
or neuron, biases). With the final LayerNorm's scale ``s`` *frozen* at its value on this
input (taken from ``ln_final.hook_scale`` in the cache), LayerNorm is affine::

    LN_final(x) = w * (x - mean(x)) / s + b

so the logit difference between an answer ``a`` and a distractor ``b`` splits exactly::

    logit_a - logit_b = sum_c  w * (y_c - mean(y_c)) / s . (W_U[:, a] - W_U[:, b])
                        + b . (W_U[:, a] - W_U[:, b]) + b_U[a] - b_U[b]

:func:`direct_logit_attribution` returns the terms; they sum to the model's logit
difference (tested). *Misleads* in two ways: the scale ``s`` depends on all components
together (freezing it hides that interaction), and DLA counts only the *direct* path:
a head whose output is read by later heads (e.g. an S-inhibition head in IOI) can matter
enormously while having a DLA near zero. Use patching (:mod:`decoding_gpt.patching`) for
total effects.

**The residual stream as a sum.** :func:`decompose_resid` splits the final residual into
the embeddings and each layer's attention and MLP outputs, in the order they are added
(``embed, pos_embed, attn_out_0, mlp_out_0, ...``); the pieces sum to
``blocks.{L-1}.hook_resid_post`` exactly (tested against TransformerLens's
``ActivationCache.decompose_resid``).

**Embedding geometry.** :func:`token_neighbours` ranks tokens by the cosine similarity of
their *centred* embedding rows, ``cos(W_E[i] - mu, W_E[j] - mu)`` with ``mu`` the mean row.
In large models the rows share a large common component (anisotropy), which makes raw
cosines of unrelated tokens high and hides which tokens the model treats alike; centring
removes it (and costs nothing where, as in the small shipped models, it is small).

The functions take any model with TransformerLens's hook names and ``run_with_cache``:
a TransformerLens ``TransformerBridge`` or :class:`decoding_gpt.transformer.GPT`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from decoding_gpt.hooks import HookedModel, hook_name, model_weight, n_layers


def _in_cache(cache: Any, name: str) -> bool:
    return name in cache.keys()  # noqa: SIM118 (caches need not define __contains__)


def _final_ln_params(model: HookedModel) -> tuple[str | None, Tensor | None, Tensor | None]:
    """(normalization type, weight, bias) of ``ln_final``; type None means no LayerNorm."""
    norm = getattr(model.cfg, "normalization_type", None)
    if norm is None:
        return None, None, None
    ln = model.ln_final
    weight = getattr(ln, "w", None)
    bias = getattr(ln, "b", None)
    return norm, weight, bias


def apply_final_ln_frozen(
    model: HookedModel,
    stack: Float[Tensor, "*lead batch d_model"],
    scale: Float[Tensor, "batch 1"] | None,
    include_bias: bool = False,
) -> Float[Tensor, "*lead batch d_model"]:
    """Final LayerNorm with its scale frozen: ``w * (y - mean(y)) / s`` (+ ``b`` if asked).

    Linear in ``y`` (without the bias), so it can be applied to each component of the
    residual separately and the pieces add up to ``LN_final`` of their sum.
    """
    norm, weight, bias = _final_ln_params(model)
    if norm is None:
        return stack
    if scale is None:
        raise ValueError("a model with a final LayerNorm needs its cached ln_final.hook_scale")
    if norm in ("LN", "LNPre"):
        stack = stack - stack.mean(-1, keepdim=True)
    out = stack / scale
    if weight is not None:
        out = out * weight
    if include_bias and bias is not None:
        out = out + bias
    return out


# --------------------------------------------------------------------------------------
# Logit lens


def residual_stack(
    model: HookedModel, cache: Any
) -> tuple[Float[Tensor, "n_layers_plus_1 batch pos d_model"], list[str]]:
    """The residual stream before each layer and after the last: ``x_0 .. x_L`` and labels."""
    L = n_layers(model)
    names = [hook_name("resid_pre", layer) for layer in range(L)]
    names.append(hook_name("resid_post", L - 1))
    labels = [f"{layer}_pre" for layer in range(L)] + ["final_post"]
    return torch.stack([cache[n] for n in names]), labels


def unembed_with_final_ln(
    model: HookedModel, resid: Float[Tensor, "... d_model"]
) -> Float[Tensor, "... d_vocab"]:
    """``LN_final(resid) W_U + b_U``; LN recomputes its own scale for each vector.

    Written with the raw weights (``F.layer_norm``) rather than by calling the model's
    modules: identical math, and far cheaper inside a training loop on a bridge.
    """
    norm, weight, bias = _final_ln_params(model)
    x = resid
    if norm in ("LN", "LNPre"):
        eps = float(getattr(model.ln_final, "eps", getattr(model.cfg, "eps", 1e-5)))
        x = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    elif norm is not None:
        raise NotImplementedError(f"normalization_type {norm!r} is not supported by the lens")
    return x @ model_weight(model, "W_U") + model_weight(model, "b_U")


def logit_lens(
    model: HookedModel, cache: Any, pos: int | slice | None = None
) -> tuple[Float[Tensor, "n_layers_plus_1 batch pos d_vocab"], list[str]]:
    """Logit lens through the final LayerNorm for every layer: ``LN_final(x_l) W_U + b_U``.

    Entry ``-1`` (label ``"final_post"``) equals the model's logits. ``pos`` selects
    positions first (an int keeps a length-1 pos axis) to save memory on long prompts.
    """
    resid, labels = residual_stack(model, cache)
    if isinstance(pos, int):
        resid = resid[:, :, pos : pos + 1 if pos != -1 else None]
    elif isinstance(pos, slice):
        resid = resid[:, :, pos]
    return unembed_with_final_ln(model, resid), labels


def logit_lens_top_k(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], k: int = 5, pos: int = -1, batch: int = 0
) -> tuple[Int[Tensor, "n_layers_plus_1 k"], Float[Tensor, "n_layers_plus_1 k"], list[str]]:
    """Top-``k`` token ids and probabilities of the logit lens at one position, per layer."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        logits, labels = logit_lens(model, cache, pos=pos)
    probs = logits[:, batch, 0].softmax(-1)  # [layer, d_vocab]
    top = probs.topk(k, dim=-1)
    return top.indices, top.values, labels


# --------------------------------------------------------------------------------------
# Tuned lens


class TunedLens(nn.Module):
    """One affine translator per layer, ``T_l(x) = x + x A_l + b_l``, zero-initialised.

    ``forward(resid, layer)`` returns lens logits ``LN_final(T_l(x)) W_U + b_U``; the
    final residual (``layer == n_layers``) is decoded without a translator.
    """

    def __init__(self, model: HookedModel):
        super().__init__()
        d_model, L = int(model.cfg.d_model), n_layers(model)
        self.A = nn.Parameter(torch.zeros(L, d_model, d_model))
        self.b = nn.Parameter(torch.zeros(L, d_model))
        self._model = [model]  # a list, so the model's weights are not this module's params

    def translate(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_model"]:
        if layer == self.A.shape[0]:
            return resid
        return resid + resid @ self.A[layer] + self.b[layer]

    def forward(
        self, resid: Float[Tensor, "... d_model"], layer: int
    ) -> Float[Tensor, "... d_vocab"]:
        return unembed_with_final_ln(self._model[0], self.translate(resid, layer))


def kl_to_final(
    final_logits: Float[Tensor, "n d_vocab"], lens_logits: Float[Tensor, "n d_vocab"]
) -> Float[Tensor, ""]:
    """Mean over rows of ``KL(p_final || p_lens) = sum_v p_final(v) (log p_final(v) -
    log p_lens(v))``: the tuned lens's training loss and the lens-quality metric."""
    return F.kl_div(
        lens_logits.log_softmax(-1),
        final_logits.log_softmax(-1),
        log_target=True,
        reduction="batchmean",
    )


def _collect_residuals(
    model: HookedModel, batches: Iterable[Int[Tensor, "batch pos"]]
) -> tuple[Float[Tensor, "n_layers_plus_1 n d_model"], Float[Tensor, "n d_vocab"]]:
    resids, finals = [], []
    with torch.no_grad():
        for tokens in batches:
            logits, cache = model.run_with_cache(tokens)
            stack, _ = residual_stack(model, cache)
            resids.append(stack.flatten(1, 2))
            finals.append(logits.flatten(0, 1))
    return torch.cat(resids, 1), torch.cat(finals, 0)


def lens_kl(
    model: HookedModel, tokens: Int[Tensor, "batch pos"], lens: TunedLens | None = None
) -> Float[Tensor, " n_layers_plus_1"]:
    """Per layer, mean ``KL(final || lens)`` over all positions; logit lens if ``lens`` is None."""
    resid, final = _collect_residuals(model, [tokens])
    with torch.no_grad():
        out = []
        for layer in range(resid.shape[0]):
            if lens is None:
                logits = unembed_with_final_ln(model, resid[layer])
            else:
                logits = lens(resid[layer], layer)
            out.append(kl_to_final(final, logits))
    return torch.stack(out)


def train_tuned_lens(
    model: HookedModel,
    batches: Iterable[Int[Tensor, "batch pos"]],
    n_steps: int = 200,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[TunedLens, list[float]]:
    """Fit a :class:`TunedLens` by Adam on the summed per-layer KL to the final logits.

    Residuals are collected once (model frozen, no grad); each step uses all of them.
    Returns the lens and the loss curve (sum over layers of the mean KL).
    """
    torch.manual_seed(seed)
    resid, final = _collect_residuals(model, batches)
    lens = TunedLens(model).to(resid.device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    losses = []
    for _ in range(n_steps):
        loss = sum(
            kl_to_final(final, lens(resid[layer], layer)) for layer in range(resid.shape[0] - 1)
        )
        assert isinstance(loss, Tensor)  # a sum of n_layers >= 1 tensors, not the empty 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return lens, losses


# --------------------------------------------------------------------------------------
# The residual stream as a sum


def decompose_resid(
    model: HookedModel, cache: Any
) -> tuple[Float[Tensor, "component batch pos d_model"], list[str]]:
    """The final residual ``x_L`` as the sum of what each component wrote into it::

        x_L = embed + pos_embed + sum_l (attn_out_l + mlp_out_l)

    Returns the stacked pieces in that order and their labels (``"embed"``,
    ``"pos_embed"``, ``"{l}_attn_out"``, ``"{l}_mlp_out"``, TransformerLens's labels);
    ``pos_embed`` is skipped for models without one, ``mlp_out`` for attention-only ones.
    """
    embed = cache["hook_embed"]
    comps, labels = [embed], ["embed"]
    if _in_cache(cache, "hook_pos_embed"):
        comps.append(cache["hook_pos_embed"].expand_as(embed))
        labels.append("pos_embed")
    for layer in range(n_layers(model)):
        for kind in ("attn_out", "mlp_out"):
            name = hook_name(kind, layer)
            if _in_cache(cache, name):  # attention-only models have no mlp_out
                comps.append(cache[name])
                labels.append(f"{layer}_{kind}")
    return torch.stack(comps), labels


# --------------------------------------------------------------------------------------
# Embedding geometry


def token_neighbours(
    W_E: Float[Tensor, "d_vocab d_model"], token: int, k: int = 5
) -> tuple[Int[Tensor, " k"], Float[Tensor, " k"]]:
    """The ``k`` tokens whose centred embeddings are most cosine-similar to ``token``'s.

    ``cos(W_E[token] - mu, W_E[j] - mu)`` with ``mu = W_E.mean(0)``, over ``j != token``,
    most similar first. Returns (ids, similarities).
    """
    if not 0 <= token < W_E.shape[0]:
        raise ValueError(f"token {token} outside the vocabulary of {W_E.shape[0]}")
    centred = F.normalize(W_E - W_E.mean(0), dim=-1)  # unit rows, common mean removed
    sims = centred @ centred[token]  # [d_vocab]
    sims[token] = float("-inf")  # a token is not its own neighbour
    top = sims.topk(k)
    return top.indices, top.values


# --------------------------------------------------------------------------------------
# Direct logit attribution


def logit_diff_direction(
    model: HookedModel, answer_tokens: Int[Tensor, "batch 2"]
) -> Float[Tensor, "batch d_model"]:
    """``W_U[:, a] - W_U[:, b]`` for each row ``(a, b)`` = (correct, distractor)."""
    if answer_tokens.ndim != 2 or answer_tokens.shape[1] != 2:
        raise ValueError(
            f"answer_tokens must be [batch, 2] (correct, wrong), got {tuple(answer_tokens.shape)}"
        )
    W_U = model_weight(model, "W_U")
    return W_U[:, answer_tokens[:, 0]].T - W_U[:, answer_tokens[:, 1]].T


def _unit_outputs(
    acts: Float[Tensor, "batch unit k"], W_out: Float[Tensor, "unit k d_model"], b_out: Tensor
) -> list[Tensor]:
    """What each unit (head or neuron) writes, ``acts[:, u] @ W_out[u]``, then the bias:
    ``unit + 1`` tensors ``[batch, d_model]`` that sum to the layer's output."""
    outputs = torch.einsum("buk,ukm->ubm", acts, W_out)
    return [*outputs, b_out.expand_as(outputs[0])]


def _components(
    model: HookedModel, cache: Any, pos: int, by: str
) -> tuple[list[Float[Tensor, "batch d_model"]], list[str]]:
    """Every additive piece of the final residual at ``pos`` (biases as their own pieces)."""
    comps: list[Tensor] = [cache["hook_embed"][:, pos]]
    labels = ["embed"]
    if _in_cache(cache, "hook_pos_embed"):
        comps.append(cache["hook_pos_embed"].expand_as(cache["hook_embed"])[:, pos])
        labels.append("pos_embed")
    for layer in range(n_layers(model)):
        block = model.blocks[layer]
        if by == "head":
            z = cache[hook_name("z", layer)][:, pos]  # [batch, head, d_head]
            comps += _unit_outputs(z, block.attn.W_O, block.attn.b_O)
            labels += [f"L{layer}H{h}" for h in range(z.shape[1])] + [f"L{layer}_b_O"]
        else:
            comps.append(cache[hook_name("attn_out", layer)][:, pos])
            labels.append(f"L{layer}_attn_out")
        if not _in_cache(cache, hook_name("mlp_out", layer)):
            continue  # attention-only model
        if by == "neuron":
            post = cache[hook_name("mlp_post", layer)][:, pos, :, None]  # [batch, d_mlp, 1]
            comps += _unit_outputs(post, block.mlp.W_out[:, None], block.mlp.b_out)
            labels += [f"L{layer}N{n}" for n in range(post.shape[1])] + [f"L{layer}_b_out"]
        else:
            comps.append(cache[hook_name("mlp_out", layer)][:, pos])
            labels.append(f"L{layer}_mlp_out")
    return comps, labels


def direct_logit_attribution(
    model: HookedModel,
    cache: Any,
    answer_tokens: Int[Tensor, "batch 2"],
    pos: int = -1,
    by: Literal["layer", "head", "neuron"] = "layer",
) -> tuple[Float[Tensor, "component batch"], list[str]]:
    """Each component's direct contribution to ``logit[a] - logit[b]`` at ``pos``.

    Components (labels): ``embed``, ``pos_embed``, then per layer either ``L{l}_attn_out``
    or heads ``L{l}H{h}`` plus ``L{l}_b_O``; either ``L{l}_mlp_out`` or neurons
    ``L{l}N{n}`` plus ``L{l}_b_out``; last ``bias`` (final-LN bias and ``b_U``). The final
    LN scale is frozen from the cache, so the rows sum to the model's logit difference.
    """
    if by not in ("layer", "head", "neuron"):
        raise ValueError(f"by must be 'layer', 'head' or 'neuron', got {by!r}")
    direction = logit_diff_direction(model, answer_tokens)  # [batch, d_model]
    comps, labels = _components(model, cache, pos, by)
    scale = cache["ln_final.hook_scale"][:, pos] if _final_ln_params(model)[0] else None
    stack = apply_final_ln_frozen(model, torch.stack(comps), scale)  # [comp, batch, d_model]
    contrib = (stack * direction).sum(-1)
    # Constant term: final-LN bias and the unembedding bias.
    _, _, ln_bias = _final_ln_params(model)
    const = torch.zeros_like(contrib[0])
    if ln_bias is not None:
        const = const + direction @ ln_bias
    b_U = model_weight(model, "b_U")
    const = const + b_U[answer_tokens[:, 0]] - b_U[answer_tokens[:, 1]]
    return torch.cat([contrib, const[None]]), labels + ["bias"]


def logit_difference(
    logits: Float[Tensor, "batch pos d_vocab"], answer_tokens: Int[Tensor, "batch 2"], pos: int = -1
) -> Float[Tensor, " batch"]:
    """Per-example ``logits[pos, a] - logits[pos, b]``."""
    last = logits[:, pos]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, answer_tokens[:, 0]] - last[rows, answer_tokens[:, 1]]
