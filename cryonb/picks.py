"""Picks in and out in the field's exchange formats: copick picks JSON and RELION 5 particle STAR files.

Public surface: :func:`read_copick_picks`, :func:`write_copick_picks`, :func:`relion5_star`,
:func:`copick_object_name`.

copick (github.com/copick/copick) stores one JSON file per (user, session, object) in a run's ``Picks/``
folder, named ``<user_id>_<session_id>_<object>.json``: ``pickable_object_name``, ``user_id``,
``session_id``, ``run_name``, ``voxel_spacing``, ``unit`` ("angstrom"), ``trust_orientation`` and
``points``, each ``{"location": {"x", "y", "z"} (Å), "transformation_": 4x4, "instance_id", "score"}``.
The particle centre is ``location + transformation_[:3, 3]`` (copick's ``CopickPoint`` docstring).
The JSON is read with :mod:`json` and checked here field by field (copick itself is optional: it
pulls zarr, s3fs, textual, trimesh...); the tests check our files against copick's own pydantic
model when it is installed. A point without ``transformation_`` gets the identity, as copick's model
gives it; a ``transformation_`` that is present but null, not 4x4 or not affine is an error.

RELION 5 particle files give positions as ``rlnCenteredCoordinateX/Y/ZAngst``: Å from the tomogram's
centre, taken (as by pytom-match-pick and copick) at ``size / 2`` voxels; see
:func:`cryonb.extract.read_coordinates` for the reading side.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryonb.errors import CryoNBError
from cryonb.io import write_text_atomic

__all__ = ["read_copick_picks", "write_copick_picks", "relion5_star", "copick_object_name", "COPICK_USER_ID"]

#: the copick user id of our picks files; session "0" marks picks made by a tool (copick's convention)
COPICK_USER_ID = "cryonb"
#: copick JSON files larger than this are refused before parsing (a picks file of 1e6 points is ~200 MB)
_MAX_JSON_BYTES = 512 << 20


def copick_object_name(name: str) -> str:
    """``name`` as a copick object / file-name part: lowercase, other characters than ``a-z0-9-`` become ``-``."""
    out = re.sub(r"[^a-z0-9-]+", "-", str(name).strip().lower()).strip("-")
    return out or "object"


def _load_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise CryoNBError(f"{path}: {path.stat().st_size / 1e6:.0f} MB; expected a copick picks file below {_MAX_JSON_BYTES >> 20} MiB")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CryoNBError(f"{path}: not a readable JSON file ({exc}); expected copick picks") from exc
    if not isinstance(doc, dict):
        raise CryoNBError(f"{path}: JSON of type {type(doc).__name__}; expected a copick picks object")
    return doc


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CryoNBError(f"{where} is {value!r}; expected a finite number")
    return float(value)


def _transform(point: dict[str, Any], where: str) -> np.ndarray:
    if "transformation_" not in point:
        return np.eye(4)  # copick's model default
    raw = point["transformation_"]
    try:
        mat = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        mat = np.empty(0)
    if raw is None or mat.shape != (4, 4) or not np.isfinite(mat).all():
        raise CryoNBError(f"{where}: transformation_ is {raw!r}; expected a 4x4 matrix of numbers (or no key: identity)")
    if not np.allclose(mat[3], [0.0, 0.0, 0.0, 1.0]):
        raise CryoNBError(f"{where}: transformation_ last row is {mat[3].tolist()}; expected [0, 0, 0, 1]")
    return mat


def _read_one(path: Path) -> pd.DataFrame:
    doc = _load_json(path)
    name = doc.get("pickable_object_name")
    if not isinstance(name, str) or not name:
        raise CryoNBError(f"{path}: no pickable_object_name; expected a copick picks file (pickable_object_name, points)")
    unit = doc.get("unit", "angstrom")
    if str(unit).lower() not in ("angstrom", "a", "å"):
        raise CryoNBError(f"{path}: unit {unit!r}; expected 'angstrom' (copick picks are in Å)")
    points = doc.get("points")
    if points is None:
        points = []
    if not isinstance(points, list):
        raise CryoNBError(f"{path}: points is {type(points).__name__}; expected a list")
    rows = []
    for i, pt in enumerate(points):
        where = f"{path}: points[{i}]"
        if not isinstance(pt, dict) or not isinstance(pt.get("location"), dict):
            raise CryoNBError(f"{where}: no location; expected {{'location': {{'x', 'y', 'z'}}}} in Å")
        loc = np.array([_number(pt["location"].get(a), f"{where}.location.{a}") for a in "xyz"])
        centre = loc + _transform(pt, where)[:3, 3]
        score = pt.get("score", 1.0)
        rows.append({"x_a": centre[0], "y_a": centre[1], "z_a": centre[2], "object": name,
                     "score": float(score) if isinstance(score, (int, float)) else np.nan,
                     "instance_id": pt.get("instance_id", 0), "source_file": path.name, "point": i})
    cols = ["x_a", "y_a", "z_a", "object", "score", "instance_id", "source_file", "point"]
    return pd.DataFrame(rows, columns=cols)


def read_copick_picks(path: str | os.PathLike[str], objects: list[str] | None = None) -> pd.DataFrame:
    """Particle centres in Å from a copick picks file or a folder of them (a run's ``Picks/``).

    Parameters
    ----------
    path : path
        One ``.json`` picks file, or a folder whose ``*.json`` files are all read.
    objects : list of str, optional
        Keep only these ``pickable_object_name`` values; one that no file holds is an error.

    Returns
    -------
    pandas.DataFrame
        ``x_a, y_a, z_a`` (centre = location + transformation translation, Å), ``object``, ``score``,
        ``instance_id``, ``source_file``, ``point`` (index in its file).

    Raises
    ------
    CryoNBError
        Unreadable JSON, a missing object name or location, a unit other than Å, a bad transformation,
        an unknown requested object, no points at all.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.json") if f.is_file())
        if not files:
            raise CryoNBError(f"{p}: is a directory; expected coordinate file (.star, .csv, copick .json) or a copick "
                              "Picks folder of .json files")
    elif p.is_file():
        files = [p]
    else:
        raise CryoNBError(f"{p}: no such copick picks file or folder")
    table = pd.concat([_read_one(f) for f in files], ignore_index=True)
    found = sorted(table["object"].unique()) if len(table) else sorted({_load_json(f).get("pickable_object_name", "?") for f in files})
    if objects:
        unknown = [o for o in objects if o not in found]
        if unknown:
            raise CryoNBError(f"{p}: object(s) {unknown} not in the picks; found {found or 'none'}")
        table = table[table["object"].isin(objects)].reset_index(drop=True)
    if table.empty:
        raise CryoNBError(f"{p}: no points" + (f" of {objects}" if objects else "") + f" (objects: {found or 'none'})")
    return table


def write_copick_picks(
    folder: str | os.PathLike[str],
    table: pd.DataFrame,
    voxel_size_a: float,
    *,
    run_name: str | None = None,
    score_column: str = "probability",
    session_id: str = "0",
) -> list[Path]:
    """One copick picks file per predicted class: ``<folder>/cryonb_<session>_<object>.json``.

    Parameters
    ----------
    table : pandas.DataFrame
        Predictions with ``x, y, z`` (tomogram voxels), ``predicted`` (class name) and ``score_column``.
    voxel_size_a : float
        The tomogram's voxel size, Å: locations are written as ``voxel × voxel_size_a`` (copick's convention).
    run_name : str, optional
        The copick run (tomogram) the picks belong to.

    Returns
    -------
    list of Path
        The files written (atomically), sorted by object name. Every class keeps its file, also with no
        pick, so a re-run replaces an earlier class's picks.
    """
    missing = [c for c in ("x", "y", "z", "predicted", score_column) if c not in table.columns]
    if missing:
        raise CryoNBError(f"copick output: the predictions lack column(s) {missing}; re-extract with this cryonb")
    out = Path(folder)
    written = []
    names = sorted({str(n) for n in table["predicted"]} | {c[2:] for c in table.columns if c.startswith("p_")})
    objects = [copick_object_name(n) for n in names]
    clash = sorted({o for o in objects if objects.count(o) > 1})
    if clash:
        shared = [n for n, o in zip(names, objects) if o in clash]
        raise CryoNBError(f"copick output: classes {shared} share the copick object name {clash[0]!r}; rename the support "
                          "folders (copick names are lowercase letters, digits and '-')")
    for name in names:
        rows = table[table["predicted"].astype(str) == name]
        xyz_a = rows[["x", "y", "z"]].to_numpy(dtype=np.float64) * float(voxel_size_a)
        points = [{"location": {"x": float(x), "y": float(y), "z": float(z)}, "transformation_": np.eye(4).tolist(),
                   "instance_id": 0, "score": float(score)}
                  for (x, y, z), score in zip(xyz_a, rows[score_column].to_numpy(dtype=np.float64))]
        obj = copick_object_name(name)
        doc = {"pickable_object_name": obj, "user_id": COPICK_USER_ID, "session_id": session_id, "run_name": run_name,
               "voxel_spacing": float(voxel_size_a), "unit": "angstrom", "points": points,
               "trust_orientation": False}  # positions only: we estimate no orientation
        written.append(write_text_atomic(out / f"{COPICK_USER_ID}_{session_id}_{obj}.json", json.dumps(doc, indent=2) + "\n"))
    return written


def relion5_star(
    table: pd.DataFrame,
    *,
    tomo_name: str,
    tomo_voxel_size_a: float,
    tomo_shape_zyx: tuple[int, int, int],
    extra: dict[str, Any] | None = None,
) -> str:
    """A RELION 5 particle STAR file (``data_optics`` + ``data_particles``) for predictions in tomogram voxels.

    ``rlnCenteredCoordinateX/Y/ZAngst = (voxel - size / 2) * voxel_size``, which
    :func:`cryonb.extract.read_coordinates` inverts exactly. The optics block carries the pixel size as
    ``rlnTomoTiltSeriesPixelSize`` = the tomogram's voxel size: Å coordinates do not depend on it, and where
    the tomogram was binned RELION's own tomograms.star gives the tilt series' pixel.

    Parameters
    ----------
    table : pandas.DataFrame
        ``x, y, z`` in tomogram voxels (0-based), one row per particle.
    extra : dict, optional
        Further particle columns (RELION label → values), e.g. rlnClassNumber.
    """
    import starfile

    size_xyz = np.array(tomo_shape_zyx[::-1], dtype=np.float64)
    xyz = table[["x", "y", "z"]].to_numpy(dtype=np.float64)
    centred = (xyz - size_xyz / 2) * float(tomo_voxel_size_a)
    particles = pd.DataFrame({
        "rlnTomoName": [tomo_name] * len(table),
        "rlnCenteredCoordinateXAngst": centred[:, 0],
        "rlnCenteredCoordinateYAngst": centred[:, 1],
        "rlnCenteredCoordinateZAngst": centred[:, 2],
        "rlnOpticsGroup": np.ones(len(table), dtype=int),
    })
    for label, values in (extra or {}).items():
        particles[label] = np.asarray(values)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnTomoTiltSeriesPixelSize": [float(tomo_voxel_size_a)]})
    return starfile.to_string({"optics": optics, "particles": particles})
