"""Modular addition and grokking: the data, a training loop, progress measures.

A one-layer transformer reads ``a b =`` (tokens ``a, b`` in ``[0, p)``, ``=`` is token ``p``)
and predicts ``c = (a + b) mod p`` at the last position. Trained with AdamW and strong
weight decay on a fraction of the ``p^2`` pairs, it first memorises the training pairs
(train accuracy 100 %, test accuracy near ``1/p``) and, many steps later, suddenly
generalises: *grokking* (Power et al. 2022). Nanda et al. 2023 ("Progress measures for
grokking via mechanistic interpretability") reverse-engineered the algorithm it finds:

* the embedding ``W_E`` maps ``a`` to ``cos(w_k a), sin(w_k a)`` for a few *key
  frequencies* ``w_k = 2 pi k / p``;
* attention and MLP multiply these into ``cos(w_k (a + b))``, ``sin(w_k (a + b))``
  (trigonometric product identities);
* the unembedding reads ``cos(w_k (a + b - c)) = cos(w_k (a+b)) cos(w_k c) +
  sin(w_k (a+b)) sin(w_k c)``, which peaks at ``c = (a + b) mod p``.

Progress measures that move smoothly while test accuracy jumps (this module):

* :func:`frequency_norms` -- the norm of ``W_E``'s component along each frequency of the
  Fourier basis of ``Z_p``; it concentrates on a few key frequencies as the circuit forms;
* :func:`excluded_loss` -- train loss after deleting the key-frequency ``(a+b)``
  components from the logits: it rises as the model comes to rely on the circuit;
* :func:`restricted_loss` -- loss using *only* those components: it falls before the
  test loss does.

The shipped ``modadd-1l`` was trained by this loop (``python -m
decoding_gpt.tools.build_model modadd-1l``), and its snapshots across the run load with
``decoding_gpt.pretrained.load_snapshots("modadd-1l")``. The shipped run departs from the
paper's full-batch training in two documented ways (see its config): mini-batches of 512
pairs and lr 3e-3, so that it groks in minutes on a CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from decoding_gpt.device import progress_bar
from decoding_gpt.transformer import GPT, GPTConfig

# Test accuracies at whose first crossing a snapshot is kept, so the jump is sampled
# densely wherever it happens; the other snapshots are evenly spaced over the run.
SNAPSHOT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ModAddData:
    """All ``p^2`` inputs ``[a, b, =]`` (row ``a * p + b``), labels and a train/test split."""

    p: int
    tokens: Int[Tensor, "n_pairs 3"]
    labels: Int[Tensor, " n_pairs"]
    train_idx: Int[Tensor, " n_train"]
    test_idx: Int[Tensor, " n_test"]


def all_pairs(p: int) -> tuple[Int[Tensor, "n_pairs 3"], Int[Tensor, " n_pairs"]]:
    """Tokens ``[a, b, p]`` for every ``(a, b)`` in ``[0, p)^2`` (row ``a p + b``), and
    labels ``(a + b) mod p``."""
    if not isinstance(p, int) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return tokens, (a + b) % p


def make_dataset(p: int, train_fraction: float, seed: int = 0) -> ModAddData:
    """All pairs, split by a seeded random permutation: the first
    ``round(train_fraction p^2)`` pairs of it train, the rest test (disjoint, covering)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    tokens, labels = all_pairs(p)
    n_train = round(train_fraction * p * p)
    if not 0 < n_train < p * p:
        raise ValueError(f"train_fraction={train_fraction} leaves an empty split for p={p}")
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    train_idx, test_idx = perm[:n_train].sort().values, perm[n_train:].sort().values
    return ModAddData(p, tokens, labels, train_idx, test_idx)


# --------------------------------------------------------------------------- model


def model_config(p: int, **overrides: Any) -> GPTConfig:
    """The reference architecture (Nanda et al. 2023): one layer, ``d_model`` 128, 4 heads,
    ``d_mlp`` 512, ReLU, no LayerNorm; ``d_vocab = p + 1`` (the ``=`` token), ``n_ctx = 3``."""
    settings: dict[str, Any] = dict(
        d_model=128, n_layers=1, n_heads=4, d_mlp=512, act_fn="relu",
        normalization_type=None, init_range=1 / math.sqrt(128),
    )  # fmt: skip
    settings.update(overrides)
    for key, value in (("d_vocab", p + 1), ("n_ctx", 3)):
        if settings.setdefault(key, value) != value:
            raise ValueError(f"modular addition mod {p} needs {key}={value}, got {settings[key]}")
    return GPTConfig.from_dict(settings)


def last_position_logits(
    model: GPT, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_vocab"]:
    """``model(tokens)[:, -1]``: the logits that predict ``(a + b) mod p``."""
    return model(tokens)[:, -1]


def loss_and_accuracy(
    logits: Float[Tensor, "batch d_vocab"], labels: Int[Tensor, " batch"]
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (argmax over all ``d_vocab`` logits)."""
    loss = F.cross_entropy(logits.float(), labels).item()
    return loss, (logits.argmax(-1) == labels).float().mean().item()


@torch.no_grad()
def evaluate_modular_addition(model: GPT, data: ModAddData) -> dict[str, float]:
    """Train and test loss and accuracy of ``model`` on ``data``'s split."""
    logits = last_position_logits(model, data.tokens.to(model.device))
    labels = data.labels.to(model.device)
    out: dict[str, float] = {}
    for split, idx in (("train", data.train_idx), ("test", data.test_idx)):
        loss, acc = loss_and_accuracy(logits[idx], labels[idx])
        out[f"{split}_loss"], out[f"{split}_accuracy"] = loss, acc
    return out


# --------------------------------------------------------------------------- training


@dataclass
class GrokTrainConfig:
    """AdamW on the train pairs: full batch (the paper) or, with ``batch_size``, shuffled
    mini-batches (Power et al. 2022 used 512), which takes many more steps per second."""

    steps: int = 3000
    batch_size: int | None = None  # None: every step sees all train pairs
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    log_every: int = 10  # steps between evaluations of train/test loss and accuracy
    n_snapshots: int = 16  # len(SNAPSHOT_LEVELS) at the jump, the rest evenly spaced
    seed: int = 0

    def __post_init__(self) -> None:
        b1, b2 = self.betas  # TOML gives a list
        self.betas = (b1, b2)
        if self.steps < 1 or self.log_every < 1:
            raise ValueError(
                f"steps and log_every must be >= 1, got {self.steps}, {self.log_every}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if self.n_snapshots < 2:
            raise ValueError(f"n_snapshots must be >= 2 (first and last), got {self.n_snapshots}")


@dataclass
class GrokRun:
    """What :func:`train_modular_addition` returns: the curves, and the snapshots (state
    dicts by step)."""

    history: dict[str, Any]
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)


def even_snapshot_steps(steps: int, n: int, log_every: int) -> list[int]:
    """``n`` steps spread evenly over ``[0, steps]`` on the logging grid (0 and the last
    step included; fewer when the grid is too coarse)."""
    unit = steps / max(n - 1, 1) / log_every  # in units of the logging grid
    grid = [min(round(i * unit) * log_every, steps) for i in range(n - 1)]
    return sorted({*grid, 0, steps})


def weight_norm_sq(model: torch.nn.Module) -> float:
    """``sum ||theta||^2`` over all parameters: what weight decay pulls down."""
    return sum(float(p.detach().float().pow(2).sum()) for p in model.parameters())


def batches(n: int, batch_size: int | None, seed: int) -> Iterator[Int[Tensor, " batch"]]:
    """Indices into the ``n`` train pairs: all of them each step (``batch_size`` None or
    ``>= n``), else consecutive slices of a fresh seeded permutation each pass."""
    if batch_size is None or batch_size >= n:
        while True:
            yield torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):  # drop the ragged tail
            yield perm[start : start + batch_size]


def train_modular_addition(
    model: GPT,
    data: ModAddData,
    cfg: GrokTrainConfig,
    log: Callable[[str], None] | None = print,
) -> GrokRun:
    """Train; log curves every ``log_every`` steps and keep snapshots.

    Step ``s`` in the history means the weights after ``s`` updates. Each update is one
    AdamW step on the mean cross-entropy over a batch ``B`` of train pairs,
    ``L = -(1/|B|) sum_{(a,b) in B} log softmax(f(a, b))_{(a+b) mod p}``, with decoupled
    weight decay ``theta <- theta - lr * wd * theta``. Logged losses and accuracies are over
    the whole train and test sets. Snapshots (float16 copies of the weights) are kept at
    ``n_snapshots - len(SNAPSHOT_LEVELS)`` evenly spaced steps and at the first logged step
    where test accuracy exceeds each of :data:`SNAPSHOT_LEVELS`.

    A tqdm progress bar counts the updates and shows the last logged accuracies;
    ``TQDM_DISABLE=1`` turns it off.
    """
    torch.manual_seed(cfg.seed)
    x_train = data.tokens[data.train_idx].to(model.device)
    y_train = data.labels[data.train_idx].to(model.device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
    )
    n_even = max(cfg.n_snapshots - len(SNAPSHOT_LEVELS), 2)
    even = set(even_snapshot_steps(cfg.steps, n_even, cfg.log_every))
    levels = list(SNAPSHOT_LEVELS)
    keys = ("step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "weight_norm_sq")
    history: dict[str, Any] = {key: [] for key in keys}
    run = GrokRun(history)
    batch_iter = batches(len(y_train), cfg.batch_size, cfg.seed)
    bar = progress_bar(total=cfg.steps, desc="train_modular_addition")
    start = time.perf_counter()
    for step in range(cfg.steps + 1):
        if step % cfg.log_every == 0 or step == cfg.steps:
            model.eval()
            m = evaluate_modular_addition(model, data)
            row = (step, m["train_loss"], m["train_accuracy"], m["test_loss"], m["test_accuracy"])
            for key, value in zip(keys, (*row, weight_norm_sq(model)), strict=True):
                history[key].append(value)
            crossed = [level for level in levels if m["test_accuracy"] > level]
            levels = [level for level in levels if level not in crossed]
            if step in even or crossed:
                state = model.state_dict()
                run.snapshots[step] = {
                    k: v.detach().to("cpu", torch.float16) for k, v in state.items()
                }
            bar.set_postfix(
                train=f"{m['train_accuracy']:.3f}", test=f"{m['test_accuracy']:.3f}", refresh=False
            )
            if log is not None and (step % (cfg.log_every * 20) == 0 or step == cfg.steps):
                log(
                    f"step {step:6d}  train {m['train_loss']:.4f} / {m['train_accuracy']:.3f}  "
                    f"test {m['test_loss']:.4f} / {m['test_accuracy']:.3f}  "
                    f"({time.perf_counter() - start:.0f} s)"
                )
            model.train()
        if step == cfg.steps:
            break
        idx = next(batch_iter)
        loss = F.cross_entropy(last_position_logits(model, x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    model.eval()
    history["train_time"] = time.perf_counter() - start
    history["snapshot_steps"] = sorted(run.snapshots)
    return run


# --------------------------------------------------------------------------- Fourier


def fourier_basis(p: int) -> tuple[Float[Tensor, "p p"], list[str]]:
    """Orthonormal Fourier basis of functions on ``Z_p`` (``p`` odd), one per row.

    Rows: the constant ``1/sqrt(p)``, then for ``k = 1 .. (p-1)/2`` the pair
    ``cos(w_k x) / sqrt(p/2)`` and ``sin(w_k x) / sqrt(p/2)`` with ``w_k = 2 pi k / p``.
    """
    if p < 3 or p % 2 == 0:
        raise ValueError(f"the Fourier analysis here needs an odd p >= 3, got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float(), names


def frequency_norms(W: Float[Tensor, "p d"]) -> Float[Tensor, " n_freq"]:
    """``||(F W)_k||`` for each frequency ``k = 0 .. (p-1)/2``, ``F`` the Fourier basis.

    Frequency ``k > 0`` combines its cos and sin rows, ``sqrt(||c_k^T W||^2 +
    ||s_k^T W||^2)``; since ``F`` is orthonormal the squares sum to ``||W||_F^2``. Apply
    it to ``W_E[:p]`` (the number tokens): a grokked embedding is sparse in ``k``.
    """
    basis, _ = fourier_basis(W.shape[0])
    coeffs = basis.to(W.device) @ W.float()  # [p, d]
    sq = coeffs.pow(2).sum(-1)  # [p]
    return torch.cat([sq[:1], sq[1::2] + sq[2::2]]).sqrt()


def key_frequencies(norms: Float[Tensor, " n_freq"], energy: float = 0.9) -> list[int]:
    """The fewest frequencies ``k >= 1`` holding ``energy`` of the non-constant ``sum
    norms_k^2``, largest first."""
    sq = norms[1:].double().pow(2)
    order = sq.argsort(descending=True)
    cumulative = sq[order].cumsum(0) / sq.sum()
    n = int((cumulative < energy - 1e-9).sum()) + 1
    return [int(k) + 1 for k in order[:n]]


def key_frequency_energy(W: Float[Tensor, "p d"], keys: list[int]) -> float:
    """Fraction of the non-constant squared Fourier norm of ``W`` at ``keys``."""
    sq = frequency_norms(W).double().pow(2)
    return float(sq[keys].sum() / sq[1:].sum())


def _sum_directions(p: int, keys: list[int]) -> Float[Tensor, "n_dir pp"]:
    """Unit vectors ``cos(w_k (a+b))``, ``sin(w_k (a+b))`` over the ``p^2`` inputs (row
    ``a p + b``); for ``k != 0`` they are orthogonal with squared norm ``p^2 / 2``."""
    if any(not 1 <= k <= (p - 1) // 2 for k in keys):
        raise ValueError(f"key frequencies must be in [1, {(p - 1) // 2}], got {keys}")
    tokens, _ = all_pairs(p)
    s = (tokens[:, 0] + tokens[:, 1]).double()
    rows = [f(2 * math.pi * k * s / p) for k in keys for f in (torch.cos, torch.sin)]
    return (torch.stack(rows) / math.sqrt(p * p / 2)).float()


def key_sum_component(
    logits: Float[Tensor, "pp c"], p: int, keys: list[int]
) -> Float[Tensor, "pp c"]:
    """The part of each output's logits (a function of ``(a, b)``) spanned by
    ``cos(w_k (a+b))`` and ``sin(w_k (a+b))`` for ``k`` in ``keys``: ``U^T U L``."""
    U = _sum_directions(p, keys).to(logits.device)  # [n_dir, p^2], orthonormal rows
    return U.T @ (U @ logits.float())


def excluded_loss(
    logits: Float[Tensor, "pp c"],
    labels: Int[Tensor, " pp"],
    idx: Int[Tensor, " n"],
    keys: list[int],
) -> float:
    """Cross-entropy on ``idx`` after deleting the key-frequency ``(a+b)`` components of
    the logits (Nanda et al.'s excluded loss, on the train pairs): high once the model's
    answer runs through those frequencies, even while its train loss stays low."""
    p = int(math.isqrt(logits.shape[0]))
    clean = logits.float() - key_sum_component(logits, p, keys)
    return F.cross_entropy(clean[idx], labels[idx]).item()


def restricted_loss(
    logits: Float[Tensor, "pp c"],
    labels: Int[Tensor, " pp"],
    idx: Int[Tensor, " n"],
    keys: list[int],
) -> float:
    """Cross-entropy on ``idx`` using only the key-frequency ``(a+b)`` components of the
    logits (the restricted loss): low once the clean Fourier circuit alone answers."""
    p = int(math.isqrt(logits.shape[0]))
    return F.cross_entropy(key_sum_component(logits, p, keys)[idx], labels[idx]).item()


@torch.no_grad()
def progress_measures(model: GPT, data: ModAddData, keys: list[int]) -> dict[str, float]:
    """Accuracies, losses and the progress measures of one model, for key frequencies
    ``keys``. Logits are restricted to the ``p`` number outputs (the ``=`` output is
    never a label) for the Fourier measures."""
    p = data.p
    logits = last_position_logits(model, data.tokens.to(model.device))[:, :p].float().cpu()
    out = evaluate_modular_addition(model, data)
    out["key_frequency_energy"] = key_frequency_energy(model.embed.W_E[:p].detach().cpu(), keys)
    out["excluded_loss"] = excluded_loss(logits, data.labels, data.train_idx, keys)
    out["restricted_loss"] = restricted_loss(logits, data.labels, data.test_idx, keys)
    out["weight_norm_sq"] = weight_norm_sq(model)
    return out
