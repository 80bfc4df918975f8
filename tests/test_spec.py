"""The experiment spec: every profile parses; errors name the file and the key; a setting written in the
profile reaches the training loop as the very config object the spec built (nothing re-packed on the way)."""

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from cryonb import CryoNBError
from cryonb.experiments import cosnet as cosnet_experiment
from cryonb.experiments import cssl as cssl_experiment
from cryonb.paths import repo_root
from cryonb.spec import Spec, load_profile, parse_snr

SMOKE = yaml.safe_load((repo_root() / "params" / "smoke.yaml").read_text())
SMOKE.pop("notebooks")


def _spec(**changes: object) -> Spec:
    """The smoke spec with dotted-path changes, e.g. ``_spec(**{"cssl.pretrain.train.lr": 0.5})``."""
    raw = copy.deepcopy(SMOKE)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return Spec.from_dict(raw, "params/test.yaml")


def test_profiles_encode_the_papers_settings() -> None:
    paper = load_profile("paper").spec
    assert paper.cssl.pretrain.train.epochs == 200 and paper.cssl.pretrain.train.lr == 1e-4 and paper.cssl.pretrain.ssl.moco_queue == 128
    assert paper.cssl.finetune.train.optimizer == "sgd" and paper.cssl.finetune.train.scheduler == "cosine" and paper.cssl.sweep.runs == 5
    assert paper.cssl.classifier.finetune.train == paper.cssl.finetune.train  # one YAML anchor, one schedule
    assert math.isinf(paper.cosnet.data.snrs[0]) and paper.cosnet.training.train.betas == (0.5, 0.999)
    quick = load_profile("quick").spec
    assert quick.cssl.pretrain.model is quick.cssl.finetune.model is quick.cssl.model  # one architecture, shared
    assert quick.cosnet.training.steps == quick.cosnet.training.train.epochs * quick.cosnet.training.steps_per_epoch


@pytest.mark.parametrize(("change", "message"), [
    ({"cssl.pretrain.train.lrr": 1}, r"params/test\.yaml: cssl\.pretrain: unknown train parameter\(s\) \['lrr'\]"),
    ({"cssl.model.n_classes": 3}, r"cssl\.model: \['n_classes'\] cannot be set here"),
    ({"cssl.finetune.model": {"width": 8}}, r"cssl\.finetune: the RB3D architecture is set once, in cssl\.model"),
    ({"cssl.sweep.inits": ["byol"]}, r"cssl\.sweep: sweep inits \['byol'\]"),
    ({"cosnet.evaluation.variants": ["SCN"]}, r"cosnet\.evaluation: unknown COS-Net variant\(s\) \['SCN'\]"),
    ({"cosnet.evaluation.main_snrs": [0.5]}, r"SNR\(s\) \[0\.5\] are evaluated but have no data set"),
    ({"cosnet.segmentation.models": [["SCNN", 1000]]}, r"\['SCNN'\] have no decoder"),
    ({"cosnet.model.decoder": False}, r"cosnet\.model: \['decoder'\] cannot be set here"),
    ({"cosnet.train.epochs": 0}, r"cosnet: train epochs=0: expected an integer ≥ 1"),
    ({"cssl.data.snrs": ["abc"]}, r"cssl\.data: snr='abc': expected a number > 0"),
    ({"seed": -1}, r"seed=-1: expected an integer"),
    ({"device": "gpu0"}, r"device='gpu0'"),
    ({"extra": 1}, r"unknown top-level entr\(ies\) \['extra'\]"),
])
def test_errors_name_the_file_and_the_key(change: dict, message: str) -> None:
    with pytest.raises(CryoNBError, match=message):
        _spec(**change)


def test_snr_is_one_type() -> None:
    assert parse_snr(".inf") == parse_snr("inf") == parse_snr(float("inf")) == math.inf
    assert parse_snr(1000) == 1000.0 and parse_snr("0.5") == 0.5
    for bad in (0, -1, True, "abc", float("nan")):
        with pytest.raises(CryoNBError, match="expected a number > 0"):
            parse_snr(bad)


class ToyData:
    """What the experiments read from a data set: 4 classes (1 unseen), 6 volumes each, 12³."""

    def __init__(self, name: str = "toy-abc") -> None:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(4), 6)
        self.volumes = rng.standard_normal((24, 12, 12, 12)).astype(np.float32)
        self.masks = (rng.random((24, 12, 12, 12)) > 0.9).astype(np.uint8)
        split = np.tile(["train"] * 4 + ["val", "test"], 4)
        self.meta = pd.DataFrame({"class_id": labels, "pdb_id": [f"p{c}" for c in labels], "split": split,
                                  "class_split": np.where(labels == 3, "unseen", "seen")})
        self.classes = ["p0", "p1", "p2", "p3"]
        self.root = Path(name)
        self.voxel_size_a = 10.0
        self.polarity = "dark"

    def indices(self, split: str | None = "train", class_split: str | None = None) -> np.ndarray:
        keep = np.ones(len(self.meta), bool)
        if split is not None:
            keep &= (self.meta.split == split).to_numpy()
        if class_split is not None:
            keep &= (self.meta.class_split == class_split).to_numpy()
        return np.flatnonzero(keep)


def _spy(monkeypatch: pytest.MonkeyPatch, module: object) -> list:
    """Replace ``module.fit`` and ``module.fit_many`` by recorders of the config they get (no training)."""
    from cryonb.train import History

    seen = []

    def history(model):  # noqa: ANN001, ANN202
        return History(best_state={k: v.clone() for k, v in model.state_dict().items()}, best_epoch=1, best_value=0.0)

    def fake_fit(model, loss_fn, batches, cfg, **kw):  # noqa: ANN001, ANN202
        seen.append(cfg)
        return history(model)

    def fake_fit_many(models, loss_fn, batches, cfg, **kw):  # noqa: ANN001, ANN202
        seen.append(cfg)
        return [history(m) for m in models]

    for name, fake in (("fit", fake_fit), ("fit_many", fake_fit_many)):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, fake)
    return seen


def test_the_learning_rate_in_the_profile_is_the_object_fit_receives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryonb import finetune, oneshot, pretrain

    spec = _spec(**{"cssl.pretrain.train.lr": 0.123, "cssl.classifier.train.lr": 0.456, "cosnet.train.lr": 0.789})
    monkeypatch.setattr(cssl_experiment, "ensure_dataset", lambda recipe, progress=True: ToyData())
    monkeypatch.setattr(cosnet_experiment, "ensure_dataset", lambda recipe, progress=True: ToyData())
    pre, fine, cos = _spy(monkeypatch, pretrain), _spy(monkeypatch, finetune), _spy(monkeypatch, oneshot)
    cssl_experiment.ensure_encoder(spec, "moco", spec.cssl.data.snrs[0], tmp_path, progress=False)
    cssl_experiment.ensure_classifier(spec, tmp_path, progress=False)
    job = spec.cosnet.evaluation.jobs()[0]
    cosnet_experiment.ensure_model(spec, *job, tmp_path, progress=False)
    assert pre == [spec.cssl.pretrain.train] and pre[0] is spec.cssl.pretrain.train and pre[0].lr == 0.123
    assert fine[0] is spec.cssl.classifier.finetune.train and fine[0].lr == 0.456
    assert cos[0] is spec.cosnet.training.train and cos[0].lr == 0.789


def test_content_keys_follow_every_setting_that_changes_a_result(tmp_path: Path) -> None:
    base = _spec()
    snr = base.cssl.data.snrs[0]
    assert cssl_experiment.encoder_path(base, "moco", snr, tmp_path) == cssl_experiment.encoder_path(_spec(), "moco", snr, tmp_path)
    assert cssl_experiment.encoder_path(base, "moco", snr, tmp_path) != cssl_experiment.encoder_path(_spec(**{"cssl.pretrain.train.lr": 0.5}), "moco", snr, tmp_path)
    assert cssl_experiment.encoder_path(base, "moco", snr, tmp_path) != cssl_experiment.encoder_path(_spec(seed=1), "moco", snr, tmp_path)
    # the sweep's folder follows the encoders it starts from (a re-pre-trained encoder never reuses stale runs) ...
    assert cssl_experiment.sweep_folder(base, tmp_path) != cssl_experiment.sweep_folder(_spec(**{"cssl.pretrain.train.epochs": 2}), tmp_path)
    assert cssl_experiment.sweep_folder(base, tmp_path) != cssl_experiment.sweep_folder(_spec(**{"cssl.finetune.batch_size": 4}), tmp_path)
    # ... but not the list of cells, so adding a fraction reuses the finished runs
    assert cssl_experiment.sweep_folder(base, tmp_path) == cssl_experiment.sweep_folder(_spec(**{"cssl.sweep.fractions": [0.25, 1.0]}), tmp_path)
    job = base.cosnet.evaluation.jobs()[0]
    path = cosnet_experiment.model_path(base, *job, tmp_path)
    assert path == cosnet_experiment.model_path(_spec(), *job, tmp_path)
    assert path != cosnet_experiment.model_path(_spec(**{"cosnet.loss.w_mask_bce": 1.0}), *job, tmp_path)
    assert path != cosnet_experiment.model_path(base, job[0], job[1], job[2] + 1, job[3], tmp_path)
    assert path != cosnet_experiment.model_path(base, job[0], job[1], job[2], job[3] + 1, tmp_path)  # another seed, another model
    assert path.name.startswith(f"{job[0]}-snr1000-2way-s0-")


def test_a_trained_model_is_reused_not_retrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec()
    monkeypatch.setattr(cosnet_experiment, "ensure_dataset", lambda recipe, progress=True: ToyData())
    monkeypatch.setattr(cosnet_experiment, "recipes", lambda s: {snr: SimpleNamespace(folder_name="toy") for snr in s.cosnet.data.snrs})
    job = spec.cosnet.evaluation.jobs()[0]
    path = cosnet_experiment.ensure_model(spec, *job, tmp_path, progress=False)
    stamp = path.stat().st_mtime_ns
    assert cosnet_experiment.ensure_model(spec, *job, tmp_path, progress=False) == path and path.stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("cosnet/*.run"))  # fit's resumable state goes once the model is written
