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
- HF GPT-2: LayerNorm, learned positions, an MLP, ``n_heads * d_head == d_model``,
  activation ``gelu_new``/``gelu``/``relu``, and an unembedding without bias. HF ties
  ``lm_head`` to ``wte`` by default; we build it untied (``tie_word_embeddings`` False), and
  reading a tied HF model copies ``wte`` into ``W_U``.

The unembedding bias ``b_U`` is folded into the final LayerNorm's bias and ``W_U`` exactly
(:func:`fold_unembed_bias`, the default of :func:`to_hf_gpt2`); ``unembed_bias="drop"``
exports the trained ``W_U`` unchanged and loses ``b_U``, at a cost that
:func:`unembed_bias_cost` measures. Measured on the whole validation split (``stories``:
500k tokens; ``code``: 150k; rows of 128; float32, CPU):

================  ==============================  ===============================  ==========
shipped model     exports to HF GPT-2?            dropping ``b_U`` (val loss)      folding it
================  ==============================  ===============================  ==========
``stories-4l``    yes (max |b_U| 1.42)            +0.0002 nat (0.8535 -> 0.8537)   exact [*]_
``code-4l``       yes (max |b_U| 0.78)            +0.0020 nat (2.4333 -> 2.4353)   exact [*]_
scaling family    yes (non-zero ``b_U``)          not measured                     exact
``attn-only-1l``  no: no MLP (GPT-2 blocks always have one)
``attn-only-2l``  no: no MLP
``modadd-1l``     no: no LayerNorm (and no tokenizer)
================  ==============================  ===============================  ==========

.. [*] folded vs original logits: max difference 3e-14 in float64, 2.5e-5 in float32 (the
   original's own float32 rounding error is of that size) over the whole split.

:func:`export_hf` writes a folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read, with the tokenizer and a generation config
(``tools/export_hf.py`` is its command line for shipped models). In our tokenizers one id
(``<|endoftext|>``, 0) is BOS, EOS and pad, and the tokenizer prepends it. HF's
``generate`` infers an attention mask ``input_ids != pad_token_id`` when it is given none,
unless pad equals EOS; so with pad = 0 and no EOS it would mask out the BOS token and
generate different text (measured on ``stories-4l``). The export sets bos = eos = pad = 0,
which turns that inference off, and the tokenizer returns ``attention_mask``: the right
call is ``model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=...)``, and
``pipeline("text-generation", model=..., tokenizer=...)`` passes the mask itself. Both give
the tokens of :func:`decoding_gpt.generation.generate` with ``greedy=True`` (tested).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import einops
import torch
from jaxtyping import Int
from torch import Tensor

from decoding_gpt.tokenizer import as_pretrained_tokenizer_fast
from decoding_gpt.transformer import GPT, GPTConfig, LayerNorm, next_token_loss

_HF_ACT = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu"}


def _heads_to_linear(W: Tensor) -> Tensor:
    """``[n_heads, d_model, d_head] -> nn.Linear weight [(n_heads d_head), d_model]``."""
    return einops.rearrange(W, "h m e -> (h e) m")


def _linear_to_heads(W: Tensor, n_heads: int) -> Tensor:
    return einops.rearrange(W, "(h e) m -> h m e", h=n_heads)


# --------------------------------------------------------------------------- TransformerLens
def _tl_state_dict(model: GPT) -> dict[str, Tensor]:
    """Our weights under the bridge's (HF-style) state-dict names."""
    cfg, sd = model.cfg, dict[str, Tensor]()
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
    if isinstance(model.ln_final, LayerNorm):  # normalization_type == "LN"
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
    assert cfg.d_head is not None  # set by GPTConfig.__post_init__
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, d_head=cfg.d_head, n_layers=cfg.n_layers, n_ctx=cfg.n_ctx,
        d_vocab=cfg.d_vocab, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type, attn_only=cfg.attn_only,
        positional_embedding_type=cfg.positional_embedding_type, rotary_base=cfg.rotary_base,
        eps=cfg.layer_norm_eps, init_weights=False,
    )  # fmt: skip
    # TL attaches boot_native with setattr (model_bridge/sources/native), unseen by mypy
    bridge = TransformerBridge.boot_native(  # type: ignore[attr-defined]
        tl_cfg, tokenizer=tokenizer, device=model.device
    )
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
        if isinstance(model.ln_final, LayerNorm):  # normalization_type == "LN"
            model.ln_final.w.copy_(sd["ln_final.weight"])
            model.ln_final.b.copy_(sd["ln_final.bias"])
        model.unembed.W_U.copy_(sd["unembed.weight"].T)
        model.unembed.b_U.copy_(sd.get("unembed.bias", torch.zeros(cfg.d_vocab)))


# --------------------------------------------------------------------------- HF GPT-2
UnembedBias = Literal["fold", "drop", "refuse"]


def _check_hf_compatible(cfg: GPTConfig) -> None:
    assert cfg.d_head is not None  # set by GPTConfig.__post_init__
    problems = []
    if cfg.normalization_type != "LN":
        problems.append("GPT-2 needs LayerNorm (normalization_type='LN')")
    if cfg.positional_embedding_type != "standard":
        problems.append("GPT-2 needs learned positions (positional_embedding_type='standard')")
    if cfg.attn_only:
        problems.append("GPT-2 blocks always have an MLP (attn_only=False)")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append("GPT-2 needs n_heads * d_head == d_model")
    if cfg.act_fn not in _HF_ACT:
        problems.append(f"GPT-2 has no activation {cfg.act_fn!r} (one of {sorted(_HF_ACT)})")
    if problems:
        raise NotImplementedError("cannot convert to HF GPT-2: " + "; ".join(problems))


@torch.no_grad()
def fold_unembed_bias(model: GPT) -> GPT:
    """A copy of ``model`` with ``b_U = 0`` that computes the same logits (exactly, in exact
    arithmetic), by moving ``b_U`` into the final LayerNorm's bias and ``W_U``.

    The final LayerNorm outputs ``y = w * n + b`` with ``n = (x - mean x) / sqrt(var x +
    eps)``, so ``sum_i n_i = 0`` for every input. Take ``v = 1 / w`` (elementwise; or a unit
    vector ``e_i`` where some ``w_i = 0``): then ``(w * n) . v = 0``, and adding a rank-one
    ``v u^T`` to ``W_U [d_model, d_vocab]`` adds ``(b . v) u`` to every position's logits,
    a constant. With ``b' = b + beta v`` and ``s = b' . v``, choose
    ``u = (b_U - beta v W_U) / s``; then ``b' (W_U + v u^T) = b W_U + b_U`` and

        ``y' W_U' = (w * n) W_U + b W_U + b_U = y W_U + b_U``.

    ``beta`` only sets the conditioning: it makes ``s = d_model`` (``1`` for ``e_i``), so
    ``|u| ~ |b_U| / d_model`` and float32 logits differ from the original by about as much
    as the original's own rounding error (max 2e-5 on the shipped models; computed in
    float64, then cast to the model's dtype). The new ``W_U`` is a reparametrisation: the
    logits are the same, but a direct logit attribution of an uncentred component through
    it is not. Requires ``normalization_type='LN'`` (without a final LayerNorm there is no
    direction whose output is constant).
    """
    if model.cfg.normalization_type != "LN":
        raise NotImplementedError(
            "folding b_U needs a final LayerNorm (normalization_type='LN'), whose output "
            f"has a constant direction; this model has normalization_type="
            f"{model.cfg.normalization_type!r}"
        )
    folded = copy.deepcopy(model)
    # normalization_type == "LN": the final norm is a LayerNorm
    assert isinstance(model.ln_final, LayerNorm) and isinstance(folded.ln_final, LayerNorm)
    dtype = model.unembed.W_U.dtype
    w, b = model.ln_final.w.double(), model.ln_final.b.double()  # [d_model]
    W_U, b_U = (
        model.unembed.W_U.double(),
        model.unembed.b_U.double(),
    )  # [d_model, d_vocab], [d_vocab]
    if bool((w == 0).any()):  # a dead coordinate: its LN output is b_i alone
        v, target = torch.zeros_like(w), 1.0
        v[int((w == 0).nonzero()[0])] = 1.0
    else:
        v, target = 1.0 / w, float(w.numel())
    beta = (target - b @ v) / (v @ v)
    b_new = b + beta * v  # b' . v == target
    u = (b_U - beta * (v @ W_U)) / target  # [d_vocab]
    folded.ln_final.b.copy_(b_new.to(dtype))
    folded.unembed.W_U.copy_((W_U + torch.outer(v, u)).to(dtype))
    folded.unembed.b_U.zero_()
    return folded


@torch.no_grad()
def unembed_bias_cost(model: GPT, tokens: Int[Tensor, "batch pos"], batch_size: int = 64) -> float:
    """What dropping ``b_U`` costs: next-token loss (nats) without it minus with it.

    ``logits - b_U`` is exactly the model with ``b_U = 0``, so one forward pass gives both
    losses; the means are over every target of ``tokens`` (rows of at most ``n_ctx``).
    Measured on the whole val split: ``stories-4l`` +0.0002 nat, ``code-4l`` +0.0020 nat.
    """
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 2, got {tuple(tokens.shape)}")
    b_U = model.unembed.b_U.float()
    with_bias, without, n = 0.0, 0.0, 0
    for start in range(0, tokens.shape[0], batch_size):
        rows = tokens[start : start + batch_size].to(model.device)
        logits = model(rows).float()  # [batch, pos, d_vocab]
        k = rows.shape[0] * (rows.shape[1] - 1)  # targets in this batch
        with_bias += k * next_token_loss(logits, rows).item()
        without += k * next_token_loss(logits - b_U, rows).item()
        n += k
    return (without - with_bias) / n


def to_hf_gpt2(model: GPT, unembed_bias: UnembedBias = "fold") -> Any:
    """A ``transformers.GPT2LMHeadModel`` (untied embeddings, eval mode) with our weights.

    GPT-2's ``lm_head`` has no bias. ``unembed_bias`` says what to do with a non-zero
    ``b_U``: ``"fold"`` (default) moves it exactly into ``ln_f.bias`` and ``lm_head``
    (:func:`fold_unembed_bias`: same logits, a reparametrised ``lm_head``); ``"drop"`` keeps
    the trained ``W_U`` and loses ``b_U`` (the logits change by ``-b_U``; the loss cost is
    :func:`unembed_bias_cost`); ``"refuse"`` raises ``ValueError``. A zero ``b_U`` is
    exported as is in every mode. Raises ``NotImplementedError`` naming what GPT-2 cannot
    represent (no LayerNorm, no MLP, other positions, ...).
    """
    from transformers import GPT2Config, GPT2LMHeadModel  # lazy: heavy, HF export only

    cfg = model.cfg
    _check_hf_compatible(cfg)
    if unembed_bias not in ("fold", "drop", "refuse"):
        raise ValueError(f"unembed_bias must be 'fold', 'drop' or 'refuse', got {unembed_bias!r}")
    max_b_U = float(model.unembed.b_U.detach().abs().max())
    if max_b_U > 0 and unembed_bias == "refuse":
        raise ValueError(
            f"HF GPT-2's lm_head has no bias but this model's b_U is non-zero (max |b_U| = "
            f"{max_b_U:.4g}); pass unembed_bias='fold' to fold it exactly into ln_f and "
            "lm_head, or unembed_bias='drop' to lose it (measure the cost with "
            "unembed_bias_cost(model, tokens))"
        )
    if max_b_U > 0 and unembed_bias == "fold":
        model = fold_unembed_bias(model)
    special = 50256 if cfg.d_vocab > 50256 else None  # GPT-2's <|endoftext|>, if it exists
    hf_cfg = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
        activation_function=_HF_ACT[cfg.act_fn], layer_norm_epsilon=cfg.layer_norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
        bos_token_id=special, eos_token_id=special,
    )  # fmt: skip
    hf = GPT2LMHeadModel(hf_cfg)
    assert isinstance(model.ln_final, LayerNorm)  # _check_hf_compatible: LayerNorm
    sd: dict[str, Tensor] = {
        "transformer.wte.weight": model.embed.W_E,
        "transformer.wpe.weight": model.pos_embed.W_pos,
    }
    for layer, block in enumerate(model.blocks):
        p, attn = f"transformer.h.{layer}.", block.attn
        assert isinstance(block.ln1, LayerNorm) and isinstance(block.ln2, LayerNorm)
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
    # transformers types PreTrainedModel.to through a decorator that drops its signature
    return hf.to(model.device).eval()  # type: ignore[arg-type]


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
            assert isinstance(block.ln1, LayerNorm) and isinstance(block.ln2, LayerNorm)  # LN
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
        assert isinstance(model.ln_final, LayerNorm)  # GPTConfig's default: LN
        model.ln_final.w.copy_(sd["transformer.ln_f.weight"])
        model.ln_final.b.copy_(sd["transformer.ln_f.bias"])
        W_U = sd.get("lm_head.weight", sd["transformer.wte.weight"])  # tied: lm_head is wte
        model.unembed.W_U.copy_(W_U.T)
        model.unembed.b_U.zero_()
    return model


_EXPORT_README = """# {name}

Exported from `decoding_gpt` with `decoding_gpt.convert.export_hf` (HF GPT-2 layout).
Unembedding bias: {unembed_bias} (max |b_U| = {max_b_U:.4g}).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
model = AutoModelForCausalLM.from_pretrained(FOLDER)
tok = AutoTokenizer.from_pretrained(FOLDER)
out = model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=20)  # passes the mask
pipeline("text-generation", model=model, tokenizer=tok)(prompt, max_new_tokens=20)
```

Token {special} ({special_token!r}) is BOS, EOS and pad; the tokenizer prepends it and pads
on the left. Pass the tokenizer's `attention_mask` to `generate` (batched prompts need it).
"""


@torch.no_grad()
def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer: Any,
    *,
    unembed_bias: UnembedBias = "fold",
    tokens: Int[Tensor, "batch pos"] | None = None,
    name: str = "decoding_gpt model",
) -> dict[str, Any]:
    """Write ``model`` and ``tokenizer`` as an HF folder; check it loads; return a report.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` gives a ``GPT2LMHeadModel``
    (:func:`to_hf_gpt2`, ``unembed_bias`` as there) and ``AutoTokenizer.from_pretrained``
    the tokenizer (a ``tokenizers.Tokenizer`` is wrapped with
    :func:`~decoding_gpt.tokenizer.as_pretrained_tokenizer_fast`): it prepends BOS, returns
    ``attention_mask`` and pads on the left (what batched ``generate`` needs). Its EOS
    token is written as bos, eos and pad of the model config and ``generation_config``;
    pad == eos stops ``generate`` from inferring a mask that hides the BOS token (see the
    module docstring).

    The folder is read back and its logits compared with ``model``'s (``b_U`` removed
    when ``unembed_bias="drop"``) on ``tokens`` (default: 2 rows of 16 seeded random ids).
    Returns ``{"out_dir", "unembed_bias", "max_abs_b_U", "max_abs_logit_diff",
    "loss_change_nats"}``: the last is the exported model's next-token loss on ``tokens``
    minus ours (with ``b_U``), so it shows what ``"drop"`` costs (``None`` without
    ``tokens``). Raises ``RuntimeError`` if the logits differ by more than 1e-3.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # lazy: heavy

    cfg = model.cfg
    _check_hf_compatible(cfg)  # before touching the tokenizer: the clearer error first
    if not hasattr(tokenizer, "save_pretrained"):
        tokenizer = as_pretrained_tokenizer_fast(tokenizer)
    tok = copy.deepcopy(tokenizer)  # do not change the caller's padding side
    special = tok.eos_token_id
    if special is None:
        raise ValueError("the tokenizer has no EOS token (needed as BOS, EOS and pad)")
    if len(tok) > cfg.d_vocab:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the model only {cfg.d_vocab}")
    tok.padding_side, tok.model_max_length = "left", cfg.n_ctx
    hf = to_hf_gpt2(model, unembed_bias)
    hf.config.bos_token_id = hf.config.eos_token_id = hf.config.pad_token_id = special
    hf.generation_config = GenerationConfig(
        bos_token_id=special, eos_token_id=special, pad_token_id=special
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    max_b_U = float(model.unembed.b_U.abs().max())
    (out / "README.md").write_text(
        _EXPORT_README.format(
            name=name,
            unembed_bias=unembed_bias if max_b_U > 0 else "none (b_U = 0)",
            max_b_U=max_b_U,
            special=special,
            special_token=tok.eos_token,
        )  # fmt: skip
    )
    # transformers types PreTrainedModel.to through a decorator that drops its signature
    loaded = AutoModelForCausalLM.from_pretrained(out).to(model.device).eval()  # type: ignore[arg-type]
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    if len(reloaded_tok) != len(tok) or reloaded_tok.eos_token_id != special:
        raise RuntimeError(f"the tokenizer written to {out} does not read back the same")
    probe = tokens
    if probe is None:
        gen = torch.Generator().manual_seed(0)
        probe = torch.randint(0, cfg.d_vocab, (2, min(16, cfg.n_ctx)), generator=gen)
    probe = probe.to(model.device)
    theirs = loaded(probe).logits.float()  # [batch, pos, d_vocab]
    ours = model(probe).float()
    expected = ours - model.unembed.b_U.float() if unembed_bias == "drop" else ours
    diff = float((theirs - expected).abs().max())
    if diff > 1e-3:
        raise RuntimeError(f"the exported model's logits differ from ours by {diff:.3g}")
    loss_change = None
    if tokens is not None:
        loss_change = (next_token_loss(theirs, probe) - next_token_loss(ours, probe)).item()
    return {
        "out_dir": str(out), "unembed_bias": unembed_bias, "max_abs_b_U": max_b_U,
        "max_abs_logit_diff": diff, "loss_change_nats": loss_change,
    }  # fmt: skip
