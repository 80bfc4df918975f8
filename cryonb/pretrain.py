"""CSSL pre-training of RB3D and the frozen-embedding quality signal (k-NN accuracy).

``ensure_pretrained(method, recipe, cfg, work_dir)`` returns the path of an encoder checkpoint, training it
only when no checkpoint with the same method, data recipe and config exists (content hash), and resuming a
run that was interrupted. Pre-training sees the training split without labels, as in the paper.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cryonb.augment import AugmentConfig, two_views
from cryonb.data import iterate_batches, to_tensor
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.io import atomic_path
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.ssl import METHODS, MoCo, SimCLR, SwAV
from cryonb.train import History, TrainConfig, fit, load_checkpoint

__all__ = ["PretrainConfig", "build_ssl", "ensure_pretrained", "load_encoder", "random_encoder", "embed", "knn_accuracy", "embedding_std", "standardise"]


@dataclass
class PretrainConfig:
    width: int = 16
    embedding_dim: int = 256
    pool_size: int = 4  # RB3D's pooled cells per axis (see cryonb.models.rb3d)
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    projection_dim: int = 128
    moco_queue: int = 128
    moco_momentum: float = 0.999
    moco_temperature: float = 0.2
    simclr_temperature: float = 0.5
    swav_prototypes: int = 30
    swav_queue: int = 64
    swav_temperature: float = 0.1
    max_samples: int | None = None  # cap on unlabelled training subtomograms (quick profile)
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PretrainConfig":
        raw = dict(raw)
        reject_unknown_keys(raw, cls, "pre-training")
        if isinstance(raw.get("augment"), dict):
            raw["augment"] = AugmentConfig(**raw["augment"])
        return cls(**raw)

    def encoder_config(self, n_classes: int) -> RB3DConfig:
        return RB3DConfig(n_classes=n_classes, width=self.width, embedding_dim=self.embedding_dim, pool_size=self.pool_size)


def build_ssl(method: str, encoder: RB3D, cfg: PretrainConfig) -> nn.Module:
    if method == "moco":
        return MoCo(encoder, cfg.projection_dim, cfg.moco_queue, cfg.moco_momentum, cfg.moco_temperature)
    if method == "simclr":
        return SimCLR(encoder, cfg.projection_dim, cfg.simclr_temperature)
    if method == "swav":
        return SwAV(encoder, cfg.projection_dim, cfg.swav_prototypes, cfg.swav_queue, cfg.swav_temperature)
    raise CryoNBError(f"unknown CSSL method {method!r}; expected one of {', '.join(METHODS)}")


def random_encoder(cfg: PretrainConfig, n_classes: int, seed: int) -> RB3D:
    torch.manual_seed(seed)
    return RB3D(cfg.encoder_config(n_classes))


def _key(method: str, data_key: str, cfg: PretrainConfig) -> str:
    text = json.dumps({"method": method, "data": data_key, "cfg": asdict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _train_indices(ds: Any, cfg: PretrainConfig) -> np.ndarray:
    idx = ds.indices(split="train")
    if cfg.max_samples is not None and len(idx) > cfg.max_samples:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, cfg.max_samples, replace=False))
    return idx


def pretrain(method: str, ds: Any, cfg: PretrainConfig, checkpoint_dir: Path, progress: bool = True) -> tuple[RB3D, History]:
    """Train one CSSL method on the data set's training split (labels unused); returns the encoder and history."""
    n_classes = len(ds.classes)
    encoder = random_encoder(cfg, n_classes, cfg.seed)
    model = build_ssl(method, encoder, cfg)
    idx = _train_indices(ds, cfg)
    volumes = to_tensor(ds.volumes, idx)
    ids = torch.as_tensor(idx)

    def batches(epoch: int, generator: torch.Generator):  # noqa: ANN202
        for b in iterate_batches(len(idx), cfg.batch_size, generator, drop_last=len(idx) > cfg.batch_size):
            v1, v2 = two_views(volumes[b], cfg.augment, generator)
            yield v1, v2, ids[b]

    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            optimizer="adam", seed=cfg.seed, checkpoint_dir=checkpoint_dir, progress=progress)
    history = fit(model, lambda m, b: {"loss": m.loss(*b)}, batches, train_cfg,
                  on_step_end=lambda m, b, o: m.after_step())
    return encoder, history


def ensure_pretrained(method: str, recipe: Any, cfg: PretrainConfig, work_dir: str | Path, progress: bool = True) -> Path:
    """Path of ``encoder.pt`` for (method, data recipe, cfg): reused if present, trained (or resumed) otherwise."""
    from cryonb.paths import resolve
    from cryonb.simulate import ensure_dataset

    if method not in METHODS:
        raise CryoNBError(f"unknown CSSL method {method!r}; expected one of {', '.join(METHODS)}")
    ds = ensure_dataset(recipe, progress=progress)
    folder = resolve(work_dir) / "cssl" / f"{method}-{_key(method, ds.root.name, cfg)}"
    target = folder / "encoder.pt"
    if target.is_file():
        return target
    encoder, history = pretrain(method, ds, cfg, folder / "train", progress=progress)
    state = {"model": encoder.encoder_state(), "encoder_config": asdict(encoder.config), "method": method,
             "dataset": ds.root.name, "pretrain_config": json.loads(json.dumps(asdict(cfg), default=str)),
             "history": history.epochs, "seed": cfg.seed, "model_class": "RB3D"}
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def load_encoder(path: str | Path, n_classes: int | None = None) -> RB3D:
    """An RB3D with pre-trained encoder weights and a fresh classifier (``n_classes`` or the saved one)."""
    ckpt = load_checkpoint(Path(path))
    if ckpt.get("model_class") != "RB3D" or "encoder_config" not in ckpt:
        raise CryoNBError(f"{path}: not an RB3D encoder checkpoint (model_class {ckpt.get('model_class')!r})")
    config = dict(ckpt["encoder_config"])
    if n_classes is not None:
        config["n_classes"] = n_classes
    model = RB3D(RB3DConfig(**config))
    model.load_encoder_state(ckpt["model"])
    return model


@torch.no_grad()
def embed(encoder: RB3D, volumes: np.ndarray, index: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Frozen embeddings ``(len(index), embedding_dim)`` in eval mode."""
    encoder.eval()
    out = [encoder.encode(to_tensor(volumes, index[i : i + batch_size])).numpy() for i in range(0, len(index), batch_size)]
    return np.concatenate(out)


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
