"""COS-Net over episodes: one training step (data, config in; a model out) and evaluation on test episodes.

Public surface: :class:`LossConfig`, :class:`COSNetTrainConfig`, :func:`train_cosnet`, :class:`COSNetJob`,
:func:`train_cosnet_many` (several trained together), :func:`save_cosnet`,
:func:`load_cosnet`, :func:`episode_logits`, :func:`evaluate_episodes`, :func:`cosnet_scorer`,
:func:`prototype_scorer`.

Training follows the paper: each step draws two 1-shot support sets over the same n seen classes,
embeds all 2n volumes with the shared branch, and scores every cross pair; the loss is
``w_bce · BCE(match) + w_dice · Dice(masks of both sets)`` (+ an optional voxel-wise mask BCE, ours).
Training runs in :func:`cryonb.train.fit` (AMP on CUDA, torchrun, atomic checkpoints): an interrupted run
resumes from its last epoch of ``steps_per_epoch`` steps.

Evaluation embeds each volume of the test pool once (the branches share weights, so an embedding does not
depend on the episode), then scores any number of episodes from the cached embeddings. k-shot supports are
merged by averaging their embeddings (the paper's suggested few-shot extension). Which data, which folder and
whether a finished model is reused is decided by :mod:`cryonb.experiments.cosnet`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cryonb import checkpoints
from cryonb.embedding import prototype_scores
from cryonb.episodes import Episode, episodes_to_arrays, sample_episodes, sample_training_pair
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.metrics import accuracy_ci
from cryonb.models.cosnet import VARIANTS, COSNet, COSNetConfig, dice_loss
from cryonb.train import History, TrainConfig, fit, fit_many, recalibrate_batchnorm

__all__ = [
    "LossConfig",
    "COSNetTrainConfig",
    "train_cosnet",
    "COSNetJob",
    "train_cosnet_many",
    "save_cosnet",
    "load_cosnet",
    "episode_logits",
    "evaluate_episodes",
    "cosnet_scorer",
    "prototype_scorer",
]


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms.

    w_bce, w_dice : match BCE and mask Dice, the paper's two terms.
    w_mask_bce : a voxel-wise BCE on the masks (not in the paper; 0 = off). Molecules fill about 1 % of a
        32³ box, and Dice alone teaches the decoder slowly that the rest is background.
    """

    w_bce: float = 1.0
    w_dice: float = 1.0
    w_mask_bce: float = 0.0

    def __post_init__(self) -> None:
        for name in ("w_bce", "w_dice", "w_mask_bce"):
            if not getattr(self, name) >= 0:
                raise CryoNBError(f"loss {name}={getattr(self, name)}: expected ≥ 0")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LossConfig":
        reject_unknown_keys(raw, cls, "loss")
        return cls(**raw)


@dataclass(frozen=True)
class COSNetTrainConfig:
    """Episode training of one COS-Net.

    model : architecture, variant included (:meth:`for_job`); its ``box`` is set from the training data.
    train : optimiser and schedule; ``train.epochs`` × ``steps_per_epoch`` optimiser steps in all, one
        training episode pair per step, one log row and one resumable checkpoint per epoch
        (paper: Adam lr 1e-4, betas (0.5, 0.999), no weight decay).
    n_way : classes per training support set (the paper trains one model per n-way scheme).
    recalibrate_bn : training batches hold only 2n volumes, so BatchNorm's running averages are noisy;
        replace them by exact averages over the training pool (:func:`cryonb.train.recalibrate_batchnorm`).
    """

    model: COSNetConfig = field(default_factory=COSNetConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, lr=1e-4, betas=(0.5, 0.999), weight_decay=0.0))
    loss: LossConfig = field(default_factory=LossConfig)
    steps_per_epoch: int = 20
    n_way: int = 2
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        if int(self.steps_per_epoch) < 1:
            raise CryoNBError(f"steps_per_epoch={self.steps_per_epoch}: expected ≥ 1")
        if int(self.n_way) < 2:
            raise CryoNBError(f"n_way={self.n_way}: expected ≥ 2")

    @property
    def steps(self) -> int:
        return self.train.epochs * self.steps_per_epoch

    def for_job(self, variant: str, n_way: int) -> "COSNetTrainConfig":
        """This config for one trained model: the variant's attention and decoder, and its training n-way."""
        if variant not in VARIANTS:
            raise CryoNBError(f"unknown COS-Net variant {variant!r}; expected one of {sorted(VARIANTS)}")
        return replace(self, model=replace(self.model, **VARIANTS[variant]), n_way=n_way)


def _batch(volumes: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    # memmaps are indexed in sorted order for speed, then put back in the order asked
    order = np.argsort(idx)
    arr = np.asarray(volumes[idx[order]], dtype=np.float32)[np.argsort(order)]
    return torch.from_numpy(arr)[:, None].to(device)


def _loss(net: nn.Module, batch: tuple[torch.Tensor, ...], n: int, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The paper's loss on one episode pair; ``batch`` = (volumes of both sets,) or (volumes, masks)."""
    x, m = batch[0], (batch[1] if len(batch) > 1 else None)
    emb, mask = net(x)
    head = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    logits = head.score(emb[:n], emb[n:])  # (n, n): row = set-b example, column = set-a example
    target = torch.eye(n, device=x.device)
    # n positives vs n(n−1) negatives: weight positives so that both count equally
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(float(n - 1), device=x.device))
    out = {"loss": cfg.w_bce * bce, "bce": bce.detach()}
    if mask is not None and m is not None:
        d = dice_loss(mask, m)
        out["loss"] = out["loss"] + cfg.w_dice * d
        out["dice_loss"] = d.detach()
        if cfg.w_mask_bce:
            with torch.autocast(device_type=x.device.type, enabled=False):  # BCE on probabilities is unsafe in fp16
                voxel_bce = F.binary_cross_entropy(mask.float().clamp(1e-6, 1 - 1e-6), m.float())
            out["loss"] = out["loss"] + cfg.w_mask_bce * voxel_bce
            out["mask_bce"] = voxel_bce.detach()
    return out


def _episode_batches(volumes: np.ndarray, masks: np.ndarray | None, labels: np.ndarray, train_pool: np.ndarray,
                     cfg: COSNetTrainConfig, seed: int) -> Callable[[int, torch.Generator], Iterator[tuple[torch.Tensor, ...]]]:
    """``fit``'s batches: epoch e holds ``steps_per_epoch`` steps, one episode pair each, drawn from a
    generator seeded by (seed, epoch) so that a resumed run draws what an uninterrupted one would."""

    def batches(epoch: int, _generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        rng = np.random.default_rng([seed, epoch])
        for _ in range(cfg.steps_per_epoch):
            _, a, b = sample_training_pair(labels, train_pool, cfg.n_way, rng)
            idx = np.concatenate([a, b])
            x = _batch(volumes, idx, torch.device("cpu"))
            yield (x,) if masks is None else (x, _batch(masks, idx, torch.device("cpu")))

    return batches


def _check_masks(volumes: np.ndarray, masks: np.ndarray) -> None:
    if masks.shape != volumes.shape:
        raise CryoNBError(f"masks have shape {masks.shape}: expected {volumes.shape} like the volumes")


def _build(cfg: COSNetTrainConfig, volumes: np.ndarray, seed: int) -> COSNet:
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed alone; episodes from per-epoch generators
        torch.manual_seed(seed)
        return COSNet(replace(cfg.model, box=int(volumes.shape[1])))  # the box comes from the data


def _finish(net: COSNet, history: History, cfg: COSNetTrainConfig, volumes: np.ndarray, train_pool: np.ndarray) -> tuple[COSNet, list[dict[str, float]]]:
    """The log (one row per epoch, ``step`` = steps done) and the model on CPU, BatchNorm recalibrated, in eval mode."""
    log = [{**row, "step": int(row["epoch"]) * cfg.steps_per_epoch} for row in history.epochs]
    net = net.cpu()
    if cfg.recalibrate_bn:
        recalibrate_batchnorm(net, _batch(volumes, np.sort(np.asarray(train_pool)), torch.device("cpu")), batch_size=16)
    return net.eval(), log


def train_cosnet(
    cfg: COSNetTrainConfig,
    volumes: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    train_pool: np.ndarray,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[COSNet, list[dict[str, float]]]:
    """Train one COS-Net on episodes drawn from ``train_pool`` (seen classes) with :func:`cryonb.train.fit`.

    Parameters
    ----------
    cfg : the model (variant included) and its training.
    volumes : (N, D, D, D) float32 subtomograms; masks : (N, D, D, D) uint8 target masks;
    labels : (N,) class ids; train_pool : indices of the seen-class training rows.
    seed : initialisation and episode sampling.
    checkpoint_dir : ``fit`` writes ``last.pt`` there after every ``cfg.steps_per_epoch`` steps and
        resumes from it; with a time budget (:mod:`cryonb.budget`) it stops there with ``PartDone``.

    Returns
    -------
    The trained model (eval mode, CPU) and one log row per epoch: mean loss terms, ``step`` (steps done), ``wall_s``.
    """
    _check_masks(volumes, masks)
    net = _build(cfg, volumes, seed)
    batches = _episode_batches(volumes, masks if net.config.decoder else None, labels, train_pool, cfg, seed)
    history = fit(net, lambda model, batch: _loss(model, batch, cfg.n_way, cfg.loss), batches, cfg.train, seed=seed, device=device,
                  checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None, progress=progress)
    return _finish(net, history, cfg, volumes, train_pool)


@dataclass(frozen=True)
class COSNetJob:
    """One model of :func:`train_cosnet_many`: the arguments of :func:`train_cosnet` for one training."""

    cfg: COSNetTrainConfig
    volumes: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    train_pool: np.ndarray
    seed: int
    checkpoint_dir: str | Path | None = None


def train_cosnet_many(jobs: Sequence[COSNetJob], *, device: torch.device | str = "cpu", progress: bool = True, executor: str = "auto",
                      workers: int | None = None) -> list[tuple[COSNet, list[dict[str, float]]]]:
    """Several COS-Net trainings together (:func:`cryonb.train.fit_many`); (model, log) per job, in order.

    Jobs may differ in variant, n-way, data set and seed; each trains what :func:`train_cosnet` trains from the
    same arguments (with ``executor="threads"``, the CPU default, bit for bit its one-thread result). Jobs whose
    ``cfg.train`` differ train in separate groups (one optimiser schedule per :func:`fit_many` call). Under
    ``executor="vmap"`` (CUDA default) models of one variant and n-way share a stacked step.
    """
    for j in jobs:
        _check_masks(j.volumes, j.masks)
    nets = [_build(j.cfg, j.volumes, j.seed) for j in jobs]
    loss_fns: dict[tuple, Callable[[nn.Module, Any], dict[str, torch.Tensor]]] = {}  # one object per (n-way, loss): vmap groups by it
    results: dict[int, History] = {}
    for train_cfg in dict.fromkeys(j.cfg.train for j in jobs):
        part = [k for k, j in enumerate(jobs) if j.cfg.train == train_cfg]
        for k in part:
            key = (jobs[k].cfg.n_way, jobs[k].cfg.loss)
            loss_fns.setdefault(key, functools.partial(_loss, n=key[0], cfg=key[1]))
        histories = fit_many([nets[k] for k in part], [loss_fns[(jobs[k].cfg.n_way, jobs[k].cfg.loss)] for k in part],
                             [_episode_batches(jobs[k].volumes, jobs[k].masks if nets[k].config.decoder else None, jobs[k].labels,
                                               jobs[k].train_pool, jobs[k].cfg, jobs[k].seed) for k in part],
                             train_cfg, seeds=[jobs[k].seed for k in part], device=device, progress=progress,
                             checkpoint_dirs=[Path(jobs[k].checkpoint_dir) if jobs[k].checkpoint_dir is not None else None for k in part],
                             executor=executor, workers=workers)
        results.update(zip(part, histories))
    return [_finish(nets[k], results[k], j.cfg, j.volumes, j.train_pool) for k, j in enumerate(jobs)]


def save_cosnet(path: str | Path, net: COSNet, log: list[dict[str, float]], meta: dict[str, Any]) -> Path:
    """Write a trained COS-Net with its training log and ``meta`` (variant, data set, seeds, box, voxel size)."""
    return checkpoints.save_model(path, net, "cosnet", {**meta, "log": log, "train_seconds": sum(r["wall_s"] for r in log)})


def load_cosnet(path: str | Path, device: torch.device | str = "cpu") -> tuple[COSNet, dict[str, Any]]:
    """Model (eval mode, on ``device``) and checkpoint metadata of :func:`save_cosnet`."""
    net, payload = checkpoints.load_model(path, "cosnet")
    return net.to(device), payload  # type: ignore[return-value]


def _lookup(indices: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    pos = {int(i): p for p, i in enumerate(indices)}

    def f(a: np.ndarray) -> np.ndarray:
        try:
            return np.vectorize(pos.__getitem__, otypes=[np.int64])(a)
        except KeyError as exc:
            raise CryoNBError(f"episode uses data-set row {exc} that was not embedded; embed the whole test pool") from None

    return f


def _episode_embeddings(emb: torch.Tensor, emb_indices: np.ndarray, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Queries (E, F), prototypes (E, n, F) (k shots averaged) and labels (E,) of ``episodes``."""
    _, support, query, labels = episodes_to_arrays(episodes)
    at = _lookup(emb_indices)
    return emb[torch.from_numpy(at(query))], emb[torch.from_numpy(at(support))].float().mean(2), labels


@torch.no_grad()
def episode_logits(net: COSNet, emb: torch.Tensor, emb_indices: np.ndarray, episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """Match logits (E, n) of each episode's query against its n support classes, and the labels (E,).

    emb : (M, F) embeddings of data-set rows ``emb_indices``; k-shot supports are averaged per class.
    """
    query, protos, labels = _episode_embeddings(emb, emb_indices, episodes)
    return prototype_scores(query, protos, head=net.cpu().match_logits).numpy(), labels


def evaluate_episodes(
    scorer: Callable[[list[Episode]], tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    pool: np.ndarray,
    n_way: int,
    k_shot: int,
    n_episodes: int,
    seed: int,
    what: str = "unseen",
) -> tuple[dict[str, float], list[Episode], np.ndarray]:
    """Accuracy with its 95 % CI over ``n_episodes`` seeded test episodes from ``pool``.

    scorer : maps episodes to (predictions (E,), labels (E,)), e.g. :func:`cosnet_scorer` or :func:`prototype_scorer`.
    Returns the accuracy row, the episodes and the predicted class position of each (E,).
    what : the pool's name in error messages ("unseen", "validation").
    NOTE: the same (seed, n_way, k_shot) gives the same episodes for every model, so rows are paired.
    """
    episodes = sample_episodes(labels, pool, n_way, k_shot, n_episodes, seed, what=what)
    pred, lab = scorer(episodes)
    row = {"n_way": n_way, "k_shot": k_shot, **accuracy_ci(pred == lab), "seed": seed}
    return row, episodes, pred


def cosnet_scorer(net: COSNet, emb: torch.Tensor, emb_indices: np.ndarray) -> Callable[[list[Episode]], tuple[np.ndarray, np.ndarray]]:
    """Scorer for :func:`evaluate_episodes`: the support class with the highest COS-Net match logit."""

    def score(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
        logits, lab = episode_logits(net, emb, emb_indices, episodes)
        return logits.argmax(1), lab

    return score


def prototype_scorer(emb: torch.Tensor, emb_indices: np.ndarray) -> Callable[[list[Episode]], tuple[np.ndarray, np.ndarray]]:
    """Scorer for :func:`evaluate_episodes`: the nearest class prototype (Euclidean) on a fixed embedding
    (raw voxels, RB3D features, COS-Net features); 1-nearest-neighbour for 1 shot."""

    def score(episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
        query, protos, lab = _episode_embeddings(emb, emb_indices, episodes)
        return prototype_scores(query, protos).argmax(1).numpy(), lab

    return score
