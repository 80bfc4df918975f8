"""A whole simulated tomogram: bundled structures at random positions and orientations in a slab.

For trying the user path (``extract`` → ``classify`` → ``oneshot``) on data whose truth is known.
The imaging is the fast simulator's (:mod:`cryonb.simulate.imaging`): the missing-wedge transfer A(k)
and the weighted back-projection's noise power G(k), both *measured* once on the simulator's cubic
scene geometry (:func:`~cryonb.simulate.imaging.fast_filters`), are interpolated onto the tomogram's
(non-cubic) frequency grid in cycles per voxel; contrast × CTF × envelope × MTF come from
:mod:`cryonb.simulate.optics` in Å⁻¹. One defocus for the whole tomogram (no defocus gradient). The
exposure damage, ice, dose, noise mode, phase plate, phase flipping and polarity follow ``config``
as in the data sets.

SNR is defined as in the data sets: Var(signal) / Var(noise), here with the signal variance averaged
over one model-sized box (``box_a``) around each particle and, with ``band_voxel_size_a``, both
restricted to the frequencies a box resampled to that voxel size keeps, so that extracted boxes have
the SNR of the data sets the models were trained on (noise above that band is cut by the extraction).

Coordinates are tomogram voxel indices ``(x, y, z)``, 0-based, voxel ``i`` centred at ``i``
(``volume[z, y, x]``), the convention of :mod:`cryonb.extract`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch
from scipy.ndimage import map_coordinates

from cryonb.errors import CryoNBError
from cryonb.io import write_text_atomic
from cryonb.simulate.config import SimulationConfig, check_snr
from cryonb.simulate.density import MoleculeMap, molecule_map
from cryonb.simulate.imaging import fast_filters
from cryonb.simulate.optics import contrast_per_density, mtf_of_k, transfer_of_k
from cryonb.simulate.scene import paste_block, random_rotation, rotate_molecule

__all__ = [
    "SimulatedTomogram",
    "place_particles",
    "tomogram_filters",
    "simulate_tomogram",
    "write_coordinates_star",
]

_GAP_A = 5.0  # free space between neighbouring molecules, as in the crowded scenes


@dataclass(frozen=True)
class SimulatedTomogram:
    """A simulated tomogram and its truth.

    volume: (z, y, x) float32, signal + noise (not normalised).
    potential: (z, y, x) float32, the noise-free scene before imaging (Å⁻²).
    particles: one row per molecule: ``x, y, z`` (voxels), ``class_id``, ``pdb_id``, ``euler_zyz_deg``,
        ``near_border`` (placed so that a ``box_a`` box reaches past the x or y edge).
    voxel_size_a, defocus_um: imaging; snr_measured: the SNR as defined in the module docstring.
    dose_e_per_a2: total dose whose shot noise the noise is (in SNR mode the equivalent dose; inf: no noise).
    polarity: 'dark' (protein darker than ice) or 'bright', as ``config.polarity``.
    """

    volume: np.ndarray
    potential: np.ndarray
    particles: pd.DataFrame
    voxel_size_a: float
    defocus_um: float
    snr_measured: float
    dose_e_per_a2: float = math.nan
    polarity: str = "dark"


def _check_shape(shape_zyx: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape_zyx)
    if len(shape) != 3 or min(shape) < 8:
        raise CryoNBError(f"tomogram shape {tuple(shape_zyx)}: expected three sizes (z, y, x) of at least 8 voxels")
    return shape  # type: ignore[return-value]


def _centre_range(n: int, box_vox: int, axis: str) -> tuple[float, float]:
    """Centres whose ``box_vox`` box (as :mod:`cryonb.extract` cuts it) lies inside ``n`` voxels."""
    lo, hi = box_vox // 2, n - box_vox + box_vox // 2
    if hi < lo:
        raise CryoNBError(f"tomogram {axis} size {n} voxels is smaller than the {box_vox}-voxel box; expected ≥ {box_vox}")
    return lo, hi - 0.49  # stays inside after rounding to the nearest voxel


def _near_border(rng: np.random.Generator, shape: tuple[int, int, int], box_vox: int, inside: list[tuple[float, float]]) -> np.ndarray:
    """A centre (z, y, x) within half a box of an x or y edge, so its box reaches past the edge."""
    pos = np.array([rng.uniform(*r) for r in inside])
    axis = int(rng.integers(1, 3))
    depth = rng.uniform(2.0, max(2.0, box_vox / 2 - 2.0))
    pos[axis] = depth if rng.random() < 0.5 else shape[axis] - 1 - depth
    return pos


def place_particles(
    shape_zyx: Sequence[int],
    radii_vox: Sequence[float],
    n_particles: int,
    box_vox: int,
    rng: np.random.Generator,
    *,
    n_border: int = 0,
    gap_vox: float = 0.5,
    max_tries: int = 2000,
) -> pd.DataFrame:
    """Non-overlapping molecule centres: ``n_particles`` whose boxes fit inside, ``n_border`` near an edge.

    Parameters
    ----------
    shape_zyx : tomogram size in voxels.
    radii_vox : (n_classes,) bounding radius of each class in voxels; classes are dealt in turn, then shuffled
        (interior and border particles separately).
    box_vox : edge of the box later cut around each particle, voxels.
    gap_vox : free space kept between two molecules' bounding spheres.

    Returns
    -------
    pandas.DataFrame with ``x, y, z`` (voxels), ``class_id``, ``near_border``; interior particles first.

    Raises
    ------
    CryoNBError
        A size too small for the box, or no free spot for a molecule after ``max_tries`` draws
        (the tomogram is too crowded: fewer particles or a larger tomogram).
    """
    shape = _check_shape(shape_zyx)
    if n_particles < 0 or n_border < 0 or not len(radii_vox):
        raise CryoNBError(f"n_particles={n_particles}, n_border={n_border}, {len(radii_vox)} classes: expected counts ≥ 0 and ≥ 1 class")
    inside = [_centre_range(n, box_vox, a) for n, a in zip(shape, "zyx")]
    total = n_particles + n_border
    # dealt in turn within each group, so every class has interior particles once n_particles >= n_classes
    classes = np.concatenate([rng.permutation(np.arange(n) % len(radii_vox)) for n in (n_particles, n_border)]).astype(int)
    centres: list[np.ndarray] = []
    for i, cls in enumerate(classes):
        r = float(radii_vox[cls])
        for _ in range(max_tries):
            pos = np.array([rng.uniform(*rg) for rg in inside]) if i < n_particles else _near_border(rng, shape, box_vox, inside)
            if all(np.linalg.norm(pos - c) >= r + float(radii_vox[k]) + gap_vox for c, k in zip(centres, classes)):
                centres.append(pos)
                break
        else:
            raise CryoNBError(
                f"no free spot for molecule {i + 1} of {total} in a {shape} tomogram after {max_tries} tries; "
                "expected fewer particles (n_particles) or a larger tomogram"
            )
    zyx = np.array(centres).reshape(-1, 3)
    return pd.DataFrame({"x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0], "class_id": classes.astype(int), "near_border": np.arange(total) >= n_particles})


def _interpolate_rfft(table: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """Resample an (s, s, s//2+1) rfft-layout table, a function of frequency in cycles per voxel, onto
    the rfft grid of ``shape`` (trilinear; exact where the grids' frequencies coincide)."""
    s = table.shape[0]
    shifted = np.fft.fftshift(table, axes=(0, 1))  # kz, ky monotonic: index = f * s + s/2
    fz, fy = np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1])
    fx = np.fft.rfftfreq(shape[2])
    iz, iy, ix = np.meshgrid(fz * s + s // 2, fy * s + s // 2, fx * s, indexing="ij")
    values = map_coordinates(shifted, [iz, iy, ix], order=1, mode="nearest")
    return torch.from_numpy(values.astype(np.float32))


def _k_grid(shape: tuple[int, int, int], voxel_size_a: float) -> torch.Tensor:
    """|k| in Å⁻¹ on the rfft grid of ``shape`` (z, y, x)."""
    fz = torch.fft.fftfreq(shape[0], d=voxel_size_a, dtype=torch.float64)
    fy = torch.fft.fftfreq(shape[1], d=voxel_size_a, dtype=torch.float64)
    fx = torch.fft.rfftfreq(shape[2], d=voxel_size_a, dtype=torch.float64)
    return torch.sqrt(fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2)


def tomogram_filters(shape_zyx: Sequence[int], config: SimulationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G): the simulator's measured wedge transfer and noise power on the rfft grid of ``shape_zyx``.

    Both are functions of frequency in cycles per voxel, measured for ``config``'s tilt scheme on its
    ``scene_size``³ geometry (:func:`~cryonb.simulate.imaging.fast_filters`), so they carry over to any
    grid and voxel size. Returns two (z, y, x//2+1) float32 tensors; G is relative (its scale is set by the SNR).
    """
    shape = _check_shape(shape_zyx)
    a, g = fast_filters(config)
    return _interpolate_rfft(a.numpy(), shape), _interpolate_rfft(g.numpy(), shape)


def _box_signal_variance(signal: np.ndarray, particles: pd.DataFrame, box_vox: int) -> float:
    """Mean over particles of the signal variance in the (clipped) box around each."""
    shape = np.array(signal.shape)
    variances = []
    for zyx in np.rint(particles[["z", "y", "x"]].to_numpy()).astype(np.int64):
        lo = np.maximum(zyx - box_vox // 2, 0)
        hi = np.minimum(lo + box_vox, shape)
        variances.append(float(signal[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].var(dtype=np.float64)))
    return float(np.mean(variances))


def _scene(shape: tuple[int, int, int], maps: list[MoleculeMap], particles: pd.DataFrame, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Potential of every particle pasted at its centre in a uniform random orientation; (volume, ZYZ Euler strings)."""
    volume = np.zeros(shape, dtype=np.float32)
    eulers = []
    for zyx, cls in zip(particles[["z", "y", "x"]].to_numpy(), particles["class_id"]):
        rot = random_rotation(rng)
        whole = np.round(zyx).astype(np.int64)
        paste_block(volume, rotate_molecule(maps[int(cls)], rot, zyx - whole), whole)
        eulers.append(";".join(f"{a:.4f}" for a in rot.as_euler("ZYZ", degrees=True)))
    return volume, eulers


def _band_mask(shape: tuple[int, int, int], voxel_size_a: float, box_vox: int, band_voxel_size_a: float | None) -> torch.Tensor:
    """rfft-grid mask of the frequencies that :mod:`cryonb.extract` keeps when it resamples a ``box_vox``
    crop to ``n = round(box_vox * voxel_size_a / band_voxel_size_a)`` voxels: |k| <= (n - 1) // 2 cycles per
    crop on every axis (just inside the band's Nyquist). All frequencies if ``band_voxel_size_a`` is None."""
    if band_voxel_size_a is None:
        return torch.ones((shape[0], shape[1], shape[2] // 2 + 1), dtype=torch.bool)
    n = int(round(box_vox * voxel_size_a / band_voxel_size_a))
    limit = ((min(n, box_vox) - 1) // 2) / box_vox + 1e-9  # cycles per tomogram voxel
    f = [torch.fft.fftfreq(shape[0]), torch.fft.fftfreq(shape[1]), torch.fft.rfftfreq(shape[2])]
    inside = [fi.abs() <= limit for fi in f]
    return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]


def simulate_tomogram(
    shape_zyx: Sequence[int],
    classes: Sequence[str],
    n_particles: int,
    snr: float,
    config: SimulationConfig,
    rng: np.random.Generator,
    *,
    n_border: int = 0,
    box_a: float = 320.0,
    band_voxel_size_a: float | None = None,
) -> SimulatedTomogram:
    """Simulate a tomogram of ``n_particles`` molecules (+ ``n_border`` near the x/y edges) of ``classes``.

    Parameters
    ----------
    shape_zyx : tomogram size in voxels (z is the beam direction; the tilt axis is y, as in the data sets).
    classes : bundled PDB ids (or structure files); ``class_id`` indexes this list.
    snr : Var(signal) / Var(noise) over a ``box_a`` box around each particle (``math.inf``: no noise). With
        ``config.noise == "dose"`` the noise is the shot noise of the dose and ``snr`` only switches it off (inf).
    config : optics and tilt scheme; ``config.voxel_size_a`` is the tomogram's voxel size. One defocus is
        drawn from ``[defocus_um_min, defocus_um_max]``.
    rng : the only source of randomness (positions, orientations, defocus, noise).
    box_a : edge in Å of the box later cut around each particle (the models': 32 × 10 Å); interior
        particles are placed so that this box lies inside the tomogram.
    band_voxel_size_a : measure the SNR over the frequencies a ``box_a`` box resampled to this voxel size
        (the models' 10 Å) keeps, as extracted boxes do; None measures it over the tomogram's full band.
    """
    shape = _check_shape(shape_zyx)
    snr = check_snr(snr)
    if not classes:
        raise CryoNBError("classes: expected at least one PDB id")
    vs = config.voxel_size_a
    box_vox = int(round(box_a / vs))
    maps = [molecule_map(c, vs, mask_volume_factor=config.mask_volume_factor, ice_potential_v=config.ice_potential_v) for c in classes]
    radii = [m.radius_a / vs for m in maps]
    particles = place_particles(shape, radii, n_particles, box_vox, rng, n_border=n_border, gap_vox=_GAP_A / vs)
    potential, eulers = _scene(shape, maps, particles, rng)
    particles.insert(4, "pdb_id", [str(classes[c]) for c in particles["class_id"]])
    particles["euler_zyz_deg"] = eulers
    defocus_um = float(rng.uniform(config.defocus_um_min, config.defocus_um_max))
    a, g = tomogram_filters(shape, config)
    k = _k_grid(shape, vs)
    sign = -1.0 if config.polarity == "bright" else 1.0  # "bright": the same tomogram negated
    h = sign * contrast_per_density(config) * transfer_of_k(k, defocus_um, config)
    signal_spec = torch.fft.rfftn(torch.from_numpy(potential)) * a * h.to(torch.float32)
    signal = torch.fft.irfftn(signal_spec, s=shape).numpy()
    done = dict(voxel_size_a=vs, defocus_um=defocus_um, polarity=config.polarity)
    if math.isinf(snr):
        return SimulatedTomogram(signal.astype(np.float32), potential, particles, snr_measured=math.inf, dose_e_per_a2=math.inf, **done)
    # white noise in real space coloured like the back-projected shot noise of the configured dose (G is absolute)
    white = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    noise_spec = torch.fft.rfftn(white) * torch.sqrt(g.clamp(min=0)) * mtf_of_k(k, config).to(torch.float32)
    noise = torch.fft.irfftn(noise_spec, s=shape).numpy()
    band = _band_mask(shape, vs, box_vox, band_voxel_size_a)
    signal_var = _box_signal_variance(torch.fft.irfftn(signal_spec * band, s=shape).numpy(), particles, box_vox)
    noise_var = float(torch.fft.irfftn(noise_spec * band, s=shape).numpy().var(dtype=np.float64))
    total_dose = config.dose_per_tilt_e_per_a2 * len(config.tilts_deg())
    scale = 1.0 if config.noise == "dose" else math.sqrt(signal_var / (snr * noise_var))
    return SimulatedTomogram((signal + sign * scale * noise).astype(np.float32), potential, particles,
                             snr_measured=signal_var / (scale**2 * noise_var), dose_e_per_a2=total_dose / scale**2, **done)


def write_coordinates_star(path: str | os.PathLike[str], particles: pd.DataFrame, tomo_name: str | None = None) -> Path:
    """Write particle centres as a RELION-style STAR file (``rlnCoordinateX/Y/Z`` in tomogram voxels), atomically.

    ``particles`` needs ``x, y, z`` columns; ``tomo_name`` adds ``rlnTomoName``. Read back with
    :func:`cryonb.extract.read_coordinates`.
    """
    missing = [c for c in "xyz" if c not in particles.columns]
    if missing:
        raise CryoNBError(f"{path}: particle table lacks column(s) {missing}; expected x, y, z in voxels")
    star = pd.DataFrame({f"rlnCoordinate{a.upper()}": particles[a].to_numpy(dtype=np.float64).round(3) for a in "xyz"})
    if tomo_name is not None:
        star.insert(0, "rlnTomoName", tomo_name)
    return write_text_atomic(path, starfile.to_string({"particles": star}))
