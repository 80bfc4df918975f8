"""CryoET Data Portal fetch: recorded answers + files served on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cryonb.cli import main as cli_main
from cryonb.errors import CryoNBError
from cryonb.extract import extract_subtomograms
from cryonb.fetch import sha256_file
from cryonb.portal import (
    PortalAnnotationFile,
    PortalRun,
    PortalTomogram,
    RecordedPortalSource,
    choose_spacing,
    fetch_portal_tomogram,
    parse_portal_name,
    read_ndjson_points,
    recorded_voxel_size,
    serve_folder_locally,
)

FIXTURE = Path(__file__).parent / "fixtures" / "portal"
TOMO_ID = 70001


@pytest.fixture()
def recorded() -> Iterator[RecordedPortalSource]:
    with serve_folder_locally(FIXTURE) as base:
        yield RecordedPortalSource(FIXTURE / "responses.json", base)


def test_fetch_downloads_the_nearest_spacing_and_converts_truth_to_voxels(recorded: RecordedPortalSource, tmp_path: Path) -> None:
    # asked for the 25 Å tomogram of the run: the 12.5 Å one of the same processing is nearer 10 Å
    result = fetch_portal_tomogram(recorded, 70002, tmp_path / "portal", voxel_size_a=10.0, annotations=True, progress=False)
    assert result.tomogram.id == TOMO_ID and result.tomogram.voxel_size_a == 12.5
    tomo = Path(result.location)
    assert tomo.parent == tmp_path / "portal" / "tomogram-70001"
    assert tomo.read_bytes() == (FIXTURE / "files" / "TS_fixture_12.5A.mrc").read_bytes()
    picks = pd.read_csv(result.coordinates)
    assert len(picks) == 12 and picks["object"].nunique() == 6 and result.objects["cytosolic ribosome"] == 2
    # ndjson locations are voxels of 25 Å: in the 12.5 Å tomogram they double; Å columns agree
    raw = read_ndjson_points(next((FIXTURE / "files" / "annotations").glob("103-*.ndjson")), "ribosome")
    ribosome = picks[picks["object"] == "cytosolic ribosome"]
    np.testing.assert_allclose(ribosome[["x", "y", "z"]].to_numpy(), raw.to_numpy() * 2.0)
    np.testing.assert_allclose(ribosome[["x_a", "y_a", "z_a"]].to_numpy(), raw.to_numpy() * 25.0)
    doc = yaml.safe_load(result.manifest.read_text())
    entry = doc["tomograms"][0]
    assert entry["portal_id"] == TOMO_ID and entry["requested_id"] == 70002 and entry["voxel_size_a"] == 12.5
    assert entry["sha256"] == sha256_file(tomo) and entry["url"].startswith("http://127.0.0.1:")
    assert entry["run"] == "TS_fixture" and entry["dataset_id"] == 10440 and len(entry["annotations"]) == 6
    assert recorded_voxel_size(tomo) == (12.5, str(result.manifest))
    assert not list((tmp_path / "portal").rglob("*.part"))


def test_extract_reads_the_fetched_truth_and_records_the_portal_spacing(recorded: RecordedPortalSource, tmp_path: Path) -> None:
    result = fetch_portal_tomogram(recorded, TOMO_ID, tmp_path / "portal", annotations=True, progress=False)
    out = extract_subtomograms(result.location, result.coordinates, tmp_path / "sub", box=16, voxel_size_a=20.0, progress=False)
    meta = pd.read_csv(out.meta)
    assert len(meta) == 12 and sorted(meta["object"].unique())[0] == "apoferritin complex"
    source = meta["voxel_size_source"].iloc[0]
    assert source.startswith("MRC header; = the Portal's voxel spacing 12.5 Å") and "manifest.yaml" in source
    assert (meta[["tomo_size_x", "tomo_size_y", "tomo_size_z"]].iloc[0].tolist() == [40, 40, 20])
    # a header that disagrees with the Portal's spacing is named with both values
    with open(result.location, "r+b") as fh:  # MRC header words 10-12: cell size in Å; 40 voxels of 15 Å
        fh.seek(40)
        fh.write(np.array([600.0, 600.0, 300.0], dtype="<f4").tobytes())
    with pytest.raises(CryoNBError, match=r"voxel size 15 Å \(MRC header\) but the CryoET Data Portal's voxel spacing is 12\.5 Å"):
        extract_subtomograms(result.location, result.coordinates, tmp_path / "sub2", box=16, voxel_size_a=20.0, progress=False)


def test_unknown_id_no_near_spacing_and_bad_names_are_named(recorded: RecordedPortalSource, tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match=r"portal:tomogram/12345: no such tomogram on the CryoET Data Portal"):
        fetch_portal_tomogram(recorded, 12345, tmp_path, progress=False)
    with pytest.raises(CryoNBError, match=r"voxel spacings 12\.5, 25 Å for this run; none is within a factor 1\.5 of the requested --voxel-size-a 60 Å"):
        fetch_portal_tomogram(recorded, TOMO_ID, tmp_path, voxel_size_a=60.0, progress=False)
    assert not list(tmp_path.rglob("*.mrc"))
    with pytest.raises(CryoNBError, match=r"expected portal:tomogram/<id>"):
        parse_portal_name("portal:run/7")
    assert parse_portal_name("portal:tomogram/17035") == 17035
    assert cli_main(["data", "fetch", "portal:tomogram/abc"]) == 2


def test_choose_spacing_prefers_the_asked_tomogram_on_a_tie() -> None:
    a, b = PortalTomogram(1, 1, 1, 10.0), PortalTomogram(2, 1, 2, 10.0)
    assert choose_spacing([a, b], 10.0, prefer_id=2).id == 2
    assert choose_spacing([PortalTomogram(3, 1, 3, 5.0), PortalTomogram(4, 1, 4, 14.0)], 10.0, prefer_id=3).id == 4


def test_annotation_file_without_points_is_an_error(recorded: RecordedPortalSource, tmp_path: Path) -> None:
    empty = tmp_path / "served"
    shutil.copytree(FIXTURE, empty)
    target = next((empty / "files" / "annotations").glob("102-*.ndjson"))
    target.write_text('{"type": "segmentationMask"}\n')
    with serve_folder_locally(empty) as base:
        source = RecordedPortalSource(empty / "responses.json", base)
        source._files = {k: [replace(f, size_bytes=target.stat().st_size) if "102-" in f.https_path else f for f in v]
                         for k, v in source._files.items()}
        with pytest.raises(CryoNBError, match=r"beta-galactosidase, annotation file 902\): no points; expected one point"):
            fetch_portal_tomogram(source, TOMO_ID, tmp_path / "portal", annotations=True, progress=False)
    assert not (tmp_path / "portal" / "tomogram-70001" / "picks.csv").exists()


@dataclass
class Slow:
    """A server that waits before answering, or cuts the body short."""

    body: bytes
    delay_s: float = 0.0
    cut_after: int | None = None
    cut_requests: int = 0
    requests: list[str | None] = field(default_factory=list)


@pytest.fixture()
def slow_server() -> Iterator[tuple[str, Slow]]:
    state = Slow(body=(FIXTURE / "files" / "TS_fixture_12.5A.mrc").read_bytes())

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            state.requests.append(self.headers.get("Range"))
            time.sleep(state.delay_s)
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(state.body) - 1}/{len(state.body)}")
            body = state.body[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None and len(state.requests) <= state.cut_requests:
                self.wfile.write(body[: state.cut_after])
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/TS.mrc", state
    finally:
        httpd.shutdown()
        httpd.server_close()


class _OneTomogram:
    """A PortalSource answering for one tomogram at ``url``."""

    def __init__(self, url: str, size: int) -> None:
        self.t = PortalTomogram(5, 1, 1, 10.0, "TS", "raw", (40, 40, 20), url, size)

    def tomogram(self, tomogram_id: int) -> PortalTomogram | None:
        return self.t if tomogram_id == 5 else None

    def run_tomograms(self, run_id: int) -> list[PortalTomogram]:
        return [self.t]

    def run(self, run_id: int) -> PortalRun:
        return PortalRun(1, "TS", 1)

    def point_annotation_files(self, run_id: int) -> list[PortalAnnotationFile]:
        return []


def test_a_server_that_does_not_answer_is_a_timeout_error(slow_server: tuple[str, Slow], tmp_path: Path) -> None:
    url, state = slow_server
    state.delay_s = 1.0
    with pytest.raises(CryoNBError, match=r"TS\.mrc: no answer within 0\.2 s"):
        fetch_portal_tomogram(_OneTomogram(url, len(state.body)), 5, tmp_path, timeout_s=0.2, progress=False)
    assert not (tmp_path / "tomogram-5" / "TS.mrc").exists()


def test_interrupted_download_leaves_only_a_part_file_then_resumes(slow_server: tuple[str, Slow], tmp_path: Path) -> None:
    url, state = slow_server
    state.cut_after, state.cut_requests = 4000, 3  # every attempt of the first call stops early
    source = _OneTomogram(url, len(state.body))
    with pytest.raises(CryoNBError, match=r"download incomplete .* run again to resume"):
        fetch_portal_tomogram(source, 5, tmp_path, timeout_s=5, progress=False)
    folder = tmp_path / "tomogram-5"
    assert sorted(p.name for p in folder.iterdir()) == ["TS.mrc.part"]  # nothing that looks complete
    assert not (tmp_path / "manifest.yaml").exists()
    result = fetch_portal_tomogram(source, 5, tmp_path, timeout_s=5, progress=False)
    assert Path(result.location).read_bytes() == state.body and state.requests[-1] == "bytes=12000-"
    # a later fetch verifies against the recorded sha256: a changed file on the server is refused
    state.body = state.body[:-1] + b"\x01"
    Path(result.location).unlink()
    with pytest.raises(CryoNBError, match=r"checksum mismatch: expected sha256 " + result.sha256):
        fetch_portal_tomogram(source, 5, tmp_path, timeout_s=5, progress=False)


def test_a_wrong_size_is_refused_and_names_stay_inside_the_data_folder(slow_server: tuple[str, Slow], tmp_path: Path) -> None:
    url, state = slow_server
    with pytest.raises(CryoNBError, match=rf"size mismatch: expected {len(state.body) + 7} bytes, got {len(state.body)}"):
        fetch_portal_tomogram(_OneTomogram(url, len(state.body) + 7), 5, tmp_path, timeout_s=5, progress=False)
    sneaky = _OneTomogram(url.replace("TS.mrc", "..%2F..%2Fescape.mrc"), len(state.body))
    result = fetch_portal_tomogram(sneaky, 5, tmp_path / "d", timeout_s=5, progress=False)
    assert Path(result.location).parent == tmp_path / "d" / "tomogram-5" and not (tmp_path / "escape.mrc").exists()
    with pytest.raises(CryoNBError, match=r"not an http:// or https:// address|expected an http:// or https://"):
        fetch_portal_tomogram(_OneTomogram("file:///etc/passwd", 10), 5, tmp_path / "e", progress=False)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "manifest.yaml").write_text("datasets: []\n")
    with pytest.raises(CryoNBError, match=r"manifest\.yaml: not a cryonb Portal manifest"):
        fetch_portal_tomogram(_OneTomogram(url, len(state.body)), 5, tmp_path / "f", progress=False)


# --- the real client (cryoet-data-portal) against recorded GraphQL answers on 127.0.0.1 ---------------------

_GQL = {
    "tomograms": [{"id": 17035, "runId": 16468, "tomogramVoxelSpacingId": 501, "voxelSpacing": 10.012, "name": "TS_86_3",
                   "processing": "denoised", "sizeX": 630, "sizeY": 630, "sizeZ": 184, "httpsMrcFile": "https://example.org/TS_86_3.mrc",
                   "fileSizeMrc": 292204544.0, "httpsOmezarrDir": "https://example.org/TS_86_3.zarr"}],
    "runs": [{"id": 16468, "name": "TS_86_3", "datasetId": 10440}],
    "tomogramVoxelSpacings": [{"id": 501, "runId": 16468, "voxelSpacing": 10.012}],
    "annotations": [{"id": 31995, "runId": 16468, "objectName": "ferritin complex", "groundTruthStatus": True}],
    "annotationShapes": [{"id": 61, "annotationId": 31995, "shapeType": "OrientedPoint"},
                         {"id": 62, "annotationId": 31995, "shapeType": "SegmentationMask"}],
    "annotationFiles": [{"id": 74213, "annotationShapeId": 61, "tomogramVoxelSpacingId": 501, "format": "ndjson",
                         "httpsPath": "https://example.org/ferritin.ndjson", "fileSize": 1234.0}],
}


@pytest.fixture()
def graphql() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["query"]
            root, key, value = re.search(r"(\w+)\(where: \{ (\w+): \{ _eq: (\S+) \} \}\)", query).groups()
            rows = [r for r in _GQL.get(root, []) if str(r.get(key)) == value]
            body = json.dumps({"data": {root: rows}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/graphql"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_portal_client_adapter_reads_recorded_graphql_answers(graphql: str) -> None:
    pytest.importorskip("cryoet_data_portal", reason="the Portal client is an optional extra: pip install 'cryonb[portal]'")
    from cryonb.portal import CryoETPortalSource

    source = CryoETPortalSource(graphql, timeout_s=5)
    t = source.tomogram(17035)
    assert t is not None and t.voxel_size_a == 10.012 and t.size_xyz == (630, 630, 184) and t.mrc_bytes == 292204544
    assert t.run_id == 16468 and t.processing == "denoised" and t.https_omezarr.endswith(".zarr")
    assert source.tomogram(1) is None
    assert source.run(16468) == PortalRun(16468, "TS_86_3", 10440)
    files = source.point_annotation_files(16468)
    assert [(f.id, f.object_name, f.shape_type, f.voxel_size_a, f.size_bytes, f.ground_truth) for f in files] == [
        (74213, "ferritin complex", "OrientedPoint", 10.012, 1234, True)]


def test_the_portal_client_adapter_names_an_unreachable_api() -> None:
    pytest.importorskip("cryoet_data_portal", reason="the Portal client is an optional extra: pip install 'cryonb[portal]'")
    from cryonb.portal import CryoETPortalSource

    with socket_closed_port() as url:
        with pytest.raises(CryoNBError, match=r"CryoET Data Portal API http://127\.0\.0\.1:\d+/graphql: (cannot connect|error) while asking for tomogram 5"):
            CryoETPortalSource(url, timeout_s=2).tomogram(5)


def socket_closed_port():  # noqa: ANN201
    """A URL on 127.0.0.1 where nothing listens."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def _cm() -> Iterator[str]:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        yield f"http://127.0.0.1:{port}/graphql"

    return _cm()


def test_without_the_portal_extra_the_core_works_and_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryonb.omezarr import open_omezarr
    from cryonb.portal import CryoETPortalSource

    monkeypatch.setitem(__import__("sys").modules, "cryoet_data_portal", None)  # as if not installed
    monkeypatch.setitem(__import__("sys").modules, "aiohttp", None)
    with pytest.raises(CryoNBError, match=r"client is not installed; install it with pip install 'cryonb\[portal\]'"):
        CryoETPortalSource()
    with pytest.raises(CryoNBError, match=r"reading an OME-Zarr over HTTP needs aiohttp; install it with pip install 'cryonb\[portal\]'"):
        open_omezarr("http://127.0.0.1:9/t.zarr")
