"""Execute every notebook with the smoke profile (tiny data, seconds each) and check its outputs exist."""

import json
from pathlib import Path

import nbformat
import pytest

from cryonb.runner import list_notebooks, notebook_parameters, run_notebook
from cryonb.spec import load_profile

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("smoke")
    return base / "results", base / "work"


@pytest.mark.parametrize("path", list_notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_profile(path: Path, smoke_dirs: tuple[Path, Path]) -> None:
    results, work = smoke_dirs
    result = run_notebook(path, notebook_parameters(load_profile("smoke"), path.stem, results, work), results)
    nb = nbformat.read(result.output, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "a code cell did not run"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and nb.cells.index(injected[0]) > 0, "parameters were not injected after the tagged cell"
    assert f'profile = "smoke"' in injected[0].source
    figures = list((results / "figures").glob(f"{path.stem}_*.png"))
    assert figures, f"{path.stem} saved no figure"
