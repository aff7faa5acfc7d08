"""Stories with chants (:mod:`decoding_gpt.data.chants`), checked on the generated text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.chants import (
    CHANT_LENGTH,
    CHANT_NUMBERS,
    FRAMES,
    chant_story,
    chant_vocabulary,
    named_chant_story,
    recitations,
)
from decoding_gpt.data.packing import load_token_array
from decoding_gpt.data.stories import generate_story
from decoding_gpt.data.world import CHARACTER_BY_NAME


def words_of(text: str) -> list[tuple[int, list[str]]]:
    """Every recitation in the story, in order: (which frame, its words)."""
    return [(r.frame, text[r.start : r.end].split()) for r in recitations(text)]


def test_recitations_are_found_in_every_frame():
    text = 'Tom chanted: a b1 C. Mia said, "Hi." "b1 C," chanted Mia. Bo shouted: C!'
    found = recitations(text)
    assert [r.frame for r in found] == [0, 2, 1]
    assert [text[r.start : r.end] for r in found] == ["a b1 C", "b1 C", "C"]
    assert recitations('Mia sang a little song: "La ri."') == []


@pytest.fixture(scope="module")
def stories():
    return [chant_story(i, seed=1).text for i in range(200)]


def test_every_story_makes_up_one_chant_and_chants_it_again(stories):
    vocabulary = set(chant_vocabulary())
    for text in stories:
        (_, chant), *repeats = words_of(text)
        assert CHANT_LENGTH[0] <= len(chant) <= CHANT_LENGTH[1], text
        assert set(chant) <= vocabulary
        assert repeats, text  # at least the one before the ending
        for _, words in repeats:
            assert words == chant[len(chant) - len(words) :]  # a suffix: from some word on
            assert len(words) >= 3


def test_repeats_often_start_in_the_middle(stories):
    starts = []
    for text in stories:
        (_, chant), *repeats = words_of(text)
        starts += [len(chant) - len(words) for _, words in repeats]
    share_from_first_word = starts.count(0) / len(starts)
    assert 0.2 < share_from_first_word < 0.4  # CHANT_FROM_START = 0.3


def test_nothing_in_the_framing_tells_a_repeat_from_the_first_recitation(stories):
    first = [words_of(t)[0][0] for t in stories]
    later = [frame for t in stories for frame, _ in words_of(t)[1:]]
    for frame in range(len(FRAMES)):  # each frame is drawn alike, first time or not
        assert abs(first.count(frame) / len(first) - 1 / len(FRAMES)) < 0.1
        assert abs(later.count(frame) / len(later) - 1 / len(FRAMES)) < 0.05


def test_chants_draw_numbers_at_their_rate(stories):
    words = [w for t in stories for w in words_of(t)[0][1]]
    share = sum(w.isdigit() for w in words) / len(words)
    assert abs(share - CHANT_NUMBERS) < 0.03


def test_chant_words_are_the_base_corpus_words_and_most_of_its_tokens():
    tok = get_tokenizer("stories")
    vocabulary = chant_vocabulary()
    assert len(vocabulary) > 900 and all(re.fullmatch(r"[A-Za-z0-9]{2,}", w) for w in vocabulary)
    assert {"Tom", "market", "1712"} <= set(vocabulary)
    chant_tokens = {i for w in vocabulary for i in tok.encode(" " + w).ids}
    base_tokens = {i for k in range(300) for i in tok.encode(generate_story(k).text).ids}
    # the rest: punctuation, pieces of words after a quotation mark, single letters
    assert len(chant_tokens & base_tokens) / len(base_tokens) > 0.7


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


def test_named_chant_stories_chant_over_the_world_s_named_characters(tmp_path, monkeypatch):
    texts = [named_chant_story(i, seed=1).text for i in range(100)]
    for text in texts:
        (_, chant), *repeats = words_of(text)
        assert repeats and all(words == chant[len(chant) - len(words) :] for _, words in repeats)
        prose = text
        for r in reversed(recitations(text)):  # chant words may say "named" too
            prose = prose[: r.start] + prose[r.end :]
        names = re.findall(r"named (\w+)", prose)
        assert names and all(name in CHARACTER_BY_NAME for name in names), text
    assert named_chant_story(3).text == named_chant_story(3).text
    assert named_chant_story(3).text not in (chant_story(3).text, generate_story(3).text)
    monkeypatch.setenv("DGPT_CACHE", str(tmp_path))
    arr = load_token_array("named-chant-stories", "val", n_tokens=500)
    first = get_tokenizer("stories").encode(named_chant_story(0, split="val").text).ids
    assert arr[: len(first)].tolist() == first[:500]
