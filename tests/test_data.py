"""Label-fraction subsets are stratified, nested and seeded; RB3D shapes, handles and parameter counts."""

import numpy as np
import pytest
import torch

from cryonb import CryoNBError
from cryonb.data import iterate_batches, stratified_subset, to_tensor
from cryonb.models import RB3D, RB3DConfig, count_parameters

LABELS = np.repeat(np.arange(4), [30, 20, 10, 8])


def test_subsets_are_stratified_and_nested() -> None:
    subsets = {f: stratified_subset(LABELS, f, seed=3) for f in (0.25, 0.5, 0.75, 1.0)}
    for f, idx in subsets.items():
        counts = np.bincount(LABELS[idx], minlength=4)
        assert np.array_equal(counts, np.ceil(f * np.bincount(LABELS)).astype(int))
    assert set(subsets[0.25]) <= set(subsets[0.5]) <= set(subsets[0.75]) <= set(subsets[1.0])
    assert len(subsets[1.0]) == len(LABELS)
    assert not np.array_equal(stratified_subset(LABELS, 0.5, 3), stratified_subset(LABELS, 0.5, 4))


def test_bad_fraction() -> None:
    with pytest.raises(CryoNBError, match=r"label fraction must be in \(0, 1\], got 0"):
        stratified_subset(LABELS, 0, 0)


def test_batches_cover_every_index_once() -> None:
    batches = list(iterate_batches(10, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_to_tensor_keeps_order() -> None:
    vols = np.arange(5 * 8).reshape(5, 2, 2, 2).astype(np.float32)
    t = to_tensor(vols, np.array([3, 0, 4]))
    assert t.shape == (3, 1, 2, 2, 2) and t[0, 0, 0, 0, 0] == 24 and t[1, 0, 0, 0, 0] == 0


def test_rb3d_shapes_handles_and_parameter_count() -> None:
    cfg = RB3DConfig(n_classes=10, width=8, embedding_dim=32)
    model = RB3D(cfg)
    x = torch.randn(2, 1, 32, 32, 32)
    assert model(x).shape == (2, 10) and model.encode(x).shape == (2, 32)
    assert model.features(x).shape == (2, 8, 16, 16, 16)
    w = 8
    conv = lambda i, o, k: i * o * k**3 + o  # noqa: E731
    block = conv(w, w // 2, 3) + conv(w, w // 4, 1) + conv(w // 4, w // 4, 3) + conv(w // 4, w // 2, 1) + 2 * (w // 2 * 2) + 2 * (w // 4 * 2)
    expected = conv(1, w, 3) + 4 * block + (w * 4**3 * 32 + 32) + (32 * 10 + 10)  # 4³ pooled cells flattened
    assert count_parameters(model) == expected
    global_pool = RB3D(RB3DConfig(n_classes=10, width=8, embedding_dim=32, pool_size=1))
    assert count_parameters(global_pool) == expected - w * (4**3 - 1) * 32
    assert not any(k.startswith("classifier.") for k in model.encoder_state())
    with pytest.raises(CryoNBError, match=r"expects \(batch, 1, z, y, x\)"):
        model(torch.randn(2, 32, 32, 32))
