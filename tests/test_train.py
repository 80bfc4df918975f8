"""The shared training loop: resume is bit-for-bit, NaN stops with the last good checkpoint, best model kept."""

from pathlib import Path

import pytest
import torch
from torch import nn

from cryonb import CryoNBError
from cryonb import checkpoints
from cryonb.train import TrainConfig, fit, recalibrate_batchnorm

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


def _cfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=0.05, optimizer="sgd", scheduler="cosine")


def _fit(model: nn.Module, folder: Path | None, epochs: int, **kw: object):  # noqa: ANN202
    return fit(model, kw.pop("loss", _loss), _batches, _cfg(epochs), seed=0, checkpoint_dir=folder, progress=False, **kw)


def test_two_epochs_equal_one_plus_resume_plus_one(tmp_path: Path) -> None:
    straight = _model()
    _fit(straight, tmp_path / "a", 2)
    steps = iter(range(100))

    def kill_in_epoch_two(m: nn.Module, b: object, o: object) -> None:
        if next(steps) == 4:  # 4 steps per epoch: the first step of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(_model(), tmp_path / "b", 2, on_step_end=kill_in_epoch_two)
    again = _model()  # a new process starts from fresh weights and finds last.pt
    history = _fit(again, tmp_path / "b", 2)
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    for p, q in zip(straight.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    model = _model()
    _fit(model, tmp_path, 1)
    good = checkpoints.load_state(tmp_path / "last.pt")

    def nan_loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": _loss(m, b)["loss"] * float("nan")}

    with pytest.raises(CryoNBError, match=r"epoch 2 step 1: loss is nan .*last good checkpoint kept at .*last\.pt"):
        _fit(model, tmp_path, 3, loss=nan_loss)
    assert checkpoints.load_state(tmp_path / "last.pt")["epoch"] == good["epoch"] == 0


def test_best_model_is_kept_by_validation_metric(tmp_path: Path) -> None:
    from cryonb.models.rb3d import RB3D, RB3DConfig

    scores = iter([0.2, 0.9, 0.5])
    model = RB3D(RB3DConfig(n_classes=2, width=4, embedding_dim=8))
    x = torch.randn(4, 1, 8, 8, 8)

    def batches(epoch: int, g: torch.Generator):  # noqa: ANN202
        yield x, torch.tensor([0, 1, 0, 1])

    history = fit(model, _loss, batches, _cfg(3), seed=0, checkpoint_dir=tmp_path, progress=False, validate=lambda m: {"val_acc": next(scores)},
                  select_metric="val_acc", best_kind="rb3d", best_meta={"class_names": ["a", "b"]})
    assert history.best_epoch == 2 and history.best_value == 0.9
    best = checkpoints.load(tmp_path / "best.pt", "rb3d")
    assert best["epoch"] == 1 and best["class_names"] == ["a", "b"] and best["kind"] == "rb3d"
    assert all(torch.equal(best["model"][k], v) for k, v in history.best_state.items())
    assert checkpoints.load_state(tmp_path / "last.pt")["history"]["best_epoch"] == 2


def test_bad_config_and_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match="optimizer='rmsprop': expected 'adam' or 'sgd'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(CryoNBError, match="lr=0: expected lr > 0"):
        TrainConfig(lr=0)
    with pytest.raises(CryoNBError, match=r"unknown train parameter\(s\) \['batch_size'\]"):
        TrainConfig.from_dict({"batch_size": 16})
    assert TrainConfig.from_dict({"lr": 0.1}, TrainConfig(epochs=7)) == TrainConfig(epochs=7, lr=0.1)
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(CryoNBError, match=r"x\.pt: not a cryonb checkpoint"):
        checkpoints.load_state(tmp_path / "x.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: AMP runs only on a GPU")
def test_amp_on_cuda_trains(tmp_path: Path) -> None:
    history = fit(_model(), _loss, _batches, TrainConfig(epochs=2, lr=0.05, optimizer="sgd"), seed=0, device="cuda",
                  checkpoint_dir=tmp_path, progress=False)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history.epochs)


def test_recalibrate_batchnorm_gives_exact_statistics_and_restores_modes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    net.train()
    recalibrate_batchnorm(net, torch.randn(50, 3), batch_size=7)  # 50 = 7 × 7 + 1: no batch of one
    x = torch.randn(49, 3) * 2 + 1
    recalibrate_batchnorm(net, x, batch_size=7)  # equal batches: the mean of batch means is the mean
    with torch.no_grad():
        h = net[0](x)
    bn = net[1]
    assert torch.allclose(bn.running_mean, h.mean(0), atol=1e-5)
    # the average of per-batch variances misses the spread of the batch means: close, not equal
    assert torch.allclose(bn.running_var, h.var(0), rtol=0.15)
    assert bn.momentum == 0.1 and net.training and net[2].training
    net.eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    recalibrate_batchnorm(net, x, batch_size=7)
    assert not net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # deterministic
