"""The simulator's one typed configuration, validated with errors that name the parameter."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from cryonb.errors import CryoNBError, reject_unknown_keys

__all__ = ["SimulationConfig", "check_snr", "snr_label"]


@dataclass(frozen=True)
class SimulationConfig:
    """Physics of one simulated subtomogram.

    Lengths in Å, angles in degrees, defocus in µm (torch-ctf convention: positive = underfocus,
    so the papers' "−5 µm" is ``defocus_um = 5``).
    """

    voxel_size_a: float = 10.0
    crop_size: int = 32  # edge of the stored subtomogram, voxels
    scene_size: int = 64  # edge of the crowded scene the tilt series is taken of, voxels
    n_neighbours: int = 4  # crowding molecules around the target
    max_shift_vox: float = 2.0  # uniform jitter of the target around the crop centre, per axis
    tilt_min_deg: float = -60.0
    tilt_max_deg: float = 60.0
    tilt_step_deg: float = 2.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_um_min: float = 4.0
    defocus_um_max: float = 6.0
    b_factor_a2: float = 100.0  # envelope exp(-B k^2 / 4): dose, drift, ice
    detector_pixel_a: float = 2.5  # physical pixel; the 10 Å voxel is a binned pixel
    detector_mtf: str = "k3_standard_300kV_FL2"  # measured Gatan K3 at 300 kV (ttsim3d), or "ideal"
    mask_volume_factor: float = 1.0  # mask volume = factor x protein volume (1.21 Å^3/Da)
    path: str = "fast"  # "fast" (3-D Fourier filter) or "tiltseries" (reference)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise CryoNBError(f"simulation parameter {name}={getattr(self, name)!r}: expected {expected}")

        need(self.voxel_size_a > 0, "voxel_size_a", "a voxel size > 0 Å")
        need(self.crop_size >= 8 and self.crop_size % 2 == 0, "crop_size", "an even size >= 8 voxels")
        need(self.scene_size >= self.crop_size and self.scene_size % 2 == 0, "scene_size", f"an even size >= crop_size={self.crop_size}")
        need(self.n_neighbours >= 0, "n_neighbours", "an integer >= 0")
        need(0 <= self.max_shift_vox < self.crop_size / 4, "max_shift_vox", f"0 <= shift < {self.crop_size / 4}")
        need(self.tilt_step_deg > 0, "tilt_step_deg", "a step > 0 degrees")
        need(-90 < self.tilt_min_deg <= self.tilt_max_deg < 90, "tilt_max_deg",
             f"a non-empty tilt range inside (-90, 90) with tilt_min_deg={self.tilt_min_deg} <= tilt_max_deg")
        need(self.voltage_kv > 0, "voltage_kv", "> 0 kV")
        need(0 <= self.amplitude_contrast < 1, "amplitude_contrast", "a fraction in [0, 1)")
        need(0 < self.defocus_um_min <= self.defocus_um_max, "defocus_um_min", "0 < defocus_um_min <= defocus_um_max (underfocus, µm)")
        need(self.b_factor_a2 >= 0, "b_factor_a2", ">= 0 Å^2")
        need(0 < self.detector_pixel_a <= self.voxel_size_a, "detector_pixel_a", f"0 < pixel <= voxel_size_a={self.voxel_size_a}")
        from cryonb.simulate.optics import detector_names  # here: optics imports this module

        need(self.detector_mtf in detector_names(), "detector_mtf", f"one of {', '.join(detector_names())}")
        need(self.mask_volume_factor > 0, "mask_volume_factor", "> 0")
        need(self.path in ("fast", "tiltseries"), "path", "'fast' or 'tiltseries'")

    def tilts_deg(self) -> list[float]:
        """Tilt angles (degrees), min to max inclusive in steps of ``tilt_step_deg``."""
        n = int(math.floor((self.tilt_max_deg - self.tilt_min_deg) / self.tilt_step_deg + 1e-9)) + 1
        return [self.tilt_min_deg + i * self.tilt_step_deg for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "SimulationConfig":
        raw = dict(raw or {})
        reject_unknown_keys(raw, cls, "simulation")
        return cls(**raw)


def check_snr(snr: float) -> float:
    """Return ``snr`` as float; ``math.inf`` means no noise. Raises for SNR <= 0 or NaN."""
    try:
        value = float(snr)
    except (TypeError, ValueError) as exc:
        raise CryoNBError(f"snr={snr!r}: expected a number > 0 (or inf for no noise)") from exc
    if not value > 0:  # also rejects NaN
        raise CryoNBError(f"snr={snr!r}: expected a number > 0 (or inf for no noise)")
    return value


def snr_label(snr: float) -> str:
    """How an SNR is written in names and tables: ``inf``, ``1000``, ``0.05``."""
    value = check_snr(snr)
    return "inf" if math.isinf(value) else f"{value:g}"
