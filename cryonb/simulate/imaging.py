"""From a scene to a noisy subtomogram: the tilt-series reference path and the fast 3-D path.

Reference (``tiltseries``): torch-fourier-slice projects the scene at every tilt about the y axis;
each projection becomes image contrast (``contrast_per_density``: −2 σ ∫V dz, protein dark) filtered by
CTF × envelope × MTF (torch-ctf) and by the exposure damage of that tilt (Grant & Grigorieff 2015:
the exposure it has received, in the order of the tilt scheme); shot noise is added per tilt with the
variance of its electron count (dose × zero-loss fraction exp(−t / (λ_in cos θ)) × pixel area) before
the detector MTF; with ``phase_flip`` each image's phases are flipped where its CTF is negative; and
torch-fourier-slice back-projects (direct Fourier inversion: inserted slices are averaged, which is the
weighted back-projection's ramp in Fourier form). The missing wedge comes from the tilt geometry.

Fast (``fast``): the defocus, hence CTF × envelope × MTF, is the same at every tilt, and what differs
between tilts (exposure damage, noise variance) does not depend on the sample, so the whole chain is a
linear shift-invariant 3-D filter: the reconstruction is ``irfftn(rfftn(scene) · A(k) · T(|k|))``,
where A(k) (wedge, slice sampling, interpolation, each tilt's damage) is *measured once* from the
reference path's response to a point and T is contrast × CTF × envelope × MTF. Reconstructed noise is
Gaussian with power spectrum G(k)·MTF², G measured once by averaging the reference path's
reconstructions of each tilt's shot noise (over realisations and along the tilt axis, on which it does
not depend). Both are cached on disk per geometry, dose and ice. Every option of
:class:`~cryonb.simulate.config.SimulationConfig` is supported by both paths.

Noise: ``noise="snr"`` scales the noise so that Var(signal)/Var(noise) over the crop is exactly the
requested SNR, and reports the *equivalent dose*: the total dose whose shot noise would have that
variance (:attr:`Subtomogram.dose_e_per_a2`). ``noise="dose"`` keeps the shot noise of the configured
dose and reports the SNR it gives; its ``snr`` argument then only switches noise off (``math.inf``).
Polarity: "bright" returns the negative of "dark" (signal and noise), the same numbers otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch_fourier_slice import backproject_2d_to_3d, project_3d_to_2d

from cryonb.cache import content_key
from cryonb.io import atomic_path
from cryonb.paths import cache_dir
from cryonb.simulate.config import SimulationConfig
from cryonb.simulate.optics import contrast_per_density, ctf_of_k, exposure_weight_of_k, mtf_of_k, shot_noise_variance, transfer_of_k

__all__ = [
    "Subtomogram",
    "tilt_matrices",
    "project_tilt_series",
    "reconstruct_tilt_series",
    "simulate_tiltseries",
    "simulate_fast",
    "fast_filters",
    "prepare",
    "crop_center",
    "exposure_filters",
    "white_rfft",
    "irfftn_center_crop",
    "combine_at_snr",
]

_N_NOISE_REALISATIONS = 4


@dataclass
class Subtomogram:
    """signal, noise: (c, c, c) float64 crops in image-contrast units (noise already scaled);
    volume = signal + noise. snr_measured = Var(signal) / Var(noise) over the crop; dose_e_per_a2: total
    dose (e/Å², all tilts) whose shot noise this noise is (the equivalent dose in SNR mode; inf: no noise)."""

    signal: np.ndarray
    noise: np.ndarray
    snr_measured: float
    dose_e_per_a2: float = math.nan

    @property
    def volume(self) -> np.ndarray:
        return self.signal + self.noise


def tilt_matrices(config: SimulationConfig) -> torch.Tensor:
    """(n_tilts, 3, 3) rotations about the y axis acting on (x, y, z) column vectors."""
    return torch.as_tensor(Rotation.from_euler("y", np.asarray(config.tilts_deg())[:, None], degrees=True).as_matrix(), dtype=torch.float32)


def _k_grid_2d(n: int, voxel_size_a: float) -> torch.Tensor:
    f = torch.fft.fftfreq(n, d=voxel_size_a)
    fx = torch.fft.rfftfreq(n, d=voxel_size_a)
    return torch.sqrt(f[:, None] ** 2 + fx[None, :] ** 2)


@lru_cache(maxsize=8)
def _k_grid_3d(n: int, voxel_size_a: float) -> torch.Tensor:
    f = torch.fft.fftfreq(n, d=voxel_size_a)
    fx = torch.fft.rfftfreq(n, d=voxel_size_a)
    return torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)


def project_tilt_series(scene: np.ndarray, config: SimulationConfig) -> torch.Tensor:
    """Line integrals of the (s, s, s) scene at every tilt: (n_tilts, s, s) float32 (y, x)."""
    vol = torch.as_tensor(scene, dtype=torch.float32)
    return project_3d_to_2d(vol, tilt_matrices(config))


def _filter_2d(images: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft2(torch.fft.rfft2(images) * h, s=images.shape[-2:])


def reconstruct_tilt_series(images: torch.Tensor, config: SimulationConfig) -> torch.Tensor:
    """Back-project (n_tilts, s, s) images into an (s, s, s) volume (torch-fourier-slice)."""
    return backproject_2d_to_3d(images, tilt_matrices(config))


def crop_center(volume: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Central ``size``³ crop of a cubic volume whose centre is index s/2."""
    arr = volume.numpy() if isinstance(volume, torch.Tensor) else volume
    lo = arr.shape[-1] // 2 - size // 2
    return np.asarray(arr[..., lo : lo + size, lo : lo + size, lo : lo + size], dtype=np.float64)


def combine_at_snr(signal: np.ndarray, noise: np.ndarray, snr: float, dose_e_per_a2: float = math.nan) -> Subtomogram:
    """Scale ``noise`` so that Var(signal)/Var(noise) = snr over the crop (SNR inf: no noise).

    dose_e_per_a2: total dose whose shot noise ``noise`` is; the result's is the equivalent dose
    dose / scale², the dose at which shot noise alone would give this SNR.
    """
    if math.isinf(snr):
        return Subtomogram(signal, np.zeros_like(signal), math.inf, math.inf)
    scale = math.sqrt(signal.var() / (snr * noise.var()))
    noise = noise * scale
    return Subtomogram(signal, noise, float(signal.var() / noise.var()), dose_e_per_a2 / scale**2)


def _finish(signal: np.ndarray, noise: np.ndarray | None, snr: float, config: SimulationConfig) -> Subtomogram:
    """Noise mode and polarity: ``noise`` is the shot noise of the configured dose (None: none drawn)."""
    total_dose = config.dose_per_tilt_e_per_a2 * len(config.tilts_deg())
    if noise is None or math.isinf(snr):
        sub = Subtomogram(signal, np.zeros_like(signal), math.inf, math.inf)
    elif config.noise == "dose":
        sub = Subtomogram(signal, noise, float(signal.var() / noise.var()), total_dose)
    else:
        sub = combine_at_snr(signal, noise, snr, total_dose)
    if config.polarity == "bright":  # the models' other convention: the same volume negated
        sub = Subtomogram(-sub.signal, -sub.noise, sub.snr_measured, sub.dose_e_per_a2)
    return sub


def exposure_filters(config: SimulationConfig, k_inv_a: torch.Tensor) -> torch.Tensor:
    """(n_tilts, *k.shape) amplitude each tilt keeps after the exposure it received before its midpoint
    (:meth:`SimulationConfig.exposure_e_per_a2`, Grant & Grigorieff 2015); ones without ``exposure_damage``."""
    n = len(config.tilts_deg())
    if not config.exposure_damage:
        return torch.ones((n, *k_inv_a.shape), dtype=torch.float32)
    exposure = torch.as_tensor(config.exposure_e_per_a2()).reshape(n, *([1] * k_inv_a.ndim))
    return exposure_weight_of_k(k_inv_a, exposure).to(torch.float32)


def simulate_tiltseries(scene: np.ndarray, defocus_um: float, snr: float, config: SimulationConfig,
                        rng: np.random.Generator) -> Subtomogram:
    """Reference path: project, contrast × CTF/MTF × exposure damage per tilt, shot noise per tilt,
    phase flip (optional), back-project, crop (see module doc)."""
    s = scene.shape[0]
    k = _k_grid_2d(s, config.voxel_size_a)
    projections = project_tilt_series(scene, config)
    h = contrast_per_density(config) * transfer_of_k(k, defocus_um, config)
    signal_images = _filter_2d(projections, h.to(torch.float32) * exposure_filters(config, k))
    signal = crop_center(reconstruct_tilt_series(signal_images, config), config.crop_size)
    if math.isinf(snr):
        return _finish(signal, None, snr, config)
    sigma = torch.as_tensor(np.sqrt(shot_noise_variance(config)), dtype=torch.float32)[:, None, None]
    white = torch.as_tensor(rng.standard_normal(projections.shape), dtype=torch.float32) * sigma
    h_noise = mtf_of_k(k, config)
    if config.phase_flip:  # the flip acts on the recorded image, noise included (its statistics do not change)
        h_noise = h_noise * torch.sign(ctf_of_k(k, defocus_um, config))
    noise = crop_center(reconstruct_tilt_series(_filter_2d(white, h_noise.to(torch.float32)), config), config.crop_size)
    return _finish(signal, noise, snr, config)


def _geometry_key(config: SimulationConfig) -> str:
    damage = config.exposure_e_per_a2().round(6).tolist() if config.exposure_damage else None
    variance = [float(f"{v:.9g}") for v in shot_noise_variance(config)]
    geo = [config.scene_size, config.tilts_deg(), _N_NOISE_REALISATIONS, config.voxel_size_a, damage, variance, "v3"]
    return content_key(*geo)


def _measure_filters(config: SimulationConfig) -> tuple[np.ndarray, np.ndarray]:
    s = config.scene_size
    delta = np.zeros((s, s, s), dtype=np.float32)
    delta[s // 2, s // 2, s // 2] = 1.0
    damage = exposure_filters(config, _k_grid_2d(s, config.voxel_size_a))
    psf = reconstruct_tilt_series(_filter_2d(project_tilt_series(delta, config), damage), config)
    a = torch.fft.rfftn(torch.fft.ifftshift(psf)).real.numpy()
    rng = np.random.default_rng(12345)  # fixed: the estimate is part of the geometry, not of a sample
    power = np.zeros((s, s, s))
    n_tilts = len(config.tilts_deg())
    sigma = np.sqrt(shot_noise_variance(config))[:, None, None]  # absolute: the shot noise of the dose
    for _ in range(_N_NOISE_REALISATIONS):
        white = torch.as_tensor(rng.standard_normal((n_tilts, s, s)) * sigma, dtype=torch.float32)
        power += np.abs(np.fft.fftn(reconstruct_tilt_series(white, config).numpy())) ** 2
    # every tilt's slice holds the whole ky line (tilt axis y), so the noise power depends on
    # (kz, kx) only: averaging over ky turns 4 realisations into 4*s samples per voxel (±4 % for s=64)
    # without the bias that smoothing across the ramp and the wedge edge would add
    power = np.broadcast_to(power.mean(axis=1, keepdims=True) / _N_NOISE_REALISATIONS, power.shape)
    g = power[:, :, : s // 2 + 1] / s**3
    return a.astype(np.float32), g.astype(np.float32)


@lru_cache(maxsize=4)
def _filters_cached(config_json: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    config = SimulationConfig.from_dict(json.loads(config_json))
    path = cache_dir() / "transfer" / f"wedge-{_geometry_key(config)}.npz"
    if path.is_file():
        with np.load(path) as z:
            a, g = z["a"], z["g"]
    else:
        a, g = _measure_filters(config)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, a=a, g=g)
    return torch.as_tensor(a), torch.as_tensor(g), torch.sqrt(torch.as_tensor(g))


def fast_filters(config: SimulationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G): rfft-layout (s, s, s//2+1) transfer of the tilt scheme (wedge and exposure damage) and the
    noise power of the back-projected shot noise (absolute: G averages to the reconstructed noise variance
    before the detector MTF)."""
    a, g, _ = _filters_cached(json.dumps(config.to_dict(), sort_keys=True))
    return a, g


@lru_cache(maxsize=8)
def _radial_index(n: int, voxel_size_a: float, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index grid into a radial table, table frequencies in Å⁻¹) for an (n, n, n//2+1) rfft grid."""
    k = _k_grid_3d(n, voxel_size_a)
    k_table = torch.linspace(0, float(k.max()) * 1.0001, n_bins, dtype=torch.float64)
    idx = torch.round(k / k_table[1]).to(torch.int64)
    return idx, k_table


def irfftn_center_crop(spec: torch.Tensor, s: int, size: int) -> np.ndarray:
    """Central ``size``³ crop of ``irfftn(spec, s=(s, s, s))`` as float64.

    Inverts one axis at a time and crops after each, so later passes are smaller: exact, and for
    size = s/2 about 60 % of the full inverse's work. Written by hand: no FFT library crops between axes.
    """
    lo = s // 2 - size // 2
    x = torch.fft.ifft(spec, dim=0)[lo : lo + size]
    x = torch.fft.ifft(x, dim=1)[:, lo : lo + size]
    x = torch.fft.irfft(x, n=s, dim=2)[:, :, lo : lo + size]
    return x.numpy().astype(np.float64)


def white_rfft(s: int, generator: torch.Generator) -> torch.Tensor:
    """(s, s, s//2+1) complex64: the rfftn of an (s, s, s) field of unit-variance white noise, drawn directly.

    Every bin is complex normal with E|X|² = s³; the kx = 0 and kx = s/2 planes are made Hermitian,
    (Y + conj Y(−k)) / √2, as a real field's are (so the self-conjugate bins come out real). Statistically
    the same as ``rfftn(randn(s, s, s))`` and one FFT cheaper; torch's sampler is 3x faster than numpy's.
    Written by hand: no library draws a real field's spectrum directly.
    """
    z = torch.view_as_complex(torch.randn((s, s, s // 2 + 1, 2), generator=generator).mul_(math.sqrt(s**3 / 2)))
    for ix in (0, s // 2):
        plane = z[:, :, ix]
        partner = torch.roll(torch.flip(plane, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # index (−kz, −ky)
        z[:, :, ix] = (plane + partner.conj()) / math.sqrt(2)
    return z


@lru_cache(maxsize=4)
def _noise_amplitude(config_json: str) -> torch.Tensor:
    """sqrt(G) × MTF on the rfft grid: the reconstructed noise's amplitude spectrum (per geometry)."""
    config = SimulationConfig.from_dict(json.loads(config_json))
    s = config.scene_size
    _, _, sqrt_g = _filters_cached(config_json)
    idx, k_table = _radial_index(s, config.voxel_size_a, 4096)
    return sqrt_g * mtf_of_k(k_table, config).to(torch.float32)[idx]


def prepare(config: SimulationConfig) -> None:
    """Load or measure, once, everything a sample of this config needs (the fast path's filters, the
    measured MTF), so that worker processes forked afterwards inherit it instead of each redoing it."""
    mtf_of_k(torch.zeros(1), config)
    if config.path == "fast":
        _noise_amplitude(json.dumps(config.to_dict(), sort_keys=True))


def simulate_fast(scene: np.ndarray, defocus_um: float, snr: float, config: SimulationConfig,
                  rng: np.random.Generator) -> Subtomogram:
    """Fast path: one 3-D filter for the signal, one coloured Gaussian field for the noise.

    The transfer depends on |k| only, so it is evaluated on a 4096-entry radial table (torch-ctf)
    and gathered; no fftshift is needed because a circular convolution commutes with the shift.
    """
    s = scene.shape[0]
    key = json.dumps(config.to_dict(), sort_keys=True)
    a, _, _ = _filters_cached(key)
    idx, k_table = _radial_index(s, config.voxel_size_a, 4096)
    h = a * (contrast_per_density(config) * transfer_of_k(k_table, defocus_um, config)).to(torch.float32)[idx]
    spec = torch.fft.rfftn(torch.as_tensor(scene, dtype=torch.float32))
    torch.view_as_real(spec).mul_(h[..., None])  # real filter on (re, im) pairs: 8x faster than complex * real
    signal = irfftn_center_crop(spec, s, config.crop_size)
    if math.isinf(snr):
        return _finish(signal, None, snr, config)
    # white noise drawn directly in Fourier space and coloured there: the same statistics, and the same
    # absolute variance, as the reference path's back-projected shot noise
    gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
    noise_spec = white_rfft(s, gen)
    torch.view_as_real(noise_spec).mul_(_noise_amplitude(key)[..., None])
    noise = irfftn_center_crop(noise_spec, s, config.crop_size)
    return _finish(signal, noise, snr, config)
