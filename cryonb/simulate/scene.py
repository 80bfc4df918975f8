"""Crowded scenes: a target molecule in a uniform random orientation plus non-overlapping neighbours.

Scenes are (s, s, s) float32 (z, y, x) potential maps with the target near the centre
(offset by a small jitter); neighbours are packed as non-overlapping spheres (bounding radius
+ a 5 Å gap) close enough to enter the cropped subtomogram, as in a crowded cytoplasm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from cryonb.errors import CryoNBError
from cryonb.simulate.config import SimulationConfig
from cryonb.simulate.density import MoleculeMap

__all__ = ["Placement", "Scene", "rotate_map", "make_scene", "random_rotation"]

_GAP_A = 5.0


@dataclass(frozen=True)
class Placement:
    """One molecule in a scene: class index, ZYZ Euler angles (degrees, intrinsic, scipy 'ZYZ'),
    centre offset from the scene centre in voxels (z, y, x)."""

    class_id: int
    euler_zyz_deg: tuple[float, float, float]
    offset_vox: tuple[float, float, float]


@dataclass
class Scene:
    """volume: (s, s, s) float32 full scene; target: (s, s, s) float32 target alone; placements[0] is the target."""

    volume: np.ndarray
    target: np.ndarray
    placements: list[Placement]


def random_rotation(rng: np.random.Generator) -> Rotation:
    """A rotation drawn uniformly from SO(3) (Haar measure)."""
    return Rotation.random(random_state=rng)


@lru_cache(maxsize=16)
def _centred_xyz_grid(t: int) -> torch.Tensor:
    """(t, t, t, 3) float64 (x, y, z) voxel coordinates relative to index t/2; cached per size."""
    idx = torch.arange(t, dtype=torch.float64) - t / 2.0
    zz, yy, xx = torch.meshgrid(idx, idx, idx, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def rotate_map(density: np.ndarray, rotation: Rotation, shift_vox: np.ndarray) -> np.ndarray:
    """Rotate a centred (t, t, t) map about index t/2 and shift it by a sub-voxel amount.

    rotation acts on (x, y, z) molecule coordinates; shift_vox is (z, y, x) in voxels.
    Trilinear interpolation (torch grid_sample); returns (t, t, t) float32.
    """
    t = density.shape[0]
    c = t / 2.0
    p_xyz = _centred_xyz_grid(t) - torch.as_tensor(np.asarray(shift_vox, dtype=np.float64)[::-1].copy())
    inv = torch.as_tensor(rotation.inv().as_matrix(), dtype=torch.float64)
    src = p_xyz @ inv.T + c  # (t, t, t, 3) source (x, y, z) indices
    grid = (src / (t - 1) * 2 - 1).to(torch.float32)[None]
    vol = torch.as_tensor(density, dtype=torch.float32)[None, None]
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy()


def paste_block(volume: np.ndarray, block: np.ndarray, centre_index: np.ndarray) -> None:
    """Add a (t, t, t) block whose index t/2 lands on integer index ``centre_index`` (z, y, x) of a volume of
    any shape; the parts outside are clipped."""
    t, shape = block.shape[0], np.array(volume.shape)
    lo = centre_index - t // 2
    a0, a1 = np.maximum(lo, 0), np.minimum(lo + t, shape)
    if np.any(a1 <= a0):
        return
    b0 = a0 - lo
    b1 = b0 + (a1 - a0)
    volume[a0[0]:a1[0], a0[1]:a1[1], a0[2]:a1[2]] += block[b0[0]:b1[0], b0[1]:b1[1], b0[2]:b1[2]]


def _place(scene: np.ndarray, m: MoleculeMap, rot: Rotation, offset_vox: np.ndarray) -> np.ndarray:
    whole = np.round(offset_vox).astype(np.int64)
    block = rotate_map(m.density, rot, offset_vox - whole)
    paste_block(scene, block, scene.shape[0] // 2 + whole)
    return block


def make_scene(
    target_class: int,
    maps: list[MoleculeMap],
    config: SimulationConfig,
    rng: np.random.Generator,
    neighbour_classes: list[int] | None = None,
) -> Scene:
    """Build one crowded scene.

    The target sits at the scene centre plus a uniform jitter of ±max_shift_vox per axis;
    ``n_neighbours`` molecules drawn from ``neighbour_classes`` (default: every class except the
    target's) are placed by rejection sampling without overlap, centres within crop/2 + their
    radius of the centre so that they reach into the crop. A neighbour that finds no free spot in
    200 tries is left out (the count is in the placements).
    """
    s = config.scene_size
    tgt = maps[target_class]
    if 2 * tgt.radius_a / config.voxel_size_a > config.crop_size:
        raise CryoNBError(
            f"{tgt.pdb_id}: molecule diameter {2 * tgt.radius_a:.0f} Å exceeds the crop box "
            f"(crop_size={config.crop_size} x voxel_size_a={config.voxel_size_a} Å)")
    volume = np.zeros((s, s, s), dtype=np.float32)
    target = np.zeros((s, s, s), dtype=np.float32)
    rot = random_rotation(rng)
    shift = rng.uniform(-config.max_shift_vox, config.max_shift_vox, size=3)
    block = rotate_map(tgt.density, rot, shift - np.round(shift))
    paste_block(target, block, s // 2 + np.round(shift).astype(np.int64))
    volume += target
    placements = [Placement(target_class, tuple(rot.as_euler("ZYZ", degrees=True)), tuple(shift))]
    spheres = [(shift, tgt.radius_a / config.voxel_size_a)]
    pool = neighbour_classes if neighbour_classes is not None else [i for i in range(len(maps)) if i != target_class]
    for _ in range(config.n_neighbours if pool else 0):
        cls = int(pool[rng.integers(len(pool))])
        m = maps[cls]
        r = m.radius_a / config.voxel_size_a
        reach = min(config.crop_size / 2 + r, s / 2 - m.density.shape[0] / 2 - 1)
        for _try in range(200):
            pos = rng.uniform(-reach, reach, size=3)
            if all(np.linalg.norm(pos - c) >= r + rc + _GAP_A / config.voxel_size_a for c, rc in spheres):
                nrot = random_rotation(rng)
                _place(volume, m, nrot, pos)
                placements.append(Placement(cls, tuple(nrot.as_euler("ZYZ", degrees=True)), tuple(pos)))
                spheres.append((pos, r))
                break
    return Scene(volume=volume, target=target, placements=placements)
