"""The fixed world of the stories corpus: characters, towns and the facts about them.

Every story is set in this one world, so a fact ("Mary's pet was a cat") is the same in
every story that states it, in whichever phrasing. That makes the facts learnable (for
factual recall, lecture 16) and editable (a rank-one edit should change one row of
:data:`FACTS` and nothing else).

A fact is a triple ``(subject, relation, object)``. Each relation has several
*phrasings*, templates with the object last, e.g. ``"{s}'s pet was a {o}."``. Most
phrasings are used in training; the ones in :data:`HELD_OUT_PHRASINGS` never appear in
the training text and are reserved for evaluation (recall through a phrasing the model
never saw is evidence that it stores the fact, not the sentence).

The object of every fact is a single word, written with a leading space in a prompt
(``"Mary's pet was a" -> " cat"``), so recall can be scored as top-1 of the next token.
The assignment of objects to subjects is a fixed hash (sha256), identical on every
machine and Python version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Gender = Literal["female", "male"]

FEMALE_NAMES: tuple[str, ...] = (
    "Mary", "Anna", "Lily", "Sara", "Emma", "Lucy", "Mia", "Zoe", "Amy", "Eva",
    "Kate", "Nina", "Ella", "Jane", "Ruby", "Alice", "Grace", "Chloe", "Sophie", "Hannah",
    "Julia", "Laura", "Sarah", "Olivia", "Megan", "Rachel", "Helen", "Susan", "Linda", "Betty",
)  # fmt: skip
MALE_NAMES: tuple[str, ...] = (
    "John", "Tom", "Ben", "Sam", "Leo", "Tim", "Dan", "Bob", "Jack", "Paul",
    "Adam", "Luke", "Ryan", "Jake", "Noah", "Owen", "Peter", "Henry", "Oscar", "David",
    "Mike", "Steve", "Frank", "George", "Harry", "Kevin", "Simon", "Victor", "Eric", "Carl",
)  # fmt: skip


@dataclass(frozen=True)
class Character:
    """A named character; ``id`` is the class index used in per-token labels."""

    id: int
    name: str
    gender: Gender

    @property
    def subject_pronoun(self) -> str:
        return "she" if self.gender == "female" else "he"

    @property
    def possessive(self) -> str:
        return "her" if self.gender == "female" else "his"


CHARACTERS: tuple[Character, ...] = tuple(
    Character(i, name, "female" if name in FEMALE_NAMES else "male")
    for i, name in enumerate(FEMALE_NAMES + MALE_NAMES)
)
CHARACTER_BY_NAME: dict[str, Character] = {c.name: c for c in CHARACTERS}

# Label codes for grammatical gender (``subject_gender``); -1 means "no single character".
GENDER_CODE: dict[str, int] = {"female": 0, "male": 1}

TOWNS: tuple[str, ...] = (
    "Oakvale", "Pinehill", "Riverton", "Greenwood", "Maplefield", "Stonebrook",
    "Fairview", "Brightwater", "Elmstead", "Redcliff", "Sunnydale", "Willowby",
)  # fmt: skip
PETS: tuple[str, ...] = (
    "cat", "dog", "rabbit", "parrot", "turtle", "hamster", "goat", "pony", "duck", "frog",
)  # fmt: skip
COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "white")
RIVERS: tuple[str, ...] = (
    "Amber", "Silver", "Willow", "Crystal", "Cedar", "Misty", "Golden", "Swift",
)  # fmt: skip

Relation = Literal["pet", "home", "color", "river"]

# Phrasings per relation: "{s}" is the subject, "{o}" the object (always last), "{pos}"
# the subject's possessive pronoun. The LAST phrasing of each relation is held out.
PHRASINGS: dict[Relation, tuple[str, ...]] = {
    "pet": (
        "{s}'s pet was a {o}.",
        "{s} had a pet {o}.",
        "{s} loved {pos} pet {o}.",
        "The pet of {s} was a {o}.",
        "{s} took care of a pet {o}.",
    ),
    "home": (
        "{s} lived in {o}.",
        "{s} was from {o}.",
        "{s}'s home was in {o}.",
        "The home of {s} was in {o}.",
        "{s} grew up in {o}.",
    ),
    "color": (
        "{s}'s favorite color was {o}.",
        "{s} always picked the color {o}.",
        "The favorite color of {s} was {o}.",
        "{s} loved the color {o}.",
        "The color {s} liked most was {o}.",
    ),
    "river": (
        "The river of {s} was the {o}.",
        "{s} was built on the banks of the {o}.",
        "In {s}, people fished in the {o}.",
        "The river next to {s} was the {o}.",
        "Close to {s} flowed the {o}.",
    ),
}
HELD_OUT_PHRASINGS: dict[Relation, tuple[str, ...]] = {r: (p[-1],) for r, p in PHRASINGS.items()}
TRAIN_PHRASINGS: dict[Relation, tuple[str, ...]] = {r: p[:-1] for r, p in PHRASINGS.items()}


def _hash_choice(key: str, options: tuple[str, ...]) -> str:
    """Pick ``options[sha256(key) mod n]``: fixed across machines and Python versions."""
    digest = hashlib.sha256(key.encode()).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


@dataclass(frozen=True)
class Fact:
    """One fact of the world: ``subject``'s ``relation`` is ``obj``."""

    subject: str
    relation: Relation
    obj: str


def _build_facts() -> tuple[Fact, ...]:
    facts: list[Fact] = []
    for c in CHARACTERS:
        facts.append(Fact(c.name, "pet", _hash_choice(f"{c.name}/pet", PETS)))
        facts.append(Fact(c.name, "home", _hash_choice(f"{c.name}/home", TOWNS)))
        facts.append(Fact(c.name, "color", _hash_choice(f"{c.name}/color", COLORS)))
    for town in TOWNS:
        facts.append(Fact(town, "river", _hash_choice(f"{town}/river", RIVERS)))
    return tuple(facts)


FACTS: tuple[Fact, ...] = _build_facts()
FACT_TABLE: dict[tuple[str, Relation], str] = {(f.subject, f.relation): f.obj for f in FACTS}


def lookup(subject: str, relation: Relation) -> str:
    """The object of ``(subject, relation)``; ``KeyError`` names the missing pair."""
    try:
        return FACT_TABLE[(subject, relation)]
    except KeyError:
        raise KeyError(f"the world has no fact ({subject!r}, {relation!r})") from None


def render_fact(fact: Fact, phrasing: str) -> str:
    """Fill a phrasing with a fact, e.g. ``"Mary's pet was a cat."``."""
    pos = CHARACTER_BY_NAME[fact.subject].possessive if fact.subject in CHARACTER_BY_NAME else "its"
    return phrasing.format(s=fact.subject, o=fact.obj, pos=pos)


@dataclass(frozen=True)
class FactPrompt:
    """A recall prompt: ``prompt`` ends just before the object; ``answer`` = ``" " + obj``."""

    prompt: str
    answer: str
    fact: Fact
    phrasing: str


def fact_prompts(
    phrasings: Literal["train", "held_out", "all"] = "held_out",
    relations: tuple[Relation, ...] | None = None,
) -> list[FactPrompt]:
    """All recall prompts for every fact in the chosen phrasings (deterministic order).

    The prompt is the phrasing cut before ``{o}`` (trailing space removed), so the
    correct next token is the object with a leading space. Like every sentence of the
    stories corpus, it starts with a space: ``" Mary's pet was a"`` -> ``" cat"``.
    """
    table = {"train": TRAIN_PHRASINGS, "held_out": HELD_OUT_PHRASINGS, "all": PHRASINGS}
    if phrasings not in table:
        raise ValueError(f"phrasings must be 'train', 'held_out' or 'all', got {phrasings!r}")
    chosen = table[phrasings]
    out: list[FactPrompt] = []
    for fact in FACTS:
        if relations is not None and fact.relation not in relations:
            continue
        for phrasing in chosen[fact.relation]:
            sentence = render_fact(fact, phrasing)
            cut = sentence.rindex(" " + fact.obj)
            out.append(FactPrompt(" " + sentence[:cut], " " + fact.obj, fact, phrasing))
    return out
