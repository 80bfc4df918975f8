"""MRC reading and writing: round trips, and every kind of bad input names the file and the problem."""

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
