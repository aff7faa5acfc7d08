"""Checks for homework 5 (probes and sparse autoencoders).

Independent references: ``run_with_cache`` of the model itself for the collected
activations, scikit-learn's ``LogisticRegression`` for the probe and ``roc_auc_score`` for
AUROC, closed forms (written out here in float64) for the SAE losses, and a sort-based
TopK. Crafted data sets make specific mistakes visible: a data set whose test documents
follow the *opposite* rule from the training documents exposes a probe fitted on the test
split; labels with a 9:1 imbalance separate plain from balanced accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed
from decoding_gpt.data.bpe import eos_id
from decoding_gpt.data.stories import LABEL_NAMES, generate_stories, label_tokens

__all__ = [
    "LABEL_KEYS",
    "check_auroc_per_latent",
    "check_collect_residuals",
    "check_control_labels",
    "check_evaluate_probe",
    "check_fit_probe",
    "check_relu_l1_loss",
    "check_split_documents",
    "check_topk_relu",
    "check_topk_sae_forward",
    "reference_collect_residuals",
]

#: Keys of the dictionary ``collect_residuals`` returns, besides the label names.
LABEL_KEYS = ("acts", "doc", "pos", "token")


def _tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    return value.detach()


# ------------------------------------------------------------------ 1. collecting activations
def _padded_batch(
    stories: list[Any], tokenizer: Any, n_ctx: int, bos: bool = True
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Token ids ``[n_docs, length]`` with BOS at 0, right padding, labels aligned to them."""
    encoded = [label_tokens(story, tokenizer) for story in stories]
    offset = 1 if bos else 0
    length = min(n_ctx, offset + max(len(e) for e in encoded))
    tokens = torch.full((len(encoded), length), eos_id(tokenizer))
    mask = torch.zeros(len(encoded), length, dtype=torch.bool)
    labels = {name: torch.full((len(encoded), length), -1) for name in LABEL_NAMES}
    for i, e in enumerate(encoded):
        n = min(len(e), length - offset)
        tokens[i, offset : offset + n] = torch.from_numpy(e.ids[:n])
        mask[i, offset : offset + n] = True
        for name in LABEL_NAMES:
            labels[name][i, offset : offset + n] = torch.from_numpy(e.labels[name][:n])
    return tokens, mask, labels


@torch.no_grad()
def reference_collect_residuals(
    model: Any, stories: list[Any], tokenizer: Any, hook_name: str
) -> dict[str, Tensor]:
    """The reference answer of part 1, from ``run_with_cache`` (not ``collect_activations``)."""
    tokens, mask, labels = _padded_batch(stories, tokenizer, model.cfg.n_ctx)
    _, cache = model.run_with_cache(tokens, names_filter=[hook_name])
    doc, pos = mask.nonzero(as_tuple=True)  # BOS (position 0) and padding are not in mask
    out = {"acts": cache[hook_name][doc, pos].float(), "doc": doc, "pos": pos}
    out["token"] = tokens[doc, pos]
    out.update({name: lab[doc, pos] for name, lab in labels.items()})
    return out


def _acts_of(model: Any, tokens: Tensor, hook: str, doc: Tensor, pos: Tensor) -> Tensor:
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return cache[hook][doc, pos].float()


@exercise
@torch.no_grad()
def check_collect_residuals(
    fn: Callable[..., dict[str, Tensor]],
    model: Any,
    tokenizer: Any,
    hook_name: str = "blocks.1.hook_resid_post",
) -> None:
    """``fn(model, stories, tokenizer, hook_name) -> dict`` of per-token tensors.

    Keys: ``acts [n, d]``, ``doc [n]``, ``pos [n]`` (position in the padded batch, BOS at
    0), ``token [n]`` and one ``[n]`` tensor per label name of the stories corpus. Rows:
    every real token of every story (truncated to ``n_ctx - 1`` tokens after a BOS),
    documents in order, positions ascending; BOS and padding excluded.
    """
    stories = generate_stories(4, seed=0, split="val")  # story 3 is longer than n_ctx
    want = reference_collect_residuals(model, stories, tokenizer, hook_name)
    got = _collected_tensors(fn(model, stories, tokenizer, hook_name))
    _check_row_count(got, want, stories, tokenizer, model.cfg.n_ctx)
    _check_doc_pos_token(got, want)
    _check_acts(got, want, stories, tokenizer, model, hook_name)
    _check_labels(got, want)
    passed("check_collect_residuals")


def _collected_tensors(result: object) -> dict[str, Tensor]:
    """The result's tensors, one per key, all with as many rows as ``acts``.

    Raises if the result is not a dict, lacks a key, holds a non-tensor, or has columns
    of different lengths.
    """
    if not isinstance(result, dict):
        raise CheckError(f"return a dict of tensors, got {type(result).__name__}.")
    missing = [k for k in (*LABEL_KEYS, *LABEL_NAMES) if k not in result]
    if missing:
        raise CheckError(f"the dict lacks the keys {missing}.")
    got = {k: _tensor(result[k], f"result[{k!r}]") for k in (*LABEL_KEYS, *LABEL_NAMES)}
    n_got = len(got["acts"])
    for key in got:
        if len(got[key]) != n_got:
            raise CheckError(f"result[{key!r}] has {len(got[key])} rows but acts has {n_got}.")
    return got


def _check_row_count(
    got: dict[str, Tensor], want: dict[str, Tensor], stories: list[Any], tokenizer: Any, n_ctx: int
) -> None:
    """One row per real token; if not, name the likely mistake (``_row_count_hint``)."""
    n_docs, n_want, n_got = len(stories), len(want["doc"]), len(got["acts"])
    if n_got != n_want:
        hint = _row_count_hint(got, want, stories, tokenizer, n_ctx)
        raise CheckError(f"{n_got} rows, expected {n_want} for these {n_docs} stories: {hint}")


def _row_count_hint(
    got: dict[str, Tensor], want: dict[str, Tensor], stories: list[Any], tokenizer: Any, n_ctx: int
) -> str:
    """Which mistake gives this many rows: BOS kept, BOS missing, padding kept, no truncation.

    Told apart by the rows at position 0 (BOS or story tokens there), by the count of a
    padded batch with or without the BOS column, and by the first token (which is the
    reference's second when each document lost its first token).
    """
    n_docs, n_want, n_got = len(stories), len(want["doc"]), len(got["acts"])
    padded = int(_padded_batch(stories, tokenizer, n_ctx)[0].numel())
    at_zero = got["token"][got["pos"] == 0]
    if len(at_zero) and bool((at_zero == eos_id(tokenizer)).all()):
        return "BOS included: drop position 0 of every document (it is not text)."
    if len(at_zero):
        return (
            "story tokens sit at position 0: the model ran without BOS at position 0 "
            "(prepend <|endoftext|>, then drop position 0)."
        )
    if n_got in (padded, padded - n_docs):
        return "padding included: keep only positions with mask 1."
    if n_want - n_docs <= n_got < n_want and int(got["token"][0]) == int(want["token"][1]):
        return (
            "one real token per document is missing: prepend BOS (<|endoftext|>) before "
            "the story's tokens, then drop position 0."
        )
    if n_got > n_want:
        return "too many rows: did you skip truncating each story to n_ctx - 1 tokens?"
    return "too few rows: keep every real token up to n_ctx - 1 per story."


def _check_doc_pos_token(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    """Each row's document, position in the padded batch and token id equal the reference."""
    compare_tensors(got["doc"], want["doc"], "doc", hint="Documents are numbered 0, 1, ...")
    compare_tensors(
        got["pos"],
        want["pos"],
        "pos",
        hint="Positions index the padded batch, BOS at 0: the first story token is at 1.",
    )
    compare_tensors(got["token"], want["token"], "token", hint="Token ids of the stories.")


def _check_acts(
    got: dict[str, Tensor],
    want: dict[str, Tensor],
    stories: list[Any],
    tokenizer: Any,
    model: Any,
    hook_name: str,
) -> None:
    """``acts`` has the reference's shape and values (``atol = rtol = 1e-4``).

    Wrong values are compared to two likely mistakes (``_acts_mistake``) before the
    generic message.
    """
    if got["acts"].shape != want["acts"].shape:
        raise CheckError(
            f"acts has shape {tuple(got['acts'].shape)}, expected {tuple(want['acts'].shape)}."
        )
    if torch.allclose(got["acts"].float(), want["acts"], atol=1e-4, rtol=1e-4):
        return
    if got["acts"].abs().max() == 0:
        raise CheckError("acts is all zeros: the hook must store the activation it sees.")
    mistake = _acts_mistake(got["acts"], want, stories, tokenizer, model, hook_name)
    if mistake is not None:
        raise CheckError(f"acts has wrong values: {mistake}.")
    compare_tensors(got["acts"], want["acts"], "acts", atol=1e-4, rtol=1e-4)


def _acts_mistake(
    acts: Float[Tensor, "n d_model"],
    want: dict[str, Tensor],
    stories: list[Any],
    tokenizer: Any,
    model: Any,
    hook_name: str,
) -> str | None:
    """The mistake whose activations equal ``acts``, if it is one of the two we know.

    Recomputed for the reference's rows: the model run without BOS (every token one
    place left), and the same layer's ``hook_resid_pre`` instead of ``hook_name``.
    """
    tokens, _, _ = _padded_batch(stories, tokenizer, model.cfg.n_ctx)
    no_bos, _, _ = _padded_batch(stories, tokenizer, model.cfg.n_ctx, bos=False)
    layer = hook_name.split(".")[1]
    variants = {
        "the model ran without BOS at position 0 (prepend <|endoftext|>)": _acts_of(
            model, no_bos, hook_name, want["doc"], want["pos"] - 1
        ),
        f"these are blocks.{layer}.hook_resid_pre, not {hook_name}": _acts_of(
            model, tokens, f"blocks.{layer}.hook_resid_pre", want["doc"], want["pos"]
        ),
    }
    for mistake, variant in variants.items():
        if acts.shape == variant.shape and torch.allclose(
            acts.float(), variant, atol=1e-4, rtol=1e-4
        ):
            return mistake
    return None


def _check_labels(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    """Every label column equals the reference; labels shifted by one row are named.

    A shift shows as ``label[i] == want[i + 1]`` (or ``want[i - 1]``) for every pair of
    neighbouring rows inside one document.
    """
    for name in LABEL_NAMES:
        label = got[name].long()
        if torch.equal(label, want[name]):
            continue
        same = want["doc"][1:] == want["doc"][:-1]  # rows i, i + 1 in one document
        if torch.equal(label[:-1][same], want[name][1:][same]) or torch.equal(
            label[1:][same], want[name][:-1][same]
        ):
            raise CheckError(
                f"labels {name!r} are off by one position (each token carries its neighbour's "
                "label): prepending BOS moves every token one place right; move the labels "
                "with them."
            )
        compare_tensors(label, want[name], f"result[{name!r}]")


# ------------------------------------------------------------------ 2. split by document
@exercise
def check_split_documents(fn: Callable[[Tensor, float, int], tuple[Tensor, Tensor]]) -> None:
    """``fn(doc, test_fraction, seed) -> (train_mask, test_mask)``, boolean ``[n]`` masks.

    Every token in exactly one split; every document entirely in one split; the test
    split holds ``round(test_fraction * n_docs)`` documents (+-1); random by ``seed``.
    Document ids are arbitrary integers (here 0, 3, 6, ... in scrambled token order).
    """
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 40, (30,), generator=gen)
    doc = torch.repeat_interleave(torch.arange(30) * 3, lengths)
    doc = doc[torch.randperm(len(doc), generator=gen)]
    results = {}
    for seed in (0, 1):
        out = fn(doc.clone(), 0.2, seed)
        if not isinstance(out, tuple) or len(out) != 2:
            raise CheckError("return a tuple (train_mask, test_mask).")
        train, test = _tensor(out[0], "train_mask"), _tensor(out[1], "test_mask")
        for m, name in ((train, "train_mask"), (test, "test_mask")):
            if m.dtype != torch.bool or m.shape != doc.shape:
                raise CheckError(
                    f"{name} must be a bool tensor of shape {tuple(doc.shape)} (one entry per "
                    f"token), got {m.dtype} {tuple(m.shape)}."
                )
        if bool((train & test).any()):
            raise CheckError(f"{int((train & test).sum())} tokens are in train AND test.")
        if not bool((train | test).all()):
            raise CheckError(f"{int((~(train | test)).sum())} tokens are in neither split.")
        shared = set(doc[train].tolist()) & set(doc[test].tolist())
        if shared:
            raise CheckError(
                f"documents {sorted(shared)[:5]} have tokens in train AND test: tokens of one "
                "document are correlated, so split by document, not by token."
            )
        n_test = len(set(doc[test].tolist()))
        if abs(n_test - 6) > 1:
            raise CheckError(
                f"{n_test} of 30 documents are in the test split, expected about 6 "
                "(test_fraction of the DOCUMENTS, not of the tokens)."
            )
        results[seed] = test
        again = _tensor(fn(doc.clone(), 0.2, seed)[1], "test_mask")
        if not torch.equal(again, test):
            raise CheckError("the same seed gave a different split: use a seeded generator.")
    if torch.equal(results[0], results[1]):
        raise CheckError("seeds 0 and 1 gave the same split: shuffle the documents by seed.")
    passed("check_split_documents")


# ------------------------------------------------------------------ 3. logistic probe
def _planted_probe_data(seed: int, n: int = 1600, d: int = 12) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(d, generator=gen), dim=0)
    scale = torch.linspace(0.5, 4.0, d)  # unequal feature scales, like a residual stream
    x = torch.randn(n, d, generator=gen) * scale + 3.0  # far from the origin: b matters
    score = (x - 3.0) @ u + 0.4 * torch.randn(n, generator=gen)
    y = (score > 0.8).long()  # about 30 % positives
    return x, y


def _sklearn_probe(x: Tensor, y: Tensor) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression  # lazy: sklearn is slow to import

    ref = LogisticRegression(C=10.0, max_iter=2000).fit(x.double().numpy(), y.numpy())
    return ref.coef_[0], float(ref.intercept_[0])


@exercise
def check_fit_probe(fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """``fn(x [n, d], y [n] in {0, 1}) -> (w [d], b [])``: a logistic-regression probe
    predicting ``y = 1`` when ``x . w + b > 0``.

    On planted data (held-out split) its accuracy must be within 0.03 of scikit-learn's
    ``LogisticRegression`` and its direction within cosine 0.9 of it.
    """
    x, y = _planted_probe_data(0)
    train, test = slice(0, 1200), slice(1200, None)
    out = fn(x[train].clone(), y[train].clone())
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckError("return a tuple (w, b).")
    w, b = _tensor(out[0], "w").double(), _tensor(out[1], "b").double()
    d = x.shape[1]
    if w.shape != (d,):
        hint = " (squeeze it to a vector)" if w.numel() == d else ""
        raise CheckError(f"w has shape {tuple(w.shape)}, expected ({d},){hint}.")
    if b.numel() != 1:
        raise CheckError(f"b must be a scalar, got shape {tuple(b.shape)}.")
    b = b.reshape(())
    if not (torch.isfinite(w).all() and torch.isfinite(b)):
        raise CheckError("w or b contains NaN/inf: lower the learning rate.")
    ref_w, ref_b = _sklearn_probe(x[train], y[train])
    xt, yt = x[test].double(), y[test]
    ref_acc = ((xt.numpy() @ ref_w + ref_b > 0) == yt.numpy()).mean()
    acc = ((xt @ w + b > 0).long() == yt).double().mean().item()
    cos = F.cosine_similarity(w, torch.from_numpy(ref_w), dim=0).item()
    if cos < -0.9:
        raise CheckError(
            f"w points the wrong way (cosine {cos:.2f} with the reference): the probe predicts "
            "class 0 where it should predict 1; check the sign of your loss / labels."
        )
    if acc >= ref_acc - 0.03 and cos > 0.9:
        passed("check_fit_probe")
        return
    mu, sd = x[train].double().mean(0), x[train].double().std(0)
    std_acc = ((((xt - mu) / sd) @ w + b > 0).long() == yt).double().mean().item()
    best_b = max(
        (((xt @ w + t > 0).long() == yt).double().mean().item() for t in -(xt @ w)),
        default=0.0,
    )
    if std_acc >= ref_acc - 0.03:
        hint = (
            "w and b work on STANDARDISED inputs: map them back to raw x "
            "(w_raw = w / sd, b_raw = b - (mu / sd) . w)."
        )
    elif cos > 0.9 and best_b >= ref_acc - 0.03:
        hint = (
            f"the direction is right (cosine {cos:.2f}) but the intercept b = {b.item():.3f} "
            "is not: fit b too (the classes are not separated at the origin)."
        )
    else:
        hint = (
            f"cosine with the reference direction {cos:.2f}: the probe has not converged "
            "(more steps, a larger learning rate, or standardise x first)."
        )
    raise CheckError(
        f"held-out accuracy {acc:.3f}, reference (sklearn LogisticRegression) {ref_acc:.3f}: {hint}"
    )


# ------------------------------------------------------------------ 4. control task
@exercise
def check_control_labels(fn: Callable[[Tensor, Tensor, int], Tensor]) -> None:
    """``fn(token [n], labels [n], seed) -> control [n]`` (Hewitt & Liang 2019).

    Every token *type* gets one label drawn at random from the empirical distribution of
    ``labels``; all its occurrences carry it. Checked: constant per type; the fraction of
    types with each label matches the label distribution (within 5 standard errors);
    independent of the task labels; reproducible by ``seed``.
    """
    gen = torch.Generator().manual_seed(0)
    n_types, n = 1000, 8000
    token = torch.randint(0, n_types, (n,), generator=gen) * 7 + 2  # ids need not be 0..n-1
    # task labels depend on the type (like a real task), distribution about 0.8 / 0.2
    type_rate = torch.rand(n_types * 7 + 2, generator=gen) ** 3
    labels = (torch.rand(n, generator=gen) < type_rate[token]).long()
    control = _tensor(fn(token.clone(), labels.clone(), 0), "control")
    if control.shape != labels.shape:
        raise CheckError(
            f"control has shape {tuple(control.shape)}, expected {tuple(labels.shape)}."
        )
    control = control.long()
    types, inverse = token.unique(return_inverse=True)
    first = torch.zeros(len(types), dtype=torch.long).scatter_(0, inverse, control)
    varying = (control != first[inverse]).nonzero()
    if len(varying):
        t = int(token[varying[0, 0]])
        raise CheckError(
            f"token type {t} has different control labels at different occurrences: draw ONE "
            "label per type (token.unique(return_inverse=True)) and copy it to every occurrence."
        )
    if not set(control.unique().tolist()) <= set(labels.unique().tolist()):
        raise CheckError(
            f"control labels {sorted(set(control.unique().tolist()))} include values not among "
            f"the task labels {sorted(set(labels.unique().tolist()))}."
        )
    if torch.equal(control, labels):
        raise CheckError("the control labels are the task labels: they must be random.")
    majority = torch.zeros(len(types)).index_add_(0, inverse, labels.float())
    majority = (majority / torch.bincount(inverse).float() > 0.5).long()
    if torch.equal(first, majority):
        raise CheckError(
            "the control label of each type is its majority task label: the control task "
            "must be random, independent of the task."
        )
    p = labels.float().mean().item()
    q = first.float().mean().item()
    se = math.sqrt(p * (1 - p) / len(types))
    if abs(q - p) > 5 * se:
        hint = (
            " That is about uniform: draw from the EMPIRICAL distribution of the labels "
            "(torch.bincount(labels) / n)."
            if abs(q - 0.5) < 5 * se
            else ""
        )
        raise CheckError(
            f"{q:.3f} of the types got label 1, but {p:.3f} of the task labels are 1.{hint}"
        )
    again = _tensor(fn(token.clone(), labels.clone(), 0), "control")
    if not torch.equal(again.long(), control):
        raise CheckError("the same seed gave different control labels: use a seeded generator.")
    if torch.equal(_tensor(fn(token.clone(), labels.clone(), 1), "control").long(), control):
        raise CheckError("seeds 0 and 1 gave the same control labels: draw them with the seed.")
    passed("check_control_labels")


# ------------------------------------------------------------------ 5. evaluating a probe
@exercise
def check_evaluate_probe(
    fn: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[float, float]],
) -> None:
    """``fn(x, y, train_mask, test_mask) -> (train_acc, test_acc)``: fit a probe on the
    training tokens only, report **balanced** accuracy (mean per-class recall) on each split.

    Data set 1: the test tokens follow the opposite rule from the training tokens, so a
    probe fitted on the training split only scores ~1 on train and ~0 on test. Data set 2:
    uninformative ``x``, 9:1 labels: balanced accuracy is ~0.5, plain accuracy ~0.9.
    """
    gen = torch.Generator().manual_seed(0)
    n = 800
    x = torch.randn(n, 4, generator=gen)
    test = torch.zeros(n, dtype=torch.bool)
    test[400:] = True
    y = (x[:, 0] > 0.6).long()  # imbalanced, about 27 % positives
    y[test] = 1 - y[test]  # the opposite rule on the test tokens
    out = fn(x.clone(), y.clone(), ~test, test.clone())
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckError("return a tuple (train_accuracy, test_accuracy).")
    tr, te = float(out[0]), float(out[1])
    if tr < 0.2 and te > 0.8:
        raise CheckError(
            f"train {tr:.2f}, test {te:.2f} on data whose test split follows the opposite rule: "
            "the probe was trained on the test documents (or the accuracies are swapped)."
        )
    if 0.2 <= tr <= 0.8 and 0.2 <= te <= 0.8:
        raise CheckError(
            f"train {tr:.2f}, test {te:.2f}: the probe was fitted on train AND test tokens; "
            "fit it on x[train_mask] only."
        )
    if not (tr > 0.9 and te < 0.1):
        raise CheckError(
            f"train {tr:.2f}, test {te:.2f}, expected about 1 and 0 on data whose test split "
            "follows the opposite rule (is check_fit_probe passing?)."
        )
    noise = torch.randn(n, 4, generator=gen)
    y9 = (torch.rand(n, generator=gen) < 0.1).long()
    _, te9 = fn(noise, y9, ~test, test.clone())
    plain = 1 - y9[test].float().mean().item()
    if float(te9) > 0.7:
        raise CheckError(
            f"test accuracy {float(te9):.2f} on pure noise with 9:1 labels (always predicting "
            f"0 gives plain accuracy {plain:.2f}): report BALANCED accuracy, the mean over "
            "classes of the fraction of that class predicted correctly."
        )
    passed("check_evaluate_probe")


# ------------------------------------------------------------------ 6. TopK activation
def _topk_relu(pre: Tensor, k: int) -> Tensor:
    order = pre.argsort(dim=-1, descending=True)[..., :k]
    kept = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order, True)
    return torch.where(kept, pre.clamp_min(0), torch.zeros_like(pre))


@exercise
def check_topk_relu(fn: Callable[[Tensor, int], Tensor]) -> None:
    """``fn(pre [..., d_sae], k) -> f``: keep the ``k`` largest pre-activations of each
    token (last axis), ReLU them, zero the rest (Gao et al. 2024)."""
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(48, 40, generator=gen)
    pre[5] = -pre[5].abs() - 0.1  # a token with no positive pre-activation
    for k in (6, 1):
        got = _tensor(fn(pre.clone(), k), f"f (k={k})")
        want = _topk_relu(pre, k)
        if got.shape != want.shape:
            hint = (
                " Return a full [..., d_sae] tensor with zeros where latents are off, not the "
                "k values."
                if got.shape[-1] == k
                else ""
            )
            raise CheckError(f"f has shape {tuple(got.shape)}, expected {tuple(want.shape)}.{hint}")
        if (got < 0).any():
            raise CheckError("f has negative entries: apply a ReLU to the kept values.")
        if torch.allclose(got, want, atol=1e-6):
            continue
        candidates = {
            "TopK keeps the k SMALLEST pre-activations: use the largest": pre.topk(
                k, dim=-1, largest=False
            ),
            "TopK along the batch axis (dim 0): take it per token, along the last axis": pre.topk(
                k, dim=0
            ),
            "TopK by |pre|: keep the k largest signed values": pre.abs().topk(k, dim=-1),
        }
        on = got != 0
        if not bool(on.any()):
            raise CheckError(f"f is all zeros (k={k}): keep the k largest pre-activations.")
        for hint, top in candidates.items():
            dim = 0 if "batch axis" in hint else -1
            kept = torch.zeros_like(pre, dtype=torch.bool).scatter(dim, top.indices, True)
            if not bool((on & ~kept).any()) and not bool((kept & (pre > 0) & ~on).any()):
                raise CheckError(f"f has the wrong latents on: {hint}.")
        compare_tensors(got, want, f"f (k={k})")
    passed("check_topk_relu")


# ------------------------------------------------------------------ 7. ReLU + L1 loss
def _sae_params(
    seed: int, d_in: int = 10, d_sae: int = 24, n: int = 32
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64) + 0.5
    w_enc = torch.randn(d_in, d_sae, generator=gen, dtype=torch.float64) * 0.5
    b_enc = torch.randn(d_sae, generator=gen, dtype=torch.float64) * 0.1
    # decoder rows of very different norms, so that the norm weighting matters
    w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
    w_dec = w_dec * torch.linspace(0.2, 3.0, d_sae, dtype=torch.float64)[:, None]
    b_dec = torch.randn(d_in, generator=gen, dtype=torch.float64)
    return x, w_enc, b_enc, w_dec, b_dec


@exercise
def check_relu_l1_loss(fn: Callable[..., Tensor]) -> None:
    """``fn(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient) -> loss`` (a scalar) of a
    standard (ReLU + L1) SAE, Anthropic's April 2024 form::

        f = ReLU(x W_enc + b_enc);  x_hat = f W_dec + b_dec
        loss = mean_tokens ||x - x_hat||^2 + lam * mean_tokens sum_i f_i ||W_dec[i]||
    """
    lam = 0.3
    x, w_enc, b_enc, w_dec, b_dec = _sae_params(0)
    got_t = fn(x.clone(), w_enc.clone(), b_enc.clone(), w_dec.clone(), b_dec.clone(), lam)
    got_t = _tensor(got_t, "loss")
    if got_t.numel() != 1:
        raise CheckError(f"loss must be a scalar, got shape {tuple(got_t.shape)}.")
    got = float(got_t)
    d_in = x.shape[1]

    def loss(
        subtract: bool = False, weighted: bool = True, mse: str = "sum", red: str = "mean"
    ) -> float:
        f = F.relu((x - b_dec if subtract else x) @ w_enc + b_enc)
        err = (f @ w_dec + b_dec - x).pow(2).sum(-1)
        err = err / d_in if mse == "mean" else err
        pen = (f * (w_dec.norm(dim=-1) if weighted else 1)).sum(-1)
        total = err + lam * pen
        return float(total.sum() if red == "sum" else total.mean())

    want = loss()
    if math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6):
        passed("check_relu_l1_loss")
        return
    candidates = {
        "the L1 penalty is not weighted by the decoder norms: use "
        "sum_i f_i ||W_dec[i]|| (else the SAE shrinks f and grows W_dec)": loss(weighted=False),
        "the squared error is averaged over the d_in dimensions: SUM over dimensions, "
        "mean over tokens": loss(mse="mean"),
        "b_dec is subtracted from the input: the standard (April update) SAE encodes x as is": loss(
            subtract=True
        ),
        "the loss is summed over the batch: take the MEAN over tokens": loss(red="sum"),
        "the L1 penalty is missing": float(
            (F.relu(x @ w_enc + b_enc) @ w_dec + b_dec - x).pow(2).sum(-1).mean()
        ),
    }
    for hint, value in candidates.items():
        if math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-6):
            raise CheckError(f"loss = {got:.6g}, expected {want:.6g}: {hint}.")
    raise CheckError(f"loss = {got:.6g}, expected {want:.6g}.")


# ------------------------------------------------------------------ 8. TopK SAE forward
@exercise
def check_topk_sae_forward(fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
    """``fn(x, W_enc, b_enc, W_dec, b_dec, k) -> (f, x_hat)`` of a TopK SAE::

    f = ReLU(TopK_k((x - b_dec) W_enc + b_enc));   x_hat = f W_dec + b_dec
    """
    k = 5
    x, w_enc, b_enc, w_dec, b_dec = _sae_params(1)
    out = fn(x.clone(), w_enc.clone(), b_enc.clone(), w_dec.clone(), b_dec.clone(), k)
    if not isinstance(out, tuple) or len(out) != 2:
        raise CheckError("return a tuple (f, x_hat).")
    f, x_hat = _tensor(out[0], "f").double(), _tensor(out[1], "x_hat").double()
    want_f = _topk_relu((x - b_dec) @ w_enc + b_enc, k)
    want_x = want_f @ w_dec + b_dec
    if f.shape != want_f.shape:
        raise CheckError(f"f has shape {tuple(f.shape)}, expected {tuple(want_f.shape)}.")
    l0 = (f != 0).sum(-1).double().mean().item()
    if l0 > k:
        raise CheckError(f"L0 = {l0:.2f} latents per token, but a TopK SAE has at most k = {k}.")
    if not torch.allclose(f, want_f, atol=1e-6):
        if torch.allclose(f, _topk_relu(x @ w_enc + b_enc, k), atol=1e-6):
            raise CheckError(
                "f is wrong: subtract b_dec from x before encoding (a TopK SAE centres its "
                "input with the decoder bias)."
            )
        compare_tensors(f, want_f, "f", hint="Encode with your topk_relu.")
    if x_hat.shape == want_x.shape and torch.allclose(x_hat, want_f @ w_dec, atol=1e-6):
        raise CheckError("x_hat is wrong: add b_dec back after decoding.")
    compare_tensors(x_hat, want_x, "x_hat", atol=1e-6, hint="x_hat = f W_dec + b_dec.")
    passed("check_topk_sae_forward")


# ------------------------------------------------------------------ 9. AUROC per latent
@exercise
def check_auroc_per_latent(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``fn(feature_acts [n, m], label [n] bool) -> auroc [m]``: for each latent, the
    probability that a random positive token has a larger activation than a random
    negative one, ties counting one half (the AUROC; scikit-learn's ``roc_auc_score``).

    The feature activations are sparse (mostly exact zeros), so ties matter.
    """
    from sklearn.metrics import roc_auc_score  # lazy: sklearn is slow to import

    gen = torch.Generator().manual_seed(0)
    n, m = 300, 8
    label = torch.rand(n, generator=gen) < 0.3
    acts = F.relu(torch.randn(n, m, generator=gen) - 0.8)  # about 80 % exact zeros
    acts[:, 0] += 2.0 * label  # latent 0 fires on the label
    acts[:, 1] = F.relu(torch.randn(n, generator=gen) - 0.8) * ~label  # anti-correlated
    acts[:, 2] = 0.0  # dead latent: AUROC 1/2
    acts[:, 3] = label.float() * (torch.rand(n, generator=gen) < 0.5)  # fires on half of them
    got = _tensor(fn(acts.clone(), label.clone()), "auroc").double()
    want = torch.tensor(
        [roc_auc_score(label.numpy(), acts[:, j].numpy()) for j in range(m)], dtype=torch.float64
    )
    if got.shape != want.shape:
        raise CheckError(f"auroc has shape {tuple(got.shape)}, expected ({m},): one per latent.")
    if torch.allclose(got, want, atol=1e-6):
        passed("check_auroc_per_latent")
        return
    if torch.allclose(got, 1 - want, atol=1e-6):
        raise CheckError(
            "AUROC inverted (you get 1 - AUROC): count pairs where the POSITIVE token has the "
            "larger activation."
        )
    if abs(got[2].item() - 0.5) > 1e-6:
        raise CheckError(
            f"a latent that never fires has AUROC {got[2].item():.3f}, expected 0.5: tied "
            "activations count one half (use average ranks for ties)."
        )
    positive, negative = acts[label], acts[~label]
    strict = (positive[:, None, :] > negative[None, :, :]).double().mean((0, 1))
    if torch.allclose(got, strict, atol=1e-6):
        raise CheckError("ties count zero: a tied positive/negative pair counts one half.")
    compare_tensors(got, want, "auroc", atol=1e-6, hint="Reference: sklearn roc_auc_score.")
