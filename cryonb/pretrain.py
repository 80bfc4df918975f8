"""CSSL pre-training of RB3D (one step: a data set and a config in, an encoder out) and the frozen-embedding probe.

Public surface: :class:`SSLConfig`, :class:`PretrainConfig`, :func:`build_ssl`, :func:`random_encoder`,
:func:`pretrain`, :class:`PretrainJob`, :func:`pretrain_many` (several trained together), :func:`save_encoder`, :func:`load_encoder`, :func:`knn_accuracy`, :func:`embedding_std`,
:func:`standardise`.

Pre-training sees the training split without labels, as in the paper. Which data set, which folder and whether
a finished encoder is reused is decided by :mod:`cryonb.experiments.cssl`; this module builds nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cryonb import checkpoints
from cryonb.augment import AugmentConfig, two_views
from cryonb.data import iterate_batches, to_tensor
from cryonb.device import pick_device
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.ssl import METHODS, MoCo, SimCLR, SwAV
from cryonb.train import History, TrainConfig, fit, fit_many

__all__ = [
    "SSLConfig",
    "PretrainConfig",
    "build_ssl",
    "random_encoder",
    "pretrain",
    "PretrainJob",
    "pretrain_many",
    "save_encoder",
    "load_encoder",
    "knn_accuracy",
    "embedding_std",
    "standardise",
]


@dataclass(frozen=True)
class SSLConfig:
    """The three methods' own settings (MoCo: the paper's; SimCLR / SwAV: see the REPORT's deviations)."""

    projection_dim: int = 128
    moco_queue: int = 128
    moco_momentum: float = 0.999
    moco_temperature: float = 0.2
    simclr_temperature: float = 0.5
    swav_prototypes: int = 30
    swav_queue: int = 64
    swav_temperature: float = 0.1

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SSLConfig":
        reject_unknown_keys(raw, cls, "ssl")
        return cls(**raw)


@dataclass(frozen=True)
class PretrainConfig:
    """One pre-training: the encoder's architecture, the optimiser, the method settings and the views.

    model : RB3D architecture (``n_classes`` is set from the data). batch_size : pairs of views per step.
    max_samples : cap on the unlabelled training subtomograms (quick profile), drawn with the run's seed.
    """

    model: RB3DConfig = field(default_factory=RB3DConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200, lr=1e-4, weight_decay=1e-4, optimizer="adam"))
    ssl: SSLConfig = field(default_factory=SSLConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 16
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if int(self.batch_size) < 2:
            raise CryoNBError(f"pretrain batch_size={self.batch_size}: expected ≥ 2 (contrastive losses need negatives)")
        if self.max_samples is not None and int(self.max_samples) < 2:
            raise CryoNBError(f"pretrain max_samples={self.max_samples}: expected null or ≥ 2")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], model: RB3DConfig) -> "PretrainConfig":
        """From the spec's ``pretrain:`` block (without ``model``); the architecture comes from ``cssl.model``."""
        raw = dict(raw)
        reject_unknown_keys(raw, cls, "pretrain")
        return cls(model=model, train=TrainConfig.from_dict(raw.pop("train", {}), cls().train), ssl=SSLConfig.from_dict(raw.pop("ssl", {})),
                   augment=AugmentConfig.from_dict(raw.pop("augment", {})), **raw)


def build_ssl(method: str, encoder: RB3D, cfg: SSLConfig) -> nn.Module:
    if method == "moco":
        return MoCo(encoder, cfg.projection_dim, cfg.moco_queue, cfg.moco_momentum, cfg.moco_temperature)
    if method == "simclr":
        return SimCLR(encoder, cfg.projection_dim, cfg.simclr_temperature)
    if method == "swav":
        return SwAV(encoder, cfg.projection_dim, cfg.swav_prototypes, cfg.swav_queue, cfg.swav_temperature)
    raise CryoNBError(f"unknown CSSL method {method!r}; expected one of {', '.join(METHODS)}")


def random_encoder(model: RB3DConfig, seed: int) -> RB3D:
    """RB3D with random weights drawn from ``seed`` alone (global RNG state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RB3D(model)


def _train_indices(ds: Any, cfg: PretrainConfig, seed: int) -> np.ndarray:
    idx = ds.indices(split="train")
    if cfg.max_samples is not None and len(idx) > cfg.max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, cfg.max_samples, replace=False))
    return idx


def _ssl_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss": model.loss(*batch)}


def _after_step(model: nn.Module, batch: Any, outputs: dict[str, torch.Tensor]) -> None:
    model.after_step()  # MoCo: momentum update and queue; SwAV: feature queue


def _prepare(method: str, ds: Any, cfg: PretrainConfig, seed: int) -> tuple[RB3D, nn.Module, Any]:
    """The encoder, its SSL wrapper (drawn from ``seed`` alone) and ``fit``'s batches of view pairs."""
    with torch.random.fork_rng(devices=[]):  # encoder and heads drawn from the seed alone
        torch.manual_seed(seed)
        encoder = RB3D(replace(cfg.model, n_classes=len(ds.classes)))
        model = build_ssl(method, encoder, cfg.ssl)
    idx = _train_indices(ds, cfg, seed)
    volumes = to_tensor(ds.volumes, idx)
    ids = torch.as_tensor(idx)

    def batches(epoch: int, generator: torch.Generator):  # noqa: ANN202
        for b in iterate_batches(len(idx), cfg.batch_size, generator, drop_last=len(idx) > cfg.batch_size):
            v1, v2 = two_views(volumes[b], cfg.augment, generator)
            yield v1, v2, ids[b]

    return encoder, model, batches


def pretrain(method: str, ds: Any, cfg: PretrainConfig, *, seed: int, device: torch.device | str = "cpu",
             checkpoint_dir: Path | None = None, progress: bool = True) -> tuple[RB3D, History]:
    """Train one CSSL method on ``ds``'s training split (labels unused); returns the encoder and its history.

    ds : a data set with ``volumes`` (N, D, D, D), ``classes`` and ``indices(split)``.
    checkpoint_dir : :func:`cryonb.train.fit` writes ``last.pt`` there every epoch and resumes from it.
    """
    encoder, model, batches = _prepare(method, ds, cfg, seed)
    history = fit(model, _ssl_loss, batches, cfg.train, seed=seed, device=device,
                  checkpoint_dir=checkpoint_dir, progress=progress, on_step_end=_after_step)
    return encoder.cpu(), history


@dataclass(frozen=True)
class PretrainJob:
    """One pre-training of :func:`pretrain_many`: a method, its data set, its seed and its checkpoint folder."""

    method: str
    ds: Any
    seed: int
    checkpoint_dir: Path | None = None


#: methods whose loss batches under vmap; SwAV's queue length is data-dependent control flow (``int(...)``)
_VMAPPABLE = ("moco", "simclr")


def pretrain_many(jobs: Sequence[PretrainJob], cfg: PretrainConfig, *, device: torch.device | str = "cpu", progress: bool = True,
                  executor: str = "auto", workers: int | None = None) -> list[tuple[RB3D, History]]:
    """Several pre-trainings together (:func:`cryonb.train.fit_many`); (encoder, history) per job, in order.

    Each job trains exactly what :func:`pretrain` trains from the same arguments (its own initialisation, views,
    dropout, MoCo momentum encoder and queue, SwAV queue), only beside the others: with ``executor="threads"``
    (CPU default) bit for bit what ``pretrain`` gives with one torch thread. Jobs may mix methods and data sets.
    With ``executor="vmap"`` (CUDA default) models of one method share a stacked step; SwAV, whose queue
    length drives Python control flow, trains on threads beside them.
    """
    if not jobs:
        return []
    for j in jobs:
        if j.method not in METHODS:
            raise CryoNBError(f"unknown CSSL method {j.method!r}; expected one of {', '.join(METHODS)}")
    resolved = executor if executor != "auto" else ("vmap" if pick_device(str(device)).type == "cuda" else "threads")
    if resolved == "vmap" and executor == "vmap" and any(j.method not in _VMAPPABLE for j in jobs):
        raise CryoNBError("pretrain_many executor='vmap': SwAV does not batch under vmap; use executor='auto' (SwAV on threads) or 'threads'")
    prepared = [_prepare(j.method, j.ds, cfg, j.seed) for j in jobs]
    parts = [[k for k, j in enumerate(jobs) if (j.method in _VMAPPABLE) == vm] for vm in (True, False)] if resolved == "vmap" else [list(range(len(jobs)))]
    histories: dict[int, History] = {}
    for part in parts:
        if not part:
            continue
        part_executor = resolved if all(jobs[k].method in _VMAPPABLE for k in part) else "threads"
        done = fit_many([prepared[k][1] for k in part], _ssl_loss, [prepared[k][2] for k in part], cfg.train, seeds=[jobs[k].seed for k in part],
                        device=device, checkpoint_dirs=[jobs[k].checkpoint_dir for k in part], progress=progress, on_step_end=_after_step,
                        executor=part_executor, workers=workers)
        histories.update(zip(part, done))
    return [(prepared[k][0].cpu(), histories[k]) for k in range(len(jobs))]


def save_encoder(path: Path, encoder: RB3D, history: History, meta: dict[str, Any]) -> Path:
    """Write the encoder (classifier head dropped) with its loss history and ``meta`` (method, data set, seeds)."""
    return checkpoints.save_model(path, encoder, "rb3d-encoder", {**meta, "history": history.epochs})


def load_encoder(path: str | Path, n_classes: int | None = None) -> RB3D:
    """An RB3D with pre-trained encoder weights and a fresh classifier (``n_classes`` or the saved one)."""
    model, _ = checkpoints.load_model(path, "rb3d-encoder", n_classes)
    return model  # type: ignore[return-value]


def standardise(train_emb: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Z-score every dimension with the training embeddings' mean and std.

    Globally pooled features of z-scored noisy subtomograms share a large common offset (the mean
    activation), and cosine similarity on raw features would see mostly that offset; removing it per
    dimension lets the probe see what differs between particles. Shapes ``(n, d)`` in and out.
    """
    mean, std = train_emb.mean(0, keepdims=True), train_emb.std(0, keepdims=True) + 1e-12
    return [(e - mean) / std for e in (train_emb, *others)]


def knn_accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray, k: int = 5) -> float:
    """Accuracy of a cosine k-NN majority vote on standardised embeddings ``(n, d)``.

    The embeddings are z-scored per dimension with the training set's statistics first (see ``standardise``).
    """
    train_z, test_z = standardise(np.asarray(train_emb, dtype=np.float64), np.asarray(test_emb, dtype=np.float64))
    a = F.normalize(torch.as_tensor(train_z), dim=1)
    b = F.normalize(torch.as_tensor(test_z), dim=1)
    nearest = (b @ a.T).topk(min(k, len(a)), dim=1).indices.numpy()
    votes = np.asarray(train_labels)[nearest]
    predicted = np.array([np.bincount(v).argmax() for v in votes])
    return float((predicted == np.asarray(test_labels)).mean())


def embedding_std(emb: np.ndarray) -> float:
    """Mean per-dimension std of L2-normalised embeddings: near 0 means collapse."""
    z = F.normalize(torch.as_tensor(emb), dim=1).numpy()
    return float(z.std(0).mean())
