"""Causal interventions: activation / path / attribution patching, ablation, steering.

**Setup.** Two prompts that differ in one detail, a *clean* one (the model does the task,
e.g. "When Mary and John went to the store, John gave a drink to" -> " Mary") and a
*corrupt* one (the detail changed, so the answer changes), and a scalar *metric* of the
logits, usually the logit difference ``logit(correct) - logit(wrong)``.

**Activation patching** replaces one activation (a layer's residual stream at one
position, an attention layer's output, one head's ``z``...) in one run by its value in
the other run and re-measures the metric. Following Heimersheim & Nanda, "How to use
and interpret activation patching" (2024), the direction matters:

- **denoising** (clean -> corrupt): run the *corrupt* prompt, patch in *clean*
  activations. A big recovery means the patched activation is *sufficient* (given the
  rest of the corrupt run) to restore the behaviour.
- **noising** (corrupt -> clean): run the *clean* prompt, patch in *corrupt*
  activations. A big drop means the activation is *necessary*.

(An old version of this course swapped the two names; the tests pin the definitions.)
Results are reported raw or *normalised*::

    normalised = (patched - corrupt) / (clean - corrupt)

which is 1 when the clean behaviour is fully present and 0 when it is fully absent, in
either direction. Patching the whole residual stream of a layer (all positions) makes
everything downstream equal to the source run, so denoising then gives exactly the clean
metric and noising exactly the corrupt one (tested). *Misleads:* denoising and noising
answer different questions (an OR of two redundant paths looks unimportant under
noising); effects depend on the corruption chosen; backup heads can compensate.

**Ablation** removes an activation instead of swapping in a counterfactual: *zero*
ablation (set to 0: often off-distribution), *mean* ablation (the mean over a reference
batch at each position) and *resample* ablation (its value on a random reference prompt).

**Path patching** (Wang et al., 2022, IOI) measures one edge ``sender head -> receiver``:
run the base prompt with the sender's ``z`` taken from the source run and every other
head's ``z`` frozen at its base value; record the receivers' queries / keys / values; then
run the base prompt again with only those receiver inputs patched. Effects through
other heads are blocked (MLPs recompute unless ``freeze_mlps``), so the result is the
effect along the direct sender -> receiver path.

**Attribution patching** (Nanda, 2023) replaces each patched forward pass by a first-order
Taylor expansion around the base run::

    metric(patched) - metric(base) ~= sum (a_source - a_base) . d metric / d a |_base

One forward and one backward pass give every layer and position at once. Exact when the
metric is linear in the activation (e.g. the last residual of a model without a final
LayerNorm); poor for large changes through saturated softmaxes and LayerNorms. Compare
with real patching (:func:`compare_attribution_to_activation_patching`) before trusting it.

**Steering** (activation addition; Turner et al., 2023). A difference of means
``v = mean(a | positive prompts) - mean(a | negative prompts)`` at one layer, added as
``a + c v`` during generation; :func:`steering` does this as a context manager whose hooks
are removed on exit, even if the body raises.

Everything works on any model with TransformerLens hook names and ``hooks`` /
``run_with_cache`` (``TransformerBridge``, :class:`decoding_gpt.transformer.GPT`).
Patching sweeps are batched: many patched copies of the prompt go through one forward pass
(``max_rows`` rows at a time), instead of one forward per cell as in
``transformer_lens.patching``; the results are equal (tested). For ``resid_pre`` and
``resid_post`` the copies are made *at* the patched layer (the hook returns a larger
batch), so the layers before it run once instead of once per copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal, overload

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from decoding_gpt.hooks import HookedModel, hook_name, n_layers

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]
Direction = Literal["denoising", "noising"]
HEAD_KINDS = ("z", "q", "k", "v")
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


# --------------------------------------------------------------------------------------
# Metrics


def logit_diff_metric(answer_tokens: Int[Tensor, "batch 2"], pos: int = -1) -> Metric:
    """Metric ``mean_batch(logits[pos, correct] - logits[pos, wrong])`` (answers ``[batch, 2]``)."""
    if answer_tokens.ndim != 2 or answer_tokens.shape[1] != 2:
        raise ValueError(f"answer_tokens must be [batch, 2], got {tuple(answer_tokens.shape)}")

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Tensor:
        last = logits[:, pos]
        rows = torch.arange(last.shape[0], device=last.device)
        return (last[rows, answer_tokens[:, 0]] - last[rows, answer_tokens[:, 1]]).mean()

    return metric


@overload
def normalized_metric(patched: Tensor, clean: float, corrupt: float) -> Tensor: ...
@overload
def normalized_metric(patched: float, clean: float, corrupt: float) -> float: ...
def normalized_metric(patched: Tensor | float, clean: float, corrupt: float) -> Tensor | float:
    """``(patched - corrupt) / (clean - corrupt)``: 1 = clean behaviour, 0 = corrupt behaviour."""
    clean, corrupt = float(clean), float(corrupt)
    if abs(clean - corrupt) < 1e-8:
        raise ValueError("clean and corrupt metrics are equal: the normalised metric is undefined")
    return (patched - corrupt) / (clean - corrupt)


def metric_baselines(
    model: HookedModel, clean_tokens: Tensor, corrupt_tokens: Tensor, metric: Metric
) -> tuple[float, float]:
    """``(metric(clean run), metric(corrupt run))``."""
    with torch.no_grad():
        return float(metric(model(clean_tokens))), float(metric(model(corrupt_tokens)))


def _base_source(clean: Tensor, corrupt: Tensor, direction: str) -> tuple[Tensor, Tensor]:
    """(tokens we run, tokens the patched activations come from)."""
    if direction == "denoising":
        return corrupt, clean
    if direction == "noising":
        return clean, corrupt
    raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")


def _check_pair(clean: Tensor, corrupt: Tensor) -> None:
    if clean.shape != corrupt.shape or clean.ndim != 2:
        raise ValueError(
            "clean and corrupt tokens must both be [batch, pos] with the same shape, got "
            f"{tuple(clean.shape)} and {tuple(corrupt.shape)}"
        )


def _cache(model: HookedModel, tokens: Tensor, names: set[str]) -> dict[str, Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: cache[n] for n in names}


def _run_chunks(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    n_variants: int,
    make_hooks: Callable[[int, int], list[tuple[str, Callable]]],
    metric: Metric,
    max_rows: int,
) -> Float[Tensor, " n_variants"]:
    """Run ``n_variants`` patched copies of ``base``, ``max_rows`` rows per forward pass.

    ``make_hooks(start, stop)`` gives hooks for variants ``start..stop-1``; copy ``i`` of
    the chunk occupies rows ``i*batch .. (i+1)*batch - 1``. The metric sees one copy at a
    time, so it is the same metric as for an unbatched run.
    """
    B = base.shape[0]
    per_chunk = max(1, max_rows // B)
    out = torch.empty(n_variants)
    with torch.no_grad():
        for start in range(0, n_variants, per_chunk):
            stop = min(start + per_chunk, n_variants)
            with model.hooks(fwd_hooks=make_hooks(start, stop)):
                logits = model(base.repeat(stop - start, 1))
            for i in range(stop - start):
                out[start + i] = metric(logits[i * B : (i + 1) * B]).float()
    return out


# --------------------------------------------------------------------------------------
# Activation patching


def _run_expanding(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    cells: list[tuple[int, int, int]],
    src: dict[str, Tensor],
    kind: str,
    metric: Metric,
    max_rows: int,
) -> Float[Tensor, " n_cells"]:
    """Residual patching that runs the layers before the patch only once.

    The hook at a block boundary receives the base batch ``[batch, pos, d]`` and returns
    ``n`` patched copies ``[n * batch, pos, d]``; the rest of the model runs on the larger
    batch. Same values as :func:`_run_chunks`, about half the compute for a full sweep.
    """
    B = base.shape[0]
    per_chunk = max(1, max_rows // B)
    out = torch.empty(len(cells))
    by_layer: dict[int, list[int]] = {}
    for i, cell in enumerate(cells):
        by_layer.setdefault(cell[0], []).append(i)
    with torch.no_grad():
        for layer, idx in by_layer.items():
            name = hook_name(kind, layer)
            for start in range(0, len(idx), per_chunk):
                chunk = idx[start : start + per_chunk]
                patch = _patch_hook([(j, cells[i]) for j, i in enumerate(chunk)], src[name], B)
                n = len(chunk)

                def expand(act: Tensor, hook: Any, n: int = n, patch: Callable = patch) -> Tensor:
                    return patch(act.repeat(n, *([1] * (act.ndim - 1))), hook)

                with model.hooks(fwd_hooks=[(name, expand)]):
                    logits = model(base)
                if logits.shape[0] != n * B:
                    raise RuntimeError("the model did not propagate the expanded batch")
                for j, i in enumerate(chunk):
                    out[i] = metric(logits[j * B : (j + 1) * B]).float()
    return out


def _cells(model: HookedModel, kind: str, n_pos: int, by_pos: bool) -> list[tuple[int, int, int]]:
    """(layer, pos, head) for every patch; -1 means "all" for pos, "no head axis" for head."""
    L = n_layers(model)
    heads = range(int(model.cfg.n_heads)) if kind in HEAD_KINDS else [-1]
    poss = range(n_pos) if by_pos else [-1]
    return [(lay, p, h) for lay in range(L) for p in poss for h in heads]


def _patch_hook(
    cells: list[tuple[int, tuple[int, int, int]]], src: Tensor, B: int
) -> Callable[[Tensor, Any], Tensor]:
    """Hook writing ``src`` into the rows of each cell (all cells are in this hook's layer).

    ``cells`` pairs each variant (its copy of the batch) with the ``(layer, pos, head)``
    it patches."""
    variant = torch.tensor([i for i, _ in cells])
    pos = torch.tensor([c[1] for _, c in cells])
    head = torch.tensor([c[2] for _, c in cells])
    ex = torch.arange(B).repeat(len(cells))  # example index for each patched row
    rows = (variant[:, None] * B + torch.arange(B)[None]).flatten()
    pos, head = pos.repeat_interleave(B), head.repeat_interleave(B)

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        r, e, p, h = rows.to(act.device), ex.to(act.device), pos.to(act.device), head.to(act.device)
        if head[0] < 0 and pos[0] < 0:
            act[r] = src[e]
        elif head[0] < 0:
            act[r, p] = src[e, p]
        elif pos[0] < 0:
            act[r, :, h] = src[e, :, h]
        else:
            act[r, p, h] = src[e, p, h]
        return act

    return hook


def _sweep_prompts(
    kind: str, clean_tokens: Tensor, corrupt_tokens: Tensor, direction: Direction
) -> tuple[Tensor, Tensor]:
    """Validate a patching sweep's arguments; its ``(base, source)`` prompts."""
    if kind not in RESID_KINDS + HEAD_KINDS:
        raise ValueError(f"kind must be one of {RESID_KINDS + HEAD_KINDS}, got {kind!r}")
    _check_pair(clean_tokens, corrupt_tokens)
    return _base_source(clean_tokens, corrupt_tokens, direction)


def activation_patching(
    model: HookedModel,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    kind: str = "resid_pre",
    direction: Direction = "denoising",
    by_pos: bool = True,
    max_rows: int = 256,
) -> Tensor:
    """Metric after patching each layer (and position, and head) of ``kind``.

    ``kind``: ``resid_pre|resid_mid|resid_post|attn_out|mlp_out`` -> result ``[layer, pos]``
    (``[layer]`` if not ``by_pos``); ``z|q|k|v`` (per head) -> ``[layer, pos, head]``
    (``[layer, head]``). ``direction``: ``"denoising"`` runs the corrupt prompt with clean
    activations patched in; ``"noising"`` runs the clean prompt with corrupt ones.

    Caveat: on a TransformerLens 4.3 ``TransformerBridge``, ``hook_resid_mid`` is an alias
    of the MLP LayerNorm's input, so patching ``resid_mid`` there changes only what the MLP
    reads (as in ``transformer_lens.patching``), not the residual stream itself. On
    :class:`decoding_gpt.transformer.GPT` it is the residual stream.
    """
    base, source = _sweep_prompts(kind, clean_tokens, corrupt_tokens, direction)
    L, B, n_pos = n_layers(model), base.shape[0], base.shape[1]
    src = _cache(model, source, {hook_name(kind, lay) for lay in range(L)})
    cells = _cells(model, kind, n_pos, by_pos)

    def make_hooks(start: int, stop: int) -> list[tuple[str, Callable]]:
        by_layer: dict[int, list[tuple[int, tuple[int, int, int]]]] = {}
        for i in range(start, stop):
            by_layer.setdefault(cells[i][0], []).append((i - start, cells[i]))
        return [
            (hook_name(kind, lay), _patch_hook(cs, src[hook_name(kind, lay)], B))
            for lay, cs in by_layer.items()
        ]

    values = None
    if kind in ("resid_pre", "resid_post"):
        try:
            values = _run_expanding(model, base, cells, src, kind, metric, max_rows)
        except RuntimeError:  # a model whose later layers need the original batch size
            values = None
    if values is None:
        values = _run_chunks(model, base, len(cells), make_hooks, metric, max_rows)
    shape = (
        [L] + ([n_pos] if by_pos else []) + ([int(model.cfg.n_heads)] if kind in HEAD_KINDS else [])
    )
    return values.reshape(shape)


# --------------------------------------------------------------------------------------
# Ablation


def ablation_hooks(
    model: HookedModel,
    targets: Sequence[tuple[str, int] | tuple[str, int, int]],
    method: Literal["zero", "mean", "resample"] = "zero",
    reference_tokens: Int[Tensor, "ref_batch pos"] | None = None,
    batch: int | None = None,
    seed: int = 0,
) -> list[tuple[str, Callable]]:
    """Forward hooks ablating each target ``(kind, layer)`` or ``(kind, layer, head)``.

    ``mean``: the reference batch's mean at each position; ``resample``: each row takes the
    activation of a reference prompt drawn with ``seed`` (``batch`` rows must be given).
    Use as ``with model.hooks(fwd_hooks=ablation_hooks(...)): model(tokens)``.
    """
    if method not in ("zero", "mean", "resample"):
        raise ValueError(f"method must be 'zero', 'mean' or 'resample', got {method!r}")
    names = {hook_name(t[0], t[1]) for t in targets}
    ref: dict[str, Tensor] = {}
    if method != "zero":
        if reference_tokens is None:
            raise ValueError(f"{method} ablation needs reference_tokens")
        ref = _cache(model, reference_tokens, names)
    idx = None
    if method == "resample":
        if batch is None:
            raise ValueError("resample ablation needs batch (the number of rows to ablate)")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, reference_tokens.shape[0], (batch,), generator=gen)  # type: ignore[union-attr]

    def make(name: str, head: int | None) -> Callable:
        def hook(act: Tensor, hook: Any) -> Tensor:
            if method == "zero":
                value = torch.zeros_like(act)
            elif method == "mean":
                value = ref[name].mean(0, keepdim=True).expand_as(act)
            else:
                value = ref[name][idx.to(ref[name].device)]  # type: ignore[union-attr]
            if value.shape != act.shape:
                raise ValueError(
                    f"reference activation {tuple(value.shape)} != {tuple(act.shape)} at {name}"
                )
            act = act.clone()
            if head is None:
                act[:] = value
            else:
                act[:, :, head] = value[:, :, head]
            return act

        return hook

    hooks = []
    for t in targets:
        kind, layer = t[0], t[1]
        head = t[2] if len(t) == 3 else None
        if head is not None and kind not in HEAD_KINDS:
            raise ValueError(f"a head index only applies to {HEAD_KINDS}, not {kind!r}")
        hooks.append((hook_name(kind, layer), make(hook_name(kind, layer), head)))
    return hooks


def run_with_ablation(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    targets: Sequence[tuple[str, int] | tuple[str, int, int]],
    method: Literal["zero", "mean", "resample"] = "zero",
    reference_tokens: Int[Tensor, "ref_batch pos"] | None = None,
    seed: int = 0,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with every target ablated (see :func:`ablation_hooks`)."""
    hooks = ablation_hooks(model, targets, method, reference_tokens, tokens.shape[0], seed)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens)


# --------------------------------------------------------------------------------------
# Path patching


def path_patching(
    model: HookedModel,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    receivers: Sequence[tuple[int, int, str]],
    senders: Sequence[tuple[int, int]] | None = None,
    direction: Direction = "noising",
    freeze_mlps: bool = False,
    max_rows: int = 256,
) -> Float[Tensor, " n_senders"] | Float[Tensor, "layer head"]:
    """Metric after patching the path ``sender head -> receivers`` for each sender.

    ``receivers``: ``(layer, head, "q"|"k"|"v")`` triples (the input that is patched).
    ``senders``: ``(layer, head)`` pairs; by default every head in a layer before the
    earliest receiver, returned as ``[layer, head]`` (NaN where a head is not a sender).
    ``direction="noising"`` (Wang et al.) runs the clean prompt and takes the sender from
    the corrupt run; ``"denoising"`` the reverse.

    The steps, each a function below (the last two per chunk of ``max_rows`` rows, in
    which copy ``i`` of the base prompt patches the chunk's sender ``i``):

    1. ``_cache_path_activations``: every head's ``z`` (and, with ``freeze_mlps``, every
       MLP's output) on the base run, and every head's ``z`` on the source run.
    2. ``_record_receivers``: run the base prompt with all of those frozen at their base
       values except the sender's ``z``, which takes its source value. The change can
       reach the receivers only directly (or through MLPs, unless frozen): record their
       ``q``/``k``/``v``.
    3. ``_receiver_hooks``: run the base prompt once more with nothing patched but the
       receivers' inputs, set to the recorded values, and measure ``metric``.
    """
    _check_pair(clean_tokens, corrupt_tokens)
    sender_list = _path_senders(model, receivers, senders)
    base, source = _base_source(clean_tokens, corrupt_tokens, direction)
    base_acts, source_z = _cache_path_activations(model, base, source, freeze_mlps)
    make_hooks = partial(_path_hooks, model, base, base_acts, source_z, sender_list, receivers)
    values = _run_chunks(model, base, len(sender_list), make_hooks, metric, max_rows)
    return values if senders is not None else _layer_head_grid(model, sender_list, values)


def _path_senders(
    model: HookedModel,
    receivers: Sequence[tuple[int, int, str]],
    senders: Sequence[tuple[int, int]] | None,
) -> list[tuple[int, int]]:
    """Checked ``senders`` (default: every head in a layer before the earliest receiver).

    A sender must sit in an earlier layer than every receiver: the path it starts has to
    reach the receivers' inputs through the residual stream.
    """
    if not receivers or any(r[2] not in ("q", "k", "v") for r in receivers):
        raise ValueError("receivers must be non-empty (layer, head, 'q'|'k'|'v') triples")
    first_receiver = min(r[0] for r in receivers)
    if senders is None:
        n_heads = int(model.cfg.n_heads)
        senders = [(lay, h) for lay in range(first_receiver) for h in range(n_heads)]
    if any(s[0] >= first_receiver for s in senders):
        raise ValueError("every sender must be in an earlier layer than every receiver")
    return list(senders)


def _cache_path_activations(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    source: Int[Tensor, "batch pos"],
    freeze_mlps: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Step 1: ``(base_acts, source_z)``, the activations the path-patched run is built from.

    ``base_acts``: every frozen hook (each layer's ``attn.hook_z`` ``[batch, pos, head,
    d_head]``, and ``hook_mlp_out`` ``[batch, pos, d_model]`` with ``freeze_mlps``) on the
    base prompt. ``source_z``: each layer's ``attn.hook_z`` on the source prompt.
    """
    layers = range(n_layers(model))
    z_names = {hook_name("z", lay) for lay in layers}
    frozen = z_names | ({hook_name("mlp_out", lay) for lay in layers} if freeze_mlps else set())
    return _cache(model, base, frozen), _cache(model, source, z_names)


def _path_hooks(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    base_acts: dict[str, Tensor],
    source_z: dict[str, Tensor],
    senders: list[tuple[int, int]],
    receivers: Sequence[tuple[int, int, str]],
    start: int,
    stop: int,
) -> list[tuple[str, Callable]]:
    """Hooks that path-patch senders ``start..stop-1``, copy ``i`` of ``base`` for sender ``i``.

    Runs step 2 for the chunk (``_record_receivers``) and returns step 3's hooks, for
    ``_run_chunks`` to run the base prompt under and measure.
    """
    chunk = senders[start:stop]
    freeze = _freeze_hooks(base_acts, source_z, chunk)
    recorded = _record_receivers(model, base, freeze, receivers, len(chunk))
    return _receiver_hooks(recorded, receivers)


def _freeze_hooks(
    base_acts: dict[str, Tensor], source_z: dict[str, Tensor], chunk: list[tuple[int, int]]
) -> list[tuple[str, Callable]]:
    """Step 2's hooks: every copy gets every frozen activation's base value, except that
    copy ``i`` gets sender ``chunk[i]``'s ``z`` from the source run."""
    hooks: list[tuple[str, Callable]] = []
    for name, base_act in base_acts.items():
        layer = int(name.split(".")[1])
        cells = [
            (i, (layer, -1, head))  # copy i, all positions, one head
            for i, (lay, head) in enumerate(chunk)
            if lay == layer and name in source_z
        ]
        patch = _freeze_then_patch(base_act, source_z.get(name), cells, len(chunk), len(base_act))
        hooks.append((name, patch))
    return hooks


def _record_receivers(
    model: HookedModel,
    base: Int[Tensor, "batch pos"],
    freeze_hooks: list[tuple[str, Callable]],
    receivers: Sequence[tuple[int, int, str]],
    n_copies: int,
) -> dict[str, Tensor]:
    """Step 2: run ``n_copies`` of ``base`` under ``freeze_hooks``; the receivers' inputs.

    Returns hook name -> ``[n_copies * batch, pos, head, d_head]`` for each receiving
    ``attn.hook_q`` / ``hook_k`` / ``hook_v`` (all heads; step 3 picks the receivers).
    """
    recorded: dict[str, Tensor] = {}
    hooks = freeze_hooks + [(n, _record_hook(recorded, n)) for n in _receiver_names(receivers)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(base.repeat(n_copies, 1))
    return recorded


def _receiver_hooks(
    recorded: dict[str, Tensor], receivers: Sequence[tuple[int, int, str]]
) -> list[tuple[str, Callable]]:
    """Step 3's hooks: each receiver head's ``q``/``k``/``v`` takes its recorded value."""
    hooks: list[tuple[str, Callable]] = []
    for name in _receiver_names(receivers):
        heads = torch.tensor([h for lay, h, kind in receivers if hook_name(kind, lay) == name])
        hooks.append((name, _write_heads_hook(recorded[name], heads)))
    return hooks


def _receiver_names(receivers: Sequence[tuple[int, int, str]]) -> list[str]:
    """The receivers' hook names (``blocks.L.attn.hook_q`` ...), sorted, each once."""
    return sorted({hook_name(kind, layer) for layer, _, kind in receivers})


def _record_hook(store: dict[str, Tensor], name: str) -> Callable[[Tensor, Any], Tensor]:
    """Hook that copies the activation it sees into ``store[name]`` and leaves it as is."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        store[name] = act.clone()
        return act

    return hook


def _write_heads_hook(
    recorded: Float[Tensor, "rows pos head d_head"], heads: Int[Tensor, " n"]
) -> Callable[[Tensor, Any], Tensor]:
    """Hook that replaces ``heads`` of the activation by their ``recorded`` values."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, :, heads] = recorded[:, :, heads]
        return act

    return hook


def _layer_head_grid(
    model: HookedModel, senders: list[tuple[int, int]], values: Float[Tensor, " n_senders"]
) -> Float[Tensor, "layer head"]:
    """``values`` placed at their senders' ``[layer, head]``; NaN where a head sent nothing."""
    out = torch.full((n_layers(model), int(model.cfg.n_heads)), float("nan"))
    for (lay, h), v in zip(senders, values, strict=True):
        out[lay, h] = v
    return out


def _freeze_then_patch(
    base_act: Tensor,
    src_act: Tensor | None,
    cells: list[tuple[int, tuple[int, int, int]]],
    n: int,
    B: int,
) -> Callable[[Tensor, Any], Tensor]:
    """Hook: every copy takes the base run's activation, then the listed heads the source's."""
    patch = None
    if cells:
        assert src_act is not None  # cells are listed only where the source run has z
        patch = _patch_hook(cells, src_act, B)

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = base_act.repeat(n, *([1] * (base_act.ndim - 1))).to(act.dtype)
        return patch(act, hook) if patch is not None else act

    return hook


# --------------------------------------------------------------------------------------
# Attribution patching


def attribution_patching(
    model: HookedModel,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    kind: str = "resid_pre",
    direction: Direction = "denoising",
    by_pos: bool = True,
) -> Tensor:
    """Linear estimate of ``metric(patched) - metric(base)`` for every cell of
    :func:`activation_patching` (same shape), from one forward and backward pass.

    ``estimate = sum (a_source - a_base) * grad_a metric(base)`` over the patched entries
    (and the batch, since each patch applies to every prompt in the batch).
    """
    base, source = _sweep_prompts(kind, clean_tokens, corrupt_tokens, direction)
    names = [hook_name(kind, lay) for lay in range(n_layers(model))]
    src = _cache(model, source, set(names))
    acts: dict[str, Tensor] = {}

    def store(name: str) -> Callable[[Tensor, Any], Tensor]:
        # Keyed by our name: a bridge reports aliases (hook_resid_pre) by canonical names.
        def hook(act: Tensor, hook: Any) -> Tensor:
            acts[name] = act
            return act

        return hook

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, store(n)) for n in names]):
        value = metric(model(base))
        grads = torch.autograd.grad(value, [acts[n] for n in names])  # no parameter .grad touched
    out = []
    for name, g in zip(names, grads, strict=True):
        prod = (src[name] - acts[name].detach()) * g  # [batch, pos, (head,) d]
        prod = prod.sum(-1).sum(0)  # [pos, (head)]
        out.append(prod if by_pos else prod.sum(0))
    return torch.stack(out)


def compare_attribution_to_activation_patching(
    model: HookedModel,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupt_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    kind: str = "resid_pre",
    direction: Direction = "denoising",
    by_pos: bool = True,
) -> dict[str, Any]:
    """Attribution estimates next to the real effects ``metric(patched) - metric(base)``.

    Returns ``attribution``, ``actual`` (same shapes), their Pearson ``correlation`` and
    ``max_abs_error``.
    """
    base, _ = _base_source(clean_tokens, corrupt_tokens, direction)
    with torch.no_grad():
        base_value = float(metric(model(base)))
    actual = activation_patching(
        model, clean_tokens, corrupt_tokens, metric, kind, direction, by_pos
    )
    actual = actual - base_value
    attribution = attribution_patching(
        model, clean_tokens, corrupt_tokens, metric, kind, direction, by_pos
    )
    a, b = attribution.flatten().double(), actual.flatten().double()
    corr = (
        float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        if a.std() > 0 and b.std() > 0
        else float("nan")
    )
    return {
        "attribution": attribution,
        "actual": actual,
        "correlation": corr,
        "max_abs_error": float((a - b).abs().max()),
    }


# --------------------------------------------------------------------------------------
# Steering


def steering_vector(
    model: HookedModel,
    positive_tokens: Int[Tensor, "batch pos"],
    negative_tokens: Int[Tensor, "batch2 pos2"],
    layer: int,
    kind: str = "resid_pre",
    pos: int | None = -1,
) -> Float[Tensor, " d_model"]:
    """``mean(a | positive) - mean(a | negative)`` at ``kind``/``layer``.

    The mean runs over prompts at position ``pos`` (``None``: over all positions too).
    """
    if kind not in RESID_KINDS:
        raise ValueError(f"steering needs a residual-shaped kind {RESID_KINDS}, got {kind!r}")
    name = hook_name(kind, layer)
    pos_act = _cache(model, positive_tokens, {name})[name]
    neg_act = _cache(model, negative_tokens, {name})[name]
    if pos is None:
        return pos_act.mean((0, 1)) - neg_act.mean((0, 1))
    return pos_act[:, pos].mean(0) - neg_act[:, pos].mean(0)


@contextmanager
def steering(
    model: HookedModel,
    vector: Float[Tensor, " d_model"],
    layer: int,
    kind: str = "resid_pre",
    coeff: float = 1.0,
    positions: slice | Sequence[int] | None = None,
) -> Iterator[nn.Module]:
    """Inside the block, ``kind``/``layer`` activations become ``a + coeff * vector``.

    ``positions`` restricts the addition (default: every position). The hook is removed
    when the block exits, also on an exception.
    """
    if kind not in RESID_KINDS:
        raise ValueError(f"steering needs a residual-shaped kind {RESID_KINDS}, got {kind!r}")
    if vector.ndim != 1 or vector.shape[0] != int(model.cfg.d_model):
        raise ValueError(f"vector must be [d_model={model.cfg.d_model}], got {tuple(vector.shape)}")
    where = slice(None) if positions is None else positions

    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, where] += coeff * vector.to(act.device, act.dtype)
        return act

    with model.hooks(fwd_hooks=[(hook_name(kind, layer), hook)]):
        yield model
