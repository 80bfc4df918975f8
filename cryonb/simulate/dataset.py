"""Simulated subtomogram data sets: recipes, generation with caching, and loading.

A :class:`DatasetRecipe` fully determines a data set; :func:`ensure_dataset` generates it under
``data/generated/<name>-<hash>/`` (hash of the recipe) unless it is already there, else loads it.
Folder contents: ``volumes.npy`` (n, c, c, c) float32 z-scored subtomograms, ``masks.npy``
(n, c, c, c) uint8 target masks, ``meta.csv`` (one row per subtomogram), ``recipe.json`` (the
recipe, its contrast ``polarity``, sizes, sha256 of each file). Generation streams chunks into memory-mapped arrays inside
``<folder>.partial/`` (resumable after an interruption) and renames the folder when complete.

Integrity: each chunk's sha256 is recorded as it is written, so a resumed run keeps only chunks that
are intact (a truncated or altered array, a lost rows file: those chunks are generated again). A
finished set is checked against the sha256s in ``recipe.json`` when opened; a stamp beside it
(``.<folder>.verified.json``, keyed by size, mtime and ctime) spares the next opens the hashing.
One process at a time generates a set: the others wait on ``.<folder>.lock`` (``flock``).

Seeds: sample ``i`` uses ``SeedSequence(seed, spawn_key=(i,))``, so the data do not depend on the
number of worker processes or the chunking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent generation of one set is then unguarded
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cryonb import budget
from cryonb.cache import content_key, file_digest
from cryonb.errors import CryoNBError
from cryonb.io import write_text_atomic
from cryonb.paths import generated_dir, resolve
from cryonb.simulate.config import SimulationConfig, check_snr, snr_label
from cryonb.simulate.density import MoleculeMap, mask_source, molecule_map
from cryonb.simulate.imaging import crop_center, prepare, simulate_fast, simulate_tiltseries
from cryonb.simulate.scene import make_scene
from cryonb.structures import ALL_CLASSES, CSSL_CLASSES, cosnet_split

__all__ = [
    "DatasetRecipe",
    "SubtomoDataset",
    "COSNET_UNSEEN_CLASSES",
    "cssl_recipe",
    "cosnet_recipe",
    "ensure_dataset",
    "generate_dataset",
    "load_dataset",
    "simulate_sample",
    "load_maps",
    "masks_by_rule",
    "target_mask",
    "verify_dataset",
]

#: COS-Net unseen (test-only) and validation-only classes, by the rule of :func:`cryonb.structures.cosnet_split`:
#: the paper's 22 classes are 14 seen + 8 unseen; we add 2 validation classes that no test touches.
COSNET_UNSEEN_CLASSES, COSNET_VALIDATION_CLASSES = cosnet_split()
_FORMAT_VERSION = 6  # bump when the simulator changes what a recipe produces (5: physics v2, protein dark; 6: mask rule)


@dataclass(frozen=True)
class DatasetRecipe:
    """Everything that determines a simulated data set.

    classes: PDB ids; index = class_id. unseen_classes: subset whose samples are all 'test' and
    marked class_split='unseen'. validation_classes: subset whose samples are all 'val' and marked
    class_split='validation' (never trained on, never tested: for choices made from data).
    split_fractions: train/val/test fractions within each seen class.
    """

    name: str
    classes: tuple[str, ...]
    n_per_class: int
    snr: float
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    unseen_classes: tuple[str, ...] = ()
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    validation_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c).lower() for c in self.classes))
        object.__setattr__(self, "unseen_classes", tuple(str(c).lower() for c in self.unseen_classes))
        object.__setattr__(self, "validation_classes", tuple(str(c).lower() for c in self.validation_classes))
        object.__setattr__(self, "snr", check_snr(self.snr))
        if not self.name or any(ch in self.name for ch in "/\\ "):
            raise CryoNBError(f"recipe name {self.name!r}: expected a non-empty name without slashes or spaces")
        if not self.classes:
            raise CryoNBError("recipe classes: expected at least one PDB id")
        if len(set(self.classes)) != len(self.classes):
            raise CryoNBError(f"recipe classes {self.classes}: duplicates")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise CryoNBError(f"seed={self.seed!r}: expected an integer >= 0")
        if int(self.n_per_class) < 1:
            raise CryoNBError(f"n_per_class={self.n_per_class}: expected an integer >= 1")
        missing = [c for c in (*self.unseen_classes, *self.validation_classes) if c not in self.classes]
        if missing:
            raise CryoNBError(f"unseen/validation classes {missing} are not among the recipe classes")
        both = sorted(set(self.unseen_classes) & set(self.validation_classes))
        if both:
            raise CryoNBError(f"classes {both} are both unseen (test) and validation classes")
        fr = self.split_fractions
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
            raise CryoNBError(f"split_fractions={fr}: expected three fractions >= 0 summing to 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["snr"] = "inf" if math.isinf(self.snr) else self.snr
        d["classes"] = list(self.classes)
        d["unseen_classes"] = list(self.unseen_classes)
        d["validation_classes"] = list(self.validation_classes)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DatasetRecipe":
        raw = dict(raw)
        raw["simulation"] = SimulationConfig.from_dict(raw.get("simulation"))
        raw["snr"] = float(raw["snr"])
        raw["classes"] = tuple(raw["classes"])
        raw["unseen_classes"] = tuple(raw.get("unseen_classes", ()))
        raw["validation_classes"] = tuple(raw.get("validation_classes", ()))
        raw["split_fractions"] = tuple(raw.get("split_fractions", (0.6, 0.2, 0.2)))
        return cls(**raw)

    def content_hash(self) -> str:
        """12 hex digits of the sha256 of the recipe (and the storage format version)."""
        return content_key(self.to_dict(), _FORMAT_VERSION)

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.content_hash()}"

    @property
    def n_total(self) -> int:
        return len(self.classes) * int(self.n_per_class)


def cssl_recipe(snr: float = 0.1, n_per_class: int = 500, seed: int = 0, **simulation: Any) -> DatasetRecipe:
    """The CSSL paper's 10 classes, stratified 60:20:20 split; ``simulation`` overrides SimulationConfig."""
    snr = check_snr(snr)
    return DatasetRecipe(
        name=f"cssl-snr{snr_label(snr)}-n{n_per_class}-s{seed}", classes=CSSL_CLASSES, n_per_class=n_per_class,
        snr=snr, seed=seed, simulation=SimulationConfig.from_dict(simulation))


def cosnet_recipe(snr: float = 1000.0, n_per_class: int = 60, seed: int = 0, unseen_classes: tuple[str, ...] = COSNET_UNSEEN_CLASSES,
                  validation_classes: tuple[str, ...] = COSNET_VALIDATION_CLASSES, **simulation: Any) -> DatasetRecipe:
    """All 24 bundled classes: ``unseen_classes`` are test only, ``validation_classes`` validation only (defaults:
    :func:`cryonb.structures.cosnet_split`), the others (14) get a 60:20:20 split. ``snr=math.inf`` allowed (no noise)."""
    snr = check_snr(snr)
    return DatasetRecipe(
        name=f"cosnet-snr{snr_label(snr)}-n{n_per_class}-s{seed}", classes=ALL_CLASSES, n_per_class=n_per_class,
        snr=snr, seed=seed, unseen_classes=tuple(unseen_classes), validation_classes=tuple(validation_classes),
        simulation=SimulationConfig.from_dict(simulation))


class SubtomoDataset:
    """A generated data set on disk: memory-mapped volumes and masks plus a metadata table.

    volumes: (n, c, c, c) float32 memmap, each subtomogram z-scored over its crop.
    masks: (n, c, c, c) uint8 memmap, target mask from the noise-free potential.
    meta: DataFrame, one row per subtomogram (class_id, pdb_id, split, class_split, snr, polarity, ...).
    """

    def __init__(self, root: str | os.PathLike[str], verify: bool = True) -> None:
        self.root = Path(root)
        info_path = self.root / "recipe.json"
        if not info_path.is_file():
            raise CryoNBError(f"{self.root}: not a generated data set (no recipe.json)")
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
            self.recipe = DatasetRecipe.from_dict(self.info["recipe"])
        except (ValueError, KeyError, TypeError) as exc:
            raise _damaged(self.root, f"recipe.json is unreadable ({exc})") from exc
        if verify:
            verify_dataset(self.root, self.info)
        try:
            self.volumes = np.load(self.root / "volumes.npy", mmap_mode="r")
            self.masks = np.load(self.root / "masks.npy", mmap_mode="r")
            self.meta = pd.read_csv(self.root / "meta.csv", keep_default_na=False)
            self.meta["snr"] = self.meta["snr"].astype(float)
            self.meta["snr_measured"] = self.meta["snr_measured"].astype(float)
        except (ValueError, OSError, KeyError, pd.errors.ParserError) as exc:
            raise _damaged(self.root, f"a file cannot be read ({exc})") from exc
        self.classes: list[str] = list(self.recipe.classes)
        if len(self.meta) != len(self.volumes) or self.volumes.shape != self.masks.shape:
            raise _damaged(self.root, f"volumes {self.volumes.shape}, masks {self.masks.shape} and "
                                      f"meta ({len(self.meta)} rows) disagree")

    def __len__(self) -> int:
        return len(self.meta)

    def __repr__(self) -> str:
        return f"SubtomoDataset({self.root.name!r}, n={len(self)}, classes={len(self.classes)})"

    def indices(self, split: str | None = "train", class_split: str | None = None) -> np.ndarray:
        """Row indices with the given split ('train'|'val'|'test'|None = all) and class split."""
        if split not in (None, "train", "val", "test"):
            raise CryoNBError(f"split={split!r}: expected 'train', 'val', 'test' or None")
        if class_split not in (None, "seen", "unseen", "validation"):
            raise CryoNBError(f"class_split={class_split!r}: expected 'seen', 'unseen', 'validation' or None")
        keep = np.ones(len(self.meta), dtype=bool)
        if split is not None:
            keep &= (self.meta["split"] == split).to_numpy()
        if class_split is not None:
            keep &= (self.meta["class_split"] == class_split).to_numpy()
        return np.flatnonzero(keep)

    @property
    def voxel_size_a(self) -> float:
        return self.recipe.simulation.voxel_size_a

    @property
    def polarity(self) -> str:
        """'dark' (protein darker than ice) or 'bright'. Data sets of format 4 and older predate the
        field and were simulated bright (their CTF had the opposite sign)."""
        return str(self.info.get("polarity", "bright"))


def _splits(recipe: DatasetRecipe) -> tuple[list[str], list[str]]:
    """(split, class_split) per sample index; stratified within each seen class, fixed by the seed."""
    n = recipe.n_per_class
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(2**31 - 1,)))
    split, class_split = [], []
    n_train = int(round(recipe.split_fractions[0] * n))
    n_val = int(round(recipe.split_fractions[1] * n))
    for cls in recipe.classes:
        if cls in recipe.unseen_classes:
            split += ["test"] * n
            class_split += ["unseen"] * n
            continue
        if cls in recipe.validation_classes:
            split += ["val"] * n
            class_split += ["validation"] * n
            continue
        labels = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
        split += list(labels[rng.permutation(n)])
        class_split += ["seen"] * n
    return split, class_split


def load_maps(recipe: DatasetRecipe) -> list[MoleculeMap]:
    """Potential maps of the recipe's classes (cached on disk); raises if one exceeds the crop."""
    sim = recipe.simulation
    maps = [molecule_map(c, sim.voxel_size_a, mask_volume_factor=sim.mask_volume_factor, ice_potential_v=sim.ice_potential_v,
                         mask_rule=sim.mask_rule, mask_resolution_a=sim.mask_resolution_a)
            for c in recipe.classes]
    for m in maps:
        if 2 * m.radius_a / sim.voxel_size_a > sim.crop_size:
            raise CryoNBError(f"{m.pdb_id}: molecule diameter {2 * m.radius_a:.0f} Å exceeds the crop box "
                              f"(crop_size={sim.crop_size} x voxel_size_a={sim.voxel_size_a} Å)")
    return maps


def target_mask(target: np.ndarray, molecule: MoleculeMap, sim: SimulationConfig) -> np.ndarray:
    """(c, c, c) bool mask of the target molecule from its placed potential ``target`` (s, s, s), by ``sim``'s rule.

    The low-pass filter runs on the crop plus a margin of 4 σ (its kernel's reach), not the whole scene.
    """
    margin = 0 if sim.mask_rule == "volume" else int(math.ceil(4 * sim.mask_resolution_a / (math.pi * math.sqrt(2)) / sim.voxel_size_a))
    region = crop_center(target, min(target.shape[0], sim.crop_size + 2 * margin))
    source = mask_source(region, sim.mask_rule, sim.mask_resolution_a, sim.voxel_size_a)
    return crop_center(source, sim.crop_size) > molecule.mask_threshold


def masks_by_rule(recipe: DatasetRecipe, rows: np.ndarray, rule: str) -> np.ndarray:
    """Target masks of data-set ``rows`` under another mask rule than the recipe's, (len(rows), c, c, c) uint8.

    The scenes are drawn again from each sample's own seed (the noise-free target does not depend on the SNR or
    the imaging), so the masks match the stored subtomograms exactly; only the rule differs.
    """
    sim = replace(recipe.simulation, mask_rule=rule)
    maps = load_maps(replace(recipe, simulation=sim))
    out = np.zeros((len(rows), sim.crop_size, sim.crop_size, sim.crop_size), dtype=np.uint8)
    for k, index in enumerate(np.asarray(rows, dtype=np.int64)):
        rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(int(index),)))
        class_id = int(index) // recipe.n_per_class
        out[k] = target_mask(make_scene(class_id, maps, sim, rng).target, maps[class_id], sim)
    return out


def simulate_sample(recipe: DatasetRecipe, index: int, maps: list[MoleculeMap]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Subtomogram ``index`` of the recipe: (volume (c,c,c) float32 z-scored, mask (c,c,c) uint8, metadata row)."""
    sim = recipe.simulation
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(int(index),)))
    class_id = int(index) // recipe.n_per_class
    scene = make_scene(class_id, maps, sim, rng)
    defocus_um = float(rng.uniform(sim.defocus_um_min, sim.defocus_um_max))
    simulate = simulate_fast if sim.path == "fast" else simulate_tiltseries
    sub = simulate(scene.volume, defocus_um, recipe.snr, sim, rng)
    vol = sub.volume
    vol = (vol - vol.mean()) / vol.std()
    mask = target_mask(scene.target, maps[class_id], sim)
    tgt = scene.placements[0]
    row = {
        "index": int(index), "class_id": class_id, "pdb_id": recipe.classes[class_id], "snr": recipe.snr,
        "snr_measured": sub.snr_measured, "seed": recipe.seed, "defocus_um": defocus_um,
        "rotation": ";".join(f"{a:.4f}" for a in tgt.euler_zyz_deg),
        "shift": ";".join(f"{a:.4f}" for a in tgt.offset_vox),
        "n_neighbours": len(scene.placements) - 1,
        "neighbours": ";".join(recipe.classes[p.class_id] for p in scene.placements[1:]),
        "mask_fraction": float(mask.mean()), "path": sim.path, "polarity": sim.polarity, "noise": sim.noise,
        "dose_e_per_a2": sub.dose_e_per_a2,
    }
    return vol.astype(np.float32), mask.astype(np.uint8), row


_WORKER: dict[str, Any] = {}
#: the arrays of a data set and their dtypes, (n, c, c, c) each
_ARRAYS = (("volumes.npy", np.float32), ("masks.npy", np.uint8))
#: a verified stamp is trusted only for files last changed this long before it was written: file
#: times are coarse (a write right after the check could keep the same mtime), as git's "racy" entries
_STAMP_MARGIN_NS = 2_000_000_000


def _damaged(folder: Path, what: str) -> CryoNBError:
    return CryoNBError(f"{folder}: damaged data set: {what}; delete the folder {folder} and run again to regenerate it")


def _init_worker(recipe_dict: dict[str, Any], maps: list[MoleculeMap], partial: Path) -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes
    _WORKER["recipe"] = DatasetRecipe.from_dict(recipe_dict)
    _WORKER["maps"] = maps
    # each worker writes its chunks straight into the memory-mapped arrays: no volume crosses a pipe
    _WORKER["volumes"] = np.load(partial / "volumes.npy", mmap_mode="r+")
    _WORKER["masks"] = np.load(partial / "masks.npy", mmap_mode="r+")


def _chunk_digest(volumes: np.ndarray, masks: np.ndarray, start: int, stop: int) -> str:
    """sha256 of samples [start, stop) of both arrays, as stored."""
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(volumes[start:stop])).cast("B"))
    h.update(memoryview(np.ascontiguousarray(masks[start:stop])).cast("B"))
    return h.hexdigest()


def _run_chunk(bounds: tuple[int, int]) -> tuple[int, int, list[dict[str, Any]], str]:
    """Simulate samples [start, stop), write them into the arrays and flush; returns (start, stop, rows, sha256)."""
    recipe, maps = _WORKER["recipe"], _WORKER["maps"]
    volumes, masks = _WORKER["volumes"], _WORKER["masks"]
    rows = []
    for i in range(*bounds):
        volumes[i], masks[i], row = simulate_sample(recipe, i, maps)
        rows.append(row)
    volumes.flush()
    masks.flush()
    return bounds[0], bounds[1], rows, _chunk_digest(volumes, masks, *bounds)


def _npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) from a .npy header, or None when the header is unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            return (tuple(shape), np.dtype(dtype), fh.tell()) if not fortran else None
    except (OSError, ValueError, EOFError):
        return None


def _array_problem(path: Path, shape: tuple[int, ...], dtype: type) -> tuple[str, str] | None:
    """What is wrong with the .npy file at ``path``, as (kind, message); None if it is whole.

    kind "layout": no readable header, or another shape or dtype. kind "size": the right header but
    another file size, which numpy would map regardless (a short file read as zeros).
    """
    layout = _npy_layout(path) if path.is_file() else None
    if layout is None:
        return "layout", f"{path.name} is missing or has no readable .npy header"
    got_shape, got_dtype, offset = layout
    if got_shape != shape or got_dtype != np.dtype(dtype):
        return "layout", f"{path.name} holds {got_shape} {got_dtype}, expected {shape} {np.dtype(dtype)}"
    expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        return "size", f"{path.name} is {size} bytes, expected {expected}"
    return None


def _file_keys(root: Path, names: list[str]) -> dict[str, list[int]]:
    keys = {}
    for name in names:
        st = (root / name).stat()
        keys[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return keys


def _stamp_path(root: Path) -> Path:
    return root.with_name(f".{root.name}.verified.json")


def verify_dataset(root: str | os.PathLike[str], info: dict[str, Any] | None = None) -> None:
    """Raise a :class:`CryoNBError` naming the folder to delete unless the data set's files are whole.

    Checks the arrays' shapes and sizes against ``recipe.json`` and every file's sha256 against the one
    recorded there. A successful check writes a stamp beside the folder; while the files keep their size,
    mtime and ctime the stamp stands for the check (no re-hashing on every open).
    """
    root = Path(root)
    if info is None:
        info = json.loads((root / "recipe.json").read_text())
    if "n" in info and "crop_size" in info:
        n, c = int(info["n"]), int(info["crop_size"])
        for name, dtype in _ARRAYS:
            problem = _array_problem(root / name, (n, c, c, c), dtype)
            if problem:
                raise _damaged(root, problem[1])
    expected: dict[str, str] = info.get("sha256") or {}
    if not expected:
        return  # written before checksums were recorded: sizes are all we can check
    missing = [f for f in expected if not (root / f).is_file()]
    if missing:
        raise _damaged(root, f"{', '.join(missing)} missing")
    keys = _file_keys(root, sorted(expected))
    stamp_path = _stamp_path(root)
    with contextlib.suppress(OSError, ValueError):
        stamp = json.loads(stamp_path.read_text())
        settled = all(max(k[1], k[2]) < stamp["verified_ns"] - _STAMP_MARGIN_NS for k in keys.values())
        if stamp.get("files") == keys and stamp.get("sha256") == expected and settled:
            return
    for name, digest in sorted(expected.items()):
        actual = file_digest(root / name)
        if actual != digest:
            raise _damaged(root, f"{name} has sha256 {actual[:16]}..., recipe.json records {digest[:16]}...")
    stamp = {"files": keys, "sha256": expected, "verified_ns": time.time_ns()}
    with contextlib.suppress(OSError):  # a read-only data folder: verify again next time
        write_text_atomic(stamp_path, json.dumps(stamp))


def _read_done(done_path: Path) -> dict[int, dict[str, Any]]:
    """Finished chunks of an interrupted run: {start: {"stop", "sha256"}}; {} when absent or unusable.

    A list (written before chunk digests were recorded) cannot be checked, so its chunks are redone.
    """
    try:
        raw = json.loads(done_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    done = {}
    for key, rec in raw.items():
        if isinstance(rec, dict) and isinstance(rec.get("stop"), int) and isinstance(rec.get("sha256"), str):
            with contextlib.suppress(ValueError):
                done[int(key)] = rec
    return done


def _rows_intact(path: Path, start: int, stop: int) -> bool:
    try:
        rows = pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return False
    return "index" in rows and list(rows["index"]) == list(range(start, stop))


def _resume(partial: Path, n: int, c: int, chunks_all: list[tuple[int, int]]) -> dict[int, dict[str, Any]]:
    """The intact chunks of an interrupted run in ``partial``; creates or repairs the arrays as needed.

    A chunk counts only if its rows file reads back and the arrays still hold the bytes whose sha256 was
    recorded: a truncated, zero-padded or altered chunk, or a lost rows file, is generated again.
    """
    shape = (n, c, c, c)
    done = _read_done(partial / "chunks_done.json")
    problems = {name: _array_problem(partial / name, shape, dtype) for name, dtype in _ARRAYS}
    notes = [p[1] for p in problems.values() if p] if done else []  # nothing to report for a fresh start
    if not done or any(p and p[0] == "layout" for p in problems.values()):
        for name, dtype in _ARRAYS:  # create the arrays; the workers fill them in place
            np.lib.format.open_memmap(partial / name, mode="w+", dtype=dtype, shape=shape)  # header + zeros
        done = {}
    else:
        for name, dtype in _ARRAYS:
            if problems[name]:  # only the length is wrong: restore it; the chunk digests find what was lost
                layout = _npy_layout(partial / name)
                assert layout is not None
                os.truncate(partial / name, layout[2] + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        volumes = np.load(partial / "volumes.npy", mmap_mode="r")
        masks = np.load(partial / "masks.npy", mmap_mode="r")
        bounds = set(chunks_all)
        kept = {start: rec for start, rec in done.items()
                if (start, rec["stop"]) in bounds
                and _rows_intact(partial / "rows" / f"{start:08d}.csv", start, rec["stop"])
                and _chunk_digest(volumes, masks, start, rec["stop"]) == rec["sha256"]}
        del volumes, masks
        if len(kept) < len(done):
            notes.append(f"{len(done) - len(kept)} of {len(done)} finished chunk(s) are damaged or lost their rows file")
        done = kept
    if notes:
        print(f"{partial}: {'; '.join(notes)}; generating those samples again", file=sys.stderr)
    return done


def _holder(lock_path: Path) -> str:
    """Who holds the lock, from what the holder wrote into it."""
    try:
        info = json.loads(lock_path.read_text())
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def _generation_lock(root: Path, timeout_s: float | None) -> Iterator[None]:
    """Hold ``.<folder>.lock`` beside ``root`` while generating it; another process waits for it.

    timeout_s: give up with a :class:`CryoNBError` after this many seconds (None: wait as long as needed).
    The kernel releases an ``flock`` when its process ends, however it ends: no stale locks.
    """
    if fcntl is None:
        yield
        return
    lock_path = root.with_name(f".{root.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)

    def acquired() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    try:
        if not acquired():
            holder = _holder(lock_path)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            print(f"{root.name}: being generated by {holder} ({lock_path}); waiting for it to finish", file=sys.stderr)
            while not acquired():
                if deadline is not None and time.monotonic() >= deadline:
                    raise CryoNBError(
                        f"{root}: being generated by {holder}; gave up waiting after {timeout_s:g} s. "
                        f"The lock {lock_path} is released when that process ends; run again then"
                    )
                time.sleep(0.2)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def generate_dataset(recipe: DatasetRecipe, root: str | os.PathLike[str], n_workers: int | None = None,
                     chunk_size: int = 32, progress: bool = True, lock_timeout_s: float | None = None) -> Path:
    """Generate the data set into ``root`` (resumable via ``root.partial``); returns ``root``.

    n_workers: worker processes (default: min(2, cpu count); 1 = in this process). Results do not
    depend on it. Peak memory: one chunk per worker plus the molecule maps. lock_timeout_s: how long
    to wait while another process generates the same folder (None: as long as it takes).
    """
    root = Path(root)
    with _generation_lock(root, lock_timeout_s):
        return _generate(recipe, root, n_workers, chunk_size, progress)


def _generate(recipe: DatasetRecipe, root: Path, n_workers: int | None, chunk_size: int, progress: bool) -> Path:
    """:func:`generate_dataset` with the lock held."""
    partial = root.with_name(root.name + ".partial")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "rows").mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise CryoNBError(f"{partial}: expected the folder of a partial data set; delete {partial} and run again") from exc
    maps = load_maps(recipe)
    prepare(recipe.simulation)  # once here, not in every worker
    n, c = recipe.n_total, recipe.simulation.crop_size
    done_path = partial / "chunks_done.json"
    chunks_all = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    done = _resume(partial, n, c, chunks_all)
    write_text_atomic(done_path, json.dumps({str(k): v for k, v in sorted(done.items())}))
    chunks = [ch for ch in chunks_all if ch[0] not in done]
    workers = n_workers if n_workers is not None else min(2, os.cpu_count() or 1)
    bar = tqdm(total=n, initial=n - sum(b - a for a, b in chunks), desc=recipe.name, disable=not progress, unit="subtomo")

    def store(result: tuple[int, int, list[dict[str, Any]], str]) -> None:
        start, stop, rows, digest = result  # the arrays were written and flushed by the worker
        pd.DataFrame(rows).to_csv(partial / "rows" / f"{start:08d}.csv", index=False)
        done[start] = {"stop": stop, "sha256": digest}
        write_text_atomic(done_path, json.dumps({str(k): v for k, v in sorted(done.items())}))
        bar.update(stop - start)
        if len(done) < len(chunks_all):
            budget.check(f"{len(done)}/{len(chunks_all)} chunks of {recipe.name} ({partial})")

    if workers <= 1 or len(chunks) <= 2:
        _init_worker(recipe.to_dict(), maps, partial)
        try:
            for ch in chunks:
                store(_run_chunk(ch))
        finally:
            _WORKER.clear()  # drop this process's memmaps, also when a time budget stops the run
    else:
        # fork: no re-import of __main__ (scripts need no guard) and instant start; children run
        # torch single-threaded, so they never enter an OpenMP region inherited from the parent
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(recipe.to_dict(), maps, partial)) as pool:
            for result in pool.imap(_run_chunk, chunks):
                store(result)
    bar.close()
    meta = pd.concat([pd.read_csv(partial / "rows" / f"{a:08d}.csv", keep_default_na=False) for a, _ in chunks_all])
    meta = meta.sort_values("index").reset_index(drop=True)
    if list(meta["index"]) != list(range(n)):  # cannot happen unless files changed under us
        raise CryoNBError(f"{partial}: the rows files hold {len(meta)} rows, expected samples 0..{n - 1}; "
                          f"delete the folder {partial} and run again")
    split, class_split = _splits(recipe)
    meta.insert(3, "split", split)
    meta.insert(4, "class_split", class_split)
    meta.to_csv(partial / "meta.csv", index=False)
    shutil.rmtree(partial / "rows")
    done_path.unlink()
    info = {
        "recipe": recipe.to_dict(), "hash": recipe.content_hash(), "format_version": _FORMAT_VERSION,
        "polarity": recipe.simulation.polarity, "n": n, "crop_size": c, "voxel_size_a": recipe.simulation.voxel_size_a,
        "sha256": {f: file_digest(partial / f) for f in ("volumes.npy", "masks.npy", "meta.csv")},
    }
    write_text_atomic(partial / "recipe.json", json.dumps(info, indent=2))
    if root.exists():
        shutil.rmtree(root)
    os.replace(partial, root)
    return root


def load_dataset(root_or_recipe: str | os.PathLike[str] | DatasetRecipe) -> SubtomoDataset:
    """Open a generated data set by folder or by recipe (raises if it was not generated)."""
    if isinstance(root_or_recipe, DatasetRecipe):
        root = generated_dir() / root_or_recipe.folder_name
        if not (root / "recipe.json").is_file():
            raise CryoNBError(f"data set {root_or_recipe.name} not generated yet ({root}); call ensure_dataset")
        return SubtomoDataset(root)
    return SubtomoDataset(resolve(root_or_recipe))


def ensure_dataset(recipe: DatasetRecipe, n_workers: int | None = None, progress: bool = True,
                   root_dir: str | os.PathLike[str] | None = None, lock_timeout_s: float | None = None) -> SubtomoDataset:
    """Load the data set of ``recipe`` if present, else generate it first (see :func:`generate_dataset`).

    A present set is checked against its recorded checksums (:func:`verify_dataset`); a damaged one
    raises a :class:`CryoNBError` naming the folder to delete. While another process generates the same
    set this one waits for it (``lock_timeout_s``: at most that long) and then reuses its result.
    """
    base = resolve(root_dir) if root_dir is not None else generated_dir()
    root = base / recipe.folder_name
    if not (root / "recipe.json").is_file():
        with _generation_lock(root, lock_timeout_s):
            if not (root / "recipe.json").is_file():  # not finished by the process we waited for
                _generate(recipe, root, n_workers, 32, progress)
    return SubtomoDataset(root)
