r"""Training a language model: loss, schedule, optimiser, loop, evaluation, resume, DDP.

The model can be any ``nn.Module`` mapping tokens ``[batch, pos]`` to logits
``[batch, pos, d_vocab]``; the trainer only sees token arrays and logits.

**Loss.** For a sequence :math:`x_1..x_T` the model predicts :math:`x_{t+1}` from
:math:`x_{\le t}`, so the targets are the tokens shifted by one along the *sequence*
axis and the loss is the mean next-token cross-entropy

.. math:: L = -\frac{1}{B(T-1)} \sum_{b=1}^{B} \sum_{t=1}^{T-1}
          \log p_\theta(x_{b,t+1} \mid x_{b,1..t}).

(An old course notebook shifted along the *batch* axis, training each sequence to
predict another one; ``lm_loss`` checks shapes and the test suite checks the axis.)

**Schedule.** Linear warmup for ``warmup_steps`` steps, then cosine decay from ``lr`` to
``min_lr`` at step ``steps`` (see ``lr_at``).

**Optimiser.** AdamW. Weight decay pulls weights toward 0 by ``lr * weight_decay * w``
each step. It is applied to matrices (every parameter with >= 2 dimensions: attention and
MLP weights, embeddings, unembedding) and not to biases or LayerNorm gains and biases,
whose scale is meaningful in itself (as in nanoGPT and GPT-2).

**Batches.** The batch at step ``s`` is drawn from a generator seeded by ``(seed, s)``
alone. Hence resuming at step ``s`` replays exactly the batches an uninterrupted run
would see, and under data parallelism every rank draws the same global batch and keeps
its own slice of rows: ``world_size`` processes with ``batch_size / world_size`` rows
each compute, after DDP averages their gradients, the same update as one process.

**Data parallel.** Launch with ``torchrun --nproc_per_node=N -m decoding_gpt.train ...``;
``init_distributed`` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins the process
group (``nccl`` on CUDA, ``gloo`` on CPU). Rank 0 alone logs, shows progress and writes
checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from decoding_gpt.checkpoint import (
    load_optimizer,
    load_weights,
    read_metrics,
    read_trainer_state,
    save_checkpoint,
)
from decoding_gpt.device import get_device

DTYPES = ("auto", "fp32", "bf16")

# --------------------------------------------------------------------------- loss


def lm_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    loss_mask: Bool[Tensor, "batch pos"] | None = None,
) -> Tensor:
    """Mean next-token cross-entropy: position t predicts token t+1 (sequence axis).

    With ``loss_mask``, only the tokens marked ``True`` count as targets (the mean is
    over those): e.g. only the second copy of a repeated span, whose tokens copying
    can predict, while the random first copy would add gradient noise and no signal.
    Returns a scalar tensor. Raises ``ValueError`` on mismatched shapes or fewer than
    two positions (there is then nothing to predict).
    """
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            "lm_loss expects logits [batch, pos, d_vocab] and tokens [batch, pos]; got "
            f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}"
        )
    if tokens.shape[1] < 2:
        raise ValueError(f"lm_loss needs at least 2 positions, got {tokens.shape[1]}")
    pred = logits[:, :-1, :]  # predictions made at positions 0..T-2
    target = tokens[:, 1:]  # the tokens they predict, positions 1..T-1
    if loss_mask is not None:
        if loss_mask.shape != tokens.shape:
            raise ValueError(
                f"loss_mask {tuple(loss_mask.shape)} must match tokens {tuple(tokens.shape)}"
            )
        keep = loss_mask[:, 1:]
        if not keep.any():
            raise ValueError("loss_mask marks no target token (positions 1..T-1)")
        return F.cross_entropy(pred[keep].float(), target[keep])
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1))


# --------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all plain values, so it round-trips via JSON).

    ``steps`` optimiser steps of ``batch_size`` sequences (the *global* batch under
    DDP). ``eval_every``/``log_every``/``checkpoint_every`` are in steps; 0 turns that
    off (apart from the final evaluation and checkpoint). ``device=None`` means
    ``decoding_gpt.get_device()``. ``dtype="auto"`` autocasts to bfloat16 on CUDA and
    runs float32 elsewhere; ``compile`` wraps the model in ``torch.compile`` on CUDA only.
    ``fused`` steps AdamW with torch's fused kernel (CPU and CUDA); ``False`` uses its
    ``foreach`` implementation, which rounds like torch's plain for-loop AdamW (the
    shipped models' configs set it: their weights were trained with it).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 10
    log_every: int = 10
    seed: int = 0
    device: str | None = None
    dtype: str = "auto"
    compile: bool = False
    fused: bool = True
    checkpoint_every: int = 0
    out_dir: str | None = None
    init_from: str | None = None  # checkpoint whose weights start the run (CLI; curricula)

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        checks = {
            "steps >= 1": self.steps >= 1,
            "batch_size >= 1": self.batch_size >= 1,
            "lr > 0": self.lr > 0,
            "0 <= min_lr <= lr": 0 <= self.min_lr <= self.lr,
            "warmup_steps >= 0": self.warmup_steps >= 0,
            "weight_decay >= 0": self.weight_decay >= 0,
            "0 <= betas < 1": all(0 <= b < 1 for b in self.betas),
            "grad_clip >= 0 (0 = no clipping)": self.grad_clip >= 0,
            "eval_every, log_every, checkpoint_every >= 0": min(
                self.eval_every, self.log_every, self.checkpoint_every
            )
            >= 0,
            "eval_batches >= 1": self.eval_batches >= 1,
            f"dtype in {DTYPES}": self.dtype in DTYPES,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid TrainConfig: need {', '.join(failed)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    r"""Learning rate for the optimiser step with 0-based index ``step``.

    Warmup, for ``step < warmup_steps``: :math:`\eta = \eta_{max} (s+1)/W`, so the last
    warmup step reaches :math:`\eta_{max}`. Then cosine decay over the remaining steps,
    with progress :math:`p = (s - W)/(S - W)`:
    :math:`\eta = \eta_{min} + \tfrac12(\eta_{max} - \eta_{min})(1 + \cos \pi p)`,
    reaching :math:`\eta_{min}` at ``step == steps`` (and staying there after).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of >= 2 dims only (see module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    device = params[0].device.type if params else "cpu"
    # The fused kernel reads and writes each parameter, gradient and moment once per step.
    # The other implementations run ~10 separate ops per tensor, and our TransformerLens-
    # shaped GPT (separate W_Q/K/V, biases, untied W_U) has ~2.6x as many tensors as
    # nanoGPT: at nanoGPT's CPU config that was 7.5 ms of an 80 ms step (foreach), against
    # 2.7 ms fused. Fused rounds differently from the for-loop, hence the ``fused`` switch.
    if cfg.fused and device in ("cpu", "cuda"):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)


# --------------------------------------------------------------------------- data


TokenData = np.ndarray | Tensor


def _step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends on (seed, step, stream) only: the key to exact resume."""
    # SeedSequence mixes the three numbers, so distinct triples give unrelated streams.
    key = np.random.SeedSequence([seed, stream, step]).generate_state(2, np.uint64)[0]
    return torch.Generator().manual_seed(int(key) >> 1)  # manual_seed needs < 2**63


def sample_batch(
    data: TokenData, batch_size: int, n_ctx: int, generator: torch.Generator
) -> Int[Tensor, "batch n_ctx"]:
    """``batch_size`` random windows of ``n_ctx`` tokens (int64, on CPU).

    ``data`` is either one token stream ``[n_tokens]`` (windows start anywhere) or a
    stack of documents ``[n_docs, doc_len]`` (a window lies inside one document; with
    ``doc_len == n_ctx`` a batch is a random set of whole documents).
    """
    arr = torch.as_tensor(data) if not isinstance(data, Tensor) else data
    return arr[_window_index(arr.shape, batch_size, n_ctx, generator)].long()


def _window_index(
    shape: torch.Size, batch_size: int, n_ctx: int, generator: torch.Generator
) -> tuple[Tensor, ...]:
    """Index of ``batch_size`` random windows into data of ``shape`` (see ``sample_batch``).

    One index for the tokens and, with the same draws, for their loss mask.
    """
    if len(shape) not in (1, 2):
        raise ValueError(f"token data must be 1-D or 2-D, got shape {tuple(shape)}")
    length = shape[-1]
    if length < n_ctx:
        raise ValueError(f"token data has sequences of {length} tokens, fewer than n_ctx={n_ctx}")
    starts = torch.randint(0, length - n_ctx + 1, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(n_ctx)
    if len(shape) == 1:
        return (offsets,)
    rows = torch.randint(0, shape[0], (batch_size,), generator=generator)
    return rows[:, None], offsets


def as_token_tensor(data: TokenData) -> Tensor:
    """Token ids as a CPU tensor (uint16 arrays become int32: torch indexes those fine)."""
    if isinstance(data, Tensor):
        return data.cpu()
    arr = np.asarray(data)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"token data must hold integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Backend ``nccl`` when the run is on CUDA, else ``gloo``. A no-op in a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = get_device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank)


def dist_info() -> DistInfo:
    """Rank and world size of the current process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistInfo(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    return DistInfo()


def _mean_across_ranks(value: Tensor, info: DistInfo) -> float:
    value = value.detach()
    if info.world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value /= info.world_size
    return float(value)


# --------------------------------------------------------------------------- loop


def _resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    device = get_device(cfg.device)
    if device.type == "cuda" and info.world_size > 1:
        device = torch.device("cuda", info.local_rank)
    return device


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16" and device.type != "cuda":
        raise ValueError("dtype='bf16' autocast is only used on CUDA; use 'auto' or 'fp32'")
    if dtype in ("auto", "bf16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _n_ctx_of(model: nn.Module, n_ctx: int | None) -> int:
    if n_ctx is not None:
        return n_ctx
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "n_ctx"):
        raise ValueError("pass n_ctx, or give the model a .cfg with an n_ctx field")
    return int(cfg.n_ctx)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TokenData,
    *,
    batch_size: int,
    n_ctx: int | None = None,
    n_batches: int = 10,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str = "auto",
) -> float:
    """Mean ``lm_loss`` over ``n_batches`` seeded random batches (the same ones every call).

    Under DDP each rank scores its slice of every batch and the mean is averaged
    across ranks. The model is put back in the train/eval mode it was in.
    """
    info = dist_info()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_ctx = _n_ctx_of(model, n_ctx)
    data = as_token_tensor(data)
    local = _local_rows(batch_size, info)
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for i in range(n_batches):
        # stream 1 and a step index of its own keep eval batches apart from training ones
        batch = sample_batch(data, batch_size, n_ctx, _step_generator(seed, i, stream=1))
        tokens = batch[local].to(device, non_blocking=True)
        with _autocast(device, dtype):
            total += lm_loss(model(tokens), tokens)
    model.train(was_training)
    return _mean_across_ranks(total / n_batches, info)


def _local_rows(batch_size: int, info: DistInfo) -> slice:
    if batch_size % info.world_size:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by the world size {info.world_size}"
        )
    per_rank = batch_size // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def new_history() -> dict[str, Any]:
    """Empty metrics history: per-log columns, per-eval columns, and run totals."""
    return {
        "step": [],
        "train_loss": [],
        "lr": [],
        "tokens_seen": [],
        "elapsed": [],
        "val_step": [],
        "val_loss": [],
        "train_time": 0.0,
        "tokens_per_s": 0.0,
    }


@dataclass
class _State:
    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # wall-clock seconds, including evaluation and checkpoints
    train_time: float = 0.0  # seconds spent in training steps only (for tokens/s)
    history: dict[str, Any] = field(default_factory=new_history)


def train(
    model: nn.Module,
    train_data: TokenData,
    val_data: TokenData | None,
    cfg: TrainConfig,
    callback: Callable[[int, dict[str, Any]], bool | None] | None = None,
    *,
    model_config: Any = None,
    n_ctx: int | None = None,
    resume_from: str | os.PathLike | None = None,
    loss_mask: np.ndarray | Tensor | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place and return its metrics history.

    Args:
        model: maps tokens ``[batch, pos]`` to logits ``[batch, pos, d_vocab]``.
        train_data, val_data: token ids, one stream ``[n]`` or documents ``[n_docs, len]``
            (numpy, e.g. uint16, or a tensor). ``val_data=None`` skips evaluation.
        cfg: the hyper-parameters.
        callback: called as ``callback(step, history)`` after every step (``step`` =
            steps done); returning ``True`` stops training after that step (under DDP
            it must return the same answer on every rank).
        model_config: written to ``config.json`` in checkpoints (default ``model.cfg``).
        n_ctx: window length (default ``model.cfg.n_ctx``).
        resume_from: a checkpoint directory with trainer state; training continues
            from its step and reaches exactly the weights of an uninterrupted run.
        loss_mask: booleans shaped like ``train_data``; if given, only the marked
            tokens are training targets (``lm_loss``). Evaluation stays unmasked.

    Returns:
        The history: at every ``log_every`` step (and the last) ``step``,
        ``train_loss`` (that step's batch), ``lr``, ``tokens_seen``, ``elapsed``; at
        every evaluation ``val_step``, ``val_loss``; and the totals ``train_time`` and
        ``tokens_per_s``. Checkpoints go to ``cfg.out_dir`` every ``checkpoint_every``
        steps and at the end.
    """
    info = dist_info()
    device = _resolve_device(cfg, info)
    n_ctx = _n_ctx_of(model, n_ctx)
    model_config = model_config if model_config is not None else getattr(model, "cfg", None)
    train_tokens = as_token_tensor(train_data)
    val_tokens = as_token_tensor(val_data) if val_data is not None else None
    if loss_mask is not None:
        loss_mask = torch.as_tensor(loss_mask, dtype=torch.bool)
        if loss_mask.shape != train_tokens.shape:
            raise ValueError(
                f"loss_mask {tuple(loss_mask.shape)} must match the training data "
                f"{tuple(train_tokens.shape)}"
            )
    local = _local_rows(cfg.batch_size, info)

    model.to(device)
    model.train()
    optimizer = make_optimizer(model, cfg)
    state = _State()
    if resume_from is not None:
        state = _restore(Path(resume_from), model, optimizer)

    step_model = model
    if cfg.compile and device.type == "cuda":
        step_model = torch.compile(step_model)
    if info.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)

    def run_eval() -> None:
        if val_tokens is None:
            return
        loss = evaluate(
            model,
            val_tokens,
            batch_size=cfg.batch_size,
            n_ctx=n_ctx,
            n_batches=cfg.eval_batches,
            seed=cfg.seed,
            device=device,
            dtype=cfg.dtype,
        )
        state.history["val_step"].append(state.step)
        state.history["val_loss"].append(loss)

    def save() -> None:
        if cfg.out_dir is None or not info.is_main:
            return
        trainer_state = {
            "step": state.step,
            "tokens_seen": state.tokens_seen,
            "elapsed": state.elapsed,
            "train_time": state.train_time,
        }
        save_checkpoint(
            cfg.out_dir,
            model,
            model_config,
            train_config=cfg,
            metrics=state.history,
            optimizer=optimizer,
            trainer_state=trainer_state,
        )

    if cfg.eval_every and state.step == 0:
        run_eval()  # the loss before training: about ln(d_vocab) for a fresh model
    tokens_per_step = cfg.batch_size * n_ctx
    # TQDM_DISABLE=1 turns the bar off. Passed explicitly: tqdm's notebook widget ignores
    # the environment variable and would put a widget into every executed notebook.
    env_off = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    bar = tqdm(
        total=cfg.steps, initial=state.step, desc="train", disable=env_off or not info.is_main
    )
    clock = time.perf_counter() - state.elapsed
    while state.step < cfg.steps:
        t0 = time.perf_counter()
        lr = lr_at(state.step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = _window_index(
            train_tokens.shape, cfg.batch_size, n_ctx, _step_generator(cfg.seed, state.step)
        )
        tokens = train_tokens[index][local].long().to(device, non_blocking=True)
        mask = None if loss_mask is None else loss_mask[index][local].to(device)
        with _autocast(device, cfg.dtype):
            loss = lm_loss(step_model(tokens), tokens, mask)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += tokens_per_step
        last = state.step == cfg.steps
        if device.type == "cuda" and (last or _due(state.step, cfg.log_every)):
            torch.cuda.synchronize()  # so train_time counts finished work
        state.train_time += time.perf_counter() - t0

        if last or _due(state.step, cfg.log_every):
            state.elapsed = time.perf_counter() - clock
            train_loss = _mean_across_ranks(loss, info)  # .item(): syncs only at log steps
            _log(state, train_loss, lr)
            bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
        if last or _due(state.step, cfg.eval_every):
            run_eval()
        state.elapsed = time.perf_counter() - clock
        state.history["train_time"] = state.train_time
        state.history["tokens_per_s"] = state.tokens_seen / max(state.train_time, 1e-9)
        if last or _due(state.step, cfg.checkpoint_every):
            save()
        bar.update(1)
        if callback is not None and callback(state.step, state.history):
            break
    bar.close()
    return state.history


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _log(state: _State, train_loss: float, lr: float) -> None:
    h = state.history
    h["step"].append(state.step)
    h["train_loss"].append(train_loss)
    h["lr"].append(lr)
    h["tokens_seen"].append(state.tokens_seen)
    h["elapsed"].append(state.elapsed)


def _restore(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> _State:
    """Load weights, optimiser and counters written by ``train``'s checkpoints."""
    trainer_state = read_trainer_state(directory)
    load_weights(directory / "model.safetensors", model)
    load_optimizer(directory, optimizer, trainer_state["optimizer"])
    history = new_history()
    history.update(read_metrics(directory))
    return _State(
        step=int(trainer_state["step"]),
        tokens_seen=int(trainer_state.get("tokens_seen", 0)),
        elapsed=float(trainer_state.get("elapsed", 0.0)),
        train_time=float(trainer_state.get("train_time", 0.0)),
        history=history,
    )
