"""The CSSL paper's augmentation, batched: random resized crop and random affine, fused in one resampling.

Per sample, with probability ``p_crop`` a box of volume fraction ``scale ∈ crop_scale`` is cropped and resized
back to the input size; with probability ``p_affine`` a rotation about z (``rotation_deg``), a translation
along x and y (``translate_fraction`` of the size) and an isotropic scaling (``scale_range``) are applied. Both
are affine maps of the sampling grid, so they compose into one matrix per sample and one resampling of the batch
(:func:`resample`: separable, z then a 2-D ``grid_sample`` of all slices); samples that draw neither are copied
untouched (no interpolation blur, no cost).

NOTE: grid_sample's coordinates are (x, y, z) in [-1, 1] for a (batch, 1, z, y, x) tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cryonb.errors import CryoNBError, reject_unknown_keys

__all__ = ["AugmentConfig", "sample_transforms", "resample", "augment", "two_views"]


@dataclass(frozen=True)
class AugmentConfig:
    p_crop: float = 0.5
    crop_scale: tuple[float, float] = (0.5, 1.0)
    p_affine: float = 0.5
    rotation_deg: float = 45.0
    translate_fraction: float = 0.1
    scale_range: tuple[float, float] = (0.9, 1.1)
    full_so3: bool = False  # beyond the paper: uniform random 3-D rotation instead of z only
    intensity_jitter: float = 0.0  # beyond the paper: std of a random gain and offset

    def __post_init__(self) -> None:
        for name in ("p_crop", "p_affine"):
            if not 0 <= getattr(self, name) <= 1:
                raise CryoNBError(f"augment {name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise CryoNBError(f"augment crop_scale must satisfy 0 < low ≤ high ≤ 1, got {self.crop_scale}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "AugmentConfig":
        reject_unknown_keys(raw, cls, "augment")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _rotation_z(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
    return rot


def _random_so3(n: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=generator)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=1).reshape(n, 3, 3)


def sample_transforms(n: int, cfg: AugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` transforms.

    Returns ``theta`` (n, 3, 4) output→input maps in grid_sample's (x, y, z) coordinates, a bool mask of
    the samples that are transformed at all, and the crop volume fractions (1 where no crop was drawn).
    """
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)  # noqa: E731
    do_crop = torch.rand(n, generator=generator) < cfg.p_crop
    do_affine = torch.rand(n, generator=generator) < cfg.p_affine
    # crop: side fraction = volume fraction^(1/3); the box stays inside the volume
    volume_fraction = torch.where(do_crop, u(*cfg.crop_scale), torch.ones(n))
    side = volume_fraction ** (1 / 3)
    centre = (torch.rand(n, 3, generator=generator) * 2 - 1) * (1 - side)[:, None]
    crop = torch.zeros(n, 3, 4)
    crop[:, :, :3] = torch.diag_embed(side[:, None].expand(n, 3))
    crop[:, :, 3] = centre * do_crop[:, None]
    # affine: rotation about z (or SO(3)), shift in x and y, isotropic scale; inverse map for sampling
    if cfg.full_so3:
        rot = _random_so3(n, generator)
    else:
        rot = _rotation_z(u(-cfg.rotation_deg, cfg.rotation_deg) * math.pi / 180)
    scale = u(*cfg.scale_range)
    shift = torch.zeros(n, 3)
    shift[:, 0] = u(-cfg.translate_fraction, cfg.translate_fraction)
    shift[:, 1] = u(-cfg.translate_fraction, cfg.translate_fraction)
    shift = shift * 2  # fraction of the size → normalised [-1, 1] units
    inv = rot.transpose(1, 2) / scale[:, None, None]
    affine = torch.zeros(n, 3, 4)
    affine[:, :, :3] = inv
    affine[:, :, 3] = -(inv @ shift[:, :, None]).squeeze(2)
    identity = torch.eye(3, 4).expand(n, 3, 4)
    affine = torch.where(do_affine[:, None, None], affine, identity)
    # compose: output → affine → crop box → input
    theta = crop[:, :, :3] @ affine
    theta[:, :, 3] += crop[:, :, 3]
    return theta, do_crop | do_affine, volume_fraction


def resample(volumes: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Trilinear resampling of ``volumes`` (n, C, z, y, x) at the affine maps ``theta`` (n, 3, 4) (output → input,
    grid_sample's (x, y, z) coordinates in [-1, 1], align_corners=False), with border padding.

    When no map mixes z with x or y (rotations about z, the paper's augmentation), trilinear interpolation
    separates exactly into a linear interpolation along z followed by one bilinear 2-D resampling of every
    z-slice, which shares one (y, x) grid per sample: measured 10× faster than the 3-D ``grid_sample`` on one
    CPU thread (7.7 vs 78 ms CPU for 48 volumes of 32³), equal to it up to float rounding (≤ 1e-5 on
    unit-variance volumes). Other maps (``full_so3``) take the 3-D ``grid_sample``.
    NOTE: border padding (cryo-ET has no zero background; repeating the edge avoids a fake boundary) clamps
    each axis on its own, so it separates too.
    """
    separable = bool((theta[:, 2, :2] == 0).all() and (theta[:, :2, 2] == 0).all())
    if not separable:
        grid = F.affine_grid(theta, list(volumes.shape), align_corners=False)
        return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="border", align_corners=False)
    n, c, d, h, w = volumes.shape
    # z: output plane k samples input z' = θ_zz · z_k + θ_z (normalised), unnormalised and clamped like grid_sample
    z_out = (torch.arange(d, dtype=theta.dtype, device=theta.device) * 2 + 1) / d - 1
    z_in = (((theta[:, 2, 2, None] * z_out + theta[:, 2, 3, None]) + 1) * d - 1) / 2
    z_in = z_in.clamp(0, d - 1)  # (n, d)
    z0 = z_in.floor().long().clamp(max=d - 1)
    z1 = (z0 + 1).clamp(max=d - 1)
    frac = z_in - z0
    # linear interpolation along z as one (d × d) matrix per sample with two weights per row: a batched matmul
    # reads each volume once (indexing the two neighbour planes and blending them took 3 passes and 2× longer)
    mix = torch.zeros(n, d, d, dtype=volumes.dtype, device=volumes.device)
    mix.scatter_add_(2, z0[:, :, None], (1 - frac)[:, :, None].to(volumes.dtype))
    mix.scatter_add_(2, z1[:, :, None], frac[:, :, None].to(volumes.dtype))
    planes = torch.bmm(mix.repeat_interleave(c, 0), volumes.reshape(n * c, d, h * w)).view(n, c * d, h, w)  # z-slices as channels
    grid = F.affine_grid(theta[:, :2][:, :, [0, 1, 3]], [n, c * d, h, w], align_corners=False)
    return F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=False).reshape(n, c, d, h, w)


def augment(volumes: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augmented copies of ``volumes`` ``(batch, 1, z, y, x)``, one independent draw per sample."""
    if volumes.ndim != 5:
        raise CryoNBError(f"augment expects (batch, 1, z, y, x), got shape {tuple(volumes.shape)}")
    n = volumes.shape[0]
    theta, moved, _ = sample_transforms(n, cfg, generator)
    out = volumes.clone()
    idx = torch.nonzero(moved).flatten()
    if len(idx):
        out[idx] = resample(volumes[idx], theta[idx].to(volumes.dtype).to(volumes.device))
    if cfg.intensity_jitter > 0:
        gain = 1 + cfg.intensity_jitter * torch.randn(n, 1, 1, 1, 1, generator=generator)
        offset = cfg.intensity_jitter * torch.randn(n, 1, 1, 1, 1, generator=generator)
        out = out * gain.to(out.device) + offset.to(out.device)
    return out


def two_views(volumes: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A positive pair: two independent augmentations of the same batch."""
    return augment(volumes, cfg, generator), augment(volumes, cfg, generator)
