"""The shipped BPE tokenizers of the two corpora, and how digits are split.

Both tokenizers are GPT-2-style byte-level BPE trained by
:func:`decoding_gpt.tokenizer.train_hf_bpe`, with one change: digits are cut into
groups of at most two, so a year is always two tokens, ``" 1732" -> [" 17", "32"]``.
GPT-2's own tokenizer splits years unpredictably (``" 1732"`` is one token, ``" 1733"``
two), which muddles the greater-than task; with fixed pairs the end year of ``"from
1732 to 17"`` is exactly one next token, one of the 100 tokens ``"00"``..``"99"``.

How: the training text gets a marker byte ``\\x00`` between digit pairs (``"17\\x0032"``),
so the byte-level pre-tokenizer already sees ``" 17"`` and ``"32"`` as separate words
while merges are learnt; the saved tokenizer then puts a ``Split`` on
``" ?[0-9]{1,2}"`` before the byte-level pre-tokenizer, which cuts ordinary text the
same way at encoding time.

The files live in ``decoding_gpt/data/tokenizers/{stories,code}.json`` and are rebuilt by
``python -m decoding_gpt.tools.build_data``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from tokenizers import Regex, Tokenizer, pre_tokenizers

from decoding_gpt.tokenizer import END_OF_TEXT, load_hf_tokenizer

Corpus = Literal["stories", "code"]
CORPORA: tuple[str, ...] = ("stories", "code")
TOKENIZER_DIR = Path(__file__).parent / "tokenizers"
# The most tokens BPE may learn. The stories grammar has a small closed vocabulary, so
# its tokenizer stops early, at 1,369 tokens: by then almost every word (467 of 468 in
# 200k validation tokens) is one token, and no pair is frequent enough to merge. The
# standard library's code reaches the cap.
VOCAB_SIZES: dict[str, int] = {"stories": 4096, "code": 4096}

_DIGIT_PAIR = re.compile(r"([0-9]{2})(?=[0-9])")
_MARKER = "\x00"


def mark_digit_pairs(text: str) -> str:
    """Insert a marker between digit pairs (``"1732" -> "17\\x0032"``) for BPE training."""
    return _DIGIT_PAIR.sub(r"\1" + _MARKER, text)


def digit_pair_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Digits in groups of at most two (a leading space kept), then GPT-2 byte-level."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(" ?[0-9]{1,2}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def tokenizer_path(corpus: str) -> Path:
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    return TOKENIZER_DIR / f"{corpus}.json"


def get_tokenizer(corpus: Corpus) -> Tokenizer:
    """Load the shipped tokenizer of ``corpus`` (a new object each call).

    ``<|endoftext|>`` (id :func:`eos_id`) is a special token: ``encode`` reads the literal
    text ``"<|endoftext|>"`` as that one token, and ``decode`` DROPS it by default
    (``skip_special_tokens=True`` is the ``tokenizers`` default), so decoding is not the
    inverse of encoding across a document boundary::

        ids = tok.encode("Tom ran.<|endoftext|>Sue sat.").ids
        tok.decode(ids)                               # 'Tom ran.Sue sat.'
        tok.decode(ids, skip_special_tokens=False)    # 'Tom ran.<|endoftext|>Sue sat.'

    Pass ``skip_special_tokens=False`` to keep it. (The ``PreTrainedTokenizerFast`` of
    ``pretrained.load_tokenizer``, which a bridge's ``to_string`` uses, has the opposite
    default: it keeps the token unless told ``skip_special_tokens=True``.)
    """
    path = tokenizer_path(corpus)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; rebuild it with `python -m decoding_gpt.tools.build_data`"
        )
    return load_hf_tokenizer(path)


def eos_id(tokenizer: Tokenizer) -> int:
    """Id of ``<|endoftext|>``; an error if the tokenizer lacks it."""
    token_id = tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise ValueError(f"tokenizer has no {END_OF_TEXT!r} token")
    return token_id
