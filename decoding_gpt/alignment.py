r"""Preference optimisation: a language model as a policy, rewards, RLHF's objective, DPO.

**The policy view.** A language model with a prompt ``x`` is a *policy*: it picks a
completion ``y = y_1..y_T`` with probability

.. math:: \pi(y \mid x) = \prod_t \pi(y_t \mid x, y_{<t}),
   \qquad \log \pi(y \mid x) = \sum_t \log \pi(y_t \mid x, y_{<t}),

a sum over the COMPLETION tokens only (the prompt is given, not chosen):
:func:`sequence_logprobs`, with a mask that is 1 on completion tokens.

**Reward model** (Christiano et al. 2017). People compare two completions rather than
score one. The Bradley-Terry model says completion ``y_w`` is preferred to ``y_l`` with
probability ``sigma(r(x, y_w) - r(x, y_l))``; fitting ``r`` by maximum likelihood is the
loss :func:`bradley_terry_loss`, ``-mean log sigma(r_w - r_l)``. :class:`RewardModel` is a
GPT trunk with a scalar head on the final residual stream (after ``ln_final``) of the last
token.

**The KL-regularised objective.** RLHF maximises reward while staying close to the
reference model ``pi_ref`` it started from:

.. math:: \max_\pi \; \mathbb E_{y \sim \pi}[r(x, y)] - \beta\,\mathrm{KL}(\pi \,\|\, \pi_{ref}),

whose maximiser is ``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)``
(:func:`optimal_policy`). Its KL on samples: :func:`kl_on_samples`.

**DPO** (Rafailov et al. 2023). Solve the optimum for the reward,
``r(x, y) = beta log(pi*(y|x) / pi_ref(y|x)) + beta log Z(x)``, and put it into the
Bradley-Terry likelihood: ``Z`` cancels in the difference, leaving a loss on the policy
alone,

.. math:: \mathcal L_{DPO} = -\mathbb E \log \sigma\Big(\beta \big[
   (\log \pi(y_w) - \log \pi_{ref}(y_w)) - (\log \pi(y_l) - \log \pi_{ref}(y_l)) \big]\Big)

(:func:`dpo_loss`; TRL's ``DPOTrainer`` with ``loss_type="sigmoid"``, tested equal). The
*implicit reward* of a completion is ``beta (log pi(y) - log pi_ref(y))``
(:func:`implicit_reward`).

**Best-of-n** (:func:`best_of_n`): sample ``n`` completions, keep the one a reward scores
highest. Its distribution's KL to the sampling policy is at most (and for continuous
rewards, exactly) ``log n - (n - 1) / n`` (:func:`best_of_n_kl`, Stiennon et al. 2020).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from decoding_gpt.data.stories import ACTIONS, HAPPY, SAD
from decoding_gpt.generation import generate
from decoding_gpt.transformer import GPT

__all__ = [
    "HAPPY_WORDS",
    "SAD_WORDS",
    "RewardModel",
    "best_of_n",
    "best_of_n_expectation",
    "best_of_n_kl",
    "bradley_terry_loss",
    "dpo_loss",
    "implicit_reward",
    "kl_on_samples",
    "optimal_policy",
    "pad_completions",
    "sequence_logprobs",
    "story_mood",
    "token_logprobs",
    "train_dpo",
    "train_reward_model",
]


# ---------------------------------------------------------------- a checkable preference
# The stories corpus writes a story's mood with these words (decoding_gpt.data.stories):
# "felt glad", "was very sad", "laughed loudly", "cried softly", "were very happy". "sang"
# is left out: in the corpus most singing is the song game ("sang a little song"), which
# happy and sad stories play alike.
HAPPY_WORDS: frozenset[str] = frozenset(HAPPY) | frozenset(ACTIONS["happy"]) - {"sang"}
SAD_WORDS: frozenset[str] = frozenset(SAD) | frozenset(ACTIONS["sad"])


def story_mood(text: str) -> int:
    """``#happy words - #sad words`` of ``text`` (:data:`HAPPY_WORDS`, :data:`SAD_WORDS`):
    a transparent rule for "this story is happy" (``> 0``) that any output can be checked by."""
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in HAPPY_WORDS for w in words) - sum(w in SAD_WORDS for w in words)


# ---------------------------------------------------------------- log-probabilities
def _check_mask(tokens: Tensor, mask: Tensor) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    if mask.shape != tokens.shape:
        raise ValueError(
            f"completion_mask must have the shape of tokens {tuple(tokens.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if mask.shape[1] and bool(mask[:, 0].any()):
        raise ValueError(
            "completion_mask[:, 0] must be 0: nothing predicts the first token, so it "
            "cannot be part of a completion (start every sequence with a prompt, e.g. BOS)"
        )


def token_logprobs(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """``log p(tokens[:, t] | tokens[:, <t])`` for ``t = 1..pos-1``.

    Logits at position ``t - 1`` predict token ``t`` (shift along the SEQUENCE axis):
    ``out[b, t - 1] = log_softmax(logits[b, t - 1])[tokens[b, t]]``.
    """
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits [batch, pos, vocab] must match tokens [batch, pos]: got "
            f"{tuple(logits.shape)} and {tuple(tokens.shape)}"
        )
    log_p = logits[:, :-1].float().log_softmax(-1)  # [batch, pos - 1, vocab]
    return log_p.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def sequence_logprobs(
    model: Callable[[Tensor], Tensor],
    tokens: Int[Tensor, "batch pos"],
    completion_mask: Bool[Tensor, "batch pos"] | Int[Tensor, "batch pos"],
) -> Float[Tensor, " batch"]:
    r"""``log pi(y | x) = sum_t mask[t] * log pi(tokens[t] | tokens[<t])`` per row.

    ``tokens`` holds prompt and completion (and any right padding); ``completion_mask`` is
    1 on the completion tokens and 0 on the prompt and the padding, so the prompt is given
    and only the completion is scored. ``model`` maps ``[batch, pos]`` ids to logits.
    Differentiable (no ``no_grad`` here: DPO trains through it).
    """
    _check_mask(tokens, completion_mask)
    per_token = token_logprobs(model(tokens), tokens)  # [batch, pos - 1]
    return (per_token * completion_mask[:, 1:].to(per_token.dtype)).sum(-1)


def pad_completions(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """``prompt + completion`` of each row, right-padded with ``pad_id``, and the mask
    that is True on completion tokens only (what :func:`sequence_logprobs` takes).

    Right padding keeps every real token at its own position, so a causal model scores
    it exactly as without padding (the padding comes after it and is masked out).
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(
            f"need as many prompts as completions (>= 1), got {len(prompts)} and {len(completions)}"
        )
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        tokens[row, : len(p) + len(c)] = torch.tensor([*p, *c], dtype=torch.long)
        mask[row, len(p) : len(p) + len(c)] = True
    return tokens, mask


# ---------------------------------------------------------------- reward models
def bradley_terry_loss(
    reward_chosen: Float[Tensor, " batch"], reward_rejected: Float[Tensor, " batch"]
) -> Float[Tensor, ""]:
    r"""``-mean log sigma(r_w - r_l)``: the negative log-likelihood of the observed
    preferences under Bradley-Terry, ``P(y_w > y_l) = sigma(r_w - r_l)``.

    Written with ``logsigmoid`` (``-log sigma(d) = softplus(-d)``), stable for large margins.
    """
    if reward_chosen.ndim != 1 or reward_chosen.shape != reward_rejected.shape:
        raise ValueError(
            f"rewards must be two [batch] tensors of one shape, got "
            f"{tuple(reward_chosen.shape)} and {tuple(reward_rejected.shape)}"
        )
    return -F.logsigmoid(reward_chosen - reward_rejected).mean()


class RewardModel(nn.Module):
    """``r(x, y)``: a GPT trunk and a scalar head on its final residual stream.

    ``r = w . h + b`` with ``h`` the residual stream after ``ln_final``, read at the last
    position where ``attention_mask`` is 1 (``pool="last"``, as in InstructGPT's reward
    model; the whole row by default), or averaged over the positions where it is 1
    (``pool="mean"``). The trunk is the model's own modules (embeddings, blocks,
    ``ln_final``); its unembedding is not used. With ``freeze_trunk=True`` only the head
    trains: a linear probe for the reward on features the language model already computes.
    """

    def __init__(self, trunk: GPT, freeze_trunk: bool = False, pool: str = "last"):
        super().__init__()
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        self.trunk, self.pool = trunk, pool
        self.head = nn.Linear(trunk.cfg.d_model, 1)
        nn.init.zeros_(self.head.weight)  # r = 0 at the start: no preference yet
        nn.init.zeros_(self.head.bias)
        self.trunk.requires_grad_(not freeze_trunk)

    def features(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None
    ) -> Float[Tensor, "batch d_model"]:
        """Final residual stream (after ``ln_final``) at each row's last real token, or its
        mean over the real tokens (``pool="mean"``)."""
        gpt = self.trunk
        gpt._check_tokens(tokens, 0)
        x = gpt.hook_embed(gpt.embed(tokens))  # [batch, pos, d_model]
        if hasattr(gpt, "pos_embed"):
            x = x + gpt.hook_pos_embed(gpt.pos_embed(tokens.shape[1], 0).expand_as(x))
        for block in gpt.blocks:
            x = block(x, None)
        x = gpt.ln_final(x)  # [batch, pos, d_model]
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens, dtype=torch.bool)
        if attention_mask.shape != tokens.shape or not bool(attention_mask.any(-1).all()):
            raise ValueError(
                f"attention_mask must have the shape of tokens {tuple(tokens.shape)} and a 1 "
                f"in every row, got {tuple(attention_mask.shape)}"
            )
        if self.pool == "mean":
            weight = attention_mask.to(x.dtype)[..., None]  # [batch, pos, 1]
            return (x * weight).sum(1) / weight.sum(1)
        last = attention_mask.long().cumsum(-1).argmax(-1)  # first index of the max count
        return x[torch.arange(len(x), device=x.device), last]

    def forward(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None
    ) -> Float[Tensor, " batch"]:
        return self.head(self.features(tokens, attention_mask)).squeeze(-1)


# ---------------------------------------------------------------- DPO
def implicit_reward(
    policy_logps: Float[Tensor, " batch"], reference_logps: Float[Tensor, " batch"], beta: float
) -> Float[Tensor, " batch"]:
    """DPO's implicit reward ``beta (log pi(y|x) - log pi_ref(y|x))`` (up to ``beta log Z(x)``)."""
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"log-prob shapes differ: {tuple(policy_logps.shape)} vs {tuple(reference_logps.shape)}"
        )
    return beta * (policy_logps - reference_logps)


def dpo_loss(
    policy_chosen: Float[Tensor, " batch"],
    policy_rejected: Float[Tensor, " batch"],
    reference_chosen: Float[Tensor, " batch"],
    reference_rejected: Float[Tensor, " batch"],
    beta: float,
) -> Float[Tensor, ""]:
    r"""``-mean log sigma(beta [(lp_w - ref_w) - (lp_l - ref_l)])`` (Rafailov et al. 2023, eq. 7).

    The Bradley-Terry loss of the implicit rewards :func:`implicit_reward` of the chosen
    (``w``) and rejected (``l``) completions. Inputs are sequence log-probabilities
    (:func:`sequence_logprobs`) under the policy and the frozen reference.
    """
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen,
                                        reference_rejected)}  # fmt: skip
    if len(shapes) != 1 or policy_chosen.ndim != 1:
        raise ValueError(f"the four log-prob tensors must be [batch] of one shape, got {shapes}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return bradley_terry_loss(
        implicit_reward(policy_chosen, reference_chosen, beta),
        implicit_reward(policy_rejected, reference_rejected, beta),
    )


# ---------------------------------------------------------------- the KL-regularised optimum
def optimal_policy(
    reference_probs: Float[Tensor, "... n"], reward: Float[Tensor, "... n"], beta: float
) -> Float[Tensor, "... n"]:
    r"""``pi*(y) = pi_ref(y) exp(r(y) / beta) / Z``, the maximiser of
    ``E_pi[r] - beta KL(pi || pi_ref)`` over distributions on a finite set (last axis).

    Computed as ``softmax(log pi_ref + r / beta)``, so a tiny ``beta`` does not overflow.
    """
    if reference_probs.shape != reward.shape:
        raise ValueError(
            f"reference_probs and reward must have one shape, got "
            f"{tuple(reference_probs.shape)} and {tuple(reward.shape)}"
        )
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return (reference_probs.log() + reward / beta).softmax(-1)


@torch.no_grad()
def kl_on_samples(
    policy: Callable[[Tensor], Tensor],
    reference: Callable[[Tensor], Tensor],
    tokens: Int[Tensor, "batch pos"],
    completion_mask: Bool[Tensor, "batch pos"] | Int[Tensor, "batch pos"],
) -> Float[Tensor, " batch"]:
    r"""Per-sample estimate of ``KL(pi || pi_ref)`` over completions, on samples ``y ~ pi``.

    For each completion token, the exact KL between the two next-token distributions,
    ``sum_v pi(v|y_<t) (log pi(v|y_<t) - log pi_ref(v|y_<t))``, summed over the completion.
    Its mean over samples drawn from the POLICY is an unbiased estimate of the sequence KL
    (the chain rule of KL), never negative, with less variance than the plain log-ratio
    ``log pi(y) - log pi_ref(y)``.
    """
    _check_mask(tokens, completion_mask)
    log_p = policy(tokens)[:, :-1].float().log_softmax(-1)  # [batch, pos - 1, vocab]
    log_q = reference(tokens)[:, :-1].float().log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL of the next-token laws
    return (per_token * completion_mask[:, 1:].to(per_token.dtype)).sum(-1)


# ---------------------------------------------------------------- best-of-n
def best_of_n_kl(n: int) -> float:
    r"""``KL(best-of-n || pi) = log n - (n - 1) / n`` (Stiennon et al. 2020; an upper bound
    that is exact when the reward has no ties)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(
    model: GPT,
    prompt: Int[Tensor, " pos"],
    n: int,
    reward_fn: Callable[[Int[Tensor, "n new"]], Tensor],
    max_new_tokens: int,
    *,
    seed: int | None = None,
    **sampling: Any,
) -> tuple[Int[Tensor, " new"], Float[Tensor, " n"]]:
    """Sample ``n`` completions of ``prompt`` and return the one ``reward_fn`` scores highest.

    ``reward_fn`` gets the completions (without the prompt) ``[n, new]`` and returns
    ``[n]`` rewards; ties go to the first sample. Returns ``(best completion, all n
    rewards)``. ``sampling`` goes to :func:`decoding_gpt.generation.generate`.
    """
    if prompt.ndim != 1 or prompt.shape[0] == 0:
        raise ValueError(f"prompt must be a non-empty [pos] tensor, got {tuple(prompt.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = generate(model, prompt[None].expand(n, -1), max_new_tokens, seed=seed, **sampling)
    completions = out[:, prompt.shape[0] :]  # [n, new]
    rewards = torch.as_tensor(reward_fn(completions), dtype=torch.float64).flatten()
    if rewards.shape != (n,):
        raise ValueError(f"reward_fn must return {n} rewards, got shape {tuple(rewards.shape)}")
    return completions[int(rewards.argmax())], rewards


def best_of_n_expectation(
    proxy: Float[Tensor, " pool"], score: Float[Tensor, " pool"], n: int
) -> float:
    r"""``E[score of the best-of-n by proxy]`` for ``n`` draws without replacement from a pool.

    Sort the pool of ``N`` samples by ``proxy`` (ascending); the best of ``n`` random draws
    is the sample of rank ``i`` with probability ``C(i-1, n-1) / C(N, n)``, so the
    expectation is exact over every subset, with no resampling noise (Nakano et al. 2021's
    estimator). Ties in ``proxy`` are broken at random: tied samples share their mean score.
    """
    if proxy.ndim != 1 or proxy.shape != score.shape:
        raise ValueError(
            f"proxy and score must be [pool] of one shape, got {tuple(proxy.shape)} and "
            f"{tuple(score.shape)}"
        )
    size = proxy.shape[0]
    if not 1 <= n <= size:
        raise ValueError(f"need 1 <= n <= pool size {size}, got {n}")
    proxy, score = proxy.double(), score.double()
    order = proxy.argsort()
    sorted_proxy, sorted_score = proxy[order], score[order]
    _, group = sorted_proxy.unique_consecutive(return_inverse=True)
    group_mean = torch.zeros(int(group.max()) + 1, dtype=torch.float64)
    group_mean.index_add_(0, group, sorted_score)
    group_mean /= torch.bincount(group).double()
    rank = torch.arange(1, size + 1, dtype=torch.float64)
    # log C(i - 1, n - 1) - log C(N, n), zero weight where i < n
    log_w = (
        torch.lgamma(rank) - torch.lgamma(rank - n + 1).nan_to_num(posinf=0.0)
        - math.lgamma(n) - (math.lgamma(size + 1) - math.lgamma(n + 1) - math.lgamma(size - n + 1))
    )  # fmt: skip
    weight = torch.where(rank >= n, log_w.exp(), torch.zeros_like(log_w))
    return float((weight * group_mean[group]).sum())


# ---------------------------------------------------------------- training loops
PairLoss = Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]


def train_dpo(
    policy: GPT,
    reference: GPT,
    chosen: tuple[Int[Tensor, "pairs pos"], Bool[Tensor, "pairs pos"]],
    rejected: tuple[Int[Tensor, "pairs pos"], Bool[Tensor, "pairs pos"]],
    *,
    beta: float,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    loss_fn: PairLoss = dpo_loss,
) -> list[float]:
    """Train ``policy`` in place on preference pairs with the DPO loss; returns the losses.

    ``chosen`` and ``rejected`` are ``(tokens, completion_mask)`` as built by
    :func:`pad_completions`, row ``i`` of each being one pair. The reference's log-probs
    are computed once (it is frozen); each step draws ``batch_size`` pairs (seeded) and
    takes one AdamW step (no weight decay, gradients clipped at norm 1). ``loss_fn`` has
    :func:`dpo_loss`'s signature (a student's version can be passed in).
    """
    (c_tok, c_mask), (r_tok, r_mask) = chosen, rejected
    if c_tok.shape[0] != r_tok.shape[0]:
        raise ValueError(f"need as many chosen as rejected rows, got {len(c_tok)}, {len(r_tok)}")
    with torch.no_grad():
        ref_c = sequence_logprobs(reference, c_tok, c_mask)
        ref_r = sequence_logprobs(reference, r_tok, r_mask)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    policy.train()
    for _ in range(steps):
        idx = torch.randint(0, c_tok.shape[0], (batch_size,), generator=gen)
        loss = loss_fn(
            sequence_logprobs(policy, c_tok[idx], c_mask[idx]),
            sequence_logprobs(policy, r_tok[idx], r_mask[idx]),
            ref_c[idx], ref_r[idx], beta,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    policy.eval()
    return losses


def train_reward_model(
    reward_model: RewardModel,
    chosen: tuple[Int[Tensor, "pairs pos"], Bool[Tensor, "pairs pos"]],
    rejected: tuple[Int[Tensor, "pairs pos"], Bool[Tensor, "pairs pos"]],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = bradley_terry_loss,
) -> list[float]:
    """Fit ``reward_model`` in place to preference pairs with the Bradley-Terry loss.

    ``chosen``/``rejected`` are ``(tokens, attention_mask)`` pairs of ``[pairs, pos]``
    tensors (the reward reads the last token where the mask is 1; a completion mask from
    :func:`pad_completions` serves). Seeded AdamW steps on random batches; returns the
    losses. With a frozen trunk the features are computed once and only the head trains.
    """
    (c_tok, c_mask), (r_tok, r_mask) = chosen, rejected
    if c_tok.shape[0] != r_tok.shape[0]:
        raise ValueError(f"need as many chosen as rejected rows, got {len(c_tok)}, {len(r_tok)}")
    frozen = not any(p.requires_grad for p in reward_model.trunk.parameters())
    if frozen:  # a frozen trunk gives the same features at every step: compute them once
        with torch.no_grad():
            c_feat = reward_model.features(c_tok, c_mask)
            r_feat = reward_model.features(r_tok, r_mask)
    params = [p for p in reward_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    reward_model.train()
    for _ in range(steps):
        idx = torch.randint(0, c_tok.shape[0], (batch_size,), generator=gen)
        if frozen:
            r_c = reward_model.head(c_feat[idx]).squeeze(-1)
            r_r = reward_model.head(r_feat[idx]).squeeze(-1)
        else:
            r_c, r_r = reward_model(c_tok[idx], c_mask[idx]), reward_model(r_tok[idx], r_mask[idx])
        loss = loss_fn(r_c, r_r)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    reward_model.eval()
    return losses
