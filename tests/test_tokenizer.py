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
