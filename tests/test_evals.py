"""decoding_gpt.evals against closed forms and unbatched recomputation."""

from __future__ import annotations

import pytest
import torch

from decoding_gpt import evals
from decoding_gpt.data import eos_id, get_tokenizer
from decoding_gpt.data.stories import ioi_prompts, year_prompts
from decoding_gpt.data.world import fact_prompts
from decoding_gpt.transformer import GPT, GPTConfig


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("stories")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPTConfig(d_vocab=tokenizer.get_vocab_size(), n_ctx=64, d_model=32, n_layers=1,
                       n_heads=2)  # fmt: skip
    return GPT(config).eval()


def _uniform_model(vocab: int):
    return lambda tokens: torch.zeros(*tokens.shape, vocab)


def test_ioi_logit_difference_matches_one_prompt_at_a_time(model, tokenizer):
    prompts = ioi_prompts(12, seed=3)
    batched = evals.ioi_logit_difference(model, tokenizer, prompts)
    for prompt, value in zip(prompts, batched, strict=True):
        tokens = torch.tensor([[eos_id(tokenizer), *tokenizer.encode(prompt.prompt).ids]])
        logits = model(tokens)[0, -1]
        io = tokenizer.encode(" " + prompt.io).ids[0]
        s = tokenizer.encode(" " + prompt.s).ids[0]
        torch.testing.assert_close(value, logits[io] - logits[s], atol=1e-5, rtol=1e-5)


def test_greater_than_uniform_model_is_closed_form(tokenizer):
    prompts = year_prompts(30, seed=1)
    uniform = _uniform_model(tokenizer.get_vocab_size())
    share = evals.greater_than_probability(uniform, tokenizer, prompts)
    expected = torch.tensor([(99 - p.start_yy) / 100 for p in prompts])
    torch.testing.assert_close(share, expected)


def test_fact_recall_of_a_constant_model_counts_its_answer(tokenizer):
    prompts = fact_prompts("held_out")
    answer = prompts[0].answer
    target = tokenizer.encode(answer).ids[0]
    vocab = tokenizer.get_vocab_size()

    def constant(tokens):
        logits = torch.zeros(*tokens.shape, vocab)
        logits[..., target] = 1.0
        return logits

    correct = evals.fact_recall_correct(constant, tokenizer, prompts)
    expected = [tokenizer.encode(p.answer).ids[0] == target for p in prompts]
    assert correct.tolist() == expected and any(expected)


def test_multi_token_answer_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="expected exactly one"):
        evals.single_token_id(tokenizer, " Maplefield and the river")
