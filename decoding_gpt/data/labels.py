"""Ground-truth labels: from character spans to BPE tokens.

Generators label *characters* (a label array the length of the text), because that is
independent of any tokenizer. To probe a model we need one label per *token*. A token
covers the characters ``text[start:end]`` (its offsets); we give it the label of its
first non-whitespace character, so the token ``' "'`` (space + opening quote) gets the
label of the quote mark and ``' Mary'`` the label of ``M``. A token made only of
whitespace takes the label of its first character.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Int
from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenLabels:
    """Token ids of a text, their character offsets, and one label array per name."""

    ids: Int[np.ndarray, " n_tokens"]
    offsets: Int[np.ndarray, "n_tokens 2"]
    labels: dict[str, Int[np.ndarray, " n_tokens"]]

    def __len__(self) -> int:
        return len(self.ids)


def anchor_positions(text: str, offsets: Int[np.ndarray, "n_tokens 2"]) -> Int[np.ndarray, " n"]:
    """Index of the first non-whitespace character of each token (its label anchor)."""
    anchors = np.empty(len(offsets), dtype=np.int64)
    for i, (start, end) in enumerate(offsets.tolist()):
        # A byte-level token inside one multi-byte character can have an empty span.
        start = min(start, max(len(text) - 1, 0))
        piece = text[start:end]
        stripped = len(piece) - len(piece.lstrip())
        anchors[i] = start + (stripped if stripped < len(piece) else 0)
    return anchors


def align_char_labels(
    text: str,
    char_labels: dict[str, Int[np.ndarray, " n_chars"]],
    tokenizer: Tokenizer,
) -> TokenLabels:
    """Tokenize ``text`` and give each token the label of its anchor character."""
    for name, arr in char_labels.items():
        if len(arr) != len(text):
            raise ValueError(f"label {name!r} has {len(arr)} entries for {len(text)} characters")
    enc = tokenizer.encode(text)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    anchors = anchor_positions(text, offsets)
    labels = {name: np.asarray(arr)[anchors] for name, arr in char_labels.items()}
    return TokenLabels(np.asarray(enc.ids, dtype=np.int64), offsets, labels)
