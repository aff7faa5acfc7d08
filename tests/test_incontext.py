import math

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.incontext import in_context_learning_score, loss_by_position, transition_window


class _FixedLogits(torch.nn.Module):
    """A 'model' that returns given logits, whatever the tokens."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, tokens):
        return self.logits


def test_loss_by_position_matches_cross_entropy_per_position():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=gen)
    tokens = torch.randint(0, 11, (3, 6), generator=gen)
    got = loss_by_position(_FixedLogits(logits), tokens)
    assert got.shape == (5,)
    for p in range(5):
        want = -torch.log_softmax(logits[:, p], -1)[torch.arange(3), tokens[:, p + 1]].mean()
        torch.testing.assert_close(got[p], want)
    whole = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(got.mean(), whole)


def test_loss_by_position_needs_two_positions():
    with pytest.raises(ValueError, match="pos >= 2"):
        loss_by_position(_FixedLogits(torch.zeros(1, 1, 3)), torch.zeros(1, 1, dtype=torch.long))


def test_in_context_learning_score_is_late_minus_early():
    losses = torch.tensor([5.0] * 10 + [4.0] * 10 + [2.0] * 10)
    assert in_context_learning_score(losses, late=20, early=0) == pytest.approx(-3.0)
    assert in_context_learning_score(losses, late=19, early=0, width=2) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="early < late"):
        in_context_learning_score(losses, late=5, early=5)
    with pytest.raises(ValueError, match="late \\+ width"):
        in_context_learning_score(losses, late=25, early=0)


def test_transition_window_of_a_sigmoid_is_where_it_crosses_10_and_90_percent():
    steps = list(range(0, 1001, 10))
    center, width = 600, 20
    values = [2.0 - 1.5 / (1 + math.exp(-(s - center) / width)) for s in steps]
    start, end = transition_window(steps, values)
    # a logistic crosses 10 % and 90 % of its change at center -/+ width * ln 9
    assert abs(start - (center - width * math.log(9))) <= 10
    assert abs(end - (center + width * math.log(9))) <= 10
    assert transition_window(steps, [-v for v in values]) == (start, end)  # direction-free


def test_transition_window_rejects_flat_and_mismatched_curves():
    with pytest.raises(ValueError, match="no transition"):
        transition_window([0, 1, 2], [1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        transition_window([0, 1], [1.0])
    with pytest.raises(ValueError, match="low < high"):
        transition_window([0, 1], [0.0, 1.0], low=0.9, high=0.1)


def test_phase_change_curves_measure_each_snapshot():
    from decoding_gpt.heads import induction_score_on_repeated_tokens, previous_token_score
    from decoding_gpt.incontext import phase_change_curves
    from decoding_gpt.transformer import GPT, GPTConfig

    cfg = GPTConfig(d_vocab=20, n_ctx=24, d_model=16, n_layers=2, n_heads=2, attn_only=True)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(GPT(cfg).eval())
    text = torch.randint(0, 20, (3, 24), generator=torch.Generator().manual_seed(0))
    repeat = dict(seq_len=8, batch=2, seed=0, prefix=0, token_ids=torch.arange(1, 20))
    curves = phase_change_curves([0, 10], models, text, late=12, early=2, repeat=repeat)
    assert curves.steps == [0, 10]
    for k, model in enumerate(models):
        losses = loss_by_position(model, text)
        torch.testing.assert_close(curves.losses_by_position[k], losses)
        assert curves.loss[k] == pytest.approx(float(losses.mean()), abs=1e-5)
        score = in_context_learning_score(losses, 12, 2)
        assert curves.icl_score[k] == pytest.approx(score, abs=1e-5)
        _, cache = model.run_with_cache(text)
        prev = previous_token_score(cache["blocks.0.attn.hook_pattern"]).max()
        assert curves.previous_token_score[k] == pytest.approx(float(prev))
        result = induction_score_on_repeated_tokens(model, **repeat)
        assert curves.induction_score[k] == pytest.approx(float(result.scores.max()))
        assert curves.repeated_loss[k] == pytest.approx(result.loss_repeated_half)
    assert curves.loss[0] != curves.loss[1]
