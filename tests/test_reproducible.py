"""Same seed, same numbers: two smoke runs of the pre-training notebook, each training from scratch in its
own work folder, write identical tables (issue: re-running reproduces the committed results)."""

from pathlib import Path

import pandas as pd
import pytest

from cryonb.runner import notebook_parameters, run_notebook, select_notebooks
from cryonb.spec import load_profile

pytestmark = pytest.mark.notebooks


def test_two_smoke_runs_give_identical_tables(tmp_path: Path) -> None:
    (notebook,) = select_notebooks(["03"])
    profile = load_profile("smoke")
    tables = []
    for attempt in ("a", "b"):
        results, work = tmp_path / attempt / "results", tmp_path / attempt / "work"
        run_notebook(notebook, notebook_parameters(profile, notebook.stem, results, work), results)
        tables.append({name: pd.read_csv(tmp_path / attempt / "results" / "tables" / f"{name}.csv") for name in ("03_knn_probe", "03_loss_curves")})
    for name in tables[0]:
        pd.testing.assert_frame_equal(tables[0][name], tables[1][name], check_exact=True, obj=name)
    assert len(tables[0]["03_loss_curves"]) > 0
