"""What attention heads do: pattern scores, induction, composition, copying, full circuits.

**Pattern scores.** A head's pattern ``A[q, k]`` (softmax over keys ``k <= q``, rows sum
to 1) can be scored against an ideal pattern; each score is the mean attention mass a
query puts on the keys the ideal picks, so 1 is perfect and ``1/(q+1)`` is uniform:

- previous-token: mass on ``k = q - 1`` (queries ``q >= 1``);
- first-token (BOS / attention sink): mass on ``k = 0`` (queries ``q >= 1``);
- duplicate-token: mass on earlier ``k < q`` with ``t_k = t_q`` (queries with one);
- induction: mass on ``k`` with ``t_{k-1} = t_q``, ``1 <= k <= q`` (the token *after* an
  earlier copy of the current token; queries with one).

**Repeated random tokens** (Olsson et al., 2022). On ``[r_1..r_T, r_1..r_T]`` with random
``r``, an induction head at query ``T + i`` attends to ``i + 1``: the score is the mean of
the pattern's diagonal at offset ``-(T - 1)`` over the second half. A model with induction
heads has a much lower loss on the second half than on the first (``log d_vocab``).

**Composition** (Elhage et al., 2021). With TransformerLens's row-vector convention a
head writes ``x W_OV`` (``W_OV = W_V W_O``, ``d_model x d_model``) and scores
``x_q W_QK x_k^T`` (``W_QK = W_Q W_K^T``). A later head B reads an earlier head A's output
through its query, key or value; the composition score

    C(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

uses ``W_A = W_OV^A`` and ``W_B = W_QK^B`` (Q), ``(W_QK^B)^T`` (K) or ``W_OV^B`` (V), as in
TransformerLens. *Misleads:* random matrices already score about ``1/sqrt(d)``-ish, so
compare with a baseline; the score ignores LayerNorm and what the heads actually read.

**Copying** (Elhage et al.). The full OV circuit ``W_E W_OV W_U`` (``d_vocab x d_vocab``)
maps an attended token to logits; a copying head raises the logit of the token it
attends to, i.e. the circuit has mostly positive eigenvalues. We report

    copying_score = sum_i Re(lambda_i) / sum_i |lambda_i|        in [-1, 1]

(1: all eigenvalues positive real; -1: all negative). The eigenvalues are computed with
:class:`transformer_lens.FactoredMatrix.FactoredMatrix`, which uses that the nonzero
eigenvalues of ``(W_E W_V)(W_O W_U)`` equal those of the small ``d_head x d_head`` product
the other way round. *Misleads:* ignores positional embeddings, LayerNorm and later layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.FactoredMatrix import FactoredMatrix

from decoding_gpt.data.synthetic import repeated_random_tokens
from decoding_gpt.hooks import HookedModel, hook_name, model_weight, n_layers

# --------------------------------------------------------------------------------------
# Pattern scores: pattern [batch, head, q, k] -> [head]


def _check_pattern(pattern: Tensor) -> None:
    if pattern.ndim != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(
            f"pattern must be [batch, head, q_pos, k_pos] with q == k, got {tuple(pattern.shape)}"
        )


def _masked_score(
    pattern: Float[Tensor, "batch head q k"], ideal: Tensor
) -> Float[Tensor, " head"]:
    """Mean over (batch, query) rows that have any ideal key, of the mass on ideal keys."""
    ideal = ideal.to(pattern.dtype)
    mass = (pattern * ideal[:, None]).sum(-1)  # [batch, head, q]
    rows = ideal.sum(-1) > 0  # [batch, q]
    if not rows.any():
        raise ValueError("no query position has a key matching this score's ideal pattern")
    return mass.permute(1, 0, 2)[:, rows].mean(-1)


def previous_token_score(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, " head"]:
    """Mean attention from each query ``q >= 1`` to ``q - 1``."""
    _check_pattern(pattern)
    b, _, n, _ = pattern.shape
    ideal = torch.diag(torch.ones(n - 1, device=pattern.device), -1).expand(b, n, n)
    return _masked_score(pattern, ideal)


def first_token_score(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, " head"]:
    """Mean attention from each query ``q >= 1`` to position 0 (BOS / attention sink)."""
    _check_pattern(pattern)
    b, _, n, _ = pattern.shape
    ideal = torch.zeros(b, n, n, device=pattern.device)
    ideal[:, 1:, 0] = 1
    return _masked_score(pattern, ideal)


def _same_token(tokens: Int[Tensor, "batch pos"]) -> Tensor:
    return tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]


def duplicate_token_score(
    pattern: Float[Tensor, "batch head q k"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " head"]:
    """Mean attention to earlier keys holding the query's own token."""
    _check_pattern(pattern)
    n = tokens.shape[1]
    earlier = torch.ones(n, n, device=tokens.device).tril(-1).bool()
    return _masked_score(pattern, _same_token(tokens) & earlier)


def induction_score(
    pattern: Float[Tensor, "batch head q k"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, " head"]:
    """Mean attention to keys ``k`` whose previous token equals the query's token."""
    _check_pattern(pattern)
    b, n = tokens.shape
    ideal = torch.zeros(b, n, n, dtype=torch.bool, device=tokens.device)
    # ideal[q, k] = (t_{k-1} == t_q) for 1 <= k <= q
    ideal[:, :, 1:] = _same_token(tokens)[:, :, :-1]
    ideal &= torch.ones(n, n, device=tokens.device).tril().bool()
    return _masked_score(pattern, ideal)


SCORES: dict[str, Callable[..., Tensor]] = {
    "previous_token": previous_token_score,
    "first_token": first_token_score,
    "duplicate_token": duplicate_token_score,
    "induction": induction_score,
}


def head_scores(
    model: HookedModel,
    tokens: Int[Tensor, "batch pos"],
    kind: Literal["previous_token", "first_token", "duplicate_token", "induction"],
    cache: Any | None = None,
) -> Float[Tensor, "layer head"]:
    """One pattern score for every head of ``model`` on ``tokens``."""
    if kind not in SCORES:
        raise ValueError(f"kind must be one of {sorted(SCORES)}, got {kind!r}")
    if cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
    fn = SCORES[kind]
    out = []
    for layer in range(n_layers(model)):
        pattern = cache[hook_name("pattern", layer)]
        out.append(
            fn(pattern) if kind in ("previous_token", "first_token") else fn(pattern, tokens)
        )
    return torch.stack(out)


@dataclass
class InductionResult:
    """Output of :func:`induction_score_on_repeated_tokens`."""

    scores: Float[Tensor, "layer head"]  # mean attention on the induction diagonal
    loss_first_half: float  # mean next-token loss predicting tokens of the first copy
    loss_repeated_half: float  # ... of the second copy (low if induction works)
    tokens: Int[Tensor, "batch pos"]


def induction_score_on_repeated_tokens(
    model: HookedModel,
    seq_len: int,
    batch: int = 8,
    seed: int = 0,
    prefix: int | None = None,
    token_ids: Int[Tensor, " n"] | None = None,
) -> InductionResult:
    """Induction scores (per layer and head) and losses on repeated random tokens.

    ``prefix`` (e.g. a BOS id) is prepended if given; ``token_ids`` restricts the random
    tokens to those ids (:func:`~decoding_gpt.data.synthetic.repeated_random_tokens`).
    The score of a head is its mean attention from query ``T + i`` to key ``i + 1`` over
    the second copy; the losses are
    mean cross-entropies for predicting tokens ``2..T`` and ``T+2..2T`` of the copies
    (the first token of each copy is unpredictable and left out).
    """
    n_ctx = int(model.cfg.n_ctx)
    total = 2 * seq_len + (prefix is not None)
    if total > n_ctx:
        raise ValueError(f"2 * seq_len (+ prefix) = {total} exceeds the model's n_ctx = {n_ctx}")
    d_vocab = int(model.cfg.d_vocab)
    tokens = repeated_random_tokens(d_vocab, seq_len, batch, seed, prefix, token_ids).to(
        model_weight(model, "W_E").device
    )
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    off = int(prefix is not None)
    scores = []
    for layer in range(n_layers(model)):
        pattern = cache[hook_name("pattern", layer)]  # [batch, head, q, k]
        diag = pattern.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)  # q = k + T - 1
        scores.append(diag[..., off + 1 :].mean((0, -1)))  # queries in the second copy
    # logits at position p predict token p + 1
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    first = losses[:, off : off + seq_len - 1].mean()  # predicts tokens off+1 .. off+T-1
    second = losses[:, off + seq_len :].mean()  # predicts tokens off+T+1 .. end
    return InductionResult(torch.stack(scores), float(first), float(second), tokens)


# --------------------------------------------------------------------------------------
# Weight-based: composition, copying, full circuits


def composition_score(W_A: Float[Tensor, "... a b"], W_B: Float[Tensor, "... b c"]) -> Tensor:
    """``||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` (in ``[0, 1]`` by submultiplicativity)."""
    if W_A.shape[-1] != W_B.shape[-2]:
        raise ValueError(f"inner dimensions differ: {tuple(W_A.shape)} @ {tuple(W_B.shape)}")
    num = torch.linalg.matrix_norm(W_A @ W_B)
    return num / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B))


def _head_weights(model: HookedModel, layer: int) -> dict[str, Tensor]:
    attn = model.blocks[layer].attn
    return {n: getattr(attn, n) for n in ("W_Q", "W_K", "W_V", "W_O")}  # [head, ...]


def ov_matrix(model: HookedModel, layer: int) -> Float[Tensor, "head d_model d_model"]:
    """``W_OV = W_V W_O`` of every head in ``layer`` (dense)."""
    w = _head_weights(model, layer)
    return w["W_V"] @ w["W_O"]


def qk_matrix(model: HookedModel, layer: int) -> Float[Tensor, "head d_model d_model"]:
    """``W_QK = W_Q W_K^T`` of every head in ``layer`` (dense)."""
    w = _head_weights(model, layer)
    return w["W_Q"] @ w["W_K"].transpose(-1, -2)


def _factors(model: HookedModel, kind: str) -> tuple[Tensor, Tensor]:
    """Low-rank factors ``(L, R)`` with ``W = L R``, stacked ``[layer, head, ...]``."""
    ws = [_head_weights(model, layer) for layer in range(n_layers(model))]
    W = {n: torch.stack([w[n] for w in ws]) for n in ("W_Q", "W_K", "W_V", "W_O")}
    if kind == "OV":
        return W["W_V"], W["W_O"]
    if kind == "QK":
        return W["W_Q"], W["W_K"].transpose(-1, -2)
    return W["W_K"], W["W_Q"].transpose(-1, -2)  # QK^T = W_K W_Q^T


def _gram(L: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    return L.transpose(-1, -2) @ L, R @ R.transpose(-1, -2)  # [r, r] each


@torch.no_grad()
def composition_scores(
    model: HookedModel, kind: Literal["Q", "K", "V"]
) -> Float[Tensor, "layer_a head_a layer_b head_b"]:
    """Composition score of every earlier head A into every later head B (0 where not later).

    Same convention as TransformerLens's ``all_composition_scores`` (tested equal). The
    ``d_model x d_model`` products are never formed: for ``W = L R`` with thin factors,
    ``||L_A (R_A L_B) R_B||_F^2 = tr(M^T (L_A^T L_A) M (R_B R_B^T))`` with ``M = R_A L_B``.
    """
    if kind not in ("Q", "K", "V"):
        raise ValueError(f"kind must be 'Q', 'K' or 'V', got {kind!r}")
    LA, RA = _factors(model, "OV")
    LB, RB = _factors(model, {"Q": "QK", "K": "QKT", "V": "OV"}[kind])
    GA, HA = _gram(LA, RA)
    GB, HB = _gram(LB, RB)
    norm_a = torch.einsum("lhij,lhji->lh", GA, HA).sqrt()  # ||W_A||_F = sqrt(tr(L^T L R R^T))
    norm_b = torch.einsum("lhij,lhji->lh", GB, HB).sqrt()
    M = torch.einsum("lhrd,mgds->lhmgrs", RA, LB)  # R_A L_B for every pair
    GAM = torch.einsum("lhij,lhmgjk->lhmgik", GA, M)  # G_A M
    MHB = torch.einsum("lhmgij,mgjk->lhmgik", M, HB)  # M H_B
    num2 = (GAM * MHB).sum((-1, -2))  # tr((G_A M)^T (M H_B)), G_A and H_B symmetric
    scores = num2.clamp_min(0).sqrt() / (norm_a[:, :, None, None] * norm_b[None, None])
    L = n_layers(model)
    later = torch.arange(L)[:, None] < torch.arange(L)[None, :]  # layer_a < layer_b
    return scores * later[:, None, :, None].to(scores)


def full_ov_circuit(model: HookedModel, layer: int, head: int) -> FactoredMatrix:
    """``W_E W_V W_O W_U`` as a ``[d_vocab, d_vocab]`` FactoredMatrix (source token -> logits)."""
    w = _head_weights(model, layer)
    W_E, W_U = model_weight(model, "W_E"), model_weight(model, "W_U")
    return FactoredMatrix(W_E @ w["W_V"][head], w["W_O"][head] @ W_U)


def full_qk_circuit(model: HookedModel, layer: int, head: int) -> FactoredMatrix:
    """``W_E W_Q W_K^T W_E^T`` as a ``[d_vocab, d_vocab]`` FactoredMatrix (query x key token).

    Token embeddings only: positional embeddings and LayerNorm are left out.
    """
    w = _head_weights(model, layer)
    W_E = model_weight(model, "W_E")
    return FactoredMatrix(W_E @ w["W_Q"][head], (W_E @ w["W_K"][head]).T)


@torch.no_grad()
def copying_score(model: HookedModel, layer: int, head: int) -> float:
    """``sum Re(lambda) / sum |lambda|`` over the eigenvalues of the full OV circuit."""
    eig = full_ov_circuit(model, layer, head).eigenvalues
    return float(eig.real.sum() / eig.abs().sum())


def copying_scores(model: HookedModel) -> Float[Tensor, "layer head"]:
    """:func:`copying_score` for every head."""
    H = int(model.cfg.n_heads)
    return torch.tensor(
        [[copying_score(model, layer, h) for h in range(H)] for layer in range(n_layers(model))]
    )
