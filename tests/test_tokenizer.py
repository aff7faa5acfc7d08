"""Tests for decoding_gpt.tokenizer against HF tokenizers, transformers and TransformerLens."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pydoc_data.topics import topics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding_gpt.tokenizer import (
    END_OF_TEXT,
    UNK,
    BytePairEncoding,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    as_pretrained_tokenizer_fast,
    bytes_to_unicode,
    hf_merges,
    load_hf_tokenizer,
    merge_pair,
    pretokenize,
    tie_break_key,
    token_frequencies,
    train_hf_bpe,
    zipf_exponent,
)

N_MERGES = 300


@cache
def corpus() -> str:
    """~54 kB of English reference prose from the stdlib (offline on every machine)."""
    return "\n".join(topics[k] for k in sorted(topics)[:20])


@cache
def held_out() -> str:
    return "\n".join(topics[k] for k in sorted(topics)[20:24])


@cache
def our_bpe() -> BytePairEncoding:
    return BytePairEncoding.train(corpus(), 256 + N_MERGES)


@cache
def hf_bpe():
    return train_hf_bpe([corpus()], 256 + N_MERGES + 1)  # + 1 for <|endoftext|>


def test_bpe_merges_equal_hf_tokenizers():
    """Our trainer and HF ``tokenizers``' BpeTrainer learn the same ordered merge list.

    Same corpus, same GPT-2 pre-tokenisation (HF's ByteLevel pre-tokenizer uses the same
    regex), same byte alphabet. The one place two correct BPE trainers may differ is the
    choice among equally frequent pairs; our trainer breaks ties by HF's rule (smallest
    pair in the printable byte alphabet, merged tokens after bytes by age), so the whole
    list must agree. The test is meaningful only if ties actually occur, so we also check
    that some merge was chosen among several pairs of equal count.
    """
    ours, theirs = our_bpe().merge_strings(), hf_merges(hf_bpe())
    assert len(ours) == len(theirs) == N_MERGES
    pairs = enumerate(zip(ours, theirs, strict=True))
    first_difference = next((i for i, (a, b) in pairs if a != b), None)
    assert first_difference is None, (
        f"merge {first_difference}: ours {ours[first_difference]} vs HF {theirs[first_difference]}"
    )
    counts = our_bpe().merge_counts
    assert len(set(counts)) < len(counts), "no tied merge counts: tie-breaking went untested"


def test_bpe_tokenises_held_out_text_like_hf():
    """On unseen text, our encoding gives the same token strings as HF's trained tokenizer,
    and our model exported to HF gives the same ids as our encoder."""
    text = held_out()
    ids = our_bpe().encode(text)
    strings = our_bpe().token_strings()
    assert [strings[i] for i in ids] == hf_bpe().encode(text).tokens
    assert our_bpe().to_hf().encode(text).ids == ids


def test_pretokenize_matches_hf_byte_level():
    text = "Hello world's  end!\n\n  x=42 café 日本語\t"
    table = bytes_to_unicode()
    ours = ["".join(table[b] for b in chunk.encode()) for chunk in pretokenize(text)]
    hf = [s for s, _ in hf_bpe().pre_tokenizer.pre_tokenize_str(text)]
    assert ours == hf


def test_bytes_to_unicode_is_gpt2_alphabet():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    from tokenizers.pre_tokenizers import ByteLevel

    assert set(table.values()) == set(ByteLevel.alphabet())


def test_merge_pair_is_left_to_right_and_non_overlapping():
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge_pair([1, 2, 1, 2, 3], (1, 2), 7) == [7, 7, 3]
    assert merge_pair([], (1, 2), 7) == []
    assert merge_pair([2, 1], (1, 2), 7) == [2, 1]


def test_tie_break_key_is_hf_vocabulary_order():
    """HF breaks ties by the smaller pair of its ids: the byte alphabet sorted by printable
    character, then merged tokens in creation order."""
    table = bytes_to_unicode()
    hf_id = {b: i for i, b in enumerate(sorted(range(256), key=lambda b: table[b]))}
    pairs = [(a, b) for a in range(0, 256, 7) for b in range(3, 256, 11)]
    by_key = sorted(pairs, key=tie_break_key)
    assert by_key == sorted(pairs, key=lambda p: (hf_id[p[0]], hf_id[p[1]]))
    assert tie_break_key((ord("e"), 1)) < tie_break_key((ord(" "), 1))  # 'e' before 'Ġ'
    assert tie_break_key((255, 0)) < tie_break_key((256, 0)) < tie_break_key((257, 0))


def test_bpe_training_counts_overlapping_pairs_as_hf_does():
    """``"aaa"`` holds (a, a) twice when counting, but merges into [aa, a]."""
    text = "aaa aaa aaa bb bb bb bb"
    bpe = BytePairEncoding.train(text, 258)
    assert bpe.merge_strings() == hf_merges(train_hf_bpe([text], 259)) == [("a", "a"), ("b", "b")]
    assert bpe.merge_counts == [6, 4]


def test_bpe_compresses_and_first_merge_is_most_frequent_pair():
    bpe = our_bpe()
    assert len(bpe.encode(corpus())) < 0.5 * len(corpus().encode())
    pairs: Counter[tuple[int, int]] = Counter()
    for chunk in pretokenize(corpus()):
        b = chunk.encode()
        pairs.update(zip(b, b[1:], strict=False))
    assert bpe.merge_counts[0] == max(pairs.values())
    assert pairs[bpe.merges[0]] == max(pairs.values())


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_bpe_round_trip_arbitrary_unicode(text):
    assert our_bpe().decode(our_bpe().encode(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_char_round_trip_with_unk(text):
    """Known characters come back exactly; each unknown one comes back as ``<unk>``."""
    tok = CharTokenizer.from_corpus("hello world. ÄÖ 日本")
    expected = "".join(c if c in tok.stoi else UNK for c in text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == expected
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_char_tokenizer_vocab():
    tok = CharTokenizer.from_corpus(["abca", "cb"])
    assert tok.vocab_size == 4 and tok.itos == [UNK, "a", "b", "c"]
    assert tok.encode("abz") == [1, 2, 0]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([4])


def test_word_tokenizer_frequency_vocab_and_decode():
    tok = WordTokenizer.from_corpus("the cat sat. the dog sat, the end!", max_vocab=4)
    # 3 x "the", 2 x "sat", then the count-1 tokens alphabetically: "!" < "," < "." < "cat"
    assert tok.itos == [UNK, "the", "sat", "!"]
    assert tok.encode("the cat") == [1, 0]
    full = WordTokenizer.from_corpus("Hello, world! (It's fine.)")
    assert full.decode(full.encode("Hello, world! (It's fine.)")) == "Hello, world! (It's fine.)"
    with pytest.raises(ValueError):
        WordTokenizer.from_corpus("x", max_vocab=0)


def test_all_tokenizers_follow_protocol():
    for tok in (CharTokenizer.from_corpus("ab"), WordTokenizer.from_corpus("a b"), our_bpe()):
        assert isinstance(tok, Tokenizer)


def test_bpe_save_load_round_trip(tmp_path):
    path = tmp_path / "bpe.json"
    our_bpe().save(path)
    loaded = BytePairEncoding.load(path)
    assert loaded.merges == our_bpe().merges
    assert loaded.encode(held_out()) == our_bpe().encode(held_out())
    path.write_text(json.dumps({"merges": [[1, 2]]}))
    with pytest.raises(ValueError, match="not a BytePairEncoding"):
        BytePairEncoding.load(path)
    with pytest.raises(ValueError, match="does not exist"):
        BytePairEncoding([(256, 1)])


def test_hf_tokenizer_save_load(tmp_path):
    path = tmp_path / "tokenizer.json"
    hf_bpe().save(str(path))
    assert load_hf_tokenizer(path).encode(held_out()).ids == hf_bpe().encode(held_out()).ids
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_hf_tokenizer(path)
    with pytest.raises(FileNotFoundError):
        load_hf_tokenizer(tmp_path / "missing.json")


def test_wrapped_tokenizer_is_not_empty_and_matches():
    wrapped = as_pretrained_tokenizer_fast(hf_bpe())
    assert len(wrapped) == hf_bpe().get_vocab_size() > 256
    eot = hf_bpe().token_to_id(END_OF_TEXT)
    assert wrapped.bos_token_id == wrapped.eos_token_id == wrapped.pad_token_id == eot
    text = held_out()[:500]
    assert wrapped(text, add_special_tokens=False)["input_ids"] == hf_bpe().encode(text).ids
    assert wrapped.decode(hf_bpe().encode(text).ids) == text
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        as_pretrained_tokenizer_fast(hf_bpe(), special_token="<nope>")


def test_wrapped_tokenizer_works_in_transformer_lens():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    wrapped = as_pretrained_tokenizer_fast(hf_bpe())
    cfg = TransformerBridgeConfig(
        n_layers=1, d_model=32, n_heads=2, d_head=16, d_vocab=len(wrapped), n_ctx=32,
        act_fn="gelu", normalization_type="LN", d_mlp=64,
    )  # fmt: skip
    model = TransformerBridge.boot_native(cfg, tokenizer=wrapped)
    text = "The value of x is 42."
    tokens = model.to_tokens(text)
    eot = hf_bpe().token_to_id(END_OF_TEXT)
    assert tokens[0, 0].item() == eot
    assert tokens[0, 1:].tolist() == hf_bpe().encode(text).ids
    assert model.to_string(tokens[0, 1:]) == text
    assert "".join(model.to_str_tokens(text)[1:]) == text
    assert model(tokens).shape == (1, tokens.shape[1], len(wrapped))


def test_token_frequencies_and_zipf():
    ids = [3, 1, 3, 2, 3, 1]
    assert token_frequencies(ids).tolist() == sorted(Counter(ids).values(), reverse=True)
    exact = torch.tensor([round(1e6 / r**1.2) for r in range(1, 200)])
    assert zipf_exponent(exact) == pytest.approx(1.2, abs=1e-3)
    with pytest.raises(ValueError):
        token_frequencies([])


# --------------------------------------------------------------------------------------
# Special tokens and streaming (what CS336 assignment 1's tokenizer tests expect)
# --------------------------------------------------------------------------------------
DOUBLE = END_OF_TEXT + END_OF_TEXT
SPACE, LT, A, B = ord(" "), ord("<"), ord("a"), ord("b")


@cache
def special_bpe() -> BytePairEncoding:
    """Our trained merges plus two overlapping specials (ids 556 and 557)."""
    return BytePairEncoding(our_bpe().merges, special_tokens=[END_OF_TEXT, DOUBLE])


def test_special_token_is_one_id_not_its_bytes():
    """Known-wrong: a special split into bytes, ``[60, 124, 101, ...]`` for ``"<|e..."``."""
    bpe = BytePairEncoding(special_tokens=[END_OF_TEXT])
    assert bpe.vocab_size == 257 and bpe.special_ids == {END_OF_TEXT: 256}
    assert bpe.encode(f"a{END_OF_TEXT}b") == [A, 256, B]
    assert bpe.encode(END_OF_TEXT) == [256]
    assert bpe.decode([A, 256, B]) == f"a{END_OF_TEXT}b"
    assert bpe.split_special(f"a{END_OF_TEXT}b") == [
        ("a", False),
        (END_OF_TEXT, True),
        ("b", False),
    ]
    # after the merges: ids 0-255 bytes, 256.. merges, then the specials in the given order
    n = 256 + len(our_bpe().merges)
    assert special_bpe().special_ids == {END_OF_TEXT: n, DOUBLE: n + 1}
    assert special_bpe().vocab_size == n + 2
    # a tokenizer without the special treats the same string as text
    assert our_bpe().decode(our_bpe().encode(END_OF_TEXT)) == END_OF_TEXT
    assert len(our_bpe().encode(END_OF_TEXT)) > 1


@pytest.mark.parametrize("order", [[END_OF_TEXT, DOUBLE], [DOUBLE, END_OF_TEXT]])
def test_overlapping_specials_match_longest_first(order):
    """Known-wrong: shortest first gives ``[single, single]`` for the doubled string."""
    bpe = BytePairEncoding(special_tokens=order)
    single, double = bpe.special_ids[END_OF_TEXT], bpe.special_ids[DOUBLE]
    assert bpe.encode(DOUBLE) == [double]
    assert bpe.encode(END_OF_TEXT * 3) == [double, single]
    assert bpe.encode(f"x{END_OF_TEXT}y{DOUBLE}") == [ord("x"), single, ord("y"), double]
    # CS336's example sentence; the doubled special is one token and decodes back
    text = f"Hello, how {DOUBLE} are you?{END_OF_TEXT}"
    ids = bpe.encode(text)
    assert ids.count(double) == 1 and ids.count(single) == 1 and ids[-1] == single
    assert bpe.decode(ids) == text


def test_merges_never_cross_a_special_boundary():
    """Known-wrong: pre-tokenising before splitting on specials puts ``" <|"`` in one
    pre-token, so the merge (' ', '<') fuses the space with the special's first byte."""
    bpe = BytePairEncoding([(SPACE, LT)], special_tokens=[END_OF_TEXT])  # ' <' is 256
    assert bpe.encode(" <x") == [256, ord("x")]  # the merge applies to ordinary text
    assert bpe.encode(f" {END_OF_TEXT}") == [SPACE, 257]
    # a one-letter special between letters that merge: "ab" is a special then a, not 256
    bpe = BytePairEncoding([(A, B)], special_tokens=["b"])
    assert bpe.encode("ab") == [A, 257]
    assert bpe.encode("aab") == [A, A, 257]


def test_training_counts_no_pair_across_specials():
    """Hand-computed: ``"ab<|endoftext|>"`` three times holds (a, b) 3 times and nothing
    else once split on the special. Known-wrong: treated as text, ``"<|"``, ``"|>"`` and
    the letters of ``endoftext`` also occur 3 times each, and the tie goes to ``('<', '|')``."""
    docs = [f"ab{END_OF_TEXT}"] * 3
    bpe = BytePairEncoding.train(docs, 256 + 5 + 1, special_tokens=[END_OF_TEXT])
    assert bpe.merges == [(A, B)]  # pairs ran out after one merge
    assert bpe.special_ids == {END_OF_TEXT: 257} and bpe.vocab_size == 258
    assert bpe.encode(docs[0]) == [256, 257]
    wrong = BytePairEncoding.train(docs, 256 + 2)
    assert wrong.merges[0] == (LT, ord("|"))


def test_training_with_specials_equals_training_on_the_documents():
    """Joining documents with the separator changes nothing: pairs stay inside documents."""
    docs = [topics[k][:3000] for k in sorted(topics)[:4]]
    joined = BytePairEncoding.train(
        END_OF_TEXT.join(docs), 256 + 60 + 1, special_tokens=[END_OF_TEXT]
    )
    separate = BytePairEncoding.train(docs, 256 + 60)
    assert joined.merges == separate.merges
    assert joined.merge_counts == separate.merge_counts
    assert joined.vocab_size == 256 + 60 + 1


def test_specials_match_hf_added_tokens():
    """HF ``tokenizers`` added special tokens (leftmost-longest) give the same ids."""
    text = f"{held_out()[:300]}{DOUBLE}{END_OF_TEXT} x{END_OF_TEXT}{END_OF_TEXT * 3}end"
    hf = special_bpe().to_hf()
    assert hf.encode(text).ids == special_bpe().encode(text)
    assert hf.decode(special_bpe().encode(text), skip_special_tokens=False) == text


def test_no_specials_keeps_ids_and_merges():
    """Without specials the trainer and encoder are the plain ones (same merges, same ids)."""
    plain = BytePairEncoding(our_bpe().merges)
    assert plain.special_tokens == [] and plain.vocab_size == 256 + N_MERGES
    assert plain.encode(held_out()) == our_bpe().encode(held_out())
    text = held_out()[:2000]  # no special in the text: the specials change nothing
    assert special_bpe().encode(text) == our_bpe().encode(text)


def test_special_token_errors():
    with pytest.raises(ValueError, match="empty string"):
        BytePairEncoding(special_tokens=[END_OF_TEXT, ""])
    with pytest.raises(ValueError, match="duplicated"):
        BytePairEncoding(special_tokens=[END_OF_TEXT, END_OF_TEXT])
    with pytest.raises(TypeError, match="list of strings"):
        BytePairEncoding(special_tokens=END_OF_TEXT)
    with pytest.raises(ValueError, match="duplicated"):
        BytePairEncoding.train("abc", 300, special_tokens=["x", "x"])
    with pytest.raises(ValueError, match=r"need at least 258"):
        BytePairEncoding.train("abc", 257, special_tokens=["x", "y"])
    assert BytePairEncoding.train("abc", 258, special_tokens=["x", "y"]).merges == []


def test_bpe_save_load_keeps_specials(tmp_path):
    path = tmp_path / "bpe.json"
    special_bpe().save(path)
    loaded = BytePairEncoding.load(path)
    assert loaded.special_tokens == [END_OF_TEXT, DOUBLE]
    assert loaded.special_ids == special_bpe().special_ids
    text = f"a{END_OF_TEXT * 3}b {held_out()[:200]}"
    assert loaded.encode(text) == special_bpe().encode(text)
    # files written before special tokens existed load with none
    path.write_text(
        json.dumps({"type": "BytePairEncoding", "pattern": loaded.pattern, "merges": []})
    )
    assert BytePairEncoding.load(path).special_tokens == []
    path.write_text(
        json.dumps(
            {"type": "BytePairEncoding", "pattern": "x", "merges": [], "special_tokens": [""]}
        )
    )
    with pytest.raises(ValueError, match="empty string"):
        BytePairEncoding.load(path)


# text made of pieces that stress the boundaries: specials, their fragments, whitespace
# runs, contractions, digits, non-ASCII
_PIECES = st.one_of(
    st.sampled_from([END_OF_TEXT, DOUBLE, "<|", "endof", "text|>", "<|endoftext", "|>", " ",
                     "  ", "\n", "\n\n", " \n", "\t", "'s", "'", "s", "a", "the", " cat", "42",
                     "7", "é", "日本", "🙂", "!", "?!", "\r\n"]),
    st.text(max_size=8),
)  # fmt: skip
_TEXTS = st.lists(_PIECES, max_size=25).map("".join)


@settings(max_examples=150, deadline=None)
@given(_TEXTS)
def test_round_trip_with_specials(text):
    ids = special_bpe().encode(text)
    assert special_bpe().decode(ids) == text
    assert all(0 <= i < special_bpe().vocab_size for i in ids)


def test_round_trip_edge_cases():
    for text in [
        "",
        " ",
        "   ",
        "\n\n\n",
        " \t\n ",
        END_OF_TEXT,
        DOUBLE * 2,
        "<|endoftext",
        "日本🙂",
    ]:
        assert special_bpe().decode(special_bpe().encode(text)) == text
    assert special_bpe().encode("") == []
    assert list(special_bpe().encode_iterable([])) == []
    assert list(special_bpe().encode_iterable(["", ""])) == []


@settings(max_examples=150, deadline=None)
@given(_TEXTS, st.data())
def test_encode_iterable_equals_encode(text, data):
    """Any split of the text into items (cuts anywhere, also inside a special token)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    items = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert list(special_bpe().encode_iterable(items)) == special_bpe().encode(text)
    plain = list(our_bpe().encode_iterable(items))
    assert plain == our_bpe().encode(text)


def test_encode_iterable_every_cut_and_lines():
    text = f"Hi  there,\n\n it's {DOUBLE}{END_OF_TEXT}x 12  \n<|endo <|endoftext|> 日本 "
    expected = special_bpe().encode(text)
    for k in range(len(text) + 1):
        assert list(special_bpe().encode_iterable([text[:k], text[k:]])) == expected, k
    assert list(special_bpe().encode_iterable(list(text))) == expected  # one char per item
    assert list(special_bpe().encode_iterable(text.splitlines(keepends=True))) == expected


def test_encode_iterable_is_lazy_and_memory_flat():
    """2 MB of text as a generator of lines: ids come out as lines go in, and the peak
    memory while encoding is a small fraction of the text (nothing accumulates)."""
    import tracemalloc

    unit = f"{held_out()[:4000]}{END_OF_TEXT}"
    lines = unit.splitlines(keepends=True)
    reps = 2_000_000 // len(unit) + 1
    expected_per_unit = len(special_bpe().encode(unit))  # also warms the chunk cache

    consumed = 0

    def stream():
        nonlocal consumed
        for _ in range(reps):
            for line in lines:
                consumed += 1
                yield line

    it = special_bpe().encode_iterable(stream())
    next(it)
    assert consumed < 5, "encode_iterable read ahead instead of yielding"
    tracemalloc.start()
    try:
        n = 1 + sum(1 for _ in it)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == expected_per_unit * reps
    assert reps * len(unit) >= 2_000_000
    assert peak < 500_000, f"peak {peak} bytes while streaming {reps * len(unit)} characters"
