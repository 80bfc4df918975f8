"""The shared training loop: resume is bit-for-bit, NaN stops with the last good checkpoint, best model kept."""

from pathlib import Path

import pytest
import torch
from torch import nn

from cryonb import CryoNBError
from cryonb.train import TrainConfig, fit, load_checkpoint

X = torch.randn(24, 5, generator=torch.Generator().manual_seed(1))
Y = (X[:, 0] > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def _batches(epoch: int, g: torch.Generator):  # noqa: ANN202
    order = torch.randperm(len(X), generator=g)
    for i in range(0, len(X), 6):
        yield X[order[i : i + 6]], Y[order[i : i + 6]]


def _loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss": nn.functional.cross_entropy(m(b[0]), b[1])}


def _cfg(tmp: Path, epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=0.05, optimizer="sgd", scheduler="cosine", checkpoint_dir=tmp, progress=False)


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path: Path) -> None:
    straight = _model()
    fit(straight, _loss, _batches, _cfg(tmp_path / "a", 2))
    steps = iter(range(100))

    def kill_in_epoch_two(m: nn.Module, b: object, o: object) -> None:
        if next(steps) == 4:  # 4 steps per epoch: the first step of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_model(), _loss, _batches, _cfg(tmp_path / "b", 2), on_step_end=kill_in_epoch_two)
    again = _model()  # a new process starts from fresh weights and finds last.pt
    history = fit(again, _loss, _batches, _cfg(tmp_path / "b", 2))
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    for p, q in zip(straight.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model = _model()
    fit(model, _loss, _batches, _cfg(tmp_path, 1))
    good = load_checkpoint(tmp_path / "last.pt")

    def nan_loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": _loss(m, b)["loss"] * float("nan")}

    with pytest.raises(CryoNBError, match=r"epoch 2 step 1: loss is nan .*last good checkpoint kept at .*last\.pt"):
        fit(model, nan_loss, _batches, _cfg(tmp_path, 3))
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == good["epoch"] == 0


def test_best_model_is_kept_by_validation_metric(tmp_path: Path) -> None:
    scores = iter([0.2, 0.9, 0.5])
    history = fit(_model(), _loss, _batches, _cfg(tmp_path, 3), validate=lambda m: {"val_acc": next(scores)}, select_metric="val_acc")
    assert history.best_epoch == 2 and history.best_value == 0.9
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_bad_config_and_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match="optimizer must be 'adam' or 'sgd'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(CryoNBError, match="lr must be > 0"):
        TrainConfig(lr=0)
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(CryoNBError, match=r"x\.pt: not a cryonb checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: AMP runs only on a GPU")
def test_amp_on_cuda_trains(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="sgd", checkpoint_dir=tmp_path, progress=False, device="cuda")
    history = fit(_model(), _loss, _batches, cfg)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history.epochs)
