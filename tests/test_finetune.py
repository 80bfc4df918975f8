"""Fine-tuning sweep: pairing, encoder loading, resumable table, confusion matrix, paper-style table."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryonb import CryoNBError
from cryonb.finetune import FinetuneConfig, accuracy_table, confusion_matrix, finetune_run, load_finetuned, load_predictions, sweep
from cryonb.models.rb3d import RB3D

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


CFG = FinetuneConfig(inits=("random", "moco"), fractions=(0.5, 1.0), runs=2, epochs=2, lr=0.01, batch_size=4, width=4, embedding_dim=8, device="cpu")


@pytest.fixture()
def encoder(tmp_path: Path) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(123)
        model = RB3D(CFG.rb3d(2))
    path = tmp_path / "moco_encoder.pt"
    torch.save({"model": model.encoder_state()}, path)
    return path


def test_config_validation() -> None:
    with pytest.raises(CryoNBError, match="inits"):
        FinetuneConfig(inits=("byol",))
    with pytest.raises(CryoNBError, match=r"fractions \[0.0\]"):
        FinetuneConfig(fractions=(0.0,))
    with pytest.raises(CryoNBError, match=r"unknown fine-tuning parameter\(s\) \['epoch'\]"):
        FinetuneConfig.from_dict({"epoch": 3})
    assert FinetuneConfig().lr == 5e-4 and FinetuneConfig().epochs == 50 and FinetuneConfig().runs == 5
    # the list of cells does not change a run's result, so it does not change where runs are cached
    assert CFG.training_hash() == FinetuneConfig(**{**CFG.__dict__, "runs": 5, "fractions": (0.25,)}).training_hash()
    assert CFG.training_hash() != FinetuneConfig(**{**CFG.__dict__, "lr": 0.02}).training_hash()


def test_one_run_row_and_pretrained_weights(tmp_path: Path, encoder: Path) -> None:
    ds = TinyDataset()
    row = finetune_run(ds, CFG, 0.1, "moco", 0.5, 0, tmp_path, encoder)
    assert row["n_train"] == 6  # ceil(0.5 · 6) per class × 2 classes
    assert 1 <= row["best_epoch"] <= CFG.epochs
    pred = load_predictions(tmp_path, CFG, 0.1, "moco", 0.5, 0)
    assert len(pred) == 4 and row["test_acc"] == pytest.approx(np.mean(pred["label"] == pred["pred"]))
    with pytest.raises(CryoNBError, match="expected an encoder"):
        finetune_run(ds, CFG, 0.1, "moco", 0.5, 0, tmp_path, None)


def test_pretrained_and_random_runs_share_the_head_but_not_the_encoder(tmp_path: Path, encoder: Path) -> None:
    from cryonb.finetune import _build

    a, b = _build(CFG, 2, 7, None), _build(CFG, 2, 7, encoder)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)  # same seed → same head (pairing)
    assert not torch.allclose(a.stem[0].weight, b.stem[0].weight)
    torch.testing.assert_close(b.stem[0].weight, torch.load(encoder)["model"]["stem.0.weight"])
    torch.testing.assert_close(_build(CFG, 2, 7, None).stem[0].weight, a.stem[0].weight)  # no global RNG dependence


def test_sweep_is_resumable_and_gives_the_same_table(tmp_path: Path, encoder: Path) -> None:
    ds = {0.1: TinyDataset()}
    enc = lambda snr, init: encoder  # noqa: E731
    calls: list[str] = []
    full = sweep(ds, enc, CFG, tmp_path / "a", progress=False)
    assert len(full) == 2 * 2 * 2 and list(full["init"].unique()) == ["random", "moco"]
    part = sweep(ds, lambda s, i: calls.append(i) or encoder, CFG, tmp_path / "b", max_runs=3, progress=False)
    assert len(part) == 3
    again = sweep(ds, lambda s, i: calls.append(i) or encoder, CFG, tmp_path / "b", progress=False)
    cols = ["snr", "init", "fraction", "run", "seed", "n_train", "best_epoch", "val_acc", "test_acc"]
    pd.testing.assert_frame_equal(full[cols], again[cols], check_dtype=False)
    # a finished sweep runs nothing more and asks for no encoder
    n = len(calls)
    sweep(ds, lambda s, i: calls.append(i) or encoder, CFG, tmp_path / "b", progress=False)
    assert len(calls) == n
    model = load_finetuned(tmp_path / "b", CFG, 2, 0.1, "moco", 1.0, 1)
    assert isinstance(model, RB3D) and not model.training


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
    from cryonb.finetune import run_dir
    from cryonb.predict import Subtomograms, classify_predict

    ds = TinyDataset()
    finetune_run(ds, CFG, 0.1, "random", 1.0, 0, tmp_path)
    best = run_dir(tmp_path, CFG, 0.1, "random", 1.0, 0) / "best.pt"
    payload = torch.load(best, weights_only=True)
    assert payload["class_names"] == ["a", "b"] and payload["box"] == S and payload["seed"] == CFG.seed
    assert payload["model_config"]["pool_size"] == CFG.pool_size and payload["model_type"] == "rb3d"
    test = ds.indices("test")
    subtomos = Subtomograms(tmp_path, ds.volumes[test], pd.DataFrame(index=range(len(test))), None)
    table = classify_predict(best, subtomos)
    assert set(table["predicted"]) <= {"a", "b"} and np.allclose(table["p_a"] + table["p_b"], 1, atol=1e-5)
    wrong_box = Subtomograms(tmp_path, np.zeros((1, S + 2, S + 2, S + 2), np.float32), pd.DataFrame(index=[0]), None)
    with pytest.raises(CryoNBError, match=rf"trained on {S}³ boxes"):
        classify_predict(best, wrong_box)


def test_runs_on_different_data_never_share_a_folder(tmp_path: Path) -> None:
    from cryonb.finetune import data_key, run_dir

    a, b = (FinetuneConfig(**{**CFG.__dict__, "data_key": data_key([name])}) for name in ("cssl-snr0.1-n100-s0-aaa", "cssl-snr0.1-n80-s0-bbb"))
    assert run_dir(tmp_path, a, 0.1, "random", 1.0, 0) != run_dir(tmp_path, b, 0.1, "random", 1.0, 0)
    assert data_key(["x", "y"]) == data_key(["y", "x"]) and len(data_key(["x"])) == 12
