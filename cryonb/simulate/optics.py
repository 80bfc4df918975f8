"""Microscope optics: CTF (torch-ctf), B-factor envelope, detector MTF, exposure damage and the
zero-loss fraction of each tilt, on any |k| grid.

NOTE on signs: :func:`ctf_of_k` is torch-ctf's CTF, ``sin(χ + arcsin A + φ)`` in textbook form with
χ = π λ Δz k² − π/2 Cs λ³ k⁴ (positive defocus = underfocus), so CTF(0) = +A. A weak-phase image is
``I/I₀ − 1 = −2 φ(x) ⊛ CTF`` with φ = σ ∫V dz the phase shift (:func:`contrast_per_density`), so dense
protein appears **dark**, as in real tomograms reconstructed from raw tilts. The minus sign lives in
:func:`contrast_per_density`, not in the CTF.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch_ctf import calculate_ctf_1d, calculate_relativistic_electron_wavelength
from torch_ctf.ctf_lpp import calculate_relativistic_gamma
from torch_ctf.ctf_utils import calculate_total_phase_shift

from cryonb.errors import CryoNBError
from cryonb.simulate.config import SimulationConfig
from cryonb.simulate.detector import IDEAL_DETECTOR, detector_names, measured_mtf, measured_mtf_path

__all__ = [
    "IDEAL_DETECTOR", "contrast_per_density", "critical_exposure_e_per_a2", "ctf_curve", "ctf_of_k", "ctf_zeros_inv_a",
    "detector_names", "electron_wavelength_a", "envelope_of_k", "exposure_weight_of_k", "interaction_constant_per_v_a",
    "measured_mtf", "measured_mtf_path", "mtf_of_k", "shot_noise_variance", "transfer_of_k", "zero_loss_fraction",
]


@lru_cache(maxsize=16)
def electron_wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength λ in Å (torch-ctf's ``calculate_relativistic_electron_wavelength``)."""
    return float(calculate_relativistic_electron_wavelength(voltage_kv * 1e3)) * 1e10


@lru_cache(maxsize=16)
def interaction_constant_per_v_a(voltage_kv: float) -> float:
    """σ = 2π m e λ / h² in rad / (V·Å): the phase shift per volt·Å of projected potential.

    With m = γ m₀ this is γ λ / (h² / (2π m₀ e)) = γ λ / :data:`~cryonb.simulate.density.POTENTIAL_V_A2`
    (γ from torch-ctf). 6.5e-4 rad / (V·Å) at 300 kV.
    """
    from cryonb.simulate.density import POTENTIAL_V_A2  # here: density does not need optics

    gamma = float(calculate_relativistic_gamma(voltage_kv * 1e3))
    return gamma * electron_wavelength_a(voltage_kv) / POTENTIAL_V_A2


def contrast_per_density(config: SimulationConfig) -> float:
    """Image contrast (I/I₀ − 1, before the CTF) per unit of projected density, as projections give it.

    A projection sums the Å⁻² potential over voxels along the beam, so ∫V dz = POTENTIAL_V_A2 ×
    voxel_size_a × sum, the phase is φ = σ ∫V dz, and a weak-phase object's image is −2 φ ⊛ CTF:
    this returns −2 σ POTENTIAL_V_A2 voxel_size_a = −2 γ λ voxel_size_a (−0.62 at 300 kV and 10 Å).
    The sign makes protein dark.
    """
    from cryonb.simulate.density import POTENTIAL_V_A2

    return -2.0 * interaction_constant_per_v_a(config.voltage_kv) * POTENTIAL_V_A2 * config.voxel_size_a


def ctf_of_k(k_inv_a: torch.Tensor, defocus_um: float, config: SimulationConfig) -> torch.Tensor:
    """CTF at spatial frequencies |k| (Å⁻¹, any shape), via torch-ctf's phase shift.

    sin(π λ Δz k² − π/2 Cs λ³ k⁴ + arcsin A + φ) with φ = ``config.phase_shift_deg`` (a phase plate):
    +A at k = 0 (+cos(arcsin A) ≈ 1 with a 90° plate). See the module NOTE for the image's sign.
    """
    k2 = (k_inv_a.to(torch.float64)) ** 2
    chi = calculate_total_phase_shift(
        defocus_um=torch.tensor(float(defocus_um), dtype=torch.float64),
        voltage_kv=torch.tensor(config.voltage_kv, dtype=torch.float64),
        spherical_aberration_mm=torch.tensor(config.cs_mm, dtype=torch.float64),
        phase_shift_degrees=torch.tensor(float(config.phase_shift_deg), dtype=torch.float64),
        amplitude_contrast_fraction=torch.tensor(config.amplitude_contrast, dtype=torch.float64),
        fftfreq_grid_angstrom_squared=k2,
    )
    return -torch.sin(chi)  # torch-ctf's phase is −(χ + arcsin A + φ)


def mtf_of_k(k_inv_a: torch.Tensor, config: SimulationConfig) -> torch.Tensor:
    """Detector MTF at |k| (Å⁻¹), evaluated at k × detector pixel cycles per pixel.

    'ideal': the pixel-aperture sinc of a perfect counting detector, sinc(π f / 2) with f the fraction
    of the detector's Nyquist (one line, so written here). Otherwise a measured curve from ttsim3d
    (:func:`measured_mtf`), linearly interpolated and held constant past its last point.
    """
    f_px = k_inv_a.to(torch.float64) * config.detector_pixel_a
    if config.detector_mtf == IDEAL_DETECTOR:
        return torch.sinc(f_px)
    freq, mtf = measured_mtf(config.detector_mtf)
    return torch.as_tensor(np.interp(f_px.numpy(), freq.numpy(), mtf.numpy()))


def envelope_of_k(k_inv_a: torch.Tensor, config: SimulationConfig) -> torch.Tensor:
    """B-factor envelope exp(-B k² / 4) (dose damage, drift, partial coherence lumped together)."""
    return torch.exp(-config.b_factor_a2 * k_inv_a**2 / 4.0)


def transfer_of_k(k_inv_a: torch.Tensor, defocus_um: float, config: SimulationConfig) -> torch.Tensor:
    """CTF × envelope × MTF applied to each projection's signal; with ``config.phase_flip`` the CTF's
    negative lobes are flipped (|CTF|), as IMOD's ctfphaseflip does to each tilt before back-projection."""
    ctf = ctf_of_k(k_inv_a, defocus_um, config)
    if config.phase_flip:
        ctf = ctf.abs()
    return ctf * envelope_of_k(k_inv_a, config) * mtf_of_k(k_inv_a, config)


def critical_exposure_e_per_a2(k_inv_a: torch.Tensor) -> torch.Tensor:
    """Critical exposure N_e(k) = 0.245 k^−1.665 + 2.81 e/Å² at 300 kV (Grant & Grigorieff 2015, eq. 3).

    One line, written here: torch-fourier-filter's ``critical_exposure`` is the same formula, but that
    package is not a direct dependency (and costs a second to import). Infinite at k = 0.
    """
    k = k_inv_a.to(torch.float64)
    return torch.where(k > 0, 0.245 * k.clamp(min=1e-12) ** -1.665 + 2.81, torch.full_like(k, math.inf))


def exposure_weight_of_k(k_inv_a: torch.Tensor, exposure_e_per_a2: torch.Tensor | float) -> torch.Tensor:
    """Amplitude left after an exposure N (e/Å²): exp(−N / (2 N_e(k))) (Grant & Grigorieff 2015, eq. 5).

    ``exposure_e_per_a2`` broadcasts against ``k_inv_a`` (e.g. (n_tilts, 1, 1) against (h, w)).
    """
    n = torch.as_tensor(exposure_e_per_a2, dtype=torch.float64)
    return torch.exp(-n / (2.0 * critical_exposure_e_per_a2(k_inv_a)))


def zero_loss_fraction(tilt_deg: np.ndarray | float, config: SimulationConfig) -> np.ndarray:
    """Fraction of the electrons left in the zero-loss peak through ice of thickness t tilted by θ:
    exp(−t / (λ_in cos θ)) (Beer-Lambert along the path t / cos θ; an energy filter removes the rest)."""
    path_nm = config.ice_thickness_nm / np.cos(np.radians(np.asarray(tilt_deg, dtype=np.float64)))
    return np.exp(-path_nm / config.inelastic_mean_free_path_nm)


def shot_noise_variance(config: SimulationConfig) -> np.ndarray:
    """(n_tilts,) variance of each tilt image's shot noise in contrast units (I/I₀ − 1) per voxel-sized
    pixel: 1 / (dose × zero-loss fraction × voxel area), the relative variance of a Poisson count."""
    counts = config.dose_per_tilt_e_per_a2 * zero_loss_fraction(config.tilts_deg(), config) * config.voxel_size_a**2
    return 1.0 / counts


def ctf_curve(defocus_um: float, config: SimulationConfig, n_samples: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """1-D CTF from torch-ctf's ``calculate_ctf_1d`` up to the voxel Nyquist: (k in Å⁻¹, ctf)."""
    ctf = calculate_ctf_1d(
        defocus=defocus_um, voltage=config.voltage_kv, spherical_aberration=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast, phase_shift=config.phase_shift_deg, pixel_size=config.voxel_size_a,
        n_samples=n_samples, oversampling_factor=1,
    )
    k = np.linspace(0, 0.5 / config.voxel_size_a, n_samples)
    return k, ctf.numpy()


def ctf_zeros_inv_a(defocus_um: float, config: SimulationConfig, k_max_inv_a: float) -> np.ndarray:
    """Analytic CTF zeros (Å⁻¹) below ``k_max_inv_a``: solve χ(k) = nπ with
    χ = π λ Δz k² − (π/2) Cs λ³ k⁴ + arcsin-equivalent amplitude-contrast phase + phase-plate shift."""
    volt = config.voltage_kv * 1e3
    lam = 12.2643247 / np.sqrt(volt * (1 + volt * 0.978466e-6))  # relativistic wavelength, Å
    dz = defocus_um * 1e4
    cs = config.cs_mm * 1e7
    phi = np.arctan(config.amplitude_contrast / np.sqrt(1 - config.amplitude_contrast**2)) + np.radians(config.phase_shift_deg)
    zeros = []
    for n in range(0, 200):
        # π λ dz k² − π/2 Cs λ³ k⁴ + phi = n π  → quadratic in u = k²
        a, b, c = -0.5 * np.pi * cs * lam**3, np.pi * lam * dz, phi - n * np.pi
        disc = b * b - 4 * a * c
        if disc < 0:
            break
        u = (-b + np.sqrt(disc)) / (2 * a)
        if u > 0:
            k = np.sqrt(u)
            if k > k_max_inv_a:
                break
            zeros.append(k)
    return np.asarray(zeros)
