"""Tests for decoding_gpt.ngram: counts vs brute force, eigen-solutions vs linear solves."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.ngram import (
    LinearBigram,
    LowRankBigram,
    MarkovChain,
    NGramModel,
    UniformModel,
    bigram_counts,
    bigram_nll,
    fit_bigram_model,
    loss_vs_rank,
    ngram_parameter_counts,
    perplexity,
    power_iteration,
    row_normalize,
    stationary_distribution,
    to_dense,
)


def random_chain(n: int, seed: int, sparsity: float = 0.0) -> torch.Tensor:
    """A random row-stochastic matrix (every row keeps at least one entry)."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.rand(n, n, generator=gen, dtype=torch.float64)
    m = m * (torch.rand(n, n, generator=gen, dtype=torch.float64) >= sparsity)
    m[torch.arange(n), torch.randint(n, (n,), generator=gen)] += 0.1
    return m / m.sum(dim=1, keepdim=True)


def solve_stationary(m: torch.Tensor) -> np.ndarray:
    """Independent reference: solve pi (M - I) = 0 with sum(pi) = 1 by least squares."""
    n = m.shape[0]
    a = np.vstack([(m.numpy() - np.eye(n)).T, np.ones((1, n))])
    b = np.zeros(n + 1)
    b[-1] = 1.0
    return np.linalg.lstsq(a, b, rcond=None)[0]


def sample_ids(n: int, vocab: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (n,), generator=gen).tolist()


# ---------------------------------------------------------------- counts and sparsity
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bigram_counts_equal_brute_force_loop(seed):
    ids = sample_ids(500, 13, seed)
    counts = bigram_counts(ids, 13)
    brute = Counter()
    for t in range(len(ids) - 1):
        brute[(ids[t], ids[t + 1])] += 1
    got = dict(zip(map(tuple, counts.indices().T.tolist()), counts.values().tolist(), strict=True))
    assert got == {k: float(v) for k, v in brute.items()}
    # stored entries = distinct observed bigrams, not V^2
    assert counts._nnz() == len(brute)


def test_sparse_counts_do_not_scale_with_vocab_squared():
    """A 10^6-token vocabulary: dense would be 8 TB; sparse stores only observed pairs."""
    ids = [5, 999_999, 5, 17, 5, 999_999]
    counts = bigram_counts(ids, 1_000_000)
    assert counts.shape == (1_000_000, 1_000_000)
    assert counts._nnz() == len(set(zip(ids, ids[1:], strict=False))) == 4
    probs = row_normalize(counts)
    assert probs._nnz() == 4
    assert torch.isclose(to_dense_row(probs, 5).sum(), torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="refusing to build a dense"):
        to_dense(probs)


def test_markov_chain_on_a_huge_sparse_vocabulary():
    ids = [5, 999_999, 5, 17, 5, 999_999, 3]
    chain = MarkovChain.from_ids(ids, 1_000_000)
    path = chain.sample(50, start=5, seed=0, dead_end="restart")
    assert set(path) <= set(ids)  # the unigram restart only reaches observed tokens
    cols, probs = chain.successors(5)
    assert dict(zip(cols.tolist(), probs.tolist(), strict=True)) == pytest.approx(
        {17: 1 / 3, 999_999: 2 / 3}
    )
    with pytest.raises(ValueError, match="too big"):
        MarkovChain(torch.eye(5000))


def to_dense_row(m: torch.Tensor, row: int) -> torch.Tensor:
    idx, val = m.indices(), m.values()
    return val[idx[0] == row]


def test_bigram_counts_reject_bad_ids():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        bigram_counts([0, 1, 4], 4)
    with pytest.raises(ValueError, match="two tokens"):
        bigram_counts([1], 4)


# ---------------------------------------------------------------- normalisation
def test_row_normalize_empty_rows_stay_zero_not_nan():
    ids = [0, 1, 0, 2, 2, 1]  # state 3 never occurs; nothing follows the final 1 except 0
    counts = bigram_counts(ids, 4)
    for matrix in (counts, counts.to_dense()):
        probs = to_dense(row_normalize(matrix))
        assert not torch.isnan(probs).any()
        sums = probs.sum(dim=1)
        assert torch.allclose(sums[:3], torch.ones(3, dtype=torch.float64))
        assert sums[3] == 0
    assert torch.nonzero(to_dense(counts).sum(1) == 0).flatten().tolist() == [3]  # dead end
    # the naive division (the old bug) does give NaN here: the test input is meaningful
    dense = counts.to_dense()
    assert torch.isnan(dense / dense.sum(dim=1, keepdim=True)).any()


def test_sparse_and_dense_normalisation_agree():
    counts = bigram_counts(sample_ids(300, 9, 3), 9)
    assert torch.allclose(to_dense(row_normalize(counts)), row_normalize(counts.to_dense()))


# ---------------------------------------------------------------- stationary distribution
@pytest.mark.parametrize(("n", "seed", "sparsity"), [(3, 0, 0.0), (8, 1, 0.5), (20, 2, 0.8)])
def test_stationary_distribution_is_left_eigenvector(n, seed, sparsity):
    m = random_chain(n, seed, sparsity)
    pi = stationary_distribution(m)
    assert (pi >= 0).all()
    assert pi.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(pi @ m, pi, atol=1e-10)
    assert np.allclose(pi.numpy(), solve_stationary(m), atol=1e-8)
    assert torch.allclose(power_iteration(m), pi, atol=1e-8)
    assert torch.allclose(power_iteration(m.to_sparse()), pi, atol=1e-8)


def test_right_eigenvector_is_not_the_stationary_distribution():
    """The old bug: eigenvectors of M (not M^T). For a stochastic M the eigenvalue-1 right
    eigenvector is constant, so it would claim every non-doubly-stochastic chain is
    uniform at equilibrium."""
    m = random_chain(5, 7)
    values, vectors = torch.linalg.eig(m)
    right = vectors[:, torch.argmin((values - 1).abs())].real
    right = right / right.sum()
    pi = stationary_distribution(m)
    assert torch.allclose(right, torch.full((5,), 0.2, dtype=torch.float64), atol=1e-10)
    assert not torch.allclose(right, pi, atol=1e-3)
    assert not torch.allclose(right @ m, right, atol=1e-3)


def test_power_iteration_handles_periodic_chain():
    m = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # period 2
    assert torch.allclose(power_iteration(m), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(stationary_distribution(m), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_stationary_distribution_rejects_non_stochastic():
    with pytest.raises(ValueError, match="sum to"):
        stationary_distribution(torch.tensor([[0.5, 0.2], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="empty rows"):
        stationary_distribution(torch.tensor([[0.0, 0.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="square"):
        stationary_distribution(torch.ones(2, 3) / 3)


# ---------------------------------------------------------------- sampling
def test_sampling_is_seeded_and_follows_the_chain():
    m = random_chain(4, 0, sparsity=0.5)
    chain = MarkovChain(m)
    a, b = chain.sample(4000, seed=1), chain.sample(4000, seed=1)
    assert a == b and a != chain.sample(50, seed=2)
    observed = bigram_counts(a, 4).to_dense()
    assert (observed[m == 0] == 0).all()  # never takes an impossible transition
    freq = observed / observed.sum(dim=1, keepdim=True)
    assert torch.allclose(freq, m, atol=0.05)  # ~1000 draws per row: sd < 0.016


def test_sampling_dead_end_raises_or_restarts():
    chain = MarkovChain.from_ids([0, 1, 2], vocab_size=3)  # 2 has no successor
    with pytest.raises(ValueError, match="no successors"):
        chain.sample(10, start=0, seed=0)
    path = chain.sample(12, start=0, seed=0, dead_end="restart")
    assert len(path) == 12 and path[:3] == [0, 1, 2]
    assert all(not math.isnan(x) for x in path)


# ---------------------------------------------------------------- n-grams and perplexity
def test_ngram_counts_keyed_by_context():
    ids = sample_ids(400, 5, 4)
    model = NGramModel(3, 5).fit(ids)
    brute = Counter(tuple(ids[t : t + 3]) for t in range(len(ids) - 2))
    for (a, b, c), count in brute.items():
        assert model.counts[(a, b)][c] == count
    assert model.n_stored_counts() == len(brute)
    bigram = NGramModel(2, 5).fit(ids)
    m = to_dense(row_normalize(bigram_counts(ids, 5)))
    assert bigram.prob([3], 1) == pytest.approx(m[3, 1].item())


def test_add_k_probabilities_sum_to_one():
    model = NGramModel(3, 6, k=0.5).fit(sample_ids(100, 6, 5))
    for ctx in [(0, 1), (5, 5), (9, 9)]:  # the last context is never seen
        assert sum(model.prob(ctx, j) for j in range(6)) == pytest.approx(1.0)
    assert model.prob((9, 9), 2) == pytest.approx(1 / 6)


def test_perplexity_of_uniform_model_is_vocab_size():
    assert perplexity(UniformModel(37), sample_ids(200, 37, 6)) == pytest.approx(37)
    # with k -> infinity add-k smoothing tends to the uniform model
    bigram = NGramModel(2, 37).fit(sample_ids(200, 37, 7))
    assert perplexity(bigram, sample_ids(50, 37, 8), k=1e9) == pytest.approx(37, rel=1e-5)


def test_bigram_perplexity_matches_cross_entropy():
    train, test = sample_ids(2000, 7, 9), sample_ids(300, 7, 10)
    model = NGramModel(2, 7, k=1.0).fit(train)
    counts = bigram_counts(train, 7).to_dense() + 1.0  # add-one by hand
    log_m = (counts / counts.sum(dim=1, keepdim=True)).log()
    x, y = torch.tensor(test[:-1]), torch.tensor(test[1:])
    reference = math.exp(F.nll_loss(log_m[x], y).item())
    assert perplexity(model, test) == pytest.approx(reference, rel=1e-9)
    # unsmoothed: an unseen bigram has probability 0, so perplexity is infinite
    assert perplexity(NGramModel(2, 7).fit([0, 1, 0, 1]), [0, 2]) == math.inf


def test_ngram_parameter_blow_up():
    ids = sample_ids(1000, 10, 11)
    rows = ngram_parameter_counts(ids, 10, 4)
    for row in rows:
        n = row["n"]
        assert row["table_parameters"] == 10 ** (n - 1) * 9
        assert row["observed_ngrams"] == len({tuple(ids[t : t + n]) for t in range(1001 - n)})
        assert row["observed_ngrams"] <= len(ids) - n + 1
    assert rows[3]["observed_ngrams"] < rows[3]["table_parameters"] / 9  # most 4-grams unseen


# ---------------------------------------------------------------- the chain as a network
def test_linear_layer_chain_converges_to_count_chain():
    m = 0.5 * random_chain(5, 12) + 0.1  # every transition has probability >= 0.1
    ids = MarkovChain(m).sample(2000, seed=0)
    counts = bigram_counts(ids, 5)
    assert counts._nnz() == 25  # every row observed, every target > 0: a finite optimum
    torch.manual_seed(0)
    model = LinearBigram(5)
    losses = fit_bigram_model(model, ids, steps=300, lr=5.0, optimizer="sgd")
    # the first loss is the mean cross-entropy over all bigrams (independent reference)
    with torch.no_grad():
        torch.manual_seed(0)
        fresh = LinearBigram(5)
        x, y = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
        assert losses[0] == pytest.approx(F.cross_entropy(fresh(x), y).item(), rel=1e-5)
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(bigram_nll(counts), abs=1e-4)
    target = to_dense(row_normalize(counts)).float()
    assert torch.allclose(model.transition_matrix(), target, atol=2e-3)
    # forward on one-hot input is a column lookup of W: logits = W[:, x]
    assert torch.equal(model(torch.tensor([3])), model.linear.weight[:, 3][None])


def test_low_rank_chain_loss_decreases_with_rank():
    m = random_chain(8, 13)
    ids = MarkovChain(m).sample(3000, seed=1)
    floor = bigram_nll(bigram_counts(ids, 8))
    losses = loss_vs_rank(ids, 8, [1, 8])
    assert losses[0] > floor + 0.02  # rank 1 cannot represent a generic 8-state chain
    assert losses[1] == pytest.approx(floor, abs=5e-3)
    assert LowRankBigram(8, 2).transition_matrix().shape == (8, 8)


def test_minibatch_sgd_also_learns_the_chain():
    m = 0.5 * random_chain(4, 14) + 0.125
    ids = MarkovChain(m).sample(2000, seed=2)
    torch.manual_seed(0)
    model = LinearBigram(4)
    fit_bigram_model(model, ids, steps=300, lr=2.0, batch_size=64, seed=0)
    target = to_dense(row_normalize(bigram_counts(ids, 4))).float()
    assert torch.allclose(model.transition_matrix(), target, atol=0.1)
