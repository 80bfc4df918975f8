"""Train and evaluate COS-Net over episodes; the prototypical / nearest-neighbour baseline.

Training follows the paper: each step draws two 1-shot support sets over the same n seen classes,
embeds all 2n volumes with the shared branch, and scores every cross pair; the loss is
``w_bce · BCE(match) + w_dice · Dice(masks of both sets)``, Adam lr 1e-4, betas (0.5, 0.999).

Evaluation embeds each volume of the test pool once (the branches share weights, so an embedding
does not depend on the episode), then scores any number of episodes from the cached embeddings.
k-shot supports are merged by averaging their embeddings (the paper's suggested few-shot extension).

:func:`ensure_cosnet` trains a variant on a simulated data set once and reuses the checkpoint, keyed by
a hash of (variant, data-set recipe, training config). Training runs in :func:`cryonb.train.fit` (AMP on
CUDA, torchrun, atomic checkpoints): an interrupted run resumes from its last epoch of ``steps_per_epoch`` steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cryonb.episodes import Episode, episodes_to_arrays, sample_training_pair
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.io import atomic_path
from cryonb.models.cosnet import COSNet, COSNetConfig, dice_loss
from cryonb.stats import proportion_ci
from cryonb.train import TrainConfig, fit, recalibrate_batchnorm

__all__ = [
    "TrainEpisodesConfig",
    "train_cosnet",
    "ensure_cosnet",
    "load_cosnet",
    "embed",
    "episode_logits",
    "accuracy_ci",
    "prototype_predictions",
    "recipe_key",
    "evaluate_episodes",
    "cosnet_scorer",
    "prototype_scorer",
]


@dataclass(frozen=True)
class TrainEpisodesConfig:
    """Episode training of one COS-Net.

    Attributes
    ----------
    steps : optimiser steps (one training episode pair per step).
    n_way : classes per training support set (the paper trains one model per n-way scheme).
    lr, betas : Adam settings (paper: 1e-4, (0.5, 0.999)).
    w_bce, w_dice : loss weights (match BCE, mask Dice: the paper's two terms).
    w_mask_bce : weight of a voxel-wise BCE on the masks (not in the paper; 0 = off). Molecules fill about
        1 % of a 32³ box, and Dice alone teaches the decoder slowly that the rest is background.
    base_channels, feature_dim, feature_pool, combine, match_head : architecture (see :class:`COSNetConfig`).
    steps_per_epoch : steps per :func:`cryonb.train.fit` epoch: one log row and one resumable checkpoint each.
    recalibrate_bn : training batches hold only 2n volumes, so BatchNorm's running averages are noisy;
        replace them by exact averages over the training pool (:func:`cryonb.train.recalibrate_batchnorm`).
    seed : seeds initialisation and episode sampling.
    """

    steps: int = 300
    n_way: int = 2
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    w_bce: float = 1.0
    w_dice: float = 1.0
    w_mask_bce: float = 0.0
    base_channels: int = 8
    feature_dim: int = 512
    feature_pool: int = 2
    combine: str = "add"
    match_head: str = "linear"
    steps_per_epoch: int = 20
    recalibrate_bn: bool = True  # exact BatchNorm statistics over the training pool after the last step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise CryoNBError(f"steps={self.steps}: expected ≥ 1")
        if self.steps_per_epoch < 1:
            raise CryoNBError(f"steps_per_epoch={self.steps_per_epoch}: expected ≥ 1")
        if self.n_way < 2:
            raise CryoNBError(f"n_way={self.n_way}: expected ≥ 2")
        if not self.lr > 0:
            raise CryoNBError(f"lr={self.lr}: expected > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainEpisodesConfig":
        reject_unknown_keys(d, cls, "COS-Net training")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def model_config(self, variant: str) -> COSNetConfig:
        return COSNetConfig.from_variant(variant, base_channels=self.base_channels, feature_dim=self.feature_dim, feature_pool=self.feature_pool, combine=self.combine, match_head=self.match_head)


def _batch(volumes: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    # memmaps are indexed in sorted order for speed, then put back in the order asked
    order = np.argsort(idx)
    arr = np.asarray(volumes[idx[order]], dtype=np.float32)[np.argsort(order)]
    return torch.from_numpy(arr)[:, None].to(device)


def _loss(net: nn.Module, batch: tuple[torch.Tensor, ...], n: int, cfg: TrainEpisodesConfig) -> dict[str, torch.Tensor]:
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
                     cfg: TrainEpisodesConfig) -> Callable[[int, torch.Generator], Iterator[tuple[torch.Tensor, ...]]]:
    """``fit``'s batches: epoch e holds steps [e·steps_per_epoch, ...), one episode pair each, drawn from a
    generator seeded by (seed, epoch) so that a resumed run draws what an uninterrupted one would."""

    def batches(epoch: int, _generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        rng = np.random.default_rng([cfg.seed, epoch])
        n_steps = min(cfg.steps_per_epoch, cfg.steps - epoch * cfg.steps_per_epoch)
        for _ in range(n_steps):
            _, a, b = sample_training_pair(labels, train_pool, cfg.n_way, rng)
            idx = np.concatenate([a, b])
            x = _batch(volumes, idx, torch.device("cpu"))
            yield (x,) if masks is None else (x, _batch(masks, idx, torch.device("cpu")))

    return batches


def train_cosnet(
    variant: str,
    volumes: np.ndarray,
    masks: np.ndarray,
    labels: np.ndarray,
    train_pool: np.ndarray,
    cfg: TrainEpisodesConfig,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[COSNet, list[dict[str, float]]]:
    """Train one variant on episodes drawn from ``train_pool`` (seen classes) with :func:`cryonb.train.fit`.

    Parameters
    ----------
    volumes : (N, D, D, D) float32 subtomograms; masks : (N, D, D, D) uint8 target masks;
    labels : (N,) class ids; train_pool : indices of the seen-class training rows.
    checkpoint_dir : ``fit`` writes ``last.pt`` there after every ``cfg.steps_per_epoch`` steps and
        resumes from it; with a time budget (:mod:`cryonb.budget`) it stops there with ``PartDone``.

    Returns
    -------
    The trained model (eval mode) and one log row per ``steps_per_epoch`` steps: mean loss terms,
    ``step`` (steps done), ``wall_s``.
    """
    if masks.shape != volumes.shape:
        raise CryoNBError(f"masks have shape {masks.shape}: expected {volumes.shape} like the volumes")
    torch.manual_seed(cfg.seed)  # initialisation; episodes come from per-epoch generators
    net = COSNet(cfg.model_config(variant))
    train_cfg = TrainConfig(
        epochs=-(-cfg.steps // cfg.steps_per_epoch), batch_size=2 * cfg.n_way, lr=cfg.lr, betas=cfg.betas,
        weight_decay=0.0, optimizer="adam", device=str(device), seed=cfg.seed,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None, progress=progress)
    batches = _episode_batches(volumes, masks if net.cfg.decoder else None, labels, train_pool, cfg)
    history = fit(net, lambda model, batch: _loss(model, batch, cfg.n_way, cfg), batches, train_cfg)
    log = [{**row, "step": min(int(row["epoch"]) * cfg.steps_per_epoch, cfg.steps)} for row in history.epochs]
    if cfg.recalibrate_bn:
        recalibrate_batchnorm(net, _batch(volumes, np.sort(np.asarray(train_pool)), torch.device("cpu")), batch_size=16)
    return net.eval(), log


def recipe_key(*parts: Any) -> str:
    """Short content hash of JSON-able parts (dataclasses are converted with ``asdict``)."""

    def norm(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {"__type__": type(x).__name__, **asdict(x)}
        if hasattr(x, "to_dict"):
            return x.to_dict()
        return x

    text = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_cosnet(variant: str, recipe: Any, cfg: TrainEpisodesConfig, work_dir: str | Path, device: torch.device | str = "cpu", dataset: Any = None) -> Path:
    """Path of a trained COS-Net checkpoint for (variant, data-set recipe, cfg), training it if absent.

    Parameters
    ----------
    variant : a key of :data:`cryonb.models.cosnet.VARIANTS`.
    recipe : the simulator recipe (``cryonb.simulate.cosnet_recipe(...)``); ``dataset`` may pass the
        already-built data set for it.
    cfg : training settings.
    work_dir : checkpoints go to ``<work_dir>/cosnet/<variant>-<hash>.pt``.

    NOTE: training uses the rows with split "train" of the seen classes.
    """
    key = recipe_key(variant, recipe, cfg)
    out = Path(work_dir) / "cosnet" / f"{variant}-{key}.pt"
    if out.exists():
        return out
    if dataset is None:
        from cryonb.simulate import ensure_dataset

        dataset = ensure_dataset(recipe)
    labels = dataset.meta["class_id"].to_numpy()
    pool = np.asarray(dataset.indices(split="train", class_split="seen"))
    run_dir = out.with_suffix(".run")  # fit's last.pt: an interrupted training resumes from it
    net, log = train_cosnet(variant, dataset.volumes, dataset.masks, labels, pool, cfg, device, run_dir)
    payload = {
        "variant": variant,
        "model_config": net.cfg.as_dict(),
        "train_config": asdict(cfg),
        "recipe_key": recipe_key(recipe),
        "seed": cfg.seed,
        "model": {k: v.cpu() for k, v in net.state_dict().items()},
        "log": log,
        "train_seconds": sum(r["wall_s"] for r in log),
    }
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def load_cosnet(path: str | Path, device: torch.device | str = "cpu") -> tuple[COSNet, dict[str, Any]]:
    """Model (eval mode) and checkpoint metadata from :func:`ensure_cosnet`."""
    path = Path(path)
    if not path.exists():
        raise CryoNBError(f"COS-Net checkpoint {path} does not exist; expected a file from ensure_cosnet")
    payload = torch.load(path, map_location=device, weights_only=True)
    net = COSNet(COSNetConfig(**payload["model_config"])).to(device)
    net.load_state_dict(payload["model"])
    return net.eval(), payload


@torch.no_grad()
def embed(net: COSNet, volumes: np.ndarray, indices: np.ndarray, batch_size: int = 16, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings (M, F) and mask probabilities (M, D, D, D) (None without decoder) of ``volumes[indices]``."""
    device = torch.device(device)
    net = net.eval().to(device)
    embs, masks = [], []
    for s in range(0, len(indices), batch_size):
        e, m = net(_batch(volumes, np.asarray(indices[s : s + batch_size]), device))
        embs.append(e.cpu())
        if m is not None:
            masks.append(m[:, 0].cpu())
    return torch.cat(embs), (torch.cat(masks) if masks else None)


def _lookup(indices: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    pos = {int(i): p for p, i in enumerate(indices)}

    def f(a: np.ndarray) -> np.ndarray:
        try:
            return np.vectorize(pos.__getitem__, otypes=[np.int64])(a)
        except KeyError as exc:
            raise CryoNBError(f"episode uses data-set row {exc} that was not embedded; embed the whole test pool") from None

    return f


@torch.no_grad()
def episode_logits(net: COSNet, emb: torch.Tensor, emb_indices: np.ndarray, episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """Match logits (E, n) of each episode's query against its n support classes, and the labels (E,).

    emb : (M, F) embeddings of data-set rows ``emb_indices``; k-shot supports are averaged per class.
    """
    _, support, query, labels = episodes_to_arrays(episodes)
    at = _lookup(emb_indices)
    sup = emb[torch.from_numpy(at(support))].mean(2)  # (E, n, F)
    q = emb[torch.from_numpy(at(query))]  # (E, F)
    logits = net.match_logits((q[:, None, :] - sup).abs())
    return logits.numpy(), labels


def prototype_predictions(emb: torch.Tensor, emb_indices: np.ndarray, episodes: list[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """Prototypical-network / nearest-neighbour baseline: predict the support class whose mean
    embedding is closest (Euclidean) to the query. With k = 1 this is 1-nearest-neighbour.

    emb : (M, F) any fixed embedding (raw voxels, RB3D features, COS-Net features) of rows ``emb_indices``.
    Returns predictions (E,) and labels (E,).
    """
    _, support, query, labels = episodes_to_arrays(episodes)
    at = _lookup(emb_indices)
    sup = emb[torch.from_numpy(at(support))].float().mean(2)
    q = emb[torch.from_numpy(at(query))].float()
    d = ((sup - q[:, None, :]) ** 2).sum(-1)
    return d.argmin(1).numpy(), labels


def accuracy_ci(correct: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean accuracy and its Wilson confidence interval over independent episodes.

    correct : (E,) booleans → {"accuracy", "ci_low", "ci_high", "n_episodes"}.
    """
    correct = np.asarray(correct, dtype=bool)
    if len(correct) == 0:
        raise CryoNBError("accuracy over 0 episodes: expected at least one")
    low, high = proportion_ci(int(correct.sum()), len(correct), level)
    return {"accuracy": float(correct.mean()), "ci_low": low, "ci_high": high, "n_episodes": len(correct)}


def evaluate_episodes(
    scorer: Callable[[list[Episode]], tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    pool: np.ndarray,
    n_way: int,
    k_shot: int,
    n_episodes: int,
    seed: int,
) -> tuple[dict[str, float], list[Episode], np.ndarray]:
    """Accuracy with its 95 % CI over ``n_episodes`` seeded test episodes from ``pool``.

    scorer : maps episodes to (predictions (E,), labels (E,)), e.g.
        ``lambda eps: (episode_logits(net, emb, idx, eps)[0].argmax(1), ...)`` or :func:`prototype_predictions`.
    Returns the accuracy row, the episodes and the predicted class position of each (E,).
    NOTE: the same (seed, n_way, k_shot) gives the same episodes for every model, so rows are paired.
    """
    from cryonb.episodes import sample_episodes

    episodes = sample_episodes(labels, pool, n_way, k_shot, n_episodes, seed, what="unseen")
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
    """Scorer for :func:`evaluate_episodes` with :func:`prototype_predictions` on a fixed embedding."""
    return lambda episodes: prototype_predictions(emb, emb_indices, episodes)
