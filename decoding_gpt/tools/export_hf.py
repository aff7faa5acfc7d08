"""Export a shipped model to an HF folder: ``python -m decoding_gpt.tools.export_hf NAME OUT``.

The folder loads with ``AutoModelForCausalLM.from_pretrained(OUT)`` and
``AutoTokenizer.from_pretrained(OUT)`` (:func:`decoding_gpt.convert.export_hf`). HF GPT-2
has no unembedding bias: ``--unembed-bias fold`` (default) folds ``b_U`` exactly into the
final LayerNorm and ``lm_head``; ``drop`` loses it; ``refuse`` fails on a non-zero one.
Before exporting, the cost of dropping ``b_U`` is measured on the model's validation split
(``--val-tokens`` of them, default the whole split; 0 skips it) and printed, with the
exported model's loss change on those tokens. Models GPT-2 cannot express
(``attn-only-*``: no MLP; ``modadd-1l``: no LayerNorm) fail with a message saying why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from decoding_gpt.convert import export_hf, unembed_bias_cost
from decoding_gpt.data.bpe import Corpus
from decoding_gpt.data.packing import load_token_array
from decoding_gpt.pretrained import load_native, load_tokenizer, model_info
from decoding_gpt.tools import prog


def val_rows(corpus: Corpus, n_ctx: int, n_tokens: int | None) -> torch.Tensor:
    """The validation split of ``corpus`` as rows of ``n_ctx`` tokens ``[rows, n_ctx]``."""
    arr = load_token_array(corpus, "val", n_tokens).astype(np.int64)
    n = len(arr) // n_ctx * n_ctx
    return torch.from_numpy(arr[:n]).view(-1, n_ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog("decoding_gpt.tools.export_hf"), description=__doc__.splitlines()[0]
    )
    parser.add_argument("name", help="a shipped model, e.g. stories-4l")
    parser.add_argument("out", type=Path, help="the folder to write")
    parser.add_argument("--unembed-bias", choices=["fold", "drop", "refuse"], default="fold")
    parser.add_argument(
        "--val-tokens", type=int, default=None, help="val tokens to measure on (0: none)"
    )
    args = parser.parse_args(argv)
    info = model_info(args.name)
    model = load_native(args.name, device="cpu")
    tokenizer = load_tokenizer(args.name)
    try:
        if tokenizer is None:
            raise NotImplementedError(f"{args.name!r} has no tokenizer to export")
        assert info.tokenizer is not None  # load_tokenizer found one
        tokens = None
        if args.val_tokens != 0:
            tokens = val_rows(info.tokenizer, model.cfg.n_ctx, args.val_tokens)
            cost = unembed_bias_cost(model, tokens)
            print(f"dropping b_U would cost {cost:+.4f} nat on {tokens.numel():,} val tokens")
        report = export_hf(
            model, args.out, tokenizer, unembed_bias=args.unembed_bias, tokens=tokens,
            name=args.name,
        )  # fmt: skip
    except (NotImplementedError, ValueError) as err:
        print(f"{args.name}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
