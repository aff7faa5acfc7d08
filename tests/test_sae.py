"""Sparse autoencoders (decoding_gpt.sae): recovery of known features, metrics against
sklearn / closed forms, CE loss score on constructed SAEs, and the SAELens format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import explained_variance_score, f1_score, r2_score, roc_auc_score

from decoding_gpt.activations import ActivationSet
from decoding_gpt.sae import (
    SAE,
    SAEConfig,
    auroc_matrix,
    auxk_loss,
    ce_loss_score,
    dead_latents,
    dense_latents,
    evaluate_sae,
    explained_variance,
    f1_matrix,
    feature_acts_of,
    firing_frequency,
    ground_truth_score,
    l0,
    load_sae,
    mean_max_cosine,
    mse,
    save_sae,
    steer_with_latent,
    top_activating_examples,
    train_sae,
)

D_IN, N_TRUE, D_SAE, ACTIVE = 16, 32, 64, 2


def _synthetic(n: int, seed: int = 0, n_true: int = N_TRUE):
    """x = sum_i a_i g_i over a sparse set of known unit features g_i (ACTIVE per token)."""
    gen = torch.Generator().manual_seed(seed)
    true = F.normalize(
        torch.randn(n_true, D_IN, generator=torch.Generator().manual_seed(99)), dim=-1
    )
    on = torch.rand(n, n_true, generator=gen) < ACTIVE / n_true
    mags = torch.rand(n, n_true, generator=gen) + 0.5
    return (on * mags) @ true, on, true


def _batches(x: torch.Tensor, batch_size: int = 256, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield x[torch.randint(0, len(x), (batch_size,), generator=gen)]


@pytest.fixture(scope="module")
def data():
    return _synthetic(12000)


@pytest.mark.parametrize(
    ("architecture", "kwargs"),
    [("standard", {"l1_coefficient": 0.3}), ("topk", {"k": 3}), ("batchtopk", {"k": 3})],
)
def test_sae_recovers_known_features(data, architecture, kwargs):
    x, on, true = data
    cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, **kwargs)
    sae = SAE(cfg, generator=torch.Generator().manual_seed(1))
    result = train_sae(sae, _batches(x[:10000]), n_steps=500, lr=3e-3, l1_warmup_steps=50)
    assert result.n_tokens == 500 * 256
    assert result.losses[-1] < result.losses[0]
    assert mean_max_cosine(sae.W_dec.detach(), true) > 0.9
    held_out = x[10000:]
    metrics = evaluate_sae(sae, held_out)
    assert metrics["explained_variance"] > 0.7
    acts = sae.encode(held_out).detach()
    # max-over-latents AUROC per true feature; a fixed k misses features on tokens
    # where more than k are active, hence the margin below 1
    assert ground_truth_score(acts, on[10000:]).mean > 0.85
    if architecture != "standard":
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))  # unit decoder
        assert metrics["l0"] == pytest.approx(3, abs=0.5)  # k = 3


def test_topk_and_batchtopk_activations():
    sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4))
    x = torch.randn(50, 8)
    f = sae.encode(x)
    assert ((f != 0).sum(-1) <= 4).all() and (f >= 0).all()
    pre = sae.hidden_pre(x)
    kept = f != 0
    # every kept pre-activation beats every dropped one in its row
    lowest_kept = pre.masked_fill(~kept, float("inf")).min(-1).values
    highest_dropped = pre.masked_fill(kept, -float("inf")).max(-1).values
    assert (lowest_kept >= highest_dropped).all()
    btk = SAE(SAEConfig(d_in=8, d_sae=32, architecture="batchtopk", k=4))
    f_train = btk.activate_train(btk.hidden_pre(x))
    assert (f_train != 0).sum() == 4 * 50  # k per token on average, over the batch
    btk.threshold.fill_(0.5)
    pre = btk.hidden_pre(x)
    torch.testing.assert_close(btk.encode(x), pre * (pre > 0.5))  # JumpReLU at inference


def test_topk_fast_path_equals_readable_path():
    x = torch.randn(40, 8)
    fast = SAE(
        SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4), torch.Generator().manual_seed(0)
    )
    slow = SAE(
        SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4), torch.Generator().manual_seed(0)
    )
    loss, f, x_hat = fast.training_loss(x)
    f_ref = slow.encode(x)
    x_hat_ref = slow.decode(f_ref)
    loss_ref = (x_hat_ref - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(f, f_ref.detach())
    torch.testing.assert_close(x_hat, x_hat_ref)
    loss.backward()
    loss_ref.backward()
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def test_topk_rescale_acts_by_decoder_norm_matches_reference():
    """SAELens's ``rescale_acts_by_decoder_norm``, written out by hand: pre-activations
    scaled by the decoder row norms before TopK, decoded through the unit rows."""
    gen = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", k=4), gen)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1, generator=gen) * 3 + 0.1)
        sae.b_enc.normal_(generator=gen)
        sae.b_dec.normal_(generator=gen)
    w_enc, b_enc, w_dec, b_dec = (
        p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    )
    x = torch.randn(40, 8, generator=gen)
    norms = w_dec.norm(dim=-1)
    pre = ((x - b_dec) @ w_enc + b_enc) * norms
    top = pre.topk(4, dim=-1)
    f_ref = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    x_hat_ref = (f_ref / norms) @ w_dec + b_dec
    loss_ref = F.mse_loss(x_hat_ref, x, reduction="none").sum(-1).mean()
    loss, f, x_hat = sae.training_loss(x, rescale_acts_by_decoder_norm=True)
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(f, f_ref.detach())
    torch.testing.assert_close(x_hat, x_hat_ref)
    loss.backward()
    loss_ref.backward()
    for ours, ref in zip(
        (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), (w_enc, b_enc, w_dec, b_dec), strict=True
    ):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-5, rtol=1e-4)
    # folding the norms in gives a unit-decoder SAE with the same outputs
    sae.fold_decoder_norm()
    torch.testing.assert_close(sae(x), x_hat.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="only for the 'topk'"):
        SAE(SAEConfig(d_in=8, d_sae=32, architecture="batchtopk", k=4)).training_loss(
            x, rescale_acts_by_decoder_norm=True
        )


@pytest.mark.parametrize("rescale", [True, False])
def test_topk_training_keeps_unit_decoder(data, rescale):
    """Both ways of handling decoder norms end with unit rows and a lower loss."""
    x, _, _ = data
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=3))
    result = train_sae(
        sae, _batches(x), n_steps=30, lr=3e-3, log_every=29, rescale_acts_by_decoder_norm=rescale
    )
    assert result.losses[-1] < result.losses[0]
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    with pytest.raises(ValueError, match="only for the 'topk'"):
        train_sae(
            SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="standard")),
            _batches(x),
            n_steps=1,
            rescale_acts_by_decoder_norm=True,
        )


def test_auxk_loss_hand_computed():
    """AuxK on two tokens, three latents, latents 1 and 2 dead; values worked out by hand."""
    residual = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pre = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.25, -0.5]])
    w_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    dead = torch.tensor([False, True, True])
    # k_aux = 1, scale min(2 / 1, 1) = 1. Token 0 keeps dead latent 2 (2.0, not the live
    # 0.5): [1, 0] - 2 [1, 1] = [-1, -2] -> 5. Token 1 keeps latent 1 (0.25, not the live
    # 3.0): [0, 2] - 0.25 [0, 1] = [0, 1.75] -> 3.0625. Mean: 4.03125.
    assert auxk_loss(residual, pre, w_dec, dead, k_aux=1).item() == pytest.approx(4.03125)
    # k_aux = 4 > 2 dead: both kept, negative values included; scale 2 / 4. Token 0:
    # [1, 0] - (-1 [0, 1] + 2 [1, 1]) = [-1, -1] -> 2. Token 1: [0, 2] - (0.25 [0, 1]
    # - 0.5 [1, 1]) = [0.5, 2.25] -> 5.3125. 0.5 * (2 + 5.3125) / 2 = 1.828125.
    assert auxk_loss(residual, pre, w_dec, dead, k_aux=4).item() == pytest.approx(1.828125)
    assert auxk_loss(residual, pre, w_dec, torch.zeros(3, dtype=torch.bool), 1).item() == 0


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_training_loss_adds_auxk_on_dead_latents(architecture):
    """loss(with AuxK) - loss(without) = alpha * L_aux, with L_aux written out by a loop
    over tokens; the dead latents' encoder columns get a gradient only from AuxK."""
    gen = torch.Generator().manual_seed(0)
    kw = dict(d_in=6, d_sae=10, architecture=architecture, k=2, dtype="float64")
    plain = SAE(SAEConfig(**kw), gen)
    aux = SAE(SAEConfig(**kw, use_auxk=True, k_aux=3, aux_coefficient=0.5), gen)
    aux.load_state_dict(plain.state_dict())
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 7, 8]] = True
    loss, _, x_hat = aux.training_loss(x, dead_mask=dead)
    loss_plain = plain.training_loss(x)[0]
    pre = ((x - aux.b_dec) @ aux.W_enc + aux.b_enc).detach()
    ref = 0.0
    for t in range(8):  # the 3 largest dead pre-activations of token t decode the error
        best = sorted([1, 4, 7, 8], key=lambda i: -pre[t, i].item())[:3]
        e_hat = sum(pre[t, i] * aux.W_dec[i] for i in best)
        ref += (x[t] - x_hat[t] - e_hat).pow(2).sum().item() / 8
    scale = min(4 / 3, 1.0)  # n_dead / k_aux, capped at 1
    assert (loss - loss_plain).item() == pytest.approx(0.5 * scale * ref, rel=1e-9)
    loss.backward()
    loss_plain.backward()
    never_kept = (plain.W_enc.grad == 0).all(0) & dead  # dead, not in the plain top-k
    assert never_kept.any() and (aux.W_enc.grad[:, never_kept] != 0).all()


def test_auxk_waits_for_dead_latents(data):
    """AuxK only acts on latents silent for dead_steps steps: with a window longer than
    the run, training is bit for bit plain TopK."""
    x, _, _ = data
    saes = []
    for use_auxk in (False, True):
        cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=3, use_auxk=use_auxk)
        sae = SAE(cfg, torch.Generator().manual_seed(0))
        train_sae(sae, _batches(x), n_steps=20, lr=3e-3)
        saes.append(sae)
    for a, b in zip(saes[0].parameters(), saes[1].parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="use_auxk"):
        SAEConfig(d_in=4, d_sae=8, use_auxk=True)  # not for the standard SAE


def test_auxk_revives_dead_latents():
    """64 true features in 16 dimensions, 64 latents, k = 2: plain TopK leaves over a
    quarter of the latents dead (seed 1: 0.375); AuxK (alpha 1/32, dead after 20 silent
    steps) revives most of them (0.141; seeds 2-6: 0.33-0.41 -> 0.19-0.22) and
    reconstructs better. Dead = fires on none of the training tokens."""
    x, _, _ = _synthetic(12000, n_true=64)
    train, held_out = x[:10000], x[10000:]
    dead, ev = {}, {}
    for use_auxk in (False, True):
        cfg = SAEConfig(
            d_in=D_IN, d_sae=64, architecture="topk", k=2, use_auxk=use_auxk, dead_steps=20
        )
        sae = SAE(cfg, torch.Generator().manual_seed(1))
        train_sae(sae, _batches(train), n_steps=600, lr=3e-3)
        freq = firing_frequency(feature_acts_of(sae, train))
        dead[use_auxk] = dead_latents(freq).float().mean().item()
        ev[use_auxk] = evaluate_sae(sae, held_out)["explained_variance"]
    assert dead[False] > 0.25
    assert dead[True] < dead[False] - 0.1
    assert ev[True] > ev[False]


def test_standard_loss_formula():
    sae = SAE(SAEConfig(d_in=8, d_sae=16, l1_coefficient=0.7))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) * 3)
        sae.b_enc.normal_()
    x = torch.randn(10, 8)
    loss, f, x_hat = sae.training_loss(x)
    f_ref = torch.relu(x @ sae.W_enc + sae.b_enc)  # no b_dec on the input (April update)
    torch.testing.assert_close(f, f_ref)
    ref = ((f_ref @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean() + 0.7 * (
        f_ref * sae.W_dec.norm(dim=-1)
    ).sum(-1).mean()
    torch.testing.assert_close(loss, ref)


def test_fold_decoder_norm_keeps_outputs():
    sae = SAE(SAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(16, 1) * 3 + 0.1)
        sae.b_enc.normal_()
    x = torch.randn(20, 8)
    before = sae(x)
    sae.fold_decoder_norm()
    torch.testing.assert_close(sae(x), before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(16))


def test_metrics_against_references():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=gen) * torch.linspace(0.5, 3, 12) + 2
    x_hat = x + 0.4 * torch.randn(500, 12, generator=gen)
    ref = r2_score(x.numpy(), x_hat.numpy(), multioutput="variance_weighted")
    assert explained_variance(x, x_hat) == pytest.approx(ref, abs=1e-6)
    # with a zero-mean residual, sklearn's explained_variance_score agrees too
    x_hat0 = x_hat - (x_hat - x).mean(0)
    ref0 = explained_variance_score(x.numpy(), x_hat0.numpy(), multioutput="variance_weighted")
    assert explained_variance(x, x_hat0) == pytest.approx(ref0, abs=1e-6)
    assert explained_variance(x, x) == 1.0
    # SAELens convention: squared error summed over dimensions, averaged over tokens
    assert mse(x, x_hat) == pytest.approx(12 * F.mse_loss(x_hat, x).item(), rel=1e-6)
    f = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.5], [0.0, 3.0, 1.0], [0.0, 0.0, 4.0]])
    assert l0(f) == pytest.approx(6 / 4)
    freq = firing_frequency(f)
    torch.testing.assert_close(freq, torch.tensor([0.0, 0.5, 1.0]))
    assert dead_latents(freq).tolist() == [True, False, False]
    assert dense_latents(freq, 0.6).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="shapes"):
        mse(x, x_hat[:, :3])


def test_auroc_and_f1_match_sklearn():
    gen = torch.Generator().manual_seed(0)
    labels = torch.rand(300, 3, generator=gen) < torch.tensor([0.1, 0.3, 0.5])
    scores = torch.relu(torch.randn(300, 5, generator=gen))  # many tied zeros
    scores[:, 0] += 2 * labels[:, 0]
    scores[:, 1] = torch.round(scores[:, 1] * 2) / 2  # more ties
    auc, f1 = auroc_matrix(scores, labels), f1_matrix(scores, labels)
    for i in range(5):
        for j in range(3):
            y, s = labels[:, j].numpy(), scores[:, i].numpy()
            assert auc[i, j].item() == pytest.approx(roc_auc_score(y, s), abs=1e-9)
            assert f1[i, j].item() == pytest.approx(f1_score(y, s > 0), abs=1e-9)
    gt = ground_truth_score(scores, labels)
    assert gt.best_latent[0] == 0
    assert gt.mean == pytest.approx(auc.max(0).values.mean().item())
    with pytest.raises(ValueError, match="positive and negative"):
        auroc_matrix(scores, torch.zeros(300, 1, dtype=torch.bool))


def _identity_sae(d: int, hook: str) -> SAE:
    """relu(x) - relu(-x) = x: a standard SAE with [I, -I] reconstructs exactly."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, hook_name=hook))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def model(tiny_bridge):
    return tiny_bridge


def test_ce_loss_score_on_constructed_saes(model):
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(0))
    perfect = ce_loss_score(model, tokens, _identity_sae(64, hook))
    assert perfect["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert perfect["ce_loss_with_sae"] == pytest.approx(perfect["ce_loss_without_sae"], abs=1e-4)
    zero = _identity_sae(64, hook)
    with torch.no_grad():
        zero.W_dec.zero_()
    zeroed = ce_loss_score(model, tokens, zero)
    assert zeroed["ce_loss_score"] == pytest.approx(0.0, abs=1e-5)
    ref_zero = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook, lambda a, hook: 0 * a)]
    ).item()
    assert zeroed["ce_loss_with_ablation"] == pytest.approx(ref_zero, abs=1e-5)
    with pytest.raises(ValueError, match="hook name"):
        ce_loss_score(model, tokens, SAE(SAEConfig(d_in=64, d_sae=8)))


def test_steer_with_latent_matches_manual_hook(model):
    hook = "blocks.1.hook_resid_pre"
    sae = SAE(SAEConfig(d_in=64, d_sae=32, hook_name=hook), torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    row = sae.W_dec[5].detach()
    manual = model.run_with_hooks(
        tokens, fwd_hooks=[(hook, lambda a, hook: a + 3.0 * row / row.norm())]
    )
    with steer_with_latent(model, sae, 5, 3.0):
        steered = model(tokens)
    torch.testing.assert_close(steered, manual)


def test_top_activating_examples():
    acts = torch.zeros(6, 4)
    acts[:, 2] = torch.tensor([0.1, 5.0, -1.0, 3.0, 0.0, 4.0])
    data = ActivationSet(acts, torch.tensor([0, 0, 1, 1, 2, 2]), torch.arange(6) % 2, "h")
    top = top_activating_examples(_identity_sae(4, "h"), data, latent=2, k=3)
    assert [(t.value, t.doc, t.pos) for t in top] == [(5.0, 0, 1), (4.0, 2, 1), (3.0, 1, 1)]
    with pytest.raises(ValueError):
        top_activating_examples(_identity_sae(4, "h"), data, latent=99)


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk"])
def test_saelens_format_round_trip(tmp_path, architecture):
    hook = "blocks.0.hook_resid_post"
    cfg = SAEConfig(d_in=8, d_sae=24, architecture=architecture, k=3, hook_name=hook)
    sae = SAE(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        if architecture == "batchtopk":
            sae.threshold.fill_(0.2)
    path = save_sae(sae, tmp_path / "sae")
    raw = json.loads((path / "cfg.json").read_text())
    expected_arch = {"batchtopk": "jumprelu"}.get(architecture, architecture)
    assert raw["architecture"] == expected_arch
    assert (raw["d_in"], raw["d_sae"], raw["hook_name"]) == (8, 24, cfg.hook_name)
    for key in ("dtype", "apply_b_dec_to_input", "normalize_activations"):
        assert key in raw
    weights = load_file(str(path / "sae_weights.safetensors"))
    shapes = {"W_enc": (8, 24), "b_enc": (24,), "W_dec": (24, 8), "b_dec": (8,)}
    if architecture == "batchtopk":
        shapes["threshold"] = (24,)
    assert {k: tuple(v.shape) for k, v in weights.items()} == shapes
    loaded = load_sae(path)
    x = torch.randn(30, 8)
    torch.testing.assert_close(loaded(x), sae(x))
    assert loaded.cfg == sae.cfg


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "missing")
    path = save_sae(SAE(SAEConfig(d_in=4, d_sae=8)), tmp_path / "sae")
    (path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        load_sae(path)
    (path / "cfg.json").write_text("{broken")
    with pytest.raises(ValueError, match="JSON"):
        load_sae(path)
    other = save_sae(SAE(SAEConfig(d_in=4, d_sae=8)), tmp_path / "other")
    raw = json.loads((other / "cfg.json").read_text())
    raw["decoding_gpt"]["d_sae"] = 9
    (other / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="shape"):
        load_sae(other)


def test_load_file_saved_before_auxk(tmp_path):
    """A cfg.json written before the AuxK fields existed loads with AuxK off."""
    sae = SAE(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2), torch.Generator())
    path = save_sae(sae, tmp_path / "sae")
    raw = json.loads((path / "cfg.json").read_text())
    for key in ("use_auxk", "k_aux", "aux_coefficient", "dead_steps"):
        del raw["decoding_gpt"][key]
    (path / "cfg.json").write_text(json.dumps(raw))
    loaded = load_sae(path)
    assert loaded.cfg == sae.cfg and not loaded.cfg.use_auxk
    torch.testing.assert_close(loaded.W_enc, sae.W_enc)


def test_config_validation():
    with pytest.raises(ValueError, match="architecture"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(ValueError, match="k must"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk", k=9)
    with pytest.raises(ValueError, match="d_in"):
        SAE(SAEConfig(d_in=4, d_sae=8)).encode(torch.randn(2, 5))
    assert np.isclose(SAEConfig(d_in=4, d_sae=8).l1_coefficient, 1.0)
    assert SAEConfig(d_in=9, d_sae=8, architecture="topk", k=2).k_aux == 4  # d_in // 2
    with pytest.raises(ValueError, match="k_aux"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, k_aux=0)
    with pytest.raises(ValueError, match="dead_steps"):
        SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, dead_steps=0)


@pytest.mark.parametrize(("env", "shown"), [("1", False), ("0", True)])
def test_train_sae_progress_bar_obeys_tqdm_disable(data, monkeypatch, capsys, env, shown):
    """TQDM_DISABLE=1 (``make test``, the notebook refresher) must print nothing: the
    committed notebook outputs are compared by nbval."""
    monkeypatch.setenv("TQDM_DISABLE", env)
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=3))
    train_sae(sae, _batches(data[0]), n_steps=3, log_every=1)
    out, err = capsys.readouterr()
    assert out == "" and ("train_sae" in err) == shown and (err == "") != shown
