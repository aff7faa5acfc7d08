"""Random tokens with repeated spans: what induction heads are measured on and trained by.

A span ``s`` of uniform random tokens written twice, ``s s``, has a second copy that only
copying can predict: the token after the previous occurrence of the current token is the
next one. That is the induction mechanism (Olsson et al. 2022), and random tokens rule
out every other source of the prediction (no bigram statistics to lean on).

* :func:`repeated_random_tokens` -- the evaluation batch ``[prefix?, r_1..r_T, r_1..r_T]``
  (``decoding_gpt.heads`` scores induction heads on it, homework 4 uses it);
* :func:`random_tokens` -- uniform noise rows, the background of a synthetic run;
* :func:`plant_repeated_spans` -- a training mixture: some rows of a token stream get a
  repeated span of random length at a random offset, so that no head attending a fixed
  distance back can stand in for induction.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor


def repeated_random_tokens(
    d_vocab: int,
    seq_len: int,
    batch: int,
    seed: int = 0,
    prefix: int | None = None,
    token_ids: Int[Tensor, " n"] | None = None,
) -> Int[Tensor, "batch pos"]:
    """``[prefix?, r_1..r_T, r_1..r_T]`` with ``r`` uniform in ``[0, d_vocab)``, seeded.

    ``T = seq_len``; ``prefix`` (e.g. a BOS id) is prepended when given, so the result has
    ``2 T`` or ``2 T + 1`` positions. With ``token_ids``, ``r`` is drawn uniformly from
    those ids instead (e.g. the tokens a model's training text contains: a token it never
    saw has an embedding no training step moved).
    """
    gen = torch.Generator().manual_seed(seed)
    if token_ids is None:
        r = torch.randint(0, d_vocab, (batch, seq_len), generator=gen)
    else:
        token_ids = torch.as_tensor(token_ids).flatten()
        if token_ids.numel() == 0 or token_ids.min() < 0 or token_ids.max() >= d_vocab:
            raise ValueError(f"token_ids must be a non-empty set of ids in [0, {d_vocab})")
        r = token_ids[torch.randint(0, token_ids.numel(), (batch, seq_len), generator=gen)]
    tokens = torch.cat([r, r], dim=1)
    if prefix is not None:
        tokens = torch.cat([torch.full((batch, 1), prefix), tokens], dim=1)
    return tokens


def _token_dtype(d_vocab: int) -> type:
    return np.uint16 if d_vocab <= 2**16 else np.int64


def random_tokens(n_rows: int, n_ctx: int, d_vocab: int, seed: int) -> np.ndarray:
    """Uniform random token ids ``[n_rows, n_ctx]`` in ``[0, d_vocab)`` (seeded numpy)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, d_vocab, size=(n_rows, n_ctx)).astype(_token_dtype(d_vocab))


def plant_repeated_spans(
    stream: np.ndarray,
    n_ctx: int,
    d_vocab: int,
    repeat_fraction: float,
    seed: int,
    *,
    min_span: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into rows ``[n_rows, n_ctx]`` and plant a repeated span in some.

    In a ``repeat_fraction`` of the rows, a random span ``s`` (uniform tokens, length
    ``L`` uniform in ``[min_span, n_ctx // 2]``) is written twice in a row, ``s s``, at a
    uniform offset; the rest of the row is left as it was. Because ``L`` and the offset
    vary, only a real induction mechanism predicts the second copy. Rows are chosen by a
    seeded generator, so the mixture is reproducible.

    Returns ``(rows, mask)``: ``mask [n_rows, n_ctx]`` marks the tokens copying predicts,
    the second copy without its first token (which nothing predicts).
    """
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1], got {repeat_fraction}")
    n_rows = len(stream) // n_ctx
    if n_rows == 0:
        raise ValueError(f"a stream of {len(stream)} tokens holds no row of n_ctx={n_ctx}")
    if not 2 <= min_span <= n_ctx // 2:
        raise ValueError(f"need 2 <= min_span <= n_ctx // 2 = {n_ctx // 2}, got {min_span}")
    rows = np.array(stream[: n_rows * n_ctx]).reshape(n_rows, n_ctx)
    mask = np.zeros(rows.shape, dtype=bool)
    rng = np.random.default_rng(seed)
    for row in np.flatnonzero(rng.random(n_rows) < repeat_fraction):
        span = int(rng.integers(min_span, n_ctx // 2 + 1))
        start = int(rng.integers(0, n_ctx - 2 * span + 1))
        s = rng.integers(0, d_vocab, size=span)
        rows[row, start : start + span] = s
        rows[row, start + span : start + 2 * span] = s
        mask[row, start + span + 1 : start + 2 * span] = True
    return rows, mask
