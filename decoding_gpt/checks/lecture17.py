r"""Checks for the exercises of lecture 17 (RLHF and preference optimisation).

Each ``check_*`` runs the student's function on seeded inputs and compares it with the
package's reference in :mod:`decoding_gpt.alignment` (itself tested against TRL, closed
forms and enumeration); where the answer matches a classic mistake, the message names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decoding_gpt.alignment import dpo_loss, optimal_policy
from decoding_gpt.checks import CheckError, Mistake, exercise, judge, passed, to_scalar
from decoding_gpt.generation import generate
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "check_best_of_n",
    "check_dpo_loss",
    "check_optimal_policy",
    "check_sequence_logprob",
]


# ----------------------------------------------------------------------------- exercise 1
def _logprob(logits: Tensor, tokens: Tensor, mask: Tensor, shift: int = 1) -> Tensor:
    log_p = logits.log_softmax(-1)
    if shift:
        per = log_p[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return (per * mask[:, 1:]).sum(-1)
    per = log_p.gather(-1, tokens[..., None]).squeeze(-1)
    return (per * mask).sum(-1)


SEQ_MISTAKES = [
    Mistake(
        "no_shift",
        lambda lg, tk, m: _logprob(lg, tk, m, shift=0),
        "the logits at position t predict token t + 1, not token t: score tokens[:, 1:] "
        "with log_softmax(logits[:, :-1]) (and the mask shifted the same way, mask[:, 1:]).",
    ),
    Mistake(
        "whole_sequence",
        lambda lg, tk, m: _logprob(lg, tk, torch.ones_like(m)),
        "this scores the prompt (and padding) too: multiply the per-token log-probs by the "
        "completion mask, so only completion tokens count (the prompt is given, not chosen).",
    ),
    Mistake(
        "mean",
        lambda lg, tk, m: _logprob(lg, tk, m) / m[:, 1:].sum(-1),
        "this is the MEAN log-prob per completion token; log pi(y | x) is the SUM over the "
        "completion's tokens (the chain rule multiplies the probabilities).",
    ),
    Mistake(
        "probabilities",
        lambda lg, tk, m: (
            lg.softmax(-1)[:, :-1].gather(-1, tk[:, 1:, None]).squeeze(-1) * m[:, 1:]
        ).sum(-1),
        "this sums probabilities; the sequence log-probability sums LOG-probabilities: "
        "log_softmax, not softmax.",
    ),
    Mistake(
        "raw_logits",
        lambda lg, tk, m: (lg[:, :-1].gather(-1, tk[:, 1:, None]).squeeze(-1) * m[:, 1:]).sum(-1),
        "this sums raw logits; normalise them first with log_softmax over the vocabulary.",
    ),
]


@exercise
def check_sequence_logprob(fn: Callable[[Tensor, Tensor, Tensor], Any]) -> None:
    """``fn(logits [batch, pos, vocab], tokens [batch, pos], completion_mask [batch, pos])
    -> [batch]``: ``sum_t mask[t] log softmax(logits[t - 1])[tokens[t]]``."""
    gen = torch.Generator().manual_seed(17)
    for batch, pos, vocab in [(3, 7, 11), (5, 4, 6), (1, 9, 30)]:
        logits = 3 * torch.randn(batch, pos, vocab, generator=gen, dtype=torch.float64)
        tokens = torch.randint(0, vocab, (batch, pos), generator=gen)
        mask = torch.zeros(batch, pos, dtype=torch.float64)
        for row in range(batch):  # prompt of 1-3 tokens, completion, then padding
            start = 1 + row % 3
            mask[row, start : pos - row % 2] = 1.0
        got = fn(logits.clone(), tokens.clone(), mask.clone())
        judge(
            got,
            _logprob(logits, tokens, mask),
            SEQ_MISTAKES,
            (logits, tokens, mask),
            what=f"log-probs of a [{batch}, {pos}] batch",
            atol=1e-6,
            hint="Shift by one, log_softmax, gather the next token, mask, sum over positions.",
        )
    passed("check_sequence_logprob")


# ----------------------------------------------------------------------------- exercise 2
OPTIMUM_MISTAKES = [
    Mistake(
        "times_beta",
        lambda p, r, b: (p.log() + r * b).softmax(-1),
        "the reward is multiplied by beta; the optimum is pi_ref exp(r / beta) / Z: a SMALL "
        "beta (weak KL penalty) must sharpen the policy towards the best reward.",
    ),
    Mistake(
        "no_reference",
        lambda p, r, b: (r / b).softmax(-1),
        "this is softmax(r / beta) alone: the optimum keeps the reference's probabilities as "
        "a prior, pi_ref(y) exp(r(y) / beta) / Z.",
    ),
    Mistake(
        "unnormalised",
        lambda p, r, b: p * (r / b).exp(),
        "pi_ref exp(r / beta) does not sum to 1: divide by Z = sum_y pi_ref(y) exp(r(y) / beta).",
    ),
    Mistake(
        "probs_not_logs",
        lambda p, r, b: (p + r / b).softmax(-1),
        "softmax(pi_ref + r / beta) adds the probability itself; add its LOG: "
        "softmax(log pi_ref + r / beta) = pi_ref exp(r / beta) / Z.",
    ),
]


@exercise
def check_optimal_policy(fn: Callable[[Tensor, Tensor, float], Any]) -> None:
    """``fn(reference_probs [..., n], reward [..., n], beta) -> [..., n]``: the maximiser of
    ``E_pi[r] - beta KL(pi || pi_ref)``, ``pi_ref exp(r / beta) / Z``; also at a tiny beta,
    where ``exp(r / beta)`` overflows unless computed in log space."""
    gen = torch.Generator().manual_seed(170)
    for shape, beta in [((6,), 0.5), ((3, 5), 2.0), ((4,), 0.1)]:
        ref = torch.rand(shape, generator=gen, dtype=torch.float64).softmax(-1)
        reward = torch.randn(shape, generator=gen, dtype=torch.float64)
        judge(
            fn(ref.clone(), reward.clone(), beta),
            optimal_policy(ref, reward, beta),
            OPTIMUM_MISTAKES,
            (ref, reward, beta),
            what=f"pi* for beta = {beta}",
            atol=1e-8,
            hint="pi*(y) = pi_ref(y) exp(r(y) / beta) / Z, normalised over the last axis.",
        )
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    reward = torch.tensor([0.0, 20.0, 10.0], dtype=torch.float64)
    got = fn(ref.clone(), reward.clone(), 0.01)
    want = optimal_policy(ref, reward, 0.01)
    if torch.as_tensor(got).isnan().any():
        raise CheckError(
            "at beta = 0.01, exp(r / beta) = exp(2000) overflows to inf and inf / inf is NaN: "
            "work with logs, softmax(log pi_ref + r / beta) (softmax subtracts the max)."
        )
    judge(got, want, OPTIMUM_MISTAKES, (ref, reward, 0.01), what="pi* at beta = 0.01",
          atol=1e-8, hint="At a tiny beta all mass goes to the best reward.")  # fmt: skip
    passed("check_optimal_policy")


# ----------------------------------------------------------------------------- exercise 3
DPO_MISTAKES = [
    Mistake(
        "no_reference",
        lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean(),
        "the reference model is missing: DPO compares log-RATIOS, "
        "beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]. Without "
        "pi_ref nothing ties the policy to where it started.",
    ),
    Mistake(
        "swapped",
        lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pr - rr) - (pc - rc))).mean(),
        "chosen and rejected are swapped: the margin is (chosen log-ratio) - (rejected "
        "log-ratio), so minimising the loss raises the chosen completion.",
    ),
    Mistake(
        "beta_outside",
        lambda pc, pr, rc, rr, b: -b * F.logsigmoid((pc - rc) - (pr - rr)).mean(),
        "beta multiplies the margin INSIDE the sigmoid: -log sigma(beta * margin). Outside, it "
        "only rescales the loss and the preference strength never changes.",
    ),
    Mistake(
        "no_log",
        lambda pc, pr, rc, rr, b: -torch.sigmoid(b * ((pc - rc) - (pr - rr))).mean(),
        "this is -sigma(margin); the loss is the negative LOG-likelihood, -log sigma(margin) "
        "(use F.logsigmoid, stable for large margins).",
    ),
    Mistake(
        "sum",
        lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).sum(),
        "this sums over the pairs; take the mean, so the loss does not grow with batch size.",
    ),
]


@exercise
def check_dpo_loss(fn: Callable[[Tensor, Tensor, Tensor, Tensor, float], Any]) -> None:
    """``fn(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)``
    -> scalar: ``-mean log sigma(beta [(pc - rc) - (pr - rr)])``; also at margins of
    hundreds of nats, where ``log(sigmoid(.))`` underflows to ``-inf``, and it must carry
    gradients to the policy log-probs."""
    gen = torch.Generator().manual_seed(1700)
    for batch, beta, scale in [(8, 0.1, 5.0), (5, 1.0, 1.0), (3, 0.5, 20.0)]:
        pc, pr, rc, rr = (
            -scale * torch.rand(batch, generator=gen, dtype=torch.float64) for _ in range(4)
        )
        args = (pc, pr, rc, rr)
        got = to_scalar(fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta), "dpo_loss")
        judge(
            got,
            float(dpo_loss(pc, pr, rc, rr, beta)),
            DPO_MISTAKES,
            (*args, beta),
            what=f"DPO loss (batch {batch}, beta {beta})",
            atol=1e-6,
            hint="-mean log sigma(beta [(pc - rc) - (pr - rr)]).",
        )
    far = (torch.tensor([-900.0]), torch.tensor([-100.0]), torch.tensor([-100.0]),
           torch.tensor([-100.0]))  # fmt: skip
    got = to_scalar(fn(far[0], far[1], far[2], far[3], 1.0), "dpo_loss")
    if got == float("inf"):
        raise CheckError(
            "a margin of -800 nats gives inf: log(sigmoid(-800)) underflows to log(0). Use "
            "F.logsigmoid (= -softplus(-x)), which is exact there (the loss is 800)."
        )
    judge(got, 800.0, DPO_MISTAKES, (*far, 1.0), what="DPO loss at a margin of -800",
          atol=1e-6, hint="Use F.logsigmoid.")  # fmt: skip
    policy = torch.tensor([-3.0, -5.0], requires_grad=True)
    loss = fn(policy[:1], policy[1:], torch.tensor([-4.0]), torch.tensor([-4.0]), 0.5)
    if not isinstance(loss, Tensor) or loss.grad_fn is None:
        raise CheckError(
            "the loss carries no gradient to the policy log-probs: return a tensor computed "
            "with torch operations (no float(), .item() or .detach())."
        )
    (grad,) = torch.autograd.grad(loss, policy)
    if not (grad[0] < 0 < grad[1]):
        raise CheckError(
            f"the gradient w.r.t. (chosen, rejected) policy log-probs is {grad.tolist()}: "
            "descending the loss must raise the chosen and lower the rejected log-prob."
        )
    passed("check_dpo_loss")


# ----------------------------------------------------------------------------- exercise 4
def _tiny_model() -> GPT:
    torch.manual_seed(17)
    cfg = GPTConfig(d_vocab=12, n_ctx=32, d_model=16, n_layers=1, n_heads=2, d_head=8, d_mlp=32)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@exercise
def check_best_of_n(fn: Callable[..., Any]) -> None:
    """``fn(model, prompt [pos], n, reward_fn, max_new_tokens, seed) -> (best [new], rewards
    [n])``: ``n`` sampled completions (without the prompt) go to ``reward_fn`` in ONE call,
    the returned completion is the one of highest reward, the samples differ from each
    other, and the same seed gives the same answer."""
    model = _tiny_model()
    prompt = torch.tensor([0, 5, 3])
    seen: list[Tensor] = []

    def reward_fn(completions: Tensor) -> Tensor:
        seen.append(completions.clone())
        return (completions == 7).sum(-1).double() + 0.01 * completions[:, 0].double()

    n, new = 16, 6
    result = fn(model, prompt.clone(), n, reward_fn, new, 3)
    if not isinstance(result, tuple) or len(result) != 2:
        raise CheckError("return a pair (best completion [new], rewards [n]).")
    best, rewards = result
    if len(seen) != 1:
        raise CheckError(
            f"reward_fn was called {len(seen)} times; sample all n completions first and "
            "score them in one call, reward_fn(completions [n, new])."
        )
    samples = seen[0]
    if tuple(samples.shape) == (n, prompt.shape[0] + new):
        raise CheckError(
            "reward_fn received prompt + completion; pass the completions only, "
            "out[:, len(prompt):] (the reward judges what the policy wrote)."
        )
    if tuple(samples.shape) != (n, new):
        raise CheckError(
            f"reward_fn received shape {tuple(samples.shape)}, expected [n, new] = {(n, new)}: "
            "sample n completions at once, generate(model, prompt[None].expand(n, -1), ...)."
        )
    if len({tuple(row) for row in samples.tolist()}) == 1:
        raise CheckError(
            "all n samples are identical: sample (temperature 1), not greedy decoding, and "
            "draw the n completions in one batch with one seed (a fresh generator with the "
            "same seed for each sample repeats the same draw)."
        )
    want_rewards = reward_fn(samples)
    seen.pop()
    best = torch.as_tensor(best)
    if best.ndim != 1 or best.shape[0] != new:
        raise CheckError(
            f"the best completion has shape {tuple(best.shape)}, expected [new] = ({new},): "
            "return the completion without its prompt."
        )
    if torch.equal(best, samples[int(want_rewards.argmin())]) and not torch.equal(
        best, samples[int(want_rewards.argmax())]
    ):
        raise CheckError("this is the LOWEST-reward sample: best-of-n keeps the argmax.")
    if not torch.equal(best, samples[int(want_rewards.argmax())]):
        raise CheckError(
            "the returned completion is not the highest-reward sample: keep "
            "completions[rewards.argmax()]."
        )
    judge(rewards, want_rewards, [], (), what="rewards", atol=1e-9,
          hint="Return reward_fn's scores of the n samples.")  # fmt: skip
    # the samples must come from the model: the reference sampler with this seed agrees
    ref_samples = generate(model, prompt[None].expand(n, -1), new, seed=3)[:, prompt.shape[0] :]
    if not torch.equal(samples, ref_samples):
        again = fn(model, prompt.clone(), n, reward_fn, new, 3)
        if not torch.equal(torch.as_tensor(again[0]), best):
            raise CheckError("the same seed gave a different answer: pass seed to generate.")
    passed("check_best_of_n")
