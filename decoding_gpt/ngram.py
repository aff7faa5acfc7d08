"""Markov chains and n-gram language models.

A bigram model is a Markov chain on tokens: the next token depends only on the current
one, through a row-stochastic transition matrix

    M[i, j] = P(x_{t+1} = j | x_t = i),      M[i, :] >= 0,   sum_j M[i, j] = 1.

Estimated from a corpus, ``M[i, j] = c(i, j) / c(i)`` with ``c(i, j)`` the number of
times ``j`` follows ``i``. With a word vocabulary of V = 35k, a dense ``V x V`` float
matrix is 5 GB while the corpus holds at most (number of tokens) distinct bigrams, so the
counts here are always *sparse* (``torch.sparse_coo_tensor``); a dense matrix is built
only when asked for and only for small V.

Empty rows (a token never followed by anything, e.g. the last token of the corpus)
stay all-zero after normalisation: dividing by a zero row sum would give NaN. Such a
chain is sub-stochastic; :class:`MarkovChain` refuses to step out of such a *dead end*
unless told to restart (see :meth:`MarkovChain.sample`).

A distribution ``pi`` over states is *stationary* if ``pi M = pi``: a LEFT eigenvector
of ``M`` with eigenvalue 1, i.e. an eigenvector of ``M^T``. (The right eigenvector for
eigenvalue 1 is the all-ones vector for every stochastic matrix and says nothing.)

Then: n-gram models for n > 2 (counts keyed by context tuple) and their parameter
blow-up ``V^(n-1) (V-1)``; perplexity ``exp(mean NLL)``; the bigram chain as a bias-free
``nn.Linear(V, V)`` on one-hot inputs trained by gradient descent (its softmax rows tend
to the count-normalised rows); and a rank-r chain ``V -> r -> V``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

DENSE_LIMIT = 4096  # largest V for which we build a dense V x V matrix (64 MB in float32)


def _as_ids(ids: Sequence[int] | Tensor, vocab_size: int | None = None) -> Int[Tensor, " n"]:
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if vocab_size is not None and ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}); got range "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


# --------------------------------------------------------------------------------------
# Sparse bigram counts and normalisation
# --------------------------------------------------------------------------------------
def bigram_counts(ids: Sequence[int] | Tensor, vocab_size: int) -> Float[Tensor, "V V"]:
    """Sparse ``V x V`` matrix of counts ``c(i, j) = #{t : x_t = i, x_{t+1} = j}``.

    Returns a coalesced ``torch.sparse_coo_tensor`` (float64) storing one entry per
    *distinct observed* bigram, so memory grows with the corpus, not with ``V^2``.
    """
    ids = _as_ids(ids, vocab_size)
    if ids.numel() < 2:
        raise ValueError("need at least two tokens to count a bigram")
    # encode each pair (i, j) as the single integer i * V + j, then count distinct codes
    codes, counts = torch.unique(ids[:-1] * vocab_size + ids[1:], return_counts=True)
    indices = torch.stack([codes // vocab_size, codes % vocab_size])
    size = (vocab_size, vocab_size)
    return torch.sparse_coo_tensor(
        indices, counts.double(), size, is_coalesced=True, check_invariants=True
    )


def row_sums(matrix: Tensor) -> Float[Tensor, " V"]:
    """Dense vector of row sums of a sparse or dense matrix."""
    if matrix.is_sparse:
        matrix = matrix.coalesce()
        out = torch.zeros(matrix.shape[0], dtype=matrix.dtype)
        return out.index_add_(0, matrix.indices()[0], matrix.values())
    return matrix.sum(dim=1)


def row_normalize(counts: Tensor) -> Tensor:
    """Divide each row by its sum; rows that sum to zero stay all-zero (never NaN).

    Works on sparse (returned sparse, same pattern) and dense matrices.
    """
    sums = row_sums(counts)
    if (sums < 0).any():
        raise ValueError("counts must be non-negative")
    if counts.is_sparse:
        counts = counts.coalesce()
        rows = counts.indices()[0]
        # a stored entry's row has a positive sum unless the entry itself is 0
        values = counts.values() / sums[rows].clamp_min(torch.finfo(sums.dtype).tiny)
        return torch.sparse_coo_tensor(
            counts.indices(), values, counts.shape, is_coalesced=True, check_invariants=True
        )
    safe = torch.where(sums > 0, sums, torch.ones_like(sums))
    return counts / safe[:, None]


def to_dense(matrix: Tensor, limit: int = DENSE_LIMIT) -> Tensor:
    """Densify, refusing matrices bigger than ``limit x limit`` (the 5 GB bug)."""
    if max(matrix.shape) > limit:
        raise ValueError(
            f"refusing to build a dense {tuple(matrix.shape)} matrix "
            f"({matrix.shape[0] * matrix.shape[1] * 8 / 1e9:.1f} GB in float64); keep it sparse"
        )
    return matrix.to_dense() if matrix.is_sparse else matrix


# --------------------------------------------------------------------------------------
# Markov chains: stationary distribution and sampling
# --------------------------------------------------------------------------------------
def check_stochastic(matrix: Tensor, atol: float = 1e-6) -> None:
    """Raise unless ``matrix`` is square, non-negative and its rows sum to 1."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a transition matrix is square; got shape {tuple(matrix.shape)}")
    values = matrix.coalesce().values() if matrix.is_sparse else matrix
    if (values < -atol).any():
        raise ValueError("a transition matrix has no negative entries")
    sums = row_sums(matrix)
    bad = torch.nonzero((sums - 1).abs() > atol).flatten()
    if bad.numel():
        raise ValueError(
            f"rows {bad[:5].tolist()} sum to {sums[bad[:5]].tolist()}, not 1"
            + (" (empty rows: dead ends have no stationary behaviour)" if (sums == 0).any() else "")
        )


def stationary_distribution(matrix: Float[Tensor, "V V"]) -> Float[Tensor, " V"]:
    """The stationary distribution ``pi`` with ``pi M = pi``, ``pi >= 0``, ``sum pi = 1``.

    ``pi`` is a LEFT eigenvector of ``M``: ``pi M = pi`` transposes to ``M^T pi^T = pi^T``,
    so we take the eigenvector of ``M^T`` whose eigenvalue is closest to 1. Eigenvectors
    come with an arbitrary scale (and sign), so we divide by the sum. For an irreducible
    chain the result is unique and positive (Perron-Frobenius); if the chain has several
    closed classes any mixture is stationary and we return the one the solver finds.
    Dense ``V <= DENSE_LIMIT`` only; use :func:`power_iteration` for large sparse chains.
    """
    check_stochastic(matrix)
    m = to_dense(matrix).double()
    eigenvalues, eigenvectors = torch.linalg.eig(m.T)
    k = int(torch.argmin((eigenvalues - 1).abs()))
    pi = eigenvectors[:, k].real
    pi = pi / pi.sum()
    if (pi < -1e-8).any():
        raise ValueError("the eigenvalue-1 eigenvector has mixed signs; is M stochastic?")
    pi = pi.clamp_min(0)
    return pi / pi.sum()


def power_iteration(
    matrix: Tensor, n_iter: int = 10_000, tol: float = 1e-12, lazy: bool = True
) -> Float[Tensor, " V"]:
    """Stationary distribution by repeating ``pi <- pi M`` from the uniform distribution.

    With ``lazy=True`` we iterate the lazy chain ``(I + M) / 2``, which has the same
    stationary distributions but converges also for periodic chains (where ``pi M^t``
    oscillates). Works on sparse matrices: each step is one sparse-vector product.
    """
    check_stochastic(matrix)
    m = matrix.double()
    pi = torch.full((matrix.shape[0],), 1.0 / matrix.shape[0], dtype=torch.float64)
    for _ in range(n_iter):
        step = (m.T @ pi[:, None]).squeeze(1) if m.is_sparse else pi @ m
        new = (pi + step) / 2 if lazy else step
        if (new - pi).abs().sum() < tol:
            return new / new.sum()
        pi = new
    return pi / pi.sum()


class MarkovChain:
    """A Markov chain on ``V`` states with a (sparse or small dense) transition matrix.

    ``initial`` is the distribution of the first state (default: uniform); it is also
    where :meth:`sample` restarts from a dead end when ``dead_end="restart"``.
    """

    def __init__(self, transition: Tensor, initial: Tensor | None = None) -> None:
        if transition.ndim != 2 or transition.shape[0] != transition.shape[1]:
            raise ValueError(f"transition matrix must be square; got {tuple(transition.shape)}")
        self.n_states = transition.shape[0]
        if not transition.is_sparse and self.n_states > DENSE_LIMIT:
            raise ValueError(
                f"a dense {self.n_states} x {self.n_states} transition matrix is too big; "
                "pass the sparse matrix from row_normalize(bigram_counts(...))"
            )
        sums = row_sums(transition)
        if ((sums - 1).abs() > 1e-6).logical_and(sums != 0).any():
            raise ValueError("each row must sum to 1 (or be empty, a dead end)")
        # compressed rows (CSR): state i's successors are entries crow[i]:crow[i+1] of the
        # row-sorted coalesced COO entries
        coo = (transition if transition.is_sparse else transition.to_sparse()).coalesce()
        rows, self._col = coo.indices()
        self._val = coo.values().double()
        self._crow = torch.zeros(self.n_states + 1, dtype=torch.long)
        self._crow[1:] = torch.bincount(rows, minlength=self.n_states).cumsum(0)
        if initial is None:
            initial = torch.full((self.n_states,), 1.0 / self.n_states, dtype=torch.float64)
        if initial.shape != (self.n_states,) or (initial < 0).any() or initial.sum() <= 0:
            raise ValueError("initial must be a non-negative vector of length V")
        self.initial = initial.double() / initial.sum()
        self.transition = transition

    @classmethod
    def from_ids(cls, ids: Sequence[int] | Tensor, vocab_size: int) -> MarkovChain:
        """The bigram chain of a token sequence, started from its unigram distribution."""
        ids = _as_ids(ids, vocab_size)
        unigram = torch.bincount(ids, minlength=vocab_size).double()
        return cls(row_normalize(bigram_counts(ids, vocab_size)), initial=unigram)

    def successors(self, state: int) -> tuple[Int[Tensor, " k"], Float[Tensor, " k"]]:
        """The states reachable in one step from ``state`` and their probabilities."""
        lo, hi = int(self._crow[state]), int(self._crow[state + 1])
        return self._col[lo:hi], self._val[lo:hi]

    def sample(
        self,
        n_steps: int,
        start: int | None = None,
        seed: int | None = None,
        dead_end: Literal["raise", "restart"] = "raise",
    ) -> list[int]:
        """A trajectory of ``n_steps`` states (the start included), reproducible by seed.

        At a state with no successors, ``dead_end="raise"`` raises ``ValueError`` and
        ``"restart"`` draws the next state from ``initial`` (as if a new document began).
        """
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if start is None:
            start = int(torch.multinomial(self.initial, 1, generator=gen))
        if not 0 <= start < self.n_states:
            raise ValueError(f"start state {start} is not in [0, {self.n_states})")
        states = [start]
        while len(states) < n_steps:
            cols, probs = self.successors(states[-1])
            if probs.numel() == 0 or probs.sum() <= 0:
                if dead_end == "raise":
                    raise ValueError(
                        f"state {states[-1]} has no successors (an empty row); "
                        "pass dead_end='restart' to restart from the initial distribution"
                    )
                states.append(int(torch.multinomial(self.initial, 1, generator=gen)))
            else:
                states.append(int(cols[torch.multinomial(probs, 1, generator=gen)]))
        return states

    def stationary_distribution(self) -> Float[Tensor, " V"]:
        if self.n_states <= DENSE_LIMIT:
            return stationary_distribution(self.transition)
        return power_iteration(self.transition)


# --------------------------------------------------------------------------------------
# n-gram models, parameter blow-up, perplexity
# --------------------------------------------------------------------------------------
class NGramModel:
    """An n-gram model: ``P(x_t | x_{t-n+1..t-1})`` from counts, with add-k smoothing.

        P_k(j | ctx) = (c(ctx, j) + k) / (c(ctx) + k V)

    Counts live in ``counts[ctx][j]`` with ``ctx`` a tuple of ``n - 1`` ids: only observed
    contexts are stored. ``n = 1`` is the unigram model (empty context).
    With ``k = 0`` an unseen (context, token) has probability 0 and an unseen context
    has no distribution at all; both give infinite NLL.
    """

    def __init__(self, n: int, vocab_size: int, k: float = 0.0) -> None:
        if n < 1 or vocab_size < 1 or k < 0:
            raise ValueError("need n >= 1, vocab_size >= 1 and k >= 0")
        self.n, self.vocab_size, self.k = n, vocab_size, k
        self.counts: dict[tuple[int, ...], Counter[int]] = defaultdict(Counter)
        self.context_totals: Counter[tuple[int, ...]] = Counter()

    def fit(self, ids: Sequence[int] | Tensor) -> NGramModel:
        ids = _as_ids(ids, self.vocab_size).tolist()
        # count whole n-grams at C speed (zip of shifted copies), then file them by context
        shifted = [ids[i : len(ids) - self.n + 1 + i] for i in range(self.n)]
        grams = Counter(zip(*shifted, strict=True))
        for gram, count in grams.items():
            self.counts[gram[:-1]][gram[-1]] += count
            self.context_totals[gram[:-1]] += count
        return self

    def prob(self, context: Sequence[int], token: int, k: float | None = None) -> float:
        k = self.k if k is None else k
        ctx = tuple(context)[len(context) - self.n + 1 :] if self.n > 1 else ()
        total = self.context_totals.get(ctx, 0)
        count = self.counts[ctx][token] if ctx in self.counts else 0
        denom = total + k * self.vocab_size
        return (count + k) / denom if denom > 0 else 0.0

    def log_probs(self, ids: Sequence[int] | Tensor, k: float | None = None) -> Float[Tensor, " m"]:
        """``log P(x_t | previous n-1)`` for every ``t >= n - 1`` (``-inf`` if impossible)."""
        ids = _as_ids(ids, self.vocab_size).tolist()
        out = []
        for t in range(self.n - 1, len(ids)):
            p = self.prob(ids[t - self.n + 1 : t], ids[t], k)
            out.append(math.log(p) if p > 0 else -math.inf)
        return torch.tensor(out, dtype=torch.float64)

    def n_observed_contexts(self) -> int:
        return len(self.counts)

    def n_stored_counts(self) -> int:
        """Number of distinct observed n-grams (what the dict actually stores)."""
        return sum(len(c) for c in self.counts.values())


class UniformModel:
    """Every token has probability ``1 / V``: the baseline with perplexity exactly ``V``."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def log_probs(self, ids: Sequence[int] | Tensor) -> Float[Tensor, " m"]:
        ids = _as_ids(ids, self.vocab_size)
        return torch.full((len(ids),), -math.log(self.vocab_size), dtype=torch.float64)


def perplexity(
    model: NGramModel | UniformModel, ids: Sequence[int] | Tensor, **kwargs: Any
) -> float:
    """``exp(-mean_t log P(x_t | context))``: the effective number of equally likely choices.

    ``kwargs`` go to ``model.log_probs`` (e.g. ``k=1`` for add-one smoothing).
    """
    return perplexity_from_log_probs(model.log_probs(ids, **kwargs))


def perplexity_from_log_probs(log_probs: Tensor) -> float:
    if log_probs.numel() == 0:
        raise ValueError("no predictions to score")
    return math.exp(-log_probs.double().mean().item())


def ngram_parameter_counts(
    ids: Sequence[int] | Tensor, vocab_size: int, max_n: int
) -> list[dict[str, int]]:
    """For n = 1..max_n: free parameters of a full n-gram table vs what the data fills.

    A table ``P(x_t | n-1 previous)`` has ``V^(n-1)`` contexts, each a distribution with
    ``V - 1`` free numbers. A corpus of N tokens has at most ``N - n + 1`` distinct n-grams,
    so for large n nearly all of the table is never observed.
    """
    ids = _as_ids(ids, vocab_size).tolist()
    rows = []
    for n in range(1, max_n + 1):
        grams = {tuple(ids[t : t + n]) for t in range(len(ids) - n + 1)}
        rows.append(
            {
                "n": n,
                "table_parameters": vocab_size ** (n - 1) * (vocab_size - 1),
                "observed_contexts": len({g[:-1] for g in grams}),
                "observed_ngrams": len(grams),
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# The chain as a neural network
# --------------------------------------------------------------------------------------
class LinearBigram(nn.Module):
    """A bigram model as a bias-free linear layer on one-hot inputs.

    ``logits = onehot(x) W^T``, so row ``i`` of ``W^T`` (column i of ``W``) holds the logits
    of the next token after ``i``, and ``softmax(W^T)[i]`` plays the role of ``M[i]``.
    Minimising cross-entropy makes each observed row tend to ``c(i, .) / c(i)``.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.linear = nn.Linear(vocab_size, vocab_size, bias=False)

    def forward(self, ids: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch V"]:
        one_hot = F.one_hot(ids, self.vocab_size).to(self.linear.weight.dtype)
        return self.linear(one_hot)

    def transition_matrix(self) -> Float[Tensor, "V V"]:
        """``softmax`` of the logits of every state: the learned ``M``."""
        return torch.softmax(self.linear.weight.T.detach(), dim=-1)


class LowRankBigram(nn.Module):
    """A rank-r bigram model: ``logits = E[x] U^T`` with ``E`` (V x r) and ``U`` (V x r).

    The logit matrix ``E U^T`` has rank at most ``r``, using ``2 V r`` parameters instead
    of ``V^2``: the same factorisation as a transformer's embed/unembed with no layers.
    """

    def __init__(self, vocab_size: int, rank: int) -> None:
        super().__init__()
        self.vocab_size, self.rank = vocab_size, rank
        self.embed = nn.Embedding(vocab_size, rank)
        self.unembed = nn.Linear(rank, vocab_size, bias=False)

    def forward(self, ids: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch V"]:
        return self.unembed(self.embed(ids))

    def transition_matrix(self) -> Float[Tensor, "V V"]:
        with torch.no_grad():
            return torch.softmax(self.forward(torch.arange(self.vocab_size)), dim=-1)


def bigram_nll(counts: Tensor) -> float:
    """Mean NLL of the count-normalised chain on its own training bigrams.

    ``-(1/N) sum_ij c(i,j) log(c(i,j)/c(i))``: the conditional entropy of the data, and the
    lowest training loss any bigram model (linear layer included) can reach.
    """
    counts = counts.coalesce() if counts.is_sparse else counts.to_sparse().coalesce()
    probs = row_normalize(counts).values()
    c = counts.values()
    keep = c > 0
    return float(-(c[keep] * probs[keep].log()).sum() / c.sum())


def fit_bigram_model(
    model: nn.Module,
    ids: Sequence[int] | Tensor,
    steps: int = 200,
    lr: float = 1.0,
    optimizer: Literal["sgd", "adam"] = "sgd",
    batch_size: int | None = None,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` (ids -> next-token logits) on the bigrams of ``ids``; return losses.

    ``batch_size=None`` is full-batch gradient descent on the mean cross-entropy over all
    ``N`` bigrams. We compute it over the *distinct* bigrams weighted by their counts,

        L = (1/N) sum_(i,j) c(i,j) * (-log softmax(model(i))_j),

    which is the same number and gradient with far fewer rows. With a ``batch_size``, each
    step draws that many bigrams uniformly with replacement (stochastic gradient descent).
    """
    ids = _as_ids(ids)
    if ids.numel() < 2:
        raise ValueError("need at least two tokens to train on bigrams")
    gen = torch.Generator().manual_seed(seed)
    opt_cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_cls(model.parameters(), lr=lr)
    vocab = int(ids.max()) + 1
    codes, weights = torch.unique(ids[:-1] * vocab + ids[1:], return_counts=True)
    pairs = torch.stack([codes // vocab, codes % vocab], dim=1)  # distinct (i, j), sorted
    weights = weights.float() / weights.sum()
    losses = []
    for _ in range(steps):
        if batch_size is None:
            nll = F.cross_entropy(model(pairs[:, 0]), pairs[:, 1], reduction="none")
            loss = (weights * nll).sum()
        else:
            pick = torch.randint(len(ids) - 1, (batch_size,), generator=gen)
            loss = F.cross_entropy(model(ids[pick]), ids[pick + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def loss_vs_rank(
    ids: Sequence[int] | Tensor,
    vocab_size: int,
    ranks: Sequence[int],
    steps: int = 150,
    lr: float = 0.1,
    seed: int = 0,
) -> list[float]:
    """Final full-batch training loss of a :class:`LowRankBigram` for each rank (Adam)."""
    out = []
    for r in ranks:
        torch.manual_seed(seed)
        model = LowRankBigram(vocab_size, r)
        out.append(fit_bigram_model(model, ids, steps=steps, lr=lr, optimizer="adam")[-1])
    return out
