"""Stories with chants: text in which copying pays for most of the tokens the text uses.

A child in the story makes up a silly chant, a string of 8-40 words drawn at random from
the stories' own words (capitalised words and years too), and chants it again
later, often from a word in its middle::

     Mia chanted: boy in Tom took 1712 the market kite and cake. ...
     "the market kite and cake," chanted Tom.

Nothing in the grammar predicts which word follows which inside a chant (any word may
follow any other), and a repeat can start anywhere, so the only way to predict a repeated
chant word is to find the current word earlier in the story and copy the word that
followed it there: what an induction head does. Every recitation, the first one too, is
framed the same way (one of :data:`FRAMES`, drawn each time), so nothing but the earlier
copy tells that a chant is said again: a frame says only that a chant starts. (A model
trained on this text still copies chant words most surely inside a frame: lecture 11
measures by how much.) Everything else is the base grammar of
:mod:`decoding_gpt.data.stories` with invented words on (names, songs), and a model
trains on every token: no copy task, no loss mask.

The chant is said when the story opens, in place of four in five ``action`` events, and
before the ending.

Earlier versions, and what a 2-layer model trained on them learned:

- 1: chants of 6-12 lower-case words in place of half the action events; induction heads
  below 0.35 on repeated random tokens.
- 2: 8-40 lower-case words, four in five action events, "made up a silly chant: ..." the
  first time and "said the chant again: ..." later. One induction head (0.43), but its
  copying waited for the cue: with "said the chant again:" before the second copy of
  repeated random words the loss there was 0.16 nats, without it 2.96; and lower-case
  words are under half the tokens the text uses.
"""

from __future__ import annotations

import functools
import random
import re
from typing import NamedTuple

from decoding_gpt.data.stories import (
    Split,
    Story,
    StoryConfig,
    _story_rng,
    _StoryGrammar,
    generate_story,
    write_story,
)

CHANT_VERSION = 3  # bump when the chant stories change
CHANT_CONFIG = StoryConfig(invented_words=True)
CHANT_LENGTH = (8, 40)  # words in a chant
CHANT_IN_PLACE_OF_ACTION = 0.8  # the chance that an ``action`` event is a chant instead
CHANT_FROM_START = 0.3  # the chance that a repeat starts at the chant's first word
CHANT_NUMBERS = 0.15  # the chance that a chant word is a number (a year), not a word
LEXICON_STORIES = 3000  # the chant vocabulary is read off this many base-corpus stories
_WORD = re.compile(r"\b[A-Za-z0-9]{2,}\b")  # whole words and numbers (not "s" of "Tom's")
# How every recitation is framed, the first too: ``{who}`` chants ``{words}``.
FRAMES = ("{who} chanted: {words}.", "{who} shouted: {words}!", '"{words}," chanted {who}.')


@functools.cache
def chant_vocabulary() -> tuple[str, ...]:
    """The words a chant is made of: every word or number of two or more characters in
    the first :data:`LEXICON_STORIES` stories of the base corpus (seed 0, train), as
    written (capitals kept), sorted."""
    words = set()
    for index in range(LEXICON_STORIES):
        words.update(_WORD.findall(generate_story(index).text))
    return tuple(sorted(words))


@functools.cache
def _numbers_and_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`chant_vocabulary` split into the numbers (years) and the words."""
    numbers = tuple(w for w in chant_vocabulary() if w.isdigit())
    return numbers, tuple(w for w in chant_vocabulary() if not w.isdigit())


class _ChantGrammar(_StoryGrammar):
    """The story grammar with a chant made up at the opening and chanted again later."""

    def __init__(self, rng: random.Random, config: StoryConfig) -> None:
        super().__init__(rng, config)
        self.chant: list[str] | None = None

    def recite(self) -> None:
        """Make up the chant (first call) or chant it again from a random word; both are
        framed alike (:data:`FRAMES`)."""
        if self.chant is None:
            length = self.rng.randint(*CHANT_LENGTH)
            self.chant = [self.chant_word() for _ in range(length)]
            words = self.chant
        else:
            start = 0
            if self.rng.random() >= CHANT_FROM_START:  # from a middle word: only copying helps
                start = self.rng.randint(1, len(self.chant) - 3)
            words = self.chant[start:]
        who = self.rng.choice(self.cast)
        frame = self.rng.choice(FRAMES)
        self.w.sentence(frame.format(who=who.name, words=" ".join(words)), who)

    def chant_word(self) -> str:
        """A word of :func:`chant_vocabulary`; a number with chance :data:`CHANT_NUMBERS`
        (the years outnumber the words, and would crowd them out if drawn alike)."""
        numbers, words = _numbers_and_words()
        return self.rng.choice(numbers if self.rng.random() < CHANT_NUMBERS else words)

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


def _frame_pattern(frame: str) -> str:
    """``frame`` as a regex: any capitalised name, the words captured."""
    escaped = re.escape(frame).replace(r"\{who\}", "[A-Z][a-z]+")
    return escaped.replace(r"\{words\}", r"([A-Za-z0-9]+(?: [A-Za-z0-9]+)*)")


_RECITATION = re.compile("|".join(f"(?:{_frame_pattern(frame)})" for frame in FRAMES))


class Recitation(NamedTuple):
    """One recitation of the chant in a story's text: its frame and its words' span."""

    frame: int  # index into FRAMES
    start: int  # character offsets of the words in the text
    end: int


def recitations(text: str) -> list[Recitation]:
    """The chant's recitations in a chant story's ``text``, in order: the first is where
    it is made up, the rest say it again (a suffix of it)."""
    found = []
    for match in _RECITATION.finditer(text):
        frame = next(i for i, words in enumerate(match.groups()) if words is not None)
        found.append(Recitation(frame, match.start(frame + 1), match.end(frame + 1)))
    return found


def chant_story(index: int, seed: int = 0, split: Split = "train") -> Story:
    """Chant story number ``index`` of ``(seed, split)``: a pure function of its args."""
    return _chant_story("chants", CHANT_CONFIG, index, seed, split)


def named_chant_story(index: int, seed: int = 0, split: Split = "train") -> Story:
    """Chant story ``index`` over the base corpus's cast: the world's named characters
    (:class:`~decoding_gpt.data.stories.StoryConfig` defaults, no invented names), so their
    facts, the IOI and year events are in the text as in ``stories``, with chants added.

    The text of ``configs/experiments/stories-4l-chants.toml``: ``stories-4l``'s shape
    trained on it forms induction heads (an experiment, not a shipped model; the config
    says what it measured)."""
    return _chant_story("chants-named", StoryConfig(), index, seed, split)


def _chant_story(stream: str, config: StoryConfig, index: int, seed: int, split: Split) -> Story:
    rng = _story_rng(seed, split, index)
    # a stream of its own: chant story i and base story i are drawn independently
    rng = random.Random(f"{stream}/v{CHANT_VERSION}/{rng.getrandbits(64)}")
    return write_story(rng, config, grammar=_ChantGrammar)
