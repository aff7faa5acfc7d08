"""decoding_gpt.alignment against independent references.

- sequence log-probs: a loop of ``F.log_softmax`` per token, and TRL's ``selective_log_softmax``;
- the DPO loss: TRL 1.13's own ``DPOTrainer._compute_loss`` (``loss_type="sigmoid"``) run on
  the same model outputs, with precomputed reference log-probs and with a reference model;
- Bradley-Terry: the closed form ``-log(1 / (1 + exp(-(r_w - r_l))))``;
- the KL-regularised optimum and the sample KL: enumeration of every completion;
- best-of-n: its KL formula against the exact law of the maximum, the pool estimator
  against every subset;
- DPO training on a toy pair set ranks the preferred completions higher.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decoding_gpt.alignment import (
    RewardModel,
    best_of_n,
    best_of_n_expectation,
    best_of_n_kl,
    bradley_terry_loss,
    dpo_loss,
    implicit_reward,
    kl_on_samples,
    optimal_policy,
    pad_completions,
    sequence_logprobs,
    story_mood,
    token_logprobs,
    train_dpo,
    train_reward_model,
)
from decoding_gpt.generation import generate
from decoding_gpt.transformer import GPT, GPTConfig


def tiny_gpt(seed: int = 0, d_vocab: int = 11, n_ctx: int = 16) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(
        d_vocab=d_vocab, n_ctx=n_ctx, d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32
    )
    model = GPT(cfg)
    with torch.no_grad():  # larger than the 0.02 init, so distributions are far from uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _batch():
    prompts = [[0, 3, 4], [0, 5], [0, 1, 2, 7]]
    completions = [[6, 2, 9], [4, 4, 4, 1, 8], [3]]
    return pad_completions(prompts, completions, pad_id=10), prompts, completions


# ---------------------------------------------------------------- log-probabilities
def test_sequence_logprobs_is_the_sum_of_per_token_log_softmax():
    model = tiny_gpt()
    (tokens, mask), prompts, completions = _batch()
    got = sequence_logprobs(model, tokens, mask)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        seq = torch.tensor([p + c])  # unpadded: padding must change nothing
        logits = model(seq)[0]
        want = sum(
            F.log_softmax(logits[t - 1], -1)[seq[0, t]].item() for t in range(len(p), len(seq[0]))
        )
        assert got[row].item() == pytest.approx(want, abs=1e-5)


def test_token_logprobs_matches_trl_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    model = tiny_gpt(1)
    tokens = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    want = selective_log_softmax(logits[:, :-1], tokens[:, 1:])
    torch.testing.assert_close(token_logprobs(logits, tokens), want, atol=1e-5, rtol=0)


def test_pad_completions_layout():
    (tokens, mask), _, _ = _batch()
    assert tokens.tolist()[1] == [0, 5, 4, 4, 4, 1, 8]
    assert tokens.tolist()[2] == [0, 1, 2, 7, 3, 10, 10]
    assert mask.tolist()[2] == [False, False, False, False, True, False, False]
    with pytest.raises(ValueError, match="as many prompts"):
        pad_completions([[0]], [[1], [2]], 0)
    with pytest.raises(ValueError, match="at least one token"):
        pad_completions([[]], [[1]], 0)


def test_logprob_shape_errors():
    model = tiny_gpt()
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="shape of tokens"):
        sequence_logprobs(model, tokens, torch.ones(2, 4, dtype=torch.bool))
    first = torch.zeros(2, 5, dtype=torch.bool)
    first[:, 0] = True
    with pytest.raises(ValueError, match="first token"):
        sequence_logprobs(model, tokens, first)
    with pytest.raises(ValueError, match="must match tokens"):
        token_logprobs(torch.zeros(2, 4, 11), tokens)


# ---------------------------------------------------------------- Bradley-Terry, DPO
def test_bradley_terry_closed_form():
    rw = torch.tensor([1.0, -0.5, 3.0, 0.0], dtype=torch.float64)
    rl = torch.tensor([0.0, 0.5, -2.0, 0.0], dtype=torch.float64)
    want = -sum(math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(rw, rl, strict=True)) / 4
    assert bradley_terry_loss(rw, rl).item() == pytest.approx(want, abs=1e-12)
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))
    big = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert big.item() == pytest.approx(400.0)  # softplus, not log(0) = inf
    with pytest.raises(ValueError, match="one shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))


class _HFModel(nn.Module):
    """Our GPT behind the call signature TRL uses: ``model(input_ids=..., ...).logits``."""

    is_gradient_checkpointing = False

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.gpt(input_ids))


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def _trl_dpo_loss(policy, reference, tokens, mask, beta, ref_logps=None):
    """TRL's DPOTrainer._compute_loss on a minimal trainer: the batch is [chosen; rejected]."""
    from trl import DPOTrainer

    model = _HFModel(policy)
    trainer = SimpleNamespace(
        model=model, ref_model=None if reference is None else _HFModel(reference),
        accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=ref_logps is not None, f_divergence_type="reverse_kl",
        loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, use_weighting=False,
        label_smoothing=0.0, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
    )  # fmt: skip
    inputs = {
        "input_ids": tokens,
        "attention_mask": torch.ones_like(tokens),
        "completion_mask": mask.long(),
    }
    if ref_logps is not None:
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref_logps
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def _pairs():
    prompts = [[0, 3], [0, 5, 1], [0, 2], [0, 9, 9]] * 2
    completions = [[4, 6], [1, 1, 2], [7], [3, 8, 8, 2], [5, 5], [2], [7, 7, 1], [6]]
    return pad_completions(prompts, completions, pad_id=0)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_equals_trl_on_the_same_logprobs(beta):
    policy, reference = tiny_gpt(2), tiny_gpt(3)
    tokens, mask = _pairs()
    lp = sequence_logprobs(policy, tokens, mask)
    with torch.no_grad():
        ref = sequence_logprobs(reference, tokens, mask)
    ours = dpo_loss(lp[:4], lp[4:], ref[:4], ref[4:], beta)
    theirs = _trl_dpo_loss(policy, None, tokens, mask, beta, ref_logps=(ref[:4], ref[4:]))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    # and with TRL computing the reference log-probs itself from the reference model
    theirs_ref = _trl_dpo_loss(policy, reference, tokens, mask, beta)
    assert ours.item() == pytest.approx(theirs_ref.item(), abs=1e-6)


def test_dpo_loss_gradient_equals_trl():
    policy, reference = tiny_gpt(2), tiny_gpt(3)
    tokens, mask = _pairs()
    with torch.no_grad():
        ref = sequence_logprobs(reference, tokens, mask)
    lp = sequence_logprobs(policy, tokens, mask)
    dpo_loss(lp[:4], lp[4:], ref[:4], ref[4:], 0.3).backward()
    ours = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    _trl_dpo_loss(policy, reference, tokens, mask, 0.3).backward()
    for a, p in zip(ours, policy.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-4)


def test_dpo_loss_closed_form_and_errors():
    pw, pl = torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -4.0])
    rw, rl = torch.tensor([-2.5, -2.0]), torch.tensor([-2.0, -3.0])
    beta = 0.7
    margins = [beta * ((a - b) - (c - d)) for a, b, c, d in zip(pw, rw, pl, rl, strict=True)]
    want = sum(math.log1p(math.exp(-m)) for m in margins) / 2
    assert dpo_loss(pw, pl, rw, rl, beta).item() == pytest.approx(want, abs=1e-6)
    assert implicit_reward(pw, rw, beta).tolist() == pytest.approx([-0.35, 0.7])
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(pw, pl, rw, rl[:1], beta)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pw, pl, rw, rl, 0.0)


def test_dpo_training_ranks_the_preferred_completion_higher():
    """Toy preferences: after the prompt, completions made of EVEN tokens beat odd ones."""
    reference = tiny_gpt(4)
    policy = tiny_gpt(4)
    gen = torch.Generator().manual_seed(0)
    prompts, chosen, rejected = [], [], []
    for _ in range(48):
        prompts.append([0, int(torch.randint(1, 11, (1,), generator=gen))])
        chosen.append((2 * torch.randint(1, 5, (3,), generator=gen)).tolist())  # even
        rejected.append((2 * torch.randint(0, 5, (3,), generator=gen) + 1).tolist())  # odd
    c = pad_completions(prompts, chosen, 0)
    r = pad_completions(prompts, rejected, 0)
    train, held = slice(0, 32), slice(32, 48)

    def margins(rows):
        with torch.no_grad():
            rc = implicit_reward(
                sequence_logprobs(policy, c[0][rows], c[1][rows]),
                sequence_logprobs(reference, c[0][rows], c[1][rows]), 0.5,
            )  # fmt: skip
            rr = implicit_reward(
                sequence_logprobs(policy, r[0][rows], r[1][rows]),
                sequence_logprobs(reference, r[0][rows], r[1][rows]), 0.5,
            )  # fmt: skip
        return rc - rr

    assert margins(held).abs().max() < 1e-6  # policy == reference: implicit reward 0
    losses = train_dpo(
        policy, reference, (c[0][train], c[1][train]), (r[0][train], r[1][train]),
        beta=0.5, steps=60, lr=3e-3, batch_size=16,
    )  # fmt: skip
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert sum(losses[-10:]) / 10 < 0.1
    assert (margins(train) > 0).all()
    assert (margins(held) > 0).all()  # generalises to unseen pairs of the same rule


# ---------------------------------------------------------------- reward model
def test_reward_model_reads_the_last_real_token():
    gpt = tiny_gpt(5)
    rm = RewardModel(gpt)
    with torch.no_grad():
        rm.head.weight.normal_()
    tokens, mask = _pairs()
    seen = {}
    gpt.ln_final.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    gpt(tokens)  # the reference: GPT's own final residual stream
    attn = mask.clone()
    attn[:, 0] = True  # reading position: the last completion token
    feats = rm.features(tokens, mask)
    last = [int(row.nonzero().max()) for row in mask]
    torch.testing.assert_close(feats, seen["x"][torch.arange(len(last)), last])
    torch.testing.assert_close(rm.features(tokens), seen["x"][:, -1])
    want = feats @ rm.head.weight[0] + rm.head.bias
    torch.testing.assert_close(rm(tokens, mask), want)
    with pytest.raises(ValueError, match="attention_mask"):
        rm(tokens, mask[:, :-1])


def test_reward_model_training_learns_a_rule_frozen_trunk():
    rm = RewardModel(tiny_gpt(6), freeze_trunk=True)
    assert all(not p.requires_grad for p in rm.trunk.parameters())
    gen = torch.Generator().manual_seed(1)
    prompts = [[0]] * 64
    chosen = [[2 * int(torch.randint(1, 5, (1,), generator=gen)), 3] for _ in range(64)]
    rejected = [[2 * int(torch.randint(0, 5, (1,), generator=gen)) + 1, 3] for _ in range(64)]
    c, r = pad_completions(prompts, chosen, 0), pad_completions(prompts, rejected, 0)
    before = [p.clone() for p in rm.trunk.parameters()]
    losses = train_reward_model(rm, c, r, steps=150, lr=0.05)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # zero head: r = 0
    assert all(torch.equal(a, b) for a, b in zip(before, rm.trunk.parameters(), strict=True))
    with torch.no_grad():
        assert (rm(*c) > rm(*r)).float().mean() > 0.9


# ---------------------------------------------------------------- KL and the optimum
def test_optimal_policy_maximises_the_regularised_objective():
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(6, generator=gen, dtype=torch.float64).softmax(-1)
    reward = torch.randn(6, generator=gen, dtype=torch.float64)
    beta = 0.4

    def objective(pi):
        return (pi * reward).sum() - beta * (pi * (pi / ref).log()).sum()

    best = optimal_policy(ref, reward, beta)
    assert best.sum().item() == pytest.approx(1.0)
    # the optimum's value is beta log Z (the log-partition function)
    log_z = torch.logsumexp(ref.log() + reward / beta, -1)
    assert objective(best).item() == pytest.approx(beta * log_z.item(), abs=1e-12)
    for _ in range(200):  # no nearby distribution does better
        other = (best.log() + 0.3 * torch.randn(6, generator=gen, dtype=torch.float64)).softmax(-1)
        assert objective(other) < objective(best)
    # beta -> 0: all mass on the best reward; beta -> inf: the reference
    assert optimal_policy(ref, reward, 1e-4).argmax() == reward.argmax()
    torch.testing.assert_close(optimal_policy(ref, reward, 1e6), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="beta"):
        optimal_policy(ref, reward, -1.0)


def test_kl_on_samples_is_unbiased_by_enumeration():
    """E_{y ~ pi}[per-sample estimate] equals KL(pi || ref) over all 2-token completions."""
    policy, reference = tiny_gpt(7, d_vocab=4), tiny_gpt(8, d_vocab=4)
    prompt = [0, 1]
    ys = list(itertools.product(range(4), repeat=2))
    tokens, mask = pad_completions([prompt] * len(ys), [list(y) for y in ys], 0)
    with torch.no_grad():
        lp = sequence_logprobs(policy, tokens, mask).double()
        lq = sequence_logprobs(reference, tokens, mask).double()
    p = lp.exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    exact = (p * (lp - lq)).sum().item()
    estimate = kl_on_samples(policy, reference, tokens, mask).double()
    assert (estimate >= 0).all()
    assert (p * estimate).sum().item() == pytest.approx(exact, abs=1e-5)
    assert kl_on_samples(policy, policy, tokens, mask).abs().max() < 1e-6


# ---------------------------------------------------------------- best-of-n
@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_kl_matches_the_law_of_the_maximum(n):
    # n draws from a uniform law on N distinct-reward items: the best is item i (ascending)
    # with probability (i/N)^n - ((i-1)/N)^n; its KL to uniform -> log n - (n-1)/n
    size = 200_000
    i = torch.arange(1, size + 1, dtype=torch.float64)
    q = (i / size) ** n - ((i - 1) / size) ** n
    kl = (q * (q * size).clamp_min(1e-300).log()).sum().item()
    assert best_of_n_kl(n) == pytest.approx(kl, abs=1e-3)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_best_of_n_expectation_against_every_subset():
    proxy = torch.tensor([0.3, 1.0, 1.0, -2.0, 5.0, 0.3, 2.0])  # ties included
    score = torch.tensor([1.0, 0.0, 4.0, 2.0, -1.0, 3.0, 0.5])
    for n in range(1, 8):
        total, count = 0.0, 0
        for subset in itertools.combinations(range(7), n):
            best = max(proxy[list(subset)].tolist())
            tied = [j for j in subset if proxy[j] == best]  # random tie break: their mean
            total += sum(score[j].item() for j in tied) / len(tied)
            count += 1
        assert best_of_n_expectation(proxy, score, n) == pytest.approx(total / count, abs=1e-9)
    with pytest.raises(ValueError, match="pool size"):
        best_of_n_expectation(proxy, score, 8)


def test_best_of_n_picks_the_highest_reward_sample():
    model = tiny_gpt(9)
    prompt = torch.tensor([0, 3])
    best, rewards = best_of_n(model, prompt, 8, lambda c: (c == 5).sum(-1), 6, seed=3)
    samples = generate(model, prompt[None].expand(8, -1), 6, seed=3)[:, 2:]
    counts = (samples == 5).sum(-1)
    assert rewards.tolist() == counts.double().tolist()
    assert torch.equal(best, samples[int(counts.argmax())])
    with pytest.raises(ValueError, match="rewards"):
        best_of_n(model, prompt, 4, lambda c: torch.zeros(3), 2, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        best_of_n(model, torch.tensor([[0]]), 4, lambda c: torch.zeros(4), 2)


def test_story_mood_counts_the_corpus_mood_words():
    from decoding_gpt.data.stories import generate_stories

    assert story_mood(" Lily was very glad. Tom laughed loudly. Tom cried.") == 1
    assert story_mood(" Lily sang a little song. Tom was sad.") == -1  # singing is neutral
    stories = generate_stories(300, split="val")
    agree = sum((story_mood(s.text) > 0) == bool(s.sentiment) for s in stories)
    assert agree == len(stories)  # on the corpus the rule is the story_sentiment label


def test_reward_model_mean_pool_and_trainable_trunk():
    gpt = tiny_gpt(10)
    tokens, mask = _pairs()
    seen = {}
    gpt.ln_final.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    gpt(tokens)
    rm = RewardModel(gpt, pool="mean")
    w = mask.double()[..., None]
    want = (seen["x"].double() * w).sum(1) / w.sum(1)
    torch.testing.assert_close(rm.features(tokens, mask).double(), want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="a 1 in every row"):
        rm(tokens, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="pool"):
        RewardModel(gpt, pool="max")
    before = [p.clone() for p in rm.trunk.parameters()]
    half = len(tokens) // 2
    train_reward_model(
        rm, (tokens[:half], mask[:half]), (tokens[half:], mask[half:]), steps=3, batch_size=4
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, rm.trunk.parameters(), strict=True))
