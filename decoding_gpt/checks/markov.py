"""Checks of Markov-chain exercises shared by lecture 05 and homework 1.

:func:`brute_bigram_counts` is the loop both use as the counting reference, and
:func:`dense_numpy` reads a student's (possibly sparse) matrix.
:func:`check_stationary_distribution` compares the student's ``pi`` with an independent
reference, power iteration ``pi = e_0 M^500``, and with the defining equation
``pi M = pi``. Its mistakes are symptoms of ``pi`` rather than fixed wrong outputs (any
eigenvector of the wrong matrix, any scale), so its catalogue is a table of detectors:
``(name, detect(pi, want, M) -> message or None)``, tried in order; the first that fires
names the mistake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from decoding_gpt.checks import CheckError, compare_tensors, exercise, passed, to_numpy

__all__ = [
    "STATIONARY_MISTAKES",
    "brute_bigram_counts",
    "check_stationary_distribution",
    "dense_numpy",
]


def dense_numpy(value: object, name: str) -> np.ndarray:
    """A student's matrix as a dense NumPy array (sparse tensors are densified)."""
    if isinstance(value, torch.Tensor) and value.is_sparse:
        value = value.to_dense()
    return to_numpy(value, name)


def brute_bigram_counts(ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """``c[i, j] = #{t : ids[t] = i, ids[t+1] = j}`` by a plain loop."""
    counts = np.zeros((vocab_size, vocab_size))
    for i, j in zip(ids[:-1], ids[1:], strict=True):
        counts[i, j] += 1
    return counts


Detector = Callable[[np.ndarray, np.ndarray, np.ndarray], str | None]


def _right_eigenvector(pi: np.ndarray, want: np.ndarray, m: np.ndarray) -> str | None:
    """Uniform ``pi`` on a chain whose stationary distribution is not uniform."""
    n = len(pi)
    if np.allclose(pi, 1.0 / n, atol=1e-6) and not np.allclose(want, 1.0 / n, atol=1e-6):
        return (
            "pi is uniform: that is the RIGHT eigenvector of M (M 1 = 1 holds for every "
            "stochastic matrix). pi M = pi makes pi a LEFT eigenvector: use eig(M.T)."
        )
    return None


def _not_normalised(pi: np.ndarray, want: np.ndarray, m: np.ndarray) -> str | None:
    """``pi`` proportional to the answer (any scale, any sign) but not summing to 1."""
    total = pi.sum()
    if abs(total) < 1e-12 or abs(total - 1) <= 1e-6 or not np.allclose(pi / total, want, 1e-6):
        return None
    sign = " and has negative entries" if total < 0 else ""
    return (
        f"pi points the right way but sums to {total:.4g}{sign}: eigenvectors come with an "
        "arbitrary scale and sign (torch.linalg.eig returns unit NORM); divide by pi.sum() "
        "(not by its norm), which fixes the sign and the scale together."
    )


def _negative(pi: np.ndarray, want: np.ndarray, m: np.ndarray) -> str | None:
    if not (pi < -1e-9).any():
        return None
    return (
        f"pi has negative entries ({pi.min():.3g}): probabilities are >= 0. Either this is "
        "not the eigenvector of M.T with eigenvalue 1 (eig does not sort eigenvalues: pick "
        "the one closest to 1), or it was not divided by its sum."
    )


def _wrong_sum(pi: np.ndarray, want: np.ndarray, m: np.ndarray) -> str | None:
    if np.isclose(pi.sum(), 1.0, atol=1e-6):
        return None
    return (
        f"pi sums to {pi.sum():.4f}, not 1: eigenvectors come with an arbitrary scale "
        "(torch.linalg.eig returns unit NORM); divide by pi.sum()."
    )


def _not_stationary(pi: np.ndarray, want: np.ndarray, m: np.ndarray) -> str | None:
    if np.allclose(pi @ m, pi, atol=1e-6):
        return None
    return (
        "pi M != pi: pi is not stationary. Pick the eigenvector of M.T (a left eigenvector "
        "of M) whose eigenvalue is closest to 1 (argmin |lambda - 1|), its real part, "
        "divided by its sum."
    )


STATIONARY_MISTAKES: tuple[tuple[str, Detector], ...] = (
    ("right_eigenvector", _right_eigenvector),
    ("not_normalised", _not_normalised),
    ("negative_entries", _negative),
    ("wrong_sum", _wrong_sum),
    ("not_stationary", _not_stationary),
)


def _chain(n: int, seed: int) -> Float[Tensor, "n n"]:
    """A random row-stochastic matrix, skewed (entries cubed) so pi is far from uniform."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.rand(n, n, generator=gen, dtype=torch.float64) ** 3
    return m / m.sum(dim=1, keepdim=True)


@exercise
def check_stationary_distribution(
    fn: Callable[[Float[Tensor, "n n"]], Float[Tensor, " n"]],
) -> None:
    """``fn(M) -> pi``: the stationary distribution of a row-stochastic ``M`` (float64):
    ``pi M = pi``, ``pi >= 0``, ``sum(pi) = 1``.

    Checked on five random chains (3 to 8 states; all entries positive, so pi is unique)
    against power iteration ``pi = e_0 M^500``.
    """
    for n, seed in [(3, 0), (4, 0), (5, 1), (7, 1), (8, 2)]:
        m = _chain(n, seed)
        pi = to_numpy(
            fn(m.clone()),
            "pi",
            complex_hint="torch.linalg.eig returns complex eigenvectors; the stationary one "
            "is real, so take `.real` before normalising.",
        )
        if pi.shape != (n,):
            raise CheckError(f"pi has shape {pi.shape}, expected ({n},): one entry per state.")
        if np.isnan(pi).any():
            raise CheckError("pi contains NaN.")
        want = torch.linalg.matrix_power(m, 500)[0].numpy()
        for _name, detect in STATIONARY_MISTAKES:
            message = detect(pi, want, m.numpy())
            if message is not None:
                raise CheckError(message)
        compare_tensors(
            pi,
            want,
            f"pi for a {n}-state chain",
            atol=1e-6,
            hint="Take the eigenvector of M.T whose eigenvalue is closest to 1 "
            "(argmin |lambda - 1|), its real part, divided by its sum.",
        )
    passed("check_stationary_distribution")
