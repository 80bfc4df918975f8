"""`python -m cryonb train`: the models of a profile's spec, in the same files the notebooks use."""

from pathlib import Path

import pytest

from cryonb.cli import build_parser
from cryonb.cli import main as cli_main
from cryonb.experiments import cosnet as cosnet_experiment
from cryonb.experiments import cssl as cssl_experiment
from cryonb.spec import load_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_cosnet_writes_the_notebooks_checkpoints_and_reuses_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_profile("smoke").spec
    assert cli_main(["train", "cosnet", "--profile", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    paths = [cosnet_experiment.model_path(spec, *job, tmp_path) for job in spec.cosnet.evaluation.jobs()]
    assert all(p.is_file() and p.name in out for p in paths), out
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert cli_main(["train", "cosnet", "--profile", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # same content key: nothing retrained


def test_train_classifier_prints_the_checkpoint_classify_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "classifier", "--profile", "smoke", "--out", str(tmp_path), "--quiet"]) == 0
    path, _ = cssl_experiment.ensure_classifier(load_profile("smoke").spec, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert path.is_file() and f"--checkpoint {path}" in out, out  # outside the repository the path is printed whole


def test_unknown_profile_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "cosnet", "--profile", "../params/smoke"]) == 2
    assert "expected a name of letters, digits" in capsys.readouterr().err
    helps = {name: action.choices[name].format_help() for action in build_parser()._subparsers._group_actions for name in ("train", "classify")}
    assert "python -m cryonb train classifier" in helps["classify"] and "runs/quick/classifier/" in helps["classify"]
    assert "same checkpoints the notebooks use" in helps["train"]
