r"""Checks for the exercises of lecture 11 (attention patterns and induction heads).

Each ``check_*`` runs the student's function on seeded inputs (random causal attention
patterns over a small vocabulary, so that repeated tokens are common; random weight
matrices with the shapes of a small model's) and compares the result with the package's
reference in :mod:`decoding_gpt.heads`, itself tested against TransformerLens and brute
force. When they differ, the message first names the classic mistake whose output the
answer reproduces.

1. :func:`check_duplicate_token_score` -- mean attention to earlier copies of the query's
   token, over the queries that have one.
2. :func:`check_k_composition_score` -- ``||W_OV^A (W_QK^B)^T||_F / (||W_OV^A||_F
   ||W_QK^B||_F)``.
3. :func:`check_copying_score` -- ``sum Re(lambda) / sum |lambda|`` over the eigenvalues of
   the full OV circuit ``W_E W_V W_O W_U``.
4. :func:`check_induction_qk_circuit` -- the token-to-token QK circuit of an induction head
   whose keys read a previous-token head: ``(W_E W_Q) (W_E W_V^p W_O^p W_K)^T``.
5. :func:`check_in_context_learning_score` -- Olsson et al.'s score from per-position
   losses: the mean loss at ``late .. late + width - 1`` minus the mean at
   ``early .. early + width - 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformer_lens.FactoredMatrix import FactoredMatrix

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_scalar,
)
from decoding_gpt.heads import composition_score, duplicate_token_score, induction_score
from decoding_gpt.incontext import in_context_learning_score

__all__ = [
    "check_copying_score",
    "check_in_context_learning_score",
    "check_duplicate_token_score",
    "check_induction_qk_circuit",
    "check_k_composition_score",
]


def _patterns(seed: int, batch: int, heads: int, n: int) -> Tensor:
    """Random causal attention patterns ``[batch, head, q, k]`` (rows sum to 1)."""
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(batch, heads, n, n, generator=gen, dtype=torch.float64)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


# ----------------------------------------------------------------------------- exercise 1
def _dup_with_self(pattern: Tensor, tokens: Tensor) -> Tensor:
    same = tokens[:, :, None] == tokens[:, None, :]
    ideal = same & torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
    return (pattern * ideal[:, None]).sum(-1).mean((0, -1))


def _dup_every_query(pattern: Tensor, tokens: Tensor) -> Tensor:
    n = tokens.shape[1]
    ideal = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n).tril(-1).bool()
    return (pattern * ideal[:, None]).sum(-1).mean((0, -1))


def _dup_per_batch_mean(pattern: Tensor, tokens: Tensor) -> Tensor:
    return torch.stack(
        [duplicate_token_score(pattern[b : b + 1], tokens[b : b + 1]) for b in range(len(tokens))]
    ).mean(0)


DUPLICATE_MISTAKES = [
    Mistake(
        "induction",
        induction_score,
        "this is the INDUCTION score: it puts the mass on keys whose PREVIOUS token equals "
        "the query's token. A duplicate-token head attends to the earlier copy itself: keys "
        "k < q with t_k == t_q.",
    ),
    Mistake(
        "self",
        _dup_with_self,
        "the query's own position counts as a duplicate here (k <= q): every token equals "
        "itself, so this rewards attending to yourself. Use only earlier keys, k < q "
        "(torch.tril(..., diagonal=-1)).",
    ),
    Mistake(
        "every query",
        _dup_every_query,
        "this averages over every query, counting 0 for queries whose token has no earlier "
        "copy; the score is the mean over the queries that HAVE an earlier copy (a head "
        "cannot attend to a duplicate that is not there).",
    ),
    Mistake(
        "per-sequence mean",
        _dup_per_batch_mean,
        "this averages the score of each sequence; the reference pools every (sequence, "
        "query) row that has an earlier copy, and takes one mean over all of them.",
    ),
]


@exercise
def check_duplicate_token_score(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``fn(pattern [batch, head, q, k], tokens [batch, pos]) -> [head]``, compared with
    :func:`decoding_gpt.heads.duplicate_token_score` on random causal patterns over small
    vocabularies (some queries have several earlier copies, some none)."""
    for seed, (batch, heads, n, vocab) in enumerate([(3, 4, 12, 5), (2, 3, 9, 3), (4, 2, 16, 7)]):
        pattern = _patterns(seed, batch, heads, n)
        gen = torch.Generator().manual_seed(100 + seed)
        tokens = torch.randint(0, vocab, (batch, n), generator=gen)
        got = fn(pattern.clone(), tokens.clone())
        judge(
            got,
            duplicate_token_score(pattern, tokens),
            DUPLICATE_MISTAKES,
            (pattern, tokens),
            what=f"duplicate-token scores ({heads} heads)",
            atol=1e-6,
            hint="For each query q, sum pattern[q, k] over earlier keys k < q with the same "
            "token; average over the (sequence, query) rows that have such a key.",
        )
    passed("check_duplicate_token_score")


# ----------------------------------------------------------------------------- exercise 2
def _frob_ratio(A: Tensor, B: Tensor) -> float:
    return float(composition_score(A, B))


COMPOSITION_MISTAKES = [
    Mistake(
        "Q-composition",
        lambda ov, wq, wk: _frob_ratio(ov, wq @ wk.T),
        "this is the Q-composition score ||W_OV^A W_QK^B||: head B's QUERIES read head A's "
        "output that way. Its KEYS read x_k W_OV^A, and the attention score is x_q W_QK^B "
        "(x_k W_OV^A)^T, so K-composition multiplies W_OV^A by (W_QK^B)^T = W_K W_Q^T.",
    ),
    Mistake(
        "unnormalised",
        lambda ov, wq, wk: float(torch.linalg.matrix_norm(ov @ (wq @ wk.T).T)),
        "this is ||W_OV^A (W_QK^B)^T||_F alone; divide by ||W_OV^A||_F ||W_QK^B||_F so that "
        "the score is in [0, 1] and heads of different sizes compare.",
    ),
    Mistake(
        "spectral",
        lambda ov, wq, wk: float(
            torch.linalg.matrix_norm(ov @ (wq @ wk.T).T, 2)
            / (torch.linalg.matrix_norm(ov, 2) * torch.linalg.matrix_norm(wq @ wk.T, 2))
        ),
        "these are spectral norms (ord=2, the largest singular value); the composition score "
        "uses Frobenius norms (the default of torch.linalg.matrix_norm, ord='fro').",
    ),
]


@exercise
def check_k_composition_score(fn: Callable[[Tensor, Tensor, Tensor], float]) -> None:
    """``fn(W_OV_A [d_model, d_model], W_Q_B [d_model, d_head], W_K_B [d_model, d_head])``
    -> the K-composition score, compared with :func:`decoding_gpt.heads.composition_score`
    applied to ``(W_OV^A, (W_Q W_K^T)^T)``, on random low-rank heads."""
    gen = torch.Generator().manual_seed(11)
    for d_model, d_head in [(16, 4), (24, 6), (12, 3)]:
        W_V, W_O, W_Q, W_K = (
            torch.randn(*shape, generator=gen, dtype=torch.float64)
            for shape in [
                (d_model, d_head),
                (d_head, d_model),
                (d_model, d_head),
                (d_model, d_head),
            ]
        )
        W_O = W_O + 0.5 * W_V.T  # an OV with some structure, so the norms differ from random
        ov = W_V @ W_O
        got = to_scalar(fn(ov.clone(), W_Q.clone(), W_K.clone()), "k_composition_score")
        want = _frob_ratio(ov, (W_Q @ W_K.T).T)
        judge(
            got,
            want,
            COMPOSITION_MISTAKES,
            (ov, W_Q, W_K),
            what=f"K-composition score (d_model {d_model}, d_head {d_head})",
            atol=1e-6,
            hint="||W_OV^A (W_Q W_K^T)^T||_F / (||W_OV^A||_F ||W_Q W_K^T||_F).",
        )
    passed("check_k_composition_score")


# ----------------------------------------------------------------------------- exercise 3
def _copying(W_E: Tensor, W_V: Tensor, W_O: Tensor, W_U: Tensor) -> float:
    eig = FactoredMatrix(W_E @ W_V, W_O @ W_U).eigenvalues
    return float(eig.real.sum() / eig.abs().sum())


def _nonzero_eigenvalues(W_E: Tensor, W_V: Tensor, W_O: Tensor, W_U: Tensor) -> Tensor:
    return torch.linalg.eigvals(W_O @ W_U @ W_E @ W_V)  # the d_head nonzero ones


COPYING_MISTAKES = [
    Mistake(
        "no embeddings",
        lambda we, wv, wo, wu: float(
            torch.linalg.eigvals(wv @ wo).real.sum() / torch.linalg.eigvals(wv @ wo).abs().sum()
        ),
        "these are the eigenvalues of W_V W_O alone, a map of the residual stream to itself; "
        "copying is about TOKENS: the attended token's embedding (W_E) goes through the head "
        "(W_V W_O) and out to the logits (W_U). Use the full circuit W_E W_V W_O W_U.",
    ),
    Mistake(
        "singular values",
        lambda we, wv, wo, wu: 1.0,
        "the answer is 1: with singular values (always >= 0), or with |lambda| in the "
        "numerator, sum / sum |.| is 1 for every head. Take the REAL parts of the "
        "eigenvalues (torch.linalg.eigvals) in the numerator.",
    ),
    Mistake(
        "fraction positive",
        lambda we, wv, wo, wu: float(
            (_nonzero_eigenvalues(we, wv, wo, wu).real > 0).double().mean()
        ),
        "this is the fraction of eigenvalues with a positive real part; the score weighs each "
        "eigenvalue by its size: sum Re(lambda) / sum |lambda|.",
    ),
    Mistake(
        "mean real part",
        lambda we, wv, wo, wu: float(_nonzero_eigenvalues(we, wv, wo, wu).real.mean()),
        "this is the mean real part of the eigenvalues, which depends on the scale of the "
        "weights; divide the sum of the real parts by the sum of the absolute values.",
    ),
]


@exercise
def check_copying_score(fn: Callable[[Tensor, Tensor, Tensor, Tensor], float]) -> None:
    """``fn(W_E [d_vocab, d_model], W_V [d_model, d_head], W_O [d_head, d_model],
    W_U [d_model, d_vocab]) -> float``, compared with the eigenvalues of the full OV
    circuit (:class:`transformer_lens.FactoredMatrix`), on a copying head, an
    anti-copying head and random heads."""
    gen = torch.Generator().manual_seed(3)
    for kind, d_vocab, d_model, d_head in [
        ("random", 40, 16, 4),  # random heads first: there every mistake gives its own value
        ("random", 20, 8, 3),
        ("copying", 30, 12, 4),
        ("anti-copying", 25, 10, 5),
    ]:
        W_E = torch.randn(d_vocab, d_model, generator=gen, dtype=torch.float64)
        W_V = torch.randn(d_model, d_head, generator=gen, dtype=torch.float64)
        W_O = torch.randn(d_head, d_model, generator=gen, dtype=torch.float64)
        W_U = torch.randn(d_model, d_vocab, generator=gen, dtype=torch.float64)
        if kind != "random":  # W_O ~ +-W_V^T and W_U ~ W_E^T: the head maps a token to itself
            sign = 1.0 if kind == "copying" else -1.0
            W_O = sign * W_V.T + 0.3 * W_O
            W_U = W_E.T + 0.3 * W_U
        args = (W_E, W_V, W_O, W_U)
        got = to_scalar(fn(*(w.clone() for w in args)), "copying_score")
        want = _copying(*args)
        if not -1 - 1e-6 <= got <= 1 + 1e-6:
            raise CheckError(
                f"the copying score of a {kind} head is {got:.4f}, outside [-1, 1]: it is "
                "sum Re(lambda) / sum |lambda|, and |Re(lambda)| <= |lambda|."
            )
        judge(
            got,
            want,
            COPYING_MISTAKES,
            args,
            what=f"copying score of a {kind} head",
            atol=1e-5,
            hint="Eigenvalues of W_E W_V W_O W_U (or of the small W_O W_U W_E W_V, which has "
            "the same nonzero ones); then sum of real parts / sum of absolute values.",
        )
    passed("check_copying_score")


# ----------------------------------------------------------------------------- exercise 4
def _induction_qk(W_E: Tensor, W_V: Tensor, W_O: Tensor, W_Q: Tensor, W_K: Tensor) -> Tensor:
    return (W_E @ W_Q) @ (W_E @ W_V @ W_O @ W_K).T


QK_MISTAKES = [
    Mistake(
        "no previous-token head",
        lambda we, wv, wo, wq, wk: (we @ wq) @ (we @ wk).T,
        "this is the plain token QK circuit W_E W_Q W_K^T W_E^T: the key reads the token AT "
        "its position. An induction head's key reads what the previous-token head wrote "
        "there, the previous token's embedding moved by its OV circuit: W_E W_V^p W_O^p W_K.",
    ),
    Mistake(
        "transposed",
        lambda we, wv, wo, wq, wk: _induction_qk(we, wv, wo, wq, wk).T,
        "rows and columns are swapped: rows are the QUERY token (the current token), "
        "columns the KEY token (the token before the key position).",
    ),
    Mistake(
        "OV on the query side",
        lambda we, wv, wo, wq, wk: (we @ wv @ wo @ wq) @ (we @ wk).T,
        "the previous-token head's OV is on the query side; it acts on the KEY side: the key "
        "position's residual stream holds W_E[previous token] W_V^p W_O^p.",
    ),
    Mistake(
        "OV on both sides",
        lambda we, wv, wo, wq, wk: (we @ wv @ wo @ wq) @ (we @ wv @ wo @ wk).T,
        "the previous-token head's OV is on both sides; the query is the current token "
        "itself (W_E W_Q), only the key reads the previous-token head.",
    ),
]


@exercise
def check_induction_qk_circuit(
    fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
) -> None:
    """``fn(W_E [d_vocab, d_model], W_V_prev [d_model, d_head], W_O_prev [d_head, d_model],
    W_Q [d_model, d_head], W_K [d_model, d_head]) -> [d_vocab, d_vocab]``: entry ``[i, j]``
    is the attention score (before scaling and softmax) of a query holding token ``i`` for a
    key whose previous token was ``j``, compared with ``(W_E W_Q)(W_E W_V W_O W_K)^T``."""
    gen = torch.Generator().manual_seed(4)
    for d_vocab, d_model, d_head in [(20, 12, 4), (15, 8, 2), (9, 16, 8)]:
        args = tuple(
            torch.randn(*shape, generator=gen, dtype=torch.float64)
            for shape in [
                (d_vocab, d_model),
                (d_model, d_head),
                (d_head, d_model),
                (d_model, d_head),
                (d_model, d_head),
            ]
        )
        got = fn(*(a.clone() for a in args))
        if isinstance(got, FactoredMatrix):
            got = got.AB
        if not isinstance(got, Tensor):
            raise CheckError(f"return a [d_vocab, d_vocab] tensor, got {type(got).__name__}.")
        want = _induction_qk(*args)
        if tuple(got.shape) != tuple(want.shape):
            compare_tensors(got, want, "QK circuit")  # reports the shape
        judge(
            got,
            want,
            QK_MISTAKES,
            args,
            what=f"induction QK circuit (d_vocab {d_vocab})",
            atol=1e-8 * float(want.abs().max()) + 1e-9,
            hint="Query side W_E W_Q; key side W_E W_V_prev W_O_prev W_K; entry [i, j] is "
            "(query of token i) . (key of previous token j).",
        )
    passed("check_induction_qk_circuit")


# ----------------------------------------------------------------------------- exercise 5
def _window(losses: Tensor, start: int, width: int) -> Tensor:
    return losses[start : start + width].mean()


ICL_MISTAKES = [
    Mistake(
        "early minus late",
        lambda losses, late, early, width: float(
            _window(losses, early, width) - _window(losses, late, width)
        ),
        "the sign is flipped: the score is the LATE loss minus the EARLY one, so that a model "
        "the context helps gets a negative score.",
    ),
    Mistake(
        "one position each",
        lambda losses, late, early, width: float(losses[late] - losses[early]),
        "these are single positions; average the `width` positions starting at each index "
        "(one position is a noisy estimate).",
    ),
    Mistake(
        "windows ending at the index",
        lambda losses, late, early, width: float(
            losses[late - width + 1 : late + 1].mean()
            - losses[early - width + 1 : early + 1].mean()
        ),
        "the windows end at `late` and `early`; they start there: losses[late : late + width].",
    ),
]


@exercise
def check_in_context_learning_score(fn: Callable[[Tensor, int, int, int], float]) -> None:
    """``fn(losses [pos], late, early, width) -> float``, compared with
    :func:`decoding_gpt.incontext.in_context_learning_score` on random loss curves that
    fall with position, as a model's do when the context helps."""
    gen = torch.Generator().manual_seed(5)
    for n, late, early, width in [(60, 40, 12, 10), (256, 240, 20, 10), (30, 20, 5, 3)]:
        losses = 3.0 - torch.linspace(0, 1.5, n) + 0.3 * torch.rand(n, generator=gen)
        got = to_scalar(fn(losses.clone(), late, early, width), "in_context_learning_score")
        judge(
            got,
            in_context_learning_score(losses, late, early, width),
            ICL_MISTAKES,
            (losses, late, early, width),
            what=f"ICL score (late {late}, early {early}, width {width})",
            atol=1e-6,
            hint="losses[late : late + width].mean() - losses[early : early + width].mean().",
        )
    passed("check_in_context_learning_score")
