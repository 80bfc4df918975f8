"""OME-Zarr tomograms: the multiscale level nearest a voxel size, cropped lazily.

Public surface: :func:`open_omezarr`, :func:`is_zarr_path`, :class:`OmeZarrVolume`.

The arrays are read by :mod:`zarr` (zarr 2, the version copick also needs): slicing fetches only the chunks
a crop touches, from a local folder or, through fsspec, from an ``http(s)://`` address (the CryoET Data
Portal's ``https_omezarr_dir``; needs ``aiohttp``, installed by ``pip install 'cryonb[portal]'``). The
multiscales metadata (OME-NGFF 0.4, ``.zattrs``: ``multiscales[0].axes`` with units, ``datasets[i].path``
and their ``coordinateTransformations``) is interpreted here by hand, in a few lines: ome-zarr-py, the
field's reader, needs zarr 3 (and dask), which copick's zarr 2 pin excludes.

A chunk read for one crop is kept in a small LRU cache (:data:`CHUNK_CACHE_BYTES`), so neighbouring
particles, taken in chunk order by :func:`cryonb.extract.extract_boxes`, decompress each chunk once,
and memory stays bounded whatever the tomogram's size.

NOTE: voxel sizes are in Å; arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryonb.errors import CryoNBError

__all__ = ["OmeZarrVolume", "open_omezarr", "is_zarr_path", "CHUNK_CACHE_BYTES"]

#: decompressed chunks kept per open tomogram (bytes), and never fewer than the 8 chunks one crop may touch
CHUNK_CACHE_BYTES = 256 << 20

#: Å per unit of the OME-NGFF axis units we accept (the spec's UDUNITS names)
_UNIT_A = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "millimeter": 1e7, "meter": 1e10}
#: codecs that would run code while decoding a chunk (pickle) or make Python objects: never read
_REFUSED_CODECS = {"pickle", "json2", "msgpack2", "vlen-utf8", "vlen-bytes", "vlen-array"}


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """True for an ``http(s)://`` address or a local path whose name ends in ``.zarr`` (or that holds zarr metadata)."""
    text = str(path).rstrip("/")
    if text.lower().startswith(("http://", "https://")):
        return True
    p = Path(text)
    if p.suffix.lower() == ".zarr":
        return True
    return p.is_dir() and any((p / name).is_file() for name in (".zattrs", ".zgroup", "zarr.json"))


@dataclass(frozen=True)
class OmeZarrVolume:
    """One level of an OME-Zarr multiscale image.

    data: lazily read (z, y, x) array (slicing returns numpy arrays; see :class:`_ChunkCachedArray`).
    voxel_size_a: edge of a voxel at this level, Å.
    level: the dataset's ``path`` in the multiscales list; levels: (path, voxel size Å) of every level.
    source: where the voxel size came from, for ``meta.csv``.
    """

    data: Any
    voxel_size_a: float
    level: str
    levels: tuple[tuple[str, float], ...]
    source: str


def _open_group(location: str) -> Any:
    """The zarr group at a local folder or an http(s) address, read-only."""
    import zarr

    if location.lower().startswith(("http://", "https://")):
        try:
            import aiohttp  # noqa: F401  (fsspec's HTTP file system needs it)
        except ImportError as exc:
            raise CryoNBError(
                f"{location}: reading an OME-Zarr over HTTP needs aiohttp; install it with pip install 'cryonb[portal]'"
            ) from exc
        from zarr.storage import FSStore

        store = FSStore(location, mode="r")
    else:
        p = Path(location)
        if not p.is_dir():
            raise CryoNBError(f"{p}: no such OME-Zarr folder; expected a .zarr directory (or an http(s):// address)")
        if (p / "zarr.json").is_file():
            raise CryoNBError(
                f"{p}: a Zarr v3 store (zarr.json, OME-NGFF 0.5); cryonb reads Zarr v2 OME-Zarr (OME-NGFF 0.4, "
                ".zattrs/.zgroup), the format of the CryoET Data Portal: convert it, or export the tomogram as MRC"
            )
        store = str(p)
    try:
        return zarr.open_group(store, mode="r")
    except Exception as exc:  # zarr raises assorted errors (GroupNotFoundError, KeyError, FileNotFoundError, aiohttp errors)
        raise CryoNBError(f"{location}: not a readable OME-Zarr group ({type(exc).__name__}: {exc})") from exc


def _axis_units_a(axes: Any, where: str) -> tuple[list[float], str]:
    """Å per unit of the last three (z, y, x) axes, and a note for the source when units were absent."""
    if axes is None:
        return [1.0, 1.0, 1.0], "no axes in the metadata: scale read as Å"
    if not isinstance(axes, list) or len(axes) < 3:
        raise CryoNBError(f"{where}: multiscales axes {axes!r}; expected a list ending with the z, y, x axes")
    spatial = axes[-3:]
    names = [a.get("name") if isinstance(a, dict) else a for a in spatial]
    if [str(n).lower() for n in names] != ["z", "y", "x"]:
        raise CryoNBError(f"{where}: last three multiscales axes are {names}; expected z, y, x")
    factors, missing = [], False
    for a in spatial:
        unit = a.get("unit") if isinstance(a, dict) else None
        if unit is None:
            missing = True
            factors.append(1.0)
        elif str(unit).lower() in _UNIT_A:
            factors.append(_UNIT_A[str(unit).lower()])
        else:
            raise CryoNBError(f"{where}: axis unit {unit!r}; expected one of {', '.join(_UNIT_A)}")
    return factors, ("no unit in the metadata: scale read as Å" if missing else "")


def _scale(transforms: Any, where: str) -> list[float] | None:
    """The product of the ``scale`` transformations in a coordinateTransformations list (None if there is none)."""
    if transforms is None:
        return None
    if not isinstance(transforms, list):
        raise CryoNBError(f"{where}: coordinateTransformations {transforms!r}; expected a list")
    out: list[float] | None = None
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale":
            s = t.get("scale")
            if not isinstance(s, list) or not all(isinstance(v, (int, float)) for v in s):
                raise CryoNBError(f"{where}: scale {s!r}; expected a list of numbers (or a 'path' to one: not supported)")
            out = list(map(float, s)) if out is None else [a * float(b) for a, b in zip(out, s)]
    return out


def _levels(group: Any, where: str) -> tuple[list[tuple[str, float]], str]:
    """(path, isotropic voxel size Å) of every level, and a note on units; raises naming what is missing."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not multiscales:
        raise CryoNBError(
            f"{where}: no 'multiscales' in the zarr attributes (found {sorted(attrs) or 'none'}); expected an OME-Zarr "
            "image whose multiscales metadata gives each level's voxel size (coordinateTransformations)"
        )
    ms = multiscales[0]
    factors, note = _axis_units_a(ms.get("axes"), where)
    outer = _scale(ms.get("coordinateTransformations"), f"{where}: multiscales")
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise CryoNBError(f"{where}: multiscales has no datasets; expected one entry (path + scale) per level")
    levels = []
    for i, ds in enumerate(datasets):
        here = f"{where}: multiscales datasets[{i}]"
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str):
            raise CryoNBError(f"{here}: expected a mapping with a 'path'")
        scale = _scale(ds.get("coordinateTransformations"), here)
        if scale is None:
            raise CryoNBError(f"{here} (path {ds['path']!r}): no scale transformation; expected the voxel size per axis")
        if outer is not None:
            scale = [a * b for a, b in zip(scale, outer[-len(scale):])]
        zyx = [s * f for s, f in zip(scale[-3:], factors)]
        if not all(math.isfinite(v) and v > 0 for v in zyx):
            raise CryoNBError(f"{here} (path {ds['path']!r}): voxel size {zyx} Å; expected positive numbers")
        if max(zyx) > 1.01 * min(zyx):
            raise CryoNBError(
                f"{here} (path {ds['path']!r}): voxels of z, y, x = {', '.join(f'{v:g}' for v in zyx)} Å are not cubic; "
                "expected equal voxel sizes (resample the tomogram first)"
            )
        levels.append((ds["path"], float(zyx[-1])))
    return levels, note


def open_omezarr(location: str | os.PathLike[str], target_voxel_size_a: float | None = None) -> OmeZarrVolume:
    """Open the level of an OME-Zarr tomogram whose voxel size is nearest ``target_voxel_size_a`` (log scale).

    Parameters
    ----------
    location : path or str
        Local ``.zarr`` folder or ``http(s)://`` address of an OME-Zarr image group.
    target_voxel_size_a : float, optional
        The model's voxel size in Å; ``None`` takes the finest level. Ties go to the finer level.

    Returns
    -------
    OmeZarrVolume
        A lazily read ``(z, y, x)`` array of a real dtype and its voxel size.

    Raises
    ------
    CryoNBError
        Not a zarr group, no multiscales metadata, a level without a scale, non-cubic voxels, unknown units,
        an array that is not 3-D (after leading singleton axes), of a non-real dtype or with a code-running codec.
    """
    where = str(location)
    group = _open_group(where)
    levels, note = _levels(group, where)
    if target_voxel_size_a is None:
        chosen = min(levels, key=lambda lv: lv[1])
    else:
        chosen = min(levels, key=lambda lv: (abs(math.log(lv[1] / target_voxel_size_a)), lv[1]))
    path, size_a = chosen
    try:
        array = group[path]
    except KeyError as exc:
        raise CryoNBError(f"{where}: multiscales names level {path!r}, which the store does not hold") from exc
    _check_array(array, f"{where}/{path}")
    data = _ChunkCachedArray(array)
    shown = ", ".join(f"{p}: {v:g} Å" for p, v in levels)
    source = f"OME-Zarr multiscales coordinateTransformations (level {path} of {shown})" + (f"; {note}" if note else "")
    return OmeZarrVolume(data, size_a, path, tuple(levels), source)


def _check_array(array: Any, where: str) -> None:
    """Raise unless ``array`` is a numeric zarr array, 3-D after leading singleton axes, with safe codecs."""
    if not hasattr(array, "chunks"):
        raise CryoNBError(f"{where}: a group, not an array; expected the level's (z, y, x) array")
    if array.dtype.kind not in "biuf":
        raise CryoNBError(f"{where}: dtype {array.dtype}; expected real numbers (integers or floats)")
    codecs = [c for c in [getattr(array, "compressor", None), *(getattr(array, "filters", None) or [])] if c is not None]
    bad = [c.codec_id for c in codecs if getattr(c, "codec_id", "") in _REFUSED_CODECS]
    if bad:
        raise CryoNBError(f"{where}: codec {bad[0]!r} would run code or build objects while reading; refused")
    shape = tuple(array.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[:-3]):
        raise CryoNBError(f"{where}: array of shape {shape}; expected a 3-D (z, y, x) tomogram")


class _ChunkCachedArray:
    """Read-only ``(z, y, x)`` view of a zarr array: slicing assembles the crop from whole decompressed chunks,
    kept in an LRU cache of at most :data:`CHUNK_CACHE_BYTES` (so neighbouring crops reuse them)."""

    def __init__(self, array: Any, max_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self._array = array
        self._lead = (0,) * (array.ndim - 3)  # leading singleton axes (t, c)
        self.shape = tuple(int(n) for n in array.shape[-3:])
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3
        self.chunks = tuple(int(c) for c in array.chunks[-3:])
        self._max_bytes = max(int(max_bytes), 8 * int(np.prod(self.chunks)) * self.dtype.itemsize)
        self._cache: collections.OrderedDict[tuple[int, int, int], np.ndarray] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # extract reads crops in a prefetch thread

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, key: tuple[int, int, int]) -> np.ndarray:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        sel = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))
        block = np.asarray(self._array[self._lead + sel])
        with self._lock:
            self._cache[key] = block
            self._bytes += block.nbytes
            while self._bytes > self._max_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._bytes -= old.nbytes
        return block

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (3 - len(index))
        bounds = []
        for ix, n in zip(index, self.shape):
            if not isinstance(ix, slice) or ix.step not in (None, 1):
                raise TypeError("only unit-step slices are supported")  # internal use: extract's crops
            lo, hi, _ = ix.indices(n)
            bounds.append((lo, max(lo, hi)))
        out = np.empty([hi - lo for lo, hi in bounds], dtype=self.dtype)
        if out.size == 0:
            return out
        ranges = [range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(bounds, self.chunks)]
        for kz in ranges[0]:
            for ky in ranges[1]:
                for kx in ranges[2]:
                    block = self._chunk((kz, ky, kx))
                    src, dst = [], []
                    for k, c, (lo, hi) in zip((kz, ky, kx), self.chunks, bounds):
                        a, b = max(lo, k * c), min(hi, (k + 1) * c)
                        src.append(slice(a - k * c, b - k * c))
                        dst.append(slice(a - lo, b - lo))
                    out[tuple(dst)] = block[tuple(src)]
        return out
