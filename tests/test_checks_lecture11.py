"""Exercise checks of lecture 11: accept the reference, reject known-wrong answers.

Each wrong implementation is a mistake students make (the induction score for the
duplicate one, the query itself counted as a duplicate, Q- for K-composition, singular
values for eigenvalues, the previous-token head's OV on the wrong side); the test pins the
part of the message that names the mistake. The accepted answers are written
independently of :mod:`decoding_gpt.heads` (loops, dense eigenvalues). A stub of the
student edition is refused as not attempted.
"""

from __future__ import annotations

import pytest
import torch

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture11 as l11


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `the exercise` here.")


@pytest.mark.parametrize(
    "check",
    [
        l11.check_duplicate_token_score,
        l11.check_k_composition_score,
        l11.check_copying_score,
        l11.check_induction_qk_circuit,
        l11.check_in_context_learning_score,
    ],
)
def test_stub_is_not_attempted(check):
    with pytest.raises(NotAttempted, match="not attempted"):
        check(_stub)


# ------------------------------------------------------------------- duplicate-token score
def _dup_loop(pattern, tokens):
    """Brute force: one list of (sequence, query) rows with an earlier copy."""
    b, h, n, _ = pattern.shape
    rows = []
    for i in range(b):
        for q in range(n):
            keys = [k for k in range(q) if tokens[i, k] == tokens[i, q]]
            if keys:
                rows.append(pattern[i, :, q, keys].sum(-1))
    return torch.stack(rows).mean(0)


def test_duplicate_accepts_a_loop():
    l11.check_duplicate_token_score(_dup_loop)


def _dup_self(pattern, tokens):
    n = tokens.shape[1]
    ideal = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n).tril().bool()
    return (pattern * ideal[:, None]).sum(-1).mean((0, -1))


def _dup_every(pattern, tokens):
    n = tokens.shape[1]
    ideal = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n).tril(-1).bool()
    return (pattern * ideal[:, None]).sum(-1).mean((0, -1))


def _dup_induction(pattern, tokens):
    n = tokens.shape[1]
    ideal = torch.zeros(tokens.shape[0], n, n, dtype=torch.bool)
    ideal[:, :, 1:] = (tokens[:, :, None] == tokens[:, None, :])[:, :, :-1]
    ideal &= torch.ones(n, n).tril().bool()
    mass = (pattern * ideal[:, None]).sum(-1)  # [b, h, q]
    rows = ideal.any(-1)  # [b, q]
    return mass.permute(1, 0, 2)[:, rows].mean(-1)


def _dup_per_sequence(pattern, tokens):
    return torch.stack(
        [_dup_loop(pattern[i : i + 1], tokens[i : i + 1]) for i in range(len(tokens))]
    ).mean(0)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_dup_self, "counts as a duplicate"),
        (_dup_every, "averages over every query"),
        (_dup_induction, "INDUCTION score"),
        (_dup_per_sequence, "averages the score of each sequence"),
        (lambda p, t: _dup_loop(p, t)[:-1], "shape"),
    ],
)
def test_duplicate_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l11.check_duplicate_token_score(wrong)


# --------------------------------------------------------------------- K-composition score
def _k_comp(ov, wq, wk):
    qk_t = wk @ wq.T  # (W_Q W_K^T)^T
    return float(
        (ov @ qk_t).pow(2).sum().sqrt() / (ov.pow(2).sum().sqrt() * qk_t.pow(2).sum().sqrt())
    )


def test_k_composition_accepts_reference():
    l11.check_k_composition_score(_k_comp)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda ov, wq, wk: _k_comp(ov, wk, wq), "Q-composition"),
        (
            lambda ov, wq, wk: float((ov @ (wk @ wq.T)).pow(2).sum().sqrt()),
            "alone; divide",
        ),
        (
            lambda ov, wq, wk: float(
                torch.linalg.matrix_norm(ov @ (wk @ wq.T), 2)
                / (torch.linalg.matrix_norm(ov, 2) * torch.linalg.matrix_norm(wk @ wq.T, 2))
            ),
            "spectral norms",
        ),
        (lambda ov, wq, wk: 0.5, "wrong values"),
    ],
)
def test_k_composition_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l11.check_k_composition_score(wrong)


# ---------------------------------------------------------------------------- copying score
def _copying_dense(W_E, W_V, W_O, W_U):
    """Eigenvalues of the full d_vocab x d_vocab matrix; the zero ones add nothing."""
    eig = torch.linalg.eigvals(W_E @ W_V @ W_O @ W_U)
    return float(eig.real.sum() / eig.abs().sum())


def test_copying_accepts_dense_eigenvalues():
    l11.check_copying_score(_copying_dense)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (
            lambda we, wv, wo, wu: _copying_dense(
                torch.eye(wv.shape[0], dtype=wv.dtype),
                wv,
                wo,
                torch.eye(wv.shape[0], dtype=wv.dtype),
            ),
            "W_V W_O alone",
        ),
        (
            lambda we, wv, wo, wu: float(
                torch.linalg.svdvals(we @ wv @ wo @ wu).sum()
                / torch.linalg.svdvals(we @ wv @ wo @ wu).sum()
            ),
            "singular values",
        ),
        (
            lambda we, wv, wo, wu: float(
                (torch.linalg.eigvals(wo @ wu @ we @ wv).real > 0).double().mean()
            ),
            "fraction of eigenvalues",
        ),
        (
            lambda we, wv, wo, wu: float(torch.linalg.eigvals(wo @ wu @ we @ wv).real.mean()),
            "mean real part|outside",
        ),
        (lambda we, wv, wo, wu: -_copying_dense(we, wv, wo, wu), "wrong values"),
    ],
)
def test_copying_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l11.check_copying_score(wrong)


# ------------------------------------------------------------------- induction QK circuit
def _qk_loop(W_E, W_V, W_O, W_Q, W_K):
    V = W_E.shape[0]
    out = torch.empty(V, V, dtype=W_E.dtype)
    for i in range(V):
        q = W_E[i] @ W_Q
        for j in range(V):
            out[i, j] = q @ (W_E[j] @ W_V @ W_O @ W_K)
    return out


def test_qk_accepts_a_loop():
    l11.check_induction_qk_circuit(_qk_loop)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda we, wv, wo, wq, wk: (we @ wq) @ (we @ wk).T, "plain token QK circuit"),
        (lambda we, wv, wo, wq, wk: _qk_loop(we, wv, wo, wq, wk).T, "swapped"),
        (lambda we, wv, wo, wq, wk: (we @ wv @ wo @ wq) @ (we @ wk).T, "on the query side"),
        (lambda we, wv, wo, wq, wk: (we @ wv @ wo @ wq) @ (we @ wv @ wo @ wk).T, "on both sides"),
        (lambda we, wv, wo, wq, wk: _qk_loop(we, wv, wo, wq, wk)[:-1], "shape"),
    ],
)
def test_qk_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l11.check_induction_qk_circuit(wrong)


# ------------------------------------------------------------------------------ ICL score
def _icl_loop(losses, late, early, width):
    late_mean = sum(float(losses[late + i]) for i in range(width)) / width
    early_mean = sum(float(losses[early + i]) for i in range(width)) / width
    return late_mean - early_mean


def test_icl_accepts_a_loop():
    l11.check_in_context_learning_score(_icl_loop)


@pytest.mark.parametrize(
    ("wrong", "names"),
    [
        (lambda losses, late, early, width: -_icl_loop(losses, late, early, width), "flipped"),
        (lambda losses, late, early, width: float(losses[late] - losses[early]), "single"),
        (
            lambda losses, late, early, width: float(
                losses[late - width + 1 : late + 1].mean()
                - losses[early - width + 1 : early + 1].mean()
            ),
            "start there",
        ),
    ],
)
def test_icl_names_the_mistake(wrong, names):
    with pytest.raises(CheckError, match=names):
        l11.check_in_context_learning_score(wrong)
