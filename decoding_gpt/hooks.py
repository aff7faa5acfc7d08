"""Where activations and weights live, by name, in any model of the course.

Hook points are named after the math, as in TransformerLens (``blocks.1.attn.hook_z`` is
head outputs ``z`` of layer 1), and both :class:`decoding_gpt.transformer.GPT` and a
TransformerLens ``TransformerBridge`` use the same names, so an analysis written against
these helpers runs on either. The two differ only in where a few weights are attributes
(the bridge has ``model.W_E``; our GPT has ``model.embed.W_E``): :func:`model_weight`
hides that.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

# A model the helpers below (and the analyses built on them) take: our GPT or a
# TransformerLens TransformerBridge. They share hook names and ``cfg``, not a base class
# this module could name (GPT is defined above it), so to the type checker it is Any.
HookedModel = Any

HOOKS = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
}


def hook_name(kind: str, layer: int) -> str:
    """TransformerLens hook name, e.g. ``hook_name("z", 1) == "blocks.1.attn.hook_z"``."""
    if kind not in HOOKS:
        raise ValueError(f"unknown activation kind {kind!r}; choose one of {sorted(HOOKS)}")
    return HOOKS[kind].format(layer=layer)


def model_weight(model: HookedModel, name: str) -> Tensor:
    """``W_E``, ``W_pos``, ``W_U`` or ``b_U``: on the model (bridge) or its submodule (GPT)."""
    owner = {"W_E": "embed", "W_pos": "pos_embed", "W_U": "unembed", "b_U": "unembed"}[name]
    if hasattr(model, name):
        return getattr(model, name)
    return getattr(getattr(model, owner), name)


def n_layers(model: HookedModel) -> int:
    """Number of transformer blocks (``model.cfg.n_layers``)."""
    return int(model.cfg.n_layers)
