"""The data manifest: every input and output data set, with its recipe, seed and checksum.

Public surface: :func:`load_manifest`, :func:`verify`, :func:`fetch`, :class:`DataEntry`.

``data_manifest.yaml`` lists entries of three kinds:

- ``bundled``: files shipped in git (the PDB structures); path + sha256.
- ``generated``: made by a recipe (``function`` + ``params``) and a seed; path, and the sha256 of the
  data set's payload once recorded. Absent files are fine: the notebooks regenerate them.
- ``external``: public data a user may download; url (http or https) + path + sha256, or md5 where the
  publisher gives only that (Zenodo); ``data fetch`` then prints the sha256 to pin.

Every path is relative to the repository root (or the ``root`` given) and must stay inside its data folder
``data/``, also after following symbolic links; ``verify`` and ``fetch`` never read or replace a device, pipe or socket.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from cryonb.cache import file_digest
from cryonb.errors import CryoNBError
from cryonb.fetch import check_url, download_verified, file_digest
from cryonb.paths import repo_root, resolve

__all__ = ["DataEntry", "VerifyResult", "load_manifest", "verify", "fetch", "sha256_path", "default_manifest_path",
           "contained_path"]

KINDS = ("bundled", "generated", "external")
#: every manifest path lies below this folder of the repository (or of the ``root`` given)
DATA_FOLDER = "data"


@dataclass(frozen=True)
class DataEntry:
    name: str
    kind: str
    path: str
    sha256: str | None = None
    md5: str | None = None  # external files whose publisher gives only md5 (Zenodo)
    url: str | None = None
    recipe: dict[str, Any] | None = None
    seed: int | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_path(self, root: Path | None = None) -> Path:
        return (root / self.path) if root is not None else resolve(self.path)


@dataclass(frozen=True)
class VerifyResult:
    name: str
    status: str  # "ok" | "mismatch" | "missing" | "unrecorded" | "refused"
    path: Path
    expected: str | None
    actual: str | None
    note: str = ""  # why a path was refused, or what to do about a missing file
    required: bool = False  # a bundled file: missing is a failure, not "generated on demand"

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "refused") or (self.status == "missing" and self.required)

    def line(self) -> str:
        if self.status == "mismatch":
            algorithm = "md5" if self.expected is not None and len(self.expected) == 32 else "sha256"
            return f"MISMATCH  {self.name}: {self.path} has {algorithm} {self.actual}, manifest expects {self.expected}"
        if self.status == "refused":
            return f"REFUSED   {self.name}: {self.note}"
        note = f" ({self.note})" if self.note else ""
        return f"{self.status.upper():9s} {self.name}: {self.path}{note}"


def default_manifest_path() -> Path:
    return repo_root() / "data_manifest.yaml"


def _entry(raw: Any, index: int, source: Path) -> DataEntry:
    where = f"{source}: datasets[{index}]"
    if not isinstance(raw, dict):
        raise CryoNBError(f"{where}: expected a mapping with name, kind, path; got {type(raw).__name__}")
    for key in ("name", "kind", "path"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CryoNBError(f"{where}: field {key!r} is missing or not a string")
    kind = raw["kind"]
    _check_relative(raw["path"], f"{where} ({raw['name']})")
    if kind not in KINDS:
        raise CryoNBError(f"{where} ({raw['name']}): kind {kind!r} is not one of {', '.join(KINDS)}")
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise CryoNBError(f"{where} ({raw['name']}): sha256 must be 64 lowercase hex digits, got {sha!r}")
    md5 = raw.get("md5")
    if md5 is not None and (kind != "external" or not isinstance(md5, str) or len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
        raise CryoNBError(f"{where} ({raw['name']}): md5 is for external data sets only and must be 32 lowercase hex digits, got {md5!r}")
    if kind == "bundled" and sha is None:
        raise CryoNBError(f"{where} ({raw['name']}): a bundled data set needs a sha256")
    if kind == "external" and sha is None and md5 is None:
        raise CryoNBError(f"{where} ({raw['name']}): an external data set needs a sha256 (or the publisher's md5)")
    if kind == "external" and not raw.get("url"):
        raise CryoNBError(f"{where} ({raw['name']}): an external data set needs a url")
    if kind == "external":
        check_url(raw["url"], f"{where} ({raw['name']})")
    if kind == "generated":
        recipe = raw.get("recipe")
        if not isinstance(recipe, dict) or "function" not in recipe:
            raise CryoNBError(f"{where} ({raw['name']}): a generated data set needs recipe.function and recipe.params")
        if not isinstance(raw.get("seed"), int):
            raise CryoNBError(f"{where} ({raw['name']}): a generated data set needs an integer seed")
    known = {"name", "kind", "path", "sha256", "md5", "url", "recipe", "seed", "description"}
    return DataEntry(
        name=raw["name"],
        kind=kind,
        path=raw["path"],
        sha256=sha,
        md5=md5,
        url=raw.get("url"),
        recipe=raw.get("recipe"),
        seed=raw.get("seed"),
        description=str(raw.get("description", "")),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def _check_relative(path: str, where: str) -> None:
    """Raise unless ``path`` is relative, below the data folder ``data/`` and has no '..' (any OS's spelling)."""
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if (posix.is_absolute() or windows.is_absolute() or windows.drive or len(windows.parts) < 2
            or windows.parts[0] != DATA_FOLDER or ".." in windows.parts):
        raise CryoNBError(
            f"{where}: path {path!r} must stay inside the data folder: expected a relative path like "
            f"{DATA_FOLDER}/external/NAME, without '..'"
        )


def contained_path(entry: DataEntry, root: Path | None = None) -> Path:
    """``entry``'s path under ``root``'s data folder (default root: the repository); raises if it leads outside,
    links included."""
    base = ((root if root is not None else repo_root()) / DATA_FOLDER).resolve()
    path = entry.resolved_path(root)
    real = path.resolve()  # follows every symbolic link on the way, existing or not
    if base not in real.parents:
        raise CryoNBError(
            f"{entry.name}: {entry.path} leads to {real}, outside {base}; manifest paths must stay inside it "
            "(is a folder on the way a symbolic link?)"
        )
    return path


def load_manifest(path: str | os.PathLike[str] | None = None) -> list[DataEntry]:
    """Parse and validate the manifest; raise :class:`CryoNBError` naming the file and the bad field."""
    source = Path(path) if path is not None else default_manifest_path()
    if not source.is_file():
        raise CryoNBError(f"{source}: no such manifest file")
    try:
        doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CryoNBError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list):
        raise CryoNBError(f"{source}: expected a top-level mapping with a 'datasets' list")
    entries = [_entry(raw, i, source) for i, raw in enumerate(doc["datasets"])]
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            raise CryoNBError(f"{source}: data set name {e.name!r} appears twice")
        seen.add(e.name)
    return entries


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative names and contents) for a data-set folder."""
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".tmp")):
        digest.update(f.relative_to(path).as_posix().encode())
        digest.update(bytes.fromhex(file_digest(f)))
    return digest.hexdigest()


def _verify_one(e: DataEntry, root: Path | None) -> VerifyResult:
    required = e.kind == "bundled"
    try:
        p = contained_path(e, root)
    except CryoNBError as exc:
        return VerifyResult(e.name, "refused", e.resolved_path(root), e.sha256, None, str(exc), required)
    if not p.exists():
        note = f"bundled with the repository: restore it with `git checkout -- {e.path}`" if required else ""
        return VerifyResult(e.name, "missing", p, e.sha256, None, note, required)
    if not (p.is_file() or (p.is_dir() and e.kind == "generated")):
        kind = "a folder" if p.is_dir() else "not a regular file (a device, pipe or socket)"
        return VerifyResult(e.name, "refused", p, e.sha256, None, f"{p} is {kind}; expected a file", required)
    if e.sha256 is None and e.md5 is not None:
        expected, actual = e.md5, file_digest(p, "md5")
    else:
        expected, actual = e.sha256, sha256_path(p)
    status = "unrecorded" if expected is None else ("ok" if actual == expected else "mismatch")
    return VerifyResult(e.name, status, p, expected, actual, "", required)


def verify(entries: list[DataEntry], root: Path | None = None) -> list[VerifyResult]:
    """Check every present file against its checksum.

    Missing generated or external sets are reported, not failures; a missing bundled file, a path leading
    outside ``root`` and a special file (never read) are failures (:attr:`VerifyResult.failed`).
    """
    return [_verify_one(e, root) for e in entries]


def fetch(entries: list[DataEntry], name: str, root: Path | None = None) -> Path:
    """Download an external data set, verify it and move it into place; a bad download never replaces a good copy."""
    by_name = {e.name: e for e in entries}
    if name not in by_name:
        raise CryoNBError(f"unknown data set {name!r}; the manifest names {', '.join(sorted(by_name))}")
    entry = by_name[name]
    if entry.kind != "external":
        raise CryoNBError(f"data set {name!r} is {entry.kind}, not external: nothing to fetch")
    assert entry.url is not None
    checksum = f"sha256:{entry.sha256}" if entry.sha256 else f"md5:{entry.md5}"
    dest = contained_path(entry, root)  # never a download onto a file outside the data folder
    return download_verified(entry.url, dest, checksum)
