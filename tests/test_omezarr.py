"""OME-Zarr tomograms: the level nearest the model's voxel size, lazy crops, bounded memory, bad metadata."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from cryonb.errors import CryoNBError
from cryonb.extract import extract_subtomograms, open_volume
from cryonb.omezarr import is_zarr_path, open_omezarr
from cryonb.portal import serve_folder_locally

SHAPE = (24, 40, 48)  # z, y, x at level 0
XYZ = np.array([[12.3, 14.6, 11.8], [30.0, 25.2, 12.4], [8.0, 30.0, 3.0]])


def _volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _omezarr(path: Path, levels: dict[str, tuple[np.ndarray, float]], unit: str | None = "angstrom",
             chunks: tuple[int, int, int] = (8, 16, 16), attrs: dict | None = None) -> Path:
    """An OME-NGFF 0.4 image written with zarr 2: one array per level, scale in ``unit``."""
    group = zarr.open_group(str(path), mode="w")
    for name, (data, _) in levels.items():
        group.create_dataset(name, data=data, chunks=chunks)
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "zyx"]
    datasets = [{"path": name, "coordinateTransformations": [{"type": "scale", "scale": [size] * 3}]}
                for name, (_, size) in levels.items()]
    group.attrs.update(attrs if attrs is not None else {"multiscales": [{"version": "0.4", "axes": axes, "datasets": datasets}]})
    return path


def _csv(path: Path, xyz: np.ndarray) -> Path:
    pd.DataFrame(xyz, columns=["x", "y", "z"]).to_csv(path, index=False)
    return path


def _mrc(path: Path, data: np.ndarray, voxel_size_a: float) -> Path:
    from cryonb.io import write_mrc

    return write_mrc(path, data, voxel_size_a)


def test_the_level_nearest_the_model_is_read_and_gives_the_mrc_boxes(tmp_path: Path) -> None:
    fine, coarse = _volume(), _volume((12, 20, 24), seed=1)
    z = _omezarr(tmp_path / "t.zarr", {"0": (fine, 5.0), "1": (coarse, 10.0)})
    assert is_zarr_path(z) and is_zarr_path("https://host/a/t.zarr/") and not is_zarr_path(tmp_path / "t.mrc")
    assert open_omezarr(z, 9.0).level == "1" and open_omezarr(z, 6.0).level == "0" and open_omezarr(z).level == "0"
    coords = _csv(tmp_path / "c.csv", XYZ / 2)  # picks in the coarse level's voxels
    a = extract_subtomograms(z, coords, tmp_path / "a", box=16, voxel_size_a=10.0, progress=False)
    b = extract_subtomograms(_mrc(tmp_path / "t.mrc", coarse, 10.0), coords, tmp_path / "b", box=16, voxel_size_a=10.0, progress=False)
    np.testing.assert_array_equal(np.load(a.volumes), np.load(b.volumes))  # the same crops, read lazily
    meta = pd.read_csv(a.meta)
    assert meta["tomo_voxel_size_a"].iloc[0] == 10.0 and meta["crop"].iloc[0] == 16
    assert meta["voxel_size_source"].iloc[0] == "OME-Zarr multiscales coordinateTransformations (level 1 of 0: 5 Å, 1: 10 Å)"
    assert meta["border"].tolist() == pd.read_csv(b.meta)["border"].tolist()
    # nanometre units are converted; a given voxel size overrides and is recorded beside the metadata's
    zn = _omezarr(tmp_path / "n.zarr", {"0": (fine, 0.5)}, unit="nanometer")
    with open_volume(zn, 6.0) as tomo:
        assert tomo.voxel_size_a == 6.0 and "metadata says 5 Å at level 0" in tomo.voxel_size_source


def test_chunk_order_extraction_equals_file_order(tmp_path: Path) -> None:
    data = _volume((32, 64, 64), seed=3)
    z = _omezarr(tmp_path / "t.zarr", {"0": (data, 10.0)}, chunks=(8, 8, 8))
    xyz = np.random.default_rng(4).uniform(4, 28, size=(40, 3)) * [2, 2, 1]
    coords = _csv(tmp_path / "c.csv", xyz)
    a = extract_subtomograms(z, coords, tmp_path / "a", box=8, voxel_size_a=10.0, progress=False)
    b = extract_subtomograms(_mrc(tmp_path / "t.mrc", data, 10.0), coords, tmp_path / "b", box=8, voxel_size_a=10.0, progress=False)
    np.testing.assert_allclose(np.load(a.volumes), np.load(b.volumes), atol=1e-5)
    assert pd.read_csv(a.meta)["x"].tolist() == pd.read_csv(b.meta)["x"].tolist()


def test_omezarr_over_http_reads_the_same_boxes(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp", reason="OME-Zarr over HTTP needs aiohttp: pip install 'cryonb[portal]'")
    data = _volume()
    _omezarr(tmp_path / "served" / "t.zarr", {"0": (data, 10.0)})
    coords = _csv(tmp_path / "c.csv", XYZ)
    local = extract_subtomograms(tmp_path / "served" / "t.zarr", coords, tmp_path / "a", box=16, voxel_size_a=10.0, progress=False)
    with serve_folder_locally(tmp_path / "served") as base:
        remote = extract_subtomograms(base + "t.zarr", coords, tmp_path / "b", box=16, voxel_size_a=10.0, progress=False)
    np.testing.assert_array_equal(np.load(local.volumes), np.load(remote.volumes))
    assert pd.read_csv(remote.meta)["tomogram"].iloc[0].startswith("http://127.0.0.1:")


@pytest.mark.parametrize(("attrs", "message"), [
    ({}, r"no 'multiscales' in the zarr attributes \(found none\); expected an OME-Zarr image"),
    ({"multiscales": [{"axes": ["z", "y", "x"], "datasets": [{"path": "0"}]}]}, r"datasets\[0\] \(path '0'\): no scale transformation"),
    ({"multiscales": [{"datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [10, 5, 5]}]}]}]},
     r"voxels of z, y, x = 10, 5, 5 Å are not cubic"),
    ({"multiscales": [{"axes": [{"name": a, "unit": "parsec"} for a in "zyx"],
                       "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]},
     r"axis unit 'parsec'; expected one of angstrom"),
    ({"multiscales": [{"datasets": [{"path": "9", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]},
     r"names level '9', which the store does not hold"),
])
def test_bad_multiscales_metadata_is_named(tmp_path: Path, attrs: dict, message: str) -> None:
    z = _omezarr(tmp_path / "t.zarr", {"0": (_volume(), 10.0)}, attrs=attrs)
    with pytest.raises(CryoNBError, match=message):
        open_omezarr(z, 10.0)


def test_unsafe_or_unsupported_stores_are_refused(tmp_path: Path) -> None:
    import numcodecs

    group = zarr.open_group(str(tmp_path / "obj.zarr"), mode="w")
    group.create_dataset("0", shape=(4, 4, 4), dtype=object, object_codec=numcodecs.Pickle())
    group.attrs["multiscales"] = [{"datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]
    with pytest.raises(CryoNBError, match=r"obj\.zarr/0: dtype object; expected real numbers"):
        open_omezarr(tmp_path / "obj.zarr")
    (tmp_path / "v3.zarr").mkdir()
    (tmp_path / "v3.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.raises(CryoNBError, match=r"a Zarr v3 store \(zarr\.json, OME-NGFF 0\.5\)"):
        open_omezarr(tmp_path / "v3.zarr")
    with pytest.raises(CryoNBError, match=r"nothere\.zarr: no such OME-Zarr folder"):
        open_omezarr(tmp_path / "nothere.zarr")
    four = _omezarr(tmp_path / "4d.zarr", {"0": (np.zeros((2, 4, 4, 4), np.float32), 1.0)}, chunks=(1, 4, 4, 4))
    four_attrs = dict(zarr.open_group(str(four)).attrs)
    four_attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1, 1, 1, 1]
    four_attrs["multiscales"][0]["axes"] = [{"name": "c"}] + four_attrs["multiscales"][0]["axes"]
    zarr.open_group(str(four), mode="a").attrs.update(four_attrs)
    with pytest.raises(CryoNBError, match=r"array of shape \(2, 4, 4, 4\); expected a 3-D \(z, y, x\) tomogram"):
        open_omezarr(four)


_LARGE = """
import json, resource, sys
import numpy as np, pandas as pd, zarr
from cryonb.extract import extract_subtomograms
folder = sys.argv[1]
shape = (2_000_000, 64, 64)  # z, y, x float32: 30.5 GiB, more than this machine's memory; only metadata on disk
group = zarr.open_group(folder + "/t.zarr", mode="w")
arr = group.create_dataset("0", shape=shape, chunks=(64, 64, 64), dtype="f4", fill_value=0.0)
group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
                               "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [10.0] * 3}]}]}]
rng = np.random.default_rng(0)
zs = np.linspace(100, shape[0] - 100, 24)
for z in zs:  # a noise patch around each pick: the only chunks stored
    z0 = int(z) // 64 * 64
    arr[z0:z0 + 128, :, :] = rng.standard_normal((min(128, shape[0] - z0), 64, 64)).astype("f4")
pd.DataFrame({"x": 32.0, "y": 31.5, "z": zs}).to_csv(folder + "/c.csv", index=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = extract_subtomograms(folder + "/t.zarr", folder + "/c.csv", folder + "/out", box=16, voxel_size_a=10.0, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vols = np.load(result.volumes)
print(json.dumps({"n": result.n, "before_mib": before / 1024, "peak_mib": peak / 1024, "full_gib": np.prod(shape) * 4 / 2**30,
                  "std": float(vols.std())}))
"""


def test_a_tomogram_larger_than_memory_is_cropped_with_bounded_memory(tmp_path: Path) -> None:
    """A 30 GiB (virtual) OME-Zarr: reading it whole would fail; extraction reads only the chunks of its picks."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_LARGE), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"larger-than-RAM zarr: full array {report['full_gib']:.1f} GiB, peak RSS {report['peak_mib']:.0f} MiB "
          f"(before extraction {report['before_mib']:.0f} MiB)")
    assert report["n"] == 24 and abs(report["std"] - 1.0) < 1e-3  # real, z-scored boxes
    assert report["full_gib"] > 24  # more than the machine's memory
    assert report["peak_mib"] - report["before_mib"] < 600  # the chunk cache (256 MiB) and one batch, not the array
