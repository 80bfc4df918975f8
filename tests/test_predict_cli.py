"""`oneshot` (and `classify` when present): extract folder + checkpoint in, predictions out; bad inputs named."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryonb.cli import main as cli_main
from cryonb.errors import CryoNBError
from cryonb.io import save_npy_atomic, write_mrc
from cryonb.models.cosnet import COSNet, COSNetConfig
from cryonb.checkpoints import load as load_checkpoint
from cryonb.predict import load_subtomograms, oneshot_predict, read_support

BOX = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subtomos(folder: Path, n: int = 6, seed: int = 0) -> Path:
    """An extract-style folder: z-scored random volumes + meta.csv at 10 Å."""
    rng = np.random.default_rng(seed)
    vols = rng.standard_normal((n, BOX, BOX, BOX), dtype=np.float32)
    vols = (vols - vols.mean(axis=(1, 2, 3), keepdims=True)) / vols.std(axis=(1, 2, 3), keepdims=True)
    save_npy_atomic(folder / "volumes.npy", vols.astype(np.float32))
    meta = pd.DataFrame({"index": range(n), "x": np.arange(n) * 10.0, "y": 5.0, "z": 7.0,
                         "border": [False] * (n - 1) + [True], "voxel_size_a": 10.0})
    meta.to_csv(folder / "meta.csv", index=False)
    return folder


def _cosnet_checkpoint(path: Path, **overrides: object) -> Path:
    torch.manual_seed(0)
    cfg = COSNetConfig(base_channels=2, feature_dim=8, feature_pool=1, box=BOX, match_head="monotone")
    net = COSNet(cfg).eval()
    payload = {"variant": "DuSE-SCNN+decoder", "model_config": cfg.as_dict(), "seed": 3,
               "model": {k: v.cpu() for k, v in net.state_dict().items()}, "log": [{"step": 1, "loss": 0.5}]}
    payload.update(overrides)
    torch.save(payload, path)
    return path


def _support(folder: Path, subtomos: Path, picks: dict[str, list[int]]) -> Path:
    vols = np.load(subtomos / "volumes.npy")
    for name, idx in picks.items():
        for i in idx:
            write_mrc(folder / name / f"s{i}.mrc", vols[i], 10.0)
    return folder


def test_oneshot_cli_classifies_support_copies_as_their_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = _subtomos(tmp_path / "sub")
    ckpt = _cosnet_checkpoint(tmp_path / "cos.pt")
    support = _support(tmp_path / "support", sub, {"alpha": [1], "beta": [4], "gamma": [2]})
    rc = cli_main(["oneshot", str(sub), "--support", str(support), "--checkpoint", str(ckpt)])
    assert rc == 0
    assert "classified 6 subtomograms against 3 classes" in capsys.readouterr().out
    table = pd.read_csv(sub / "oneshot" / "oneshot.csv")
    assert len(table) == 6 and list(table["index"]) == list(range(6))
    probs = table[["p_alpha", "p_beta", "p_gamma"]].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    assert list(table["predicted"]) == [["alpha", "beta", "gamma"][j] for j in probs.argmax(1)]
    # The monotone head scores distance 0 highest: a subtomogram identical to a support is that class.
    assert table.loc[1, "predicted"] == "alpha" and table.loc[4, "predicted"] == "beta" and table.loc[2, "predicted"] == "gamma"
    assert list(table["border"]) == [False] * 5 + [True] and set(table["seed"]) == {3}
    masks = np.load(sub / "oneshot" / "masks.npy")
    assert masks.shape == (6, BOX, BOX, BOX) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    with mrcfile.open(sub / "oneshot" / "masks" / "mask_000005.mrc") as mrc:
        np.testing.assert_allclose(mrc.data, masks[5])
        assert float(mrc.voxel_size.x) == pytest.approx(10.0)


def test_k_shot_support_averages_embeddings(tmp_path: Path) -> None:
    sub = _subtomos(tmp_path / "sub")
    ckpt = _cosnet_checkpoint(tmp_path / "cos.pt")
    subtomos = load_subtomograms(sub)
    one = oneshot_predict(ckpt, subtomos, read_support(_support(tmp_path / "s1", sub, {"a": [0], "b": [3]}), BOX, 10.0))[0]
    two = oneshot_predict(ckpt, subtomos, read_support(_support(tmp_path / "s2", sub, {"a": [0, 1], "b": [3]}), BOX, 10.0))[0]
    np.testing.assert_allclose(one["p_b"], two["p_b"], rtol=1e-5)
    assert not np.allclose(one["p_a"], two["p_a"])


def test_support_with_one_class_is_rejected(tmp_path: Path) -> None:
    sub = _subtomos(tmp_path / "sub")
    support = _support(tmp_path / "support", sub, {"only": [0, 1]})
    with pytest.raises(CryoNBError, match=r"support folder has 1 class\(es\) \(only\); one-shot classification needs at least 2"):
        read_support(support, BOX, 10.0)
    rc = cli_main(["oneshot", str(sub), "--support", str(support), "--checkpoint", str(tmp_path / "x.pt")])
    assert rc == 2 and not (sub / "oneshot").exists()


def test_support_of_another_box_or_voxel_size_is_rejected(tmp_path: Path) -> None:
    write_mrc(tmp_path / "s" / "a.mrc", np.ones((8, 8, 8), np.float32), 10.0)
    write_mrc(tmp_path / "s" / "b.mrc", np.ones((8, 8, 8), np.float32), 10.0)
    with pytest.raises(CryoNBError, match=r"a\.mrc: support volume has shape \(8, 8, 8\), expected \(16, 16, 16\)"):
        read_support(tmp_path / "s", BOX, 10.0)
    write_mrc(tmp_path / "t" / "a.mrc", np.ones((16, 16, 16), np.float32), 5.0)
    write_mrc(tmp_path / "t" / "b.mrc", np.ones((16, 16, 16), np.float32), 5.0)
    with pytest.raises(CryoNBError, match=r"a\.mrc: support voxel size 5 Å, expected 10 Å"):
        read_support(tmp_path / "t", BOX, 10.0)


def test_checkpoint_of_another_model_is_rejected(tmp_path: Path) -> None:
    ckpt = tmp_path / "rb3d.pt"
    torch.save({"model_type": "rb3d", "model": {"w": torch.zeros(2)}}, ckpt)
    with pytest.raises(CryoNBError, match=r"rb3d\.pt: checkpoint of model 'rb3d', expected 'cosnet'; use `python -m cryonb classify`"):
        load_checkpoint(ckpt, "cosnet")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CryoNBError, match=r"other\.pt: not a cryonb checkpoint"):
        load_checkpoint(tmp_path / "other.pt", "cosnet")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CryoNBError, match=r"junk\.pt: not a readable cryonb checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", "cosnet")


def test_checkpoint_of_incompatible_version_is_rejected(tmp_path: Path) -> None:
    sub = _subtomos(tmp_path / "sub")
    support = read_support(_support(tmp_path / "s", sub, {"a": [0], "b": [3]}), BOX, 10.0)
    subtomos = load_subtomograms(sub)
    good = _cosnet_checkpoint(tmp_path / "good.pt")
    state = torch.load(good, weights_only=True)
    cfg = dict(state["model_config"], future_option=True)
    bad_cfg = _cosnet_checkpoint(tmp_path / "cfg.pt", model_config=cfg)
    with pytest.raises(CryoNBError, match=r"cfg\.pt: COS-Net checkpoint incompatible with this cryonb version.*future_option"):
        oneshot_predict(bad_cfg, subtomos, support)
    weights = dict(state["model"])
    weights.pop("match.bias")
    bad_weights = _cosnet_checkpoint(tmp_path / "w.pt", model=weights)
    with pytest.raises(CryoNBError, match=r"w\.pt: COS-Net checkpoint incompatible with this cryonb version.*match\.bias"):
        oneshot_predict(bad_weights, subtomos, support)


def test_subtomogram_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CryoNBError, match=r"empty: expected volumes\.npy and meta\.csv from `python -m cryonb extract`"):
        load_subtomograms(tmp_path / "empty")
    sub = _subtomos(tmp_path / "sub")
    pd.read_csv(sub / "meta.csv").iloc[:3].to_csv(sub / "meta.csv", index=False)
    with pytest.raises(CryoNBError, match=r"meta\.csv has 3 rows but volumes\.npy holds 6 volumes"):
        load_subtomograms(sub)


def _rb3d_checkpoint(path: Path, **overrides: object) -> Path:
    from cryonb.models.rb3d import RB3D, RB3DConfig

    torch.manual_seed(1)
    cfg = RB3DConfig(n_classes=3, width=4, embedding_dim=8, dropout=0.0)
    net = RB3D(cfg).eval()
    payload = {"model_type": "rb3d", "model_config": dict(cfg.__dict__), "model": net.state_dict(),
               "class_names": ["ribosome", "proteasome", "tric"], "box": BOX, "voxel_size_a": 10.0, "seed": 7}
    payload.update(overrides)
    torch.save(payload, path)
    return path


def test_classify_cli_writes_softmax_probabilities_csv_and_star(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("cryonb.models.rb3d")
    sub = _subtomos(tmp_path / "sub")
    ckpt = _rb3d_checkpoint(tmp_path / "rb3d.pt")
    assert cli_main(["classify", str(sub), "--checkpoint", str(ckpt), "--tomo-name", "TS_01"]) == 0
    assert "classified 6 subtomograms" in capsys.readouterr().out
    table = pd.read_csv(sub / "classify" / "predictions.csv")
    probs = table[["p_ribosome", "p_proteasome", "p_tric"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert list(table["class_number"]) == list(probs.argmax(1) + 1)
    np.testing.assert_allclose(table["probability"], probs.max(1), rtol=1e-6)
    # Same numbers as the model itself on the same volumes.
    from cryonb.models.rb3d import RB3D, RB3DConfig

    payload = torch.load(ckpt, weights_only=True)
    net = RB3D(RB3DConfig(**payload["model_config"]))
    net.load_state_dict(payload["model"])
    with torch.no_grad():
        ref = torch.softmax(net.eval()(torch.from_numpy(np.load(sub / "volumes.npy"))[:, None]), 1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    star = starfile.read(sub / "classify" / "predictions.star")
    assert list(star["rlnClassNumber"]) == list(table["class_number"]) and set(star["rlnTomoName"]) == {"TS_01"}
    np.testing.assert_allclose(star["rlnCoordinateX"], table["x"])


def test_classify_rejects_other_model_version_and_mismatched_data(tmp_path: Path) -> None:
    pytest.importorskip("cryonb.models.rb3d")
    from cryonb.predict import classify_predict

    subtomos = load_subtomograms(_subtomos(tmp_path / "sub"))
    with pytest.raises(CryoNBError, match=r"cos\.pt: checkpoint of model 'cosnet', expected 'rb3d'; use `python -m cryonb oneshot`"):
        classify_predict(_cosnet_checkpoint(tmp_path / "cos.pt"), subtomos)
    with pytest.raises(CryoNBError, match=r"new\.pt: checkpoint format_version 7 is newer than this cryonb reads \(2\)"):
        classify_predict(_rb3d_checkpoint(tmp_path / "new.pt", format_version=7), subtomos)
    wide = _rb3d_checkpoint(tmp_path / "wide.pt")
    payload = torch.load(wide, weights_only=True)
    payload["model_config"]["width"] = 8  # weights no longer fit the architecture
    torch.save(payload, wide)
    with pytest.raises(CryoNBError, match=r"wide\.pt: RB3D checkpoint incompatible with this cryonb version.*size mismatch"):
        classify_predict(wide, subtomos)
    with pytest.raises(CryoNBError, match=r"box\.pt: model trained on 32³ boxes, the subtomograms are 16³; re-extract with --box 32"):
        classify_predict(_rb3d_checkpoint(tmp_path / "box.pt", box=32), subtomos)
    with pytest.raises(CryoNBError, match=r"vs\.pt: model trained at 13\.6 Å voxels, the subtomograms are 10 Å"):
        classify_predict(_rb3d_checkpoint(tmp_path / "vs.pt", voxel_size_a=13.6), subtomos)


def test_classify_reads_a_train_fit_best_checkpoint(tmp_path: Path) -> None:
    """cryonb.train.fit's best.pt holds only {"model", "epoch", "model_class"}: the config comes from the weights."""
    pytest.importorskip("cryonb.models.rb3d")
    from cryonb.predict import classify_predict

    src = torch.load(_rb3d_checkpoint(tmp_path / "full.pt"), weights_only=True)
    best = tmp_path / "best.pt"
    torch.save({"model": src["model"], "epoch": 3, "model_class": "RB3D"}, best)
    subtomos = load_subtomograms(_subtomos(tmp_path / "sub"))
    table = classify_predict(best, subtomos)
    full = classify_predict(tmp_path / "full.pt", subtomos)
    np.testing.assert_allclose(table[["p_class_0", "p_class_1", "p_class_2"]].to_numpy(),
                               full[["p_ribosome", "p_proteasome", "p_tric"]].to_numpy(), atol=1e-6)
    state = tmp_path / "last.pt"
    torch.save({"model": src["model"], "history": object.__new__(FakeHistory)}, state)
    with pytest.raises(CryoNBError, match=r"last\.pt: not a readable cryonb checkpoint.*never pickled Python objects"):
        classify_predict(state, subtomos)


class FakeHistory:
    """Stands in for cryonb.train.History: a Python object that weights_only loading refuses."""


def test_silent_wrong_predictions_become_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #14 item 5: NaN weights or outputs, bad batch sizes, flat support boxes, a voxel-size mismatch."""
    from cryonb.predict import classify_predict

    sub = _subtomos(tmp_path / "sub")
    subtomos = load_subtomograms(sub)
    good = _rb3d_checkpoint(tmp_path / "rb3d.pt")
    payload = torch.load(good, weights_only=True)
    payload["model"]["classifier.weight"][0, 0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(CryoNBError, match=r"nan\.pt: weights \['classifier\.weight'\] hold NaN or inf \(the training diverged\)"):
        classify_predict(tmp_path / "nan.pt", subtomos)
    for size in (-1, 0):
        assert cli_main(["classify", str(sub), "--checkpoint", str(good), "--batch-size", str(size)]) == 2
        assert f"batch size {size}: expected an integer ≥ 1" in capsys.readouterr().err
    vols = np.load(sub / "volumes.npy")
    vols[2] = np.nan
    save_npy_atomic(tmp_path / "nanvol" / "volumes.npy", vols)
    (tmp_path / "nanvol" / "meta.csv").write_text((sub / "meta.csv").read_text())
    with pytest.raises(CryoNBError, match=r"outputs are NaN or inf for 1 of 6 subtomograms \(first: 2\)"):
        classify_predict(good, load_subtomograms(tmp_path / "nanvol"))
    write_mrc(tmp_path / "flat" / "a.mrc", np.ones((BOX, BOX, BOX), np.float32), 10.0)
    write_mrc(tmp_path / "flat" / "b.mrc", vols[0], 10.0)
    with pytest.raises(CryoNBError, match=r"a\.mrc: support volume is flat"):
        read_support(tmp_path / "flat", BOX, 10.0)
    support_dir = _support(tmp_path / "s", sub, {"a": [0], "b": [3]})
    cosnet = _cosnet_checkpoint(tmp_path / "cos.pt")
    for size in (-1, 0):
        assert cli_main(["oneshot", str(sub), "--support", str(support_dir), "--checkpoint", str(cosnet), "--batch-size", str(size)]) == 2
        assert f"batch size {size}: expected an integer ≥ 1" in capsys.readouterr().err
    support = read_support(support_dir, BOX, 10.0)
    at_13 = _cosnet_checkpoint(tmp_path / "cos13.pt", voxel_size_a=13.6)
    with pytest.raises(CryoNBError, match=r"cos13\.pt: model trained at 13\.6 Å voxels, the subtomograms are 10 Å; re-extract with --voxel-size-a 13\.6"):
        oneshot_predict(at_13, subtomos, support)


def test_prediction_outputs_are_guarded_and_replaced_as_a_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = _subtomos(tmp_path / "sub")
    ckpt = _cosnet_checkpoint(tmp_path / "cos.pt")
    support = _support(tmp_path / "support", sub, {"alpha": [1], "beta": [4]})
    # -o onto the input folder would replace what the predictions are read from: refused before the model runs
    assert cli_main(["classify", str(sub), "--checkpoint", str(tmp_path / "none.pt"), "-o", str(sub)]) == 2
    assert f"{sub}: contains the input {sub}; the output would replace it" in capsys.readouterr().err
    dataset = tmp_path / "data-set"
    dataset.mkdir()
    (dataset / "recipe.json").write_text("{}")
    (dataset / "masks.npy").write_bytes(b"the data set's masks")
    args = ["oneshot", str(sub), "--support", str(support), "--checkpoint", str(ckpt)]
    assert cli_main([*args, "-o", str(dataset), "--overwrite"]) == 2
    assert "is a generated data set (recipe.json)" in capsys.readouterr().err
    assert (dataset / "masks.npy").read_bytes() == b"the data set's masks"
    # an earlier run's extra mask files do not survive a rerun (masks/ is replaced, not merged)
    assert cli_main(args) == 0
    stale = sub / "oneshot" / "masks" / "mask_000099.mrc"
    stale.write_bytes(b"from an older, larger run")
    assert cli_main(args) == 0
    assert not stale.exists() and len(list((sub / "oneshot" / "masks").iterdir())) == 6


def test_output_folders_never_become_support_classes(tmp_path: Path) -> None:
    """Issue #14 item 5: a sub-folder of an earlier output (masks/) in the support folder is not a class."""
    sub = _subtomos(tmp_path / "sub")
    support = _support(tmp_path / "support", sub, {"alpha": [1], "beta": [4]})
    (support / ".hidden").mkdir()
    assert read_support(support, BOX, 10.0).names == ["alpha", "beta"]  # hidden entries are skipped
    out = _support(support / "oneshot", sub, {"masks": [0]})
    (out / ".cryonb-output.json").write_text('{"command": "oneshot"}')
    with pytest.raises(CryoNBError, match=r"support/oneshot: an output folder of cryonb \(\.cryonb-output\.json\), not a class"):
        read_support(support, BOX, 10.0)
    with pytest.raises(CryoNBError, match=r"oneshot: an output folder of cryonb \(\.cryonb-output\.json\), not a support folder"):
        read_support(out, BOX, 10.0)


def test_boxes_of_the_other_polarity_are_refused(tmp_path: Path) -> None:
    """Issue #15: a checkpoint records the polarity it was trained on; boxes of the other one are an error."""
    from cryonb.predict import classify_predict

    sub = _subtomos(tmp_path / "sub")
    meta = pd.read_csv(sub / "meta.csv").assign(polarity="bright")
    meta.to_csv(sub / "meta.csv", index=False)
    with pytest.raises(CryoNBError, match=r"dark\.pt: model trained on protein-dark boxes, .*sub holds protein-bright boxes; re-extract with the --polarity"):
        classify_predict(_rb3d_checkpoint(tmp_path / "dark.pt", polarity="dark"), load_subtomograms(sub))
    assert len(classify_predict(_rb3d_checkpoint(tmp_path / "same.pt", polarity="bright"), load_subtomograms(sub))) == 6
