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

A checkpoint (``last.pt``) is written atomically after each epoch with model, optimiser, scheduler, AMP scaler,
epoch and history; ``fit`` resumes from it. With a time budget (``cryonb.budget``) ``fit`` stops after the
epoch's checkpoint once the deadline has passed, raising ``PartDone``; the same call later continues. On
CUDA, AMP is on by default; with ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel, batches are sharded by rank and only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cryonb import budget, checkpoints
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.device import pick_device

__all__ = ["TrainConfig", "History", "fit", "move_batch", "recalibrate_batchnorm"]

Batch = Any
LossFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


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
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    select_metric: str | None = None,
    on_step_end: Callable[[nn.Module, Batch, dict[str, torch.Tensor]], None] | None = None,
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
    model.to(device)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs) if cfg.scheduler == "cosine" else None
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = History()
    start_epoch = 0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last = folder / "last.pt" if folder is not None else None
    if last is not None and last.is_file():
        state = checkpoints.load_state(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history = History.from_dict(state["history"])
        start_epoch = state["epoch"] + 1
    for epoch in range(start_epoch, cfg.epochs):
        # per-epoch seeds: resuming at any epoch reproduces the uninterrupted run exactly
        torch.manual_seed(seed * 100_003 + epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        net.train()
        sums: dict[str, float] = {}
        n_steps = 0
        t0 = time.perf_counter()
        batches = train_batches(epoch, generator)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or rank != 0, leave=False)
        for step, batch in enumerate(bar):
            if world > 1 and step % world != rank:
                continue
            batch = move_batch(batch, device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                outputs = loss_fn(net, batch)
            loss = outputs["loss"]
            if not torch.isfinite(loss):
                where = f"; last good checkpoint kept at {last}" if last is not None and last.is_file() else ""
                raise CryoNBError(f"epoch {epoch + 1} step {step + 1}: loss is {loss.item()} (not finite){where}; lower the learning rate or check the inputs")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if on_step_end is not None:
                on_step_end(model, batch, outputs)
            for k, v in outputs.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_steps += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if scheduler is not None:
            scheduler.step()
        record: dict[str, float] = {"epoch": epoch + 1, "wall_s": time.perf_counter() - t0, "lr": optimizer.param_groups[0]["lr"]}
        record.update({k: v / max(n_steps, 1) for k, v in sums.items()})
        if validate is not None:
            net.eval()
            with torch.no_grad():
                record.update(validate(model))
        history.epochs.append(record)
        if select_metric is not None:
            value = record[select_metric]
            if history.best_value is None or value > history.best_value:
                history.best_value, history.best_epoch = value, epoch + 1
                history.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        if rank == 0 and folder is not None:
            _write_epoch(folder, cfg, model, optimizer, scheduler, scaler, history, epoch, best_kind, best_meta)
        if folder is not None and epoch + 1 < cfg.epochs and _budget_used(world, device):
            budget.check(f"epoch {epoch + 1}/{cfg.epochs} ({last})")
    return history


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
