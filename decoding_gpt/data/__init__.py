"""What the models read: a synthetic stories corpus, the Python standard library,
their BPE tokenizers, packed token arrays for training, and synthetic token sequences.

Submodules:

* :mod:`~decoding_gpt.data.world`: the fixed fact table of the stories' world;
* :mod:`~decoding_gpt.data.stories`: the seeded story grammar, labels, eval prompts;
* :mod:`~decoding_gpt.data.stdlib_corpus`: standard-library documents and tokenize labels;
* :mod:`~decoding_gpt.data.labels`: character labels -> per-token labels;
* :mod:`~decoding_gpt.data.bpe`: the shipped tokenizers (``get_tokenizer``);
* :mod:`~decoding_gpt.data.packing`: ``pack``, ``load_token_array``, ``as_dataset``;
* :mod:`~decoding_gpt.data.synthetic`: random tokens with repeated spans (induction).

``python -m decoding_gpt.tools.build_data`` rebuilds the shipped tokenizers.
"""

from decoding_gpt.data.bpe import eos_id, get_tokenizer
from decoding_gpt.data.packing import as_dataset, cache_dir, load_token_array, pack

__all__ = ["as_dataset", "cache_dir", "eos_id", "get_tokenizer", "load_token_array", "pack"]
