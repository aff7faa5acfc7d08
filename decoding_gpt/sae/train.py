"""Training an SAE: Adam on batches of activations, nothing else.

The trainer only sees tensors (SAELens style): pass ``ActivationSet.batches(...)`` or
any iterator of ``[batch, d_in]`` activations. One step::

    loss = SAE.training_loss(x)      # MSE + penalty (+ alpha * L_aux for AuxK)
    loss.backward(); adam.step()     # with the decoder-norm handling of the architecture

and bookkeeping: how many tokens each latent fired on, and for how many steps each
latent has not fired (a latent is *dead* after ``cfg.dead_steps`` silent steps; AuxK
trains the dead ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from decoding_gpt.device import progress_bar
from decoding_gpt.sae.model import SAE


@dataclass
class TrainResult:
    """What :func:`train_sae` reports: the loss every ``log_every`` steps, tokens
    seen, and how many training tokens each latent fired on (for dead latents)."""

    losses: list[float]
    n_tokens: int
    fire_counts: Int[Tensor, " d_sae"]


@dataclass
class _Firing:
    """Per latent: tokens it fired on, and training steps since it last fired."""

    counts: Int[Tensor, " d_sae"]
    steps_since: Int[Tensor, " d_sae"]

    @classmethod
    def zeros(cls, d_sae: int, device: torch.device) -> _Firing:
        zeros = torch.zeros(d_sae, dtype=torch.long, device=device)
        return cls(zeros, zeros.clone())

    def update(self, f: Float[Tensor, "batch d_sae"]) -> None:
        fired = f > 0  # [batch, d_sae]
        self.counts += fired.sum(0)
        self.steps_since += 1
        self.steps_since[fired.any(0)] = 0

    def dead(self, dead_steps: int) -> Bool[Tensor, " d_sae"]:
        """Latents that fired in none of the last ``dead_steps`` steps."""
        return self.steps_since >= dead_steps


def _resolve_rescale(sae: SAE, rescale: bool | None) -> bool:
    """``rescale_acts_by_decoder_norm``: the architecture's default unless given."""
    default = sae.arch.decoder_norm == "rescale"
    if rescale is None:
        return default
    if rescale and not default:
        raise ValueError("rescale_acts_by_decoder_norm is only for the 'topk' architecture")
    return rescale


def _l1_coefficient(sae: SAE, step: int, warmup_steps: int) -> float:
    """The L1 coefficient, ramped linearly from 0 over ``warmup_steps``."""
    if warmup_steps > 0:
        return sae.cfg.l1_coefficient * min(1.0, (step + 1) / warmup_steps)
    return sae.cfg.l1_coefficient


def _set_lr(opt: torch.optim.Optimizer, lr: float, step: int, n_steps: int, decay: int) -> None:
    """Decay the learning rate linearly to 0 over the last ``decay`` steps."""
    frac = min(1.0, (n_steps - step) / decay)
    for group in opt.param_groups:
        group["lr"] = lr * frac


def _step(
    sae: SAE,
    opt: torch.optim.Optimizer,
    x: Float[Tensor, "batch d_in"],
    lam: float,
    *,
    rescale: bool,
    project: bool,
    dead: Bool[Tensor, " d_sae"] | None,
) -> tuple[Tensor, Float[Tensor, "batch d_sae"]]:
    """One Adam step; returns ``(loss, feature_acts)``."""
    loss, f, _ = sae.training_loss(x, lam, rescale_acts_by_decoder_norm=rescale, dead_mask=dead)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if project:
        sae.remove_parallel_decoder_grad()
    opt.step()
    if project:
        sae.normalize_decoder()
    if sae.arch.threshold:
        sae.update_threshold(f.detach())
    return loss, f


def train_sae(
    sae: SAE,
    batches: Iterable[Float[Tensor, "batch d_in"]],
    n_steps: int,
    *,
    lr: float = 1e-3,
    l1_warmup_steps: int = 0,
    lr_decay_steps: int = 0,
    init_b_dec: bool = True,
    log_every: int = 50,
    rescale_acts_by_decoder_norm: bool | None = None,
) -> TrainResult:
    """Train ``sae`` with Adam (betas 0.9, 0.999) on ``n_steps`` batches from ``batches``.

    Args:
        l1_warmup_steps: ramp the L1 coefficient linearly from 0 (standard SAE).
        lr_decay_steps: decay the learning rate linearly to 0 over the last steps.
        init_b_dec: set ``b_dec`` to the mean of the first batch (a cheap stand-in for
            the geometric median) when the input is centred by ``b_dec``.
        rescale_acts_by_decoder_norm: how a TopK SAE keeps unit decoder rows. True
            (default for ``"topk"``, as SAELens's ``TopKTrainingSAE``): train through
            ``W_dec[i] / ||W_dec[i]||`` (see :meth:`SAE.training_loss`) and fold the
            norms in at the end. False (``"batchtopk"``; opt-in for ``"topk"``): remove
            the gradient component along each row and re-project rows onto the sphere
            after every step (Bricken et al. 2023; Gao et al. 2024).

    With ``sae.cfg.use_auxk`` the loss of each step includes AuxK on the latents that
    have been dead for ``cfg.dead_steps`` steps before it. A tqdm progress bar shows the
    steps and the last logged loss; ``TQDM_DISABLE=1`` turns it off.
    """
    it: Iterator[Tensor] = iter(batches)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    # Why rescale (with the 0.1-norm init of SAE.__init__) is the TopK default: on
    # benchmarks/bench_sae.py's data (same lr, steps) held-out MSE went from 0.4700 /
    # 0.4678 / 0.4688 (seeds 0/1/2, re-projection) to 0.4636 / 0.4651 / 0.4660
    # (SAELens 6.54: 0.4654 at seed 0). Rescaling from unit rows gave 0.4664: the
    # initial row norm matters (plausibly: Adam turns a row of norm n by ~lr/n). b_dec
    # init (mean vs zeros) and SAELens's grad-norm clipping at 1.0 changed < 0.2 %.
    rescale = _resolve_rescale(sae, rescale_acts_by_decoder_norm)
    project = sae.arch.decoder_norm != "free" and not rescale
    if project:
        sae.normalize_decoder()
    firing = _Firing.zeros(sae.cfg.d_sae, sae.W_dec.device)
    losses: list[float] = []
    n_tokens = 0
    bar = progress_bar(range(n_steps), desc="train_sae")
    for step in bar:
        x = next(it).to(sae.W_dec.device, sae.W_dec.dtype)
        if step == 0 and init_b_dec and sae.cfg.apply_b_dec_to_input:
            sae.b_dec.data = x.mean(0)
        if lr_decay_steps > 0:
            _set_lr(opt, lr, step, n_steps, lr_decay_steps)
        dead = firing.dead(sae.cfg.dead_steps) if sae.cfg.use_auxk else None
        lam = _l1_coefficient(sae, step, l1_warmup_steps)
        loss, f = _step(sae, opt, x, lam, rescale=rescale, project=project, dead=dead)
        firing.update(f)
        n_tokens += x.shape[0]
        if step % log_every == 0 or step == n_steps - 1:
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    bar.close()
    if rescale:
        sae.fold_decoder_norm()  # unit rows, same outputs: the SAE saved/used as usual
    return TrainResult(losses=losses, n_tokens=n_tokens, fire_counts=firing.counts.cpu())
