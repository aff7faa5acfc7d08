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

``python -m decoding_gpt.grokking`` trains the shipped ``modadd-1l`` from
``pretrained/configs/modadd-1l.toml``, keeps snapshots across the run, measures it and
registers it (the same as ``python -m decoding_gpt.pretrained.build modadd-1l``). The
shipped run departs from the paper's full-batch training in two documented ways (see the
config): mini-batches of 512 pairs and lr 3e-3, so that it groks in minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from decoding_gpt.transformer import GPT, GPTConfig

NAME = "modadd-1l"
CONFIG_PATH = Path(__file__).resolve().parent / "pretrained" / "configs" / f"{NAME}.toml"
SNAPSHOTS_FILE = "snapshots.safetensors"
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
def evaluate(model: GPT, data: ModAddData) -> dict[str, float]:
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
        self.betas = tuple(self.betas)  # TOML gives a list
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
    """What :func:`train` returns: the curves and the snapshots (state dicts by step)."""

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


def train(
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
    start = time.perf_counter()
    for step in range(cfg.steps + 1):
        if step % cfg.log_every == 0 or step == cfg.steps:
            model.eval()
            m = evaluate(model, data)
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
    model.eval()
    history["train_time"] = time.perf_counter() - start
    history["snapshot_steps"] = sorted(run.snapshots)
    return run


def first_step_above(history: dict[str, Any], key: str, level: float) -> int | None:
    """The first logged step at which ``history[key] > level`` (None if never)."""
    return next((s for s, v in zip(history["step"], history[key], strict=True) if v > level), None)


# --------------------------------------------------------------------------- snapshots


def save_snapshots(path: str | Path, snapshots: dict[int, dict[str, Tensor]]) -> None:
    """One safetensors file with keys ``step_{n}/{parameter}`` (float16)."""
    flat = {
        f"step_{step}/{name}": tensor.to(torch.float16).contiguous()
        for step, state in sorted(snapshots.items())
        for name, tensor in state.items()
    }
    save_file(flat, str(path))


def read_snapshots(path: str | Path) -> dict[int, dict[str, Tensor]]:
    """Inverse of :func:`save_snapshots` (state dicts in float32, by step)."""
    path = Path(path)
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    out: dict[int, dict[str, Tensor]] = {}
    for key, tensor in flat.items():
        head, _, name = key.partition("/")
        if not head.startswith("step_") or not head[5:].isdigit() or not name:
            raise ValueError(f"{path}: unexpected key {key!r}; expected 'step_<n>/<parameter>'")
        out.setdefault(int(head[5:]), {})[name] = tensor.float()
    return dict(sorted(out.items()))


def load_snapshots(
    directory: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[list[int], list[GPT]]:
    """The training snapshots of a run as ``(steps, models)`` in step order.

    ``directory`` defaults to the shipped ``modadd-1l`` (whose files are checked against
    the registry's sha256 first); each snapshot is a :class:`GPT` in eval mode.
    """
    from decoding_gpt.checkpoint import read_config

    if directory is None:
        from decoding_gpt.pretrained.registry import model_dir, verify

        verify(NAME)
        directory = model_dir(NAME)
    directory = Path(directory)
    cfg = GPTConfig.from_dict(read_config(directory)["model"])
    steps, models = [], []
    for step, state in read_snapshots(directory / SNAPSHOTS_FILE).items():
        model = GPT(cfg)
        expected = set(model.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"{directory / SNAPSHOTS_FILE}: step {step} has parameters "
                f"{sorted(set(state) ^ expected)[:6]} that do not match the config"
            )
        model.load_state_dict(state)
        steps.append(step)
        models.append(model.to(device).eval())
    return steps, models


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
    out = evaluate(model, data)
    out["key_frequency_energy"] = key_frequency_energy(model.embed.W_E[:p].detach().cpu(), keys)
    out["excluded_loss"] = excluded_loss(logits, data.labels, data.train_idx, keys)
    out["restricted_loss"] = restricted_loss(logits, data.labels, data.test_idx, keys)
    out["weight_norm_sq"] = weight_norm_sq(model)
    return out


# --------------------------------------------------------------------------- build (CLI)


def read_run_config(
    path: str | Path = CONFIG_PATH, overrides: list[str] | None = None
) -> tuple[GPTConfig, dict[str, Any], GrokTrainConfig]:
    """``(model config, data settings, training config)`` from a TOML file + overrides.

    ``[data]`` holds ``p``, ``train_fraction`` and ``seed``; ``[model]`` any
    :class:`GPTConfig` field (``d_vocab = p + 1`` and ``n_ctx = 3`` are derived);
    ``[train]`` the fields of :class:`GrokTrainConfig`.
    """
    from decoding_gpt.train import load_config

    raw = load_config(path, overrides)
    data = {"p": 113, "train_fraction": 0.3, "seed": 0, **raw.get("data", {})}
    unknown = sorted(set(data) - {"p", "train_fraction", "seed"})
    if unknown:
        raise ValueError(f"{path}: unknown [data] keys {unknown}; known: p, train_fraction, seed")
    train = raw.get("train", {})
    unknown = sorted(set(train) - {f.name for f in fields(GrokTrainConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown [train] keys {unknown}")
    return model_config(data["p"], **raw.get("model", {})), data, GrokTrainConfig(**train)


def dataset_from_config(path: str | Path = CONFIG_PATH) -> ModAddData:
    """The split the shipped model was trained on."""
    _, data, _ = read_run_config(path)
    return make_dataset(data["p"], data["train_fraction"], data["seed"])


def build(out: Path, overrides: list[str], log: Callable[[str], None] | None = print) -> Path:
    """Train from the config and write a checkpoint (+ ``snapshots.safetensors``) to ``out``."""
    from decoding_gpt.checkpoint import save_checkpoint
    from decoding_gpt.device import set_seed

    model_cfg, data_cfg, train_cfg = read_run_config(CONFIG_PATH, overrides)
    data = make_dataset(data_cfg["p"], data_cfg["train_fraction"], data_cfg["seed"])
    set_seed(train_cfg.seed)
    model = GPT(model_cfg)
    run = train(model, data, train_cfg, log=log)
    # key frequencies of the final embedding, then every snapshot measured against them
    keys = key_frequencies(frequency_norms(model.embed.W_E[: data.p].detach()))
    snaps = []
    for step in run.snapshots:
        snap = GPT(model_cfg)
        snap.load_state_dict({k: v.float() for k, v in run.snapshots[step].items()})
        snaps.append({"step": step, **progress_measures(snap.eval(), data, keys)})
    run.history["key_frequencies"] = keys
    run.history["snapshots"] = snaps
    train_section = {"data": data_cfg, **asdict(train_cfg)}
    save_checkpoint(out, model, model_cfg, train_config=train_section, metrics=run.history)
    save_snapshots(out / SNAPSHOTS_FILE, run.snapshots)
    return out


def measure(checkpoint: Path) -> dict[str, Any]:
    """Headline metrics of a built run (what the registry and the card record)."""
    from decoding_gpt.checkpoint import load_checkpoint, read_config
    from decoding_gpt.pretrained.build import machine_description

    model, _, history = load_checkpoint(checkpoint, GPT, GPTConfig, device="cpu")
    data_cfg = read_config(checkpoint)["train"]["data"]
    data = make_dataset(data_cfg["p"], data_cfg["train_fraction"], data_cfg["seed"])
    metrics: dict[str, Any] = {k: round(v, 4) for k, v in evaluate(model, data).items()}
    metrics.update(
        p=data.p,
        n_train_pairs=len(data.train_idx),
        n_params=sum(p.numel() for p in model.parameters()),
        steps=history["step"][-1],
        step_test_accuracy_above_0_99=first_step_above(history, "test_accuracy", 0.99),
        step_train_accuracy_above_0_99=first_step_above(history, "train_accuracy", 0.99),
        key_frequencies=", ".join(map(str, history["key_frequencies"])),
        n_snapshots=len(history["snapshot_steps"]),
        train_wall_s=round(history["train_time"], 1),
        machine=machine_description(),
    )
    return metrics


def evaluate_shipped(model: GPT) -> dict[str, float]:
    """Train/test loss and accuracy on the split of ``configs/modadd-1l.toml`` (the
    ``build.SPECS`` evaluation: re-measured from the committed weights by the tests)."""
    data = dataset_from_config()
    if model.cfg.d_vocab != data.p + 1:
        raise ValueError(f"model has d_vocab={model.cfg.d_vocab}, the config needs {data.p + 1}")
    return {k: round(v, 4) for k, v in evaluate(model, data).items()}


def write_card(checkpoint: Path, metrics: dict[str, Any]) -> str:
    """Markdown model card (conventions of ``decoding_gpt.pretrained.build.write_card``)."""
    from decoding_gpt.checkpoint import read_config, read_metrics
    from decoding_gpt.pretrained.build import SPECS

    spec, config, history = SPECS[NAME], read_config(checkpoint), read_metrics(checkpoint)
    train_cfg = config["train"]
    snapshot_rows = [
        f"| {s['step']} | {s['train_accuracy']:.3f} | {s['test_accuracy']:.3f} | "
        f"{s['test_loss']:.3f} | {s['key_frequency_energy']:.3f} | {s['excluded_loss']:.3f} | "
        f"{s['restricted_loss']:.3f} | {s['weight_norm_sq']:.0f} |"
        for s in history["snapshots"]
    ]
    size = train_cfg["batch_size"]
    batch = "full batch" if size is None else f"shuffled mini-batches of {size} pairs"
    lines = [
        f"# {NAME}", "", spec.description, "",
        f"Lecture {spec.lecture}. Required: {spec.requirements}.", "",
        "## Measured", "", "| metric | value |", "|---|---|",
        *[f"| {key} | {value} |" for key, value in metrics.items()], "",
        "## Model config", "", "```json", json.dumps(config["model"], indent=2), "```", "",
        "## Data and training", "",
        f"- all {train_cfg['data']['p']}^2 pairs `a b =` -> `(a + b) mod p`; a seeded random "
        f"{train_cfg['data']['train_fraction']:.0%} of them train, the rest test",
        f"- AdamW, {batch}, lr {train_cfg['lr']}, weight decay {train_cfg['weight_decay']}, "
        f"betas {tuple(train_cfg['betas'])}, {train_cfg['steps']} steps",
        f"- config: `decoding_gpt/pretrained/configs/{NAME}.toml`",
        f"- wall time {metrics['train_wall_s']:.0f} s on {metrics['machine']} "
        "(the machine ran other jobs at the same time: an upper bound)",
        f"- training curves: `metrics.json` ({len(history['step'])} logged steps: train/test "
        "loss and accuracy, sum of squared weights)",
        f"- snapshots: `{SNAPSHOTS_FILE}` (float16, keys `step_<n>/<parameter>`; "
        "`decoding_gpt.grokking.load_snapshots()`)", "",
        "## Progress measures at the snapshots", "",
        f"Key frequencies (of the final `W_E`): {metrics['key_frequencies']}. Energy: share of "
        "`W_E`'s non-constant squared Fourier norm at them; excluded loss: train loss without "
        "their `(a+b)` components; restricted loss: test loss with only those components.", "",
        "| step | train acc | test acc | test loss | key energy | excluded loss | "
        "restricted loss | sum w^2 |",
        "|---|---|---|---|---|---|---|---|", *snapshot_rows, "",
        "## Reproduce", "", "```bash",
        f"OMP_NUM_THREADS=1 python -m decoding_gpt.pretrained.build {NAME}", "```", "",
        "(the same as `python -m decoding_gpt.grokking`; one thread ran faster than two on the "
        "busy build machine). Training is seeded; the same machine, thread count and torch "
        "version give the same weights.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoding_gpt.grokking")
    parser.add_argument("--checkpoint", help="measure and register this existing run")
    parser.add_argument("--out", help=f"run directory (default runs/{NAME})")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-register", action="store_true", help="measure only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train ``modadd-1l`` from its config, measure it, write its card and register it."""
    args = build_parser().parse_args(argv)
    checkpoint = Path(args.checkpoint or args.out or Path("runs") / NAME)
    if not args.checkpoint:
        build(checkpoint, args.overrides)
    metrics = measure(checkpoint)
    print(json.dumps(metrics, indent=2))
    if not args.no_register:
        from decoding_gpt.pretrained.build import SPECS
        from decoding_gpt.pretrained.registry import register

        spec = SPECS[NAME]
        register(
            NAME, checkpoint, description=spec.description, lecture=spec.lecture,
            tokenizer=None, metrics=metrics, card=write_card(checkpoint, metrics),
            extra_files=(SNAPSHOTS_FILE,),
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
