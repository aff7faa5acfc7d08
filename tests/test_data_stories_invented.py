"""``StoryConfig(invented_words=True)``: stories whose names and songs are invented.

Checked on the generated *text* (regular expressions), not on the generator's own
bookkeeping: names are fresh syllable words that recur, no name of the world table appears,
the song is sung at least three times word for word; labels still cover the text. That the
default corpus is unchanged is pinned by ``tests/test_data_stories.py`` (the shipped
tokenizer's training-text hash).
"""

from __future__ import annotations

import re

import pytest

from decoding_gpt.data import get_tokenizer
from decoding_gpt.data.stories import (
    INVENTED_SONG_TIMES,
    StoryConfig,
    generate_stories,
    generate_story,
    label_tokens,
)
from decoding_gpt.data.world import CHARACTERS

INVENTED = StoryConfig(invented_words=True)
SYLLABLES = re.compile(r"(?:[bdfgklmnprstvz][aeiou])+")


@pytest.fixture(scope="module")
def stories():
    return generate_stories(200, seed=1, config=INVENTED)


def test_default_is_off():
    assert StoryConfig().invented_words is False
    assert generate_story(5).text == generate_story(5, config=StoryConfig()).text
    assert generate_story(5).text != generate_story(5, config=INVENTED).text


def test_deterministic():
    assert generate_story(7, 3, "val", INVENTED).text == generate_story(7, 3, "val", INVENTED).text


def test_names_are_invented_and_recur(stories):
    world_names = {c.name for c in CHARACTERS}
    for story in stories:
        for c in story.cast:
            assert SYLLABLES.fullmatch(c.name.lower()), c.name
            assert 4 <= len(c.name) <= 6 and c.name not in world_names
        lead = story.cast[0].name
        assert len(re.findall(rf"\b{lead}\b", story.text)) >= 2  # named, then mentioned again
        words = set(re.findall(r"[A-Z][a-z]+", story.text))
        assert not words & world_names, words & world_names


def test_song_sung_at_least_three_times(stories):
    for story in stories:
        first = re.search(r'sang a little song: "([^"]+)"', story.text)
        again = re.findall(r'sang the song again: "([^"]+)"', story.text)
        assert first is not None and len(again) >= INVENTED_SONG_TIMES - 1
        assert all(a == first.group(1) for a in again)
        assert all(SYLLABLES.fullmatch(w.lower()) for w in first.group(1).rstrip(".").split())


def test_labels_cover_the_text(stories):
    tok = get_tokenizer("stories")
    for story in stories[:20]:
        assert sum(story.lengths) == len(story.text)
        ids = {c.id for c in story.cast}
        labels = label_tokens(story, tok)
        speakers = set(labels.labels["current_speaker"].tolist()) - {-1}
        assert speakers <= ids
