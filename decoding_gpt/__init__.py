"""decoding_gpt: the helper package of the course "Decoding GPT".

Data flows one way through the package::

    data -> tokenizer -> attention/transformer -> training -> pretrained
         -> lens/heads/patching/probes/superposition/sae -> viz -> notebooks

A module never imports from a module to its right. Importing the package itself is
cheap (no torch model code, no TransformerLens); import the submodule you need.
"""

from decoding_gpt.device import get_device, set_seed

__version__ = "0.1.0"

__all__ = ["__version__", "get_device", "set_seed"]
