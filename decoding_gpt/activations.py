"""Collecting a model's activations at one hook point, token by token.

Probes and sparse autoencoders are trained on a matrix of activations: one row per
*token*, one column per dimension of the hooked activation. If the model reads a
batch of documents ``tokens[doc, pos]`` and the hook ``blocks.{l}.hook_resid_post``
produces ``a[doc, pos, :]``, the collected data set is

    X = [ a[doc, pos, :]  for every (doc, pos) that is a real token ]      # [n_tokens, d]

together with the index pairs ``(doc, pos)`` of each row, so that a row can be traced
back to its document (for train/test splits *by document*, see ``probes``) and its
position (for top-activating examples, see ``sae``).

Which positions count as "real tokens":

- **Padding** is excluded. Batches of documents of different lengths are right-padded;
  the ``mask`` (1 = real token, 0 = padding, the convention of HF's
  ``attention_mask``) says which positions to keep. With right padding a causal model's
  activations at real positions do not depend on the padding after them, so no
  attention mask needs to be passed to the model. (With *left* padding they would: pass
  ``forward_kwargs={"attention_mask": mask}`` if your model takes one.)
- **BOS** is excluded by default (``exclude_bos=True`` drops position 0). The first
  position attends only to itself, so every layer sees the same input there; its
  residual stream is an outlier with a huge norm ("attention sink") that dominates
  any mean, variance or reconstruction loss, and says nothing about the text.

How it can mislead: activations are collected under ``torch.no_grad`` and detached, so
they are a *snapshot*; a forward hook must *store* what it sees. An earlier version of
this course wrote ``def hook(act, hook): act_cache = act`` -- assigning a local
variable that vanished when the hook returned -- and trained an SAE on the zeros it had
pre-allocated. ``tests/test_activations.py`` checks the stored values against
TransformerLens's own ``run_with_cache``.

Works with any model exposing TransformerLens's ``run_with_hooks(tokens, fwd_hooks=...,
return_type=None)`` and hook names: ``TransformerBridge``, ``HookedRootModule``
subclasses such as ``decoding_gpt.transformer.GPT``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class ActivationSet:
    """Activations at one hook, one row per kept token.

    Attributes:
        acts: the activations, trailing hook dimensions flattened (``hook_z``'s
            ``[head, d_head]`` becomes ``head * d_head``).
        doc: index of the document (row of the token batch, counted across batches).
        pos: position of the token inside its document.
        hook_name: the hook the activations were read at.
    """

    acts: Float[Tensor, "n_tokens d"]
    doc: Int[Tensor, " n_tokens"]
    pos: Int[Tensor, " n_tokens"]
    hook_name: str

    def __len__(self) -> int:
        return self.acts.shape[0]

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0) -> Iterator[Tensor]:
        """Yield ``[batch_size, d]`` chunks of ``acts`` forever (an SAE trainer's input)."""
        gen = torch.Generator().manual_seed(seed)
        n = len(self)
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} collected tokens")
        while True:
            order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
            for start in range(0, n - batch_size + 1, batch_size):
                yield self.acts[order[start : start + batch_size].to(self.acts.device)]


def _as_list(x: Tensor | Iterable[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


@torch.no_grad()
def collect_activations(
    model: Any,
    token_batches: Int[Tensor, "batch pos"] | Iterable[Int[Tensor, "batch pos"]],
    hook_name: str,
    mask: Tensor | Iterable[Tensor] | None = None,
    *,
    exclude_bos: bool = True,
    forward_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = "cpu",
) -> ActivationSet:
    """Run ``model`` over ``token_batches`` and store the activations at ``hook_name``.

    Args:
        model: anything with TransformerLens's ``run_with_hooks``.
        token_batches: one ``[batch, pos]`` tensor of token ids, or an iterable of them
            (documents are numbered in the order they are seen).
        hook_name: a TransformerLens hook name, e.g. ``"blocks.1.hook_resid_post"``.
        mask: ``[batch, pos]`` 1/0 (or bool) per batch, 1 = keep (an attention mask);
            ``None`` keeps every position.
        exclude_bos: drop position 0 of every document.
        forward_kwargs: extra keyword arguments for the model's forward pass.
        device: where to keep the collected activations (``None``: where the model
            put them).

    Returns:
        An :class:`ActivationSet` with ``acts[i]`` the activation of token
        ``(doc[i], pos[i])``.
    """
    acts: list[Tensor] = []
    docs: list[Tensor] = []
    poss: list[Tensor] = []
    n_docs = 0
    stored: list[Tensor] = []

    def store(activation: Tensor, hook: Any) -> None:
        # Append to a list that outlives the hook (the bug this module guards against
        # was ``act = activation``: a local that dies when the hook returns).
        stored.append(activation.detach())

    token_list = _as_list(token_batches)
    mask_list: list[Tensor | None] = [None] * len(token_list) if mask is None else [*_as_list(mask)]
    if len(mask_list) != len(token_list):
        raise ValueError(f"{len(token_list)} token batches but {len(mask_list)} masks")
    for tokens, batch_mask in zip(token_list, mask_list, strict=True):
        if tokens.ndim != 2:
            raise ValueError(f"token batch must be [batch, pos], got shape {tuple(tokens.shape)}")
        keep = torch.ones(tokens.shape, dtype=torch.bool)
        if batch_mask is not None:
            if batch_mask.shape != tokens.shape:
                raise ValueError(
                    f"mask shape {tuple(batch_mask.shape)} != tokens shape {tuple(tokens.shape)}"
                )
            keep &= batch_mask.detach().cpu().bool()
        if exclude_bos:
            keep[:, 0] = False
        stored.clear()
        model.run_with_hooks(
            tokens, fwd_hooks=[(hook_name, store)], return_type=None, **(forward_kwargs or {})
        )
        if len(stored) != 1:
            raise RuntimeError(
                f"hook {hook_name!r} fired {len(stored)} times in one forward pass "
                "(expected once); is the hook name right?"
            )
        act = stored[0]
        if act.shape[:2] != tokens.shape:
            raise ValueError(
                f"activation at {hook_name!r} has shape {tuple(act.shape)}; expected "
                f"[batch, pos, ...] = {tuple(tokens.shape)} + (...,)"
            )
        act = act.flatten(start_dim=2)  # [batch, pos, d]
        doc_idx, pos_idx = keep.nonzero(as_tuple=True)
        acts.append(act[doc_idx.to(act.device), pos_idx.to(act.device)].to(device or act.device))
        docs.append(doc_idx + n_docs)
        poss.append(pos_idx)
        n_docs += tokens.shape[0]
    if not acts:
        raise ValueError("no token batches were given")
    return ActivationSet(torch.cat(acts), torch.cat(docs), torch.cat(poss), hook_name)
