"""Execute the notebooks with papermill: jupytext ``.py`` → ``.ipynb`` → executed notebook in ``results/<profile>/``.

Public surface: :func:`list_notebooks`, :func:`select_notebooks`, :func:`notebook_defaults`, :func:`check_profile`,
:func:`notebook_parameters`, :func:`run_notebook`, :func:`run_all`.

Each notebook gets ``profile``, ``results_dir``, ``work_dir``, ``spec`` (the profile's experiment entries, the same
for every notebook: see :mod:`cryonb.spec`) and its own presentation knobs from the profile's ``notebooks:`` section.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import papermill

from cryonb.budget import PartDone, clear_deadline, set_deadline
from cryonb.errors import CryoNBError
from cryonb.io import atomic_path, write_text_atomic
from cryonb.paths import repo_root
from cryonb.spec import Profile, list_profiles, load_profile
from cryonb.viewer import STATIC_ENV as STATIC_VIEWER_ENV

__all__ = [
    "NotebookResult",
    "list_notebooks",
    "list_profiles",
    "select_notebooks",
    "notebook_defaults",
    "check_profile",
    "notebook_parameters",
    "run_notebook",
    "run_all",
    "RUNNER_PARAMETERS",
]

#: Parameters the runner injects into every notebook (each notebook must declare them).
RUNNER_PARAMETERS = ("profile", "results_dir", "work_dir", "spec")


@dataclass(frozen=True)
class NotebookResult:
    name: str
    wall_s: float
    output: Path


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def list_notebooks(folder: Path | None = None) -> list[Path]:
    """Numbered jupytext notebooks (``NN_name.py``) in execution order."""
    base = folder or notebooks_dir()
    return sorted(p for p in base.glob("[0-9][0-9]_*.py"))


def select_notebooks(only: list[str] | None, notebooks: list[Path] | None = None) -> list[Path]:
    """Pick notebooks by number (``03``) or stem (``03_cssl_pretraining``); unknown names raise."""
    available = notebooks if notebooks is not None else list_notebooks()
    if not only:
        return available
    chosen = []
    for key in only:
        match = [p for p in available if p.stem == key or p.stem.split("_", 1)[0] == key.zfill(2)]
        if not match:
            names = ", ".join(p.stem for p in available)
            raise CryoNBError(f"unknown notebook {key!r}; available: {names}")
        chosen.extend(m for m in match if m not in chosen)
    return chosen


def notebook_defaults(source: Path) -> dict[str, Any]:
    """The parameters cell of a notebook as {name: default value} (literals only; what papermill can override)."""
    nb = jupytext.read(source)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise CryoNBError(f"{source}: {len(cells)} cells tagged 'parameters'; expected exactly one")
    defaults = {}
    for node in ast.parse(cells[0]).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError as exc:
                raise CryoNBError(f"{source}: parameter {node.targets[0].id} is not a literal ({exc})") from exc
    return defaults


def check_profile(profile: Profile, notebooks: list[Path] | None = None) -> None:
    """Every ``notebooks:`` section names a notebook and only its own knobs (papermill would only warn)."""
    by_stem = {p.stem: p for p in (notebooks if notebooks is not None else list_notebooks())}
    for stem, knobs in profile.notebooks.items():
        if stem not in by_stem:
            raise CryoNBError(f"{profile.path}: notebooks.{stem}: no such notebook; notebooks are {', '.join(by_stem)}")
        unknown = sorted(set(knobs) - (set(notebook_defaults(by_stem[stem])) - set(RUNNER_PARAMETERS)))
        if unknown:
            raise CryoNBError(f"{profile.path}: notebooks.{stem}: {unknown} are not parameters of {stem}")


def notebook_parameters(profile: Profile, stem: str, results_dir: Path, work_dir: Path) -> dict[str, Any]:
    """What the runner injects into notebook ``stem``: its knobs, the spec, the profile and the folders."""
    root = repo_root()
    return {**profile.notebooks.get(stem, {}), "profile": profile.name, "spec": profile.raw_spec,
            "results_dir": _relative(results_dir, root), "work_dir": _relative(work_dir, root)}


def to_ipynb(source: Path) -> nbformat.NotebookNode:
    """Read a jupytext percent notebook; the kernelspec comes from its header."""
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"})
    return nb


def _failing_cell(exc: papermill.PapermillExecutionError) -> str:
    return f"cell {exc.exec_count} (index {exc.cell_index}) raised {exc.ename}: {exc.evalue}"


def run_notebook(source: Path, parameters: dict[str, Any], results_dir: Path) -> NotebookResult:
    """Execute one notebook with ``parameters`` (see :func:`notebook_parameters`); the executed copy lands
    atomically in ``results_dir/<stem>.ipynb``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    target = results_dir / f"{source.stem}.ipynb"
    _prefer_this_python_kernel()
    earlier_outputs = _own_outputs(results_dir, source.stem)
    start = time.perf_counter()
    with atomic_path(target) as executed, _static_viewer():
        staged = executed.with_name(f".tmp-in-{source.stem}.ipynb")
        nbformat.write(to_ipynb(source), staged)
        try:
            papermill.execute_notebook(
                str(staged),
                str(executed),
                parameters=parameters,
                cwd=str(root),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
            )
        except papermill.PapermillExecutionError as exc:
            if exc.ename == "PartDone":  # the time budget (cryonb.budget) ran out; state is saved
                partial = results_dir / f"{source.stem}.partial.ipynb"
                executed.replace(partial)
                raise PartDone(f"notebook {source.name}: {exc.evalue}") from exc
            failed = results_dir / f"{source.stem}.failed.ipynb"
            executed.replace(failed)
            raise CryoNBError(f"notebook {source.name} failed in {_failing_cell(exc)}; executed copy: {failed}") from exc
        finally:
            staged.unlink(missing_ok=True)
    for leftover in ("failed", "partial"):
        (results_dir / f"{source.stem}.{leftover}.ipynb").unlink(missing_ok=True)
    _drop_stale_outputs(earlier_outputs, _own_outputs(results_dir, source.stem))
    return NotebookResult(source.stem, time.perf_counter() - start, target)


def _own_outputs(results_dir: Path, stem: str) -> dict[Path, tuple[int, int, int]]:
    """The tables and figures of notebook ``stem`` (named ``NN_…`` after its number) with (inode, mtime, size)."""
    prefix = stem.split("_", 1)[0] + "_"
    found = {}
    for folder in (results_dir / "tables", results_dir / "figures"):
        for path in sorted(folder.glob(f"{prefix}*")) if folder.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                found[path] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def _drop_stale_outputs(before: dict[Path, tuple[int, int, int]], after: dict[Path, tuple[int, int, int]]) -> None:
    # a table the notebook no longer writes (an earlier spec's, a renamed one) would otherwise sit beside the new
    # results and be read as one of them; every save is an atomic replace, so an untouched signature means unwritten
    for path, signature in before.items():
        if after.get(path) == signature:
            path.unlink()
            print(f"  removed {path.parent.name}/{path.name}: an earlier run's output that this run did not write", flush=True)


@contextlib.contextmanager
def _static_viewer() -> Iterator[None]:
    # an executed notebook is read as a document (results/, the course site): the volume viewer draws its static
    # figure only, since sliders would store their state in the file and show nothing there (cryonb.viewer)
    before = os.environ.get(STATIC_VIEWER_ENV)
    os.environ[STATIC_VIEWER_ENV] = "1"  # the kernel, a child process, inherits it
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STATIC_VIEWER_ENV, None)
        else:
            os.environ[STATIC_VIEWER_ENV] = before


def _prefer_this_python_kernel() -> None:
    # JUPYTER_PATH outranks a user's own ~/.local kernelspecs, so "python3" is this environment's python.
    venv_share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
    if venv_share not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([venv_share, *filter(None, paths)])


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path.resolve())


def run_all(profile: str, only: list[str] | None = None, results_dir: Path | None = None, work_dir: Path | None = None,
            max_minutes: float | None = None) -> list[NotebookResult]:
    """Run the chosen notebooks in order, printing progress and a per-notebook time summary.

    max_minutes: a time budget for this call (cryonb.budget); long loops stop at their next saved state
    after it and :class:`~cryonb.budget.PartDone` is raised; the same call later continues.
    """
    loaded = load_profile(profile)
    chosen = select_notebooks(only)
    check_profile(loaded)
    root = repo_root()
    out = results_dir or root / "results" / profile
    work = work_dir or root / "runs" / profile
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "params.yaml", loaded.path.read_text(encoding="utf-8"))  # the spec next to its results
    if max_minutes is not None:
        set_deadline(60 * max_minutes)
    results = []
    stopped: PartDone | None = None
    total_start = time.perf_counter()
    try:
        for i, nb in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {nb.stem} (profile {profile}) ...", flush=True)
            try:
                result = run_notebook(nb, notebook_parameters(loaded, nb.stem, out, work), out)
            except PartDone as exc:  # the budget ran out: report what finished, then say so
                stopped = exc
                break
            print(f"[{i}/{len(chosen)}] {nb.stem} done in {result.wall_s:.1f} s", flush=True)
            results.append(result)
    finally:
        if max_minutes is not None:
            clear_deadline()  # the budget belongs to this call, not to the rest of the process
    _summary(results, time.perf_counter() - total_start)
    _record_timings(out, profile, results)
    if stopped is not None:
        raise stopped
    return results


def _summary(results: list[NotebookResult], total: float) -> None:
    print("\nwall time per notebook:")
    for r in results:
        print(f"  {r.name:32s} {r.wall_s:8.1f} s")
    print(f"  {'total':32s} {total:8.1f} s")


def _record_timings(out: Path, profile: str, results: list[NotebookResult]) -> None:
    from cryonb.nb import environment

    path = out / "timings.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    previous.update({r.name: round(r.wall_s, 1) for r in results})
    write_text_atomic(path, json.dumps(previous, indent=2, sort_keys=True))
    write_text_atomic(out / "environment.json", json.dumps({"profile": profile, **environment()}, indent=2, sort_keys=True))
