"""Tomograms and ground-truth picks from the CryoET Data Portal (cryoetdataportal.czscience.com).

Public surface: :func:`fetch_portal_tomogram`, :func:`parse_portal_name`, :func:`choose_spacing`,
:func:`read_ndjson_points`, :func:`recorded_voxel_size`, :class:`CryoETPortalSource`, :class:`PortalSource`,
:class:`PortalTomogram`, :class:`PortalRun`, :class:`PortalAnnotationFile`, :class:`PortalFetch`,
:data:`DEFAULT_TOMOGRAM_ID`.

``python -m cryonb data fetch portal:tomogram/<id>`` asks the Portal's API (through its own client,
``cryoet-data-portal``, installed by ``pip install 'cryonb[portal]'``) for the tomogram, picks among the
tomograms of the same run and processing the voxel spacing nearest the model's, downloads only that
tomogram's MRC file (or records its OME-Zarr address, read chunk by chunk by ``extract``) and, with
``--annotations``, the run's point annotations (ndjson). Downloads go through
:func:`cryonb.fetch.download_verified`: http(s) only, resumed from a ``.part`` file, renamed into place
only when complete; the Portal gives file sizes but no checksums, so the size is verified and the
sha256 is computed and recorded (a later fetch verifies against it).

Everything is written inside the data folder (default ``data/external/portal``): ``tomogram-<id>/`` with
the tomogram, ``annotations/*.ndjson`` and ``picks.csv`` (``x, y, z`` in the fetched tomogram's voxels,
``object``: what ``extract`` reads), and the *user* manifest ``manifest.yaml`` (id, run, voxel size,
source URL, size and sha256 of every file), never the repository's ``data_manifest.yaml``. ``extract``
reads that manifest to confirm the tomogram's voxel size against the Portal's (:func:`recorded_voxel_size`).

NOTE: a Portal point annotation gives ``location`` in voxels of its own voxel spacing (copick's Portal
reader multiplies by it, too); picks.csv converts them to the fetched tomogram's voxels through Å.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import math
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import yaml

from cryonb.cache import file_digest
from cryonb.errors import CryoNBError
from cryonb.fetch import check_url, download_verified
from cryonb.io import write_text_atomic

__all__ = [
    "DEFAULT_TOMOGRAM_ID",
    "DEFAULT_DATA_DIR",
    "PortalTomogram",
    "PortalRun",
    "PortalAnnotationFile",
    "PortalSource",
    "CryoETPortalSource",
    "PortalFetch",
    "parse_portal_name",
    "choose_spacing",
    "read_ndjson_points",
    "fetch_portal_tomogram",
    "recorded_voxel_size",
    "summary_lines",
    "RecordedPortalSource",
    "serve_folder_locally",
    "portal_reachable",
]

#: The default: a tomogram of run TS_86_3 of the CZII CryoET Object Identification Challenge's experimental
#: training data (Portal data set 10440, 10.012 Å voxels), whose ground-truth picks cover apoferritin,
#: β-amylase, β-galactosidase, ribosome, thyroglobulin and virus-like particles. The id is the Portal's
#: at the time of writing; `data fetch` prints the run and data set it resolves to.
DEFAULT_TOMOGRAM_ID = 17035
DEFAULT_DATA_DIR = "data/external/portal"
MANIFEST_NAME = "manifest.yaml"
MANIFEST_FORMAT = "cryonb-portal-manifest"
#: spacings farther than this factor from the requested voxel size are refused (a 4x coarser tomogram
#: cannot give 10 Å boxes; a 4x finer one is a 64x larger download than needed)
MAX_SPACING_RATIO = 1.5
_POINT_SHAPES = ("Point", "OrientedPoint")
_MAX_NDJSON_BYTES = 256 << 20
_NAME = re.compile(r"^portal:tomogram/(\d+)$")


@dataclass(frozen=True)
class PortalTomogram:
    """A tomogram as the Portal describes it (sizes in voxels, voxel size in Å, file sizes in bytes)."""

    id: int
    run_id: int
    voxel_spacing_id: int
    voxel_size_a: float
    name: str = ""
    processing: str = ""
    size_xyz: tuple[int, int, int] | None = None
    https_mrc: str | None = None
    mrc_bytes: int | None = None
    https_omezarr: str | None = None


@dataclass(frozen=True)
class PortalRun:
    id: int
    name: str
    dataset_id: int | None = None


@dataclass(frozen=True)
class PortalAnnotationFile:
    """One point-annotation file: locations in voxels of ``voxel_size_a`` (its own voxel spacing)."""

    id: int
    annotation_id: int
    object_name: str
    shape_type: str
    https_path: str
    voxel_size_a: float
    size_bytes: int | None = None
    ground_truth: bool = False


class PortalSource(Protocol):
    """What cryonb asks of the Portal; :class:`CryoETPortalSource` answers with the Portal's own client,
    the tests with recorded answers."""

    def tomogram(self, tomogram_id: int) -> PortalTomogram | None: ...

    def run_tomograms(self, run_id: int) -> list[PortalTomogram]: ...

    def run(self, run_id: int) -> PortalRun: ...

    def point_annotation_files(self, run_id: int) -> list[PortalAnnotationFile]: ...


def parse_portal_name(name: str) -> int:
    """The tomogram id of ``portal:tomogram/<id>``; raise naming the expected form otherwise."""
    match = _NAME.match(name.strip())
    if not match:
        raise CryoNBError(
            f"{name!r}: expected portal:tomogram/<id> with the Portal's numeric tomogram id "
            f"(e.g. portal:tomogram/{DEFAULT_TOMOGRAM_ID}, the CZII challenge's run TS_86_3)"
        )
    return int(match.group(1))


def choose_spacing(
    candidates: list[PortalTomogram], voxel_size_a: float, prefer_id: int, max_ratio: float = MAX_SPACING_RATIO
) -> PortalTomogram:
    """The candidate whose voxel size is nearest ``voxel_size_a`` (log scale; ties: ``prefer_id``, then finer).

    Raises
    ------
    CryoNBError
        No candidate within a factor ``max_ratio`` of ``voxel_size_a``; names the spacings there are.
    """
    if not voxel_size_a > 0:
        raise CryoNBError(f"--voxel-size-a {voxel_size_a}: expected a voxel size > 0 Å")
    usable = [c for c in candidates if c.voxel_size_a and c.voxel_size_a > 0]
    if not usable:
        raise CryoNBError("the Portal lists no voxel spacing for this tomogram's run")
    best = min(usable, key=lambda c: (round(abs(math.log(c.voxel_size_a / voxel_size_a)), 9), c.id != prefer_id, c.voxel_size_a))
    ratio = max(best.voxel_size_a / voxel_size_a, voxel_size_a / best.voxel_size_a)
    if ratio > max_ratio:
        spacings = ", ".join(f"{v:g}" for v in sorted({c.voxel_size_a for c in usable}))
        raise CryoNBError(
            f"portal:tomogram/{prefer_id}: the Portal has voxel spacings {spacings} Å for this run; none is within a "
            f"factor {max_ratio:g} of the requested --voxel-size-a {voxel_size_a:g} Å (expected one near the model's)"
        )
    return best


def read_ndjson_points(path: str | os.PathLike[str], what: str) -> pd.DataFrame:
    """``x, y, z`` (voxels of the file's spacing) of every point or oriented point in a Portal ndjson file.

    Read with :mod:`json` line by line (nothing in the file can run code). Raises naming ``what`` for a
    line that is not JSON, a point without a numeric location, and a file with no points.
    """
    p = Path(path)
    if p.stat().st_size > _MAX_NDJSON_BYTES:
        raise CryoNBError(f"{p} ({what}): {p.stat().st_size / 1e6:.0f} MB; expected an annotation file below 256 MiB")
    rows = []
    with open(p, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CryoNBError(f"{p} ({what}): line {i + 1} is not JSON ({exc}); expected one annotation per line") from exc
            if not isinstance(item, dict) or item.get("type") not in ("point", "orientedPoint"):
                continue  # other shapes (segmentations, ...) are not picks
            loc = item.get("location")
            try:
                xyz = [float(loc[a]) for a in "xyz"]  # type: ignore[index]
            except (TypeError, KeyError, ValueError):
                raise CryoNBError(f"{p} ({what}): line {i + 1} has location {loc!r}; expected {{'x', 'y', 'z'}} numbers") from None
            if not all(math.isfinite(v) for v in xyz):
                raise CryoNBError(f"{p} ({what}): line {i + 1} has a non-finite location {xyz}")
            rows.append(xyz)
    if not rows:
        raise CryoNBError(f"{p} ({what}): no points; expected one point annotation (type point or orientedPoint) per line")
    return pd.DataFrame(rows, columns=["x", "y", "z"])


@dataclass(frozen=True)
class PortalFetch:
    """What :func:`fetch_portal_tomogram` produced (paths inside the data folder)."""

    tomogram: PortalTomogram
    run: PortalRun
    location: str  # local MRC path, or the OME-Zarr https address
    manifest: Path
    coordinates: Path | None = None
    objects: dict[str, int] = field(default_factory=dict)  # points per object
    sha256: str | None = None


def _safe_name(url: str, what: str) -> str:
    """The last part of a URL as a plain file name (letters, digits, ``._-``); never a path."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")
    if not name:
        raise CryoNBError(f"{url}: no file name in the {what} address")
    return name


def _contained(base: Path, path: Path) -> Path:
    """``path``, raising unless it stays inside ``base`` after following links."""
    real, root = path.resolve(), base.resolve()
    if real != root and root not in real.parents:
        raise CryoNBError(f"{path}: leads to {real}, outside the data folder {root}; refusing to write there")
    return path


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "version": 1, "tomograms": []}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))  # safe_load: no tags that build objects
    except yaml.YAMLError as exc:
        raise CryoNBError(f"{path}: not valid YAML ({exc}); expected a cryonb Portal manifest") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("tomograms"), list):
        raise CryoNBError(f"{path}: not a cryonb Portal manifest (expected format: {MANIFEST_FORMAT} and a tomograms list); "
                          "choose another --data-dir")
    return doc


def _recorded_sha(doc: dict[str, Any], tomogram_id: int, url: str) -> str | None:
    for entry in doc["tomograms"]:
        if isinstance(entry, dict) and entry.get("portal_id") == tomogram_id and entry.get("url") == url:
            sha = entry.get("sha256")
            return sha if isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) else None
    return None


def _annotation_files(source: PortalSource, run_id: int, voxel_size_a: float) -> list[PortalAnnotationFile]:
    """The run's point-annotation files, ground truth only when there is any, one per annotation (the file
    whose voxel spacing is nearest the tomogram's)."""
    files = [f for f in source.point_annotation_files(run_id) if f.shape_type in _POINT_SHAPES]
    if any(f.ground_truth for f in files):
        files = [f for f in files if f.ground_truth]
    best: dict[int, PortalAnnotationFile] = {}
    for f in files:
        old = best.get(f.annotation_id)
        if old is None or abs(math.log(f.voxel_size_a / voxel_size_a)) < abs(math.log(old.voxel_size_a / voxel_size_a)):
            best[f.annotation_id] = f
    return sorted(best.values(), key=lambda f: (f.object_name, f.id))


def fetch_portal_tomogram(
    source: PortalSource,
    tomogram_id: int,
    data_dir: str | os.PathLike[str],
    *,
    voxel_size_a: float = 10.0,
    annotations: bool = False,
    fmt: str = "auto",
    timeout_s: float = 60.0,
    progress: bool = True,
) -> PortalFetch:
    """Fetch one Portal tomogram at the spacing nearest ``voxel_size_a`` (and its point annotations).

    Parameters
    ----------
    source : PortalSource
        The Portal's API (:class:`CryoETPortalSource`) or recorded answers.
    tomogram_id : int
        The Portal's tomogram id; tomograms of the same run and processing at other spacings are candidates.
    data_dir : path
        Folder everything is written into (created); holds ``manifest.yaml``.
    voxel_size_a : float
        The model's voxel size, Å.
    annotations : bool
        Also download the run's point annotations and write ``picks.csv``.
    fmt : {"auto", "mrc", "zarr"}
        "mrc" downloads the MRC file; "zarr" records the OME-Zarr address (nothing downloaded: extract reads
        the chunks it needs); "auto" is "mrc" where the Portal has one.

    Raises
    ------
    CryoNBError
        Unknown id, no spacing near ``voxel_size_a``, no file in the requested format, an address that is
        not http(s), a download that fails or times out (its ``.part`` kept for a resume), a size or
        recorded-checksum mismatch, an annotation file without points, a manifest that is not ours.
    """
    if fmt not in ("auto", "mrc", "zarr"):
        raise CryoNBError(f"--format {fmt!r}: expected auto, mrc or zarr")
    base = Path(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    manifest_path = _contained(base, base / MANIFEST_NAME)
    doc = _load_manifest(manifest_path)  # before any download: a foreign manifest is refused early
    asked = source.tomogram(tomogram_id)
    if asked is None:
        raise CryoNBError(
            f"portal:tomogram/{tomogram_id}: no such tomogram on the CryoET Data Portal; expected the numeric id of a "
            f"tomogram (e.g. {DEFAULT_TOMOGRAM_ID}: the CZII challenge's run TS_86_3)"
        )
    siblings = [t for t in source.run_tomograms(asked.run_id) if t.processing == asked.processing]
    chosen = choose_spacing(siblings + ([asked] if asked.id not in {t.id for t in siblings} else []), voxel_size_a, asked.id)
    run = source.run(chosen.run_id)
    folder = _contained(base, base / f"tomogram-{chosen.id}")
    folder.mkdir(parents=True, exist_ok=True)

    use_mrc = fmt == "mrc" or (fmt == "auto" and chosen.https_mrc)
    sha = None
    entry_files: list[dict[str, Any]] = []
    if use_mrc:
        if not chosen.https_mrc:
            raise CryoNBError(f"portal:tomogram/{chosen.id}: the Portal gives no MRC file for it; use --format zarr")
        url = check_url(chosen.https_mrc, f"portal:tomogram/{chosen.id} MRC")
        dest = _contained(base, folder / _safe_name(url, "MRC"))
        recorded = _recorded_sha(doc, chosen.id, url)
        download_verified(url, dest, f"sha256:{recorded}" if recorded else None, size_bytes=chosen.mrc_bytes,
                          progress=progress, timeout_s=timeout_s)
        sha = recorded or file_digest(dest)
        location = str(dest)
        stored = dest.relative_to(base).as_posix()
    else:
        if not chosen.https_omezarr:
            raise CryoNBError(f"portal:tomogram/{chosen.id}: the Portal gives no OME-Zarr address for it; use --format mrc")
        url = location = check_url(chosen.https_omezarr, f"portal:tomogram/{chosen.id} OME-Zarr")
        stored = None

    coordinates, counts = None, {}
    if annotations:
        coordinates, counts, entry_files = _fetch_annotations(source, chosen, base, folder, timeout_s, progress)

    entry = {
        "name": f"portal-tomogram-{chosen.id}", "portal_id": chosen.id, "requested_id": tomogram_id,
        "run": run.name, "run_id": run.id, "dataset_id": run.dataset_id, "processing": chosen.processing,
        "voxel_size_a": float(chosen.voxel_size_a), "format": "mrc" if use_mrc else "zarr", "url": url,
        "path": stored, "size_bytes": chosen.mrc_bytes if use_mrc else None, "sha256": sha,
        "size_xyz": list(chosen.size_xyz) if chosen.size_xyz else None,
        "coordinates": coordinates.relative_to(base).as_posix() if coordinates else None,
        "annotations": entry_files, "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    doc["tomograms"] = [e for e in doc["tomograms"] if not (isinstance(e, dict) and e.get("portal_id") == chosen.id)] + [entry]
    header = "# Written by `python -m cryonb data fetch portal:...`: what was fetched from the CryoET Data Portal.\n"
    write_text_atomic(manifest_path, header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return PortalFetch(chosen, run, location, manifest_path, coordinates, counts, sha)


def _fetch_annotations(
    source: PortalSource, tomo: PortalTomogram, base: Path, folder: Path, timeout_s: float, progress: bool
) -> tuple[Path, dict[str, int], list[dict[str, Any]]]:
    """Download the point annotations and write ``picks.csv`` in ``tomo``'s voxels."""
    files = _annotation_files(source, tomo.run_id, tomo.voxel_size_a)
    if not files:
        raise CryoNBError(f"portal:tomogram/{tomo.id}: the Portal lists no point annotations for its run; "
                          "expected ground-truth points (fetch without --annotations)")
    parts, records, counts = [], [], {}
    for f in files:
        url = check_url(f.https_path, f"annotation file {f.id}")
        dest = _contained(base, folder / "annotations" / _safe_name(url, "annotation"))
        size = f.size_bytes if f.size_bytes is not None and f.size_bytes > 0 else None
        if size is None:
            raise CryoNBError(f"{url}: the Portal gives no size for annotation file {f.id}; cannot verify the download")
        download_verified(url, dest, None, size_bytes=size, progress=progress, timeout_s=timeout_s)
        pts = read_ndjson_points(dest, f"{f.object_name}, annotation file {f.id}")
        xyz_a = pts[["x", "y", "z"]].to_numpy() * f.voxel_size_a
        xyz = xyz_a / tomo.voxel_size_a
        parts.append(pd.DataFrame({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "object": f.object_name,
                                   "x_a": xyz_a[:, 0], "y_a": xyz_a[:, 1], "z_a": xyz_a[:, 2],
                                   "annotation_file_id": f.id, "ground_truth": f.ground_truth}))
        counts[f.object_name] = counts.get(f.object_name, 0) + len(pts)
        records.append({**{k: v for k, v in asdict(f).items() if k != "https_path"}, "url": url,
                        "path": dest.relative_to(base).as_posix(), "sha256": file_digest(dest), "n_points": len(pts)})
    picks = pd.concat(parts, ignore_index=True)
    coordinates = _contained(base, folder / "picks.csv")
    write_text_atomic(coordinates, picks.to_csv(index=False))
    return coordinates, counts, records


def recorded_voxel_size(tomogram: str | os.PathLike[str], search: tuple[Path, ...] = ()) -> tuple[float, str] | None:
    """The Portal voxel spacing a cryonb Portal manifest records for ``tomogram`` (a path or an address).

    Looks in ``manifest.yaml`` of the tomogram's folder and the two above it (and ``search``); returns
    ``(voxel size Å, manifest path)`` or None when no manifest names it. Unreadable manifests are skipped.
    """
    text = str(tomogram)
    remote = text.lower().startswith(("http://", "https://"))
    candidates = list(search)
    if not remote:
        here = Path(text).resolve()
        candidates += [here.parent / MANIFEST_NAME, here.parent.parent / MANIFEST_NAME, here.parent.parent.parent / MANIFEST_NAME]
    else:
        from cryonb.paths import resolve

        candidates.append(resolve(DEFAULT_DATA_DIR) / MANIFEST_NAME)
    for manifest in candidates:
        if not manifest.is_file():
            continue
        try:
            doc = _load_manifest(manifest)
        except CryoNBError:
            continue
        for entry in doc["tomograms"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("voxel_size_a"), (int, float)):
                continue
            if remote:
                hit = entry.get("url", "").rstrip("/") == text.rstrip("/")
            else:
                hit = isinstance(entry.get("path"), str) and (manifest.parent / entry["path"]).resolve() == here
            if hit:
                return float(entry["voxel_size_a"]), str(manifest)
    return None


class CryoETPortalSource:
    """The Portal's GraphQL API through its own client (``cryoet-data-portal``), with a timeout on every call.

    Parameters
    ----------
    url : str, optional
        The API's address (default: the client's, the public Portal).
    timeout_s : float
        Seconds to wait for each answer.
    """

    def __init__(self, url: str | None = None, timeout_s: float = 30.0) -> None:
        try:
            import cryoet_data_portal as cdp
        except ImportError as exc:
            raise CryoNBError(
                "the CryoET Data Portal client is not installed; install it with pip install 'cryonb[portal]'"
            ) from exc
        self._cdp = cdp
        self.timeout_s = float(timeout_s)
        if url is not None:
            check_url(url, "Portal API")
        timeout = self.timeout_s

        class _Client(cdp.Client):  # the library's client builds its transport without a timeout
            def get_client(self):  # type: ignore[no-untyped-def]  # noqa: ANN202
                from gql import Client as GQLClient
                from gql.transport.requests import RequestsHTTPTransport

                transport = RequestsHTTPTransport(url=self.url, retries=1, timeout=timeout,
                                                  headers={"User-agent": "cryonb (cryoet-data-portal client)"})
                return GQLClient(transport=transport, schema=self.schema)

        self._client = _Client(url)
        self.url = self._client.url

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except CryoNBError:
            raise
        except Exception as exc:  # requests, gql and graphql raise many types; all mean the same to a user
            name = type(exc).__name__
            if "Timeout" in name or "timed out" in str(exc):
                raise CryoNBError(f"CryoET Data Portal API {self.url}: no answer within {self.timeout_s:g} s while asking "
                                  f"for {what}; check your network, or try again later") from exc
            if "Connection" in name:
                raise CryoNBError(f"CryoET Data Portal API {self.url}: cannot connect while asking for {what} ({exc}); "
                                  "check your network") from exc
            raise CryoNBError(f"CryoET Data Portal API {self.url}: error while asking for {what} ({name}: {exc})") from exc

    @staticmethod
    def _tomogram(t: Any) -> PortalTomogram:
        sizes = (t.size_x, t.size_y, t.size_z)
        return PortalTomogram(
            id=int(t.id), run_id=int(t.run_id), voxel_spacing_id=int(t.tomogram_voxel_spacing_id or 0),
            voxel_size_a=float(t.voxel_spacing or 0.0), name=str(t.name or ""), processing=str(t.processing or ""),
            size_xyz=tuple(int(v) for v in sizes) if all(v is not None for v in sizes) else None,  # type: ignore[arg-type]
            https_mrc=t.https_mrc_file or None, mrc_bytes=int(t.file_size_mrc) if t.file_size_mrc else None,
            https_omezarr=t.https_omezarr_dir or None,
        )

    def tomogram(self, tomogram_id: int) -> PortalTomogram | None:
        t = self._call(f"tomogram {tomogram_id}", lambda: self._cdp.Tomogram.get_by_id(self._client, int(tomogram_id)))
        return None if t is None else self._tomogram(t)

    def run_tomograms(self, run_id: int) -> list[PortalTomogram]:
        cdp = self._cdp
        found = self._call(f"the tomograms of run {run_id}", lambda: cdp.Tomogram.find(self._client, [cdp.Tomogram.run_id == int(run_id)]))
        return [self._tomogram(t) for t in found]

    def run(self, run_id: int) -> PortalRun:
        r = self._call(f"run {run_id}", lambda: self._cdp.Run.get_by_id(self._client, int(run_id)))
        if r is None:
            raise CryoNBError(f"CryoET Data Portal API {self.url}: run {run_id} not found")
        return PortalRun(int(r.id), str(r.name), int(r.dataset_id) if r.dataset_id is not None else None)

    def point_annotation_files(self, run_id: int) -> list[PortalAnnotationFile]:
        cdp, client = self._cdp, self._client
        spacings = {int(v.id): float(v.voxel_spacing) for v in self._call(
            f"the voxel spacings of run {run_id}",
            lambda: cdp.TomogramVoxelSpacing.find(client, [cdp.TomogramVoxelSpacing.run_id == int(run_id)]))}
        out = []
        for a in self._call(f"the annotations of run {run_id}", lambda: cdp.Annotation.find(client, [cdp.Annotation.run_id == int(run_id)])):
            shapes = self._call(f"the shapes of annotation {a.id}",
                                lambda a=a: cdp.AnnotationShape.find(client, [cdp.AnnotationShape.annotation_id == int(a.id)]))
            for s in shapes:
                if s.shape_type not in _POINT_SHAPES:
                    continue
                files = self._call(f"the files of annotation shape {s.id}",
                                   lambda s=s: cdp.AnnotationFile.find(client, [cdp.AnnotationFile.annotation_shape_id == int(s.id)]))
                for f in files:
                    if f.format != "ndjson" or not f.https_path or int(f.tomogram_voxel_spacing_id or 0) not in spacings:
                        continue
                    out.append(PortalAnnotationFile(
                        id=int(f.id), annotation_id=int(a.id), object_name=str(a.object_name), shape_type=str(s.shape_type),
                        https_path=str(f.https_path), voxel_size_a=spacings[int(f.tomogram_voxel_spacing_id)],
                        size_bytes=int(f.file_size) if f.file_size else None, ground_truth=bool(a.ground_truth_status)))
        return out


def summary_lines(result: PortalFetch) -> list[str]:
    """What a fetch did, for the command line and the notebook."""
    t, r = result.tomogram, result.run
    lines = [f"portal:tomogram/{t.id}: run {r.name} (run id {r.id}, data set {r.dataset_id}), {t.processing or 'tomogram'} at "
             f"{t.voxel_size_a:g} Å" + (f", {t.size_xyz[0]} x {t.size_xyz[1]} x {t.size_xyz[2]} voxels" if t.size_xyz else ""),
             f"tomogram -> {result.location}" + (f" (sha256 {result.sha256})" if result.sha256 else " (OME-Zarr, read on demand)")]
    if result.coordinates is not None:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(result.objects.items()))
        lines.append(f"ground-truth picks ({sum(result.objects.values())}: {shown}) -> {result.coordinates}")
    lines.append(f"recorded in {result.manifest}")
    return lines



class RecordedPortalSource:
    """Recorded answers of the Portal's API, offline: the interface of :class:`CryoETPortalSource`.

    ``responses`` is a JSON file (``tomograms``, ``runs``, ``annotation_files`` by run id; fields of
    :class:`PortalTomogram`, :class:`PortalRun`, :class:`PortalAnnotationFile`) whose file addresses are
    relative; they are joined to ``base_url`` (e.g. :func:`serve_folder_locally` of the JSON's folder).
    tests/fixtures/portal/make_fixture.py writes one.
    """

    def __init__(self, responses: str | os.PathLike[str], base_url: str) -> None:
        path = Path(responses)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CryoNBError(f"{path}: not a readable recorded-responses JSON file ({exc})") from exc
        base = base_url.rstrip("/") + "/"

        def url(rel: str | None) -> str | None:
            return None if rel is None else urllib.parse.urljoin(base, rel)

        self._tomograms = {int(t["id"]): PortalTomogram(**{**t, "size_xyz": tuple(t["size_xyz"]) if t.get("size_xyz") else None,
                                                            "https_mrc": url(t.get("https_mrc")), "https_omezarr": url(t.get("https_omezarr"))})
                           for t in doc.get("tomograms", [])}
        self._runs = {int(r["id"]): PortalRun(**r) for r in doc.get("runs", [])}
        self._files = {int(k): [PortalAnnotationFile(**{**f, "https_path": url(f["https_path"])}) for f in v]
                       for k, v in doc.get("annotation_files", {}).items()}

    def tomogram(self, tomogram_id: int) -> PortalTomogram | None:
        return self._tomograms.get(int(tomogram_id))

    def run_tomograms(self, run_id: int) -> list[PortalTomogram]:
        return [t for t in self._tomograms.values() if t.run_id == int(run_id)]

    def run(self, run_id: int) -> PortalRun:
        if int(run_id) not in self._runs:
            raise CryoNBError(f"recorded Portal answers: run {run_id} not recorded")
        return self._runs[int(run_id)]

    def point_annotation_files(self, run_id: int) -> list[PortalAnnotationFile]:
        return list(self._files.get(int(run_id), []))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no request log in a notebook or a test
        pass


@contextlib.contextmanager
def serve_folder_locally(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Serve ``folder`` read-only over HTTP on 127.0.0.1 (a free port) while the block runs; yields its base URL.

    For recorded Portal answers (tests, notebook 09 offline): the downloads then take the same path as real ones.
    """
    handler = functools.partial(_QuietHandler, directory=str(Path(folder).resolve()))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


#: the host of the Portal's public API (the cryoet-data-portal client's default address)
PORTAL_API_HOST = "graphql.cryoetdataportal.czscience.com"


def portal_reachable(timeout_s: float = 3.0, host: str = PORTAL_API_HOST) -> bool:
    """True when the Portal's API host resolves and accepts a TCP connection within ``timeout_s``.

    ``CRYONB_OFFLINE=1`` answers False without trying (the test suite sets it: no test reaches the internet).
    """
    if os.environ.get("CRYONB_OFFLINE", "").strip() not in ("", "0"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False
