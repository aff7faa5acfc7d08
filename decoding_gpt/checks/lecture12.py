"""Checks for the exercises of lecture 12 (causal interventions and circuits).

Each ``check_*`` runs the student's code on a tiny seeded GPT (random weights perturbed so
that every head matters) or on seeded numbers, compares the result with the package's
reference in :mod:`decoding_gpt.patching`, and, when they differ, first names the classic
mistake whose output the answer reproduces.

1. :func:`check_normalised_effect` -- ``(patched - corrupt) / (clean - corrupt)``.
2. :func:`check_resample_ablation` -- one head's ``z`` replaced by a random reference run's.
3. :func:`check_attribution_patching` -- the gradient estimate of denoising ``resid_pre``.
4. :func:`check_faithfulness` -- a circuit's share of the logit difference, the rest
   mean-ablated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from decoding_gpt.checks import CheckError, Mistake, exercise, judge, passed
from decoding_gpt.hooks import hook_name
from decoding_gpt.patching import (
    Metric,
    attribution_patching,
    logit_diff_metric,
    normalized_metric,
    run_with_ablation,
)
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "check_attribution_patching",
    "check_faithfulness",
    "check_normalised_effect",
    "check_resample_ablation",
]

D_VOCAB = 29


def _model() -> GPT:
    """A tiny 2-layer GPT (4 heads a layer) with weights large enough to matter."""
    torch.manual_seed(0)
    cfg = GPTConfig(d_vocab=D_VOCAB, n_ctx=16, d_model=16, n_layers=2, n_heads=4, d_mlp=32)
    model = GPT(cfg).eval()
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _tokens(seed: int, batch: int = 4, pos: int = 8) -> Tensor:
    return torch.randint(0, D_VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _pair() -> tuple[Tensor, Tensor, Metric]:
    """Clean tokens, corrupt tokens (two positions changed) and a logit-difference metric."""
    clean = _tokens(1)
    corrupt = clean.clone()
    corrupt[:, 3] = (clean[:, 3] + 5) % D_VOCAB
    corrupt[:, 5] = (clean[:, 5] + 11) % D_VOCAB
    answers = torch.stack([clean[:, 2], clean[:, 4]], dim=1)
    return clean, corrupt, logit_diff_metric(answers)


def _call(fn: Callable[..., Any], *args: Any, what: str) -> Any:
    try:
        return fn(*args)
    except CheckError:
        raise
    except NotImplementedError:
        raise
    except Exception as err:
        raise CheckError(f"your {what} raised {type(err).__name__}: {err}") from err


# ----------------------------------------------------------------------------- exercise 1
NORMALISED_MISTAKES = (
    Mistake(
        "flipped",
        lambda p, c, k: (p - c) / (k - c),
        "your value is 1 minus the right one: you measured the distance from the CLEAN "
        "value. Subtract the corrupt metric: (patched - corrupt) / (clean - corrupt), so that "
        "0 means corrupt behaviour and 1 clean behaviour.",
    ),
    Mistake(
        "ratio_to_clean",
        lambda p, c, k: p / c,
        "you divided by the clean metric only (patched / clean): that is 0 at a metric of 0, "
        "not at the corrupt run's metric. Subtract the corrupt baseline from both.",
    ),
    Mistake(
        "no_baseline_in_denominator",
        lambda p, c, k: (p - k) / c,
        "the denominator must be the whole gap clean - corrupt, not the clean metric alone.",
    ),
    Mistake(
        "swapped_denominator",
        lambda p, c, k: (p - k) / (k - c),
        "the sign is flipped: divide by (clean - corrupt), not (corrupt - clean).",
    ),
)


@exercise
def check_normalised_effect(fn: Callable[[Tensor, float, float], Any]) -> None:
    """``fn(patched, clean, corrupt)``: ``(patched - corrupt) / (clean - corrupt)``, elementwise
    on a tensor ``patched``, for either sign of the gap."""
    gen = torch.Generator().manual_seed(3)
    for clean, corrupt in [(4.0, -1.5), (-0.5, 2.0), (9.5, 0.2)]:
        patched = corrupt + (clean - corrupt) * torch.rand(3, 5, generator=gen) * 1.4 - 0.2
        got = _call(fn, patched.clone(), clean, corrupt, what="normalised_effect")
        want = normalized_metric(patched, clean, corrupt)
        judge(
            got, want, NORMALISED_MISTAKES, (patched, clean, corrupt),
            what=f"normalised effect (clean {clean}, corrupt {corrupt})", atol=1e-6,
            hint="Return (patched - corrupt) / (clean - corrupt), the same shape as `patched`.",
        )  # fmt: skip
    passed("check_normalised_effect")


# ----------------------------------------------------------------------------- exercise 2
def _resample_index(n_ref: int, batch: int, seed: int) -> Tensor:
    return torch.randint(0, n_ref, (batch,), generator=torch.Generator().manual_seed(seed))


def _z_hook_run(model: GPT, tokens: Tensor, layer: int, edit: Callable[[Tensor], Tensor]) -> Tensor:
    def hook(z: Tensor, hook: Any) -> Tensor:
        return edit(z.clone())

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name("z", layer), hook)]):
        return model(tokens)


def _reference_z(model: GPT, reference: Tensor, layer: int) -> Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(reference)
    return cache[hook_name("z", layer)]


def _resample_mistakes(
    model: GPT, tokens: Tensor, reference: Tensor, layer: int, head: int, seed: int
) -> list[Mistake]:
    ref_z = _reference_z(model, reference, layer)
    idx = _resample_index(len(reference), len(tokens), seed)

    def put(value: Tensor, heads: Any = head) -> Callable[[Tensor], Tensor]:
        def edit(z: Tensor) -> Tensor:
            z[:, :, heads] = value[:, :, heads].to(z.dtype)
            return z

        return edit

    def zero(z: Tensor) -> Tensor:
        z[:, :, head] = 0.0
        return z

    return [
        Mistake(
            "zero",
            lambda: _z_hook_run(model, tokens, layer, zero),
            "you ZERO-ablated the head: resample ablation writes the head's output on a "
            "randomly drawn reference prompt (reference_z[idx][:, :, head]), not zeros.",
        ),
        Mistake(
            "mean",
            lambda: _z_hook_run(
                model, tokens, layer, put(ref_z.mean(0, keepdim=True).expand_as(ref_z[idx]))
            ),
            "you MEAN-ablated the head (the reference batch's average); resample ablation "
            "takes one whole reference prompt per row: reference_z[idx].",
        ),
        Mistake(
            "whole_layer",
            lambda: _z_hook_run(model, tokens, layer, put(ref_z[idx], slice(None))),
            "you replaced EVERY head of the layer: only head `head` (z[:, :, head]) is ablated.",
        ),
        Mistake(
            "same_rows",
            lambda: _z_hook_run(model, tokens, layer, put(ref_z[: len(tokens)])),
            "you paired row i with reference row i; draw the rows with the seeded generator: "
            "idx = torch.randint(0, len(reference_tokens), (len(tokens),), "
            "generator=torch.Generator().manual_seed(seed)).",
        ),
        Mistake(
            "one_row",
            lambda: _z_hook_run(
                model, tokens, layer, put(ref_z[idx[:1]].expand(len(tokens), *ref_z.shape[1:]))
            ),
            "every row got the same reference prompt (idx[0]); row b takes reference_z[idx[b]].",
        ),
    ]


@exercise
def check_resample_ablation(fn: Callable[[GPT, Tensor, Tensor, int, int, int], Tensor]) -> None:
    """``fn(model, tokens, reference_tokens, layer, head, seed)``: logits with head
    ``(layer, head)``'s ``z`` replaced, at every position, by its value on reference rows
    ``idx = randint(0, n_ref, (batch,), generator seeded with seed)``."""
    model = _model()
    tokens, reference = _tokens(4, batch=5), _tokens(5, batch=7)
    for layer, head, seed in [(0, 1, 0), (1, 3, 1), (1, 0, 2)]:
        got = _call(fn, model, tokens, reference, layer, head, seed, what="resample_ablation")
        want = run_with_ablation(model, tokens, [("z", layer, head)], "resample", reference, seed)
        judge(
            got, want, _resample_mistakes(model, tokens, reference, layer, head, seed), (),
            what=f"logits with L{layer}H{head} resample-ablated (seed {seed})", atol=1e-5,
            hint="Cache hook_z on the reference prompts, draw idx, and in a hook set "
            "z[:, :, head] = reference_z[idx][:, :, head].",
        )  # fmt: skip
    passed("check_resample_ablation")


# ----------------------------------------------------------------------------- exercise 3
def _resid_acts_and_grads(
    model: GPT, base: Tensor, metric: Metric
) -> tuple[list[Tensor], list[Tensor]]:
    """``resid_pre`` of every layer on ``base`` and d metric / d activation there."""
    names = [hook_name("resid_pre", layer) for layer in range(model.cfg.n_layers)]
    acts: dict[str, Tensor] = {}

    def store(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, store) for n in names]):
        value = metric(model(base))
        grads = torch.autograd.grad(value, [acts[n] for n in names])
    return [acts[n].detach() for n in names], list(grads)


def _attribution_mistakes(
    model: GPT, clean: Tensor, corrupt: Tensor, metric: Metric
) -> list[Mistake]:
    a_corrupt, g_corrupt = _resid_acts_and_grads(model, corrupt, metric)
    a_clean, g_clean = _resid_acts_and_grads(model, clean, metric)

    def estimate(
        diffs: Sequence[Tensor], grads: Sequence[Tensor], batch_mean: bool = False
    ) -> Tensor:
        rows = [(d * g).sum(-1) for d, g in zip(diffs, grads, strict=True)]
        return torch.stack([r.mean(0) if batch_mean else r.sum(0) for r in rows])

    diff = [c - k for c, k in zip(a_clean, a_corrupt, strict=True)]
    return [
        Mistake(
            "sign",
            lambda: estimate([-d for d in diff], g_corrupt),
            "the sign is flipped: denoising moves the activation FROM its corrupt value TO "
            "its clean value, so the change is a_clean - a_corrupt.",
        ),
        Mistake(
            "gradient_at_clean",
            lambda: estimate(diff, g_clean),
            "you took the gradient on the CLEAN run. The Taylor expansion is around the run "
            "being patched, the corrupt one: d metric / d a at a_corrupt.",
        ),
        Mistake(
            "activation_not_difference",
            lambda: estimate(a_clean, g_corrupt),
            "you multiplied the gradient by the clean activation itself; the first-order "
            "change needs the DIFFERENCE a_clean - a_corrupt.",
        ),
        Mistake(
            "batch_mean",
            lambda: estimate(diff, g_corrupt, batch_mean=True),
            "you averaged over the batch: the metric is already a batch mean, so its gradient "
            "carries the 1/batch; SUM the products over the batch (and d_model).",
        ),
    ]


@exercise
def check_attribution_patching(fn: Callable[[GPT, Tensor, Tensor, Metric], Tensor]) -> None:
    """``fn(model, clean, corrupt, metric) -> [layer, pos]``: the first-order estimate of
    denoising each layer's ``resid_pre`` at each position,
    ``sum_{batch, d} (a_clean - a_corrupt) * d metric / d a |_corrupt``."""
    model = _model()
    clean, corrupt, metric = _pair()
    got = _call(fn, model, clean, corrupt, metric, what="attribution_patching")
    want = attribution_patching(model, clean, corrupt, metric, "resid_pre", "denoising")
    judge(
        got, want, _attribution_mistakes(model, clean, corrupt, metric), (),
        what="attribution estimates [layer, pos]", atol=1e-4,
        hint="Store resid_pre of every layer in a hook on the corrupt run, take "
        "torch.autograd.grad of the metric, and sum (a_clean - a_corrupt) * grad over "
        "the batch and d_model.",
    )  # fmt: skip
    passed("check_attribution_patching")


# ----------------------------------------------------------------------------- exercise 4
Circuit = Sequence[tuple[int, int]]


def _ablated_metric(
    model: GPT,
    tokens: Tensor,
    reference: Tensor,
    metric: Metric,
    heads: Circuit,
    method: str = "mean",
) -> float:
    targets = [("z", layer, head) for layer, head in heads]
    logits = run_with_ablation(model, tokens, targets, method, reference)  # type: ignore[arg-type]
    return float(metric(logits))


def _faithfulness_parts(
    model: GPT, tokens: Tensor, reference: Tensor, metric: Metric, circuit: Circuit, method: str
) -> tuple[float, float, float]:
    every = [(lay, h) for lay in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    outside = [h for h in every if h not in set(circuit)]
    with torch.no_grad():
        full = float(metric(model(tokens)))
    kept = _ablated_metric(model, tokens, reference, metric, outside, method)
    empty = _ablated_metric(model, tokens, reference, metric, every, method)
    return full, kept, empty


def _faithfulness_mistakes(
    model: GPT, tokens: Tensor, reference: Tensor, metric: Metric, circuit: Circuit
) -> list[Mistake]:
    full, kept, empty = _faithfulness_parts(model, tokens, reference, metric, circuit, "mean")
    inverted = _ablated_metric(model, tokens, reference, metric, list(circuit))
    z_full, z_kept, z_empty = _faithfulness_parts(model, tokens, reference, metric, circuit, "zero")
    return [
        Mistake(
            "ablated_the_circuit",
            lambda: (inverted - empty) / (full - empty),
            "you ablated the CIRCUIT's heads; faithfulness keeps the circuit and mean-ablates "
            "every head OUTSIDE it.",
        ),
        Mistake(
            "plain_ratio",
            lambda: kept / full,
            "you returned metric(circuit) / metric(model): subtract the metric of the empty "
            "circuit (every head mean-ablated) from both, so that 0 means 'no better than "
            "nothing'.",
        ),
        Mistake(
            "zero_ablation",
            lambda: (z_kept - z_empty) / (z_full - z_empty),
            "you zero-ablated the heads outside the circuit; use MEAN ablation over the "
            "reference prompts (zeros are off-distribution).",
        ),
    ]


@exercise
def check_faithfulness(fn: Callable[[GPT, Tensor, Tensor, Metric, Circuit], Any]) -> None:
    """``fn(model, tokens, reference_tokens, metric, circuit) -> float``:
    ``(m(circuit) - m(empty)) / (m(model) - m(empty))``, every head outside ``circuit``
    (resp. every head) mean-ablated over ``reference_tokens``."""
    model = _model()
    clean, corrupt, metric = _pair()
    reference = torch.cat([corrupt, _tokens(9)])
    for circuit in ([(0, 1), (1, 2), (1, 3)], [(0, 0), (0, 3), (1, 1)]):
        got = _call(fn, model, clean, reference, metric, list(circuit), what="faithfulness")
        full, kept, empty = _faithfulness_parts(model, clean, reference, metric, circuit, "mean")
        want = (kept - empty) / (full - empty)
        judge(
            got, want, _faithfulness_mistakes(model, clean, reference, metric, circuit),
            (), what=f"faithfulness of {list(circuit)}", atol=1e-4,
            hint="Mean-ablate the heads outside the circuit (run_with_ablation(..., 'mean', "
            "reference_tokens)), then every head, and normalise between the two.",
        )  # fmt: skip
    passed("check_faithfulness")
