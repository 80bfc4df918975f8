"""COS-Net episode training/evaluation helpers: resume, caching, baseline, confidence intervals."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cryonb import CryoNBError
from cryonb.embedding import embed
from cryonb.episodes import sample_episodes
from cryonb.metrics import accuracy_ci
from cryonb.models.cosnet import COSNetConfig
from cryonb.oneshot import COSNetTrainConfig, episode_logits, load_cosnet, prototype_scorer, save_cosnet, train_cosnet
from cryonb.train import TrainConfig


def _toy(n_classes: int = 4, per_class: int = 3, seed: int = 0) -> SimpleNamespace:
    """Cubes of a class-dependent size with noise; masks are the cubes."""
    rng = np.random.default_rng(seed)
    vols, masks, labels = [], [], []
    for c in range(n_classes):
        for _ in range(per_class):
            m = np.zeros((32, 32, 32), np.uint8)
            h = 3 + 2 * c
            m[16 - h : 16 + h, 16 - h : 16 + h, 16 - h : 16 + h] = 1
            vols.append((m + 0.3 * rng.standard_normal(m.shape)).astype(np.float32))
            masks.append(m)
            labels.append(c)
    meta = pd.DataFrame({"class_id": labels, "split": "train", "class_split": ["seen" if c < n_classes - 1 else "unseen" for c in labels]})

    def indices(split: str | None = None, class_split: str | None = None) -> np.ndarray:
        ok = np.ones(len(meta), bool)
        if split is not None:
            ok &= (meta["split"] == split).to_numpy()
        if class_split is not None:
            ok &= (meta["class_split"] == class_split).to_numpy()
        return np.flatnonzero(ok)

    return SimpleNamespace(volumes=np.stack(vols), masks=np.stack(masks), meta=meta, indices=indices)


CFG = COSNetTrainConfig(model=COSNetConfig(base_channels=2, feature_dim=16), train=TrainConfig(epochs=2, lr=1e-4, betas=(0.5, 0.999), weight_decay=0.0),
                        steps_per_epoch=2, n_way=2)


def test_training_runs_in_fit_with_one_log_row_and_checkpoint_per_epoch(tmp_path) -> None:
    # resuming after a stop is tested in test_budget (train_cosnet under a time budget)
    ds = _toy()
    labels = ds.meta["class_id"].to_numpy()
    pool = ds.indices(class_split="seen")
    net, log = train_cosnet(CFG.for_job("DuSE-SCNN+decoder", 2), ds.volumes, ds.masks, labels, pool, seed=3, checkpoint_dir=tmp_path, progress=False)
    assert [r["step"] for r in log] == [2, 4] and CFG.steps == 4  # epochs × steps_per_epoch
    assert all(np.isfinite(r["dice_loss"]) and 0 <= r["dice_loss"] <= 1 and r["loss"] >= r["bce"] for r in log)
    from cryonb import checkpoints

    last = checkpoints.load_state(tmp_path / "last.pt")
    assert last["epoch"] == 1 and tuple(last["train_config"]["betas"]) == CFG.train.betas and last["train_config"]["weight_decay"] == 0.0
    assert not net.training and net.config.attention == "duse" and net.config.decoder


def test_save_and_load_round_trip_and_embed(tmp_path) -> None:
    ds = _toy()
    net, log = train_cosnet(CFG.for_job("SCNN", 2), ds.volumes, ds.masks, ds.meta["class_id"].to_numpy(), ds.indices(class_split="seen"), seed=3, progress=False)
    path = save_cosnet(tmp_path / "m.pt", net, log, {"variant": "SCNN", "seed": 3})
    again, meta = load_cosnet(path)
    assert meta["seed"] == 3 and meta["variant"] == "SCNN" and [r["step"] for r in meta["log"]] == [2, 4] and meta["kind"] == "cosnet"
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    unseen = ds.indices(class_split="unseen")
    emb, masks = embed(again, ds.volumes, unseen)
    assert emb.shape == (len(unseen), 16) and masks is None


def test_episode_logits_shape_and_missing_rows() -> None:
    ds = _toy()
    from cryonb.models.cosnet import COSNet, COSNetConfig

    net = COSNet(COSNetConfig(base_channels=2, feature_dim=8)).eval()
    labels = ds.meta["class_id"].to_numpy()
    pool = np.arange(len(labels))
    eps = sample_episodes(labels, pool, 3, 1, 20, seed=0)
    emb, _ = embed(net, ds.volumes, pool)
    logits, lab = episode_logits(net, emb, pool, eps)
    assert logits.shape == (20, 3) and lab.shape == (20,)
    with pytest.raises(CryoNBError, match="not embedded"):
        episode_logits(net, emb[:3], pool[:3], eps)


def test_prototype_baseline_separable_and_shuffled() -> None:
    labels = np.repeat(np.arange(5), 6)
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(np.eye(5)[labels] * 10 + rng.standard_normal((30, 5)) * 0.1)
    pool = np.arange(30)
    eps = sample_episodes(labels, pool, 4, 2, 200, seed=1)
    pred, lab = prototype_scorer(emb, pool)(eps)
    assert (pred == lab).mean() == 1.0
    shuffled = emb[torch.from_numpy(rng.permutation(30))]
    pred, lab = prototype_scorer(shuffled, pool)(eps)
    assert (pred == lab).mean() < 0.6  # chance is 0.25


def test_accuracy_ci_wilson() -> None:
    r = accuracy_ci(np.array([1] * 50 + [0] * 50))
    assert r["accuracy"] == 0.5 and r["n_episodes"] == 100
    assert r["ci_low"] == pytest.approx(0.4038, abs=1e-3) and r["ci_high"] == pytest.approx(0.5962, abs=1e-3)
    r = accuracy_ci(np.ones(1000))
    assert r["ci_high"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(0.99617, abs=1e-4)
    with pytest.raises(CryoNBError, match="0 episodes"):
        accuracy_ci(np.array([]))


def test_mask_shape_mismatch_is_an_error() -> None:
    ds = _toy()
    with pytest.raises(CryoNBError, match="masks have shape"):
        train_cosnet(CFG, ds.volumes, ds.masks[:, :16], ds.meta["class_id"].to_numpy(), np.arange(9), seed=0, progress=False)


def test_batchnorm_statistics_are_recomputed_over_the_training_pool() -> None:
    import dataclasses

    ds = _toy()
    labels = ds.meta["class_id"].to_numpy()
    pool = ds.indices(class_split="seen")
    nets = {flag: train_cosnet(dataclasses.replace(CFG.for_job("SCNN", 2), recalibrate_bn=flag), ds.volumes, ds.masks, labels, pool, seed=3, progress=False)[0]
            for flag in (False, True)}
    # the first BatchNorm sees conv1 → ReLU of the input: its exact mean over the pool is known
    first_conv, first_bn = nets[True].enc1[0], nets[True].enc1[2]
    with torch.no_grad():
        h = torch.relu(first_conv(torch.from_numpy(ds.volumes[np.sort(pool)])[:, None]))
    exact_mean = h.mean(dim=(0, 2, 3, 4))
    assert torch.allclose(first_bn.running_mean, exact_mean, atol=1e-4)
    assert not torch.allclose(nets[False].enc1[2].running_mean, exact_mean, atol=1e-4)
    assert not nets[True].training


@pytest.mark.parametrize(("field", "value"), [("steps_per_epoch", 0), ("n_way", 1)])
def test_bad_training_settings_name_the_parameter(field: str, value: float) -> None:
    with pytest.raises(CryoNBError, match=rf"{field}={value}: expected"):
        COSNetTrainConfig(**{field: value})
    with pytest.raises(CryoNBError, match="unknown COS-Net variant 'SCN'"):
        CFG.for_job("SCN", 2)
