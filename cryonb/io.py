"""MRC volumes in and out, with validation and atomic writes.

Public surface: :func:`read_mrc`, :func:`write_mrc`, :class:`Volume`, and the
atomic-write helpers every other module uses (:func:`atomic_path`,
:func:`write_text_atomic`, :func:`save_npy_atomic`).

NOTE: arrays are ``(z, y, x)`` as in MRC files; voxel size is in Å.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from cryonb.errors import CryoNBError

__all__ = [
    "Volume",
    "read_mrc",
    "write_mrc",
    "atomic_path",
    "write_text_atomic",
    "save_npy_atomic",
    "check_volume",
    "require_file",
    "check_mrc_header",
]


@dataclass(frozen=True)
class Volume:
    """A 3-D map and its voxel size.

    data: (z, y, x) float32 array.
    voxel_size_a: edge of one cubic voxel in Å.
    """

    data: np.ndarray
    voxel_size_a: float


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves any previous file at ``path`` untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_temp_file(target: Path) -> Path:
    """Create an empty, unique temporary file beside ``target``.

    Not ``tempfile.mkstemp``: that creates mode 0600 whatever the umask, and the rename would pass
    that mode on to the output. ``os.open`` with 0666 lets the umask decide, as for any new file.
    """
    while True:
        tmp = target.parent / f".tmp-{target.name}.{secrets.token_hex(4)}{target.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # a name clash (1 in 4 billion): draw another
            continue


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_npy_atomic(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return Path(path)


def check_volume(
    data: np.ndarray,
    source: str,
    expected_shape: tuple[int, int, int] | None = None,
) -> None:
    """Raise :class:`CryoNBError` naming ``source`` unless ``data`` is a finite 3-D array of the expected shape."""
    if data.ndim != 3:
        raise CryoNBError(f"{source}: expected a 3-D volume (z, y, x), got {data.ndim}-D with shape {data.shape}")
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise CryoNBError(f"{source}: expected shape {tuple(expected_shape)}, got {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise CryoNBError(f"{source}: expected real numbers, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise CryoNBError(f"{source}: {bad} voxel(s) are NaN or infinite")


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path if it is an existing regular file, else :class:`CryoNBError` saying what it is."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        raise CryoNBError(f"{p}: is a directory; expected {what}")
    if p.exists():
        raise CryoNBError(f"{p}: is not a regular file (a device, pipe or socket); expected {what}")
    raise CryoNBError(f"{p}: no such {what}")


def check_mrc_header(path: Path, header: np.recarray) -> None:
    """Raise naming ``path`` for a header whose sizes are not positive or that describes an image stack.

    Checked before the data are mapped: numpy turns a negative size into an OverflowError or a
    'negative dimensions' ValueError that would not say which field is wrong.
    """
    sizes = {name: int(header[name]) for name in ("nx", "ny", "nz")}
    bad = {k: v for k, v in sizes.items() if v < 1}
    if bad:
        fields = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise CryoNBError(f"{path}: corrupt MRC header: {fields}; expected sizes >= 1")
    if int(header.ispg) == 0 and sizes["nz"] > 1:
        raise CryoNBError(
            f"{path}: an image stack (MRC space group ispg 0: {sizes['nz']} images of {sizes['ny']} x {sizes['nx']}), "
            "not a volume; expected a 3-D map (ispg 1). If it is a volume, mark it as one: "
            "mrcfile.open(path, 'r+').set_volume()"
        )


def read_mrc(
    path: str | os.PathLike[str],
    expected_shape: tuple[int, int, int] | None = None,
) -> Volume:
    """Read and validate an MRC volume.

    Returns a :class:`Volume` with float32 ``(z, y, x)`` data and the header's voxel size in Å.
    Raises :class:`CryoNBError` for a missing, truncated or corrupt file, NaN/inf,
    a non-3-D map, a shape other than ``expected_shape`` or a missing voxel size.
    """
    p = require_file(path, "MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # mrcfile warns, not raises, on a bad header in permissive mode
            with mrcfile.open(p, mode="r", header_only=True) as head:
                check_mrc_header(p, head.header)
            with mrcfile.open(p, mode="r", permissive=False) as mrc:
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                voxel_size_a = float(mrc.voxel_size.x)
                is_volume = mrc.is_volume() or mrc.is_volume_stack()
    except (ValueError, OSError, OverflowError, MemoryError, RuntimeWarning, EOFError) as exc:
        raise CryoNBError(f"{p}: corrupt or truncated MRC file ({exc})") from exc
    if not is_volume:
        raise CryoNBError(f"{p}: expected a 3-D volume (z, y, x), got an image with shape {data.shape}")
    check_volume(data, str(p), expected_shape)
    if not voxel_size_a > 0:
        raise CryoNBError(f"{p}: header voxel size is {voxel_size_a} Å; expected > 0 (set it, or pass it explicitly)")
    return Volume(data=data, voxel_size_a=voxel_size_a)


def write_mrc(path: str | os.PathLike[str], data: np.ndarray, voxel_size_a: float) -> Path:
    """Write a finite 3-D float32 volume as MRC atomically, with its voxel size (Å) in the header."""
    if not voxel_size_a > 0:
        raise CryoNBError(f"{path}: voxel_size_a must be > 0, got {voxel_size_a}")
    array = np.ascontiguousarray(data, dtype=np.float32)
    check_volume(array, str(path))
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            mrc.voxel_size = float(voxel_size_a)
    return Path(path)
