"""Grad-CAM: exact on a linear head, peaks on the one region that decides the label, passes model randomisation."""

import numpy as np
import pytest
import torch
from torch import nn

from cryonb import CryoNBError
from cryonb.explain import (
    cam_metrics,
    grad_cam_3d,
    half_max_dice,
    half_max_fraction,
    last_conv3d,
    mask_mass_fraction,
    randomised_copy,
    rank_correlation,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


N = 16  # input grid of the synthetic task (small: trains in ~2 s on 2 cores)
UP = 32  # maps are upsampled to the CSSL grid
KEY = (4, 4, 11)  # the only region with signal: a bright blob (class 1) or a dark one (class 0)
KEY_UP = tuple(2 * k + 0.5 for k in KEY)  # its centre on the 32³ grid (align_corners=False)
OTHER_UP = [(8.5, 8.5, 8.5), (22.5, 22.5, 8.5), (16.0, 16.0, 16.0), (22.5, 22.5, 22.5)]  # same-size balls elsewhere


def _grid(n: int) -> tuple[np.ndarray, ...]:
    return np.meshgrid(*(np.arange(n),) * 3, indexing="ij")


def _blob(center: tuple[float, ...], sigma: float = 1.5) -> np.ndarray:
    z, y, x = _grid(N)
    r2 = (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2
    return np.exp(-r2 / (2 * sigma**2)).astype(np.float32)


def _ball(center: tuple[float, ...], radius: float, n: int = UP) -> np.ndarray:
    z, y, x = _grid(n)
    return ((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2).astype(np.uint8)


def _task(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 16, 16, 16) noise volumes whose label is the sign of one blob at KEY (±1 voxel jitter)."""
    labels = rng.integers(0, 2, n)
    vols = rng.normal(0, 0.5, (n, N, N, N)).astype(np.float32)
    for i in range(n):
        jitter = rng.integers(-1, 2, 3)
        vols[i] += (2.0 if labels[i] else -2.0) * _blob(tuple(k + j for k, j in zip(KEY, jitter)))
    return torch.from_numpy(vols[:, None]), torch.from_numpy(labels)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 2),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = _task(64, rng)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):  # ~2 s on 2 cores
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = _task(32, rng)
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    assert acc >= 0.9, f"the tiny net did not learn the synthetic task (test accuracy {acc:.2f})"
    return net, xt, yt


def test_last_conv3d_and_errors() -> None:
    net = _net()
    assert last_conv3d(net) is net[3]
    with pytest.raises(CryoNBError, match="no nn.Conv3d"):
        last_conv3d(nn.Linear(2, 2))
    with pytest.raises(CryoNBError, match=r"\(batch, 1, z, y, x\)"):
        grad_cam_3d(net, torch.zeros(2, N, N, N))
    with pytest.raises(CryoNBError, match="no nn.Conv3d"):
        grad_cam_3d(nn.Sequential(nn.Flatten(), nn.Linear(N**3, 2)), torch.zeros(2, 1, N, N, N))


def test_grad_cam_equals_class_activation_map_for_a_linear_head() -> None:
    # conv → global average pool → linear: d logit_c / d A_k(v) = w_ck / V, so Grad-CAM = ReLU(Σ_k w_ck A_k / V)
    torch.manual_seed(1)
    conv = nn.Conv3d(1, 3, 3, padding=1)
    net = nn.Sequential(conv, nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 2))
    x = torch.randn(2, 1, 8, 8, 8)
    cam = grad_cam_3d(net, x, target=1)
    with torch.no_grad():
        a = conv(x)
        expected = torch.relu(torch.einsum("k,bkzyx->bzyx", net[3].weight[1], a) / a[0, 0].numel())
    assert cam.shape == (2, 8, 8, 8)
    torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-7)


def test_map_peaks_on_the_deciding_region(trained) -> None:
    net, x, y = trained
    key_mask = _ball(KEY_UP, 6)
    chance = key_mask.mean()  # ≈ 0.028 of the volume
    for cls in (0, 1):  # both the bright-blob and the dark-blob class must look at KEY
        cam = grad_cam_3d(net, x[y == cls], target=cls, size=(UP,) * 3)
        assert cam.shape == (int((y == cls).sum()), UP, UP, UP)
        peaks = np.array([np.unravel_index(int(c.argmax()), c.shape) for c in cam.numpy()])
        dist = np.linalg.norm(peaks - np.array(KEY_UP), axis=1)
        assert np.median(dist) <= 4.0, f"class {cls}: peaks {peaks.tolist()} are not at the key region {KEY_UP}"
        mass = np.mean(mask_mass_fraction(cam, np.broadcast_to(key_mask, cam.shape)))
        elsewhere = [np.mean(mask_mass_fraction(cam, np.broadcast_to(_ball(c, 6), cam.shape))) for c in OTHER_UP]
        # the bright blob is found by its presence (sharp map); the dark class by the absence of a bright
        # blob, which spreads the map (measured 0.29 vs 0.10 of the mass in the 2.8 % key ball)
        assert mass > (5 if cls else 2) * chance
        assert mass > (3 if cls else 1.5) * max(elsewhere), f"class {cls}: key {mass:.3f} vs elsewhere {elsewhere}"


def test_predicted_class_is_the_default_target(trained) -> None:
    net, x, _ = trained
    with torch.no_grad():
        pred = net(x).argmax(1)
    torch.testing.assert_close(grad_cam_3d(net, x), grad_cam_3d(net, x, target=pred))
    assert not torch.allclose(grad_cam_3d(net, x), grad_cam_3d(net, x, target=1 - pred))


def test_model_randomisation_changes_the_map(trained) -> None:
    net, x, y = trained
    pos = x[y == 1]
    cam = grad_cam_3d(net, pos, target=1, size=(UP,) * 3)
    rand = grad_cam_3d(randomised_copy(net, torch.Generator().manual_seed(5)), pos, target=1, size=(UP,) * 3)
    rho = rank_correlation(cam, rand)
    assert np.nanmean(rho) < 0.5
    key_mask = np.broadcast_to(_ball(KEY_UP, 6), cam.shape)
    assert np.nanmean(mask_mass_fraction(rand, key_mask)) < 0.5 * np.mean(mask_mass_fraction(cam, key_mask))
    # the copy is independent: the trained model's weights and maps are untouched
    assert rank_correlation(cam, grad_cam_3d(net, pos, target=1, size=(UP,) * 3)) == pytest.approx(np.ones(len(pos)))


def test_metrics_on_hand_made_maps() -> None:
    mask = _ball((16, 16, 16), 5)[None]
    uniform = np.ones((1, UP, UP, UP))
    assert half_max_fraction(uniform) == pytest.approx([1.0])
    assert mask_mass_fraction(uniform, mask) == pytest.approx([mask.mean()])
    assert half_max_dice(uniform, mask) == pytest.approx([2 * mask.sum() / (mask.sum() + UP**3)])
    exact = mask.astype(float) * 3.0
    assert half_max_fraction(exact) == pytest.approx([mask.mean()])
    assert mask_mass_fraction(exact, mask) == pytest.approx([1.0])
    assert half_max_dice(exact, mask) == pytest.approx([1.0])
    # a map twice the mask's size at full height, zero elsewhere: Dice = 2|M| / (|M| + 2|M|) = 2/3
    wider = np.zeros_like(exact)
    wider[0, :, :, : UP // 2] = 1.0
    half = np.zeros_like(mask)
    half[0, : UP // 2, :, : UP // 2] = 1
    assert half_max_dice(wider, half) == pytest.approx([2 / 3])
    zero = np.zeros((1, UP, UP, UP))
    assert np.isnan(half_max_fraction(zero)[0]) and np.isnan(mask_mass_fraction(zero, mask)[0])
    table = cam_metrics(exact, mask)
    assert list(table.columns) == ["half_max_fraction", "mask_mass_fraction", "half_max_dice", "mask_fraction"]
    with pytest.raises(CryoNBError, match="same shape"):
        mask_mass_fraction(uniform, mask[:, :8])
