"""Stories with chants (:mod:`decoding_gpt.data.chants`), checked on the generated text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.chants import CHANT_LENGTH, chant_story, chant_vocabulary
from decoding_gpt.data.packing import load_token_array
from decoding_gpt.data.stories import generate_story

MADE_UP = re.compile(r"made up a silly chant: ([a-z ]+)\.")
SAID_AGAIN = re.compile(r"said the chant again: ([a-z ]+)\.")


@pytest.fixture(scope="module")
def stories():
    return [chant_story(i, seed=1).text for i in range(200)]


def test_every_story_makes_up_one_chant_and_says_it_again(stories):
    vocabulary = set(chant_vocabulary())
    for text in stories:
        made = MADE_UP.findall(text)
        assert len(made) == 1, text
        chant = made[0].split()
        assert CHANT_LENGTH[0] <= len(chant) <= CHANT_LENGTH[1]
        assert set(chant) <= vocabulary
        repeats = SAID_AGAIN.findall(text)
        assert repeats, text  # at least the one before the ending
        for said in repeats:
            words = said.split()
            assert words == chant[len(chant) - len(words) :]  # a suffix: from some word on
            assert len(words) >= 3


def test_repeats_often_start_in_the_middle(stories):
    starts = [
        len(MADE_UP.findall(t)[0].split()) - len(r.split())
        for t in stories
        for r in SAID_AGAIN.findall(t)
    ]
    share_from_first_word = starts.count(0) / len(starts)
    assert 0.2 < share_from_first_word < 0.4  # CHANT_FROM_START = 0.3


def test_chant_words_are_the_base_corpus_words_and_over_half_its_tokens():
    tok = get_tokenizer("stories")
    vocabulary = chant_vocabulary()
    assert len(vocabulary) > 300 and all(re.fullmatch(r"[a-z]{2,}", w) for w in vocabulary)
    chant_tokens = {i for w in vocabulary for i in tok.encode(" " + w).ids}
    base_tokens = {i for k in range(300) for i in tok.encode(generate_story(k).text).ids}
    # the rest: capitalised words, punctuation, digits of years, names
    assert len(chant_tokens & base_tokens) / len(base_tokens) > 0.5


def test_chant_stories_are_pure_functions_of_their_arguments():
    assert chant_story(3).text == chant_story(3).text
    assert chant_story(3).text != chant_story(4).text
    assert chant_story(3).text != chant_story(3, split="val").text
    assert chant_story(3).text != generate_story(3).text


def test_packed_chant_corpus_starts_with_the_first_stories(tmp_path, monkeypatch):
    monkeypatch.setenv("DGPT_CACHE", str(tmp_path))
    tok = get_tokenizer("stories")
    arr = load_token_array("chant-stories", "val", n_tokens=2000)
    assert arr.dtype == np.uint16 and len(arr) == 2000
    first = tok.encode(chant_story(0, split="val").text).ids
    assert arr[: len(first)].tolist() == first
    with pytest.raises(ValueError, match="corpus must be one of"):
        load_token_array("chants", "val", n_tokens=10)
