"""The Colab cell: does nothing off Colab; on a (simulated) Colab, installs cryonb keeping the installed torch."""

import tempfile
from importlib.metadata import version
from pathlib import Path

import jupytext
import pytest

from cryonb import CryoNBError
from cryonb.colab import (
    KEEP_COLABS,
    badge_markdown,
    choose_profile,
    colab_url,
    install_commands,
    notebook_cell,
    on_colab,
    setup,
)
from cryonb.paths import repo_root
from cryonb.runner import list_notebooks


def test_on_colab_only_with_its_markers() -> None:
    assert not on_colab(environ={}, modules={})
    assert on_colab(environ={"COLAB_RELEASE_TAG": "release-colab_20260101"}, modules={})
    assert on_colab(environ={}, modules={"google.colab": object()})


def test_off_colab_nothing_runs_and_no_parameter_changes() -> None:
    ran = []
    assert setup("01_simulation", environ={}, modules={}, run_command=ran.append) == {}
    assert ran == []


def test_on_simulated_colab_the_install_keeps_torch_and_selects_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ran: list[list[str]] = []
    params = setup("01_simulation", environ={"COLAB_RELEASE_TAG": "x"}, modules={}, run_command=ran.append, repo_dir=repo_root())
    assert len(ran) == 2
    first, second = ran
    assert first[-3:] == ["--no-deps", "-e", str(repo_root())]
    constraints = Path(second[second.index("-c") + 1])
    assert constraints.read_text() == f"torch=={version('torch')}\n"
    requirements = [a for a in second[second.index("-c") + 2:]]
    assert requirements and not [r for r in requirements if r.split("=")[0].split("<")[0].split(">")[0] in KEEP_COLABS]
    assert any(r.startswith("numpy==") for r in requirements)
    # this machine has no GPU: the smoke profile, the notebook's smoke knobs, folders inside the clone
    assert params["profile"] == "smoke" and params["spec"]["seed"] is not None
    assert params["results_dir"] == "results/smoke" and params["work_dir"] == "runs/smoke"


def test_install_commands_never_name_torch(tmp_path: Path) -> None:
    commands = install_commands(repo_root(), "2.9.0+cu126", tmp_path / "c.txt", python="py")
    assert all(cmd[:4] == ["py", "-m", "pip", "install"] for cmd in commands)
    assert not any(arg.startswith("torch") and not arg.startswith("torch-") for cmd in commands for arg in cmd)


def test_profile_choice() -> None:
    assert choose_profile({}, cuda_available=False) == "smoke"
    assert choose_profile({}, cuda_available=True) == "quick"
    assert choose_profile({"CRYONB_COLAB_PROFILE": "quick"}, cuda_available=False) == "quick"
    with pytest.raises(CryoNBError, match="expected smoke or quick"):
        choose_profile({"CRYONB_COLAB_PROFILE": "paper"}, cuda_available=True)


@pytest.mark.parametrize("path", list_notebooks(), ids=lambda p: p.stem)
def test_every_notebook_has_the_colab_cell_after_its_parameters_and_a_badge(path: Path) -> None:
    nb = jupytext.read(path)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "colab" in tags[at + 1] and nb.cells[at + 1].source == notebook_cell(path.stem), \
        f"{path.name}: the cell after the parameters is not cryonb.colab.notebook_cell({path.stem!r})"
    assert sum("colab" in t for t in tags) == 1
    assert badge_markdown(path.stem) in nb.cells[0].source
    assert colab_url(path.stem).endswith(f"/results/quick/{path.stem}.ipynb")
