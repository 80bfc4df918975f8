"""Content keys and the one ``ensure`` for every cached artefact (data sets, encoders, runs, models).

Public surface: :func:`content_key`, :func:`file_digest`, :func:`ensure`, :data:`KEY_LENGTH`.

An artefact's folder or file name carries :func:`content_key` of everything that determines it (recipe,
configs, seeds, the keys of the artefacts it was made from), so a changed setting can never reuse a stale
result and an unchanged one is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from cryonb.io import atomic_path

__all__ = ["KEY_LENGTH", "content_key", "file_digest", "ensure"]

#: hex digits of every content key (48 bits: collisions are negligible for a few thousand artefacts)
KEY_LENGTH = 12


def _plain(x: Any) -> Any:
    """JSON-able form: recipes by their ``to_dict``, other dataclasses by type name and fields, inf as "inf"."""
    if is_dataclass(x) and not isinstance(x, type):
        if hasattr(x, "to_dict"):
            return _plain(x.to_dict())
        return {"__type__": type(x).__name__, **{k: _plain(v) for k, v in asdict(x).items()}}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def content_key(*parts: Any) -> str:
    """:data:`KEY_LENGTH` hex digits of the sha256 of ``parts`` (dataclasses, dicts, lists, numbers, strings)."""
    text = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``sha256`` or ``md5``), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure(path: str | os.PathLike[str], build: Callable[[Path], None]) -> Path:
    """``path`` if it exists; else ``build(tmp)`` writes a temporary file that is renamed onto ``path``.

    A crash inside ``build`` leaves nothing at ``path``, so the next call builds again.
    """
    target = Path(path)
    if target.exists():
        return target
    with atomic_path(target) as tmp:
        build(tmp)
    return target
