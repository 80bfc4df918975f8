"""download_verified against a local HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cryonb.errors import CryoNBError
from cryonb.fetch import download_verified, sha256_file

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    """What the handler serves and what it saw."""

    body: bytes = PAYLOAD
    support_range: bool = True
    cut_first: int = 0  # close the connection after this many body bytes, for the first `cut_requests` requests
    cut_requests: int = 0
    requests: list[str | None] = field(default_factory=list)  # Range header of each GET


def _handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/moved":  # a redirect to a scheme urllib would follow by default
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/file.bin")
                self.end_headers()
                return
            if self.path != "/file.bin":
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            state.requests.append(rng)
            start = 0
            if rng and state.support_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(state.body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(state.body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(state.body) - 1}/{len(state.body)}")
            else:
                self.send_response(200)
            body = state.body[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if len(state.requests) <= state.cut_requests:
                self.wfile.write(body[: state.cut_first])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_good_file_downloads_and_verifies(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "sub" / "file.bin"
    assert download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == PAYLOAD_SHA
    assert not (tmp_path / "sub" / "file.bin.part").exists()
    assert state.requests == [None]


def test_corrupt_download_keeps_good_copy(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "file.bin"
    download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5)
    # The server now serves different bytes while the manifest asks for another digest.
    state.body = b"corrupted" + PAYLOAD[9:]
    wanted = hashlib.sha256(b"something else").hexdigest()
    bad = hashlib.sha256(state.body).hexdigest()
    with pytest.raises(CryoNBError, match=rf"file\.bin: checksum mismatch: expected sha256 {wanted}, got {bad}"):
        download_verified(url, dest, wanted, progress=False, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD  # the good copy survives
    assert not (tmp_path / "file.bin.part").exists()


def test_existing_good_copy_is_not_downloaded(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    assert download_verified(url, dest, PAYLOAD_SHA.upper(), progress=False, timeout_s=5) == dest
    assert state.requests == []


def test_interrupted_download_resumes_with_range(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    state.cut_first, state.cut_requests = 30_000, 1
    dest = tmp_path / "file.bin"
    download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [None, "bytes=30000-"]


def test_interrupted_download_restarts_when_range_unsupported(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.support_range = False
    state.cut_first, state.cut_requests = 30_000, 1
    dest = tmp_path / "file.bin"
    download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD  # not 30,000 stale bytes + the full body
    assert state.requests == [None, "bytes=30000-"]


def test_incomplete_after_all_attempts_keeps_part_then_next_call_resumes(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    url, state = server
    state.cut_first, state.cut_requests = 10_000, 2
    dest = tmp_path / "file.bin"
    msg = r"download incomplete \(stopped after 20000 of 102400 bytes\) in 2 attempt\(s\).*run again to resume"
    with pytest.raises(CryoNBError, match=msg):
        download_verified(url, dest, PAYLOAD_SHA, progress=False, attempts=2, timeout_s=5)
    part = tmp_path / "file.bin.part"
    assert part.stat().st_size == 20_000 and not dest.exists()
    download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [None, "bytes=10000-", "bytes=20000-"]


def test_stale_part_from_other_file_restarts_cleanly(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"\xff" * 5_000)  # wrong bytes, right length prefix
    download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == ["bytes=5000-", None]


def test_complete_part_and_416_is_kept(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = server
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    download_verified(url, dest, PAYLOAD_SHA, progress=False, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD
    assert state.requests == [f"bytes={len(PAYLOAD)}-"]


def test_http_404_and_bad_digest_are_clear(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(CryoNBError, match=r"missing\.bin: server answered HTTP 404"):
        download_verified(url.replace("file.bin", "missing.bin"), tmp_path / "x", PAYLOAD_SHA, progress=False)
    with pytest.raises(CryoNBError, match=r"expected sha256 must be 64 hex digits, got 'abc'"):
        download_verified(url, tmp_path / "x", "abc", progress=False)


def test_manifest_fetch_uses_verified_download(server: tuple[str, ServerState], tmp_path: Path) -> None:
    from cryonb.manifest import fetch, load_manifest

    url, _ = server
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "version: 1\ndatasets:\n"
        f"  - {{name: tiny, kind: external, path: data/tiny.bin, url: '{url}', sha256: {PAYLOAD_SHA}}}\n"
        f"  - {{name: wrong, kind: external, path: data/wrong.bin, url: '{url}', sha256: '{'0' * 64}'}}\n",
        encoding="utf-8",
    )
    entries = load_manifest(manifest)
    assert fetch(entries, "tiny", root=tmp_path).read_bytes() == PAYLOAD
    with pytest.raises(CryoNBError, match=rf"checksum mismatch: expected sha256 {'0' * 64}, got {PAYLOAD_SHA}"):
        fetch(entries, "wrong", root=tmp_path)
    assert not (tmp_path / "data" / "wrong.bin").exists()


def test_publisher_md5_verifies_and_a_wrong_one_is_named(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    dest = tmp_path / "file.bin"
    assert download_verified(url, dest, f"md5:{md5.upper()}", progress=False, timeout_s=5).read_bytes() == PAYLOAD
    wrong = "0" * 32
    with pytest.raises(CryoNBError, match=rf"checksum mismatch: expected md5 {wrong}, got {md5}"):
        download_verified(url, tmp_path / "other.bin", f"md5:{wrong}", progress=False, timeout_s=5)
    assert not (tmp_path / "other.bin").exists()


@pytest.mark.parametrize(("checksum", "message"), [
    (f"crc32:{'0' * 8}", "unknown checksum algorithm 'crc32'"),
    (f"md5:{'0' * 64}", "expected md5 must be 32 hex digits"),
    (f"sha256:{'g' * 64}", "expected sha256 must be 64 hex digits"),
])
def test_malformed_checksums_are_named(checksum: str, message: str) -> None:
    from cryonb.fetch import parse_checksum

    with pytest.raises(CryoNBError, match=message):
        parse_checksum(checksum, "entry x")
    assert parse_checksum(f"MD5:{'A' * 32}") == ("md5", "a" * 32)
    assert parse_checksum("b" * 64) == ("sha256", "b" * 64)


def test_a_redirect_to_another_scheme_is_refused(server: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = server
    moved = url.rsplit("/", 1)[0] + "/moved"
    with pytest.raises(CryoNBError, match=r"/moved redirects to: .*ftp://127\.0\.0\.1/file\.bin.*expected an http:// or https:// address"):
        download_verified(moved, tmp_path / "file.bin", PAYLOAD_SHA, progress=False, timeout_s=5)
    assert not (tmp_path / "file.bin").exists()
