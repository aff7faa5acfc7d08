"""Move weights between our :class:`~decoding_gpt.transformer.GPT`, TransformerLens and HF.

The three models compute the same function with differently laid-out weights
(ours -> TransformerLens native bridge -> HF GPT-2; ``hd`` means ``(n_heads d_head)``
flattened head-major; ``nn.Linear`` stores ``[out, in]``, HF's ``Conv1D`` ``[in, out]``):

- ``attn.W_Q [n_heads, d_model, d_head]`` -> ``attn.q.weight [hd, d_model]`` ->
  columns ``0:d_model`` of ``attn.c_attn.weight [d_model, 3 d_model]`` (then K, V);
- ``attn.W_O [n_heads, d_head, d_model]`` -> ``attn.o.weight [d_model, hd]`` ->
  ``attn.c_proj.weight [hd, d_model]``;
- ``mlp.W_in [d_model, d_mlp]`` -> ``mlp.in.weight [d_mlp, d_model]`` -> ``mlp.c_fc.weight``;
- ``unembed.W_U [d_model, d_vocab]`` -> ``unembed.weight [d_vocab, d_model]`` ->
  ``lm_head.weight [d_vocab, d_model]``.

Conversions are exact copies, so logits agree to float precision (tests: atol 1e-4).

What each target can represent:

- TransformerLens ``TransformerBridge.boot_native``: LayerNorm or none, attention-only or
  not, learned or rotary positions (adjacent-pair RoPE, as ours); not sinusoidal or no
  positions (``NotImplementedError``). Its unembedding has a bias, like ours.
- HF GPT-2: LayerNorm, learned positions, an MLP, ``n_heads * d_head == d_model``, an
  unembedding without bias (``b_U`` must be zero), activation ``gelu_new``/``gelu``/``relu``.
  HF ties ``lm_head`` to ``wte`` by default; we build it untied (``tie_word_embeddings``
  False), and reading a tied HF model copies ``wte`` into ``W_U``.
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from torch import Tensor

from decoding_gpt.transformer import GPT, GPTConfig

_HF_ACT = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}


def _heads_to_linear(W: Tensor) -> Tensor:
    """``[n_heads, d_model, d_head] -> nn.Linear weight [(n_heads d_head), d_model]``."""
    return einops.rearrange(W, "h m e -> (h e) m")


def _linear_to_heads(W: Tensor, n_heads: int) -> Tensor:
    return einops.rearrange(W, "(h e) m -> h m e", h=n_heads)


# --------------------------------------------------------------------------- TransformerLens
def _tl_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our weights under the bridge's (HF-style) state-dict names."""
    cfg, sd = model.cfg, {}
    sd["embed.weight"] = model.embed.W_E
    if cfg.positional_embedding_type == "standard":
        sd["pos_embed.weight"] = model.pos_embed.W_pos
    norms = [("ln1", "ln1")] + ([] if cfg.attn_only else [("ln2", "ln2")])
    for layer, block in enumerate(model.blocks):
        p, attn = f"blocks.{layer}.", block.attn
        if cfg.normalization_type == "LN":
            for ours, theirs in norms:
                sd[p + theirs + ".weight"] = getattr(block, ours).w
                sd[p + theirs + ".bias"] = getattr(block, ours).b
        for x in "qkv":
            sd[p + f"attn.{x}.weight"] = _heads_to_linear(getattr(attn, f"W_{x.upper()}"))
            sd[p + f"attn.{x}.bias"] = getattr(attn, f"b_{x.upper()}").flatten()
        sd[p + "attn.o.weight"] = einops.rearrange(attn.W_O, "h e m -> m (h e)")
        sd[p + "attn.o.bias"] = attn.b_O
        if not cfg.attn_only:
            sd[p + "mlp.in.weight"], sd[p + "mlp.in.bias"] = block.mlp.W_in.T, block.mlp.b_in
            sd[p + "mlp.out.weight"], sd[p + "mlp.out.bias"] = block.mlp.W_out.T, block.mlp.b_out
    if cfg.normalization_type == "LN":
        sd["ln_final.weight"], sd["ln_final.bias"] = model.ln_final.w, model.ln_final.b
    sd["unembed.weight"], sd["unembed.bias"] = model.unembed.W_U.T, model.unembed.b_U
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_transformer_lens(model: GPT, tokenizer: Any = None) -> Any:
    """A ``transformer_lens.model_bridge.TransformerBridge`` computing the same function.

    Built offline with ``TransformerBridge.boot_native``; our weights are loaded into it.
    Pass a tokenizer (e.g. a ``PreTrainedTokenizerFast``) for ``to_tokens``/``to_string``.
    """
    from transformer_lens.config import TransformerBridgeConfig  # lazy: heavy
    from transformer_lens.model_bridge import TransformerBridge  # lazy: heavy

    cfg = model.cfg
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        raise NotImplementedError(
            f"positional_embedding_type={cfg.positional_embedding_type!r} has no "
            "TransformerLens native equivalent (it supports 'standard' and 'rotary')"
        )
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, d_head=cfg.d_head, n_layers=cfg.n_layers, n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type, attn_only=cfg.attn_only,
        positional_embedding_type=cfg.positional_embedding_type, rotary_base=cfg.rotary_base,
        eps=cfg.layer_norm_eps, init_weights=False,
    )  # fmt: skip
    bridge = TransformerBridge.boot_native(tl_cfg, tokenizer=tokenizer, device=model.device)
    bridge.load_state_dict(_tl_state_dict(model), strict=True)
    return bridge.eval()


def from_transformer_lens(bridge: Any) -> GPT:
    """Our :class:`GPT` with the weights of a TL-native ``TransformerBridge``."""
    tc = bridge.cfg
    unsupported = {
        "gated_mlp": tc.gated_mlp, "final_rms": tc.final_rms,
        "n_key_value_heads": tc.n_key_value_heads not in (None, tc.n_heads),
        "rope_scaling": bool(getattr(tc, "rope_scaling", None)),
        "rotary_dim": tc.rotary_dim not in (None, tc.d_head),
        "attention_dir": tc.attention_dir != "causal",
        "soft caps": tc.attn_scores_soft_cap > 0 or tc.output_logits_soft_cap > 0,
    }  # fmt: skip
    if tc.architecture != "TransformerLensNative" or any(unsupported.values()):
        bad = [k for k, v in unsupported.items() if v] or [f"architecture={tc.architecture}"]
        raise NotImplementedError(f"cannot convert this TransformerBridge to GPT: {bad}")
    if tc.normalization_type not in ("LN", None):
        raise NotImplementedError(f"normalization_type={tc.normalization_type!r} unsupported")
    cfg = GPTConfig(
        d_vocab=tc.d_vocab, n_ctx=tc.n_ctx, d_model=tc.d_model, n_layers=tc.n_layers,
        n_heads=tc.n_heads, d_head=tc.d_head, d_mlp=tc.d_mlp, act_fn=tc.act_fn,
        normalization_type=tc.normalization_type, attn_only=tc.attn_only,
        positional_embedding_type=tc.positional_embedding_type or "standard",
        rotary_base=int(tc.rotary_base), layer_norm_eps=tc.eps,
    )  # fmt: skip
    model = GPT(cfg)
    sd = {k: v.detach().cpu() for k, v in bridge.state_dict().items()}
    _load_from_tl_state_dict(model, sd)
    return model


def _load_from_tl_state_dict(model: GPT, sd: dict[str, Tensor]) -> None:
    ours = _tl_state_dict(model)  # names and shapes to fill
    missing = sorted(set(ours) - set(sd))
    if missing:
        raise ValueError(f"TransformerBridge state dict lacks {missing[:5]}")
    cfg, h = model.cfg, model.cfg.n_heads
    with torch.no_grad():
        model.embed.W_E.copy_(sd["embed.weight"])
        if cfg.positional_embedding_type == "standard":
            model.pos_embed.W_pos.copy_(sd["pos_embed.weight"])
        for layer, block in enumerate(model.blocks):
            p, attn = f"blocks.{layer}.", block.attn
            for ln in ["ln1"] + ([] if cfg.attn_only else ["ln2"]):
                if cfg.normalization_type == "LN":
                    getattr(block, ln).w.copy_(sd[p + ln + ".weight"])
                    getattr(block, ln).b.copy_(sd[p + ln + ".bias"])
            for x in "QKV":
                getattr(attn, f"W_{x}").copy_(
                    _linear_to_heads(sd[p + f"attn.{x.lower()}.weight"], h)
                )
                getattr(attn, f"b_{x}").copy_(sd[p + f"attn.{x.lower()}.bias"].view(h, -1))
            attn.W_O.copy_(einops.rearrange(sd[p + "attn.o.weight"], "m (h e) -> h e m", h=h))
            attn.b_O.copy_(sd[p + "attn.o.bias"])
            if not cfg.attn_only:
                block.mlp.W_in.copy_(sd[p + "mlp.in.weight"].T)
                block.mlp.b_in.copy_(sd[p + "mlp.in.bias"])
                block.mlp.W_out.copy_(sd[p + "mlp.out.weight"].T)
                block.mlp.b_out.copy_(sd[p + "mlp.out.bias"])
        if cfg.normalization_type == "LN":
            model.ln_final.w.copy_(sd["ln_final.weight"])
            model.ln_final.b.copy_(sd["ln_final.bias"])
        model.unembed.W_U.copy_(sd["unembed.weight"].T)
        model.unembed.b_U.copy_(sd.get("unembed.bias", torch.zeros(cfg.d_vocab)))


# --------------------------------------------------------------------------- HF GPT-2
def _check_hf_compatible(cfg: GPTConfig) -> None:
    problems = []
    if cfg.normalization_type != "LN":
        problems.append("GPT-2 needs LayerNorm (normalization_type='LN')")
    if cfg.positional_embedding_type != "standard":
        problems.append("GPT-2 needs learned positions (positional_embedding_type='standard')")
    if cfg.attn_only:
        problems.append("GPT-2 blocks always have an MLP (attn_only=False)")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append("GPT-2 needs n_heads * d_head == d_model")
    if problems:
        raise NotImplementedError("cannot convert to HF GPT-2: " + "; ".join(problems))


def to_hf_gpt2(model: GPT) -> Any:
    """A ``transformers.GPT2LMHeadModel`` (untied embeddings, eval mode) with our weights.

    Raises ``NotImplementedError`` if GPT-2's architecture cannot represent ``model``
    and ``ValueError`` if ``b_U`` is non-zero (GPT-2's ``lm_head`` has no bias).
    """
    from transformers import GPT2Config, GPT2LMHeadModel  # lazy: heavy, HF export only

    cfg = model.cfg
    _check_hf_compatible(cfg)
    if model.unembed.b_U.detach().abs().max() > 0:
        raise ValueError("HF GPT-2's lm_head has no bias but this model's b_U is non-zero")
    special = 50256 if cfg.d_vocab > 50256 else None  # GPT-2's <|endoftext|>, if it exists
    hf_cfg = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
        activation_function=_HF_ACT[cfg.act_fn], layer_norm_epsilon=cfg.layer_norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=special, eos_token_id=special,
    )  # fmt: skip
    hf = GPT2LMHeadModel(hf_cfg)
    sd = {
        "transformer.wte.weight": model.embed.W_E,
        "transformer.wpe.weight": model.pos_embed.W_pos,
    }
    for layer, block in enumerate(model.blocks):
        p, attn = f"transformer.h.{layer}.", block.attn
        qkv = [einops.rearrange(getattr(attn, f"W_{x}"), "h m e -> m (h e)") for x in "QKV"]
        sd[p + "attn.c_attn.weight"] = torch.cat(qkv, dim=1)  # Conv1D: [in, out]
        sd[p + "attn.c_attn.bias"] = torch.cat(
            [attn.b_Q.flatten(), attn.b_K.flatten(), attn.b_V.flatten()]
        )
        sd[p + "attn.c_proj.weight"] = attn.W_O.flatten(0, 1)  # [(h e), d_model]
        sd[p + "attn.c_proj.bias"] = attn.b_O
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = block.ln1.w, block.ln1.b
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = block.ln2.w, block.ln2.b
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = block.mlp.W_in, block.mlp.b_in
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = block.mlp.W_out, block.mlp.b_out
    sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"] = model.ln_final.w, model.ln_final.b
    sd["lm_head.weight"] = model.unembed.W_U.T
    missing, unexpected = hf.load_state_dict(
        {k: v.detach().clone().contiguous() for k, v in sd.items()}, strict=False
    )
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"HF GPT-2 weight mismatch: missing {missing}, unexpected {unexpected}")
    return hf.to(model.device).eval()


def from_hf_gpt2(hf_model: Any) -> GPT:
    """Our :class:`GPT` with the weights of a ``transformers.GPT2LMHeadModel``."""
    c = hf_model.config
    act = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
    if c.activation_function not in act:
        raise NotImplementedError(f"activation_function={c.activation_function!r} unsupported")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(
        c, "scale_attn_weights", True
    ):
        raise NotImplementedError(
            "only GPT-2's standard 1/sqrt(d_head) attention scaling is supported"
        )
    cfg = GPTConfig(
        d_vocab=c.vocab_size, n_ctx=c.n_positions, d_model=c.n_embd, n_layers=c.n_layer,
        n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, act_fn=act[c.activation_function],
        layer_norm_eps=c.layer_norm_epsilon,
    )  # fmt: skip
    model = GPT(cfg)
    sd = {k: v.detach().cpu() for k, v in hf_model.state_dict().items()}
    d, h = cfg.d_model, cfg.n_heads
    with torch.no_grad():
        model.embed.W_E.copy_(sd["transformer.wte.weight"])
        model.pos_embed.W_pos.copy_(sd["transformer.wpe.weight"])
        for layer, block in enumerate(model.blocks):
            p, attn = f"transformer.h.{layer}.", block.attn
            W_qkv, b_qkv = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
            for i, x in enumerate("QKV"):
                W = W_qkv[:, i * d : (i + 1) * d]
                getattr(attn, f"W_{x}").copy_(einops.rearrange(W, "m (h e) -> h m e", h=h))
                getattr(attn, f"b_{x}").copy_(b_qkv[i * d : (i + 1) * d].view(h, -1))
            attn.W_O.copy_(sd[p + "attn.c_proj.weight"].view(h, -1, d))
            attn.b_O.copy_(sd[p + "attn.c_proj.bias"])
            block.ln1.w.copy_(sd[p + "ln_1.weight"]), block.ln1.b.copy_(sd[p + "ln_1.bias"])
            block.ln2.w.copy_(sd[p + "ln_2.weight"]), block.ln2.b.copy_(sd[p + "ln_2.bias"])
            block.mlp.W_in.copy_(sd[p + "mlp.c_fc.weight"])
            block.mlp.b_in.copy_(sd[p + "mlp.c_fc.bias"])
            block.mlp.W_out.copy_(sd[p + "mlp.c_proj.weight"])
            block.mlp.b_out.copy_(sd[p + "mlp.c_proj.bias"])
        model.ln_final.w.copy_(sd["transformer.ln_f.weight"])
        model.ln_final.b.copy_(sd["transformer.ln_f.bias"])
        W_U = sd.get("lm_head.weight", sd["transformer.wte.weight"])  # tied: lm_head is wte
        model.unembed.W_U.copy_(W_U.T)
        model.unembed.b_U.zero_()
    return model
