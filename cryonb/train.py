"""One training loop for every model in the project: AMP, atomic checkpoints, resume, DDP, NaN guard, logs.

Usage::

    cfg = TrainConfig(epochs=50, lr=5e-4, optimizer="sgd", scheduler="cosine")
    history = fit(model, loss_fn, train_batches, cfg, seed=0, device="cpu", checkpoint_dir=Path("runs/x"),
                  validate=validate, select_metric="val_acc", best_kind="rb3d")

- ``loss_fn(model, batch) -> dict`` with a scalar tensor ``"loss"`` (other entries are logged as floats).
- ``train_batches(epoch, generator) -> Iterable[batch]``: the generator is seeded from ``seed`` and the
  epoch, so a resumed run sees exactly the batches an uninterrupted run would.
- ``validate(model) -> dict[str, float]`` after each epoch; with ``select_metric`` the best model's weights
  are kept (``history.best_state``) and, with ``best_kind``, written to ``best.pt``.
- ``on_step_end(model, batch, outputs)`` runs after each optimiser step (MoCo's momentum update and queue).

Several independent models (a sweep's runs, seeds, variants) train together with :func:`fit_many`: each keeps
its own seed, data order and augmentation stream, dropout stream, optimiser state, schedule, best epoch and
files, exactly as ``fit`` would give it; see :mod:`cryonb.batched` for the two executors (CPU: models side by
side on worker threads; GPU: one vmapped step for a group of equal models) and the measurements behind them.
Both share this module's per-model code (:class:`_Run`, ``_train_epoch``, ``_end_epoch``).

A checkpoint (``last.pt``) is written atomically after each epoch with model, optimiser, scheduler, AMP scaler,
epoch and history; ``fit`` resumes from it. With a time budget (``cryonb.budget``) ``fit`` stops after the
epoch's checkpoint once the deadline has passed, raising ``PartDone``; the same call later continues. On
CUDA, AMP is on by default; with ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel, batches are sharded by rank and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cryonb import budget, checkpoints
from cryonb.batched import StackedStep, batch_signature, own_dropout
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.device import pick_device

__all__ = ["TrainConfig", "History", "fit", "fit_many", "move_batch", "recalibrate_batchnorm"]

Batch = Any
LossFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]
Validate = Callable[[nn.Module], dict[str, float]]
StepHook = Callable[[nn.Module, Batch, dict[str, torch.Tensor]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule of one training run: the ``train:`` block of every step in the spec.

    epochs : passes of ``train_batches`` (COS-Net: checkpoints of ``steps_per_epoch`` episode steps).
    optimizer : "adam" (betas) or "sgd" (momentum); scheduler : None or "cosine" over ``epochs``.
    amp : mixed precision, used on CUDA only.
    NOTE: batch size, seed, device and checkpoint folder are not here: the batches come from the step, the
    seed from the run, the device from the spec's ``device``, the folder from the content key.
    """

    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: str = "adam"  # "adam" | "sgd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str | None = None  # None | "cosine"
    amp: bool = True  # used on CUDA only

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise CryoNBError(f"train epochs={self.epochs}: expected an integer ≥ 1")
        if not self.lr > 0:
            raise CryoNBError(f"train lr={self.lr}: expected lr > 0")
        if not self.weight_decay >= 0:
            raise CryoNBError(f"train weight_decay={self.weight_decay}: expected ≥ 0")
        if self.optimizer not in ("adam", "sgd"):
            raise CryoNBError(f"train optimizer={self.optimizer!r}: expected 'adam' or 'sgd'")
        if self.scheduler not in (None, "cosine"):
            raise CryoNBError(f"train scheduler={self.scheduler!r}: expected null or 'cosine'")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise CryoNBError(f"train betas={list(self.betas)}: expected two numbers in [0, 1)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], defaults: "TrainConfig | None" = None) -> "TrainConfig":
        """``raw``'s settings over ``defaults`` (a step's own defaults, e.g. the paper's fine-tuning schedule)."""
        reject_unknown_keys(raw, cls, "train")
        return replace(defaults, **raw) if defaults is not None else cls(**raw)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None

    def column(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]

    def to_dict(self) -> dict[str, Any]:
        """Plain values and tensors only, so a training state loads with ``weights_only=True``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "History":
        return cls(**raw)


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return world, rank


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> None:
    """Replace BatchNorm running statistics by exact averages over ``inputs`` ("precise BN").

    Why: with small batches and a fast optimiser the running averages (momentum 0.1) lag behind the
    weights, and eval-mode accuracy swings between chance and the true value from one epoch to the next
    (measured: RB3D at SNR 0.1, Adam 1e-3, batch 16). Only the BatchNorm layers run in training mode, so
    dropout draws no random numbers and the result is deterministic. Modes are restored afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over all batches
        m.train()
    device = next(iter(model.parameters())).device
    # equal chunks: no trailing batch of one, which BatchNorm1d rejects in training mode
    for chunk in torch.tensor_split(inputs, max(1, -(-len(inputs) // batch_size))):
        model(chunk.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    for m, mode in modes.items():
        m.training = mode


def move_batch(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_batch(v, device) for k, v in batch.items()}
    return batch


@dataclass
class _Run:
    """One model's training state: what :func:`fit` keeps for its model and :func:`fit_many` for each of its."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    seed: int
    folder: Path | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    history: History
    start_epoch: int
    best_meta: dict[str, Any] | None = None
    name: str = ""  # how errors name the model ("" for fit's single model)
    rng: torch.Generator | None = None  # the model's dropout stream; None: torch's global generator (fit)

    @property
    def last(self) -> Path | None:
        return self.folder / "last.pt" if self.folder is not None else None


def _start_run(model: nn.Module, cfg: TrainConfig, *, seed: int, device: torch.device, folder: Path | None, world: int = 1,
               best_meta: dict[str, Any] | None = None, name: str = "", rng: torch.Generator | None = None) -> _Run:
    """Move ``model`` to ``device`` (in its training memory format), build its optimiser, schedule and AMP scaler,
    and resume from ``folder/last.pt``."""
    model.to(device=device, memory_format=_memory_format(model, device))
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs) if cfg.scheduler == "cosine" else None
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    run = _Run(model, net, seed, Path(folder) if folder is not None else None, optimizer, scheduler, scaler, History(), 0, best_meta, name, rng)
    if run.last is not None and run.last.is_file():
        state = checkpoints.load_state(run.last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        run.history = History.from_dict(state["history"])
        run.start_epoch = state["epoch"] + 1
    return run


#: set to 0 to train in torch's default (contiguous) layout on CPU, e.g. to reproduce results of cryonb before it
CHANNELS_LAST_ENV = "CRYONB_CHANNELS_LAST"


def _memory_format(model: nn.Module, device: torch.device) -> torch.memory_format:
    """``channels_last_3d`` for models with 3-D convolutions on CPU, else torch's default.

    Why: oneDNN's 3-D convolutions with few channels run faster on channels-last (NDHWC) data, which needs no
    reorder into its blocked layout. Measured on this project's CPU (one thread, fwd + bwd + Adam): RB3D width 4
    1.18×, width 8 1.24–1.29×, width 16 1.35×; COS-Net base 4 1.36× (decoder) / 1.50× (without). Alternatives
    measured in the same runs (``benchmarks/bench_train.py --compile``): oneDNN off (slow_conv3d) 0.26–0.45×;
    ``torch.compile`` 1.04× after a 39 s compilation, not worth it for runs of minutes. NOTE: results differ
    from contiguous training by float rounding, somewhat more than usual: torch's channels-last BatchNorm
    kernel accumulates less precisely (measured: forward error 5e-5 against float64, 4e-7 contiguous; gradient
    1e-5 vs 2e-7), still far below the noise of SGD. ``CRYONB_CHANNELS_LAST=0`` restores the contiguous layout
    (and, with ``CRYONB_NUM_THREADS``, the bits of cryonb before channels-last). The GPU keeps the default
    layout (unmeasured here).
    """
    if device.type != "cpu" or os.environ.get(CHANNELS_LAST_ENV, "1") == "0":
        return torch.preserve_format
    has_conv3d = any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in model.modules())
    return torch.channels_last_3d if has_conv3d else torch.preserve_format


def _finish_run(run: _Run) -> History:
    """Hand the model back in torch's default layout (what inference code and checkpoints expect)."""
    run.model.to(memory_format=torch.contiguous_format)
    return run.history


def _epoch_generator(run: _Run, epoch: int) -> torch.Generator:
    """Seed the run's random streams for ``epoch``; returns the data generator.

    Per-epoch seeds: resuming at any epoch reproduces the uninterrupted run exactly. Dropout draws from the
    run's own generator in :func:`fit_many` (models share a process) and from torch's global one in
    :func:`fit`, seeded alike, so both give a model the same masks.
    """
    epoch_seed = run.seed * 100_003 + epoch
    if run.rng is None:
        torch.manual_seed(epoch_seed)
    else:
        run.rng.manual_seed(epoch_seed)
    return torch.Generator().manual_seed(epoch_seed)


def _check_loss(run: _Run, loss: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        where = f"; last good checkpoint kept at {run.last}" if run.last is not None and run.last.is_file() else ""
        who = f"{run.name}: " if run.name else ""
        raise CryoNBError(f"{who}epoch {epoch + 1} step {step + 1}: loss is {loss.item()} (not finite){where}; lower the learning rate or check the inputs")


def _apply_step(run: _Run) -> None:
    """The optimiser step after backward (through the AMP scaler, a no-op scaler off CUDA)."""
    run.scaler.step(run.optimizer)
    run.scaler.update()


def _add_outputs(sums: dict[str, float], outputs: dict[str, torch.Tensor]) -> None:
    for k, v in outputs.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach())


def _train_epoch(run: _Run, loss_fn: LossFn, train_batches: Callable[[int, torch.Generator], Iterable[Batch]], epoch: int, cfg: TrainConfig,
                 device: torch.device, on_step_end: StepHook | None, progress: bool, world: int = 1, rank: int = 0) -> tuple[dict[str, float], int]:
    """One epoch of one model: returns the summed outputs and the number of steps."""
    generator = _epoch_generator(run, epoch)
    run.net.train()
    use_amp = run.scaler.is_enabled()
    sums: dict[str, float] = {}
    n_steps = 0
    batches = train_batches(epoch, generator)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0, leave=False)
    for step, batch in enumerate(bar):
        if world > 1 and step % world != rank:
            continue
        batch = move_batch(batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            outputs = loss_fn(run.net, batch)
        loss = outputs["loss"]
        _check_loss(run, loss, epoch, step)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        _apply_step(run)
        if on_step_end is not None:
            on_step_end(run.model, batch, outputs)
        _add_outputs(sums, outputs)
        n_steps += 1
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return sums, n_steps


def _end_epoch(run: _Run, epoch: int, cfg: TrainConfig, sums: dict[str, float], n_steps: int, wall_s: float,
               validate: Validate | None, select_metric: str | None, best_kind: str | None, write: bool) -> None:
    """Schedule step, log row, validation, best-model selection and the epoch's checkpoint files."""
    if run.scheduler is not None:
        run.scheduler.step()
    record: dict[str, float] = {"epoch": epoch + 1, "wall_s": wall_s, "lr": run.optimizer.param_groups[0]["lr"]}
    record.update({k: v / max(n_steps, 1) for k, v in sums.items()})
    if validate is not None:
        run.net.eval()
        with torch.no_grad():
            record.update(validate(run.model))
    history = run.history
    history.epochs.append(record)
    if select_metric is not None:
        if select_metric not in record:
            raise CryoNBError(f"select_metric={select_metric!r}: not among the epoch's values {sorted(record)}; validate must return it")
        value = record[select_metric]
        if history.best_value is None or value > history.best_value:
            history.best_value, history.best_epoch = value, epoch + 1
            history.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in run.model.state_dict().items()})
    if write and run.folder is not None:
        _write_epoch(run.folder, cfg, run.model, run.optimizer, run.scheduler, run.scaler, history, epoch, best_kind, run.best_meta)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_batches: Callable[[int, torch.Generator], Iterable[Batch]],
    cfg: TrainConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    validate: Validate | None = None,
    select_metric: str | None = None,
    on_step_end: StepHook | None = None,
    best_kind: str | None = None,
    best_meta: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` in place; see the module docstring. Returns the :class:`History`.

    seed : seeds each epoch's generator and global torch state, so a resumed run equals an uninterrupted one.
    device : where to train ("auto" picks CUDA when present). checkpoint_dir : ``last.pt`` (resume),
        ``metrics.jsonl`` and, with ``select_metric`` and ``best_kind``, ``best.pt``: a model checkpoint of
        that kind (:mod:`cryonb.checkpoints`) with ``best_meta`` (class names, box, voxel size, seeds: what
        ``python -m cryonb classify`` checks its input against).
    """
    world, rank = _dist_info()
    device = pick_device(str(device))
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    run = _start_run(model, cfg, seed=seed, device=device, folder=checkpoint_dir, world=world, best_meta=best_meta)
    for epoch in range(run.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums, n_steps = _train_epoch(run, loss_fn, train_batches, epoch, cfg, device, on_step_end, progress, world, rank)
        _end_epoch(run, epoch, cfg, sums, n_steps, time.perf_counter() - t0, validate, select_metric, best_kind, write=rank == 0)
        if run.folder is not None and epoch + 1 < cfg.epochs and _budget_used(world, device):
            budget.check(f"epoch {epoch + 1}/{cfg.epochs} ({run.last})")
    return _finish_run(run)


def _per_model(value: Any, n: int, what: str) -> list[Any]:
    """``value`` for each of ``n`` models: a sequence of n items, or one item shared by all."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise CryoNBError(f"fit_many {what}: {len(value)} given for {n} models; expected one per model or one for all")
        return list(value)
    return [value] * n


def fit_many(
    models: Sequence[nn.Module],
    loss_fn: LossFn | Sequence[LossFn],
    batches_per_model: Sequence[Callable[[int, torch.Generator], Iterable[Batch]]],
    cfg: TrainConfig,
    *,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    checkpoint_dirs: Sequence[Path | None] | None = None,
    progress: bool = True,
    validate: Validate | Sequence[Validate | None] | None = None,
    select_metric: str | None = None,
    on_step_end: StepHook | Sequence[StepHook | None] | None = None,
    best_kind: str | None = None,
    best_meta: Sequence[dict[str, Any] | None] | None = None,
    executor: str = "auto",
    workers: int | None = None,
) -> list[History]:
    """Train N independent models together, each exactly as :func:`fit` trains it alone; one History each.

    Parameters
    ----------
    models : N models, trained in place (any architectures with ``executor="threads"``; under "vmap",
        models of equal architecture, loss and batch shapes share a step).
    loss_fn, validate, on_step_end : one for all models or one per model, as in :func:`fit`.
    batches_per_model : N callables ``(epoch, generator) -> batches``; each model's generator is seeded from
        its own seed and the epoch, as in :func:`fit`.
    cfg : the optimiser and schedule, shared (each model keeps its own optimiser state and schedule).
    seeds : N seeds: data order, augmentation and dropout streams of each model.
    checkpoint_dirs : N folders (or None): each gets ``last.pt``, ``metrics.jsonl`` and ``best.pt`` exactly as
        :func:`fit` writes them, so a model trained here is indistinguishable on disk from one trained alone,
        and each resumes from its own ``last.pt``.
    best_meta : N dicts for the models' ``best.pt``.
    executor : "threads" (default on CPU: models on worker threads, one intra-op thread each; bit-identical
        to training each alone with ``torch.set_num_threads(1)``), "vmap" (default on CUDA: one stacked
        step per group of equal models; equal to training alone up to float rounding), or "auto".
    workers : worker threads for "threads" (default: the cores this process may use, ``os.sched_getaffinity``).

    NOTE: a non-finite loss stops training with an error naming the model (threads: the other models' epochs
    in flight finish and are saved first). With a time budget (:mod:`cryonb.budget`) training stops with
    ``PartDone`` once every model has saved its epoch in flight; the same call later continues each model.
    """
    n = len(models)
    if n == 0:
        raise CryoNBError("fit_many: no models given")
    if len(seeds) != n or len(batches_per_model) != n:
        raise CryoNBError(f"fit_many: {n} models but {len(seeds)} seeds and {len(batches_per_model)} batch sources; expected one each")
    if len({id(m) for m in models}) != n:
        raise CryoNBError("fit_many: the same model object is given twice; pass independent models")
    world, _ = _dist_info()
    if world > 1:
        raise CryoNBError("fit_many under torchrun (WORLD_SIZE > 1): not supported; train several models per process instead")
    device = pick_device(str(device))
    if executor == "auto":
        executor = "vmap" if device.type == "cuda" else "threads"
    if executor not in ("threads", "vmap"):
        raise CryoNBError(f"fit_many executor={executor!r}: expected 'threads', 'vmap' or 'auto'")
    folders = _per_model(checkpoint_dirs, n, "checkpoint_dirs") if checkpoint_dirs is not None else [None] * n
    folders_seen = [Path(f).resolve() for f in folders if f is not None]
    if len(set(folders_seen)) != len(folders_seen):
        raise CryoNBError("fit_many checkpoint_dirs: two models share a folder; expected one folder per model")
    metas = _per_model(best_meta, n, "best_meta") if best_meta is not None else [None] * n
    runs = [_start_run(m, cfg, seed=int(s), device=device, folder=f, best_meta=meta, name=f"model {i} (seed {s}{f', {f}' if f else ''})",
                       rng=torch.Generator(device=device)) for i, (m, s, f, meta) in enumerate(zip(models, seeds, folders, metas))]
    hooks = _ManyHooks(_per_model(loss_fn, n, "loss_fn"), list(batches_per_model), _per_model(validate, n, "validate"),
                       _per_model(on_step_end, n, "on_step_end"), select_metric, best_kind)
    if executor == "threads":
        with _Workers(workers, n) as pool:
            _threads_train(runs, hooks, cfg, device, progress, pool)
    else:
        for epoch in range(min(r.start_epoch for r in runs), cfg.epochs):
            _vmap_epoch(runs, [i for i, r in enumerate(runs) if r.start_epoch <= epoch], hooks, epoch, cfg, device, progress)
            if any(f is not None for f in folders) and epoch + 1 < cfg.epochs and _budget_used(1, device):
                budget.check(f"epoch {epoch + 1}/{cfg.epochs} of {n} models ({', '.join(str(r.last) for r in runs if r.last)})")
    return [_finish_run(r) for r in runs]


@dataclass
class _ManyHooks:
    """fit_many's per-model callables and selection settings."""

    loss_fns: list[LossFn]
    batches: list[Callable[[int, torch.Generator], Iterable[Batch]]]
    validates: list[Validate | None]
    on_step_ends: list[StepHook | None]
    select_metric: str | None
    best_kind: str | None
    stackers: dict[tuple, StackedStep] = field(default_factory=dict)  # vmap: one per (architecture, loss)

    def stacker(self, i: int, model: nn.Module) -> tuple[tuple, StackedStep]:
        """The vmap grouping key of model ``i`` and, built on first use, its StackedStep."""
        key = _architecture_key(model) + (id(self.loss_fns[i]),)
        if key not in self.stackers:
            self.stackers[key] = StackedStep(model, self.loss_fns[i])
        return key, self.stackers[key]


class _Workers:
    """A pool of worker threads for the "threads" executor (none for one worker); each runs one intra-op thread.

    Why one intra-op thread per model: on 2 cores, two models on one thread each beat one model on two
    threads (no OpenMP barrier per operator, nothing to wait for when a neighbour takes a core), and a
    model's bits do not depend on how many models train beside it (thread counts change float rounding).
    """

    def __init__(self, workers: int | None, n_models: int) -> None:
        wanted = _cores() if workers is None else int(workers)
        if wanted < 1:
            raise CryoNBError(f"fit_many workers={workers}: expected ≥ 1")
        self.n = min(wanted, n_models)
        self.pool: ThreadPoolExecutor | None = None
        self.threads_before = torch.get_num_threads()

    def __enter__(self) -> "_Workers":
        if self.n > 1:
            self.pool = ThreadPoolExecutor(self.n, thread_name_prefix="cryonb-fit", initializer=torch.set_num_threads, initargs=(1,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self.threads_before)  # the workers' setting is process-wide for new threads

    def map(self, fn: Callable[[int], None], items: list[int]) -> None:
        """``fn(i)`` for every item; every call finishes before the first error (in item order) is raised."""
        if self.pool is None:
            with _intra_threads(1):
                for i in items:
                    fn(i)
            return
        futures = [self.pool.submit(fn, i) for i in items]
        errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def _intra_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _threads_train(runs: list[_Run], hooks: _ManyHooks, cfg: TrainConfig, device: torch.device, progress: bool, pool: _Workers) -> None:
    """Every remaining epoch of every model, each model on a worker thread, :func:`fit`'s epoch code for each.

    No barrier between models (a worker that finishes a short model takes the next one). Once a model fails
    (e.g. a NaN) or the time budget is used, the others stop after their epoch in flight, which is saved;
    then the first failure, or :class:`cryonb.budget.PartDone`, is raised.
    """
    stop = threading.Event()
    budgeted = any(r.folder is not None for r in runs)
    bar = tqdm(total=sum(cfg.epochs - r.start_epoch for r in runs), desc=f"{len(runs)} models", unit="epoch", disable=not progress, leave=False)

    def one(i: int) -> None:
        run = runs[i]
        try:
            for epoch in range(run.start_epoch, cfg.epochs):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                with own_dropout(run.model, run.rng):  # type: ignore[arg-type]
                    sums, n_steps = _train_epoch(run, hooks.loss_fns[i], hooks.batches[i], epoch, cfg, device, hooks.on_step_ends[i], progress=False)
                    _end_epoch(run, epoch, cfg, sums, n_steps, time.perf_counter() - t0, hooks.validates[i], hooks.select_metric, hooks.best_kind, write=True)
                bar.update(1)
                if budgeted and epoch + 1 < cfg.epochs and _budget_used(1, device):
                    stop.set()
        except BaseException:
            stop.set()
            raise

    try:
        pool.map(one, [i for i, r in enumerate(runs) if r.start_epoch < cfg.epochs])
    except BaseException:  # e.g. Ctrl-C in the main thread: the workers stop after saving their epoch in flight
        stop.set()
        raise
    finally:
        bar.close()
    if stop.is_set():
        budget.check(f"an epoch of each of {len(runs)} models ({', '.join(str(r.last) for r in runs if r.last)})")


def _vmap_epoch(runs: list[_Run], todo: list[int], hooks: _ManyHooks, epoch: int, cfg: TrainConfig, device: torch.device,
                progress: bool) -> None:
    """One epoch of each model in ``todo``, step-synchronous: at each step the models whose architecture,
    loss and batch shapes agree run as one vmapped forward and one backward."""
    t0 = time.perf_counter()
    iterators = {i: iter(hooks.batches[i](epoch, _epoch_generator(runs[i], epoch))) for i in todo}
    sums: dict[int, dict[str, float]] = {i: {} for i in todo}
    steps = dict.fromkeys(todo, 0)
    for i in todo:
        runs[i].net.train()
    bar = tqdm(desc=f"epoch {epoch + 1}/{cfg.epochs} ({len(todo)} models)", unit="step", disable=not progress, leave=False)
    while iterators:
        batches: dict[int, Batch] = {}
        for i in list(iterators):
            batch = next(iterators[i], _END)
            if batch is _END:
                del iterators[i]
            else:
                batches[i] = move_batch(batch, device)
        groups: dict[tuple, list[int]] = {}
        for i, batch in batches.items():
            groups.setdefault((hooks.stacker(i, runs[i].model)[0], batch_signature(batch)), []).append(i)
        for (key, _), members in groups.items():
            _stacked_step([runs[i] for i in members], members, [batches[i] for i in members], hooks.stackers[key],
                          epoch, [steps[i] for i in members], hooks, sums, device)
            for i in members:
                steps[i] += 1
        bar.update(1)
    bar.close()
    wall_s = (time.perf_counter() - t0) / max(len(todo), 1)  # the epoch's time, shared equally
    for i in todo:
        _end_epoch(runs[i], epoch, cfg, sums[i], steps[i], wall_s, hooks.validates[i], hooks.select_metric, hooks.best_kind, write=True)


_END = object()


def _architecture_key(model: nn.Module) -> tuple:
    """What must agree for models to share a vmapped step: every module's type and settings, every tensor's shape."""
    parts = []
    for name, module in model.named_modules():
        settings = tuple(sorted((k, v) for k, v in vars(module).items()
                                if not k.startswith("_") and k != "training" and isinstance(v, (int, float, str, bool, tuple, type(None)))))
        parts.append((name, type(module).__qualname__, settings, repr(getattr(module, "config", None))))
    shapes = tuple((n, tuple(t.shape), t.dtype, t.requires_grad) for n, t in [*model.named_parameters(), *model.named_buffers()])
    return (tuple(parts), shapes)


def _stacked_step(group: list[_Run], members: list[int], batches: list[Batch], stacker: StackedStep, epoch: int, steps: list[int],
                  hooks: _ManyHooks, sums: dict[int, dict[str, float]], device: torch.device) -> None:
    """One optimiser step of every model in ``group`` from one vmapped forward and one backward."""
    use_amp = group[0].scaler.is_enabled()
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        outputs, pending = stacker([r.model for r in group], batches, [r.rng for r in group])  # type: ignore[misc]
    losses = outputs["loss"]
    finite = torch.isfinite(losses.detach()).tolist()
    for k, ok in enumerate(finite):
        if not ok:
            _check_loss(group[k], losses[k], epoch, steps[k])
    for r in group:
        r.optimizer.zero_grad(set_to_none=True)
    # every model's own loss, scaled by its own AMP scaler; their parameters are disjoint, so one backward of
    # the sum gives each model exactly the gradient of its own loss
    torch.stack([r.scaler.scale(losses[k]) for k, r in enumerate(group)]).sum().backward()
    values = {name: v.detach().float().tolist() for name, v in outputs.items() if v.dim() == 1}
    for k, (i, r) in enumerate(zip(members, group)):
        _apply_step(r)
        for module_name, state in pending[k].items():
            r.model.get_submodule(module_name)._pending = state
        hook = hooks.on_step_ends[i]
        if hook is not None:
            hook(r.model, batches[k], {name: v[k] for name, v in outputs.items()})
        for name, v in values.items():
            sums[i][name] = sums[i].get(name, 0.0) + v[k]


def _budget_used(world: int, device: torch.device) -> bool:
    """Whether the run's time budget (cryonb.budget) is used; under DDP every rank agrees, after rank 0 has saved."""
    left = budget.time_left()
    used = left is not None and left <= 0
    if world > 1:
        flag = torch.tensor([float(used)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        used = bool(flag.item())
    return used


def _write_epoch(folder: Path, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                 history: History, epoch: int, best_kind: str | None, best_meta: dict[str, Any] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints.save_state(folder / "last.pt", {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "history": history.to_dict(),
        "train_config": asdict(cfg),
    })
    if best_kind is not None and history.best_epoch == epoch + 1 and history.best_state is not None:
        checkpoints.save_model(folder / "best.pt", model, best_kind, {**(best_meta or {}), "epoch": epoch}, state=history.best_state)
    with open(folder / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in history.epochs[-1].items()}) + "\n")
