"""Exercise checks of lecture 12: accept correct answers, reject known-wrong ones, refuse stubs.

The correct answers are written out here independently of the package's references
(hooks written by hand, gradients through ``run_with_hooks``); each wrong one is a mistake
students make, and the test pins the part of the message that names it.
"""

from __future__ import annotations

import pytest
import torch

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture12 as l12


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `it` here.")


@pytest.mark.parametrize(
    "check",
    [
        l12.check_normalised_effect,
        l12.check_resample_ablation,
        l12.check_attribution_patching,
        l12.check_faithfulness,
    ],
)
def test_every_check_refuses_a_stub(check):
    with pytest.raises(NotAttempted, match="not attempted yet"):
        check(_stub)


# ------------------------------------------------------------ exercise 1: normalised effect
def _normalised(patched, clean, corrupt):
    return (patched - corrupt) / (clean - corrupt)


def test_normalised_accepts_reference():
    l12.check_normalised_effect(_normalised)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda p, c, k: (p - c) / (k - c), "1 minus the right one"),
        (lambda p, c, k: p / c, "divided by the clean metric only"),
        (lambda p, c, k: (p - k) / (k - c), "sign is flipped"),
        (lambda p, c, k: (p - k) / c, "whole gap"),
        (lambda p, c, k: None, "return"),
    ],
)
def test_normalised_rejects_mistakes(wrong, message):
    with pytest.raises(CheckError, match=message):
        l12.check_normalised_effect(wrong)


# ----------------------------------------------------------- exercise 2: resample ablation
def _resample(model, tokens, reference_tokens, layer, head, seed, *, mistake=None):
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(reference_tokens)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(reference_tokens), (len(tokens),), generator=gen)
    ref = cache[name][idx]
    if mistake == "same_rows":
        ref = cache[name][: len(tokens)]

    def hook(z, hook):
        if mistake == "zero":
            z[:, :, head] = 0.0
        elif mistake == "layer":
            z[:] = ref
        elif mistake == "mean":
            z[:, :, head] = cache[name][:, :, head].mean(0)
        else:
            z[:, :, head] = ref[:, :, head]
        return z

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def test_resample_accepts_reference():
    l12.check_resample_ablation(_resample)


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("zero", "ZERO-ablated"),
        ("mean", "MEAN-ablated"),
        ("layer", "EVERY head of the layer"),
        ("same_rows", "paired row i with reference row i"),
    ],
)
def test_resample_rejects_mistakes(mistake, message):
    def wrong(*args):
        return _resample(*args, mistake=mistake)

    with pytest.raises(CheckError, match=message):
        l12.check_resample_ablation(wrong)


# -------------------------------------------------------- exercise 3: attribution patching
def _attribution(model, clean, corrupt, metric, *, mistake=None):
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
    base = clean if mistake == "grad_at_clean" else corrupt
    saved = {}

    def keep(act, hook):
        saved[hook.name] = act

    with torch.enable_grad():
        logits = model.run_with_hooks(base, fwd_hooks=[(n, keep) for n in names])
        grads = torch.autograd.grad(metric(logits), [saved[n] for n in names])
    rows = []
    for name, grad in zip(names, grads, strict=True):
        delta = clean_cache[name] - corrupt_cache[name]
        if mistake == "sign":
            delta = -delta
        if mistake == "activation":
            delta = clean_cache[name]
        per = (delta * grad).sum(-1)
        rows.append(per.mean(0) if mistake == "mean" else per.sum(0))
    return torch.stack(rows)


def test_attribution_accepts_reference():
    l12.check_attribution_patching(_attribution)


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("sign", "sign is flipped"),
        ("grad_at_clean", "gradient on the CLEAN run"),
        ("activation", "clean activation itself"),
        ("mean", "averaged over the batch"),
    ],
)
def test_attribution_rejects_mistakes(mistake, message):
    def wrong(*args):
        return _attribution(*args, mistake=mistake)

    with pytest.raises(CheckError, match=message):
        l12.check_attribution_patching(wrong)


# ---------------------------------------------------------------- exercise 4: faithfulness
def _faithfulness(model, tokens, reference_tokens, metric, circuit, *, mistake=None):
    L, H = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        _, ref_cache = model.run_with_cache(reference_tokens)

    def run(ablate):
        def hook(z, hook):
            layer = int(hook.name.split(".")[1])
            for h in range(H):
                if (layer, h) in ablate:
                    mean = ref_cache[hook.name][:, :, h].mean(0)
                    z[:, :, h] = 0.0 if mistake == "zero" else mean
            return z

        names = [f"blocks.{layer}.attn.hook_z" for layer in range(L)]
        with torch.no_grad():
            return float(metric(model.run_with_hooks(tokens, fwd_hooks=[(n, hook) for n in names])))

    every = {(layer, h) for layer in range(L) for h in range(H)}
    outside = set(circuit) if mistake == "inverted" else every - set(circuit)
    full, kept, empty = run(set()), run(outside), run(every)
    if mistake == "ratio":
        return kept / full
    return (kept - empty) / (full - empty)


def test_faithfulness_accepts_reference():
    l12.check_faithfulness(_faithfulness)


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("inverted", "ablated the CIRCUIT"),
        ("ratio", "metric\\(circuit\\) / metric\\(model\\)"),
        ("zero", "zero-ablated"),
    ],
)
def test_faithfulness_rejects_mistakes(mistake, message):
    def wrong(*args):
        return _faithfulness(*args, mistake=mistake)

    with pytest.raises(CheckError, match=message):
        l12.check_faithfulness(wrong)
