"""Sparse autoencoders (SAEs): a dictionary of sparse features for a model's activations.

An SAE rewrites an activation ``x in R^{d_in}`` (one token at one hook) as a sparse,
non-negative combination of ``d_sae >> d_in`` learned directions::

    f(x)  = sigma((x - a * b_dec) W_enc + b_enc)        # [d_sae] feature activations
    x_hat = f(x) W_dec + b_dec                          # [d_in]  reconstruction

(``a = apply_b_dec_to_input`` in {0, 1}; row ``W_dec[i]`` is latent ``i``'s direction.)
Training minimises reconstruction error ``||x - x_hat||^2`` while keeping ``f``
sparse. The architectures here differ in ``sigma`` and in how sparsity is enforced:

- ``"standard"`` -- **ReLU + L1** (Bricken et al. 2023, with Anthropic's April 2024
  update): ``sigma = ReLU``, loss ``||x - x_hat||^2 + lam * sum_i f_i ||W_dec[i]||``.
  Decoder norms are handled by *weighting* the L1 penalty with them (otherwise the
  model shrinks ``f`` and grows ``W_dec`` to dodge the penalty); the decoder is not
  constrained, and ``b_dec`` is not subtracted from the input (``a = 0``). L1 shrinks
  every active feature toward 0, so reconstructions are biased low ("shrinkage").
- ``"topk"`` -- **TopK** (Gao et al. 2024): ``sigma(z) = ReLU(TopK_k(z))`` keeps the k
  largest pre-activations per token, so L0 = k exactly and no penalty is needed.
  Trained SAEs have unit-norm decoder rows. As SAELens's ``TopKTrainingSAE``, training
  leaves the rows free but selects and decodes as if they were unit
  (``rescale_acts_by_decoder_norm``), then folds the norms into the encoder; the
  older way, re-projecting rows onto the sphere after each step (with the gradient
  component along each row removed first), is kept as an option and used for BatchTopK.
- ``"batchtopk"`` -- **BatchTopK** (Bussmann et al. 2024): in training keep the
  ``k * batch`` largest ``ReLU(z)`` over the *whole batch*, so L0 is k on average but
  varies per token. At inference a batch may be a single token, so it is replaced by a
  JumpReLU with one global threshold ``theta``: ``sigma(z) = z * 1[z > theta]``, where
  ``theta`` is an exponential moving average over training batches of the smallest
  activation kept by BatchTopK. On disk it is therefore a SAELens ``"jumprelu"`` SAE.

Metrics (SAELens's names):

- ``l0``: mean number of non-zero latents per token.
- ``mse``: mean over tokens of ``||x - x_hat||^2`` (summed over dimensions, as
  SAELens's evals and training loss; divide by ``d_in`` for a per-element MSE).
- ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``.
- ``ce_loss_score``: splice the SAE into the model at its hook and compare the LM's
  cross-entropy with the clean model and with the hook zero-ablated:
  ``(CE_zero - CE_sae) / (CE_zero - CE_clean)`` (1 = as good as the clean model).
- dead latents (never fire on a sample) and dense latents (fire on > 10 % of tokens).

How SAEs mislead: good MSE with poor CE loss score means the SAE reconstructs the
*directions that do not matter* to the model; a low L0 can come from a few dense latents
that fire everywhere; latents are found, not given -- an "explanation" from
top-activating examples must be checked by intervention (steering) and, where the true
features are known (synthetic data), by a ground-truth score. Feature splitting means
the dictionary size decides which features you find.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from decoding_gpt.activations import ActivationSet
from decoding_gpt.probes import add_direction

ARCHITECTURES = ("standard", "topk", "batchtopk")
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class SAEConfig:
    """What defines an SAE (the training hyperparameters live in :func:`train_sae`).

    ``apply_b_dec_to_input`` defaults to False for ``"standard"`` (April update) and True
    for TopK variants (Gao et al. subtract the pre-encoder bias).
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    k: int = 32
    l1_coefficient: float = 1.0
    threshold_ema: float = 0.99
    hook_name: str = ""
    dtype: str = "float32"
    apply_b_dec_to_input: bool | None = None
    normalize_activations: str = "none"
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture != "standard" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        if self.normalize_activations != "none":
            raise ValueError("only normalize_activations='none' is supported (fold scaling in)")
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = self.architecture != "standard"


class SAE(nn.Module):
    """A sparse autoencoder with SAELens's parameter names and shapes.

    ``W_enc: [d_in, d_sae]``, ``b_enc: [d_sae]``, ``W_dec: [d_sae, d_in]``,
    ``b_dec: [d_in]``; BatchTopK also has a buffer ``threshold: [d_sae]``.
    """

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = _DTYPES[cfg.dtype]
        # Random directions at norm 0.1 and encoder = decoder^T (Anthropic's April update
        # heuristic, SAELens's ``decoder_init_norm=0.1`` for every architecture, TopK
        # included: TopK trains with ``rescale_acts_by_decoder_norm`` and gets unit rows
        # when :func:`train_sae` folds the norms in). BatchTopK keeps a unit decoder with
        # a small encoder (in bench_sae this kept L0 at k instead of ~4 % below, and MSE
        # ~1 % lower, than an encoder equal to the unit decoder^T).
        w_dec = 0.1 * F.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=generator), dim=-1)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous().to(dtype))
        if cfg.architecture == "batchtopk":
            w_dec = F.normalize(w_dec, dim=-1)
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "batchtopk":
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, dtype=dtype))

    # --------------------------------------------------------------- forward pass

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE expects d_in={self.cfg.d_in}, got shape {tuple(x.shape)}")

    def hidden_pre(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Pre-activations ``(x - a b_dec) W_enc + b_enc``."""
        self._check(x)
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The inference nonlinearity (per token; BatchTopK uses its JumpReLU form)."""
        arch = self.cfg.architecture
        if arch == "standard":
            return F.relu(pre)
        if arch == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
        return pre * (pre > self.threshold)  # JumpReLU

    def activate_train(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """The training nonlinearity: BatchTopK over the whole batch, else as inference."""
        if self.cfg.architecture != "batchtopk":
            return self.activate(pre)
        acts = F.relu(pre).flatten()
        top = acts.topk(self.cfg.k * pre.shape[0])
        return torch.zeros_like(acts).scatter(0, top.indices, top.values).view_as(pre)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return self.activate(self.hidden_pre(x))

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return self.decode(self.encode(x))

    # --------------------------------------------------------------- decoder norm

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row, so that the
        step moves the row along the sphere (Bricken et al.; Gao et al.)."""
        if self.W_dec.grad is not None:
            w = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Re-project decoder rows onto the unit sphere."""
        self.W_dec.data = F.normalize(self.W_dec.data, dim=-1)

    @torch.no_grad()
    def fold_decoder_norm(self) -> None:
        """Rescale so that every decoder row has unit norm without changing ``x_hat``:
        ``W_dec[i] /= n_i``, ``W_enc[:, i] *= n_i``, ``b_enc[i] *= n_i`` (valid because
        ReLU and the threshold comparison commute with positive scaling)."""
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.data /= norms[:, None]
        self.W_enc.data *= norms[None, :]
        self.b_enc.data *= norms
        if self.cfg.architecture == "batchtopk":
            self.threshold *= norms

    # --------------------------------------------------------------- loss

    def training_loss(
        self,
        x: Float[Tensor, "batch d_in"],
        l1_coefficient: float | None = None,
        *,
        rescale_acts_by_decoder_norm: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(loss, feature_acts, x_hat)`` (``feature_acts`` detached for TopK).

        MSE term: ``mean_batch ||x - x_hat||^2`` (summed over ``d_in``, as SAELens).
        Standard SAEs add ``lam * mean_batch sum_i f_i ||W_dec[i]||``.

        ``rescale_acts_by_decoder_norm`` (TopK only; SAELens's option of that name):
        the decoder rows are free, with norms ``n_i = ||W_dec[i]||``; pre-activations
        are scaled by ``n_i`` before TopK and decoded through the unit rows
        ``W_dec[i] / n_i``. So ``x_hat`` is unchanged (``sum_i relu(pre_i) W_dec[i]``)
        but TopK picks the latents by the size of their contribution ``f_i n_i``;
        equivalently a unit decoder whose encoder column ``i`` carries a learned scale
        ``n_i``. :meth:`fold_decoder_norm` afterwards gives an SAE with unit rows and
        the same outputs (``f`` returned here is already in those units).
        """
        pre = self.hidden_pre(x)
        if rescale_acts_by_decoder_norm and self.cfg.architecture != "topk":
            raise ValueError("rescale_acts_by_decoder_norm is only for the 'topk' architecture")
        if self.cfg.architecture == "topk":
            w_dec = self.W_dec
            if rescale_acts_by_decoder_norm:
                norms = self.W_dec.norm(dim=-1)
                pre = pre * norms
                w_dec = self.W_dec / norms[:, None]
            # Fast path: decode only the k active rows of W_dec (a weighted gather,
            # k * d_in per token instead of d_sae * d_in); tested equal to
            # ``decode(activate(pre))``.
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            values = F.relu(top.values)
            x_hat = (
                F.embedding_bag(top.indices, w_dec, per_sample_weights=values, mode="sum")
                + self.b_dec
            )
            with torch.no_grad():
                f = torch.zeros_like(pre).scatter_(-1, top.indices, values)
        else:
            f = self.activate_train(pre)
            x_hat = self.decode(f)
        loss = (x_hat - x).pow(2).sum(-1).mean()
        if self.cfg.architecture == "standard":
            lam = self.cfg.l1_coefficient if l1_coefficient is None else l1_coefficient
            loss = loss + lam * (f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return loss, f, x_hat

    @torch.no_grad()
    def update_threshold(self, f: Float[Tensor, "batch d_sae"]) -> None:
        """BatchTopK: EMA of the smallest positive activation kept in this batch."""
        positive = f[f > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if bool((self.threshold == 0).all()):
            self.threshold.fill_(smallest)
        else:
            m = self.cfg.threshold_ema
            self.threshold.mul_(m).add_((1 - m) * smallest)


# ------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train_sae` reports: the loss every ``log_every`` steps, tokens
    seen, and how many training tokens each latent fired on (for dead latents)."""

    losses: list[float]
    n_tokens: int
    fire_counts: Int[Tensor, " d_sae"]


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
    """Train ``sae`` with Adam on ``n_steps`` batches drawn from ``batches``.

    The trainer only sees tensors (SAELens style): pass ``ActivationSet.batches(...)``
    or any iterator of ``[batch, d_in]`` activations.

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
    """
    it: Iterator[Tensor] = iter(batches)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    rescale = (
        sae.cfg.architecture == "topk"
        if rescale_acts_by_decoder_norm is None
        else rescale_acts_by_decoder_norm
    )
    if rescale and sae.cfg.architecture != "topk":
        raise ValueError("rescale_acts_by_decoder_norm is only for the 'topk' architecture")
    # Why rescale (with the 0.1-norm init of SAE.__init__) is the TopK default: on
    # benchmarks/bench_sae.py's data (same lr, steps) held-out MSE went from 0.4700 /
    # 0.4678 / 0.4688 (seeds 0/1/2, re-projection) to 0.4636 / 0.4651 / 0.4660
    # (SAELens 6.54: 0.4654 at seed 0). Rescaling from unit rows gave 0.4664: the
    # initial row norm matters (plausibly: Adam turns a row of norm n by ~lr/n). b_dec
    # init (mean vs zeros) and SAELens's grad-norm clipping at 1.0 changed < 0.2 %.
    unit_decoder = sae.cfg.architecture != "standard" and not rescale
    if unit_decoder:
        sae.normalize_decoder()
    fire = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.W_dec.device)
    losses: list[float] = []
    n_tokens = 0
    for step in range(n_steps):
        x = next(it).to(sae.W_dec.device, sae.W_dec.dtype)
        if step == 0 and init_b_dec and sae.cfg.apply_b_dec_to_input:
            sae.b_dec.data = x.mean(0)
        lam = (
            sae.cfg.l1_coefficient * min(1.0, (step + 1) / l1_warmup_steps)
            if (l1_warmup_steps > 0)
            else sae.cfg.l1_coefficient
        )
        if lr_decay_steps > 0:
            frac = min(1.0, (n_steps - step) / lr_decay_steps)
            for group in opt.param_groups:
                group["lr"] = lr * frac
        loss, f, _ = sae.training_loss(x, lam, rescale_acts_by_decoder_norm=rescale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if unit_decoder:
            sae.remove_parallel_decoder_grad()
        opt.step()
        if unit_decoder:
            sae.normalize_decoder()
        if sae.cfg.architecture == "batchtopk":
            sae.update_threshold(f.detach())
        fire += (f > 0).sum(0)
        n_tokens += x.shape[0]
        if step % log_every == 0 or step == n_steps - 1:
            losses.append(loss.item())
    if rescale:
        sae.fold_decoder_norm()  # unit rows, same outputs: the SAE saved/used as usual
    return TrainResult(losses=losses, n_tokens=n_tokens, fire_counts=fire.cpu())


# ------------------------------------------------------------------- metrics


def l0(feature_acts: Float[Tensor, "n d_sae"]) -> float:
    """Mean number of non-zero latents per token."""
    return (feature_acts != 0).sum(-1).float().mean().item()


def mse(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """SAELens's ``mse``: mean over tokens of ``||x - x_hat||^2`` (sum over dimensions)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    return (x - x_hat).pow(2).sum(-1).mean().item()


def explained_variance(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens (the fraction
    of the activations' total variance the reconstruction accounts for)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    x, x_hat = x.double(), x_hat.double()
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return (1 - resid / total).item()


@torch.no_grad()
def evaluate_sae(sae: SAE, x: Float[Tensor, "n d_in"]) -> dict[str, float]:
    """``l0``, ``mse`` and ``explained_variance`` of ``sae`` on ``x``."""
    f = sae.encode(x)
    x_hat = sae.decode(f)
    return {"l0": l0(f), "mse": mse(x, x_hat), "explained_variance": explained_variance(x, x_hat)}


def splice_hook(sae: SAE) -> Any:
    """A forward hook replacing the activation by the SAE's reconstruction."""

    def hook(activation: Tensor, hook: Any = None) -> Tensor:
        shape = activation.shape
        out = sae(activation.reshape(*shape[:2], -1))
        return out.reshape(shape).to(activation.dtype)

    return hook


@torch.no_grad()
def ce_loss_score(
    model: Any, tokens: Int[Tensor, "batch pos"], sae: SAE, hook_name: str | None = None
) -> dict[str, float]:
    """CE loss recovered: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``.

    ``CE_clean``: the model as is; ``CE_sae``: the activation at ``hook_name`` replaced
    by ``sae(activation)``; ``CE_zero``: replaced by zeros. Returns SAELens's keys
    ``ce_loss_score``, ``ce_loss_without_sae``, ``ce_loss_with_sae``,
    ``ce_loss_with_ablation``.
    """
    hook_name = hook_name or sae.cfg.hook_name
    if not hook_name:
        raise ValueError("no hook name given and the SAE's cfg.hook_name is empty")
    clean = model(tokens, return_type="loss").item()
    spliced = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook_name, splice_hook(sae))]
    ).item()
    zero = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(hook_name, lambda a, hook: torch.zeros_like(a))]
    ).item()
    if abs(zero - clean) < 1e-8:
        raise ValueError("zero-ablating the hook does not change the loss; score undefined")
    return {
        "ce_loss_score": (zero - spliced) / (zero - clean),
        "ce_loss_without_sae": clean,
        "ce_loss_with_sae": spliced,
        "ce_loss_with_ablation": zero,
    }


@torch.no_grad()
def feature_acts_of(sae: SAE, x: Float[Tensor, "n d_in"], batch_size: int = 4096) -> Tensor:
    """``sae.encode`` in chunks (to bound memory)."""
    return torch.cat([sae.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def firing_frequency(feature_acts: Float[Tensor, "n d_sae"]) -> Float[Tensor, " d_sae"]:
    """Fraction of tokens on which each latent is non-zero."""
    return (feature_acts != 0).float().mean(0)


def dead_latents(freq: Float[Tensor, " d_sae"], threshold: float = 0.0) -> Bool[Tensor, " d_sae"]:
    """Latents firing on at most ``threshold`` of tokens (default: never)."""
    return freq <= threshold


def dense_latents(freq: Float[Tensor, " d_sae"], threshold: float = 0.1) -> Bool[Tensor, " d_sae"]:
    """Latents firing on more than ``threshold`` of tokens (default 10 %)."""
    return freq > threshold


@dataclass
class TopExample:
    value: float
    doc: int
    pos: int


@torch.no_grad()
def top_activating_examples(
    sae: SAE, activations: ActivationSet, latent: int, k: int = 10
) -> list[TopExample]:
    """The ``k`` tokens (document, position) where ``latent`` is most active."""
    if not 0 <= latent < sae.cfg.d_sae:
        raise ValueError(f"latent must be in [0, {sae.cfg.d_sae}), got {latent}")
    f = feature_acts_of(sae, activations.acts)[:, latent]
    top = f.topk(min(k, len(f)))
    return [
        TopExample(v, int(activations.doc[i]), int(activations.pos[i]))
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


@contextlib.contextmanager
def steer_with_latent(
    model: Any, sae: SAE, latent: int, alpha: float, hook_name: str | None = None
) -> Iterator[Any]:
    """Context manager adding ``alpha * W_dec[latent] / ||W_dec[latent]||`` at the SAE's
    hook in every forward pass (feature steering)."""
    hook_name = hook_name or sae.cfg.hook_name
    with add_direction(model, hook_name, sae.W_dec[latent].detach(), alpha) as m:
        yield m


# ------------------------------------------------------------------- ground truth


def mean_max_cosine(learned: Float[Tensor, "d_sae d"], true: Float[Tensor, "n_true d"]) -> float:
    """For each true feature the best cosine with any learned direction, averaged."""
    cos = F.normalize(true, dim=-1) @ F.normalize(learned, dim=-1).T
    return cos.max(-1).values.mean().item()


def _average_ranks(scores: Float[Tensor, "n m"]) -> Float[Tensor, "n m"]:
    """1-based ranks per column, tied values sharing their average rank."""
    cols = scores.T.contiguous()
    sorted_cols = cols.sort(-1).values
    low = torch.searchsorted(sorted_cols, cols, right=False)
    high = torch.searchsorted(sorted_cols, cols, right=True)
    return ((low + high + 1).double() / 2).T


def auroc_matrix(
    scores: Float[Tensor, "n m"], labels: Bool[Tensor, "n n_labels"]
) -> Float[Tensor, "m n_labels"]:
    """AUROC of every score column for every binary label (Mann-Whitney U with average
    ranks for ties): ``(sum of positives' ranks - P(P+1)/2) / (P N)``."""
    ranks = _average_ranks(scores)
    lab = labels.double()
    n_pos = lab.sum(0)
    n_neg = len(lab) - n_pos
    if bool(((n_pos == 0) | (n_neg == 0)).any()):
        raise ValueError("every label needs positive and negative examples for AUROC")
    return (ranks.T @ lab - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def f1_matrix(
    feature_acts: Float[Tensor, "n m"], labels: Bool[Tensor, "n n_labels"]
) -> Float[Tensor, "m n_labels"]:
    """F1 of "latent fires (> 0)" as a classifier of each label."""
    fires = (feature_acts > 0).double()
    lab = labels.double()
    tp = fires.T @ lab
    precision_denom = fires.sum(0)[:, None]
    recall_denom = lab.sum(0)[None, :]
    return 2 * tp / (precision_denom + recall_denom).clamp_min(1)


@dataclass
class GroundTruthScore:
    """Per label: the best-matching latent and its score; ``mean`` over labels."""

    best_latent: Int[Tensor, " n_labels"]
    best_score: Float[Tensor, " n_labels"]
    mean: float


def ground_truth_score(
    feature_acts: Float[Tensor, "n d_sae"],
    labels: Bool[Tensor, "n n_labels"],
    metric: str = "auroc",
) -> GroundTruthScore:
    """How well latents match known binary labels: for each label the max over latents
    of AUROC (``metric="auroc"``) or F1 (``"f1"``), then the mean over labels."""
    if feature_acts.shape[0] != labels.shape[0]:
        raise ValueError("feature_acts and labels need the same number of rows")
    if metric == "auroc":
        table = auroc_matrix(feature_acts, labels.bool())
    elif metric == "f1":
        table = f1_matrix(feature_acts, labels.bool())
    else:
        raise ValueError(f"metric must be 'auroc' or 'f1', got {metric!r}")
    best = table.max(0)
    return GroundTruthScore(best.indices, best.values.float(), best.values.mean().item())


# ------------------------------------------------------------------- save / load


def _saelens_architecture(cfg: SAEConfig) -> str:
    return "jumprelu" if cfg.architecture == "batchtopk" else cfg.architecture


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Save in SAELens's on-disk format: ``path/cfg.json`` + ``path/sae_weights.safetensors``.

    Every architecture loads in SAELens as an *inference* SAE with the same outputs:
    standard -> ``"standard"``, topk -> ``"topk"``, batchtopk -> ``"jumprelu"`` (with its
    ``threshold``). Our own fields ride along in ``cfg.json`` under ``decoding_gpt``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    weights = {n: p.detach().contiguous().clone() for n, p in sae.state_dict().items()}
    cfg_dict: dict[str, Any] = {
        "architecture": _saelens_architecture(cfg),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
        "hook_name": cfg.hook_name,
        "metadata": {"hook_name": cfg.hook_name, **cfg.extra_meta},
        "decoding_gpt": asdict(cfg),
    }
    if cfg.architecture == "topk":
        cfg_dict["k"] = cfg.k
        cfg_dict["rescale_acts_by_decoder_norm"] = False
    (path / SAE_CFG_FILENAME).write_text(json.dumps(cfg_dict, indent=2))
    save_file({n: t.cpu() for n, t in weights.items()}, str(path / SAE_WEIGHTS_FILENAME))
    return path


def load_sae(path: str | Path) -> SAE:
    """Load an SAE saved by :func:`save_sae` (or a SAELens standard/topk/jumprelu SAE).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the config or the weights do not match (names, shapes).
    """
    path = Path(path)
    cfg_path, w_path = path / SAE_CFG_FILENAME, path / SAE_WEIGHTS_FILENAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (expected SAELens format)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    if "decoding_gpt" in raw:
        cfg = SAEConfig(**raw["decoding_gpt"])
    else:
        arch = {"jumprelu": "batchtopk"}.get(
            raw.get("architecture", "standard"), raw["architecture"]
        )
        hook = raw.get("hook_name") or (raw.get("meta") or raw.get("metadata") or {}).get(
            "hook_name"
        )
        cfg = SAEConfig(
            d_in=raw["d_in"],
            d_sae=raw["d_sae"],
            architecture=arch,
            k=raw.get("k", min(32, raw["d_sae"])),
            hook_name=hook or "",
            dtype=raw.get("dtype", "float32"),
            apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True),
        )
    sae = SAE(cfg)
    try:
        weights = load_file(str(w_path))
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"{w_path} is not a valid safetensors file: {err}") from err
    expected = sae.state_dict()
    if set(weights) != set(expected):
        raise ValueError(f"weight names {sorted(weights)} != expected {sorted(expected)}")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    sae.load_state_dict(weights)
    return sae
