"""Homework 5 checks: the reference passes, known-wrong implementations are rejected.

The references below are the solution notebook's answers; the wrong ones are the
mistakes the checks name. Part 1 runs on a tiny randomly initialised GPT with the stories
tokenizer (the check works for any model with ``run_with_cache`` and ``cfg.n_ctx``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.activations import collect_activations
from decoding_gpt.checks import CheckError, hw5
from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.bpe import eos_id
from decoding_gpt.data.stories import LABEL_NAMES, label_tokens
from decoding_gpt.sae import SAE, SAEConfig, auroc_matrix
from decoding_gpt.transformer import GPT, GPTConfig


# ------------------------------------------------------------------ part 1: collection
@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("stories")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = GPTConfig(
        d_vocab=tokenizer.get_vocab_size(), n_ctx=128, d_model=32, n_layers=2, n_heads=2
    )
    return GPT(cfg).eval()


def _collect(model, stories, tokenizer, hook_name, bos=True, label_offset=1, exclude_bos=True):
    """The reference (defaults) and, through the flags, the mistakes."""
    n_ctx = model.cfg.n_ctx
    encoded = [label_tokens(s, tokenizer) for s in stories]
    start = 1 if bos else 0
    length = min(n_ctx, start + max(len(e) for e in encoded))
    tokens = torch.full((len(encoded), length), eos_id(tokenizer))
    mask = torch.zeros(len(encoded), length, dtype=torch.bool)
    labels = {name: torch.full((len(encoded), length), -1) for name in LABEL_NAMES}
    for i, e in enumerate(encoded):
        n = min(len(e), length - start)
        tokens[i, start : start + n] = torch.from_numpy(e.ids[:n])
        mask[i, : start + n] = True  # BOS too: collect_activations drops position 0
        for name in LABEL_NAMES:
            at = label_offset if bos else 0
            labels[name][i, at : at + n] = torch.from_numpy(e.labels[name][:n])
    acts = collect_activations(model, tokens, hook_name, mask, exclude_bos=exclude_bos)
    out = {"acts": acts.acts, "doc": acts.doc, "pos": acts.pos}
    out["token"] = tokens[acts.doc, acts.pos]
    out.update({name: lab[acts.doc, acts.pos] for name, lab in labels.items()})
    return out


def test_collect_accepts_reference(model, tokenizer):
    hw5.check_collect_residuals(_collect, model, tokenizer)


def _resid_pre(model, stories, tokenizer, hook_name):
    return _collect(model, stories, tokenizer, hook_name.replace("resid_post", "resid_pre"))


def _zeros(model, stories, tokenizer, hook_name):
    out = _collect(model, stories, tokenizer, hook_name)
    out["acts"] = torch.zeros_like(out["acts"])  # the "hook assigned a local" bug
    return out


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda *a: _collect(*a, exclude_bos=False), "BOS included"),
        (lambda *a: _collect(*a, label_offset=0), "off by one position"),
        (lambda *a: _collect(*a, bos=False), "real token per document is missing"),
        (
            lambda *a: _collect(*a, bos=False, exclude_bos=False),
            "ran without BOS at position 0",
        ),
        (_resid_pre, "hook_resid_pre"),
        (_zeros, "all zeros"),
        (lambda *a: {k: v for k, v in _collect(*a).items() if k != "token"}, "lacks the keys"),
    ],
)
def test_collect_rejects(model, tokenizer, wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_collect_residuals(wrong, model, tokenizer)


def test_collect_rejects_padding(model, tokenizer):
    def with_padding(model, stories, tokenizer, hook_name):
        n_ctx = model.cfg.n_ctx
        encoded = [label_tokens(s, tokenizer) for s in stories]
        length = min(n_ctx, 1 + max(len(e) for e in encoded))
        tokens = torch.full((len(encoded), length), eos_id(tokenizer))
        for i, e in enumerate(encoded):
            n = min(len(e), length - 1)
            tokens[i, 1 : 1 + n] = torch.from_numpy(e.ids[:n])
        acts = collect_activations(model, tokens, hook_name)  # no mask: padding kept
        out = {
            "acts": acts.acts,
            "doc": acts.doc,
            "pos": acts.pos,
            "token": tokens[acts.doc, acts.pos],
        }
        out.update({name: torch.zeros_like(acts.doc) for name in LABEL_NAMES})
        return out

    with pytest.raises(CheckError, match="padding included"):
        hw5.check_collect_residuals(with_padding, model, tokenizer)


# ------------------------------------------------------------------ part 2: split
def _split(doc, test_fraction, seed):
    docs = doc.unique()
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed))
    test_docs = docs[order[: round(test_fraction * len(docs))]]
    test = torch.isin(doc, test_docs)
    return ~test, test


def test_split_accepts_reference_and_package():
    from decoding_gpt.probes import split_by_document

    hw5.check_split_documents(_split)
    hw5.check_split_documents(split_by_document)


def _token_split(doc, test_fraction, seed):
    gen = torch.Generator().manual_seed(seed)
    test = torch.rand(len(doc), generator=gen) < test_fraction
    return ~test, test


def _first_tokens(doc, test_fraction, seed):
    test = torch.zeros(len(doc), dtype=torch.bool)
    test[: int(test_fraction * len(doc))] = True
    return ~test, test


def _unseeded(doc, test_fraction, seed):
    return _split(doc, test_fraction, 0)


def _range_ids(doc, test_fraction, seed):
    n_docs = len(doc.unique())
    order = torch.randperm(n_docs, generator=torch.Generator().manual_seed(seed))
    test = torch.isin(doc, order[: round(test_fraction * n_docs)])  # ids are not 0..n-1
    return ~test, test


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_token_split, "split by document, not by token"),
        (_first_tokens, "split by document"),
        (_unseeded, "same split"),
        (_range_ids, "documents are in the test split"),
        (lambda d, f, s: (torch.ones_like(d, dtype=torch.bool), _split(d, f, s)[1]), "train AND"),
        (lambda d, f, s: tuple(m.long() for m in _split(d, f, s)), "bool tensor"),
    ],
)
def test_split_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_split_documents(wrong)


# ------------------------------------------------------------------ part 3: probe
def _fit_probe(x, y, steps=300, lr=0.05, weight_decay=1e-3, standardise_back=True, bias=True,
               sign=1.0):  # fmt: skip
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=bias)
    opt = torch.optim.Adam([w, b] if bias else [w], lr=lr)
    target = y.float() if sign > 0 else 1 - y.float()
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(z @ w + b, target)
        loss = loss + weight_decay * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w, b = w.detach(), b.detach()
    if not standardise_back:
        return w, b
    return w / sd, b - (mu / sd) @ w


def test_fit_probe_accepts_reference():
    hw5.check_fit_probe(_fit_probe)


def _no_intercept(x, y):
    w = torch.linalg.lstsq(x, y.float() * 2 - 1).solution  # least squares through 0
    return w, torch.tensor(0.0)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda x, y: _fit_probe(x, y, sign=-1.0), "wrong way"),
        (lambda x, y: _fit_probe(x, y, standardise_back=False), "STANDARDISED"),
        (lambda x, y: (_fit_probe(x, y)[0], torch.tensor(0.0)), "intercept"),
        (lambda x, y: _fit_probe(x, y, steps=2, lr=1e-3), "not converged"),
        (lambda x, y: (_fit_probe(x, y)[0][:, None], _fit_probe(x, y)[1]), "squeeze"),
        (_no_intercept, "held-out accuracy"),
    ],
)
def test_fit_probe_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_fit_probe(wrong)


# ------------------------------------------------------------------ part 4: control task
def _control(token, labels, seed):
    types, inverse = token.unique(return_inverse=True)
    gen = torch.Generator().manual_seed(seed)
    p = torch.bincount(labels).double()
    per_type = torch.multinomial(p / p.sum(), len(types), replacement=True, generator=gen)
    return per_type[inverse]


def test_control_accepts_reference_and_package():
    from decoding_gpt.probes import control_labels

    hw5.check_control_labels(_control)
    hw5.check_control_labels(control_labels)


def _per_token(token, labels, seed):
    gen = torch.Generator().manual_seed(seed)
    return labels[torch.randperm(len(labels), generator=gen)]


def _uniform(token, labels, seed):
    types, inverse = token.unique(return_inverse=True)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(labels.max()) + 1, (len(types),), generator=gen)[inverse]


def _majority(token, labels, seed):
    types, inverse = token.unique(return_inverse=True)
    ones = torch.zeros(len(types)).index_add_(0, inverse, labels.float())
    return (ones / torch.bincount(inverse).float() > 0.5).long()[inverse]


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_per_token, "ONE label per type"),
        (_uniform, "EMPIRICAL distribution"),
        (_majority, "majority task label"),
        (lambda t, y, s: _control(t, y, 0), "seeds 0 and 1"),
        (lambda t, y, s: y, "ONE label per type"),
        (lambda t, y, s: _control(t, y, s) + 1, "values not among"),
    ],
)
def test_control_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_control_labels(wrong)


# ------------------------------------------------------------------ part 5: evaluation
def _balanced(pred, y):
    return torch.stack([(pred[y == c] == c).float().mean() for c in y.unique()]).mean().item()


def _evaluate(x, y, train_mask, test_mask, fit_on="train", metric=_balanced):
    on = {"train": train_mask, "test": test_mask, "all": train_mask | test_mask}[fit_on]
    w, b = _fit_probe(x[on], y[on])
    pred = (x @ w + b > 0).long()
    return metric(pred[train_mask], y[train_mask]), metric(pred[test_mask], y[test_mask])


def test_evaluate_accepts_reference():
    hw5.check_evaluate_probe(_evaluate)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda *a: _evaluate(*a, fit_on="test"), "trained on the test documents"),
        (lambda *a: _evaluate(*a, fit_on="all"), "train AND test"),
        (lambda *a: _evaluate(*a)[::-1], "swapped"),
        (
            lambda *a: _evaluate(*a, metric=lambda p, y: (p == y).float().mean().item()),
            "BALANCED",
        ),
    ],
)
def test_evaluate_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_evaluate_probe(wrong)


# ------------------------------------------------------------------ part 6: TopK
def _topk_relu(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))


def test_topk_accepts_reference_and_package():
    hw5.check_topk_relu(_topk_relu)
    hw5.check_topk_relu(lambda pre, k: SAE(SAEConfig(4, 40, "topk", k=k)).activate(pre))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            lambda pre, k: torch.zeros_like(pre).scatter(
                -1, pre.topk(k, -1, largest=False).indices, 1.0
            ),
            "SMALLEST",
        ),
        (
            lambda pre, k: torch.zeros_like(pre).scatter(
                0, pre.topk(k, 0).indices, F.relu(pre.topk(k, 0).values)
            ),
            "batch axis",
        ),
        (
            lambda pre, k: torch.zeros_like(pre).scatter(
                -1, pre.abs().topk(k, -1).indices, pre.abs().topk(k, -1).values
            ),
            "by \\|pre\\|",
        ),
        (
            lambda pre, k: torch.zeros_like(pre).scatter(
                -1, pre.topk(k, -1).indices, pre.topk(k, -1).values
            ),
            "negative entries",
        ),
        (lambda pre, k: F.relu(pre.topk(k, -1).values), "not the k values"),
    ],
)
def test_topk_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_topk_relu(wrong)


# ------------------------------------------------------------------ part 7: ReLU + L1 loss
def _l1_loss(x, w_enc, b_enc, w_dec, b_dec, lam, weighted=True, per_dim=False, centre=False,
             reduce="mean"):  # fmt: skip
    f = F.relu((x - b_dec if centre else x) @ w_enc + b_enc)
    x_hat = f @ w_dec + b_dec
    err = (x - x_hat).pow(2).mean(-1) if per_dim else (x - x_hat).pow(2).sum(-1)
    penalty = (f * w_dec.norm(dim=-1)).sum(-1) if weighted else f.sum(-1)
    total = err + lam * penalty
    return total.mean() if reduce == "mean" else total.sum()


def test_l1_loss_accepts_reference_and_package():
    hw5.check_relu_l1_loss(_l1_loss)

    def package(x, w_enc, b_enc, w_dec, b_dec, lam):
        sae = SAE(SAEConfig(x.shape[1], w_enc.shape[1], "standard", dtype="float64"))
        sae.load_state_dict({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec})
        return sae.training_loss(x, lam)[0]

    hw5.check_relu_l1_loss(package)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"weighted": False}, "not weighted by the decoder norm"),
        ({"per_dim": True}, "averaged over the d_in"),
        ({"centre": True}, "b_dec is subtracted"),
        ({"reduce": "sum"}, "summed over the batch"),
    ],
)
def test_l1_loss_rejects(flags, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_relu_l1_loss(lambda *a: _l1_loss(*a, **flags))


def test_l1_loss_rejects_missing_penalty_and_shape():
    with pytest.raises(CheckError, match="penalty is missing"):
        hw5.check_relu_l1_loss(lambda *a: _l1_loss(*a[:5], 0.0))
    with pytest.raises(CheckError, match="scalar"):
        hw5.check_relu_l1_loss(lambda *a: _l1_loss(*a).repeat(2))


# ------------------------------------------------------------------ part 8: TopK SAE forward
def _topk_forward(x, w_enc, b_enc, w_dec, b_dec, k, centre=True, add_back=True, topk=_topk_relu):
    f = topk((x - b_dec if centre else x) @ w_enc + b_enc, k)
    return f, f @ w_dec + (b_dec if add_back else 0)


def test_topk_forward_accepts_reference_and_package():
    hw5.check_topk_sae_forward(_topk_forward)

    def package(x, w_enc, b_enc, w_dec, b_dec, k):
        sae = SAE(SAEConfig(x.shape[1], w_enc.shape[1], "topk", k=k, dtype="float64"))
        sae.load_state_dict({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec})
        f = sae.encode(x)
        return f, sae.decode(f)

    hw5.check_topk_sae_forward(package)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"centre": False}, "subtract b_dec"),
        ({"add_back": False}, "add b_dec back"),
        ({"topk": lambda pre, k: F.relu(pre)}, "at most k"),
        ({"topk": lambda pre, k: _topk_relu(pre, k - 1)}, "wrong values"),
    ],
)
def test_topk_forward_rejects(kwargs, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_topk_sae_forward(lambda *a: _topk_forward(*a, **kwargs))


# ------------------------------------------------------------------ part 9: AUROC
def _auroc(acts, label):
    # Mann-Whitney U with average ranks: ties count one half
    n = len(acts)
    order = acts.argsort(dim=0)
    ranks = torch.empty_like(acts, dtype=torch.float64)
    ranks.scatter_(0, order, torch.arange(1, n + 1, dtype=torch.float64)[:, None].expand_as(acts))
    for j in range(acts.shape[1]):  # average the ranks of tied values
        values, inverse = acts[:, j].unique(return_inverse=True)
        sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks[:, j])
        ranks[:, j] = (sums / torch.bincount(inverse))[inverse]
    n_pos = label.sum()
    n_neg = n - n_pos
    return (ranks[label].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def test_auroc_accepts_reference_and_package():
    hw5.check_auroc_per_latent(_auroc)
    hw5.check_auroc_per_latent(lambda a, y: auroc_matrix(a, y[:, None])[:, 0])


def _ordinal_ranks(acts, label):
    ranks = acts.argsort(0).argsort(0).double() + 1  # ties broken by position
    n_pos = label.sum()
    return (ranks[label].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * (len(acts) - n_pos))


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda a, y: 1 - _auroc(a, y), "AUROC inverted"),
        (_ordinal_ranks, "count one half"),
        (lambda a, y: (a[y][:, None] > a[~y][None]).double().mean((0, 1)), "count one half"),
        (lambda a, y: _auroc(a, y)[None], "shape"),
        (lambda a, y: F.cosine_similarity(a, y.float()[:, None], dim=0), "never fires"),
    ],
)
def test_auroc_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        hw5.check_auroc_per_latent(wrong)
