"""Google Colab: open a notebook there and its Colab cell installs cryonb beside Colab's own torch.

Public surface: :data:`REPOSITORY` (the one place that names the GitHub repository), :func:`colab_url`,
:func:`badge_markdown`, :func:`on_colab`, :func:`install_commands`, :func:`choose_profile`, :func:`setup` and
:func:`notebook_cell` (the source of the cell every notebook carries right after its parameters cell).

Why after the parameters cell: it replaces what the parameters cell (or papermill) set, choosing the smoke profile
on a CPU runtime and quick on a GPU, with results and checkpoints inside the clone (``/content/cryonb``, writable).
Colab opens the executed notebooks of ``results/<profile>/`` (the ``.py`` sources are not notebooks to it).

This module imports only the standard library at the top: on Colab it is imported before cryonb's dependencies
are installed (``cryonb/__init__.py`` is equally light).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BADGE_IMAGE",
    "BRANCH",
    "CLONE_DIR",
    "REPOSITORY",
    "badge_markdown",
    "choose_profile",
    "colab_url",
    "install_commands",
    "notebook_cell",
    "on_colab",
    "setup",
]

#: the GitHub repository (owner/name) that Colab badges open and the Colab cell clones: change it here only
REPOSITORY = "cryonb/cryonb"
BRANCH = "main"
#: where the Colab cell clones the repository: writable on Colab, and results/, runs/ and data/ live inside it
CLONE_DIR = "/content/cryonb"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
#: Colab's own packages, never replaced: its CUDA torch, and the kernel and widgets its front end talks to
KEEP_COLABS = ("torch", "jupyterlab", "ipykernel", "ipywidgets")
#: an explicit choice of profile on Colab (smoke or quick) wins over the GPU test
PROFILE_ENV = "CRYONB_COLAB_PROFILE"


def colab_url(stem: str, profile: str = "quick") -> str:
    """The Colab address of the executed notebook ``results/<profile>/<stem>.ipynb`` on GitHub."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/results/{profile}/{stem}.ipynb"


def badge_markdown(stem: str, profile: str = "quick") -> str:
    """The "Open in Colab" badge for notebook ``stem`` (markdown)."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(stem, profile)})"


def on_colab(environ: Mapping[str, str] | None = None, modules: Mapping[str, Any] | None = None) -> bool:
    """True on a Colab runtime: its kernel has imported ``google.colab``, and it sets ``COLAB_RELEASE_TAG``."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    return "google.colab" in modules or "COLAB_RELEASE_TAG" in environ


def _requirement_name(spec: str) -> str:
    for stop in "=<>!~[; ":
        spec = spec.split(stop, 1)[0]
    return spec.strip().lower().replace("_", "-")


def install_commands(repo_dir: Path, torch_version: str, constraints: Path, python: str = sys.executable) -> list[list[str]]:
    """The pip commands that install cryonb from ``repo_dir`` without touching the installed torch.

    cryonb itself goes in with ``--no-deps``; its pinned dependencies follow, minus :data:`KEEP_COLABS`, under a
    constraints file (written by :func:`setup`) holding ``torch==<torch_version>``, so a package that asks for
    torch (torch-ctf, captum...) is satisfied by Colab's build or fails loudly, never pulling in another one.
    """
    project = tomllib.loads((repo_dir / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = [d for d in project["dependencies"] if _requirement_name(d) not in KEEP_COLABS]
    pip = [python, "-m", "pip", "install", "--quiet"]
    return [[*pip, "--no-deps", "-e", str(repo_dir)], [*pip, "-c", str(constraints), *deps]]


def choose_profile(environ: Mapping[str, str], cuda_available: bool) -> str:
    """smoke on a CPU runtime (seconds per notebook), quick on a GPU; ``CRYONB_COLAB_PROFILE`` wins."""
    chosen = environ.get(PROFILE_ENV) or ("quick" if cuda_available else "smoke")
    if chosen not in ("smoke", "quick"):
        from cryonb.errors import CryoNBError

        raise CryoNBError(f"{PROFILE_ENV}={chosen!r}: expected smoke or quick (the paper profile needs a long GPU run)")
    return chosen


def _installed_torch() -> str:
    from importlib.metadata import version

    return version("torch")


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def setup(stem: str, environ: Mapping[str, str] | None = None, modules: Mapping[str, Any] | None = None,
          run_command: Callable[[Sequence[str]], Any] | None = None, repo_dir: Path | None = None) -> dict[str, Any]:
    """On Colab: install cryonb (keeping torch), and return notebook ``stem``'s parameters for the chosen profile.

    Off Colab: return ``{}`` and do nothing, so ``globals().update(setup(...))`` leaves the notebook as it was.
    ``run_command`` runs one command (default: ``subprocess.run(..., check=True)``); tests pass a recorder.
    """
    environ = os.environ if environ is None else environ
    if not on_colab(environ, modules):
        return {}
    run_command = run_command or (lambda cmd: subprocess.run(list(cmd), check=True))
    repo = Path(repo_dir or CLONE_DIR)
    constraints = Path(tempfile.gettempdir()) / "cryonb-colab-constraints.txt"
    constraints.write_text(f"torch=={_installed_torch()}\n", encoding="utf-8")
    for command in install_commands(repo, _installed_torch(), constraints):
        run_command(command)
    profile = choose_profile(environ, _cuda_available())
    from cryonb.runner import (
        notebook_parameters,  # only now: its dependencies are installed
    )
    from cryonb.spec import load_profile

    params = notebook_parameters(load_profile(profile), stem, repo / "results" / profile, repo / "runs" / profile)
    print(f"Colab: cryonb installed from {repo} beside torch {_installed_torch()}; profile {profile}, "
          f"results in {params['results_dir']}, checkpoints in {params['work_dir']}")
    return params


def notebook_cell(stem: str) -> str:
    """The Colab cell of notebook ``stem`` (what follows its parameters cell; a test keeps every copy equal)."""
    return f'''\
# On Google Colab only (anywhere else this cell does nothing): fetch cryonb, install it beside Colab's own torch,
# and switch to the smoke profile (quick on a GPU runtime) with results and checkpoints under {CLONE_DIR}.
import os
import subprocess
import sys

if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
    if not os.path.isdir("{CLONE_DIR}"):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/{REPOSITORY}.git", "{CLONE_DIR}"], check=True)
    sys.path.insert(0, "{CLONE_DIR}")
    os.chdir("{CLONE_DIR}")
    from cryonb.colab import setup

    globals().update(setup("{stem}"))'''
