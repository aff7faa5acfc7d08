"""The stories' ground truth for SAEs: collected rows equal ``run_with_cache``'s, targets
follow the documented binarisation, the match table equals scikit-learn's AUROC and F1
computed one latent at a time, and the probe ceiling equals scikit-learn's ridge."""

from __future__ import annotations

import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import f1_score, roc_auc_score

from decoding_gpt.checks.hw5 import reference_collect_residuals
from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.stories import LABEL_NAMES, generate_stories
from decoding_gpt.data.world import CHARACTERS
from decoding_gpt.pretrained import load_native
from decoding_gpt.sae.ground_truth import (
    TARGETS,
    best_per_label,
    binary_targets,
    collect_labelled,
    match_table,
    packed_story_tokens,
    probe_auroc_table,
)

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def setting():
    return load_native("stories-4l", device="cpu"), get_tokenizer("stories")


def test_collect_labelled_equals_run_with_cache(setting):
    model, tok = setting
    stories = generate_stories(5, seed=2, split="val")  # some longer than n_ctx
    got = collect_labelled(model, stories, tok, HOOK, batch_size=2)  # several batches
    want = reference_collect_residuals(model, stories, tok, HOOK)
    torch.testing.assert_close(got.acts.acts, want["acts"], atol=1e-4, rtol=1e-4)
    assert torch.equal(got.acts.doc, want["doc"]) and torch.equal(got.acts.pos, want["pos"])
    assert torch.equal(got.tokens, want["token"])
    for name in LABEL_NAMES:
        assert torch.equal(got.labels[name], want[name]), name


def test_packed_rows_are_full_and_start_with_bos(setting):
    model, tok = setting
    rows = packed_story_tokens(generate_stories(6, seed=0, split="val"), tok, model.cfg.n_ctx)
    assert rows.shape[1] == model.cfg.n_ctx and rows[0, 0] == tok.token_to_id("<|endoftext|>")
    with pytest.raises(ValueError, match="do not fill one row"):
        packed_story_tokens(generate_stories(1, seed=0, split="val"), tok, 100_000)


def test_targets_follow_the_documented_binarisation():
    assert tuple(t.label for t in TARGETS) == LABEL_NAMES
    female = next(c.id for c in CHARACTERS if c.gender == "female")
    male = next(c.id for c in CHARACTERS if c.gender == "male")
    labels = {name: torch.tensor([-1, 0, 1, 1]) for name in LABEL_NAMES}
    labels["current_speaker"] = torch.tensor([-1, female, male, female])
    labels["item_count"] = torch.tensor([0, 1, 3, 5])
    got = {(a, k): (d.tolist(), p.tolist()) for a, k, d, p in binary_targets(labels)}
    # the speaker's gender, scored on quoted tokens only
    assert got["current_speaker", "female"] == (
        [False, True, True, True],
        [False, True, False, True],
    )
    # subject_gender: -1 (no single subject) is not scored
    assert got["subject_gender", "male"] == ([False, True, True, True], [False, False, True, True])
    assert got["item_count", ">=3"][1] == [False, False, True, True]
    assert ("item_count", "2") not in got  # a class with no token is skipped


def test_match_table_equals_sklearn():
    gen = torch.Generator().manual_seed(0)
    n = 400
    labels = {name: torch.randint(0, 2, (n,), generator=gen) for name in LABEL_NAMES}
    labels["current_speaker"] = torch.randint(-1, 10, (n,), generator=gen)
    labels["item_count"] = torch.randint(0, 5, (n,), generator=gen)
    acts = torch.relu(torch.randn(n, 12, generator=gen) - 0.5)
    acts[:, 3] += 2.0 * (labels["story_sentiment"] == 1)  # a sentiment latent
    rows = match_table(acts, labels)
    for row, (label, klass, defined, positive) in zip(rows, binary_targets(labels), strict=True):
        assert (row.label, row.klass) == (label, klass)
        y = positive[defined].numpy()
        aurocs = [roc_auc_score(y, acts[defined, j].numpy()) for j in range(12)]
        assert row.auroc == pytest.approx(max(aurocs), abs=1e-9)
        assert row.latent == max(range(12), key=lambda j: aurocs[j])
        assert row.f1 == pytest.approx(f1_score(y, acts[defined, row.latent].numpy() > 0))
    best = best_per_label(rows)
    assert best["story_sentiment"].latent == 3 and best["story_sentiment"].klass == "happy"
    with pytest.raises(ValueError, match="one value per row"):
        match_table(acts[:10], labels)


def test_probe_auroc_table_equals_sklearn_ridge():
    gen = torch.Generator().manual_seed(1)
    n_train, n_test, d = 600, 300, 8
    labels = [
        {name: torch.randint(0, 2, (n,), generator=gen) for name in LABEL_NAMES}
        for n in (n_train, n_test)
    ]
    x_train, x_test = torch.randn(n_train, d, generator=gen), torch.randn(n_test, d, generator=gen)
    for x, labs in ((x_train, labels[0]), (x_test, labels[1])):
        x[:, 2] += 1.5 * labs["inside_quote"]  # a direction that reads the label
    table = probe_auroc_table(x_train, labels[0], x_test, labels[1], lam=1.0)
    train_targets = {(a, k): (dd, p) for a, k, dd, p in binary_targets(labels[0])}
    for label, klass, defined, positive in binary_targets(labels[1]):
        d_tr, p_tr = train_targets[label, klass]
        ridge = Ridge(alpha=1.0).fit(x_train[d_tr].double().numpy(), p_tr[d_tr].double().numpy())
        score = ridge.predict(x_test[defined].double().numpy())
        expected = roc_auc_score(positive[defined].numpy(), score)
        assert table[label, klass] == pytest.approx(expected, abs=1e-4), (label, klass)
    assert table["inside_quote", "inside"] > 0.85  # the planted direction is found
    assert abs(table["story_sentiment", "happy"] - 0.5) < 0.1  # noise stays near chance
