"""Tests for the stories corpus: determinism, labels against the text, eval prompts,
held-out templates and phrasings, the world table, and the shipped stories tokenizer.

Labels are checked against an independent reading of the generated *text* (regular
expressions over the sentences), never against the generator's own bookkeeping.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from decoding_gpt.data import eos_id, get_tokenizer
from decoding_gpt.data.bpe import TOKENIZER_DIR, mark_digit_pairs
from decoding_gpt.data.stories import (
    DEFAULT_HELD_OUT_IOI,
    IOI_TEMPLATE_BY_NAME,
    LABEL_NAMES,
    NUMBER_WORDS,
    StoryConfig,
    generate_stories,
    generate_story,
    ioi_prompts,
    ioi_template_names,
    label_tokens,
    year_prompts,
)
from decoding_gpt.data.world import (
    CHARACTER_BY_NAME,
    CHARACTERS,
    FACTS,
    HELD_OUT_PHRASINGS,
    PHRASINGS,
    TRAIN_PHRASINGS,
    fact_prompts,
    lookup,
    render_fact,
)
from decoding_gpt.tokenizer import train_hf_bpe
from decoding_gpt.tools.build_data import (
    build_tokenizer,
    check_tokenizer,
    texts_sha256,
    training_texts,
)

GENDER = {"female": 0, "male": 1}


@pytest.fixture(scope="module")
def stories():
    return generate_stories(150, seed=3)


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("stories")


# --- determinism ------------------------------------------------------------------------


def test_same_seed_same_story_and_labels():
    a, b = generate_story(7, seed=11), generate_story(7, seed=11)
    assert a.text == b.text
    for name in LABEL_NAMES:
        np.testing.assert_array_equal(a.char_labels()[name], b.char_labels()[name])


def test_different_seed_index_or_split_differs():
    base = generate_story(0, seed=0).text
    assert generate_story(0, seed=1).text != base
    assert generate_story(1, seed=0).text != base
    assert generate_story(0, seed=0, split="val").text != base


def test_bad_split_and_config_raise():
    with pytest.raises(ValueError, match="split"):
        generate_story(0, split="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown IOI"):
        StoryConfig(held_out_ioi=("nope",))
    with pytest.raises(ValueError, match="at least one"):
        StoryConfig(held_out_ioi=ioi_template_names())


# --- labels agree with the text ---------------------------------------------------------


def test_char_labels_cover_text(stories):
    for s in stories:
        labels = s.char_labels()
        assert set(labels) == set(LABEL_NAMES)
        assert all(len(v) == len(s.text) for v in labels.values())


def test_inside_quote_tokens_lie_between_quote_marks(stories, tok):
    n_inside = 0
    for s in stories[:60]:
        lt = label_tokens(s, tok)
        for (start, end), inside in zip(lt.offsets, lt.labels["inside_quote"], strict=True):
            piece = s.text[start:end]
            anchor = start + len(piece) - len(piece.lstrip()) if piece.strip() else start
            opened = s.text[:anchor].count('"') % 2 == 1  # an odd number of quotes before
            expected = opened or s.text[anchor] == '"'
            assert bool(inside) == expected, (s.text, piece)
            n_inside += int(inside)
    assert n_inside > 100


_QUOTE_BEFORE = re.compile(
    r'\b(\w+) (?:said|asked \w+|sang a little song|sang the song again)[,:]? "$'
)
_QUOTE_AFTER = re.compile(r'"([^"]*)" said (\w+)\.')


def test_current_speaker_is_the_named_speaker(stories):
    n_quotes = 0
    for s in stories:
        labels = s.char_labels()
        quotes = [m.start() for m in re.finditer('"', s.text)]
        assert len(quotes) % 2 == 0
        for open_pos, close_pos in zip(quotes[::2], quotes[1::2], strict=True):
            before = _QUOTE_BEFORE.search(s.text[: open_pos + 1])
            after = _QUOTE_AFTER.match(s.text, open_pos)
            name = after.group(2) if after else before.group(1)
            span = labels["current_speaker"][open_pos : close_pos + 1]
            assert (span == CHARACTER_BY_NAME[name].id).all(), s.text
            n_quotes += 1
        outside = labels["inside_quote"] == 0
        assert (labels["current_speaker"][outside] == -1).all()
    assert n_quotes > 50


def test_subject_gender_matches_character_table(stories):
    checked = 0
    pattern = re.compile(r"(?:(?<=^ )|(?<=[.!?] ))(?:Then (she|he) |([A-Z][a-z]+)( and|'s)? )")
    for s in stories:
        labels = s.char_labels()
        for m in pattern.finditer(s.text):
            if labels["inside_quote"][m.start()]:
                continue
            if m.group(1):
                expected = GENDER["female" if m.group(1) == "she" else "male"]
            elif m.group(2) in CHARACTER_BY_NAME:
                plural_or_possessive = m.group(3) is not None
                expected = (
                    -1 if plural_or_possessive else GENDER[CHARACTER_BY_NAME[m.group(2)].gender]
                )
            else:
                continue
            assert labels["subject_gender"][m.start()] == expected, s.text[m.start() :][:60]
            checked += 1
    assert checked > 500


def test_story_sentiment_constant_and_matches_ending(stories):
    happy_end = re.compile(r"In the end, \w+ and \w+ were very happy\.$")
    sad_end = re.compile(r"In the end, \w+ was sad and went home alone\.$")
    for s in stories:
        sentiment = s.char_labels()["story_sentiment"]
        assert (sentiment == sentiment[0]).all()
        assert bool(happy_end.search(s.text)) == (sentiment[0] == 1)
        assert bool(sad_end.search(s.text)) == (sentiment[0] == 0)
    assert {s.sentiment for s in stories} == {0, 1}


def _sentence_ends(text: str) -> list[int]:
    """Positions just after a sentence-final period/!/? (outside quotes) or a closing quote."""
    ends, inside = [], False
    for i, ch in enumerate(text):
        if ch == '"':
            inside = not inside
            if not inside:
                ends.append(i + 1)
        elif ch in ".!?" and not inside:
            ends.append(i + 1)
    return ends


def test_holder_of_object_follows_the_transfers(stories):
    n_moves = 0
    for s in stories:
        key = s.key_object
        events = re.compile(
            rf"(\w+) had a \w+ {key}\.|(\w+) picked up the {key}\.|(\w+) dropped the {key}\."
            rf"|gave the {key} to (\w+)\."
        )
        holder_after: dict[int, int] = {}
        for m in events.finditer(s.text):
            had, picked, _dropped, receiver = m.groups()
            name = had or picked or receiver
            holder_after[m.end()] = CHARACTER_BY_NAME[name].id if name else -1
            n_moves += 1
        labels = s.char_labels()["holder_of_object"]
        current = -1
        for end in _sentence_ends(s.text):
            current = holder_after.get(end, current)
            if end < len(s.text):
                assert labels[end] == current, s.text[:end]
    assert n_moves > 200


def test_item_count_matches_counted_items(stories):
    checked = 0
    for s in stories:
        single, plural = s.item
        found = re.compile(rf"found (a|another|\w+ more) (?:{single}|{plural})\.")
        stated = re.compile(rf"Now they had (\w+) (?:{single}|{plural})\.")
        labels = s.char_labels()["item_count"]
        total = 0
        for m in found.finditer(s.text):
            assert labels[m.start()] == total
            word = m.group(1)
            total += 1 if word in ("a", "another") else NUMBER_WORDS.index(word.split()[0])
            if m.end() < len(s.text):
                assert labels[m.end()] == total
        for m in stated.finditer(s.text):
            assert labels[m.start()] == NUMBER_WORDS.index(m.group(1))
            checked += 1
        assert labels[-1] == total
    assert checked > 20


def test_label_tokens_aligns_with_encoding(stories, tok):
    s = stories[0]
    lt = label_tokens(s, tok)
    assert lt.ids.tolist() == tok.encode(s.text).ids
    assert all(len(v) == len(lt) for v in lt.labels.values())
    # Name tokens carry the speaker/holder ids of the characters; spot-check a name token.
    name_positions = [
        i for i, (a, b) in enumerate(lt.offsets) if s.text[a:b].strip() in CHARACTER_BY_NAME
    ]
    assert name_positions


# --- evaluation prompts -----------------------------------------------------------------


def test_ioi_prompts(tok):
    prompts = ioi_prompts(60, seed=0)
    assert {p.template for p in prompts} == set(ioi_template_names())
    for p in prompts:
        assert p.io != p.s and p.io in CHARACTER_BY_NAME and p.s in CHARACTER_BY_NAME
        # Intro names both; main clause names S again; the answer is IO.
        assert p.prompt.count(p.s) == 2 and p.prompt.count(p.io) == 1
        first = min(p.prompt.index(p.io), p.prompt.index(p.s))
        assert (p.order == "ABBA") == (p.prompt.index(p.io) == first)
        assert p.prompt.endswith(" to")
        # Every name follows a space, and " IO" is one token appended after the prompt.
        assert not re.search(r"(?<! )\b(" + p.io + "|" + p.s + r")\b", p.prompt)
        io_ids = tok.encode(" " + p.io).ids
        assert len(io_ids) == 1
        assert tok.encode(p.prompt + " " + p.io).ids == tok.encode(p.prompt).ids + io_ids
    assert ioi_prompts(5, seed=1) == ioi_prompts(5, seed=1) != ioi_prompts(5, seed=2)


def test_ioi_prompt_completes_its_template():
    for p in ioi_prompts(12, seed=4):
        t = IOI_TEMPLATE_BY_NAME[p.template]
        intro_re = re.escape(t.intro).replace(r"\{A\}", r"\w+").replace(r"\{B\}", r"\w+")
        intro_re = intro_re.replace(r"\{place\}", r"\w+")
        main_re = re.escape(t.main).replace(r"\{S\}", p.s).replace(r"\{obj\}", r"\w+")
        main_re = main_re.replace(r"\{IO\}", p.io)
        assert re.fullmatch(" " + intro_re + main_re, p.prompt + " " + p.io + ".")


def test_held_out_template_never_generated():
    held = IOI_TEMPLATE_BY_NAME[DEFAULT_HELD_OUT_IOI[0]]
    opener = held.intro.split("{A}")[0]  # "As "
    verb = held.main.split("{obj}")[0].replace(" {S} ", "")  # "brought the "
    pattern = re.compile(rf"(?:^|\.) {re.escape(opener)}\w+ and \w+ .*?, \w+ {re.escape(verb)}")
    default = generate_stories(200, seed=5)
    used = {name for s in default for name in s.ioi_templates_used}
    assert held.name not in used
    assert used == set(ioi_template_names()) - {held.name}
    assert not any(pattern.search(s.text) for s in default)
    # The same check finds the template when it is not held out (the test can fail).
    other = StoryConfig(held_out_ioi=("went",))
    assert any(pattern.search(s.text) for s in generate_stories(200, seed=5, config=other))
    assert {p.template for p in ioi_prompts(4, templates="held_out")} == {held.name}


def test_year_prompts_parse_and_story_years_increase(stories, tok):
    for p in year_prompts(50, seed=0):
        m = re.search(r"from (\d\d)(\d\d) to (\d\d)$", p.prompt)
        assert m, p.prompt
        assert int(m.group(1)) == int(m.group(3)) == p.century
        assert int(m.group(2)) == p.start_yy and 2 <= p.start_yy <= 98
        ids = tok.encode(p.prompt).ids
        assert tok.id_to_token(ids[-1]) == f"Ġ{p.century}"
    n = 0
    for s in stories:
        for m in re.finditer(r"from (\d\d)(\d\d) to (\d\d)(\d\d)\.", s.text):
            assert m.group(1) == m.group(3) and int(m.group(4)) > int(m.group(2))
            n += 1
    assert n > 20


def test_eval_prompts_use_only_whole_word_tokens(tok):
    """Held-out prompts change the construction, never the words: each word, with its
    leading space, is one token of the stories tokenizer (years: two-digit pieces)."""
    prompts = [p.prompt for p in ioi_prompts(24, templates="all")]
    prompts += [p.prompt for p in fact_prompts("all")] + [p.prompt for p in year_prompts(20)]
    for prompt in prompts:
        assert prompt.startswith(" ")
        for word in re.findall(r"'s| ?[A-Za-z]+| ?[0-9]{1,2}|[^\w ]", prompt):
            assert len(tok.encode(word).ids) == 1, (prompt, word)


def test_stories_start_with_a_space_and_some_start_mid_action(stories):
    assert all(s.text.startswith(" ") and not s.text.startswith("  ") for s in stories)
    openings = (" Once upon a time", " One day,")
    cold = [
        s
        for s in stories
        if not s.text.startswith(openings) and " was a little " not in s.text.split(".")[0]
    ]
    assert 0.1 < len(cold) / len(stories) < 0.4


# --- the world table --------------------------------------------------------------------


def test_fact_prompts_consistent_across_phrasings(tok):
    answers: dict[tuple[str, str], set[str]] = {}
    for p in fact_prompts("all"):
        assert p.prompt + p.answer + "." == " " + render_fact(p.fact, p.phrasing)
        assert p.answer == " " + lookup(p.fact.subject, p.fact.relation)
        assert len(tok.encode(p.answer).ids) == 1
        answers.setdefault((p.fact.subject, p.fact.relation), set()).add(p.answer)
    assert all(len(a) == 1 for a in answers.values())
    assert len(answers) == len(FACTS)
    held = fact_prompts("held_out")
    assert len(held) == len(FACTS) and {p.phrasing for p in held}.isdisjoint(
        {ph for v in TRAIN_PHRASINGS.values() for ph in v}
    )
    assert all(ph.endswith("{o}.") for v in PHRASINGS.values() for ph in v)
    with pytest.raises(KeyError, match="no fact"):
        lookup("Nobody", "pet")


def _phrasing_regex(phrasing: str) -> re.Pattern[str]:
    body = re.escape(phrasing).replace(r"\{s\}", r"(\w+)").replace(r"\{o\}", r"(\w+)")
    return re.compile(r"(?:(?<=^ )|(?<=[.!?] ))" + body.replace(r"\{pos\}", r"(?:her|his)"))


def test_story_facts_agree_with_table_and_held_out_phrasings_absent(stories):
    relation_of = {ph: rel for rel, phs in PHRASINGS.items() for ph in phs}
    stated = 0
    held = {ph for phs in HELD_OUT_PHRASINGS.values() for ph in phs}
    for s in stories:
        for phrasing, relation in relation_of.items():
            for m in _phrasing_regex(phrasing).finditer(s.text):
                assert phrasing not in held, m.group(0)
                assert lookup(m.group(1), relation) == m.group(2), m.group(0)
                stated += 1
        for m in re.finditer(r"(\w+) was a little (?:girl|boy) who lived in (\w+)\.", s.text):
            assert lookup(m.group(1), "home") == m.group(2)
    assert stated > 50


# --- the shipped tokenizer --------------------------------------------------------------


def test_shipped_stories_tokenizer_properties(tok):
    assert check_tokenizer(tok, "stories") == []
    for c in CHARACTERS:
        assert len(tok.encode(" " + c.name).ids) == 1, c.name
    pieces = [tok.id_to_token(i) for i in tok.encode(" from 1732 to 1745").ids]
    assert pieces == ["Ġfrom", "Ġ17", "32", "Ġto", "Ġ17", "45"]
    text = generate_story(0).text
    assert tok.decode(tok.encode(text).ids) == text


def test_tokenizer_training_is_deterministic():
    texts = [mark_digit_pairs(s.text) for s in generate_stories(150, seed=9)]
    assert train_hf_bpe(texts, 600).to_str() == train_hf_bpe(texts, 600).to_str()


def test_manifest_matches_shipped_file_and_training_text():
    import hashlib

    manifest = json.loads((TOKENIZER_DIR / "manifest.json").read_text())["stories"]
    shipped = (TOKENIZER_DIR / "stories.json").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == manifest["tokenizer_sha256"]
    assert texts_sha256(training_texts("stories")) == manifest["training_sha256"]


@pytest.mark.slow
def test_rebuild_reproduces_shipped_stories_tokenizer():
    shipped = (TOKENIZER_DIR / "stories.json").read_text()
    assert build_tokenizer("stories").to_str() + "\n" == shipped


@pytest.mark.parametrize("corpus", ["stories", "code"])
def test_decode_drops_end_of_text_unless_asked_to_keep_it(corpus):
    """Documented in ``get_tokenizer``: the special token is one id, and ``decode`` skips
    it by default; ``skip_special_tokens=False`` gives the text back exactly."""
    tok = get_tokenizer(corpus)
    text = "Tom ran.<|endoftext|>Sue sat."
    ids = tok.encode(text).ids
    assert ids.count(eos_id(tok)) == 1  # the literal text is the special token, once
    assert tok.decode(ids) == "Tom ran.Sue sat."
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_get_tokenizer_errors(tmp_path, monkeypatch):
    from decoding_gpt.data import bpe

    with pytest.raises(ValueError, match="corpus"):
        get_tokenizer("poems")  # type: ignore[arg-type]
    monkeypatch.setattr(bpe, "TOKENIZER_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="build"):
        get_tokenizer("stories")
    (tmp_path / "stories.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer"):
        get_tokenizer("stories")
