"""MRC reading and writing: round trips, and every kind of bad input names the file and the problem."""

import os
import stat
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryonb import CryoNBError
from cryonb.io import atomic_path, read_mrc, save_npy_atomic, write_mrc


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)


def test_round_trip_keeps_data_shape_and_voxel_size(tmp_path: Path, volume: np.ndarray) -> None:
    path = write_mrc(tmp_path / "v.mrc", volume, voxel_size_a=10.0)
    vol = read_mrc(path, expected_shape=(8, 9, 10))
    np.testing.assert_array_equal(vol.data, volume)
    assert vol.voxel_size_a == pytest.approx(10.0)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match=r"nothere\.mrc: no such MRC file"):
        read_mrc(tmp_path / "nothere.mrc")


def test_truncated_file_is_reported(tmp_path: Path, volume: np.ndarray) -> None:
    path = write_mrc(tmp_path / "t.mrc", volume, 10.0)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CryoNBError, match=r"t\.mrc: corrupt or truncated MRC file"):
        read_mrc(path)


def test_corrupt_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.mrc"
    path.write_bytes(b"not an mrc file at all" * 100)
    with pytest.raises(CryoNBError, match=r"c\.mrc: corrupt or truncated MRC file"):
        read_mrc(path)


@pytest.mark.filterwarnings("ignore:Data array contains NaN:RuntimeWarning")
def test_nan_is_rejected_on_read(tmp_path: Path, volume: np.ndarray) -> None:
    bad = volume.copy()
    bad[1, 2, 3] = np.nan
    bad[0, 0, 0] = np.inf
    with mrcfile.new(tmp_path / "nan.mrc") as m:
        m.set_data(bad)
        m.voxel_size = 10.0
    with pytest.raises(CryoNBError, match=r"nan\.mrc: 2 voxel\(s\) are NaN or infinite"):
        read_mrc(tmp_path / "nan.mrc")


def test_nan_is_rejected_on_write_and_nothing_is_left(tmp_path: Path, volume: np.ndarray) -> None:
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CryoNBError, match="NaN or infinite"):
        write_mrc(tmp_path / "w.mrc", bad, 10.0)
    assert list(tmp_path.iterdir()) == []


def test_image_instead_of_volume(tmp_path: Path) -> None:
    with mrcfile.new(tmp_path / "img.mrc") as m:
        m.set_data(np.zeros((16, 16), np.float32))
        m.voxel_size = 5.0
    with pytest.raises(CryoNBError, match=r"img\.mrc: expected a 3-D volume"):
        read_mrc(tmp_path / "img.mrc")


def test_wrong_shape(tmp_path: Path, volume: np.ndarray) -> None:
    path = write_mrc(tmp_path / "s.mrc", volume, 10.0)
    with pytest.raises(CryoNBError, match=r"s\.mrc: expected shape \(32, 32, 32\), got \(8, 9, 10\)"):
        read_mrc(path, expected_shape=(32, 32, 32))


def test_zero_voxel_size(tmp_path: Path, volume: np.ndarray) -> None:
    with pytest.raises(CryoNBError, match="voxel_size_a must be > 0"):
        write_mrc(tmp_path / "z.mrc", volume, 0.0)
    with mrcfile.new(tmp_path / "z.mrc") as m:
        m.set_data(volume)
    with pytest.raises(CryoNBError, match=r"z\.mrc: header voxel size is 0\.0"):
        read_mrc(tmp_path / "z.mrc")


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.npy"
    save_npy_atomic(target, np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npy"]


# ---- headers and paths that used to give tracebacks or the wrong reason ----------------------

def _with_header_int(path: Path, offset: int, value: int) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 4] = int(value).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("nx", [-6, -(2**31)])
def test_negative_size_in_header_is_named(tmp_path: Path, volume: np.ndarray, nx: int) -> None:
    path = _with_header_int(write_mrc(tmp_path / "n.mrc", volume, 10.0), 0, nx)  # nx is the header's first word
    with pytest.raises(CryoNBError, match=rf"n\.mrc: corrupt MRC header: nx={nx}; expected sizes >= 1"):
        read_mrc(path)


def test_image_stack_is_not_a_volume(tmp_path: Path, volume: np.ndarray) -> None:
    with mrcfile.new(tmp_path / "stack.mrc") as m:
        m.set_data(volume)
        m.set_image_stack()  # ispg 0
        m.voxel_size = 5.0
    with pytest.raises(CryoNBError, match=r"stack\.mrc: an image stack \(MRC space group ispg 0: 8 images of 9 x 10\), not a volume"):
        read_mrc(tmp_path / "stack.mrc")


def test_directory_is_not_reported_missing(tmp_path: Path) -> None:
    (tmp_path / "d.mrc").mkdir()
    with pytest.raises(CryoNBError, match=r"d\.mrc: is a directory; expected MRC file"):
        read_mrc(tmp_path / "d.mrc")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_umask_mode(tmp_path: Path, volume: np.ndarray, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        written = [save_npy_atomic(tmp_path / "a.npy", volume), write_mrc(tmp_path / "v.mrc", volume, 10.0)]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
