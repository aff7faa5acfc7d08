"""The SAE itself: its config, the table of architectures, the forward pass and the loss.

Every architecture shares the affine encoder and decoder (SAELens's names and shapes)::

    pre   = (x - a * b_dec) W_enc + b_enc      # [..., d_sae]  pre-activations
    f     = sigma(pre)                         # [..., d_sae]  sparse, non-negative
    x_hat = f W_dec + b_dec                    # [..., d_in]   reconstruction
    loss  = mean_batch ||x - x_hat||^2 + penalty(f)     (+ alpha * L_aux with AuxK)

(``a = cfg.apply_b_dec_to_input``; row ``W_dec[i]`` is latent ``i``'s direction.) An
architecture is one row of :data:`ARCHITECTURES`: its ``sigma`` at inference, its
``sigma`` in training, its sparsity penalty, and how training treats the decoder norms.
:class:`SAE` looks the row up; it never branches on the architecture's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# SAELens's ``normalize_activations`` modes, as its inference SAE applies them (see
# :meth:`SAE.normalize_in`). The last two scale the activations in SAELens's activation
# store during training, not in the SAE: the SAE itself leaves its input alone.
NORMALIZATIONS = (
    "none",
    "constant_norm_rescale",
    "layer_norm",
    "expected_average_only_in",
    "covariance_whitening",
)
_LAYER_NORM_EPS = 1e-5  # SAELens's run_time_activation_ln_in
# the modes whose decode needs statistics of the input that encode saw
_STATEFUL = ("constant_norm_rescale", "layer_norm")

# --------------------------------------------------------------------- activations


def relu(sae: SAE, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
    """``f = ReLU(pre)``."""
    return F.relu(pre)


def topk_relu(sae: SAE, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
    """``f = ReLU(TopK_k(pre))``: the k largest pre-activations of each token, the rest 0."""
    top = pre.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))


def batch_topk_relu(sae: SAE, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
    """BatchTopK: the ``k * batch`` largest ``ReLU(pre)`` over the whole batch (L0 = k on
    average, varying per token)."""
    acts = F.relu(pre).flatten()
    top = acts.topk(sae.cfg.k * pre.shape[0])
    return torch.zeros_like(acts).scatter(0, top.indices, top.values).view_as(pre)


def jumprelu(sae: SAE, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
    """``f = ReLU(pre) * 1[pre > theta]`` with the SAE's threshold ``theta: [d_sae]``
    (SAELens's JumpReLU; the ReLU matters only where ``theta < 0``)."""
    return F.relu(pre) * (pre > sae.threshold)


def weighted_l1(sae: SAE, f: Float[Tensor, "batch d_sae"], lam: float) -> Float[Tensor, ""]:
    """``lam * mean_batch sum_i f_i ||W_dec[i]||``: L1 weighted by the decoder norms, so
    the SAE cannot dodge the penalty by shrinking ``f`` and growing ``W_dec``."""
    return lam * (f * sae.W_dec.norm(dim=-1)).sum(-1).mean()


Activation = Callable[["SAE", Tensor], Tensor]
Penalty = Callable[["SAE", Tensor, float], Tensor]

# --------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Architecture:
    """One row of :data:`ARCHITECTURES`.

    Attributes:
        activation: ``sigma`` at inference, per token.
        train_activation: ``sigma`` in training (BatchTopK's works over the whole batch).
        penalty: the sparsity term added to the MSE, or None when sparsity is structural
            (a fixed number ``k`` of latents).
        decoder_norm: how training treats ``n_i = ||W_dec[i]||``. ``"free"``: unconstrained
            (the penalty is weighted by it). ``"rescale"``: select and decode through the
            unit rows ``W_dec[i] / n_i`` and fold the norms into the encoder at the end
            (SAELens's ``rescale_acts_by_decoder_norm``; re-projection on request).
            ``"project"``: the decoder starts with unit rows and is re-projected onto the
            sphere after every step.
        subtract_b_dec: the default of ``apply_b_dec_to_input``.
        uses_k: sparsity is set by ``cfg.k`` (validated, and saved for SAELens).
        gather_decode: training is per-token TopK, so ``x_hat`` can gather the ``k`` kept
            rows of ``W_dec`` instead of a dense ``f @ W_dec`` (fast path, tested equal).
        threshold: has a JumpReLU ``threshold: [d_sae]`` buffer, learned in training as an
            EMA of the smallest activation the training ``sigma`` keeps.
        auxk: the AuxK dead-latent loss (:func:`auxk_loss`) may be switched on.
        saelens_name: the ``architecture`` written to SAELens's ``cfg.json``.
    """

    activation: Activation
    train_activation: Activation
    penalty: Penalty | None
    decoder_norm: Literal["free", "rescale", "project"]
    subtract_b_dec: bool
    uses_k: bool
    saelens_name: str
    gather_decode: bool = False
    threshold: bool = False
    auxk: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    # ReLU + L1 (Bricken et al. 2023; Anthropic's April 2024 update).
    "standard": Architecture(
        activation=relu,
        train_activation=relu,
        penalty=weighted_l1,
        decoder_norm="free",
        subtract_b_dec=False,
        uses_k=False,
        saelens_name="standard",
    ),
    # TopK (Gao et al. 2024): L0 <= k (the k largest pre-activations, then ReLU), no penalty.
    "topk": Architecture(
        activation=topk_relu,
        train_activation=topk_relu,
        penalty=None,
        decoder_norm="rescale",
        subtract_b_dec=True,
        uses_k=True,
        saelens_name="topk",
        gather_decode=True,
        auxk=True,
    ),
    # BatchTopK (Bussmann et al. 2024): TopK over the batch in training, a JumpReLU with
    # one learned threshold at inference (a batch may be a single token), so on disk a
    # SAELens "jumprelu" SAE.
    "batchtopk": Architecture(
        activation=jumprelu,
        train_activation=batch_topk_relu,
        penalty=None,
        decoder_norm="project",
        subtract_b_dec=True,
        uses_k=True,
        saelens_name="jumprelu",
        threshold=True,
        auxk=True,
    ),
}

# --------------------------------------------------------------------- config


@dataclass
class SAEConfig:
    """What defines an SAE (the optimiser settings live in ``train_sae``).

    ``apply_b_dec_to_input`` defaults to the architecture's ``subtract_b_dec`` (False for
    ``"standard"``, the April update; True for the TopK variants, as Gao et al.).

    AuxK (TopK variants; off by default): with ``use_auxk`` training adds
    ``aux_coefficient * L_aux`` (:func:`auxk_loss`), where a latent is *dead* when it has
    not fired in any of the last ``dead_steps`` training batches and ``k_aux`` defaults
    to ``d_in // 2`` (SAELens's heuristic, from Gao et al. 2024, App. B.1). Gao et al.
    use ``alpha = 1/32``; SAELens's window is ``dead_feature_window = 1000`` steps (a
    course-length run needs a shorter one). Off by default: with that window it would
    never act on a course-length run, and with a shorter one it changes what every
    existing seeded TopK run learns.
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
    use_auxk: bool = False
    k_aux: int | None = None
    aux_coefficient: float = 1 / 32
    dead_steps: int = 1000
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {tuple(ARCHITECTURES)}, got {self.architecture!r}"
            )
        arch = ARCHITECTURES[self.architecture]
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if arch.uses_k and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported "
                f"(one of {NORMALIZATIONS})"
            )
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = arch.subtract_b_dec
        self._check_auxk(arch)

    def _check_auxk(self, arch: Architecture) -> None:
        if self.use_auxk and not arch.auxk:
            raise ValueError(f"use_auxk is for the TopK variants, not {self.architecture!r}")
        if self.k_aux is None:
            self.k_aux = max(1, self.d_in // 2)
        if self.k_aux < 1:  # more than the dead latents is fine: all of them are used
            raise ValueError(f"k_aux must be >= 1, got {self.k_aux}")
        if self.dead_steps < 1 or self.aux_coefficient < 0:
            raise ValueError(
                f"dead_steps must be >= 1 and aux_coefficient >= 0, got {self.dead_steps}, "
                f"{self.aux_coefficient}"
            )


# --------------------------------------------------------------------- AuxK


def auxk_loss(
    residual: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch d_sae"],
    w_dec: Float[Tensor, "d_sae d_in"],
    dead: Bool[Tensor, " d_sae"],
    k_aux: int,
) -> Float[Tensor, ""]:
    """AuxK (Gao et al. 2024, App. A.2; SAELens's TopK training): let the dead latents
    model the error the live ones leave, so they get a gradient and can come back::

        e     = x - x_hat                                   (detached by the caller)
        z     = TopK_{k'}(pre restricted to the dead latents),  k' = min(k_aux, n_dead)
        L_aux = min(n_dead / k_aux, 1) * mean_batch ||e - z W_dec||^2

    The scale shrinks the loss when few latents are dead (SAELens). As in SAELens the kept
    pre-activations are not passed through ReLU, so a dead latent whose pre-activation is
    negative still learns; as in Gao et al.'s formula (SAELens adds ``b_dec``) the
    estimate ``z W_dec`` of the error has no bias. Zero when no latent is dead.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    scale = min(n_dead / k_aux, 1.0)
    top = pre.masked_fill(~dead, -float("inf")).topk(min(k_aux, n_dead), dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)  # [batch, d_sae]
    return scale * (residual - z @ w_dec).pow(2).sum(-1).mean()


# --------------------------------------------------------------------- the model


class SAE(nn.Module):
    """A sparse autoencoder with SAELens's parameter names and shapes.

    ``W_enc: [d_in, d_sae]``, ``b_enc: [d_sae]``, ``W_dec: [d_sae, d_in]``,
    ``b_dec: [d_in]``; an architecture with a threshold (BatchTopK) also has a buffer
    ``threshold: [d_sae]``. ``self.arch`` is the config's row of :data:`ARCHITECTURES`.
    """

    threshold: Tensor  # a buffer, registered in __init__ when the architecture has one

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch = ARCHITECTURES[cfg.architecture]
        dtype = _DTYPES[cfg.dtype]
        # Random directions at norm 0.1 and encoder = decoder^T (Anthropic's April update
        # heuristic, SAELens's ``decoder_init_norm=0.1`` for every architecture, TopK
        # included: TopK trains with ``rescale_acts_by_decoder_norm`` and gets unit rows
        # when ``train_sae`` folds the norms in). A re-projected decoder (BatchTopK)
        # starts unit with the small encoder (in bench_sae this kept L0 at k instead of
        # ~4 % below, and MSE ~1 % lower, than an encoder equal to the unit decoder^T).
        w_dec = 0.1 * F.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=generator), dim=-1)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous().to(dtype))
        if self.arch.decoder_norm == "project":
            w_dec = F.normalize(w_dec, dim=-1)
        self.W_dec = nn.Parameter(w_dec.to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if self.arch.threshold:
            self.register_buffer("threshold", torch.zeros(cfg.d_sae, dtype=dtype))

    # --------------------------------------------------------------- forward pass

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE expects d_in={self.cfg.d_in}, got shape {tuple(x.shape)}")

    def normalize_in(self, x: Float[Tensor, "... d_in"]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """SAELens's run-time input normalisation, per token, and the statistics that
        :meth:`normalize_out` needs to undo it (``cfg.normalize_activations``):

        - ``"constant_norm_rescale"``: ``x * c`` with ``c = sqrt(d_in) / ||x||``;
        - ``"layer_norm"``: ``(x - mu) / (std + 1e-5)``, ``std`` the unbiased standard
          deviation of ``x - mu`` over ``d_in``;
        - otherwise ``x`` unchanged (``"expected_average_only_in"`` and
          ``"covariance_whitening"`` act in SAELens's activation store, not in the SAE).
        """
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            return x / (std + _LAYER_NORM_EPS), (mu, std)
        return x, ()

    def normalize_out(
        self, x_hat: Float[Tensor, "... d_in"], stats: tuple[Tensor, ...]
    ) -> Float[Tensor, "... d_in"]:
        """Undo :meth:`normalize_in` on a reconstruction: ``x_hat / c`` or
        ``x_hat * std + mu``."""
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return x_hat / stats[0]
        if mode == "layer_norm":
            return x_hat * stats[1] + stats[0]
        return x_hat

    def hidden_pre(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Pre-activations ``(n(x) - a b_dec) W_enc + b_enc`` (``n``: :meth:`normalize_in`,
        the identity unless ``cfg.normalize_activations`` says otherwise; as in SAELens
        :meth:`decode` then undoes it with the statistics of this ``x``)."""
        self._check(x)
        x = x.to(self.W_enc.dtype)
        if self.cfg.normalize_activations in _STATEFUL:
            x, self._norm_stats = self.normalize_in(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The inference nonlinearity ``sigma`` (per token)."""
        return self.arch.activation(self, pre)

    def activate_train(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """The training nonlinearity (BatchTopK: over the whole batch)."""
        return self.arch.train_activation(self, pre)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """``f = sigma(pre)``."""
        return self.activate(self.hidden_pre(x))

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """``x_hat = f W_dec + b_dec`` (then, with a ``"constant_norm_rescale"`` or
        ``"layer_norm"`` normalisation, undone with the statistics of the input the last
        :meth:`encode` saw, as SAELens does; ``sae(x)`` pairs them)."""
        x_hat = f @ self.W_dec + self.b_dec
        if self.cfg.normalize_activations not in _STATEFUL:
            return x_hat
        stats = self.__dict__.pop("_norm_stats", None)
        if stats is None:
            raise ValueError(
                f"decode() with normalize_activations={self.cfg.normalize_activations!r} "
                "undoes the normalisation of the input encode() saw: call encode(x) first"
            )
        return self.normalize_out(x_hat, stats)

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
        ``W_dec[i] /= n_i``, ``W_enc[:, i] *= n_i``, ``b_enc[i] *= n_i`` (and the threshold;
        valid because ReLU and the threshold comparison commute with positive scaling)."""
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.data /= norms[:, None]
        self.W_enc.data *= norms[None, :]
        self.b_enc.data *= norms
        if self.arch.threshold:
            self.threshold *= norms

    # --------------------------------------------------------------- loss

    def training_loss(
        self,
        x: Float[Tensor, "batch d_in"],
        l1_coefficient: float | None = None,
        *,
        rescale_acts_by_decoder_norm: bool = False,
        dead_mask: Bool[Tensor, " d_sae"] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(loss, feature_acts, x_hat)`` (``feature_acts`` detached for TopK).

        ``loss = mean_batch ||x - x_hat||^2`` (summed over ``d_in``, as SAELens), plus the
        architecture's penalty (standard: ``lam * mean_batch sum_i f_i ||W_dec[i]||``,
        ``lam = l1_coefficient`` or ``cfg.l1_coefficient``), plus, with ``cfg.use_auxk``
        and a ``dead_mask``, ``cfg.aux_coefficient * L_aux`` (:func:`auxk_loss`).

        ``rescale_acts_by_decoder_norm`` (TopK only; SAELens's option of that name):
        the decoder rows are free, with norms ``n_i = ||W_dec[i]||``; pre-activations
        are scaled by ``n_i`` before TopK and decoded through the unit rows
        ``W_dec[i] / n_i``. So ``x_hat`` is unchanged (``sum_i relu(pre_i) W_dec[i]``)
        but TopK picks the latents by the size of their contribution ``f_i n_i``;
        equivalently a unit decoder whose encoder column ``i`` carries a learned scale
        ``n_i``. :meth:`fold_decoder_norm` afterwards gives an SAE with unit rows and
        the same outputs (``f`` returned here is already in those units).
        """
        if rescale_acts_by_decoder_norm and self.arch.decoder_norm != "rescale":
            raise ValueError("rescale_acts_by_decoder_norm is only for the 'topk' architecture")
        if self.cfg.normalize_activations != "none":
            raise ValueError(
                f"training with normalize_activations={self.cfg.normalize_activations!r} "
                "is not supported: normalise the activations before training"
            )
        pre = self.hidden_pre(x)
        w_dec = self.W_dec
        if rescale_acts_by_decoder_norm:
            norms = self.W_dec.norm(dim=-1)
            pre = pre * norms
            w_dec = self.W_dec / norms[:, None]
        f, x_hat = self._train_forward(pre, w_dec)
        loss = (x_hat - x).pow(2).sum(-1).mean()
        if self.arch.penalty is not None:
            lam = self.cfg.l1_coefficient if l1_coefficient is None else l1_coefficient
            loss = loss + self.arch.penalty(self, f, lam)
        if self.cfg.use_auxk and dead_mask is not None:
            residual = (x - x_hat).detach()
            assert self.cfg.k_aux is not None  # SAEConfig._check_auxk sets the default
            aux = auxk_loss(residual, pre, w_dec, dead_mask, self.cfg.k_aux)
            loss = loss + self.cfg.aux_coefficient * aux
        return loss, f, x_hat

    def _train_forward(
        self, pre: Float[Tensor, "batch d_sae"], w_dec: Float[Tensor, "d_sae d_in"]
    ) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_in"]]:
        """``(f, x_hat)`` with the training nonlinearity and the decoder ``w_dec``."""
        if not self.arch.gather_decode:
            f = self.activate_train(pre)
            return f, f @ w_dec + self.b_dec
        # Fast path for per-token TopK: decode only the k active rows of W_dec (a weighted
        # gather, k * d_in per token instead of d_sae * d_in); tested equal to
        # ``decode(activate(pre))``.
        top = pre.topk(self.cfg.k, dim=-1, sorted=False)
        values = F.relu(top.values)
        x_hat = (
            F.embedding_bag(top.indices, w_dec, per_sample_weights=values, mode="sum") + self.b_dec
        )
        with torch.no_grad():
            f = torch.zeros_like(pre).scatter_(-1, top.indices, values)
        return f, x_hat

    @torch.no_grad()
    def update_threshold(self, f: Float[Tensor, "batch d_sae"]) -> None:
        """JumpReLU threshold: EMA (``cfg.threshold_ema``) of the smallest positive
        activation the training nonlinearity kept in this batch."""
        positive = f[f > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min()
        if bool((self.threshold == 0).all()):
            self.threshold.fill_(smallest)
        else:
            m = self.cfg.threshold_ema
            self.threshold.mul_(m).add_((1 - m) * smallest)
