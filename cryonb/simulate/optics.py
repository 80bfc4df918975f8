"""Microscope optics: CTF (torch-ctf), B-factor envelope and detector MTF, on any |k| grid.

NOTE: the CTF follows torch-ctf: ``-sin(χ)`` with positive defocus = underfocus, so dense
protein appears dark, as in real tomograms.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np
import starfile
import torch
from torch_ctf import calculate_ctf_1d
from torch_ctf.ctf_utils import calculate_total_phase_shift

from cryonb.errors import CryoNBError
from cryonb.simulate.config import SimulationConfig

__all__ = ["ctf_of_k", "mtf_of_k", "measured_mtf", "measured_mtf_path", "detector_names", "IDEAL_DETECTOR", "envelope_of_k", "transfer_of_k", "ctf_zeros_inv_a", "ctf_curve"]


def ctf_of_k(k_inv_a: torch.Tensor, defocus_um: float, config: SimulationConfig) -> torch.Tensor:
    """CTF at spatial frequencies |k| (Å⁻¹, any shape), via torch-ctf's phase shift."""
    k2 = (k_inv_a.to(torch.float64)) ** 2
    chi = calculate_total_phase_shift(
        defocus_um=torch.tensor(float(defocus_um), dtype=torch.float64),
        voltage_kv=torch.tensor(config.voltage_kv, dtype=torch.float64),
        spherical_aberration_mm=torch.tensor(config.cs_mm, dtype=torch.float64),
        phase_shift_degrees=torch.tensor(0.0, dtype=torch.float64),
        amplitude_contrast_fraction=torch.tensor(config.amplitude_contrast, dtype=torch.float64),
        fftfreq_grid_angstrom_squared=k2,
    )
    return -torch.sin(chi)


IDEAL_DETECTOR = "ideal"
_MTF_COLUMNS = ("rlnResolutionInversePixel", "rlnMtfValue")


@lru_cache(maxsize=1)
def detector_names() -> tuple[str, ...]:
    """Detector MTFs on offer: 'ideal' (pixel-aperture sinc) and the measured curves ttsim3d ships
    (file ``mtf_<name>.star``, e.g. 'k3_standard_300kV_FL2')."""
    return (IDEAL_DETECTOR, *sorted(p.name[4:-5] for p in _mtf_dir().glob("mtf_*.star")))


def _mtf_dir() -> Path:
    return Path(str(importlib.resources.files("ttsim3d"))) / "data"


def measured_mtf_path(name: str) -> Path:
    """The STAR file of a measured detector MTF shipped with ttsim3d."""
    path = _mtf_dir() / f"mtf_{name}.star"
    if not path.is_file():
        raise CryoNBError(f"detector_mtf={name!r}: no measured MTF {path.name}; choose one of {', '.join(detector_names())}")
    return path


@lru_cache(maxsize=16)
def measured_mtf(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequency in cycles per detector pixel, 0 to 0.5; MTF) of a measured detector, float64."""
    # starfile directly, as torch-fourier-filter's read_mtf does: importing that package costs ~1 s per process
    table = starfile.read(measured_mtf_path(name))
    freq, mtf = (torch.tensor(table[c].to_numpy(dtype=np.float64)) for c in _MTF_COLUMNS)
    return freq, mtf


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
    """CTF × envelope × MTF applied to each projection's signal."""
    return ctf_of_k(k_inv_a, defocus_um, config) * envelope_of_k(k_inv_a, config) * mtf_of_k(k_inv_a, config)


def ctf_curve(defocus_um: float, config: SimulationConfig, n_samples: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """1-D CTF from torch-ctf's ``calculate_ctf_1d`` up to the voxel Nyquist: (k in Å⁻¹, ctf)."""
    ctf = calculate_ctf_1d(
        defocus=defocus_um, voltage=config.voltage_kv, spherical_aberration=config.cs_mm,
        amplitude_contrast=config.amplitude_contrast, phase_shift=0.0, pixel_size=config.voxel_size_a,
        n_samples=n_samples, oversampling_factor=1,
    )
    k = np.linspace(0, 0.5 / config.voxel_size_a, n_samples)
    return k, ctf.numpy()


def ctf_zeros_inv_a(defocus_um: float, config: SimulationConfig, k_max_inv_a: float) -> np.ndarray:
    """Analytic CTF zeros (Å⁻¹) below ``k_max_inv_a``: solve χ(k) = nπ with
    χ = π λ Δz k² − (π/2) Cs λ³ k⁴ + arcsin-equivalent amplitude-contrast phase."""
    volt = config.voltage_kv * 1e3
    lam = 12.2643247 / np.sqrt(volt * (1 + volt * 0.978466e-6))  # relativistic wavelength, Å
    dz = defocus_um * 1e4
    cs = config.cs_mm * 1e7
    phi = np.arctan(config.amplitude_contrast / np.sqrt(1 - config.amplitude_contrast**2))
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
