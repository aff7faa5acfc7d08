"""Stories with chants: text in which copying pays for almost every word of the vocabulary.

A child in the story makes up a silly chant, a string of 8-40 words drawn at random from
the stories' own vocabulary, and the chant is said again later, often from a word in
its middle::

     Mia made up a silly chant: boy in took the market yan and cake. ...
     Tom said the chant again: the market yan and cake.

Nothing in the grammar predicts which word follows which inside a chant (any word of the
vocabulary may follow any other), and a repeat can start anywhere, so the only way to
predict a repeated chant word is to find the current word earlier in the story and copy
the word that followed it there: what an induction head does. Because the chant words
cover most of the tokens the corpus uses, the copying a model learns from chants is not
tied to a few words; it works on repeated random tokens too. Everything else is the base
grammar of :mod:`decoding_gpt.data.stories` with invented words on (names, songs), and a
model trains on every token: no copy task, no loss mask.

The chant is said when the story opens, in place of four in five ``action`` events, and
before the ending; the first time it is made up, every later time it is repeated. (Version
1 had chants of 6-12 words in place of half the action events: a model trained on it formed
induction heads that stayed below 0.35 on repeated random tokens; denser repetition pays
copying more.)
"""

from __future__ import annotations

import functools
import random
import re

from decoding_gpt.data.stories import (
    Split,
    Story,
    StoryConfig,
    _story_rng,
    _StoryGrammar,
    generate_story,
    write_story,
)

CHANT_VERSION = 2  # bump when the chant stories change
CHANT_CONFIG = StoryConfig(invented_words=True)
CHANT_LENGTH = (8, 40)  # words in a chant
CHANT_IN_PLACE_OF_ACTION = 0.8  # the chance that an ``action`` event is a chant instead
CHANT_FROM_START = 0.3  # the chance that a repeat starts at the chant's first word
LEXICON_STORIES = 3000  # the chant vocabulary is read off this many base-corpus stories
_LOWER_WORD = re.compile(r"\b[a-z]{2,}\b")  # whole lower-case words (not "s" of "Tom's")


@functools.cache
def chant_vocabulary() -> tuple[str, ...]:
    """The words a chant is made of: every lower-case word of two or more letters in the
    first :data:`LEXICON_STORIES` stories of the base corpus (seed 0, train), sorted."""
    words = set()
    for index in range(LEXICON_STORIES):
        words.update(_LOWER_WORD.findall(generate_story(index).text))
    return tuple(sorted(words))


class _ChantGrammar(_StoryGrammar):
    """The story grammar with a chant made up at the opening and said again later."""

    def __init__(self, rng: random.Random, config: StoryConfig) -> None:
        super().__init__(rng, config)
        self.chant: list[str] | None = None

    def recite(self) -> None:
        """Make up the chant (first call) or say it again from a random word."""
        who = self.rng.choice(self.cast)
        if self.chant is None:
            vocabulary, length = chant_vocabulary(), self.rng.randint(*CHANT_LENGTH)
            self.chant = [self.rng.choice(vocabulary) for _ in range(length)]
            self.w.sentence(f"{who.name} made up a silly chant: {' '.join(self.chant)}.", who)
            return
        start = 0
        if self.rng.random() >= CHANT_FROM_START:  # from a middle word: only copying helps
            start = self.rng.randint(1, len(self.chant) - 3)
        words = " ".join(self.chant[start:])
        self.w.sentence(f"{who.name} said the chant again: {words}.", who)

    def opening(self) -> None:
        super().opening()
        self.recite()

    def action(self) -> None:
        if self.rng.random() < CHANT_IN_PLACE_OF_ACTION:
            self.recite()
        else:
            super().action()

    def ending(self) -> None:
        self.recite()
        super().ending()


def chant_story(index: int, seed: int = 0, split: Split = "train") -> Story:
    """Chant story number ``index`` of ``(seed, split)``: a pure function of its args."""
    rng = _story_rng(seed, split, index)
    # a stream of its own: chant story i and base story i are drawn independently
    rng = random.Random(f"chants/v{CHANT_VERSION}/{rng.getrandbits(64)}")
    return write_story(rng, CHANT_CONFIG, grammar=_ChantGrammar)
