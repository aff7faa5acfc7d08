"""Our GPT against TransformerLens's native bridge and HF GPT-2 on copied weights."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    pipeline,
)

from decoding_gpt.convert import (
    export_hf,
    fold_unembed_bias,
    from_hf_gpt2,
    from_transformer_lens,
    to_hf_gpt2,
    to_transformer_lens,
    unembed_bias_cost,
)
from decoding_gpt.data import get_tokenizer
from decoding_gpt.generation import generate
from decoding_gpt.pretrained import load_native, load_tokenizer, model_info
from decoding_gpt.tools import export_hf as export_hf_tool
from decoding_gpt.transformer import GPT, GPTConfig

ATOL = 1e-4
TINY = dict(d_vocab=53, n_ctx=16, d_model=32, n_layers=2, n_heads=4)


def perturbed(**overrides) -> GPT:
    """Random weights everywhere (LayerNorm gains and all biases too), so a swapped or
    transposed weight cannot go unnoticed."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "init_range": 0.2, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def toks():
    return torch.randint(0, TINY["d_vocab"], (2, 12), generator=torch.Generator().manual_seed(5))


# --------------------------------------------------------------------------- TransformerLens
@pytest.mark.parametrize(
    "overrides",
    [
        {"act_fn": "gelu_new"},
        {"positional_embedding_type": "rotary", "act_fn": "relu"},
        {"attn_only": True, "normalization_type": None},
    ],
)
def test_transformer_lens_bridge_gives_identical_logits_and_loss(overrides, toks):
    model = perturbed(**overrides)
    bridge = to_transformer_lens(model)
    torch.testing.assert_close(bridge(toks), model(toks), atol=ATOL, rtol=0)
    tl_loss = bridge(toks, return_type="loss")
    torch.testing.assert_close(tl_loss, model(toks, return_type="loss"), atol=ATOL, rtol=0)


def test_attention_pattern_and_z_match_transformer_lens(toks):
    model = perturbed(positional_embedding_type="rotary")
    _, tl_cache = to_transformer_lens(model).run_with_cache(toks)
    _, cache = model.run_with_cache(toks)
    for layer in range(TINY["n_layers"]):
        for name in ("attn.hook_pattern", "attn.hook_z", "hook_resid_post", "hook_attn_out"):
            key = f"blocks.{layer}.{name}"
            assert cache[key].shape == tl_cache[key].shape, key
            torch.testing.assert_close(cache[key], tl_cache[key], atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos_type", ["standard", "rotary"])
def test_from_a_natively_initialised_bridge(pos_type, toks):
    tl_cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_layers=2, n_ctx=16, d_vocab=53, n_heads=4, act_fn="gelu",
        positional_embedding_type=pos_type, seed=3,
    )  # fmt: skip
    bridge = TransformerBridge.boot_native(tl_cfg)
    model = from_transformer_lens(bridge)
    assert model.cfg.positional_embedding_type == pos_type
    torch.testing.assert_close(model(toks), bridge(toks), atol=ATOL, rtol=0)


@pytest.mark.parametrize("pos_type", ["sinusoidal", "none"])
def test_positions_transformer_lens_cannot_represent_raise(pos_type):
    with pytest.raises(NotImplementedError, match="standard' and 'rotary"):
        to_transformer_lens(perturbed(positional_embedding_type=pos_type))


# --------------------------------------------------------------------------- HF GPT-2
def test_hf_gpt2_round_trip_gives_identical_logits(toks):
    model = perturbed(act_fn="gelu_new")
    with torch.no_grad():
        model.unembed.b_U.zero_()  # GPT-2's lm_head has no bias
    hf = to_hf_gpt2(model)
    assert isinstance(hf, GPT2LMHeadModel)
    torch.testing.assert_close(hf(toks).logits, model(toks), atol=ATOL, rtol=0)
    torch.testing.assert_close(from_hf_gpt2(hf)(toks), model(toks), atol=ATOL, rtol=0)


def test_from_a_freshly_initialised_tied_hf_gpt2(toks):
    torch.manual_seed(1)
    hf_cfg = GPT2Config(vocab_size=53, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    model = from_hf_gpt2(hf)
    assert model.cfg.act_fn == "gelu_new" and model.cfg.d_mlp == 128
    torch.testing.assert_close(model(toks), hf(toks).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"positional_embedding_type": "rotary"}, "learned positions"),
        ({"normalization_type": None}, "LayerNorm"),
        ({"attn_only": True}, "MLP"),
        ({"d_head": 4}, "n_heads \\* d_head"),
    ],
)
def test_hf_rejects_what_gpt2_cannot_represent(overrides, match):
    with pytest.raises(NotImplementedError, match=match):
        to_hf_gpt2(perturbed(**overrides))


def test_hf_refuses_a_nonzero_unembedding_bias_when_asked_saying_how_large():
    model = perturbed()
    b_max = float(model.unembed.b_U.detach().abs().max())
    with pytest.raises(ValueError, match=f"max \\|b_U\\| = {b_max:.4g}.*unembed_bias='drop'"):
        to_hf_gpt2(model, unembed_bias="refuse")
    with pytest.raises(ValueError, match="'fold', 'drop' or 'refuse'"):
        to_hf_gpt2(model, unembed_bias="ignore")


def test_fold_unembed_bias_is_exact_in_float64(toks):
    model = perturbed(act_fn="gelu_new").double()
    assert model.unembed.b_U.abs().max() > 0.05
    folded = fold_unembed_bias(model)
    assert folded.unembed.b_U.abs().max() == 0 and model.unembed.b_U.abs().max() > 0
    torch.testing.assert_close(folded(toks), model(toks), atol=1e-10, rtol=0)
    with torch.no_grad():  # a dead LayerNorm coordinate: the fold uses it instead of 1 / w
        model.ln_final.w[3] = 0.0
    torch.testing.assert_close(fold_unembed_bias(model)(toks), model(toks), atol=1e-10, rtol=0)


def test_fold_needs_a_final_layernorm():
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        fold_unembed_bias(perturbed(normalization_type=None))


def test_hf_folds_or_drops_a_nonzero_unembedding_bias(toks):
    model = perturbed(act_fn="gelu_new")
    folded = to_hf_gpt2(model)  # default: fold, the same logits
    torch.testing.assert_close(folded(toks).logits, model(toks), atol=ATOL, rtol=0)
    dropped = to_hf_gpt2(model, unembed_bias="drop")  # the trained W_U, logits minus b_U
    expected = model(toks) - model.unembed.b_U
    torch.testing.assert_close(dropped(toks).logits, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(dropped.lm_head.weight, model.unembed.W_U.T, atol=0, rtol=0)


def test_unembed_bias_cost_against_a_model_without_b_U(toks):
    model = perturbed()
    no_bias = copy.deepcopy(model)
    with torch.no_grad():
        no_bias.unembed.b_U.zero_()

    def loss(m):  # independent: F.cross_entropy over every next-token target
        logits = m(toks)[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))

    expected = (loss(no_bias) - loss(model)).item()
    assert abs(expected) > 1e-3  # the bias matters on random weights
    assert unembed_bias_cost(model, toks, batch_size=1) == pytest.approx(expected, abs=1e-5)
    assert unembed_bias_cost(no_bias, toks) == 0.0


# --------------------------------------------------------------------------- shipped models
EXPORTABLE = ["stories-4l", "code-4l"]
PROMPTS = {"stories-4l": "Once upon a time, Mary", "code-4l": "def __init__(self, name):\n"}
ROUND_TRIP_TEXTS = {
    "stories-4l": ["Tom went to Paris in 1732.", "Lily gave the ball to Sam. Then she smiled"],
    "code-4l": ["x = {\"a\": 1234, 'b': [5, 67]}\n\tif x:  # é\n        return None\n"],
}
NEW = 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each exportable shipped model written once, read back with the Auto* classes."""
    cache = {}

    def get(name):
        if name not in cache:
            model = load_native(name, device="cpu")
            out = tmp_path_factory.mktemp(name)
            report = export_hf(model, out, load_tokenizer(name), name=name)
            hf = AutoModelForCausalLM.from_pretrained(out).eval()
            cache[name] = (model, hf, AutoTokenizer.from_pretrained(out), report, out)
        return cache[name]

    return get


def _greedy_ours(model, ids):
    return generate(model, ids, NEW, greedy=True, eos_token_id=0)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_shipped_hf_logits_match_ours(name, exported):
    model, hf, tok, report, _ = exported(name)
    assert report["unembed_bias"] == "fold" and report["max_abs_b_U"] > 0.1
    assert report["max_abs_logit_diff"] < 1e-4
    ids = tok(PROMPTS[name], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=0)  # folded
        no_bias = copy.deepcopy(model)
        no_bias.unembed.b_U.zero_()
        dropped = to_hf_gpt2(model, unembed_bias="drop")
        torch.testing.assert_close(dropped(ids).logits, no_bias(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_shipped_hf_generate_and_pipeline_match_ours(name, exported):
    model, hf, tok, _, _ = exported(name)
    prompt = PROMPTS[name]
    enc = tok(prompt, return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"} and int(enc["input_ids"][0, 0]) == 0
    ours = _greedy_ours(model, enc["input_ids"])
    theirs = hf.generate(**enc, max_new_tokens=NEW, do_sample=False)  # the right call
    assert theirs.tolist() == ours.tolist()
    # without a mask: pad == eos in the generation config, so HF does not infer one
    bare = hf.generate(enc["input_ids"], max_new_tokens=NEW, do_sample=False)
    assert bare.tolist() == ours.tolist()
    text = pipeline("text-generation", model=hf, tokenizer=tok)(
        prompt, max_new_tokens=NEW, do_sample=False
    )[0]["generated_text"]
    assert text == tok.decode(ours[0], skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_without_eos_in_the_generation_config_hf_masks_the_bos_token(exported):
    """Why the export sets eos = pad: with pad = 0 alone HF infers ``ids != 0`` as the mask."""
    model, hf, tok, _, _ = exported("stories-4l")
    enc = tok(PROMPTS["stories-4l"], return_tensors="pt")
    ours = _greedy_ours(model, enc["input_ids"])
    trap = copy.deepcopy(hf)
    trap.generation_config = GenerationConfig(bos_token_id=0, pad_token_id=0)
    masked = trap.generate(enc["input_ids"], max_new_tokens=NEW, do_sample=False)
    assert masked.tolist() != ours.tolist()
    same = trap.generate(**enc, max_new_tokens=NEW, do_sample=False)  # the mask fixes it
    assert same.tolist() == ours.tolist()


def test_batched_left_padded_generation_matches_each_prompt_alone(exported):
    model, hf, tok, _, _ = exported("stories-4l")
    prompts = [PROMPTS["stories-4l"], "Tom went"]
    assert tok.padding_side == "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = hf.generate(**enc, max_new_tokens=NEW, do_sample=False)
    for row, prompt in enumerate(prompts):
        ours = _greedy_ours(model, tok(prompt, return_tensors="pt")["input_ids"])[0]
        width = int(enc["attention_mask"][row].sum())
        assert out[row, -(width + NEW) :].tolist() == ours.tolist()


@pytest.mark.parametrize("name", EXPORTABLE)
def test_shipped_hf_save_load_round_trip(name, exported):
    model, hf, _, _, out = exported(name)
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, hf(ids).logits)
        assert torch.equal(hf(ids).logits, to_hf_gpt2(model)(ids).logits)
        torch.testing.assert_close(from_hf_gpt2(hf)(ids), model(ids), atol=ATOL, rtol=0)
    assert again.generation_config.pad_token_id == again.generation_config.eos_token_id == 0


@pytest.mark.parametrize("name", EXPORTABLE)
def test_shipped_hf_tokenizer_round_trip(name, exported):
    _, _, tok, _, _ = exported(name)
    ours = get_tokenizer(model_info(name).tokenizer)
    assert len(tok) == ours.get_vocab_size() and tok.bos_token_id == tok.eos_token_id == 0
    for text in ROUND_TRIP_TEXTS[name]:
        ids = tok(text)["input_ids"]
        assert ids == [0] + ours.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize(
    "name, match",
    [("attn-only-1l", "MLP"), ("attn-only-2l", "MLP"), ("modadd-1l", "LayerNorm")],
)
def test_shipped_models_gpt2_cannot_express_are_refused(name, match, tmp_path):
    model = load_native(name, device="cpu")
    with pytest.raises(NotImplementedError, match=match):
        export_hf(model, tmp_path, load_tokenizer(name))
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_export_hf_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "stories"
    assert export_hf_tool.main(["stories-4l", str(out), "--val-tokens", "2560"]) == 0
    printed = capsys.readouterr().out
    assert "dropping b_U would cost" in printed and '"loss_change_nats"' in printed
    assert AutoTokenizer.from_pretrained(out).eos_token_id == 0
    assert export_hf_tool.main(["attn-only-1l", str(tmp_path / "a")]) == 1
    assert "MLP" in capsys.readouterr().err
