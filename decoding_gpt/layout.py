"""The order of the package, declared once: every import points down this list.

A unit is a top-level module or subpackage of ``decoding_gpt``. A unit may import from
itself and from the units before it, never from one after it, so the package reads top
to bottom: the model, how it is trained and shipped, how we look inside it, the course
material built on that, and last the maintainer's command lines, which nothing imports.
``tests/test_layout.py`` reads every import in the package (with ``ast``) and fails on one
that points back up this list, on an import cycle, and on a unit missing from it or from
the map in ``CONTRIBUTING.md``.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # what everything else stands on: where tensors live, what hook points are called
    ("base", ("layout", "device", "hooks")),
    # the model, written to be read, and the simpler models before it
    ("model", ("tokenizer", "attention", "generation", "transformer", "modern", "ngram")),
    # what models read, how they are trained, saved, converted and shipped
    ("training", ("data", "checkpoint", "training", "convert", "pretrained")),
    # how we look inside: each module one method, on any model with TL hook names
    (
        "interpretability",
        (
            "activations",
            "lens",
            "heads",
            "incontext",
            "patching",
            "editing",
            "probes",
            "superposition",
            "sae",
            "evals",
            "grokking",
            "scaling",
        ),
    ),  # fmt: skip
    # how we change what a model prefers: rewards, RLHF's objective, DPO, best-of-n. Its own
    # layer, not interpretability's: it trains models against preferences, and the lectures
    # on safety (17-18) may combine it with any method above (probes on a tuned model)
    ("alignment", ("alignment",)),
    # what students read and run: lectures 02-04's code, figures, checks, homework tooling
    ("course", ("foundations", "viz", "checks", "homework")),
    # maintainer command lines: model and data builds, training runs, sweeps, grading
    ("tools", ("tools",)),
)

UNITS: tuple[str, ...] = tuple(unit for _, units in LAYERS for unit in units)


def rank(unit: str) -> int:
    """Position of ``unit`` in the declared order (imports may only go to lower ranks)."""
    return UNITS.index(unit)
