"""Subtomogram extraction: positions, Fourier rescaling, border flags, inputs and their errors."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryonb.cli import main as cli_main
from cryonb.errors import CryoNBError
from cryonb.extract import (
    _fourier_rescale_fft,
    crop_size,
    extract_subtomograms,
    fourier_rescale,
    open_tomogram,
    read_coordinates,
)

SHAPE = (40, 72, 96)  # z, y, x tomogram voxels
TOMO_A = 5.0
SIGMA = 3.0  # blob sigma in tomogram voxels
# Far enough apart that no 32-voxel crop holds two blobs.
BLOBS_XYZ = np.array([[20.3, 18.6, 19.8], [50.0, 52.2, 21.4], [76.7, 20.1, 18.5]])


def _gauss(shape: tuple[int, int, int], centre_zyx: np.ndarray, sigma: float) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    c = centre_zyx
    return np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * sigma**2))


def _tomogram(path: Path, voxel_size_a: float = TOMO_A, nan: bool = False) -> Path:
    data = np.zeros(SHAPE)
    for xyz in BLOBS_XYZ:
        data += _gauss(SHAPE, xyz[::-1], SIGMA)
    data = data.astype(np.float32)
    if nan:
        data[21, 25, 20] = np.nan  # inside the box of particle 0 only
    with mrcfile.new(path, overwrite=True) as mrc, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile warns about the NaN we put there on purpose
        mrc.set_data(data)
        mrc.voxel_size = voxel_size_a
    return path


def _csv(path: Path, xyz: np.ndarray) -> Path:
    pd.DataFrame(xyz, columns=["x", "y", "z"]).to_csv(path, index=False)
    return path


def _zscored(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def test_fourier_rescale_halves_a_gaussian_and_applies_subvoxel_shift() -> None:
    big = _gauss((32, 32, 32), np.array([16.4, 15.7, 16.2]), 4.0)[None].astype(np.float32)
    out = fourier_rescale(big, 16, np.array([[0.4, -0.3, 0.2]]))
    expected = _gauss((16, 16, 16), np.array([8.0, 8.0, 8.0]), 2.0)
    assert out.shape == (1, 16, 16, 16) and out.dtype == np.float32
    assert np.abs(out[0] - expected).max() < 1e-3  # a sign or half-voxel error gives > 0.05
    up = fourier_rescale(expected[None].astype(np.float32), 24)
    assert np.abs(up[0] - _gauss((24, 24, 24), np.array([12.0, 12.0, 12.0]), 3.0)).max() < 1e-4


@pytest.mark.parametrize("crop", [23, 12, 16])
def test_fourier_rescale_matrices_match_fft_reference(crop: int) -> None:
    rng = np.random.default_rng(crop)
    cubes = rng.standard_normal((3, crop, crop, crop), dtype=np.float32)
    shifts = rng.uniform(-0.7, 0.7, size=(3, 3))
    fast = fourier_rescale(cubes, 16, shifts)
    np.testing.assert_allclose(fast, _fourier_rescale_fft(cubes, 16, shifts), atol=2e-5)
    # A constant cube stays that constant (the mean is preserved).
    np.testing.assert_allclose(fourier_rescale(np.full((1, crop, crop, crop), 3.5, np.float32), 16), 3.5, rtol=1e-5)


def test_extracted_blobs_are_centred_at_model_voxel_size(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    coords = _csv(tmp_path / "c.csv", BLOBS_XYZ)
    res = extract_subtomograms(tomo, coords, tmp_path / "out", box=16, voxel_size_a=10.0, progress=False)
    vols = np.load(res.volumes)
    meta = pd.read_csv(res.meta)
    assert res.crop == 32 and vols.shape == (3, 16, 16, 16) and vols.dtype == np.float32
    # A blob of sigma 3 tomogram voxels (5 Å) is sigma 1.5 model voxels (10 Å), centred at voxel 8.
    ideal = _gauss((16, 16, 16), np.array([8.0, 8.0, 8.0]), SIGMA / 2)
    for i in range(3):
        corr = float(np.mean(_zscored(vols[i]) * _zscored(ideal)))
        assert corr > 0.99, (i, corr)
        assert abs(float(vols[i].mean())) < 1e-5 and abs(float(vols[i].std()) - 1) < 1e-4
        assert np.unravel_index(np.argmax(vols[i]), vols[i].shape) == (8, 8, 8)
    assert list(meta["border"]) == [False, False, False]
    assert meta.loc[0, "start_x"] == 20 - 16 and meta.loc[0, "start_z"] == 20 - 16
    assert set(meta["voxel_size_a"]) == {10.0} and set(meta["tomo_voxel_size_a"]) == {TOMO_A}


def test_border_boxes_are_padded_and_flagged_not_dropped(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    xyz = np.array([[36.0, 32.0, 20.0], [2.0, 32.0, 20.0], [95.0, 71.0, 0.0]])
    res = extract_subtomograms(tomo, _csv(tmp_path / "c.csv", xyz), tmp_path / "o", box=16, progress=False)
    meta = pd.read_csv(res.meta)
    vols = np.load(res.volumes)
    assert res.n == 3 and res.n_border == 2 and vols.shape[0] == 3
    assert list(meta["border"]) == [False, True, True]
    # Crop 32 from x = 2 - 16 = -14: 18 of 32 x-columns inside. Corner: x 79..95 and y 55..71 keep 17, z 0..15 keeps 16.
    assert meta.loc[1, "inside_fraction"] == pytest.approx(18 / 32)
    assert meta.loc[2, "inside_fraction"] == pytest.approx(17 * 17 * 16 / 32**3, abs=1e-6)
    assert np.isfinite(vols).all()


def test_star_and_csv_give_the_same_boxes(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    star = tmp_path / "p.star"
    df = pd.DataFrame({f"rlnCoordinate{a}": BLOBS_XYZ[:, i] for i, a in enumerate("XYZ")})
    df["rlnTomoName"] = "t"
    starfile.write({"particles": df}, star)
    a = extract_subtomograms(tomo, star, tmp_path / "a", box=16, progress=False)
    b = extract_subtomograms(tomo, _csv(tmp_path / "c.csv", BLOBS_XYZ), tmp_path / "b", box=16, progress=False)
    np.testing.assert_array_equal(np.load(a.volumes), np.load(b.volumes))


def test_relion5_centred_angstrom_coordinates_with_origin(tmp_path: Path) -> None:
    star = tmp_path / "p.star"
    # Å from the centre voxel n/2, plus an origin shift of +10 Å (2 voxels) that is subtracted.
    nz, ny, nx = SHAPE
    df = pd.DataFrame(
        {
            "rlnCenteredCoordinateXAngst": [(20.3 - nx / 2) * TOMO_A + 10.0],
            "rlnCenteredCoordinateYAngst": [(30.6 - ny / 2) * TOMO_A],
            "rlnCenteredCoordinateZAngst": [(19.8 - nz / 2) * TOMO_A],
            "rlnOriginXAngst": [10.0],
            "rlnOriginYAngst": [0.0],
            "rlnOriginZAngst": [0.0],
        }
    )
    starfile.write(df, star)
    got = read_coordinates(star, shape_zyx=SHAPE, voxel_size_a=TOMO_A)
    np.testing.assert_allclose(got[["x", "y", "z"]].to_numpy()[0], [20.3, 30.6, 19.8], atol=1e-9)


def test_tomogram_is_memory_mapped_and_header_voxel_size_used(tmp_path: Path) -> None:
    with open_tomogram(_tomogram(tmp_path / "t.mrc", voxel_size_a=6.8)) as (data, size_a):
        assert isinstance(data, np.memmap) and data.shape == SHAPE
        assert size_a == pytest.approx(6.8, rel=1e-6)
    assert crop_size(32, 10.0, 6.8) == 47


def test_tomogram_with_nan_is_rejected(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc", nan=True)
    with pytest.raises(CryoNBError, match=r"t\.mrc: 1 NaN or infinite voxel\(s\) in the box around particle 0 \(x=20\.3"):
        extract_subtomograms(tomo, _csv(tmp_path / "c.csv", BLOBS_XYZ), tmp_path / "o", box=16, progress=False)
    assert not (tmp_path / "o" / "volumes.npy").exists() and not (tmp_path / "o" / "meta.csv").exists()


def test_coordinate_outside_volume_is_rejected(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    xyz = np.vstack([BLOBS_XYZ, [[100.0, 10.0, 10.0]]])
    msg = r"c\.csv: particle at file row 3 \(x=100, y=10, z=10\) is outside the tomogram \(x 0\.\.95, y 0\.\.71, z 0\.\.39"
    with pytest.raises(CryoNBError, match=msg):
        extract_subtomograms(tomo, _csv(tmp_path / "c.csv", xyz), tmp_path / "o", progress=False)


def test_star_without_coordinate_columns_is_rejected(tmp_path: Path) -> None:
    star = tmp_path / "p.star"
    starfile.write(pd.DataFrame({"rlnAngleRot": [1.0], "rlnAngleTilt": [2.0]}), star)
    with pytest.raises(CryoNBError, match=r"p\.star: no coordinate columns; expected rlnCoordinateX/Y/Z.*rlnAngleRot"):
        read_coordinates(star)
    csv = tmp_path / "c.csv"
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(csv, index=False)
    with pytest.raises(CryoNBError, match=r"c\.csv: expected columns x, y, z"):
        read_coordinates(csv)


def test_voxel_size_zero_or_missing_is_rejected(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc", voxel_size_a=0.0)
    coords = _csv(tmp_path / "c.csv", BLOBS_XYZ)
    with pytest.raises(CryoNBError, match=r"t\.mrc: header voxel size is 0\.0 Å \(missing\); pass .*--tomo-voxel-size-a"):
        extract_subtomograms(tomo, coords, tmp_path / "o", progress=False)
    with pytest.raises(CryoNBError, match=r"tomogram voxel size given as 0\.0 Å; expected > 0"):
        extract_subtomograms(tomo, coords, tmp_path / "o", tomo_voxel_size_a=0.0, progress=False)
    with pytest.raises(CryoNBError, match=r"--voxel-size-a\) is 0\.0 Å; expected > 0"):
        extract_subtomograms(tomo, coords, tmp_path / "o", voxel_size_a=0.0, tomo_voxel_size_a=5.0, progress=False)
    # Given explicitly, a header without a voxel size is fine.
    res = extract_subtomograms(tomo, coords, tmp_path / "o", box=16, tomo_voxel_size_a=5.0, progress=False)
    assert res.crop == 32


def test_cli_writes_mrcs_and_failed_run_keeps_previous_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    coords = _csv(tmp_path / "c.csv", BLOBS_XYZ)
    out = tmp_path / "sub"
    rc = cli_main(["extract", str(tomo), str(coords), "--box", "16", "--voxel-size-a", "10", "-o", str(out), "--mrc", "--quiet"])
    assert rc == 0
    assert "extracted 3 subtomograms (32³ tomogram voxels → 16³ at 10 Å), 0 at the border" in capsys.readouterr().out
    with mrcfile.open(out / "mrc" / "subtomo_000002.mrc") as mrc:
        assert mrc.data.shape == (16, 16, 16) and float(mrc.voxel_size.x) == pytest.approx(10.0)
        np.testing.assert_array_equal(mrc.data, np.load(out / "volumes.npy")[2])
    before = (out / "volumes.npy").read_bytes(), (out / "meta.csv").read_bytes()
    bad = _tomogram(tmp_path / "bad.mrc", nan=True)
    rc = cli_main(["extract", str(bad), str(coords), "--box", "16", "-o", str(out), "--quiet"])
    assert rc == 2
    assert "cryonb extract: error:" in capsys.readouterr().err
    assert ((out / "volumes.npy").read_bytes(), (out / "meta.csv").read_bytes()) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]


def test_multi_tomogram_star_needs_tomo_name(tmp_path: Path) -> None:
    star = tmp_path / "p.star"
    df = pd.DataFrame({"rlnCoordinateX": [1.0, 2.0, 3.0], "rlnCoordinateY": [4.0, 5.0, 6.0],
                       "rlnCoordinateZ": [7.0, 8.0, 9.0], "rlnTomoName": ["TS_01", "TS_02", "TS_01"]})
    starfile.write({"particles": df}, star)
    with pytest.raises(CryoNBError, match=r"p\.star: lists particles of 2 tomograms \(TS_01, TS_02\.\.\.\); choose one with --tomo-name"):
        read_coordinates(star)
    got = read_coordinates(star, tomo_name="TS_01")
    assert list(got["row"]) == [0, 2] and list(got["x"]) == [1.0, 3.0]
    with pytest.raises(CryoNBError, match=r"p\.star: no particles for tomogram 'TS_9'"):
        read_coordinates(star, tomo_name="TS_9")


# ---- output folders: guarded, written as one unit, our temporaries cleaned ---------------------

def _extract_cli(tomo: Path, coords: Path, out: Path, *extra: str) -> int:
    return cli_main(["extract", str(tomo), str(coords), "--box", "16", "-o", str(out), "--quiet", *extra])


def test_foreign_non_empty_folder_is_refused_unless_overwrite_which_keeps_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "volumes.npy").write_bytes(b"user's own array")
    (out / "notes.txt").write_text("keep me")
    assert _extract_cli(tomo, coords, out) == 2
    err = capsys.readouterr().err
    assert f"cryonb extract: error: {out}: folder is not empty (notes.txt, volumes.npy) and not written by `cryonb extract`" in err
    assert "pass --overwrite to replace meta.csv, mrc, volumes.npy there (other files are kept)" in err
    assert (out / "volumes.npy").read_bytes() == b"user's own array"
    assert _extract_cli(tomo, coords, out, "--overwrite") == 0
    assert np.load(out / "volumes.npy").shape == (3, 16, 16, 16)
    assert (out / "notes.txt").read_text() == "keep me"
    assert json.loads((out / ".cryonb-output.json").read_text())["command"] == "extract"


def test_output_folder_holding_an_input_or_a_data_set_is_refused_even_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    out = tmp_path / "out"
    assert _extract_cli(tomo, coords, out) == 0
    before = (out / "meta.csv").read_bytes()
    # the earlier output's meta.csv has x, y, z columns: a plausible, and fatal, coordinate file
    assert _extract_cli(tomo, out / "meta.csv", out, "--overwrite") == 2
    assert f"{out}: contains the input {out / 'meta.csv'}; the output would replace it" in capsys.readouterr().err
    assert (out / "meta.csv").read_bytes() == before
    dataset = tmp_path / "cssl-x-0123456789ab"
    dataset.mkdir()
    (dataset / "recipe.json").write_text("{}")
    assert _extract_cli(tomo, coords, dataset, "--overwrite") == 2
    assert "is a generated data set (recipe.json); choose another output folder" in capsys.readouterr().err
    assert sorted(p.name for p in dataset.iterdir()) == ["recipe.json"]


@pytest.mark.parametrize("exchange", [True, False])
def test_rerun_replaces_the_whole_output_and_keeps_later_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:  # a system without renameat2(RENAME_EXCHANGE): two renames
        monkeypatch.setattr("cryonb.outputs._exchange", lambda a, b: False)
    tomo = _tomogram(tmp_path / "t.mrc")
    out = tmp_path / "out"
    assert _extract_cli(tomo, _csv(tmp_path / "c.csv", BLOBS_XYZ), out, "--mrc") == 0
    (out / "classify").mkdir()  # a later step's results inside the folder are not extract's to delete
    (out / "classify" / "predictions.csv").write_text("x\n")
    assert _extract_cli(tomo, _csv(tmp_path / "c2.csv", BLOBS_XYZ[:1]), out) == 0
    assert sorted(p.name for p in out.iterdir()) == [".cryonb-output.json", "classify", "meta.csv", "volumes.npy"]
    assert np.load(out / "volumes.npy").shape == (1, 16, 16, 16)  # no mrc/ of the 3-box run is left
    assert (out / "classify" / "predictions.csv").read_text() == "x\n"
    assert not list(tmp_path.glob(".cryonb-tmp-*"))


def test_interrupted_extraction_changes_nothing_and_says_it_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    out = tmp_path / "out"
    assert _extract_cli(tomo, coords, out, "--mrc") == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cryonb.extract.extract_boxes", interrupted)
    assert _extract_cli(tomo, coords, out) == 130
    err = capsys.readouterr().err
    assert "cryonb extract: interrupted; nothing was changed" in err and "run again to start over" in err
    assert "resume" not in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".cryonb-tmp-*"))


def test_temporary_of_a_killed_run_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from cryonb.outputs import _host_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        stale = tmp_path / f".cryonb-tmp-{int(dead.stdout)}-{_host_tag()}-0000-out"
        running = tmp_path / f".cryonb-tmp-{live.pid}-{_host_tag()}-1111-out"
        other_output = tmp_path / f".cryonb-tmp-{int(dead.stdout)}-{_host_tag()}-2222-elsewhere"
        for folder in (stale, running, other_output):
            folder.mkdir()
            (folder / "volumes.npy").write_bytes(b"\0" * 4096)  # what SIGKILL mid-extraction leaves
        tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
        assert _extract_cli(tomo, coords, tmp_path / "out") == 0
        assert not stale.exists()
        assert running.exists() and other_output.exists()
    finally:
        live.communicate(b"")


def test_file_or_unwritable_place_as_output_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _extract_cli(tomo, coords, afile) == 2
    assert f"cryonb extract: error: {afile}: is a file, not a folder; expected an output folder (-o)" in capsys.readouterr().err
    assert _extract_cli(tomo, coords, afile / "sub") == 2
    assert f"cryonb extract: error: {afile / 'sub'}: cannot create the output folder there" in capsys.readouterr().err
    assert afile.read_text() == "x"


def test_cli_reports_an_os_error_with_its_path_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryonb.commands import export_mrc

    def denied(args: object) -> int:  # what a read-only output folder gives deep inside a command
        raise PermissionError(13, "Permission denied", "/ro/out/x.mrc")

    monkeypatch.setattr(export_mrc, "main", denied)
    assert cli_main(["export-mrc", "x", "0", "-o", "/ro/out/x.mrc"]) == 2
    assert "cryonb export-mrc: error: /ro/out/x.mrc: Permission denied" in capsys.readouterr().err


# ---- bad picks, boxes and voxel sizes -------------------------------------------------------

def test_duplicate_picks_are_named_in_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    coords = _csv(tmp_path / "c.csv", np.vstack([BLOBS_XYZ, BLOBS_XYZ[[0]], BLOBS_XYZ[[2]]]))
    with pytest.warns(UserWarning, match=r"c\.csv: 2 duplicate pick\(s\) .*file row\(s\) 3 \(= row 0\), 4 \(= row 2\)"):
        res = extract_subtomograms(tomo, coords, tmp_path / "o", box=16, progress=False)
    assert res.n == 5 and res.duplicates == (3, 4)
    assert _extract_cli(tomo, coords, tmp_path / "o2") == 0
    assert "cryonb extract: warning: " in capsys.readouterr().err


def test_box_far_larger_than_the_tomogram_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    with pytest.raises(CryoNBError, match=r"--box 100 spans 200 tomogram voxels, more than twice every axis of .*t\.mrc \(96 x 72 x 40"):
        extract_subtomograms(tomo, coords, tmp_path / "o", box=100, progress=False)
    assert cli_main(["extract", str(tomo), str(coords), "--box", "1000", "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "--box 1000 spans 2000 tomogram voxels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_box_needing_more_memory_than_available_is_refused_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cryonb.extract._available_memory_bytes", lambda: 10_000_000)
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    with pytest.raises(CryoNBError, match=r"--box 32 \(64³ tomogram voxels per box\) needs about .* GB of memory, more than the 0\.0 GB available"):
        extract_subtomograms(tomo, coords, tmp_path / "o", box=32, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--voxel-size-a", "1e6", r"model voxel size \(--voxel-size-a\) is 1e\+06 Å; expected a voxel size between 0\.1 and 1000 Å"),
    ("--voxel-size-a", "inf", r"model voxel size \(--voxel-size-a\) is inf Å; expected a voxel size between"),
    ("--tomo-voxel-size-a", "1e-9", r"t\.mrc: tomogram voxel size given \(--tomo-voxel-size-a\) is 1e-09 Å; expected a voxel size between"),
])
def test_implausible_voxel_sizes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    tomo, coords = _tomogram(tmp_path / "t.mrc"), _csv(tmp_path / "c.csv", BLOBS_XYZ)
    assert _extract_cli(tomo, coords, tmp_path / "o", flag, value) == 2
    assert re.search(message, capsys.readouterr().err)


def test_empty_coordinate_file_and_directories_are_named(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(CryoNBError, match=r"empty\.csv: empty file; expected particle coordinates"):
        extract_subtomograms(tomo, empty, tmp_path / "o", progress=False)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(CryoNBError, match=r"blank\.csv: not a readable CSV file"):
        read_coordinates(blank)
    (tmp_path / "picks.star").mkdir()
    with pytest.raises(CryoNBError, match=r"picks\.star: is a directory; expected coordinate file"):
        read_coordinates(tmp_path / "picks.star")
    with pytest.raises(CryoNBError, match=r"o: is a directory; expected tomogram file"):
        (tmp_path / "o").mkdir()
        extract_subtomograms(tmp_path / "o", empty, tmp_path / "out", progress=False)


def test_bad_tomogram_headers_are_named(tmp_path: Path) -> None:
    coords = _csv(tmp_path / "c.csv", BLOBS_XYZ)
    neg = _tomogram(tmp_path / "neg.mrc")
    raw = bytearray(neg.read_bytes())
    raw[0:4] = (-(2**31)).to_bytes(4, "little", signed=True)  # nx: an OverflowError when mapped
    neg.write_bytes(bytes(raw))
    with pytest.raises(CryoNBError, match=r"neg\.mrc: corrupt MRC header: nx=-2147483648; expected sizes >= 1"):
        extract_subtomograms(neg, coords, tmp_path / "o", progress=False)
    stack = tmp_path / "stack.mrc"
    with mrcfile.new(stack) as mrc:
        mrc.set_data(np.zeros(SHAPE, np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = TOMO_A
    with pytest.raises(CryoNBError, match=r"stack\.mrc: an image stack \(MRC space group ispg 0: 40 images of 72 x 96\), not a volume"):
        extract_subtomograms(stack, coords, tmp_path / "o", progress=False)


def test_polarity_is_converted_to_the_models_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #15: a tomogram showing protein bright is negated to the models' dark convention; meta.csv says so."""
    tomo = _tomogram(tmp_path / "t.mrc")
    coords = _csv(tmp_path / "c.csv", BLOBS_XYZ)
    assert _extract_cli(tomo, coords, tmp_path / "dark") == 0
    assert _extract_cli(tomo, coords, tmp_path / "bright", "--polarity", "bright") == 0
    dark, bright = np.load(tmp_path / "dark" / "volumes.npy"), np.load(tmp_path / "bright" / "volumes.npy")
    np.testing.assert_array_equal(bright, -dark)
    meta = pd.read_csv(tmp_path / "bright" / "meta.csv")
    assert set(meta.polarity) == {"dark"} and set(meta.tomogram_polarity) == {"bright"}
    with pytest.raises(SystemExit):  # argparse's own usage error, exit status 2
        _extract_cli(tomo, coords, tmp_path / "x", "--polarity", "white")
    assert "invalid choice: 'white'" in capsys.readouterr().err
    with pytest.raises(CryoNBError, match=r"tomogram polarity \(--polarity\)='grey': expected 'dark'"):
        extract_subtomograms(tomo, coords, tmp_path / "y", box=16, polarity="grey", progress=False)
