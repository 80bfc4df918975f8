"""Fine-tuning sweep: pairing, encoder loading, resumable table, confusion matrix, paper-style table."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryonb import CryoNBError, checkpoints
from cryonb.finetune import FinetuneConfig, SweepConfig, accuracy_table, finetune_run, load_finetuned, load_predictions, run_dir, sweep
from cryonb.metrics import confusion_matrix
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


S = 12  # tiny volumes keep each run well under a second


class TinyDataset:
    """Two classes (bright vs dark centre), 10 per class, 6/2/2 train/val/test per class."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        labels = np.repeat([0, 1], 10)
        vols = rng.normal(0, 1, (20, S, S, S)).astype(np.float32)
        vols[:, 4:8, 4:8, 4:8] += np.where(labels == 1, 2.0, -2.0)[:, None, None, None]
        split = np.tile(["train"] * 6 + ["val"] * 2 + ["test"] * 2, 2)
        self.volumes = vols
        self.meta = pd.DataFrame({"class_id": labels, "split": split})
        self.classes = ["a", "b"]

    def indices(self, split: str | None = "train") -> np.ndarray:
        return np.flatnonzero(self.meta["split"] == split) if split else np.arange(len(self.meta))


MODEL = RB3DConfig(n_classes=2, width=4, embedding_dim=8)
CFG = FinetuneConfig(model=MODEL, train=TrainConfig(epochs=2, lr=0.01, optimizer="sgd", scheduler="cosine"), batch_size=4)
CELLS = SweepConfig(inits=("random", "moco"), fractions=(0.5, 1.0), runs=2)


@pytest.fixture()
def encoder(tmp_path: Path) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(123)
        model = RB3D(MODEL)
    return checkpoints.save_model(tmp_path / "moco_encoder.pt", model, "rb3d-encoder")


def _run(ds: TinyDataset, folder: Path, fraction: float, encoder: Path | None, run: int = 0) -> dict:
    return finetune_run(ds, CFG, fraction=fraction, seed=run, base_seed=0, folder=folder, encoder=encoder)


def test_config_validation() -> None:
    with pytest.raises(CryoNBError, match="inits"):
        SweepConfig(inits=("byol",))
    with pytest.raises(CryoNBError, match=r"fractions \[0.0\]"):
        SweepConfig(fractions=(0.0,))
    with pytest.raises(CryoNBError, match=r"unknown finetune parameter\(s\) \['epoch'\]"):
        FinetuneConfig.from_dict({"epoch": 3}, MODEL)
    paper = FinetuneConfig()
    assert (paper.train.lr, paper.train.epochs, paper.train.optimizer, paper.train.scheduler) == (5e-4, 50, "sgd", "cosine")
    # a block sets what it names and keeps the paper's schedule for the rest
    assert FinetuneConfig.from_dict({"train": {"epochs": 3}}, MODEL).train == TrainConfig(epochs=3, lr=5e-4, optimizer="sgd", scheduler="cosine")
    assert SweepConfig().runs == 5 and SweepConfig(inits=("random", "swav")).methods == ("swav",)


def test_one_run_row_and_pretrained_weights(tmp_path: Path, encoder: Path) -> None:
    ds = TinyDataset()
    row = _run(ds, tmp_path / "r", 0.5, encoder)
    assert row["n_train"] == 6  # ceil(0.5 · 6) per class × 2 classes
    assert 1 <= row["best_epoch"] <= CFG.train.epochs
    index, label, predicted = np.load(tmp_path / "r" / "test_pred.npy")
    assert len(index) == 4 and row["test_acc"] == pytest.approx(np.mean(label == predicted))


def test_pretrained_and_random_runs_share_the_head_but_not_the_encoder(tmp_path: Path, encoder: Path) -> None:
    from cryonb.finetune import _build

    a, b = _build(MODEL, 7, None), _build(MODEL, 7, encoder)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)  # same seed → same head (pairing)
    assert not torch.allclose(a.stem[0].weight, b.stem[0].weight)
    torch.testing.assert_close(b.stem[0].weight, checkpoints.load(encoder, "rb3d-encoder")["model"]["stem.0.weight"])
    torch.testing.assert_close(_build(MODEL, 7, None).stem[0].weight, a.stem[0].weight)  # no global RNG dependence


def test_sweep_is_resumable_and_gives_the_same_table(tmp_path: Path, encoder: Path) -> None:
    ds = {0.1: TinyDataset()}
    enc = lambda snr, init, index: encoder  # noqa: E731
    calls: list[str] = []
    full = sweep(ds, enc, CFG, CELLS, tmp_path / "a", seed=0, progress=False)
    assert len(full) == 2 * 2 * 2 and list(full["init"].unique()) == ["random", "moco"]
    part = sweep(ds, lambda s, i, e: calls.append(i) or encoder, CFG, CELLS, tmp_path / "b", seed=0, max_runs=3, progress=False)
    assert len(part) == 3
    again = sweep(ds, lambda s, i, e: calls.append(i) or encoder, CFG, CELLS, tmp_path / "b", seed=0, progress=False)
    cols = ["snr", "init", "fraction", "run", "seed", "n_train", "best_epoch", "val_acc", "test_acc"]
    pd.testing.assert_frame_equal(full[cols], again[cols], check_dtype=False)
    # a finished sweep runs nothing more and asks for no encoder
    n = len(calls)
    sweep(ds, lambda s, i, e: calls.append(i) or encoder, CFG, CELLS, tmp_path / "b", seed=0, progress=False)
    assert len(calls) == n
    model = load_finetuned(tmp_path / "b", 0.1, "moco", 1.0, 1)
    assert isinstance(model, RB3D) and not model.training
    pred = load_predictions(tmp_path / "b", 0.1, "moco", 1.0, 1)
    assert len(pred) == 4 and again.query("init == 'moco' and fraction == 1.0 and run == 1").test_acc.item() == pytest.approx(np.mean(pred.label == pred.pred))


def test_confusion_matrix_and_accuracy_table() -> None:
    m = confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert m.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert confusion_matrix([0, 1], [1, 1], 2, normalize=False).tolist() == [[0, 1], [0, 1]]
    with pytest.raises(CryoNBError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)
    t = pd.DataFrame({"snr": 0.1, "init": ["random"] * 3 + ["moco"] * 3, "fraction": 0.25, "run": [0, 1, 2] * 2,
                      "test_acc": [0.5, 0.6, 0.7, 0.6, 0.6, 0.6]})
    tab = accuracy_table(t, 0.1, inits=("random", "moco"))
    assert tab.to_dict("records") == [{"init": "random", "25 %": "60.00 ± 10.00"}, {"init": "moco", "25 %": "60.00 ± 0.00"}]
    with pytest.raises(CryoNBError, match="no runs at SNR 0.05"):
        accuracy_table(t, 0.05)


def test_training_cap_is_stratified_and_the_same_for_every_run() -> None:
    from cryonb.finetune import _capped

    ds = TinyDataset()
    labels = ds.meta["class_id"].to_numpy()
    capped = _capped(ds.indices("train"), labels, 6, seed=0)
    assert np.bincount(labels[capped]).tolist() == [3, 3]
    assert set(capped) <= set(ds.indices("train"))
    np.testing.assert_array_equal(capped, _capped(ds.indices("train"), labels, 6, seed=0))
    np.testing.assert_array_equal(_capped(ds.indices("train"), labels, None, seed=0), ds.indices("train"))


def test_best_checkpoint_carries_what_classify_needs(tmp_path: Path) -> None:
    from cryonb.predict import Subtomograms, classify_predict

    ds = TinyDataset()
    _run(ds, tmp_path, 1.0, None)
    best = tmp_path / "best.pt"
    payload = checkpoints.load(best, "rb3d")
    assert payload["class_names"] == ["a", "b"] and payload["box"] == S and payload["seeds"] == {"run": 0, "sweep": 0}
    assert payload["model_config"]["pool_size"] == MODEL.pool_size and payload["kind"] == "rb3d" and payload["format_version"] == checkpoints.FORMAT_VERSION
    test = ds.indices("test")
    subtomos = Subtomograms(tmp_path, ds.volumes[test], pd.DataFrame(index=range(len(test))), None)
    table = classify_predict(best, subtomos)
    assert set(table["predicted"]) <= {"a", "b"} and np.allclose(table["p_a"] + table["p_b"], 1, atol=1e-5)
    wrong_box = Subtomograms(tmp_path, np.zeros((1, S + 2, S + 2, S + 2), np.float32), pd.DataFrame(index=[0]), None)
    with pytest.raises(CryoNBError, match=rf"trained on {S}³ boxes"):
        classify_predict(best, wrong_box)


def test_run_folders_name_every_cell(tmp_path: Path) -> None:
    assert run_dir(tmp_path, float("inf"), "moco", 0.25, 3) == tmp_path / "snrinf-moco-f0.25-r3"
    assert run_dir(tmp_path, 0.05, "random", 1.0, 0).name == "snr0.05-random-f1-r0"
