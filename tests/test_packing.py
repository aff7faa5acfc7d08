"""Tests for packing documents into uint16 arrays, the token-array cache, and Datasets."""

from __future__ import annotations

import numpy as np
import pytest

from decoding_gpt.data import as_dataset, cache_dir, eos_id, get_tokenizer, load_token_array, pack
from decoding_gpt.data.packing import _cache_path
from decoding_gpt.data.stdlib_corpus import CODE_LABEL_NAMES, stdlib_documents
from decoding_gpt.data.stories import LABEL_NAMES, generate_stories


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGPT_CACHE", str(tmp_path))
    return tmp_path


def test_pack_separates_documents_with_eos():
    arr = pack([[5, 6, 7], [], [8]], eos_id=1)
    assert arr.dtype == np.uint16
    assert arr.tolist() == [5, 6, 7, 1, 1, 8, 1]
    assert pack([], eos_id=0).shape == (0,)


def test_pack_round_trips_real_documents():
    tok = get_tokenizer("stories")
    texts = [s.text for s in generate_stories(4, seed=2)]
    eos = eos_id(tok)
    arr = pack([tok.encode(t).ids for t in texts], eos)
    cuts = np.flatnonzero(arr == eos)
    assert len(cuts) == len(texts) and cuts[-1] == len(arr) - 1
    pieces = np.split(arr, cuts + 1)[:-1]
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == texts


def test_pack_rejects_bad_ids():
    with pytest.raises(ValueError, match="65536"):
        pack([[1, 70000]], eos_id=0)
    with pytest.raises(ValueError, match="65536"):
        pack([[-1]], eos_id=0)
    with pytest.raises(ValueError, match="uint16"):
        pack([[1]], eos_id=2**16)
    with pytest.raises(ValueError, match="1-D"):
        pack([[[1, 2]]], eos_id=0)


def test_cache_dir_follows_env(tmp_cache):
    assert cache_dir() == tmp_cache


def test_load_stories_array_matches_generator_and_caches(tmp_cache):
    arr = load_token_array("stories", "train", n_tokens=3000, seed=4)
    assert arr.dtype == np.uint16 and arr.shape == (3000,)
    tok = get_tokenizer("stories")
    # Independent reconstruction: the first stories of (seed=4, train), each closed by EOS.
    expected = []
    for s in generate_stories(60, seed=4):
        expected += tok.encode(s.text).ids + [eos_id(tok)]
    assert arr.tolist() == expected[:3000]
    cached = list(tmp_cache.glob("tokens/stories-train-seed4-3000-*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(np.load(cached[0], allow_pickle=False), arr)
    np.testing.assert_array_equal(load_token_array("stories", "train", 3000, seed=4), arr)
    assert not np.array_equal(load_token_array("stories", "val", 3000, seed=4), arr)
    assert not np.array_equal(load_token_array("stories", "train", 3000, seed=5), arr)


def test_corrupt_cache_is_reported(tmp_cache):
    path = _cache_path("stories", "val", 100, 0)
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros(7, dtype=np.int64))
    with pytest.raises(ValueError, match="corrupt"):
        load_token_array("stories", "val", n_tokens=100)


def test_load_code_val_array():
    docs = stdlib_documents("val")
    arr = load_token_array("code", "val")
    tok = get_tokenizer("code")
    assert arr.dtype == np.uint16 and (arr == eos_id(tok)).sum() == len(docs)
    assert load_token_array("code", "val", n_tokens=1000).tolist() == arr[:1000].tolist()
    with pytest.raises(ValueError, match="only"):
        load_token_array("code", "val", n_tokens=len(arr) + 1)


def test_load_token_array_rejects_bad_arguments():
    with pytest.raises(ValueError, match="corpus"):
        load_token_array("poems", "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        load_token_array("stories", "test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        load_token_array("stories", "train", n_tokens=0)


def test_as_dataset_with_labels():
    ds = as_dataset("stories", "val", n_docs=3, with_labels=True)
    assert len(ds) == 3 and set(LABEL_NAMES) | {"text", "input_ids"} <= set(ds.column_names)
    tok = get_tokenizer("stories")
    for row in ds:
        assert row["input_ids"] == tok.encode(row["text"]).ids
        assert all(len(row[name]) == len(row["input_ids"]) for name in LABEL_NAMES)
    code = as_dataset("code", "val", n_docs=1, with_labels=True)
    assert len(code) == 1 and all(p.endswith(".py") for p in code["path"])
    assert set(CODE_LABEL_NAMES) <= set(code.column_names)
    assert as_dataset("stories", "train", n_docs=2)["text"] == [
        s.text for s in generate_stories(2, seed=0)
    ]


@pytest.mark.slow
def test_parallel_story_generation_equals_serial(monkeypatch):
    from decoding_gpt.data import packing

    serial = packing._story_tokens("stories", "val", 5000, seed=1)
    monkeypatch.setattr(packing, "_PARALLEL_TOKENS", 1000)
    monkeypatch.setattr(packing.os, "cpu_count", lambda: 2)
    parallel = packing._story_tokens("stories", "val", 5000, seed=1)
    np.testing.assert_array_equal(parallel, serial)
