r"""Locating a stored fact and editing it: causal tracing and a rank-one edit (ROME).

Meng et al., "Locating and Editing Factual Associations in GPT" (2022), in two steps.

**Causal tracing** asks *where* a model keeps the fact behind a prompt such as
"The pet of Mary was a" -> " turtle". Three runs:

1. *clean*: the prompt as is; ``p_clean`` is the probability of the correct object;
2. *corrupted*: the token embeddings of the subject ("Mary") get Gaussian noise,
   ``e_i + eps_i`` with ``eps_i ~ N(0, sigma^2 I)`` and ``sigma`` three times the standard
   deviation of the embedding entries (:func:`embedding_noise_std`), so the model no
   longer knows who the prompt is about; ``p_corrupt`` is usually much lower;
3. *corrupted with one state restored*: the same noise, but one hidden state ``h_i^(l)``
   (layer ``l``, position ``i``: the residual stream after a block, or only the block's
   MLP or attention output) is set to its clean value. ``p_restored(l, i)`` close to
   ``p_clean`` means that state carries the fact the rest of the network needs.

The grid ``p_restored(l, i)`` over layers and positions is the *trace*
(:func:`causal_trace`). It is denoising activation patching
(:mod:`decoding_gpt.patching`) with a Gaussian corruption instead of a second prompt;
every noise draw is shared by all cells, so cells differ only in what they restore.
Meng et al. find an *early site*, MLPs of middle layers at the subject's last token, and
a *late site*, attention at the last token that moves the fact to the prediction.

**The rank-one edit** (ROME) treats the MLP output matrix of one layer as a linear
associative memory. With the MLP written ``m = W k + b`` for the hidden activation
``k = act(x W_in + b_in)`` (``hook_post``, the *key*, ``d_mlp`` entries) and ``W``
``[d_model, d_mlp]`` (the transpose of our ``W_out``), the subject's key ``k*`` (at its
last token, averaged over a few prefixes, :func:`subject_key`) should map to a new value
``v*`` that makes the model say the new object (:func:`optimise_value`). Among all ``W'``
with ``W' k* = v*`` the one that changes the outputs on typical keys least, in the sense
of ``min ||(W' - W) K||_F`` over a corpus of keys ``K`` with uncentred covariance
``C = E[k k^T]`` (:func:`key_covariance`), is

.. math::

    W' = W + \frac{(v_* - W k_*)\,(C^{-1} k_*)^\top}{k_*^\top C^{-1} k_*}

(:func:`rank_one_update`): one outer product, so the change has rank one; ``W' k* = v*``
exactly; and every key ``k`` with ``k^T C^{-1} k* = 0`` keeps its value, ``W' k = W k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from decoding_gpt.hooks import HookedModel, hook_name, model_weight, n_layers

TraceKind = Literal["resid_post", "mlp_out", "attn_out"]
TRACE_KINDS: tuple[TraceKind, ...] = ("resid_post", "mlp_out", "attn_out")
Cell = tuple[int, int]  # (layer, position)

# --------------------------------------------------------------------------------------
# Causal tracing


def embedding_noise_std(
    model: HookedModel, token_ids: Sequence[int] | Tensor | None = None, factor: float = 3.0
) -> float:
    """``factor`` times the standard deviation of the entries of the token embeddings.

    Meng et al. use three times the empirical standard deviation of the subjects'
    embeddings; ``token_ids`` picks the rows of ``W_E`` to measure (all rows if ``None``).
    """
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    W_E = model_weight(model, "W_E").detach()
    rows = W_E if token_ids is None else W_E[torch.as_tensor(token_ids, dtype=torch.long)]
    if rows.numel() < 2:
        raise ValueError("need at least two embedding entries to measure a standard deviation")
    return factor * rows.float().std().item()


def _check_trace_inputs(
    model: HookedModel, tokens: Tensor, subject: Sequence[int], answer: int
) -> list[int]:
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be one sequence [pos], got shape {tuple(tokens.shape)}")
    subject = sorted(set(int(i) for i in subject))
    if not subject or subject[0] < 0 or subject[-1] >= len(tokens):
        raise ValueError(f"subject positions {subject} must be in [0, {len(tokens)})")
    if not 0 <= answer < model.cfg.d_vocab:
        raise ValueError(f"answer id {answer} is not in [0, {model.cfg.d_vocab})")
    return subject


def _restore_hook(
    clean: Float[Tensor, "pos d"], rows_at: dict[int, Tensor]
) -> Callable[[Tensor, Any], Tensor]:
    """Hook setting ``act[rows, pos] = clean[pos]`` for each ``pos -> rows`` of one layer."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        for pos, rows in rows_at.items():
            act[rows, pos] = clean[pos].to(act.dtype)
        return act

    return hook


@torch.no_grad()
def restored_probability(
    model: HookedModel,
    tokens: Int[Tensor, " pos"],
    subject: Sequence[int],
    answer: int,
    noise: Float[Tensor, "sample n_subject d_model"],
    restore: Sequence[Sequence[Cell]],
    kind: TraceKind = "resid_post",
) -> Float[Tensor, " condition"]:
    """Mean probability of ``answer`` at the last position over the noise samples, for
    each *condition*: a set of cells ``(layer, position)`` whose ``kind`` activation is
    restored to its clean value in the corrupted run (an empty set: plain corruption).

    The token embeddings at ``subject`` get ``noise[s]`` in sample ``s`` (the same noise
    for every condition). All ``condition x sample`` runs go through one batch.
    """
    subject = _check_trace_inputs(model, tokens, subject, answer)
    if noise.ndim != 3 or noise.shape[1] != len(subject):
        raise ValueError(
            f"noise must be [sample, {len(subject)} subject positions, d_model], "
            f"got shape {tuple(noise.shape)}"
        )
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {TRACE_KINDS}, got {kind!r}")
    L, n_pos, n_samples = n_layers(model), len(tokens), noise.shape[0]
    for cells in restore:
        for layer, pos in cells:
            if not (0 <= layer < L and 0 <= pos < n_pos):
                raise ValueError(f"cell {(layer, pos)} is outside {L} layers x {n_pos} positions")
    device = tokens.device
    names = {hook_name(kind, layer) for layer in range(L)}
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in names)
    n_rows = len(restore) * n_samples
    batch = tokens[None].expand(n_rows, -1)  # row = condition * n_samples + sample
    subj = torch.tensor(subject, device=device)

    def corrupt(act: Tensor, hook: Any) -> Tensor:  # act: [row, pos, d_model]
        act = act.clone()
        act[:, subj] += noise.to(act).repeat(len(restore), 1, 1)
        return act

    hooks: list[tuple[str, Callable]] = [("hook_embed", corrupt)]
    for layer in range(L):
        rows_at: dict[int, list[int]] = {}
        for c, cells in enumerate(restore):
            for pos in {p for ly, p in cells if ly == layer}:
                rows_at.setdefault(pos, []).extend(range(c * n_samples, (c + 1) * n_samples))
        if rows_at:
            name = hook_name(kind, layer)
            index = {pos: torch.tensor(rows, device=device) for pos, rows in rows_at.items()}
            hooks.append((name, _restore_hook(cache[name][0], index)))
    logits = model.run_with_hooks(batch, fwd_hooks=hooks)[:, -1].float()  # [row, d_vocab]
    probs = logits.softmax(-1)[:, answer].view(len(restore), n_samples)
    return probs.mean(-1)


@dataclass(frozen=True)
class CausalTrace:
    """Result of :func:`causal_trace` on one prompt: probabilities of the answer."""

    clean: float  # p(answer) on the clean prompt
    corrupt: float  # p(answer) with the subject embeddings noised (mean over samples)
    restored: Float[Tensor, "layer pos"]  # p(answer) with one state (layer, pos) restored
    kind: TraceKind

    @property
    def normalised(self) -> Float[Tensor, "layer pos"]:
        """``(restored - corrupt) / (clean - corrupt)``: 1 = fully restored, 0 = no effect."""
        return (self.restored - self.corrupt) / (self.clean - self.corrupt)


@torch.no_grad()
def causal_trace(
    model: HookedModel,
    tokens: Int[Tensor, " pos"],
    subject: Sequence[int],
    answer: int,
    noise_std: float,
    kind: TraceKind = "resid_post",
    n_samples: int = 10,
    seed: int = 0,
) -> CausalTrace:
    """The trace of Meng et al.: ``p(answer)`` with each single state ``(layer, pos)``
    restored in the subject-corrupted run, beside the clean and corrupted probabilities.

    ``tokens`` is one prompt (begin it with the end-of-text token, as the model was
    trained), ``subject`` the positions of the subject's tokens, ``answer`` the id of the
    correct next token, ``noise_std`` the noise scale (:func:`embedding_noise_std`).
    """
    if noise_std <= 0 or n_samples < 1:
        raise ValueError(f"need noise_std > 0 and n_samples >= 1, got {noise_std}, {n_samples}")
    subject = _check_trace_inputs(model, tokens, subject, answer)
    gen = torch.Generator().manual_seed(seed)
    d_model = model.cfg.d_model
    noise = noise_std * torch.randn(n_samples, len(subject), d_model, generator=gen)
    L, n_pos = n_layers(model), len(tokens)
    cells: list[list[Cell]] = [[]] + [[(ly, p)] for ly in range(L) for p in range(n_pos)]
    probs = restored_probability(
        model, tokens, subject, answer, noise.to(tokens.device), cells, kind
    )
    logits = model(tokens[None])[0, -1].float()
    clean = logits.softmax(-1)[answer].item()
    return CausalTrace(clean, probs[0].item(), probs[1:].view(L, n_pos).cpu(), kind)


# --------------------------------------------------------------------------------------
# The rank-one edit


def rank_one_update(
    W: Float[Tensor, "d_out d_in"],
    C: Float[Tensor, "d_in d_in"],
    key: Float[Tensor, " d_in"],
    value: Float[Tensor, " d_out"],
) -> Float[Tensor, "d_out d_in"]:
    """ROME's update ``Delta = (v* - W k*) (C^{-1} k*)^T / (k*^T C^{-1} k*)``.

    ``W + Delta`` maps ``key`` to ``value`` exactly, leaves every key ``k`` with
    ``k^T C^{-1} k* = 0`` where it was, and is the least change in that sense:
    it minimises ``E ||(W' - W) k||^2`` over keys of covariance ``C`` subject to
    ``W' k* = v*``. Solved in float64 (``C`` must be symmetric positive definite);
    returns ``Delta`` in ``W``'s dtype.
    """
    d_out, d_in = W.shape
    if C.shape != (d_in, d_in) or key.shape != (d_in,) or value.shape != (d_out,):
        raise ValueError(
            f"shapes do not fit W {tuple(W.shape)}: need C [{d_in}, {d_in}], key [{d_in}], "
            f"value [{d_out}]; got C {tuple(C.shape)}, key {tuple(key.shape)}, "
            f"value {tuple(value.shape)}"
        )
    C64, k64 = C.double(), key.double()
    if not torch.allclose(C64, C64.T, atol=1e-6 * C64.abs().max().item()):
        raise ValueError("C must be symmetric (an uncentred covariance E[k k^T])")
    u = torch.linalg.solve(C64, k64)  # C^{-1} k*
    denom = u @ k64
    if not denom > 0:
        raise ValueError(f"k*^T C^-1 k* = {denom.item():.3g}: C is not positive definite")
    residual = value.double() - W.double() @ k64  # v* - W k*
    return (torch.outer(residual, u) / denom).to(W.dtype)


def _mlp(model: HookedModel, layer: int) -> Any:
    if not 0 <= layer < n_layers(model):
        raise ValueError(f"layer {layer} is not in [0, {n_layers(model)})")
    block = model.blocks[layer]
    if not hasattr(block, "mlp") or not hasattr(block.mlp, "W_out"):
        raise ValueError(f"block {layer} has no MLP with a W_out (an attention-only model?)")
    return block.mlp


@torch.no_grad()
def key_covariance(
    model: HookedModel, layer: int, tokens: Int[Tensor, "batch pos"], ridge: float = 0.0
) -> Float[Tensor, "d_mlp d_mlp"]:
    """Uncentred covariance ``C = mean_t k_t k_t^T`` of the MLP keys (``hook_post`` of
    ``layer``) over every position of ``tokens`` (corpus text), in float64, plus
    ``ridge * mean(diag C) * I`` if asked (keeps ``C`` invertible on little text)."""
    _mlp(model, layer)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    name = hook_name("mlp_post", layer)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
    keys = cache[name].reshape(-1, cache[name].shape[-1]).double()  # [n, d_mlp]
    C = keys.T @ keys / len(keys)
    return C + ridge * C.diagonal().mean() * torch.eye(len(C), dtype=C.dtype, device=C.device)


@torch.no_grad()
def subject_key(
    model: HookedModel, layer: int, contexts: Sequence[Int[Tensor, " pos"]]
) -> Float[Tensor, " d_mlp"]:
    """``k* = mean_j k(prefix_j + subject)``: the MLP key of ``layer`` at the subject's
    last token, averaged over contexts that each END with the subject (a few prefixes
    before it, so the key is the subject's, not one sentence's)."""
    _mlp(model, layer)
    if not contexts or any(c.ndim != 1 for c in contexts):
        raise ValueError("contexts must be a non-empty list of 1-d token tensors")
    return torch.stack([_layer_keys(model, layer, c)[-1] for c in contexts]).mean(0)


@dataclass(frozen=True)
class ValueResult:
    """The optimised value ``v* = W k* + delta`` and the mean NLL of the target per step."""

    value: Float[Tensor, " d_model"]
    delta: Float[Tensor, " d_model"]
    losses: list[float]


@torch.no_grad()
def edit_weights(
    model: HookedModel,
    layer: int,
    C: Float[Tensor, "d_mlp d_mlp"],
    key: Float[Tensor, " d_mlp"],
    tokens: Int[Tensor, " pos"],
) -> Float[Tensor, " pos"]:
    """``r_i = (C^{-1} k*)^T k_i / (C^{-1} k*)^T k*`` for the key ``k_i`` at each position
    of ``tokens``: the rank-one edit adds ``r_i (v* - W k*)`` to the MLP output there
    (``r = 1`` at a position whose key is ``k*``, 0 at a ``C^{-1}``-orthogonal one)."""
    u = torch.linalg.solve(C.double(), key.double())  # C^{-1} k*
    keys = _layer_keys(model, layer, tokens).double()  # [pos, d_mlp]
    return (keys @ u / (u @ key.double())).float()


def _layer_keys(model: HookedModel, layer: int, tokens: Tensor) -> Float[Tensor, "pos d_mlp"]:
    name = hook_name("mlp_post", layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n == name)
    return cache[name][0]


def optimise_value(
    model: HookedModel,
    layer: int,
    C: Float[Tensor, "d_mlp d_mlp"],
    key: Float[Tensor, " d_mlp"],
    prompts: Sequence[Int[Tensor, " pos"]],
    target: int,
    steps: int = 20,
    lr: float = 0.5,
    weight_decay: float = 0.01,
) -> ValueResult:
    r"""The value ``v* = W k* + delta`` to store, found by gradient descent on ``delta``:

    .. math::  \min_\delta\; \frac1n \sum_j -\log p(\text{target} \mid \text{prompt}_j)
               + \lambda \frac{\|\delta\|^2}{\|W k_*\|^2}

    with ``p`` the model whose MLP output at each position ``i`` of ``layer`` gets
    ``r_i delta`` (:func:`edit_weights`): exactly what the rank-one edit with this ``v*``
    will do on these prompts, since the keys of ``layer`` do not depend on its own
    output. (ROME adds ``delta`` at the subject's last token only, where ``r = 1``, and
    ignores the ``r_i`` elsewhere; in a small model where the fact is read at the last
    token those matter.) Adam with ``lr`` for ``steps`` steps; the weights are unchanged.
    """
    mlp = _mlp(model, layer)
    if not prompts or any(p.ndim != 1 for p in prompts):
        raise ValueError("prompts must be a non-empty list of 1-d token tensors")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    W = mlp.W_out.detach().T  # [d_model, d_mlp]
    base = W @ key.to(W)  # W k*
    weights = [edit_weights(model, layer, C, key, p).to(W) for p in prompts]
    delta = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    name = hook_name("mlp_out", layer)
    losses: list[float] = []
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            nll = []
            for tokens, r in zip(prompts, weights, strict=True):

                def add(act: Tensor, hook: Any, r: Tensor = r) -> Tensor:
                    return act + r[None, :, None] * delta  # [1, pos, d_model]

                logits = model.run_with_hooks(tokens[None], fwd_hooks=[(name, add)])
                nll.append(-F.log_softmax(logits[0, -1].float(), -1)[target])
            loss = torch.stack(nll).mean()
            total = loss + weight_decay * delta.pow(2).sum() / base.pow(2).sum()
            opt.zero_grad()
            total.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        for p in trainable:
            p.requires_grad_(True)
    d = delta.detach()
    return ValueResult(base + d, d, losses)


def mlp_edit(
    model: HookedModel,
    layer: int,
    C: Float[Tensor, "d_mlp d_mlp"],
    key: Float[Tensor, " d_mlp"],
    value: Float[Tensor, " d_model"],
) -> Float[Tensor, "d_model d_mlp"]:
    """The rank-one change of ``layer``'s MLP output matrix ``W = W_out^T`` that stores
    ``key -> value`` (:func:`rank_one_update`); apply it with :func:`applied_edit`."""
    W = _mlp(model, layer).W_out.detach().T  # [d_model, d_mlp]
    return rank_one_update(W, C.to(W.device), key.to(W), value.to(W))


@contextmanager
def applied_edit(
    model: HookedModel, layer: int, delta: Float[Tensor, "d_model d_mlp"]
) -> Iterator[HookedModel]:
    """Inside the block, ``layer``'s ``W_out`` is ``(W + delta)^T``; on exit (even on an
    error) the original weights are put back exactly."""
    mlp = _mlp(model, layer)
    if delta.shape != mlp.W_out.T.shape:
        raise ValueError(
            f"delta has shape {tuple(delta.shape)}, expected {tuple(mlp.W_out.T.shape)}"
        )
    original = mlp.W_out.detach().clone()
    with torch.no_grad():
        mlp.W_out += delta.T.to(mlp.W_out)
    try:
        yield model
    finally:
        with torch.no_grad():
            mlp.W_out.copy_(original)
