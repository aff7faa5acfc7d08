r"""Scaling laws: train a family of model sizes and fit a power law to loss against size.

Kaplan et al. (2020) found that the held-out loss of a language model trained to
convergence falls as a power of its parameter count,

.. math:: L(N) = \left(N_c / N\right)^{\alpha_N}, \qquad \alpha_N \approx 0.076,

when :math:`N` counts the *non-embedding* parameters (embedding tables grow with the
vocabulary, not with what the model can compute). Any finite data distribution has an
irreducible entropy, so at small scale we fit the saturating form (Hoffmann et al. 2022)

.. math:: L(N) = a\, N^{b} + L_\infty, \qquad b = -\alpha < 0.

The fitted :math:`L_\infty` is the asymptote of one sweep (its data budget, context and
model family), not the entropy of the text: every model's held-out cross-entropy is an
upper bound on the entropy, and a model trained longer can land below a sweep's
:math:`L_\infty` (lecture 09 shows one that does).

We report both signs: ``exponent`` is :math:`b`, the slope of
:math:`\log(L - L_\infty)` against :math:`\log N` (negative when loss falls with size),
and ``alpha`` is :math:`-b`, the positive number papers quote.

**Fitting the pure power law** (:math:`L_\infty = 0`): :math:`\log L = \log a + b\log N`
is a straight line, so ordinary least squares in log-log space gives :math:`(a, b)`.

**Fitting the saturating law** by least squares in :math:`L`,
:math:`\min_{a, b, L_\infty} \sum_i (L_i - a N_i^{b} - L_\infty)^2`. For a fixed
:math:`b` the model is *linear* in :math:`(a, L_\infty)`, which a 2-column least-squares
solve gives in closed form (with :math:`L_\infty \ge 0` enforced: if the solve returns a
negative floor, the optimum lies on the boundary :math:`L_\infty = 0`, where
:math:`a = \langle L, N^b\rangle / \langle N^b, N^b\rangle`). What remains is a 1-D
minimisation of the profile residual :math:`R(b)`: a log-spaced grid, then golden-section
search around the best grid point ("variable projection"; no scipy needed).

**Uncertainty** by the residual bootstrap: refit on ``fitted + resampled residuals``
many times and report the spread of :math:`b`. With :math:`k` points and 3 parameters
the fit has :math:`k - 3` degrees of freedom, so 3 points are fitted exactly and have
no residual spread: use 5 or more sizes for an honest error bar.

**The sweep** (:func:`train_size_sweep`) trains GPTs of several widths/depths on the
stories corpus with the *same* token budget, batches and schedule, so size is the only
thing that changes. ``python -m decoding_gpt.tools.scaling_sweep --out FILE.json`` runs a
larger sweep and writes the table with its command, configuration and machine;
:func:`load_sweep` and :func:`load_sweep_model` read the shipped one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from decoding_gpt.checkpoint import file_sha256, load_weights
from decoding_gpt.data import get_tokenizer, load_token_array
from decoding_gpt.device import set_seed
from decoding_gpt.training import TokenData, TrainConfig, train
from decoding_gpt.transformer import GPT, GPTConfig

__all__ = [
    "PowerLawFit",
    "SweepRow",
    "SWEEP_FILE",
    "bootstrap_exponent",
    "fit_power_law",
    "fit_saturating_power_law",
    "load_sweep",
    "non_embedding_params",
    "power_law",
    "sweep_configs",
    "train_size_sweep",
]

Array = Float[np.ndarray, " k"]

# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class PowerLawFit:
    """``L(N) = a * N**exponent + l_inf``; ``alpha = -exponent`` (Kaplan's sign).

    ``rss`` is the residual sum of squares in the space the fit minimised (log L for
    :func:`fit_power_law`, L for :func:`fit_saturating_power_law`); ``exponent_std`` and
    ``exponent_ci`` (2.5 and 97.5 percentiles) are filled in by :func:`bootstrap_exponent`.
    """

    a: float
    exponent: float
    l_inf: float
    rss: float
    n_points: int
    exponent_std: float | None = None
    exponent_ci: tuple[float, float] | None = None

    @property
    def alpha(self) -> float:
        return -self.exponent

    def predict(self, n: Sequence[float] | np.ndarray) -> np.ndarray:
        """The fitted law at sizes ``n``."""
        return power_law(np.asarray(n, dtype=np.float64), self.a, self.exponent, self.l_inf)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alpha"] = self.alpha
        d["exponent_ci"] = list(self.exponent_ci) if self.exponent_ci is not None else None
        return d


def power_law(n: np.ndarray, a: float, exponent: float, l_inf: float = 0.0) -> np.ndarray:
    """``a * n**exponent + l_inf``, elementwise."""
    return a * np.power(n, exponent) + l_inf


def _validate(
    n: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray
) -> tuple[Array, Array]:
    n_arr = np.asarray(n, dtype=np.float64)
    l_arr = np.asarray(loss, dtype=np.float64)
    if n_arr.ndim != 1 or l_arr.ndim != 1 or n_arr.shape != l_arr.shape:
        raise ValueError(
            f"n and loss must be 1-D and of equal length, got shapes {n_arr.shape} and "
            f"{l_arr.shape}"
        )
    if len(n_arr) < 3:
        raise ValueError(
            f"a power-law fit needs at least 3 (size, loss) points, got {len(n_arr)}: "
            "with fewer, any curve through them fits exactly and the exponent means nothing"
        )
    if not (np.isfinite(n_arr).all() and np.isfinite(l_arr).all()):
        raise ValueError("n and loss must be finite (no NaN or inf)")
    if (n_arr <= 0).any():
        raise ValueError(f"sizes N must be positive, got min N = {n_arr.min():g}")
    if (l_arr <= 0).any():
        raise ValueError(f"losses must be positive (cross-entropy > 0), got {l_arr.min():g}")
    if len(np.unique(n_arr)) < 2:
        raise ValueError("all sizes N are equal: the exponent is undetermined")
    return n_arr, l_arr


def fit_power_law(
    n: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray
) -> PowerLawFit:
    r"""Least-squares line through :math:`(\log N_i, \log L_i)`: :math:`L = a N^{b}`.

    Minimises :math:`\sum_i (\log L_i - \log a - b \log N_i)^2` (closed form); ``l_inf`` is 0.
    """
    n_arr, l_arr = _validate(n, loss)
    x, y = np.log(n_arr), np.log(l_arr)
    design = np.stack([np.ones_like(x), x], axis=1)
    (log_a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    rss = float(np.sum((y - design @ np.array([log_a, b])) ** 2))
    return PowerLawFit(float(np.exp(log_a)), float(b), 0.0, rss, len(n_arr))


def _profile(
    x: np.ndarray, loss: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each fixed exponent in ``b`` (shape ``[G]``): best ``(a, l_inf >= 0)`` and RSS.

    With ``z = N^b`` the best ``(a, l_inf)`` is the simple regression of ``L`` on ``z``,
    ``a = cov(z, L) / var(z)``, ``l_inf = mean(L) - a mean(z)``.
    """
    z = np.exp(b[:, None] * (x - x.mean())[None, :])  # N^b up to a constant: well scaled
    zc = z - z.mean(axis=1, keepdims=True)
    a = (zc @ (loss - loss.mean())) / (zc**2).sum(axis=1)
    l_inf = loss.mean() - a * z.mean(axis=1)
    boundary = l_inf < 0  # the constrained optimum is then on l_inf = 0
    a = np.where(boundary, (z @ loss) / (z**2).sum(axis=1), a)
    l_inf = np.where(boundary, 0.0, l_inf)
    rss = ((loss[None, :] - a[:, None] * z - l_inf[:, None]) ** 2).sum(axis=1)
    return a * np.exp(-b * x.mean()), l_inf, rss


def fit_saturating_power_law(
    n: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    exponent_range: tuple[float, float] = (1e-3, 3.0),
    grid: int = 400,
) -> PowerLawFit:
    r"""Least squares for :math:`L = a N^{b} + L_\infty` with :math:`L_\infty \ge 0`.

    Searches :math:`-b` in ``exponent_range`` (log-spaced ``grid`` points, then golden
    section to 1e-10 relative); ``(a, L_inf)`` are solved exactly for each ``b``.
    """
    n_arr, l_arr = _validate(n, loss)
    lo, hi = exponent_range
    if not 0 < lo < hi:
        raise ValueError(f"exponent_range must satisfy 0 < low < high, got {exponent_range}")
    x = np.log(n_arr)
    alphas = np.geomspace(lo, hi, grid)
    best = int(np.argmin(_profile(x, l_arr, -alphas)[2]))
    left, right = alphas[max(best - 1, 0)], alphas[min(best + 1, grid - 1)]

    def rss_at(alpha: float) -> float:
        return float(_profile(x, l_arr, np.array([-alpha]))[2][0])

    alpha = float(_golden_section(rss_at, float(left), float(right)))
    a, l_inf, rss = (float(v[0]) for v in _profile(x, l_arr, np.array([-alpha])))
    return PowerLawFit(a, -alpha, l_inf, rss, len(n_arr))


def _golden_section(
    f: Callable[[float], float], left: float, right: float, rel_tol: float = 1e-10
) -> float:
    """Minimiser of a unimodal ``f`` on ``[left, right]``."""
    ratio = (math.sqrt(5) - 1) / 2
    c, d = right - ratio * (right - left), left + ratio * (right - left)
    fc, fd = f(c), f(d)
    while right - left > rel_tol * max(abs(right), 1e-12):
        if fc < fd:
            right, d, fd = d, c, fc
            c = right - ratio * (right - left)
            fc = f(c)
        else:
            left, c, fc = c, d, fd
            d = left + ratio * (right - left)
            fd = f(d)
    return (left + right) / 2


def bootstrap_exponent(
    n: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    saturating: bool = True,
    n_boot: int = 200,
    seed: int = 0,
) -> PowerLawFit:
    r"""The fit with a residual-bootstrap spread of its exponent.

    Refits ``n_boot`` times on :math:`\hat L_i + r_{\pi(i)}`, residuals :math:`r` drawn
    with replacement (in log space for the pure power law, where it was fitted), and
    returns the original fit with ``exponent_std`` and the 95 % percentile interval.
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    fit_fn = fit_saturating_power_law if saturating else fit_power_law
    fit = fit_fn(n, loss)
    n_arr, l_arr = _validate(n, loss)
    fitted = fit.predict(n_arr)
    rng = np.random.default_rng(seed)
    exponents = []
    for _ in range(n_boot):
        if saturating:
            resampled = fitted + rng.choice(l_arr - fitted, size=len(l_arr), replace=True)
            resampled = np.maximum(resampled, 1e-12)  # keep losses positive
        else:
            log_resid = np.log(l_arr) - np.log(fitted)
            resampled = fitted * np.exp(rng.choice(log_resid, size=len(l_arr), replace=True))
        exponents.append(fit_fn(n_arr, resampled).exponent)
    values = np.array(exponents)
    ci = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
    return PowerLawFit(
        fit.a, fit.exponent, fit.l_inf, fit.rss, fit.n_points, float(values.std()), ci
    )


# --------------------------------------------------------------------------- the sweep


def non_embedding_params(cfg: GPTConfig) -> int:
    r"""Parameters outside the token/position tables, as Kaplan et al. count :math:`N`.

    Our unembedding is untied, so it is a vocabulary-sized table too: we exclude
    :math:`W_E` (``d_vocab x d_model``), :math:`W_{pos}` (``n_ctx x d_model``, when
    learned) and :math:`W_U, b_U`, leaving :math:`\approx 12\, n_{layers} d_{model}^2`
    (attention, MLP, LayerNorms) that the paper's :math:`N` approximates.
    """
    embed = cfg.d_vocab * cfg.d_model
    pos = cfg.n_ctx * cfg.d_model if cfg.positional_embedding_type == "standard" else 0
    unembed = cfg.d_model * cfg.d_vocab + cfg.d_vocab
    return cfg.n_params - embed - pos - unembed


@dataclass(frozen=True)
class SweepRow:
    """One trained size: its shape, both parameter counts, losses and wall time.

    ``model`` holds the trained GPT when the sweep ran with ``keep_models=True``; it is
    left out of ``to_dict`` (JSON holds numbers only).
    """

    d_model: int
    n_layers: int
    n_heads: int
    n_params: int
    n_params_non_embedding: int
    tokens: int
    steps: int
    val_loss: float
    train_loss: float
    wall_time_s: float
    model: GPT | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}

    def summary(self) -> str:
        """One line: the shape, both parameter counts, the val loss and the wall time."""
        return (
            f"d_model {self.d_model:>4} x {self.n_layers} layers: N = "
            f"{self.n_params_non_embedding:>9,} ({self.n_params:>9,} with embeddings), "
            f"val loss {self.val_loss:.4f}, {self.wall_time_s:.1f} s"
        )


def sweep_configs(
    widths: Sequence[int],
    depths: Sequence[int] | int,
    d_vocab: int,
    n_ctx: int,
    d_head: int = 16,
) -> list[GPTConfig]:
    """One :class:`GPTConfig` per ``(width, depth)``; ``n_heads = max(1, width // d_head)``.

    ``depths`` is one int for all widths or a sequence as long as ``widths``.
    """
    depth_list = [depths] * len(widths) if isinstance(depths, int) else list(depths)
    if len(widths) == 0:
        raise ValueError("widths is empty: give at least one model size")
    if len(depth_list) != len(widths):
        raise ValueError(
            f"got {len(widths)} widths but {len(depth_list)} depths; pass one depth per width "
            "or a single int"
        )
    configs = []
    for width, depth in zip(widths, depth_list, strict=True):
        n_heads = max(1, width // d_head)
        if width % n_heads:
            raise ValueError(f"width {width} is not divisible by its {n_heads} heads")
        configs.append(
            GPTConfig(d_vocab=d_vocab, n_ctx=n_ctx, d_model=width, n_layers=depth, n_heads=n_heads)
        )
    return configs


def _stories(split: str, n_tokens: int) -> np.ndarray:
    return load_token_array("stories", split, n_tokens=n_tokens)  # type: ignore[arg-type]


def _sweep_train_config(
    steps: int, batch_size: int, lr: float, eval_batches: int, seed: int, device: str
) -> TrainConfig:
    """The schedule every size shares: 10 % warmup, cosine decay to ``lr / 10``, weight
    decay 0.1, one evaluation at the end, float32 and the for-loop AdamW."""
    return TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=max(1, steps // 10),
        weight_decay=0.1,
        eval_every=0,  # only the final evaluation
        eval_batches=eval_batches,
        log_every=max(1, steps),
        seed=seed,
        device=device,
        dtype="fp32",
        fused=False,  # the AdamW the committed sweep was trained with (see TrainConfig)
    )


def train_size_sweep(
    widths: Sequence[int],
    depths: Sequence[int] | int = 2,
    n_tokens: int = 200_000,
    seed: int = 0,
    *,
    n_ctx: int = 64,
    batch_size: int = 16,
    d_head: int = 16,
    lr: float = 3e-3,
    eval_batches: int = 8,
    n_val_tokens: int = 50_000,
    train_data: TokenData | None = None,
    val_data: TokenData | None = None,
    device: str = "cpu",
    keep_models: bool = False,
    verbose: bool = False,
) -> list[SweepRow]:
    """Train one GPT per size on the same ``n_tokens`` (fixed budget) and tabulate them.

    Every model sees the same batches in the same order (``seed``) with the same
    schedule (``steps = n_tokens // (batch_size * n_ctx)``, 10 % warmup, cosine decay to
    ``lr / 10``); only the shape differs. ``train_data``/``val_data`` default to the
    stories corpus (``n_tokens`` training and ``n_val_tokens`` validation tokens). Rows
    come back in the order of ``widths``; ``val_loss`` is the mean next-token cross-entropy (nats)
    on ``eval_batches`` fixed validation batches. ``keep_models=True`` also returns each
    trained model (in eval mode) in ``row.model``.
    """
    steps = n_tokens // (batch_size * n_ctx)
    if steps < 1:
        raise ValueError(
            f"n_tokens={n_tokens} is less than one batch ({batch_size} x {n_ctx} tokens)"
        )
    if train_data is None:  # at least 20k tokens, so small budgets share one cached array
        train_data = _stories("train", max(n_tokens, 20_000))
    val_data = _stories("val", n_val_tokens) if val_data is None else val_data
    d_vocab = get_tokenizer("stories").get_vocab_size()
    rows = []
    for cfg in sweep_configs(widths, depths, d_vocab, n_ctx, d_head):
        set_seed(seed)  # the same initialisation stream for every size
        model = GPT(cfg)
        train_cfg = _sweep_train_config(steps, batch_size, lr, eval_batches, seed, device)
        start = time.perf_counter()
        history = train(model, train_data, val_data, train_cfg)
        row = SweepRow(
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_params=cfg.n_params,
            n_params_non_embedding=non_embedding_params(cfg),
            tokens=steps * batch_size * n_ctx,
            steps=steps,
            val_loss=float(history["val_loss"][-1]),
            train_loss=float(history["train_loss"][-1]),
            wall_time_s=time.perf_counter() - start,
            model=model.eval() if keep_models else None,
        )
        if verbose:
            print(row.summary(), flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the shipped sweep

SWEEP_FILE = Path(__file__).parent / "pretrained" / "scaling" / "stories_sweep.json"


def load_sweep(path: str | os.PathLike = SWEEP_FILE) -> dict[str, Any]:
    """A sweep written by the CLI, checked for the fields a plot and a fit need."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no sweep at {path}; write one with "
            f"`python -m decoding_gpt.tools.scaling_sweep --out {path}`"
        )
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    rows = result.get("rows") if isinstance(result, dict) else None
    need = {"n_params", "n_params_non_embedding", "val_loss"}
    if not isinstance(rows, list) or not rows or not all(need <= set(r) for r in rows):
        raise ValueError(f"{path} has no 'rows' list with fields {sorted(need)}")
    return result


def load_sweep_model(index: int, path: str | os.PathLike = SWEEP_FILE) -> GPT:
    """The trained model of row ``index`` of a sweep written with ``--weights`` (eval mode).

    The weight file sits beside the JSON (in its ``weights`` folder); its sha256 must
    match the one the sweep recorded, so a corrupt or swapped file raises.
    """
    result = load_sweep(path)
    rows = result["rows"]
    if not -len(rows) <= index < len(rows):
        raise IndexError(f"the sweep has {len(rows)} sizes; got index {index}")
    entry = rows[index].get("weights")
    if entry is None:
        raise ValueError(f"{path} has no weights: rerun the sweep with --weights DIR")
    file = Path(path).parent / result["weights_dir"] / entry["file"]
    if not file.is_file():
        raise FileNotFoundError(f"{file}: weight file of sweep row {index} is missing")
    if file_sha256(file) != entry["sha256"]:
        raise ValueError(f"{file}: sha256 does not match the sweep's record (corrupt file?)")
    model = GPT(GPTConfig.from_dict(entry["config"]))
    return load_weights(file, model).eval()
