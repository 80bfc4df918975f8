"""Every notebook is a valid jupytext percent file with one tagged parameters cell, and every params key exists."""

import ast
from pathlib import Path

import jupytext
import pytest
import yaml

from cryonb.runner import RUNNER_PARAMETERS, list_notebooks, list_profiles
from cryonb.paths import repo_root

NOTEBOOKS = list_notebooks()


def _parameters_cells(path: Path) -> list[str]:
    nb = jupytext.read(path)
    return [c.source for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]


def _parameter_names(path: Path) -> set[str]:
    (source,) = _parameters_cells(path)
    tree = ast.parse(source)
    return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign)) for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_check.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupytext_header_with_kernelspec(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n"), f"{path.name}: no jupytext header"
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_declaring_runner_parameters(path: Path) -> None:
    cells = _parameters_cells(path)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged 'parameters' (papermill injects at the top when none is)"
    missing = set(RUNNER_PARAMETERS) - _parameter_names(path)
    assert not missing, f"{path.name}: parameters cell lacks {missing}"


@pytest.mark.parametrize("profile", ["quick", "paper", "smoke"])
def test_profile_files_exist(profile: str) -> None:
    assert profile in list_profiles()


@pytest.mark.parametrize("profile", list_profiles())
def test_every_params_key_is_a_notebook_parameter(profile: str) -> None:
    # papermill only warns on unknown parameters, so a typo in a params file would pass silently.
    doc = yaml.safe_load((repo_root() / "params" / f"{profile}.yaml").read_text())
    by_stem = {p.stem: p for p in NOTEBOOKS}
    for stem, params in doc.items():
        if stem not in by_stem:
            assert not params, f"params/{profile}.yaml sets parameters for {stem}, which is not a notebook"
            continue
        unknown = set(params) - _parameter_names(by_stem[stem])
        assert not unknown, f"params/{profile}.yaml: {stem} has no parameter(s) {sorted(unknown)}"


def test_no_committed_ipynb_sources() -> None:
    assert not list((repo_root() / "notebooks").glob("*.ipynb")) or (repo_root() / ".gitignore").read_text().count("notebooks/*.ipynb")
