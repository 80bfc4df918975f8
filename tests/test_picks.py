"""Picks in the field's formats: copick JSON in and out, RELION 5 out, pixel sizes never silently wrong."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryonb.cli import main as cli_main
from cryonb.errors import CryoNBError
from cryonb.extract import extract_subtomograms, read_coordinates
from cryonb.picks import read_copick_picks, relion5_star, write_copick_picks
from test_predict_cli import _cosnet_checkpoint, _rb3d_checkpoint, _support

SHAPE = (24, 40, 48)  # z, y, x
TOMO_A = 10.0
XYZ = np.array([[12.3, 14.6, 11.8], [30.0, 25.2, 12.4], [20.0, 20.0, 9.0], [36.0, 10.0, 14.0]])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tomogram(path: Path, voxel_size_a: float = TOMO_A) -> Path:
    data = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size_a
    return path


def _copick(path: Path, name: str, xyz_a: np.ndarray, shift_a: tuple[float, float, float] = (0.0, 0.0, 0.0), **extra: object) -> Path:
    mat = np.eye(4)
    mat[:3, 3] = shift_a
    points = [{"location": {"x": x, "y": y, "z": z}, "transformation_": mat.tolist(), "instance_id": 0, "score": 0.5 + 0.1 * i}
              for i, (x, y, z) in enumerate(xyz_a)]
    doc = {"pickable_object_name": name, "user_id": "someone", "session_id": "1", "run_name": "TS_01",
           "voxel_spacing": TOMO_A, "unit": "angstrom", "points": points, "trust_orientation": True, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_copick_picks_are_read_in_angstrom_with_their_translation(tmp_path: Path) -> None:
    # location + the transformation's translation (Å) is the centre; voxel i sits at i × voxel size
    f = _copick(tmp_path / "Picks" / "someone_1_ribosome.json", "ribosome", XYZ[:2] * TOMO_A - 20.0, shift_a=(20.0, 20.0, 20.0))
    _copick(tmp_path / "Picks" / "someone_1_apoferritin.json", "apoferritin", XYZ[2:] * TOMO_A)
    one = read_coordinates(f, shape_zyx=SHAPE, voxel_size_a=TOMO_A)
    np.testing.assert_allclose(one[["x", "y", "z"]].to_numpy(), XYZ[:2], atol=1e-9)
    assert one["object"].tolist() == ["ribosome"] * 2 and one.attrs["coords_unit"].startswith("Å (copick")
    both = read_coordinates(tmp_path / "Picks", shape_zyx=SHAPE, voxel_size_a=TOMO_A)
    assert sorted(both["object"]) == ["apoferritin"] * 2 + ["ribosome"] * 2
    only = read_coordinates(tmp_path / "Picks", shape_zyx=SHAPE, voxel_size_a=TOMO_A, objects=["apoferritin"])
    np.testing.assert_allclose(only[["x", "y", "z"]].to_numpy(), XYZ[2:])
    with pytest.raises(CryoNBError, match=r"Picks: object\(s\) \['proteasome'\] not in the picks; found \['apoferritin', 'ribosome'\]"):
        read_coordinates(tmp_path / "Picks", voxel_size_a=TOMO_A, objects=["proteasome"])


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["points"][1].update(transformation_=None), r"points\[1\]: transformation_ is None; expected a 4x4 matrix"),
    (lambda d: d["points"][0].update(transformation_=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]), r"points\[0\]: transformation_ is .*expected a 4x4"),
    (lambda d: d["points"][0]["transformation_"][3].__setitem__(0, 1.0), r"transformation_ last row is \[1\.0, 0\.0, 0\.0, 1\.0\]"),
    (lambda d: d.pop("pickable_object_name"), r"no pickable_object_name; expected a copick picks file"),
    (lambda d: d.update(unit="nanometer"), r"unit 'nanometer'; expected 'angstrom'"),
    (lambda d: d["points"][0]["location"].pop("y"), r"points\[0\]\.location\.y is None; expected a finite number"),
    (lambda d: d.update(points=[]), r"no points \(objects: \['ribosome'\]\)"),
])
def test_bad_copick_files_are_named(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    f = _copick(tmp_path / "p.json", "ribosome", XYZ[:2] * TOMO_A)
    doc = json.loads(f.read_text())
    edit(doc)
    f.write_text(json.dumps(doc))
    with pytest.raises(CryoNBError, match=message):
        read_copick_picks(f)


def test_a_point_without_transformation_gets_copicks_identity(tmp_path: Path) -> None:
    f = _copick(tmp_path / "p.json", "ribosome", XYZ[:1] * TOMO_A)
    doc = json.loads(f.read_text())
    del doc["points"][0]["transformation_"]
    f.write_text(json.dumps(doc))
    np.testing.assert_allclose(read_copick_picks(f)[["x_a", "y_a", "z_a"]].to_numpy(), XYZ[:1] * TOMO_A)


def test_extract_from_copick_equals_extract_from_csv_and_keeps_the_object(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc")
    csv = tmp_path / "c.csv"
    pd.DataFrame(XYZ, columns=["x", "y", "z"]).to_csv(csv, index=False)
    picks = _copick(tmp_path / "Picks" / "a_1_ribosome.json", "ribosome", XYZ * TOMO_A)
    a = extract_subtomograms(tomo, csv, tmp_path / "a", box=16, voxel_size_a=10.0, progress=False)
    b = extract_subtomograms(tomo, picks.parent, tmp_path / "b", box=16, voxel_size_a=10.0, progress=False)
    np.testing.assert_allclose(np.load(a.volumes), np.load(b.volumes), atol=1e-6)
    meta = pd.read_csv(b.meta)
    assert meta["object"].tolist() == ["ribosome"] * 4 and meta["voxel_size_source"].iloc[0] == "MRC header"
    np.testing.assert_allclose(meta["pick_score"], [0.5, 0.6, 0.7, 0.8])
    assert pd.read_csv(a.meta)["coords_unit"].iloc[0] == "tomogram voxels"


def test_copick_output_round_trips_and_matches_copicks_reader(tmp_path: Path) -> None:
    table = pd.DataFrame({"x": XYZ[:, 0], "y": XYZ[:, 1], "z": XYZ[:, 2], "predicted": ["a b", "c", "a b", "a b"],
                          "probability": [0.9, 0.8, 0.7, 0.6], "p_a b": 0.5, "p_c": 0.5, "p_d": 0.0})
    files = write_copick_picks(tmp_path / "copick", table, 6.8, run_name="TS_01")
    assert [f.name for f in files] == ["cryonb_0_a-b.json", "cryonb_0_c.json", "cryonb_0_d.json"]
    back = read_copick_picks(files[0])
    np.testing.assert_allclose(back[["x_a", "y_a", "z_a"]].to_numpy() / 6.8, XYZ[[0, 2, 3]])
    np.testing.assert_allclose(back["score"], [0.9, 0.7, 0.6])
    assert read_copick_picks(tmp_path / "copick", objects=["c"])["score"].tolist() == [0.8]
    with pytest.raises(CryoNBError, match=r"cryonb_0_d\.json: no points"):
        read_copick_picks(files[2])
    models = pytest.importorskip("copick.models", reason="copick is optional (pip install 'cryonb[copick]'); its model checks our JSON")
    parsed = models.CopickPicksFile(**json.loads(files[0].read_text()))
    assert parsed.pickable_object_name == "a-b" and parsed.unit == "angstrom" and len(parsed.points) == 3
    centres = np.array([[p.location.x, p.location.y, p.location.z] + p.transformation[:3, 3] for p in parsed.points])
    np.testing.assert_allclose(centres / 6.8, XYZ[[0, 2, 3]])
    # and the other way: a file as copick's own model writes it (filesystem.py: json.dump(model_dump())) reads here
    mat = np.eye(4)
    mat[:3, 3] = [5.0, -5.0, 2.5]
    theirs = models.CopickPicksFile(pickable_object_name="ribosome", user_id="u", session_id="0", unit="angstrom",
                                    points=[models.CopickPoint(location=models.CopickLocation(x=100.0, y=200.0, z=50.0),
                                                               transformation_=mat.tolist(), score=0.25)])
    (tmp_path / "theirs.json").write_text(json.dumps(theirs.model_dump()))
    ours = read_copick_picks(tmp_path / "theirs.json")
    np.testing.assert_allclose(ours[["x_a", "y_a", "z_a"]].to_numpy(), [[105.0, 195.0, 52.5]])
    assert ours["score"].tolist() == [0.25] and ours["object"].tolist() == ["ribosome"]


def test_relion5_star_round_trips_through_our_reader_and_starfile(tmp_path: Path) -> None:
    table = pd.DataFrame({"x": XYZ[:, 0], "y": XYZ[:, 1], "z": XYZ[:, 2]})
    path = tmp_path / "p.star"
    path.write_text(relion5_star(table, tomo_name="TS_01", tomo_voxel_size_a=6.8, tomo_shape_zyx=SHAPE,
                                 extra={"rlnClassNumber": [1, 2, 1, 3]}))
    doc = starfile.read(path, always_dict=True)
    assert set(doc) == {"optics", "particles"} and float(doc["optics"]["rlnTomoTiltSeriesPixelSize"].iloc[0]) == 6.8
    p = doc["particles"]
    assert list(p.columns[:5]) == ["rlnTomoName", "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                                   "rlnCenteredCoordinateZAngst", "rlnOpticsGroup"]
    np.testing.assert_allclose(p["rlnCenteredCoordinateXAngst"], (XYZ[:, 0] - SHAPE[2] / 2) * 6.8)
    back = read_coordinates(path, shape_zyx=SHAPE, voxel_size_a=6.8)
    np.testing.assert_allclose(back[["x", "y", "z"]].to_numpy(), XYZ, atol=1e-6)
    assert back.attrs["coords_unit"].startswith("Å from the tomogram centre")


def _extracted(tmp_path: Path) -> Path:
    tomo = _tomogram(tmp_path / "TS_07.mrc")
    picks = _copick(tmp_path / "Picks" / "a_1_ribosome.json", "ribosome", XYZ * TOMO_A)
    extract_subtomograms(tomo, picks, tmp_path / "sub", box=16, voxel_size_a=10.0, progress=False, write_mrcs=True)
    return tmp_path / "sub"


def test_classify_writes_relion5_and_copick_that_read_back_to_the_same_positions(tmp_path: Path) -> None:
    sub = _extracted(tmp_path)
    ckpt = _rb3d_checkpoint(tmp_path / "rb3d.pt")
    assert cli_main(["classify", str(sub), "--checkpoint", str(ckpt), "--star-style", "relion5", "--copick"]) == 0
    out = sub / "classify"
    table = pd.read_csv(out / "predictions.csv")
    star = starfile.read(out / "predictions.star", always_dict=True)
    assert set(star["particles"]["rlnTomoName"]) == {"TS_07"}  # the tomogram's file name by default
    assert list(star["particles"]["rlnClassNumber"]) == list(table["class_number"])
    back = read_coordinates(out / "predictions.star", shape_zyx=SHAPE, voxel_size_a=TOMO_A)
    np.testing.assert_allclose(back[["x", "y", "z"]].to_numpy(), XYZ, atol=1e-6)
    copick = sorted(p.name for p in (out / "copick").iterdir())
    assert copick == ["cryonb_0_proteasome.json", "cryonb_0_ribosome.json", "cryonb_0_tric.json"]
    picked = read_copick_picks(out / "copick")
    assert len(picked) == 4
    np.testing.assert_allclose(sorted(picked["score"]), sorted(table["probability"]), rtol=1e-6)
    assert json.loads((out / "copick" / copick[0]).read_text())["run_name"] == "TS_07"


def test_oneshot_writes_relion5_star_and_copick(tmp_path: Path) -> None:
    sub = _extracted(tmp_path)
    support = _support(tmp_path / "support", sub, {"alpha": [0], "beta": [1]})
    ckpt = _cosnet_checkpoint(tmp_path / "cos.pt")
    assert cli_main(["oneshot", str(sub), "--support", str(support), "--checkpoint", str(ckpt),
                     "--star-style", "relion5", "--copick", "--tomo-name", "run7"]) == 0
    table = pd.read_csv(sub / "oneshot" / "oneshot.csv")
    star = starfile.read(sub / "oneshot" / "oneshot.star", always_dict=True)["particles"]
    assert set(star["rlnTomoName"]) == {"run7"} and list(star["rlnClassNumber"]) == list(table["class_number"])
    assert [["alpha", "beta"][c - 1] for c in table["class_number"]] == table["predicted"].tolist()
    assert sorted(p.name for p in (sub / "oneshot" / "copick").iterdir()) == ["cryonb_0_alpha.json", "cryonb_0_beta.json"]


def test_relion5_output_of_an_old_extract_folder_is_a_clear_error(tmp_path: Path) -> None:
    sub = _extracted(tmp_path)
    meta = pd.read_csv(sub / "meta.csv")
    meta.drop(columns=["tomo_size_x", "tomo_size_y", "tomo_size_z"]).to_csv(sub / "meta.csv", index=False)
    ckpt = _rb3d_checkpoint(tmp_path / "rb3d.pt")
    with pytest.raises(CryoNBError, match=r"--star-style relion5 needs the tomogram's size and voxel size .* lacks \['tomo_size_z'"):
        from cryonb.predict import classify_predict, load_subtomograms, write_predictions

        subtomos = load_subtomograms(sub)
        write_predictions(tmp_path / "o", classify_predict(ckpt, subtomos), meta=subtomos.meta, star_style="relion5")


def _star(path: Path, optics: dict | None, xyz: np.ndarray) -> Path:
    blocks = {}
    if optics is not None:
        blocks["optics"] = pd.DataFrame({"rlnOpticsGroup": [1], **{k: [v] for k, v in optics.items()}})
    blocks["particles"] = pd.DataFrame({"rlnCoordinateX": xyz[:, 0], "rlnCoordinateY": xyz[:, 1], "rlnCoordinateZ": xyz[:, 2]})
    starfile.write(blocks, path)
    return path


def test_a_star_pixel_size_other_than_the_tomograms_is_an_error_naming_both(tmp_path: Path) -> None:
    tomo = _tomogram(tmp_path / "t.mrc", voxel_size_a=10.0)
    unbinned = _star(tmp_path / "r4.star", {"rlnTomoTiltSeriesPixelSize": 2.5, "rlnImagePixelSize": 10.0}, XYZ * 4)
    with pytest.raises(CryoNBError, match=r"r4\.star: the rlnCoordinateX/Y/Z pixels are 2\.5 Å \(optics rlnTomoTiltSeriesPixelSize\) "
                                          r"but the tomogram's voxels are 10 Å \(MRC header\); pass --coords-pixel-size-a 2\.5"):
        extract_subtomograms(tomo, unbinned, tmp_path / "o", box=16, progress=False)
    assert not (tmp_path / "o").exists()
    r = extract_subtomograms(tomo, unbinned, tmp_path / "o", box=16, progress=False, coords_pixel_size_a=2.5)
    meta = pd.read_csv(r.meta)
    np.testing.assert_allclose(meta[["x", "y", "z"]].to_numpy(), XYZ)
    assert meta["coords_unit"].iloc[0] == "pixels of 2.5 Å (--coords-pixel-size-a), = optics rlnTomoTiltSeriesPixelSize"
    with pytest.raises(CryoNBError, match=r"optics rlnTomoTiltSeriesPixelSize is 2\.5 Å but --coords-pixel-size-a is 5 Å"):
        read_coordinates(unbinned, voxel_size_a=10.0, coords_pixel_size_a=5.0)
    agree = _star(tmp_path / "ok.star", {"rlnImagePixelSize": 10.0}, XYZ)
    assert read_coordinates(agree, voxel_size_a=10.0).attrs["coords_unit"] == "tomogram voxels (optics rlnImagePixelSize 10 Å agrees)"
    assert cli_main(["extract", str(tomo), str(unbinned), "-o", str(tmp_path / "cli"), "--box", "16",
                     "--coords-pixel-size-a", "2.5", "--quiet"]) == 0
