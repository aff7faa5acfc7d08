"""The stories corpus's ground truth, token by token, and an SAE's latents scored against it.

The stories corpus labels every token with the latent variables of its story
(``decoding_gpt.data.stories.LABEL_NAMES``). To score a latent as a detector we need
*binary* targets; :data:`TARGETS` turns each label into a few, one-vs-rest per class on
the tokens where the label is defined::

    label             tokens scored          classes (one-vs-rest)
    inside_quote      all                    outside, inside
    current_speaker   inside a quotation     speaker female, speaker male   (the speaker's gender)
    subject_gender    clause has one subject female, male
    story_sentiment   all                    sad, happy
    holder_of_object  all                    nobody, somebody  (holds the key object)
    item_count        all                    0, 1, 2, >=3  (items found so far)

``current_speaker`` and ``holder_of_object`` are character ids (about 60 values, a few
dozen tokens each); grouped by gender or presence they become variables a model could
track with one direction. Restricting ``current_speaker`` to quoted tokens matters: on all
tokens, "Mary is speaking" vs rest is scored ~0.95 by any latent that fires inside
quotations, a coarser feature.

A latent's score for a target (:func:`match_table`): its AUROC as a score of the class
(Mann-Whitney, ties one half: ``metrics.auroc_matrix``) and the F1 of "it fires"
(``metrics.f1_matrix``) on the scored tokens. A label's headline is the class whose best
latent has the highest AUROC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from decoding_gpt.activations import ActivationSet, collect_activations
from decoding_gpt.data.bpe import eos_id
from decoding_gpt.data.stories import LABEL_NAMES, Story, label_tokens
from decoding_gpt.data.world import CHARACTERS, GENDER_CODE
from decoding_gpt.probes import fit_linear_probe
from decoding_gpt.sae.metrics import auroc_matrix, f1_matrix

# character id -> gender code (0 female, 1 male), as a lookup table; -1 stays -1
_GENDER_OF = torch.tensor([GENDER_CODE[c.gender] for c in CHARACTERS] + [-1])


def _gender(ids: Tensor) -> Tensor:
    return _GENDER_OF[torch.where(ids >= 0, ids, len(CHARACTERS))]


@dataclass(frozen=True)
class Target:
    """How one label becomes binary targets.

    Attributes:
        label: a name of ``LABEL_NAMES``.
        defined: the tokens scored (a mask from the label's values).
        classes: class name -> mask of its tokens (among the defined ones).
    """

    label: str
    defined: Callable[[Tensor], Tensor]
    classes: dict[str, Callable[[Tensor], Tensor]]


def _everywhere(v: Tensor) -> Tensor:
    return torch.ones_like(v, dtype=torch.bool)


TARGETS: tuple[Target, ...] = (
    Target("inside_quote", _everywhere, {"outside": lambda v: v == 0, "inside": lambda v: v == 1}),
    Target(
        "current_speaker",
        lambda v: v >= 0,
        {"female": lambda v: _gender(v) == 0, "male": lambda v: _gender(v) == 1},
    ),
    Target(
        "subject_gender", lambda v: v >= 0, {"female": lambda v: v == 0, "male": lambda v: v == 1}
    ),
    Target("story_sentiment", _everywhere, {"sad": lambda v: v == 0, "happy": lambda v: v == 1}),
    Target(
        "holder_of_object", _everywhere, {"nobody": lambda v: v < 0, "somebody": lambda v: v >= 0}
    ),
    Target(
        "item_count",
        _everywhere,
        {
            "0": lambda v: v == 0,
            "1": lambda v: v == 1,
            "2": lambda v: v == 2,
            ">=3": lambda v: v >= 3,
        },
    ),
)
assert tuple(t.label for t in TARGETS) == LABEL_NAMES  # one row per label, in order


# ----------------------------------------------------------------------- collecting


@dataclass
class LabelledActivations:
    """Activations at one hook for every story token, with the token ids and labels."""

    acts: ActivationSet
    tokens: Int[Tensor, " n"]
    labels: dict[str, Int[Tensor, " n"]]


def story_batch(
    stories: list[Story], tokenizer: object, n_ctx: int
) -> tuple[Int[Tensor, "docs pos"], Bool[Tensor, "docs pos"], dict[str, Int[Tensor, "docs pos"]]]:
    """``(tokens, mask, labels)``: ``[BOS, t_1, ..., t_n]`` per story, truncated to ``n_ctx``,
    right-padded with BOS; ``mask`` marks BOS and the story tokens (padding is False); the
    labels sit on their tokens' positions (-1 at BOS and padding)."""
    encoded = [label_tokens(story, tokenizer) for story in stories]  # type: ignore[arg-type]
    if not encoded:
        raise ValueError("no stories")
    length = min(n_ctx, 1 + max(len(e) for e in encoded))
    tokens = torch.full((len(encoded), length), eos_id(tokenizer))  # type: ignore[arg-type]
    mask = torch.zeros(len(encoded), length, dtype=torch.bool)
    labels = {name: torch.full((len(encoded), length), -1) for name in LABEL_NAMES}
    for i, e in enumerate(encoded):
        n = min(len(e), length - 1)
        tokens[i, 1 : n + 1] = torch.from_numpy(np.asarray(e.ids[:n]))
        mask[i, : n + 1] = True
        for name in LABEL_NAMES:
            labels[name][i, 1 : n + 1] = torch.from_numpy(np.asarray(e.labels[name][:n]))
    return tokens, mask, labels


def packed_story_tokens(
    stories: list[Story], tokenizer: object, n_ctx: int
) -> Int[Tensor, "rows n_ctx"]:
    """The stories as the model was trained on them: ``BOS story BOS story ...`` cut into
    full rows of ``n_ctx`` tokens (the last partial row dropped), for CE losses with no
    padding."""
    bos = eos_id(tokenizer)  # type: ignore[arg-type]
    stream: list[int] = []
    for story in stories:
        stream += [bos, *label_tokens(story, tokenizer).ids.tolist()]  # type: ignore[arg-type]
    n_rows = len(stream) // n_ctx
    if n_rows == 0:
        raise ValueError(f"{len(stream)} tokens do not fill one row of {n_ctx}")
    return torch.tensor(stream[: n_rows * n_ctx]).view(n_rows, n_ctx)


def collect_labelled(
    model: object, stories: list[Story], tokenizer: object, hook_name: str, batch_size: int = 64
) -> LabelledActivations:
    """Every story token's activation at ``hook_name`` (BOS and padding dropped), its
    token id and its labels, stories in order (``acts.doc`` numbers them)."""
    tok_batches, mask_batches, label_rows = [], [], []
    n_ctx = model.cfg.n_ctx  # type: ignore[attr-defined]
    for start in range(0, len(stories), batch_size):
        tokens, mask, labels = story_batch(stories[start : start + batch_size], tokenizer, n_ctx)
        tok_batches.append(tokens)
        mask_batches.append(mask)
        label_rows.append((tokens, mask, labels))
    acts = collect_activations(model, tok_batches, hook_name, mask_batches)
    # the same rows, in the same order: documents in order, positions ascending, no BOS
    flat_tok: list[Tensor] = []
    flat_lab: dict[str, list[Tensor]] = {name: [] for name in LABEL_NAMES}
    for tokens, mask, labels in label_rows:
        keep = mask.clone()
        keep[:, 0] = False
        flat_tok.append(tokens[keep])
        for name in LABEL_NAMES:
            flat_lab[name].append(labels[name][keep])
    out = LabelledActivations(
        acts, torch.cat(flat_tok), {n: torch.cat(v) for n, v in flat_lab.items()}
    )
    if len(out.tokens) != len(acts):
        raise RuntimeError("labels and activations are not aligned")  # a bug, not bad input
    return out


# ----------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class LabelMatch:
    """The best latent for one class of one label."""

    label: str
    klass: str
    latent: int
    auroc: float
    f1: float
    positives: int  # tokens of the class
    scored: int  # tokens the label is defined on


def binary_targets(
    labels: dict[str, Int[Tensor, " n"]],
) -> list[tuple[str, str, Bool[Tensor, " n"], Bool[Tensor, " n"]]]:
    """``(label, class, defined, positive)`` for every class of :data:`TARGETS` with both
    positive and negative tokens among the defined ones."""
    out = []
    for target in TARGETS:
        values = labels[target.label]
        defined = target.defined(values)
        for klass, rule in target.classes.items():
            positive = rule(values) & defined
            if 0 < int(positive.sum()) < int(defined.sum()):
                out.append((target.label, klass, defined, positive))
    return out


def auroc_table(
    feature_acts: Float[Tensor, "n d_sae"], labels: dict[str, Int[Tensor, " n"]]
) -> dict[tuple[str, str], Float[Tensor, " d_sae"]]:
    """Every latent's AUROC for every ``(label, class)`` of :func:`binary_targets`, on the
    tokens where the label is defined. The classes of a label share those tokens, so each
    label ranks the activations once (``auroc_matrix`` takes the classes as columns)."""
    if any(len(v) != len(feature_acts) for v in labels.values()):
        raise ValueError("every label needs one value per row of feature_acts")
    targets = binary_targets(labels)
    table: dict[tuple[str, str], Tensor] = {}
    for label in dict.fromkeys(t[0] for t in targets):  # labels in order, once each
        group = [t for t in targets if t[0] == label]
        defined = group[0][2]
        y = torch.stack([positive[defined] for _, _, _, positive in group], dim=1)
        auroc = auroc_matrix(feature_acts[defined], y)  # [d_sae, n_classes]
        for c, (_, klass, _, _) in enumerate(group):
            table[label, klass] = auroc[:, c]
    return table


def match_table(
    feature_acts: Float[Tensor, "n d_sae"], labels: dict[str, Int[Tensor, " n"]]
) -> list[LabelMatch]:
    """For every class of every label (:func:`binary_targets`), the latent with the highest
    AUROC on the tokens where the label is defined, with its AUROC and F1."""
    aurocs = auroc_table(feature_acts, labels)
    rows = []
    for label, klass, defined, positive in binary_targets(labels):
        auroc = aurocs[label, klass]
        best = int(auroc.argmax())
        y = positive[defined][:, None]
        f1 = f1_matrix(feature_acts[defined][:, best : best + 1], y)[0, 0]
        rows.append(
            LabelMatch(
                label, klass, best, float(auroc[best]), float(f1), int(y.sum()), int(defined.sum())
            )
        )
    return rows


def best_per_label(rows: list[LabelMatch]) -> dict[str, LabelMatch]:
    """Per label, the class whose best latent has the highest AUROC."""
    best: dict[str, LabelMatch] = {}
    for row in rows:
        if row.label not in best or row.auroc > best[row.label].auroc:
            best[row.label] = row
    return best


def probe_auroc_table(
    x_train: Float[Tensor, "n d"],
    train_labels: dict[str, Int[Tensor, " n"]],
    x_test: Float[Tensor, "m d"],
    test_labels: dict[str, Int[Tensor, " m"]],
    lam: float = 1.0,
) -> dict[tuple[str, str], float]:
    """For every ``(label, class)`` of :func:`binary_targets`, the test AUROC of a linear
    probe onto the class: ridge regression ``min_w ||X w + b - y||^2 + lam ||w||^2`` on the
    training tokens where the label is defined (``y`` = 1 on the class, 0 elsewhere),
    scored on the test tokens where it is defined.

    A latent is a direction too (its encoder column), made sparse, so this is roughly the
    best a single latent at the same hook can reach: the ceiling of :func:`match_table`.
    """
    test_targets = {(a, k): (d, p) for a, k, d, p in binary_targets(test_labels)}
    table = {}
    for label, klass, defined, positive in binary_targets(train_labels):
        if (label, klass) not in test_targets:
            continue  # the class does not occur among the test tokens
        probe = fit_linear_probe(x_train[defined], positive[defined].float(), lam=lam)
        d_te, p_te = test_targets[label, klass]
        score = probe.predict(x_test[d_te])
        table[label, klass] = float(auroc_matrix(score, p_te[d_te][:, None])[0, 0])
    return table
