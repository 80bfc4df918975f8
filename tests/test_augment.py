"""Augmentation: identity at p = 0, geometry of rotations, crop scales in range, seeded reproducibility."""

import math

import pytest
import torch

from cryonb import CryoNBError
from cryonb.augment import AugmentConfig, augment, sample_transforms


def _blob(z: float, y: float, x: float, size: int = 32) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = torch.tensor([z, y, x])[:, None, None, None]
    return torch.exp(-((grid - centre) ** 2).sum(0) / (2 * 1.5**2))[None, None]


def _centroid(v: torch.Tensor) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(v.shape[-1], dtype=torch.float32)] * 3, indexing="ij"))
    w = v[0, 0] / v[0, 0].sum()
    return (grid * w).sum((1, 2, 3))


def test_p_zero_is_identity() -> None:
    x = torch.randn(8, 1, 32, 32, 32)
    out = augment(x, AugmentConfig(p_crop=0, p_affine=0), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


def test_rotation_moves_centroid_where_geometry_says() -> None:
    # an off-centre blob at (y, x) offset (0, +8) rotated by the sampled angle about z
    x = _blob(15.5, 15.5, 23.5)
    cfg = AugmentConfig(p_crop=0, p_affine=1, translate_fraction=0, scale_range=(1, 1))
    g = torch.Generator().manual_seed(3)
    theta, _, _ = sample_transforms(1, cfg, torch.Generator().manual_seed(3))
    out = augment(x, cfg, g)
    # theta maps output→input; the blob moves by the inverse: solve theta[:, :3] @ p_out = p_in
    p_in = torch.tensor([8 / 16, 0.0, 0.0])  # (x, y, z) normalised offset of the blob from the centre
    p_out = torch.linalg.solve(theta[0, :, :3], p_in)
    c = _centroid(out) - torch.tensor([15.5, 15.5, 15.5])
    expected_xyz = p_out * 16
    assert torch.allclose(torch.stack([c[2], c[1], c[0]]), expected_xyz, atol=0.3)
    assert abs(float(c[0])) < 0.05  # rotation about z keeps z


def test_crop_scales_stay_in_range() -> None:
    cfg = AugmentConfig(p_crop=1, p_affine=0)
    theta, moved, fraction = sample_transforms(500, cfg, torch.Generator().manual_seed(0))
    assert moved.all()
    assert fraction.min() >= 0.5 and fraction.max() <= 1.0
    side = theta[:, 0, 0]
    assert torch.allclose(side**3, fraction, atol=1e-5)
    assert (theta[:, :, 3].abs() + side[:, None] <= 1 + 1e-6).all()  # the box stays inside the volume


def test_probabilities_are_respected() -> None:
    _, moved, _ = sample_transforms(4000, AugmentConfig(), torch.Generator().manual_seed(0))
    assert 0.72 < float(moved.float().mean()) < 0.78  # 1 − 0.5 · 0.5


def test_same_seed_same_views_different_seed_different_views() -> None:
    x = torch.randn(6, 1, 16, 16, 16)
    a = augment(x, AugmentConfig(p_crop=1, p_affine=1), torch.Generator().manual_seed(7))
    b = augment(x, AugmentConfig(p_crop=1, p_affine=1), torch.Generator().manual_seed(7))
    c = augment(x, AugmentConfig(p_crop=1, p_affine=1), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_parameters() -> None:
    with pytest.raises(CryoNBError, match=r"p_crop must be in \[0, 1\]"):
        AugmentConfig(p_crop=1.5)
    with pytest.raises(CryoNBError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))
    with pytest.raises(CryoNBError, match="expects \\(batch, 1, z, y, x\\)"):
        augment(torch.zeros(32, 32, 32), AugmentConfig(), torch.Generator())
    assert math.isclose(AugmentConfig().rotation_deg, 45.0)


@pytest.mark.parametrize("full_so3", [False, True])
def test_resample_equals_trilinear_grid_sample(full_so3: bool) -> None:
    """The separable path (rotations about z: z, then one 2-D resampling of all slices) is trilinear sampling."""
    import torch.nn.functional as F

    from cryonb.augment import resample

    v = torch.randn(16, 2, 12, 14, 10, generator=torch.Generator().manual_seed(0))
    theta, _, _ = sample_transforms(16, AugmentConfig(full_so3=full_so3, scale_range=(0.6, 1.4)), torch.Generator().manual_seed(1))
    grid = F.affine_grid(theta, list(v.shape), align_corners=False)
    reference = F.grid_sample(v, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(resample(v, theta), reference, atol=1e-5)
    assert (reference - v).abs().max() > 0.5  # the maps do move the volumes
