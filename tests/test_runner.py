"""The notebook runner: clear errors for unknown notebooks and profiles, and a failing cell is named."""

from pathlib import Path

import pytest

from cryonb import CryoNBError
from cryonb.cli import main as cli_main
from cryonb.runner import run_notebook, select_notebooks
from cryonb.spec import load_profile

HEADER = """# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---
"""


def test_unknown_notebook_lists_available() -> None:
    with pytest.raises(CryoNBError, match=r"unknown notebook '99'; available: 00_setup_check"):
        select_notebooks(["99"])


def test_select_by_number_and_stem() -> None:
    assert [p.stem for p in select_notebooks(["0"])] == ["00_setup_check"]
    assert [p.stem for p in select_notebooks(["00_setup_check"])] == ["00_setup_check"]


def test_unknown_profile() -> None:
    with pytest.raises(CryoNBError, match=r"unknown profile 'gpu'.*profiles are paper, quick, smoke"):
        load_profile("gpu")


def test_cli_exit_code_for_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["run", "--profile", "gpu"]) == 2
    assert "unknown profile 'gpu'" in capsys.readouterr().err


@pytest.mark.notebooks
def test_failing_cell_is_named_and_parameters_injected(tmp_path: Path) -> None:
    nb = tmp_path / "42_broken.py"
    nb.write_text(
        HEADER
        + '\n# %% tags=["parameters"]\nprofile = "x"\nresults_dir = "r"\nwork_dir = "w"\nvalue = 1\n'
        + "\n# %%\nassert value == 7, f'value is {value}'\n"
    )
    with pytest.raises(CryoNBError, match=r"42_broken\.py failed in cell 3 \(index 2\) .*AssertionError: value is 3"):
        run_notebook(nb, {"value": 3, "profile": "smoke"}, tmp_path / "out")
    assert (tmp_path / "out" / "42_broken.failed.ipynb").is_file()
    assert not (tmp_path / "out" / "42_broken.ipynb").exists()


@pytest.mark.notebooks
def test_a_rerun_drops_the_notebooks_outputs_it_no_longer_writes_and_keeps_the_rest(tmp_path: Path) -> None:
    nb = tmp_path / "42_tables.py"
    nb.write_text(
        HEADER
        + '\n# %% tags=["parameters"]\nprofile = "x"\nresults_dir = "r"\nfail = False\n'
        + "\n# %%\nfrom pathlib import Path\nassert not fail, 'asked to fail'\n"
        + "(Path(results_dir) / 'tables' / '42_kept.csv').write_text('new')\n"
    )
    out = tmp_path / "out"
    earlier = {"tables/42_kept.csv": "old", "tables/42_renamed.csv": "old", "figures/42_tables_gone.png": "old",
               "tables/43_other_notebook.csv": "other", "tables/claims.csv": "report"}
    for name, text in earlier.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    with pytest.raises(CryoNBError, match="asked to fail"):
        run_notebook(nb, {"results_dir": str(out), "fail": True}, out)
    assert all((out / name).read_text() == text for name, text in earlier.items()), "a failed run removes nothing"

    run_notebook(nb, {"results_dir": str(out)}, out)
    assert (out / "tables/42_kept.csv").read_text() == "new"
    assert not (out / "tables/42_renamed.csv").exists() and not (out / "figures/42_tables_gone.png").exists()
    assert (out / "tables/43_other_notebook.csv").read_text() == "other" and (out / "tables/claims.csv").read_text() == "report"
