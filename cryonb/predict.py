"""Apply trained models to extracted subtomograms (the output folder of ``python -m cryonb extract``).

Public surface: :func:`load_subtomograms`, :func:`load_checkpoint`, :func:`read_support`,
:func:`oneshot_predict`, :func:`write_oneshot`.

A support folder holds one entry per class, named after the class: either a sub-folder of MRC
volumes (several = k-shot; their embeddings are averaged, as in :func:`cryonb.oneshot.episode_logits`)
or a single ``<class>.mrc``. Support volumes must have the subtomograms' box and voxel size; cut them
with the same ``extract`` call (``--mrc``) and copy the ones you choose.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryonb.errors import CryoNBError
from cryonb.io import read_mrc, save_npy_atomic, write_mrc, write_text_atomic

__all__ = [
    "Subtomograms",
    "Support",
    "load_subtomograms",
    "load_checkpoint",
    "checkpoint_kind",
    "read_support",
    "oneshot_predict",
    "write_oneshot",
    "CHECKPOINT_FORMAT",
    "classify_predict",
    "write_predictions",
]

#: newest checkpoint ``format_version`` this code reads (a checkpoint without one counts as 1)
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Subtomograms:
    """An ``extract`` output folder.

    volumes: (N, box, box, box) float32, z-scored (memory-mapped).
    meta: one row per volume.
    voxel_size_a: model voxel size in Å (from meta.csv; None if absent).
    """

    folder: Path
    volumes: np.ndarray
    meta: pd.DataFrame
    voxel_size_a: float | None


@dataclass(frozen=True)
class Support:
    """Support volumes per class: names (n,), volumes (S, box, box, box) float32 z-scored, class_of (S,) ints."""

    names: list[str]
    volumes: np.ndarray
    class_of: np.ndarray


def load_subtomograms(folder: str | os.PathLike[str]) -> Subtomograms:
    """Read ``volumes.npy`` (memory-mapped) and ``meta.csv`` of an extract folder, checking they agree."""
    f = Path(folder)
    vol_path, meta_path = f / "volumes.npy", f / "meta.csv"
    if not vol_path.is_file() or not meta_path.is_file():
        raise CryoNBError(
            f"{f}: expected volumes.npy and meta.csv from `python -m cryonb extract`; "
            f"found {sorted(p.name for p in f.iterdir()) if f.is_dir() else 'no such folder'}"
        )
    try:
        volumes = np.load(vol_path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise CryoNBError(f"{vol_path}: not a readable .npy array ({exc})") from exc
    if volumes.ndim != 4 or len(set(volumes.shape[1:])) != 1 or volumes.dtype != np.float32:
        raise CryoNBError(f"{vol_path}: expected (N, box, box, box) float32, got {volumes.shape} {volumes.dtype}")
    meta = pd.read_csv(meta_path)
    if len(meta) != len(volumes):
        raise CryoNBError(f"{f}: meta.csv has {len(meta)} rows but volumes.npy holds {len(volumes)} volumes")
    voxel = float(meta["voxel_size_a"].iloc[0]) if "voxel_size_a" in meta and len(meta) else None
    return Subtomograms(f, volumes, meta, voxel)


def checkpoint_kind(payload: dict[str, Any]) -> str:
    """Which model a checkpoint holds: "cosnet", "rb3d" or the name it declares ("unknown" if none)."""
    for key in ("model_type", "arch", "model_name", "kind", "model_class"):  # model_class: cryonb.train.fit
        value = payload.get(key)
        if isinstance(value, str):
            return value.lower().replace("-", "")
    config = payload.get("model_config") or {}
    if "variant" in payload and "attention" in config:
        return "cosnet"
    if {"n_classes", "width", "embedding_dim"} <= set(config):
        return "rb3d"
    return "unknown"


def load_checkpoint(path: str | os.PathLike[str], expected: str) -> dict[str, Any]:
    """Load a checkpoint dict safely (tensors and plain types only) and check it holds ``expected``.

    Raises
    ------
    CryoNBError
        Missing or unreadable file, not a cryonb checkpoint, or a checkpoint of another model.
    """
    p = Path(path)
    if not p.is_file():
        raise CryoNBError(f"{p}: no such checkpoint file")
    try:
        # weights_only: a checkpoint from someone else cannot run code when loaded.
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CryoNBError(
            f"{p}: not a readable cryonb checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "only model checkpoints (tensors and plain values, e.g. best.pt) are loaded, never a training "
            "state holding Python objects (last.pt)"
        ) from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CryoNBError(f"{p}: not a cryonb checkpoint (expected a dict with a 'model' state dict)")
    version = payload.get("format_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CryoNBError(
            f"{p}: checkpoint format_version {version!r} is newer than this cryonb reads ({CHECKPOINT_FORMAT}); "
            "update cryonb or re-export the checkpoint"
        )
    kind = checkpoint_kind(payload)
    if kind != expected:
        hint = {"cosnet": "use `python -m cryonb oneshot`", "rb3d": "use `python -m cryonb classify`"}.get(kind, "")
        raise CryoNBError(f"{p}: checkpoint of model {kind!r}, expected {expected!r}" + (f"; {hint}" if hint else ""))
    return payload


def _zscore(v: np.ndarray) -> np.ndarray:
    std = float(v.std())
    return ((v - v.mean()) / std if std > 0 else np.zeros_like(v)).astype(np.float32)


def read_support(folder: str | os.PathLike[str], box: int, voxel_size_a: float | None) -> Support:
    """Support volumes per class from ``folder`` (sub-folders of MRCs, or one ``<class>.mrc`` per class).

    Raises
    ------
    CryoNBError
        Missing folder, fewer than two classes, an empty class folder, a volume of another box or voxel size.
    """
    f = Path(folder)
    if not f.is_dir():
        raise CryoNBError(f"{f}: no such support folder")
    files: dict[str, list[Path]] = {}
    for entry in sorted(f.iterdir()):
        if entry.is_dir():
            files[entry.name] = sorted(entry.glob("*.mrc"))
        elif entry.suffix.lower() == ".mrc":
            files.setdefault(entry.stem, []).append(entry)
    if len(files) < 2:
        raise CryoNBError(
            f"{f}: support folder has {len(files)} class(es) ({', '.join(files) or 'none'}); "
            "one-shot classification needs at least 2 (one sub-folder or <class>.mrc per class)"
        )
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise CryoNBError(f"{f}: support class folder(s) {empty} hold no .mrc volumes")
    volumes, class_of = [], []
    for c, (name, paths) in enumerate(files.items()):
        for p in paths:
            vol = read_mrc(p)
            if vol.data.shape != (box, box, box):
                raise CryoNBError(f"{p}: support volume has shape {vol.data.shape}, expected ({box}, {box}, {box}) like the subtomograms")
            if voxel_size_a is not None and abs(vol.voxel_size_a - voxel_size_a) > 0.01 * voxel_size_a:
                raise CryoNBError(f"{p}: support voxel size {vol.voxel_size_a:g} Å, expected {voxel_size_a:g} Å like the subtomograms")
            volumes.append(_zscore(vol.data))
            class_of.append(c)
    return Support(list(files), np.stack(volumes), np.array(class_of))


def _instantiate(source: str, model_name: str, advice: str, build: Callable[[], torch.nn.Module],
                 state: dict[str, torch.Tensor]) -> Any:
    """Build a model and load its weights; any mismatch becomes one clear error naming the checkpoint."""
    try:
        net = build()
        net.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, CryoNBError) as exc:
        raise CryoNBError(
            f"{source}: {model_name} checkpoint incompatible with this cryonb version ({' '.join(str(exc).split())[:300]}); {advice}"
        ) from exc
    return net.eval()


def _load_cosnet(payload: dict[str, Any], source: str) -> Any:
    from cryonb.models.cosnet import COSNet, COSNetConfig

    return _instantiate(source, "COS-Net", "retrain it with this version",
                        lambda: COSNet(COSNetConfig(**payload["model_config"])), payload["model"])


@torch.no_grad()
def oneshot_predict(
    checkpoint: str | os.PathLike[str],
    subtomos: Subtomograms,
    support: Support,
    batch_size: int = 32,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """COS-Net one-shot classification of every subtomogram against the support classes.

    Returns
    -------
    table : pandas.DataFrame
        Per subtomogram: ``index``, ``predicted`` (class name), ``probability`` (its match probability),
        ``p_<class>`` (sigmoid of each class's match logit; they need not sum to 1), the extract
        metadata columns ``x, y, z, border`` when present.
    masks : np.ndarray, (N, box, box, box) float32 or None
        Segmentation probabilities, None for a variant without decoder.
    """
    payload = load_checkpoint(checkpoint, "cosnet")
    net = _load_cosnet(payload, str(checkpoint))
    box = subtomos.volumes.shape[1]
    if net.cfg.box != box:
        raise CryoNBError(f"{checkpoint}: COS-Net was trained on {net.cfg.box}³ boxes, the subtomograms are {box}³; re-extract with --box {net.cfg.box}")

    def run(volumes: np.ndarray) -> tuple[torch.Tensor, list[np.ndarray]]:
        embs, masks = [], []
        for s in range(0, len(volumes), batch_size):
            x = torch.from_numpy(np.array(volumes[s : s + batch_size], dtype=np.float32))[:, None]  # a writable copy
            e, m = net(x)
            embs.append(e)
            if m is not None:
                masks.append(m[:, 0].numpy())
        return torch.cat(embs), masks

    sup_emb, _ = run(support.volumes)
    n_cls = len(support.names)
    protos = torch.stack([sup_emb[torch.from_numpy(support.class_of == c)].mean(0) for c in range(n_cls)])
    emb, mask_parts = run(subtomos.volumes)
    logits = net.match_logits((emb[:, None, :] - protos[None]).abs())  # (N, n)
    prob = torch.sigmoid(logits).numpy()
    best = prob.argmax(1)
    table = pd.DataFrame({"index": np.arange(len(prob)), "predicted": [support.names[i] for i in best], "probability": prob.max(1)})
    for c, name in enumerate(support.names):
        table[f"p_{name}"] = prob[:, c]
    for col in ("x", "y", "z", "border"):
        if col in subtomos.meta:
            table[col] = subtomos.meta[col].to_numpy()
    table["checkpoint"] = str(checkpoint)
    table["variant"] = payload.get("variant", "")
    table["seed"] = payload.get("seed", "")
    masks = np.concatenate(mask_parts).astype(np.float32) if mask_parts else None
    return table, masks


def write_oneshot(
    out_dir: str | os.PathLike[str], table: pd.DataFrame, masks: np.ndarray | None, voxel_size_a: float | None
) -> list[Path]:
    """Write ``oneshot.csv`` and, with masks, ``masks.npy`` and ``masks/mask_NNNNNN.mrc``; all atomically."""
    out = Path(out_dir)
    written: list[Path] = []
    if masks is not None:
        for i, m in enumerate(masks):
            written.append(write_mrc(out / "masks" / f"mask_{i:06d}.mrc", m, voxel_size_a or 1.0))
        written.append(save_npy_atomic(out / "masks.npy", masks))
    written.append(write_text_atomic(out / "oneshot.csv", table.to_csv(index=False)))
    return written


def _load_rb3d(payload: dict[str, Any], source: str) -> Any:
    from cryonb.models.rb3d import RB3D, RB3DConfig

    # DDP checkpoints prefix every key with "module.".
    state = {k.removeprefix("module."): v for k, v in payload["model"].items()}
    return _instantiate(source, "RB3D", "retrain or re-export it with this version",
                        lambda: RB3D(_rb3d_config(payload, state, RB3DConfig)), state)


def _rb3d_config(payload: dict[str, Any], state: dict[str, torch.Tensor], config_cls: Any) -> Any:
    """The RB3DConfig recorded in the checkpoint, else read off the weights' shapes (cryonb.train's best.pt
    stores only the state dict); dropout does not matter at inference."""
    if "model_config" in payload:
        return config_cls(**payload["model_config"])
    return config_cls(
        n_classes=int(state["classifier.weight"].shape[0]),
        width=int(state["stem.0.weight"].shape[0]),
        embedding_dim=int(state["embedding.0.weight"].shape[0]),
        pool_size=round((state["embedding.0.weight"].shape[1] / state["stem.0.weight"].shape[0]) ** (1 / 3)),
        norm="batch" if any(k.endswith("running_mean") for k in state) else "none",
    )


def _class_names(payload: dict[str, Any], n_classes: int, source: str) -> list[str]:
    names = payload.get("class_names")
    if names is None:
        return [f"class_{i}" for i in range(n_classes)]
    names = [str(n) for n in names]
    if len(names) != n_classes:
        raise CryoNBError(f"{source}: checkpoint lists {len(names)} class names for a {n_classes}-class classifier")
    return names


@torch.no_grad()
def classify_predict(checkpoint: str | os.PathLike[str], subtomos: Subtomograms, batch_size: int = 32) -> pd.DataFrame:
    """Class probabilities of every subtomogram under an RB3D classifier checkpoint.

    The checkpoint is a dict with ``model`` (state dict), ``model_config`` (:class:`~cryonb.models.rb3d.RB3DConfig`
    fields) and optionally ``model_type: "rb3d"``, ``class_names``, ``box``, ``voxel_size_a``, ``seed``,
    ``format_version``. ``box`` and ``voxel_size_a``, when recorded, must match the subtomograms.

    Returns
    -------
    pandas.DataFrame
        Per subtomogram: ``index``, ``predicted``, ``probability`` (softmax of the predicted class),
        ``p_<class>`` for every class (they sum to 1), ``x, y, z, border`` from meta.csv when present.
    """
    source = str(checkpoint)
    payload = load_checkpoint(checkpoint, "rb3d")
    net = _load_rb3d(payload, source)
    box = subtomos.volumes.shape[1]
    if payload.get("box") not in (None, box):
        raise CryoNBError(f"{source}: classifier trained on {payload['box']}³ boxes, the subtomograms are {box}³; re-extract with --box {payload['box']}")
    trained_a = payload.get("voxel_size_a")
    if trained_a is not None and subtomos.voxel_size_a is not None and abs(float(trained_a) - subtomos.voxel_size_a) > 0.01 * float(trained_a):
        raise CryoNBError(
            f"{source}: classifier trained at {float(trained_a):g} Å voxels, the subtomograms are {subtomos.voxel_size_a:g} Å; "
            f"re-extract with --voxel-size-a {float(trained_a):g}"
        )
    names = _class_names(payload, net.config.n_classes, source)
    parts = []
    for s in range(0, len(subtomos.volumes), batch_size):
        x = torch.from_numpy(np.array(subtomos.volumes[s : s + batch_size], dtype=np.float32))[:, None]
        parts.append(torch.softmax(net(x), dim=1).numpy())
    prob = np.concatenate(parts) if parts else np.zeros((0, len(names)), np.float32)
    best = prob.argmax(1)
    table = pd.DataFrame({"index": np.arange(len(prob)), "predicted": [names[i] for i in best], "class_number": best + 1, "probability": prob.max(1) if len(prob) else []})
    for c, name in enumerate(names):
        table[f"p_{name}"] = prob[:, c]
    for col in ("x", "y", "z", "border"):
        if col in subtomos.meta:
            table[col] = subtomos.meta[col].to_numpy()
    table["checkpoint"] = source
    table["seed"] = payload.get("seed", "")
    return table


def write_predictions(out_dir: str | os.PathLike[str], table: pd.DataFrame, tomo_name: str | None = None) -> list[Path]:
    """Write ``predictions.csv`` and, when coordinates are known, ``predictions.star`` (RELION labels only:
    rlnCoordinateX/Y/Z in tomogram voxels, rlnClassNumber 1-based, rlnMaxValueProbDistribution)."""
    out = Path(out_dir)
    written = [write_text_atomic(out / "predictions.csv", table.to_csv(index=False))]
    if {"x", "y", "z"} <= set(table.columns):
        import starfile

        star = pd.DataFrame({
            "rlnCoordinateX": table["x"], "rlnCoordinateY": table["y"], "rlnCoordinateZ": table["z"],
            "rlnClassNumber": table["class_number"], "rlnMaxValueProbDistribution": table["probability"],
        })
        if tomo_name:
            star.insert(0, "rlnTomoName", tomo_name)
        written.append(write_text_atomic(out / "predictions.star", starfile.to_string({"particles": star})))
    return written
