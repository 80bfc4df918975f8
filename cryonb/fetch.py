"""Verified downloads: resume when possible, never replace a good file with a bad one.

Public surface: :func:`download_verified`, :func:`sha256_file`, :func:`file_digest`, :func:`parse_checksum`.

A download goes to ``<dest>.part``. When a ``.part`` file is already there (an earlier
run was interrupted) the remaining bytes are requested with an HTTP ``Range`` header;
a server that ignores it (answers ``200`` instead of ``206``) gets a clean restart.
Only ``http(s)`` URLs are fetched, and neither ``dest`` nor its ``.part`` may be a link or a special file.
Only a file whose checksum matches (sha256, or md5 where a publisher such as Zenodo gives only
that) is renamed onto ``dest`` (``os.replace``, atomic on
one file system), so an existing good copy survives any failed or corrupt download. Where a publisher
gives only a size (the CryoET Data Portal), ``checksum=None`` with ``size_bytes`` accepts a ``.part`` of
exactly that size; the caller records the sha256 it then computes, so a later fetch verifies against it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cryonb.cache import file_digest
from cryonb.errors import CryoNBError

__all__ = ["download_verified", "sha256_file", "file_digest", "parse_checksum", "check_url"]

#: URL schemes a download may use: no file:// (reads local files), data:, ftp: or others
ALLOWED_SCHEMES = ("http", "https")

_CHUNK_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _Interrupted(Exception):
    """The body stopped before its announced end; the bytes so far are kept in the .part file."""


#: hex digits of each accepted checksum algorithm
DIGEST_LENGTHS = {"sha256": 64, "md5": 32}


def parse_checksum(text: str, where: str = "checksum") -> tuple[str, str]:
    """``"sha256:<hex>"``, ``"md5:<hex>"`` or bare 64-digit hex (sha256) -> (algorithm, lowercase hex)."""
    algorithm, _, digest = text.strip().rpartition(":")
    algorithm, digest = (algorithm or "sha256").lower(), digest.lower()
    if algorithm not in DIGEST_LENGTHS:
        raise CryoNBError(f"{where}: unknown checksum algorithm {algorithm!r} in {text!r}; use sha256 or md5")
    n = DIGEST_LENGTHS[algorithm]
    if not re.fullmatch(rf"[0-9a-f]{{{n}}}", digest):
        raise CryoNBError(f"{where}: expected {algorithm} must be {n} hex digits, got {text!r}")
    return algorithm, digest


def check_url(url: str, where: str = "url") -> str:
    """Return ``url`` if it is an ``http(s)://host/...`` address, else raise :class:`CryoNBError` naming ``where``."""
    try:
        parts = urllib.parse.urlsplit(str(url))
    except ValueError as exc:  # e.g. an unbalanced '[' in the host
        raise CryoNBError(f"{where}: url {url!r} is not a valid address ({exc})") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.netloc:
        raise CryoNBError(f"{where}: url {url!r}: expected an http:// or https:// address with a host")
    return str(url)


def _refuse_special(path: Path, what: str) -> None:
    """Raise unless ``path`` is absent or a regular file that is not a symbolic link.

    A device such as /dev/zero would never end a checksum; a link could carry a write elsewhere.
    """
    if path.is_symlink():
        raise CryoNBError(f"{path}: {what} is a symbolic link; refusing to read or replace it (expected a plain file)")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise CryoNBError(f"{path}: {what} is {kind}; refusing to read or replace it")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path, "sha256")


def _part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): urllib's default also follows ``ftp://``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        check_url(newurl, f"{req.full_url} redirects to")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def _open(url: str, offset: int, timeout_s: float) -> http.client.HTTPResponse:
    """Open ``url``, asking for bytes from ``offset`` on when ``offset > 0``."""
    headers = {"User-Agent": "cryonb-fetch"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    try:
        return _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset > 0:
            raise  # the caller decides: the .part file may already be complete, or stale
        raise CryoNBError(f"{url}: server answered HTTP {exc.code} ({exc.reason}); expected the file") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise CryoNBError(f"{url}: no answer within {timeout_s:g} s; check the address and your network, "
                              "or try again later") from exc
        raise CryoNBError(f"{url}: cannot connect ({exc}); check the address and your network") from exc


def _resumes_at(response: http.client.HTTPResponse, offset: int) -> bool:
    """True when the server honoured our Range request from exactly ``offset``."""
    if offset == 0 or getattr(response, "status", None) != 206:
        return False
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return bool(match) and int(match.group(1)) == offset


def _fetch_once(url: str, part: Path, timeout_s: float, progress: bool) -> bool:
    """Bring ``part`` to the full body of ``url``, resuming from its current size when the server allows.

    Returns True when the server announced the body's length (so ``part`` holds all of it), False when it
    did not (a connection that closed early would look the same).

    Raises
    ------
    _Interrupted
        The connection closed or timed out mid-body; ``part`` keeps the bytes received.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout_s)
    except urllib.error.HTTPError:
        # 416: our .part is at least as long as the file. Keep it if complete, else the caller restarts.
        return True
    with response:
        resume = _resumes_at(response, offset)
        if not resume:
            offset = 0  # server sent the whole body: start over rather than append to it
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None and length.isdigit() else None
        received = offset
        with open(part, "ab" if resume else "wb") as fh, tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=Path(part.name).stem,
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK_BYTES)
                except (http.client.IncompleteRead, socket.timeout, ConnectionError) as exc:
                    if isinstance(exc, http.client.IncompleteRead) and exc.partial:
                        fh.write(exc.partial)
                        received += len(exc.partial)
                    raise _Interrupted(f"after {received} bytes ({type(exc).__name__})") from exc
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _Interrupted(f"after {received} of {total} bytes")
    return total is not None


def _matches(path: Path, algorithm: str, expected: str | None, size_bytes: int | None) -> bool:
    """True when ``path`` has the expected size (if given) and digest (if given); the size is checked first (cheap)."""
    if size_bytes is not None and path.stat().st_size != size_bytes:
        return False
    return expected is None or file_digest(path, algorithm) == expected


def download_verified(
    url: str,
    dest: str | os.PathLike[str],
    checksum: str | None,
    *,
    size_bytes: int | None = None,
    progress: bool = True,
    attempts: int = 3,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest`` once its checksum matches.

    Parameters
    ----------
    url : str
        ``http://`` or ``https://`` address of one file; other schemes (``file://``, ``data:``) are refused.
    dest : path
        Final location. If it already holds a file with the right checksum nothing is downloaded.
    checksum : str or None
        Expected digest, case-insensitive: ``"sha256:<hex>"``, ``"md5:<hex>"`` or bare sha256 hex.
        ``None`` where the publisher gives none: then ``size_bytes`` is required.
    size_bytes : int, optional
        Expected size in bytes; checked whenever given (before the checksum).
    progress : bool
        Show a tqdm byte counter on stderr.
    attempts : int
        Connections to try; each after the first resumes from the ``.part`` file.
    timeout_s : float
        Socket timeout per connect/read, in seconds.

    Raises
    ------
    CryoNBError
        A URL that is not http(s), a destination (or its ``.part``) that is a link, folder or special
        file, unreachable URL or HTTP error, download still incomplete after ``attempts``
        (the ``.part`` file is kept so the next call resumes), or a checksum mismatch
        (message names the URL, expected and actual digests; ``dest`` is untouched), or a size other
        than ``size_bytes``.
    """
    dest = Path(dest)
    check_url(url)
    if checksum is None and (size_bytes is None or size_bytes < 0):
        raise CryoNBError(f"{url}: neither a checksum nor a size to verify the download against; expected at least one")
    algorithm, expected = parse_checksum(checksum, url) if checksum is not None else ("sha256", None)
    part = _part_path(dest)
    _refuse_special(dest, "the download's destination")
    _refuse_special(part, "the partial download")
    if dest.is_file() and _matches(dest, algorithm, expected, size_bytes):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)

    restarted = False
    last_error = ""
    for _ in range(max(1, attempts)):
        resumed = part.exists() and part.stat().st_size > 0
        try:
            announced = _fetch_once(url, part, timeout_s, progress)
        except _Interrupted as exc:
            last_error = str(exc)
            continue
        size = part.stat().st_size if part.exists() else 0
        if size_bytes is not None and size < size_bytes and not announced:
            # a body that ended early without announcing its length: resume from it on the next attempt
            last_error = f"after {size} of {size_bytes} bytes"
            continue
        if part.exists() and _matches(part, algorithm, expected, size_bytes):
            os.replace(part, dest)
            return dest
        if size_bytes is not None and size != size_bytes:
            problem = f"size mismatch: expected {size_bytes} bytes, got {size}"
        else:
            actual = file_digest(part, algorithm) if part.exists() else hashlib.new(algorithm, b"").hexdigest()
            problem = f"checksum mismatch: expected {algorithm} {expected}, got {actual}"
        part.unlink(missing_ok=True)  # a complete but wrong .part cannot be resumed
        if resumed and not restarted:
            # The stale bytes may come from an older version of the file: one clean restart.
            restarted = True
            continue
        raise CryoNBError(f"{url}: {problem}; {dest} was not replaced")
    raise CryoNBError(
        f"{url}: download incomplete (stopped {last_error}) in {max(1, attempts)} attempt(s); "
        f"the partial file {part} is kept, run again to resume"
    )
