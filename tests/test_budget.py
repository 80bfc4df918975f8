"""Time budgets: a run stops at its next saved state once the deadline passes, and the same call continues it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cryonb import budget
from cryonb.budget import PartDone
from cryonb.cli import PART_DONE_EXIT
from cryonb.cli import main as cli_main
from cryonb.runner import run_notebook
from cryonb.train import TrainConfig, fit

from test_runner import HEADER
from test_train import _batches, _fit, _loss, _model


@pytest.fixture(autouse=True)
def _no_deadline_left_behind():
    budget.clear_deadline()
    yield
    budget.clear_deadline()


def test_deadline_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert budget.time_left() is None
    budget.check("nothing")  # no budget: never stops
    budget.set_deadline(100)
    assert 99 < budget.time_left() <= 100
    budget.check("early")
    monkeypatch.setenv(budget.DEADLINE_ENV, "0")  # long past
    with pytest.raises(PartDone, match="time budget used up after step 7; progress is saved: run the same command again"):
        budget.check("step 7")
    monkeypatch.setenv(budget.DEADLINE_ENV, "soon")
    with pytest.raises(budget.CryoNBError, match="CRYONB_DEADLINE='soon': expected a Unix time"):
        budget.time_left()
    with pytest.raises(budget.CryoNBError, match="time budget -1 s"):
        budget.set_deadline(-1)


def test_fit_stops_after_a_saved_epoch_and_continues_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = _model()
    _fit(straight, tmp_path / "a", 3)
    monkeypatch.setenv(budget.DEADLINE_ENV, "0")
    with pytest.raises(PartDone, match=r"epoch 1/3 .*last\.pt"):
        _fit(_model(), tmp_path / "b", 3)
    monkeypatch.delenv(budget.DEADLINE_ENV)
    again = _model()
    history = _fit(again, tmp_path / "b", 3)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3]
    for p, q in zip(straight.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)


def test_fit_without_checkpoints_ignores_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(budget.DEADLINE_ENV, "0")  # nothing saved, so stopping would lose the work
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="sgd")
    assert len(fit(_model(), _loss, _batches, cfg, seed=0, progress=False).epochs) == 2


def test_finetune_sweep_stops_between_runs_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from test_finetune import CFG, TinyDataset

    from cryonb.finetune import SweepConfig, sweep

    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, epochs=1))
    cells = SweepConfig(inits=("random",), fractions=(1.0,), runs=2)
    monkeypatch.setenv(budget.DEADLINE_ENV, "0")
    with pytest.raises(PartDone, match="fine-tuning run 1/2"):
        sweep({0.1: TinyDataset()}, lambda s, i, e: None, cfg, cells, tmp_path, seed=0, progress=False)
    monkeypatch.delenv(budget.DEADLINE_ENV)
    table = sweep({0.1: TinyDataset()}, lambda s, i, e: None, cfg, cells, tmp_path, seed=0, progress=False)
    assert sorted(table["run"]) == [0, 1]
    fresh = sweep({0.1: TinyDataset()}, lambda s, i, e: None, cfg, cells, tmp_path / "fresh", seed=0, progress=False)
    assert np.allclose(table["test_acc"], fresh["test_acc"])


@pytest.mark.notebooks
def test_runner_reports_a_part_and_keeps_the_partial_notebook(tmp_path: Path) -> None:
    nb = tmp_path / "43_long.py"
    nb.write_text(
        HEADER
        + '\n# %% tags=["parameters"]\nprofile = "x"\nresults_dir = "r"\nwork_dir = "w"\n'
        + "\n# %%\nfrom cryonb.budget import PartDone\nraise PartDone('time budget used up after epoch 2/50')\n"
    )
    with pytest.raises(PartDone, match=r"43_long\.py: time budget used up after epoch 2/50"):
        run_notebook(nb, {"profile": "smoke"}, tmp_path / "out")
    assert (tmp_path / "out" / "43_long.partial.ipynb").is_file()
    assert not (tmp_path / "out" / "43_long.failed.ipynb").exists()


def test_cli_exit_status_for_a_part(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import cryonb.commands.run as run_command

    def stop(*args: object, **kwargs: object) -> None:
        raise PartDone("time budget used up after epoch 1/2")

    monkeypatch.setattr(run_command, "run_all", stop)
    assert cli_main(["run", "--profile", "smoke", "--max-minutes", "1"]) == PART_DONE_EXIT == 3
    assert "part done: time budget used up" in capsys.readouterr().err


def test_simulator_stops_after_a_chunk_and_resumes_to_the_same_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_simulate import _tiny

    from cryonb.simulate import ensure_dataset, generate_dataset, load_dataset

    whole = ensure_dataset(_tiny(0), n_workers=1, progress=False, root_dir=tmp_path / "a")
    monkeypatch.setenv(budget.DEADLINE_ENV, "0")
    with pytest.raises(PartDone, match=r"1/4 chunks of tiny"):
        generate_dataset(_tiny(0), tmp_path / "b" / "x", n_workers=1, chunk_size=3, progress=False)
    assert not (tmp_path / "b" / "x").exists() and (tmp_path / "b" / "x.partial").is_dir()
    monkeypatch.delenv(budget.DEADLINE_ENV)
    parts = load_dataset(generate_dataset(_tiny(0), tmp_path / "b" / "x", n_workers=1, chunk_size=3, progress=False))
    assert np.array_equal(np.asarray(whole.volumes), np.asarray(parts.volumes))
    assert whole.meta.equals(parts.meta)


def test_cosnet_training_stops_at_a_partial_checkpoint_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_oneshot import CFG, _toy

    from cryonb.oneshot import train_cosnet

    ds = _toy()
    args = (CFG.for_job("SCNN", 2), ds.volumes, ds.masks, ds.meta["class_id"].to_numpy(), ds.indices(class_split="seen"))
    straight, _ = train_cosnet(*args, seed=3, checkpoint_dir=tmp_path / "a", progress=False)
    monkeypatch.setenv(budget.DEADLINE_ENV, "0")
    with pytest.raises(PartDone, match=r"epoch 1/2 \(.*b/last\.pt\)"):
        train_cosnet(*args, seed=3, checkpoint_dir=tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "last.pt").is_file()
    monkeypatch.delenv(budget.DEADLINE_ENV)
    resumed, _ = train_cosnet(*args, seed=3, checkpoint_dir=tmp_path / "b", progress=False)
    for k, v in straight.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k


def test_run_all_keeps_its_budget_to_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cryonb.runner as runner

    monkeypatch.setattr(runner, "select_notebooks", lambda only: [])
    runner.run_all("smoke", max_minutes=5, results_dir=tmp_path / "out", work_dir=tmp_path / "work")
    assert budget.time_left() is None
