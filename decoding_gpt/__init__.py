"""decoding_gpt: the helper package of the course "Decoding GPT".

The package reads top to bottom, in the order declared once in
:data:`decoding_gpt.layout.LAYERS`::

    base              layout, device, hooks
    model             tokenizer, attention, generation, transformer, modern, ngram
    training          data, checkpoint, training, convert, pretrained
    interpretability  activations, lens, heads, patching, editing, probes, superposition,
                      sae, evals, grokking, scaling
    alignment         alignment
    course            foundations, viz, checks, homework
    tools             command lines (nothing imports them)

A module imports only from its own unit and the units before it (``tests/test_layout.py``
enforces it). Importing the package itself is cheap (no model code, no TransformerLens);
import the submodule you need.
"""

from decoding_gpt.device import get_device, set_seed

__version__ = "0.1.0"

__all__ = ["__version__", "get_device", "set_seed"]
