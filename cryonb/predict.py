"""Apply trained models to extracted subtomograms (the output folder of ``python -m cryonb extract``).

Public surface: :func:`load_subtomograms`, :func:`read_support`, :func:`classify_predict`,
:func:`write_predictions`, :func:`oneshot_predict`, :func:`write_oneshot`. Checkpoints are read by
:mod:`cryonb.checkpoints` (tensors and plain values only).

Results go out as CSV, as a RELION STAR file (``star_style="relion4"``: rlnCoordinateX/Y/Z in tomogram
voxels; ``"relion5"``: rlnTomoName + rlnCenteredCoordinateX/Y/ZAngst and an optics block with the pixel size,
for RELION 5 / Warp) and, with ``copick=True``, as one copick picks file per class with its score
(:mod:`cryonb.picks`).

A support folder holds one entry per class, named after the class: either a sub-folder of MRC
volumes (several = k-shot; their embeddings are averaged, as in :func:`cryonb.oneshot.episode_logits`)
or a single ``<class>.mrc``. Support volumes must have the subtomograms' box and voxel size; cut them
with the same ``extract`` call (``--mrc``) and copy the ones you choose.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryonb import checkpoints
from cryonb.embedding import class_prototypes, embed, prototype_scores
from cryonb.errors import CryoNBError
from cryonb.io import read_mrc, save_npy_atomic, write_mrc, write_text_atomic
from cryonb.outputs import MARKER

__all__ = [
    "Subtomograms",
    "Support",
    "load_subtomograms",
    "read_support",
    "oneshot_predict",
    "write_oneshot",
    "classify_predict",
    "write_predictions",
    "STAR_STYLES",
]

#: the STAR conventions ``classify`` and ``oneshot`` write
STAR_STYLES = ("relion4", "relion5")

@dataclass(frozen=True)
class Subtomograms:
    """An ``extract`` output folder.

    volumes: (N, box, box, box) float32, z-scored (memory-mapped).
    meta: one row per volume.
    voxel_size_a: model voxel size in Å (from meta.csv; None if absent).
    polarity: "dark" or "bright" protein in the boxes (from meta.csv; None if absent).
    """

    folder: Path
    volumes: np.ndarray
    meta: pd.DataFrame
    voxel_size_a: float | None
    polarity: str | None = None


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
    polarity = str(meta["polarity"].iloc[0]) if "polarity" in meta and len(meta) else None
    return Subtomograms(f, volumes, meta, voxel, polarity)


def _zscore(v: np.ndarray, source: Path) -> np.ndarray:
    std = float(v.std())
    if not std > 0:  # a flat box z-scores to zeros, which lies near every embedding and attracts every query
        raise CryoNBError(f"{source}: support volume is flat (one value everywhere); choose a box that shows the particle")
    return ((v - v.mean()) / std).astype(np.float32)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CryoNBError(f"batch size {batch_size!r}: expected an integer ≥ 1")


def _check_data(payload: dict[str, Any], subtomos: Subtomograms, source: str, box: int | None) -> None:
    """The checkpoint's box and voxel size (when recorded) must be the subtomograms'."""
    n = subtomos.volumes.shape[1]
    if box is not None and box != n:
        raise CryoNBError(f"{source}: model trained on {box}³ boxes, the subtomograms are {n}³; re-extract with --box {box}")
    trained_a = payload.get("voxel_size_a")
    if trained_a is not None and subtomos.voxel_size_a is not None and abs(float(trained_a) - subtomos.voxel_size_a) > 0.01 * float(trained_a):
        raise CryoNBError(
            f"{source}: model trained at {float(trained_a):g} Å voxels, the subtomograms are {subtomos.voxel_size_a:g} Å; "
            f"re-extract with --voxel-size-a {float(trained_a):g}"
        )
    trained, boxes = payload.get("polarity"), subtomos.polarity
    if trained is not None and boxes is not None and trained != boxes:
        raise CryoNBError(
            f"{source}: model trained on protein-{trained} boxes, {subtomos.folder} holds protein-{boxes} boxes; "
            f"re-extract with the --polarity your tomogram shows (the boxes are then converted to the model's)"
        )


def _check_finite(values: np.ndarray, source: str) -> None:
    bad = ~np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
    if bad.any():
        raise CryoNBError(f"{source}: the model's outputs are NaN or inf for {int(bad.sum())} of {len(bad)} subtomograms "
                          f"(first: {int(np.flatnonzero(bad)[0])}); check those volumes (e.g. all-NaN boxes) and the checkpoint")


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
    if (f / MARKER).is_file():  # e.g. `oneshot -o support/` once: its masks/ would become a class
        raise CryoNBError(f"{f}: an output folder of cryonb ({MARKER}), not a support folder; put the example boxes in a folder of their own")
    files: dict[str, list[Path]] = {}
    for entry in sorted(f.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden files and our temporaries are never classes
        if entry.is_dir() and (entry / MARKER).is_file():  # e.g. the masks/ of an earlier oneshot output
            raise CryoNBError(f"{entry}: an output folder of cryonb ({MARKER}), not a class of examples; move it out of the support folder {f}")
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
            volumes.append(_zscore(vol.data, p))
            class_of.append(c)
    return Support(list(files), np.stack(volumes), np.array(class_of))


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
        Per subtomogram: ``index``, ``predicted`` (class name), ``class_number`` (1-based, support order),
        ``probability`` (its match probability),
        ``p_<class>`` (sigmoid of each class's match logit; they need not sum to 1), the extract
        metadata columns ``x, y, z, border`` when present.
    masks : np.ndarray, (N, box, box, box) float32 or None
        Segmentation probabilities, None for a variant without decoder.
    """
    _check_batch_size(batch_size)
    net, payload = checkpoints.load_model(checkpoint, "cosnet")
    _check_data(payload, subtomos, str(checkpoint), net.config.box)
    sup_emb, _ = embed(net, support.volumes, batch_size=batch_size)
    protos = class_prototypes(sup_emb, support.class_of, len(support.names))
    emb, masks_t = embed(net, subtomos.volumes, batch_size=batch_size)
    logits = prototype_scores(emb, protos, head=net.match_logits)  # (N, n)
    prob = torch.sigmoid(logits).numpy()
    _check_finite(prob, str(checkpoint))
    best = prob.argmax(1)
    table = pd.DataFrame({"index": np.arange(len(prob)), "predicted": [support.names[i] for i in best],
                          "class_number": best + 1, "probability": prob.max(1)})
    for c, name in enumerate(support.names):
        table[f"p_{name}"] = prob[:, c]
    for col in ("x", "y", "z", "border"):
        if col in subtomos.meta:
            table[col] = subtomos.meta[col].to_numpy()
    table["checkpoint"] = str(checkpoint)
    table["variant"] = payload.get("variant", "")
    table["seed"] = payload.get("seed", "")
    return table, (masks_t.numpy() if masks_t is not None else None)


def write_oneshot(
    out_dir: str | os.PathLike[str],
    table: pd.DataFrame,
    masks: np.ndarray | None,
    voxel_size_a: float | None,
    *,
    meta: pd.DataFrame | None = None,
    tomo_name: str | None = None,
    star_style: str = "relion4",
    copick: bool = False,
) -> list[Path]:
    """Write ``oneshot.csv``, ``oneshot.star`` (when coordinates are known), with masks ``masks.npy`` and
    ``masks/mask_NNNNNN.mrc``, and with ``copick`` ``copick/cryonb_0_<class>.json``; all atomically.
    ``meta`` is the extract ``meta.csv`` (needed for RELION 5 and copick output)."""
    out = Path(out_dir)
    written: list[Path] = []
    if masks is not None:
        for i, m in enumerate(masks):
            written.append(write_mrc(out / "masks" / f"mask_{i:06d}.mrc", m, voxel_size_a or 1.0))
        written.append(save_npy_atomic(out / "masks.npy", masks))
    written.append(write_text_atomic(out / "oneshot.csv", table.to_csv(index=False)))
    written += _write_picks(out, "oneshot", table, meta, tomo_name, star_style, copick)
    return written


def _tomogram_of(meta: pd.DataFrame | None, what: str, need_shape: bool) -> tuple[float, tuple[int, int, int] | None, str]:
    """(tomogram voxel size Å, shape (z, y, x) or None, name) from an extract ``meta.csv``; raises naming what is missing."""
    need = ["tomo_voxel_size_a"] + ([f"tomo_size_{a}" for a in "zyx"] if need_shape else [])
    missing = [c for c in need if meta is None or c not in meta.columns]
    if missing or meta is None or not len(meta):
        raise CryoNBError(f"{what} needs the tomogram's {'size and ' if need_shape else ''}voxel size from the extract "
                          f"meta.csv, which lacks {missing or 'rows'}; re-extract with this cryonb")
    voxel = float(meta["tomo_voxel_size_a"].iloc[0])
    shape = tuple(int(meta[f"tomo_size_{a}"].iloc[0]) for a in "zyx") if need_shape else None
    tomogram = str(meta["tomogram"].iloc[0]) if "tomogram" in meta.columns else "tomogram"
    name = tomogram.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".mrc", ".rec", ".map", ".zarr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return voxel, shape, name  # type: ignore[return-value]


def _write_picks(
    out: Path, stem: str, table: pd.DataFrame, meta: pd.DataFrame | None, tomo_name: str | None, star_style: str, copick: bool
) -> list[Path]:
    """``<stem>.star`` in ``star_style`` (when the table has coordinates) and the copick files."""
    if star_style not in STAR_STYLES:
        raise CryoNBError(f"--star-style {star_style!r}: expected one of {', '.join(STAR_STYLES)}")
    written: list[Path] = []
    has_xyz = {"x", "y", "z"} <= set(table.columns)
    if star_style == "relion5" and not has_xyz:
        raise CryoNBError(f"{stem}: --star-style relion5 needs particle coordinates (x, y, z) in the extract meta.csv")
    if has_xyz:
        import starfile

        extra = {"rlnClassNumber": table["class_number"].to_numpy(), "rlnMaxValueProbDistribution": table["probability"].to_numpy()}
        if star_style == "relion5":
            from cryonb.picks import relion5_star

            voxel, shape, default_name = _tomogram_of(meta, "--star-style relion5", need_shape=True)
            assert shape is not None
            text = relion5_star(table, tomo_name=tomo_name or default_name, tomo_voxel_size_a=voxel, tomo_shape_zyx=shape,
                                extra=extra)
        else:
            star = pd.DataFrame({"rlnCoordinateX": table["x"], "rlnCoordinateY": table["y"], "rlnCoordinateZ": table["z"], **extra})
            if tomo_name:
                star.insert(0, "rlnTomoName", tomo_name)
            text = starfile.to_string({"particles": star})
        written.append(write_text_atomic(out / f"{stem}.star", text))
    if copick:
        from cryonb.picks import write_copick_picks

        if not has_xyz:
            raise CryoNBError(f"{stem}: --copick needs particle coordinates (x, y, z) in the extract meta.csv")
        voxel, _, default_name = _tomogram_of(meta, "--copick", need_shape=False)
        written += write_copick_picks(out / "copick", table, voxel, run_name=tomo_name or default_name)
    return written


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
    _check_batch_size(batch_size)
    net, payload = checkpoints.load_model(checkpoint, "rb3d")
    _check_data(payload, subtomos, source, payload.get("box"))
    names = _class_names(payload, net.config.n_classes, source)
    parts = []
    for s in range(0, len(subtomos.volumes), batch_size):
        x = torch.from_numpy(np.array(subtomos.volumes[s : s + batch_size], dtype=np.float32))[:, None]
        parts.append(torch.softmax(net(x), dim=1).numpy())
    prob = np.concatenate(parts) if parts else np.zeros((0, len(names)), np.float32)
    _check_finite(prob, source)
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


def write_predictions(
    out_dir: str | os.PathLike[str],
    table: pd.DataFrame,
    tomo_name: str | None = None,
    *,
    meta: pd.DataFrame | None = None,
    star_style: str = "relion4",
    copick: bool = False,
) -> list[Path]:
    """Write ``predictions.csv`` and, when coordinates are known, ``predictions.star``: ``star_style``
    "relion4" (rlnCoordinateX/Y/Z in tomogram voxels) or "relion5" (rlnTomoName, rlnCenteredCoordinateX/Y/ZAngst,
    an optics block with the pixel size), with rlnClassNumber 1-based and rlnMaxValueProbDistribution; with
    ``copick`` also ``copick/cryonb_0_<class>.json``. ``meta`` is the extract ``meta.csv`` (needed for RELION 5
    and copick output: the tomogram's size and voxel size)."""
    out = Path(out_dir)
    written = [write_text_atomic(out / "predictions.csv", table.to_csv(index=False))]
    return written + _write_picks(out, "predictions", table, meta, tomo_name, star_style, copick)
