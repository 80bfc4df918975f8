"""Where the repository, its data and its results live.

Notebooks run with different working directories (JupyterLab starts in
``notebooks/``, papermill in the repository root), so every relative path in a
params file is resolved against the repository root, never the cwd.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "resolve", "structures_dir", "generated_dir", "cache_dir"]


def repo_root() -> Path:
    """The repository root: ``$CRYONB_ROOT`` if set, else the folder above the package."""
    env = os.environ.get("CRYONB_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def resolve(path: str | os.PathLike[str]) -> Path:
    """Absolute path; relative ones are taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def structures_dir() -> Path:
    return repo_root() / "data" / "structures"


def generated_dir() -> Path:
    return repo_root() / "data" / "generated"


def cache_dir() -> Path:
    return repo_root() / "data" / "cache"
