"""No setting is chosen on the test classes: every choice made from data (training settings, CRF weights) goes
through one gate that refuses rows of unseen classes, and the selection sees validation rows only."""

from pathlib import Path

import numpy as np
import pytest

from cryonb import CryoNBError
from cryonb.experiments import cosnet as cosnet_experiment
from test_spec import ToyData, _spec


def test_a_selection_given_a_test_class_raises() -> None:
    ds = ToyData()
    pools = cosnet_experiment.class_pools(ds)
    assert set(ds.meta.class_split.to_numpy()[pools.validation]) == {"seen"}
    np.testing.assert_array_equal(cosnet_experiment.selection_rows(ds, pools.validation), pools.validation)
    with pytest.raises(CryoNBError, match=r"toy-abc: a selection was given 6 row\(s\) of test classes \['p3'\]"):
        cosnet_experiment.selection_rows(ds, np.concatenate([pools.validation, pools.unseen]))


def test_validation_classes_join_the_validation_pool_never_the_test_pool() -> None:
    ds = ToyData()
    ds.meta.loc[ds.meta.class_id == 2, "class_split"] = "validation"
    pools = cosnet_experiment.class_pools(ds)
    assert set(ds.meta.class_id.to_numpy()[pools.validation]) == {0, 1, 2} and set(ds.meta.class_id.to_numpy()[pools.unseen]) == {3}
    assert not set(pools.validation) & set(pools.unseen) and not set(pools.validation) & set(pools.seen_train)


def test_selection_and_crf_choice_never_read_a_test_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(**{"cosnet.selection": {"snr": 1000, "grid": {"lr": [1.0e-4, 1.0e-3]}, "n_way": 2, "n_episodes": 20}})
    ds = ToyData()
    ds.meta["split"] = np.tile(["train"] * 3 + ["val"] * 2 + ["test"], 4)  # two held-out volumes per class: a query and its support
    unseen = set(ds.indices(split=None, class_split="unseen"))
    read: list[int] = []

    class Spy(np.ndarray):  # records every row index a model reads
        def __getitem__(self, index):  # noqa: ANN001, ANN204
            read.extend(np.atleast_1d(np.asarray(index)).ravel().tolist() if not isinstance(index, slice) else [])
            return np.asarray(self).__getitem__(index)

    ds.volumes = ds.volumes.view(Spy)
    monkeypatch.setattr(cosnet_experiment, "ensure_dataset", lambda recipe, progress=True: ds)
    table = cosnet_experiment.select_training(spec, tmp_path, progress=False)  # trains both candidates, then scores them
    assert len(table) == 2 and table.spec.sum() == 1 and table.chosen.sum() >= 1 and table.val_accuracy.between(0, 1).all()
    assert table.val_dice.between(0, 1).all(), "the main variant has a decoder: its validation Dice is scored"
    assert table.chosen.tolist() == (table.score == table.score.max()).tolist()
    assert np.allclose(table.score, table.val_accuracy + table.val_dice)
    assert read and not set(read) & unseen, "the training-settings selection read a test-class volume"
    models = {job: cosnet_experiment.ensure_model(spec, *job, tmp_path, progress=False) for job in spec.cosnet.evaluation.jobs()}
    read.clear()
    cosnet_experiment.choose_crf(spec, models, {1000.0: ds})
    assert read and not set(read) & unseen, "the CRF choice read a test-class volume"


def test_the_selection_rule_does_not_trade_the_masks_for_noise_in_accuracy() -> None:
    collapsed = cosnet_experiment.selection_score(0.791, 0.07)  # w_mask_bce 0 in one quick run: masks collapse
    kept = cosnet_experiment.selection_score(0.780, 0.30)
    assert kept > collapsed
    assert cosnet_experiment.selection_score(0.7, float("nan")) == 0.7, "no decoder: accuracy alone"
