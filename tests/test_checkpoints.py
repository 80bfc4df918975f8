"""The one checkpoint module: round trips, clear errors, and no file we read can run code (issue #14 item 2)."""

import os
import re
from pathlib import Path

import pytest
import torch

from cryonb import CryoNBError, checkpoints
from cryonb.models.cosnet import COSNet, COSNetConfig
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.paths import repo_root

MARKER_ENV = "CRYONB_TEST_PAYLOAD_MARKER"


class Payload:
    """Unpickling this object runs ``os.system``: what a poisoned checkpoint would do."""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {os.environ[MARKER_ENV]}",))


@pytest.fixture()
def marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "code-ran"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


def _poisoned(path: Path, **extra: object) -> Path:
    torch.save({"model": {"w": torch.zeros(1)}, "history": Payload(), **extra}, path)
    return path


def test_model_round_trip_with_metadata(tmp_path: Path) -> None:
    net = RB3D(RB3DConfig(n_classes=3, width=4, embedding_dim=8))
    path = checkpoints.save_model(tmp_path / "m.pt", net, "rb3d", {"class_names": ["a", "b", "c"], "box": 32, "seeds": {"run": 1}})
    again, meta = checkpoints.load_model(path, "rb3d")
    assert meta["format_version"] == checkpoints.FORMAT_VERSION and meta["kind"] == "rb3d" and meta["seeds"] == {"run": 1}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items()) and not again.training
    enc = checkpoints.save_model(tmp_path / "e.pt", net, "rb3d-encoder")
    assert not any(k.startswith("classifier.") for k in checkpoints.load(enc, "rb3d-encoder")["model"])
    fresh = checkpoints.load_model(enc, "rb3d-encoder", n_classes=5)[0]
    assert fresh.classifier.out_features == 5 and torch.equal(fresh.stem[0].weight, net.stem[0].weight)
    cos = COSNet(COSNetConfig(base_channels=2, feature_dim=8))
    assert checkpoints.load_model(checkpoints.save_model(tmp_path / "c.pt", cos, "cosnet"), "cosnet")[0].config == cos.config


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match=r"nothing\.pt: no such checkpoint file"):
        checkpoints.load(tmp_path / "nothing.pt", "rb3d")
    with pytest.raises(CryoNBError, match=r": is a folder, expected a checkpoint file"):
        checkpoints.load(tmp_path, "rb3d")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CryoNBError, match=r"junk\.pt: not a readable cryonb checkpoint"):
        checkpoints.load(tmp_path / "junk.pt", "rb3d")
    net = RB3D(RB3DConfig(n_classes=2, width=4, embedding_dim=8))
    path = checkpoints.save_model(tmp_path / "m.pt", net, "rb3d")
    with pytest.raises(CryoNBError, match=r"m\.pt: checkpoint of model 'rb3d', expected 'cosnet'; use `python -m cryonb classify`"):
        checkpoints.load(path, "cosnet")
    with pytest.raises(CryoNBError, match=r"m\.pt: not a training state"):
        checkpoints.load_state(path)
    with pytest.raises(CryoNBError, match="checkpoint kind 'resnet'"):
        checkpoints.save_model(tmp_path / "x.pt", net, "resnet")


@pytest.mark.parametrize("reader", ["training state (fit resume)", "encoder (pretrain)", "encoder (fine-tuning init)", "classifier"])
def test_a_pickled_payload_never_runs(tmp_path: Path, marker: Path, reader: str) -> None:
    from cryonb.finetune import _build
    from cryonb.pretrain import load_encoder

    path = _poisoned(tmp_path / "last.pt", kind="training-state")
    calls = {
        "training state (fit resume)": lambda: checkpoints.load_state(path),
        "encoder (pretrain)": lambda: load_encoder(path),
        "encoder (fine-tuning init)": lambda: _build(RB3DConfig(width=4, embedding_dim=8), 0, path),
        "classifier": lambda: checkpoints.load_model(path, "rb3d"),
    }
    with pytest.raises(CryoNBError, match=r"last\.pt: not a readable cryonb checkpoint .*never pickled Python objects"):
        calls[reader]()
    assert not marker.exists(), "loading the checkpoint ran its payload"


def test_fit_refuses_a_poisoned_last_pt(tmp_path: Path, marker: Path) -> None:
    from torch import nn

    from cryonb.train import TrainConfig, fit

    _poisoned(tmp_path / "last.pt", kind="training-state")
    with pytest.raises(CryoNBError, match="never pickled Python objects"):
        fit(nn.Linear(2, 2), lambda m, b: {"loss": m(b).sum()}, lambda e, g: [torch.ones(1, 2)], TrainConfig(epochs=1), seed=0,
            checkpoint_dir=tmp_path, progress=False)
    assert not marker.exists()


def test_one_torch_load_in_the_package_and_it_is_weights_only() -> None:
    calls = []
    for path in (repo_root() / "cryonb").rglob("*.py"):
        calls += [(path.name, line) for line in path.read_text().splitlines() if re.search(r"\btorch\.load\(", line)]
    assert len(calls) == 1 and calls[0][0] == "checkpoints.py" and "weights_only=True" in calls[0][1], calls
