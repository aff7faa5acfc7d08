r"""Training a language model: loss, schedule, optimiser, loop, evaluation, resume, DDP.

The model can be any ``nn.Module`` mapping tokens ``[batch, pos]`` to logits
``[batch, pos, d_vocab]``; the trainer only sees token arrays and logits.

**Loss.** For a sequence :math:`x_1..x_T` the model predicts :math:`x_{t+1}` from
:math:`x_{\le t}`, so the targets are the tokens shifted by one along the *sequence*
axis and the loss is the mean next-token cross-entropy

.. math:: L = -\frac{1}{B(T-1)} \sum_{b=1}^{B} \sum_{t=1}^{T-1}
          \log p_\theta(x_{b,t+1} \mid x_{b,1..t}).

(An old course notebook shifted along the *batch* axis, training each sequence to
predict another one; ``next_token_loss`` checks shapes and the test suite checks the axis.)

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

**Data parallel.** Launch with ``torchrun --nproc_per_node=N -m decoding_gpt.tools.train ...``;
``init_distributed`` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins the process
group (``nccl`` on CUDA, ``gloo`` on CPU). Rank 0 alone logs, shows progress and writes
checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from jaxtyping import Bool, Int
from torch import Tensor, nn

from decoding_gpt.checkpoint import (
    config_to_dict,
    load_optimizer,
    load_weights,
    read_config,
    read_metrics,
    read_trainer_state,
    save_checkpoint,
)
from decoding_gpt.device import get_device, progress_bar
from decoding_gpt.transformer import next_token_loss

DTYPES = ("auto", "fp32", "bf16")

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
    init_heads: tuple[int, ...] | None = None  # where init_from's heads go if it has fewer

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.init_heads is not None:
            self.init_heads = tuple(int(h) for h in self.init_heads)
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
        if self.init_heads is not None:
            d["init_heads"] = list(self.init_heads)
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


def _autocast(device: torch.device, dtype: str) -> AbstractContextManager[Any]:
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
    """Mean ``next_token_loss`` over ``n_batches`` seeded random batches (the same ones every call).

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
            total += next_token_loss(model(tokens), tokens)
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
    """The counters a checkpoint stores and ``resume_from`` restores, with the history."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # wall-clock seconds, including evaluation and checkpoints
    train_time: float = 0.0  # seconds spent in training steps only (for tokens/s)
    history: dict[str, Any] = field(default_factory=new_history)


@dataclass
class _Run:
    """What ``train`` sets up once and its helpers share (built by ``_setup``)."""

    cfg: TrainConfig
    model: nn.Module  # the module that is evaluated and saved
    step_model: nn.Module  # the same weights, maybe compiled and wrapped in DDP: takes steps
    optimizer: torch.optim.Optimizer
    state: _State
    info: DistInfo
    device: torch.device
    n_ctx: int
    rows: slice  # this rank's rows of every global batch
    train_tokens: Tensor
    val_tokens: Tensor | None
    loss_mask: Tensor | None
    model_config: Any
    clock: float = 0.0  # time.perf_counter() at which ``elapsed`` was 0
    bar: Any = None  # tqdm progress bar, started with the clock (``_start_clock``)


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
            tokens are training targets (``next_token_loss``). Evaluation stays unmasked.

    Returns:
        The history: at every ``log_every`` step (and the last) ``step``,
        ``train_loss`` (that step's batch), ``lr``, ``tokens_seen``, ``elapsed``; at
        every evaluation ``val_step``, ``val_loss``; and the totals ``train_time`` and
        ``tokens_per_s``. Checkpoints go to ``cfg.out_dir`` every ``checkpoint_every``
        steps and at the end.
    """
    run = _setup(model, train_data, val_data, cfg, model_config, n_ctx, resume_from, loss_mask)
    state, optimizer = run.state, run.optimizer
    if cfg.eval_every and state.step == 0:
        _evaluate_val(run)  # the loss before training: about ln(d_vocab) for a fresh model
    _start_clock(run)
    while state.step < cfg.steps:
        t0 = time.perf_counter()
        lr = lr_at(state.step, cfg)  # linear warmup, then cosine decay
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, mask = _get_batch(run, state.step)  # depends on (seed, step) only
        with _autocast(run.device, cfg.dtype):
            loss = next_token_loss(run.step_model(tokens), tokens, mask)
        loss.backward()  # under DDP this also averages the gradients across ranks
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _count_step(run, t0)
        _log_eval_checkpoint(run, loss, lr)
        if callback is not None and callback(state.step, state.history):
            break
    run.bar.close()
    return state.history


# --------------------------------------------------------------------------- loop helpers


def _setup(
    model: nn.Module,
    train_data: TokenData,
    val_data: TokenData | None,
    cfg: TrainConfig,
    model_config: Any,
    n_ctx: int | None,
    resume_from: str | os.PathLike | None,
    loss_mask: np.ndarray | Tensor | None,
) -> _Run:
    """Everything before the first step: device, data, optimiser, resume, wrappers.

    On resume, weights, optimiser moments and counters come from the checkpoint
    (``_restore``) *before* ``torch.compile`` / DDP wrap the model, so every rank starts
    from the same restored weights.
    """
    info = dist_info()
    device = _resolve_device(cfg, info)
    n_ctx = _n_ctx_of(model, n_ctx)
    model_config = model_config if model_config is not None else getattr(model, "cfg", None)
    train_tokens = as_token_tensor(train_data)
    val_tokens = as_token_tensor(val_data) if val_data is not None else None
    mask = _as_loss_mask(loss_mask, train_tokens)
    rows = _local_rows(cfg.batch_size, info)

    model.to(device)
    model.train()
    optimizer = make_optimizer(model, cfg)
    state = _State()
    if resume_from is not None:
        _check_resumable(Path(resume_from), cfg, model_config)
        state = _restore(Path(resume_from), model, optimizer)
    return _Run(
        cfg=cfg,
        model=model,
        step_model=_wrap_for_steps(model, cfg, device, info),
        optimizer=optimizer,
        state=state,
        info=info,
        device=device,
        n_ctx=n_ctx,
        rows=rows,
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        loss_mask=mask,
        model_config=model_config,
    )


def _as_loss_mask(loss_mask: np.ndarray | Tensor | None, train_tokens: Tensor) -> Tensor | None:
    """``loss_mask`` as a bool tensor, checked to have the training data's shape."""
    if loss_mask is None:
        return None
    mask = torch.as_tensor(loss_mask, dtype=torch.bool)
    if mask.shape != train_tokens.shape:
        raise ValueError(
            f"loss_mask {tuple(mask.shape)} must match the training data "
            f"{tuple(train_tokens.shape)}"
        )
    return mask


def _wrap_for_steps(
    model: nn.Module, cfg: TrainConfig, device: torch.device, info: DistInfo
) -> nn.Module:
    """The module the steps call: ``torch.compile``-d (CUDA only), in DDP if world > 1.

    DDP's ``backward`` all-reduces (averages) the gradients, so every rank then takes
    the same optimiser step on the same weights. Evaluation and checkpoints use the
    unwrapped ``model``: the wrappers share its parameters.
    """
    step_model = model
    if cfg.compile and device.type == "cuda":
        # cast: torch.compile(module) returns an OptimizedModule, typed as a plain callable
        step_model = cast(nn.Module, torch.compile(step_model))
    if info.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(step_model, device_ids=ids)
    return step_model


def _start_clock(run: _Run) -> None:
    """Start the wall clock (a resumed run continues its own) and the progress bar.

    The bar shows on rank 0 only; ``TQDM_DISABLE=1`` turns it off
    (:func:`decoding_gpt.device.progress_bar`).
    """
    run.bar = progress_bar(
        total=run.cfg.steps, initial=run.state.step, desc="train", disable=not run.info.is_main
    )
    run.clock = time.perf_counter() - run.state.elapsed


def _get_batch(
    run: _Run, step: int
) -> tuple[Int[Tensor, "rows n_ctx"], Bool[Tensor, "rows n_ctx"] | None]:
    """This rank's rows of the global batch of ``step`` (and their loss mask), on device.

    The windows are drawn from ``_step_generator(seed, step)``: a resumed run replays
    the batches of an uninterrupted one, and all ranks draw the same global batch.
    """
    generator = _step_generator(run.cfg.seed, step)
    index = _window_index(run.train_tokens.shape, run.cfg.batch_size, run.n_ctx, generator)
    tokens = run.train_tokens[index][run.rows].long().to(run.device, non_blocking=True)
    mask = None if run.loss_mask is None else run.loss_mask[index][run.rows].to(run.device)
    return tokens, mask


def _count_step(run: _Run, started: float) -> None:
    """Count one finished step: ``step``, ``tokens_seen`` (global) and ``train_time``.

    CUDA runs kernels asynchronously; at the steps that log (where ``.item()`` waits
    anyway) we wait for them, so ``train_time`` counts finished work.
    """
    state = run.state
    state.step += 1
    state.tokens_seen += run.cfg.batch_size * run.n_ctx
    if run.device.type == "cuda" and _due_now(run, run.cfg.log_every):
        torch.cuda.synchronize()
    state.train_time += time.perf_counter() - started


def _log_eval_checkpoint(run: _Run, loss: Tensor, lr: float) -> None:
    """After a step: log, evaluate and checkpoint when due, and always after the last.

    Logging reads the loss with ``.item()`` (and averages it across ranks), which waits
    for the GPU: that is why it happens every ``log_every`` steps and not every step.
    """
    cfg, state = run.cfg, run.state
    if _due_now(run, cfg.log_every):
        _log_step(run, loss, lr)
    if _due_now(run, cfg.eval_every):
        _evaluate_val(run)
    state.elapsed = time.perf_counter() - run.clock
    state.history["train_time"] = state.train_time
    state.history["tokens_per_s"] = state.tokens_seen / max(state.train_time, 1e-9)
    if _due_now(run, cfg.checkpoint_every):
        _save(run)
    run.bar.update(1)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _due_now(run: _Run, every: int) -> bool:
    """Whether the step just done is a multiple of ``every`` (> 0) or the last one."""
    return run.state.step == run.cfg.steps or _due(run.state.step, every)


def _log_step(run: _Run, loss: Tensor, lr: float) -> None:
    """Append the step, its loss (mean over ranks), lr, tokens and time to the history."""
    state, h = run.state, run.state.history
    state.elapsed = time.perf_counter() - run.clock
    train_loss = _mean_across_ranks(loss, run.info)
    h["step"].append(state.step)
    h["train_loss"].append(train_loss)
    h["lr"].append(lr)
    h["tokens_seen"].append(state.tokens_seen)
    h["elapsed"].append(state.elapsed)
    run.bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")


def _evaluate_val(run: _Run) -> None:
    """Append ``evaluate`` on the validation data (same batches every time) to the history.

    Does nothing without validation data.
    """
    if run.val_tokens is None:
        return
    loss = evaluate(
        run.model,
        run.val_tokens,
        batch_size=run.cfg.batch_size,
        n_ctx=run.n_ctx,
        n_batches=run.cfg.eval_batches,
        seed=run.cfg.seed,
        device=run.device,
        dtype=run.cfg.dtype,
    )
    run.state.history["val_step"].append(run.state.step)
    run.state.history["val_loss"].append(loss)


def _save(run: _Run) -> None:
    """Checkpoint to ``cfg.out_dir`` (rank 0 only): what ``_restore`` needs to resume.

    Weights, optimiser moments, metrics and the counters of ``_State``; the batches
    need no state, as they depend on ``(seed, step)`` only.
    """
    if run.cfg.out_dir is None or not run.info.is_main:
        return
    state = run.state
    trainer_state = {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "elapsed": state.elapsed,
        "train_time": state.train_time,
    }
    save_checkpoint(
        run.cfg.out_dir,
        run.model,
        run.model_config,
        train_config=run.cfg,
        metrics=state.history,
        optimizer=run.optimizer,
        trainer_state=trainer_state,
    )


# What fixes a run's trajectory besides its length: a resumed run must keep these, or it
# is a different run (and the optimiser state it loads would override the new values).
RESUME_FIXED_FIELDS = (
    "batch_size",
    "seed",
    "lr",
    "min_lr",
    "warmup_steps",
    "weight_decay",
    "betas",
    "grad_clip",
)


def _check_resumable(directory: Path, cfg: TrainConfig, model_config: Any) -> None:
    """Refuse to resume when the model or the run's trajectory differs from the checkpoint's.

    ``steps`` may change (continuing a finished run), as may logging, evaluation and
    output settings. Without this check, ``weight_decay`` and ``betas`` would silently
    come from the checkpoint's optimiser state and a new ``batch_size`` or ``seed`` would
    silently draw other batches.
    """
    saved = read_config(directory)
    problems = []
    if model_config is not None:
        current = json.loads(json.dumps(config_to_dict(model_config)))
        problems += [
            f"model.{key}: checkpoint {saved['model'][key]!r}, this run {value!r}"
            for key, value in current.items()
            if key in saved["model"] and saved["model"][key] != value
        ]
    saved_train = saved.get("train") or {}
    current_train = json.loads(json.dumps(cfg.to_dict()))
    problems += [
        f"train.{key}: checkpoint {saved_train[key]!r}, this run {current_train[key]!r}"
        for key in RESUME_FIXED_FIELDS
        if key in saved_train and saved_train[key] != current_train[key]
    ]
    if problems:
        raise ValueError(
            f"cannot resume from {directory}: it is a different run ({'; '.join(problems)}). "
            "Resume with the checkpoint's settings, or start a new run from its weights "
            "(init_from)."
        )


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
