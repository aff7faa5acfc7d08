"""Exercise checks of lecture 10: accept correct answers, reject known-wrong ones, refuse stubs.

The correct answers are written out here independently of the package's references
(an in-place hook and a returning hook, explicit stacks, a hand-written KL and Adam-free
SGD step, LayerNorm algebra, brute-force cosines); each wrong one is a mistake students
make, and the test pins the part of the message that names it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decoding_gpt.checks import STUB_PREFIX, CheckError, NotAttempted
from decoding_gpt.checks import lecture10 as l10


def _stub(*args, **kwargs):
    raise NotImplementedError(f"{STUB_PREFIX} write `it` here.")


@pytest.mark.parametrize(
    "check",
    [
        l10.check_ablate_head,
        l10.check_decompose_resid,
        l10.check_translator_step,
        l10.check_head_dla,
        l10.check_nearest_tokens,
    ],
)
def test_every_check_refuses_a_stub(check):
    with pytest.raises(NotAttempted, match="not attempted yet"):
        check(_stub)


# ------------------------------------------------------------------- exercise 1: ablation
def _in_place(z, hook, head):
    z[:, :, head] = 0.0


def _returning(z, hook, head):
    mask = torch.ones(z.shape[2])
    mask[head] = 0.0
    return z * mask[None, None, :, None]


@pytest.mark.parametrize("fn", [_in_place, _returning])
def test_ablate_head_accepts_reference(fn):
    l10.check_ablate_head(fn)


def _rebinds_local(z, hook, head):
    z = z.clone()
    z[:, :, head] = 0.0  # edits a copy, returns nothing: the model never sees it


def _positions(z, hook, head):
    z[:, head] = 0.0


def _d_head(z, hook, head):
    z[..., head] = 0.0


def _others(z, hook, head):
    keep = z[:, :, head].clone()
    z.zero_()
    z[:, :, head] = keep


def _last_only(z, hook, head):
    z[:, -1, head] = 0.0


def _halved(z, hook, head):
    z[:, :, head] *= 0.5


def _bad_shape(z, hook, head):
    return z[:, :, head]


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_rebinds_local, "changed nothing"),
        (_positions, "POSITION"),
        (_d_head, "one coordinate"),
        (_others, "inverted"),
        (_last_only, "last position only"),
        (_halved, "wrong values"),
        (_bad_shape, "the model raised"),
    ],
)
def test_ablate_head_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l10.check_ablate_head(wrong)


# ------------------------------------------------------------------- exercise 2: decompose
def _decompose(cache, n_layers):
    parts = [cache["hook_embed"], cache["hook_pos_embed"].expand_as(cache["hook_embed"])]
    for layer in range(n_layers):
        parts += [cache[f"blocks.{layer}.hook_attn_out"], cache[f"blocks.{layer}.hook_mlp_out"]]
    return torch.stack(parts)


def _by_differences(cache, n_layers):
    """Each sublayer's output as the change it makes to the stream."""
    parts = [cache["hook_embed"], cache["hook_pos_embed"].expand_as(cache["hook_embed"])]
    for layer in range(n_layers):
        pre, mid = cache[f"blocks.{layer}.hook_resid_pre"], cache[f"blocks.{layer}.hook_resid_mid"]
        parts += [mid - pre, cache[f"blocks.{layer}.hook_resid_post"] - mid]
    return torch.stack(parts)


@pytest.mark.parametrize("fn", [_decompose, _by_differences])
def test_decompose_resid_accepts_reference(fn):
    l10.check_decompose_resid(fn)


def _running(cache, n_layers):
    parts = [cache["hook_embed"], cache["hook_pos_embed"].expand_as(cache["hook_embed"])]
    for layer in range(n_layers):
        parts += [cache[f"blocks.{layer}.hook_resid_mid"], cache[f"blocks.{layer}.hook_resid_post"]]
    return torch.stack(parts)


def _grouped(cache, n_layers):
    parts = [cache["hook_embed"], cache["hook_pos_embed"].expand_as(cache["hook_embed"])]
    parts += [cache[f"blocks.{layer}.hook_attn_out"] for layer in range(n_layers)]
    parts += [cache[f"blocks.{layer}.hook_mlp_out"] for layer in range(n_layers)]
    return torch.stack(parts)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_running, "RUNNING SUM"),
        (
            lambda cache, n: torch.cat([_decompose(cache, n)[:1], _decompose(cache, n)[2:]]),
            "positional",
        ),
        (lambda cache, n: _decompose(cache, n)[[0, 1, 2, 4]], "MLP outputs are missing"),
        (_grouped, "wrong order"),
        (lambda cache, n: _decompose(cache, n)[[0, 1, 3, 2, 5, 4]], "MLP comes before"),
        (lambda cache, n: _decompose(cache, n).sum(0), "shape"),
        (lambda cache, n: None, "return"),
    ],
)
def test_decompose_resid_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l10.check_decompose_resid(wrong)


# ------------------------------------------------------------------- exercise 3: tuned lens step
def _kl(final, lens_logits):
    p = final.softmax(-1)
    return (p * (final.log_softmax(-1) - lens_logits.log_softmax(-1))).sum(-1).mean()


def _step(A, b, resid, final, unembed, optimizer, loss_fn=_kl, zero=True, translate=None):
    translated = resid + resid @ A + b if translate is None else translate(resid, A, b)
    loss = loss_fn(final, unembed(translated))
    if zero:
        optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_kl_div(A, b, resid, final, unembed, optimizer):
    def loss(final, lens_logits):
        return F.kl_div(
            lens_logits.log_softmax(-1),
            final.log_softmax(-1),
            log_target=True,
            reduction="batchmean",
        )

    return _step(A, b, resid, final, unembed, optimizer, loss)


@pytest.mark.parametrize("fn", [_step, _step_kl_div])
def test_translator_step_accepts_reference(fn):
    l10.check_translator_step(fn)


def _kl_div(reduction, swap=False):
    def loss(final, lens_logits):
        p, q = final.log_softmax(-1), lens_logits.log_softmax(-1)
        if swap:
            p, q = q, p
        return F.kl_div(q, p, log_target=True, reduction=reduction)

    return loss


def _no_step(A, b, resid, final, unembed, optimizer):
    loss = _kl(final, unembed(resid + resid @ A + b))
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


@pytest.mark.filterwarnings("ignore:reduction")  # F.kl_div warns about reduction="mean"
@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda *a: _step(*a, loss_fn=_kl_div("batchmean", swap=True)), "wrong way round"),
        (lambda *a: _step(*a, translate=lambda x, A, b: x @ A + b), "missing the identity"),
        (lambda *a: _step(*a, loss_fn=_kl_div("sum")), "summed over the rows"),
        (lambda *a: _step(*a, loss_fn=_kl_div("mean")), "reduction='batchmean'"),
        (lambda *a: _step(*a, loss_fn=lambda f, q: F.cross_entropy(q, f.argmax(-1))), "argmax"),
        (lambda *a: _step(*a, zero=False), "zero_grad"),
        (_no_step, "optimizer.step"),
        (lambda *a: [_step(*a), 0.0], "one number"),
    ],
)
def test_translator_step_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l10.check_translator_step(wrong)


# ------------------------------------------------------------------- exercise 4: head DLA
def _dla(head_out, scale, ln_w, W_U, answers):
    centred = head_out - head_out.mean(-1, keepdim=True)
    direction = W_U[:, answers[:, 0]] - W_U[:, answers[:, 1]]  # [d_model, batch]
    return torch.einsum("hbd,d,db->hb", centred / scale, ln_w, direction)


def _dla_loop(head_out, scale, ln_w, W_U, answers):
    out = torch.zeros(head_out.shape[:2])
    for h in range(head_out.shape[0]):
        for i in range(head_out.shape[1]):
            y = head_out[h, i]
            ln = (y - y.mean()) / scale[i, 0] * ln_w
            out[h, i] = ln @ W_U[:, answers[i, 0]] - ln @ W_U[:, answers[i, 1]]
    return out


def _dla_no_centre(head_out, scale, ln_w, W_U, answers):
    direction = W_U[:, answers[:, 0]] - W_U[:, answers[:, 1]]
    return torch.einsum("hbd,d,db->hb", head_out / scale, ln_w, direction)


@pytest.mark.parametrize("fn", [_dla, _dla_loop])
def test_head_dla_accepts_reference(fn):
    l10.check_head_dla(fn)


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (_dla_no_centre, "centres x"),
        (lambda y, s, w, W, a: _dla(y, torch.ones_like(s), w, W, a), "scale"),
        (lambda y, s, w, W, a: _dla(y, s, torch.ones_like(w), W, a), "gain w"),
        (lambda y, s, w, W, a: _dla(y, s, w, W, a.flip(-1)), "sign is reversed"),
        (lambda y, s, w, W, a: _dla(y, s, w, W, a).mean(-1), "averaged over the batch"),
        (lambda y, s, w, W, a: _dla(y, y.norm(dim=-1, keepdim=True)[0], w, W, a), "wrong values"),
    ],
)
def test_head_dla_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l10.check_head_dla(wrong)


def test_head_dla_rejects_layer_norm_per_head():
    def per_head(head_out, scale, ln_w, W_U, answers):
        normed = F.layer_norm(head_out, ln_w.shape, ln_w, None, 1e-5)
        return torch.einsum("hbd,db->hb", normed, W_U[:, answers[:, 0]] - W_U[:, answers[:, 1]])

    with pytest.raises(CheckError, match="OWN scale"):
        l10.check_head_dla(per_head)


# ------------------------------------------------------------------- exercise 5: neighbours
def _neighbours_loop(W_E, token, k):
    mu = W_E.mean(0)
    sims = [
        (F.cosine_similarity(W_E[token] - mu, W_E[j] - mu, dim=0).item(), j)
        for j in range(W_E.shape[0])
        if j != token
    ]
    return torch.tensor([j for _, j in sorted(sims, reverse=True)[:k]])


def test_nearest_tokens_accepts_reference():
    l10.check_nearest_tokens(_neighbours_loop)
    l10.check_nearest_tokens(lambda W, t, k: _neighbours_loop(W, t, k).tolist())


def _cos_top(W, token, k, centre=True, normalise=True, drop=True, largest=True):
    X = W - W.mean(0) if centre else W
    X = F.normalize(X, dim=-1) if normalise else X
    sims = X @ X[token]
    if drop:
        sims[token] = float("-inf") if largest else float("inf")
    return sims.topk(k, largest=largest).indices


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda W, t, k: _cos_top(W, t, k, centre=False), "did not centre"),
        (lambda W, t, k: _cos_top(W, t, k, normalise=False), "dot product"),
        (lambda W, t, k: _cos_top(W, t, k, drop=False), "token itself"),
        (lambda W, t, k: _cos_top(W, t, k, largest=False), "LEAST similar"),
        (lambda W, t, k: _cos_top(W, t, k + 1), "shape"),
    ],
)
def test_nearest_tokens_rejects(wrong, message):
    with pytest.raises(CheckError, match=message):
        l10.check_nearest_tokens(wrong)
