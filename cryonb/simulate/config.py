"""The simulator's one typed configuration, validated with errors that name the parameter."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.simulate.detector import detector_names

__all__ = ["MASK_RULES", "POLARITIES", "SimulationConfig", "TILT_SCHEMES", "check_snr", "snr_label"]

POLARITIES: tuple[str, ...] = ("dark", "bright")
TILT_SCHEMES: tuple[str, ...] = ("dose_symmetric", "bidirectional")
MASK_RULES: tuple[str, ...] = ("lowpass", "volume")


@dataclass(frozen=True)
class SimulationConfig:
    """Physics of one simulated subtomogram.

    Lengths in Å, angles in degrees, defocus in µm (torch-ctf convention: positive = underfocus,
    so the papers' "−5 µm" is ``defocus_um = 5``).

    Contrast polarity (``polarity``): "dark" (default) stores volumes as a tomogram reconstructed from
    raw tilts (IMOD, AreTomo, Warp) shows them: protein darker than the ice, i.e. the noise-free
    subtomogram correlates *negatively* with the potential. "bright" is its negative (protein white,
    as after "invert contrast"). The models are trained on whatever the recipe records.

    Tilt-dependent imaging: each tilt gets ``dose_per_tilt_e_per_a2`` in the order of ``tilt_scheme``;
    its signal is damaged by the exposure received before it (``exposure_damage``, Grant & Grigorieff
    2015) and its zero-loss electrons fall as exp(−t / (λ_in cos θ)) through ice of thickness
    ``ice_thickness_nm`` (energy filter assumed). ``noise="snr"`` (default, the papers' data sets)
    scales the noise to the requested SNR and reports the equivalent dose; ``noise="dose"`` draws the
    shot noise of the dose itself (then the SNR is an output, and a recipe's ``snr`` only switches the
    noise off when it is ``inf``).

    Solvent: molecule maps are the potential of protein minus the vitreous ice it displaces
    (``ice_potential_v``), with implicit hydrogens (:mod:`cryonb.simulate.density`). Options:
    ``phase_shift_deg`` (a phase plate) and ``phase_flip`` (CTF correction before back-projection).
    Both imaging paths support every field.
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
    b_factor_a2: float = 100.0  # envelope exp(-B k^2 / 4): drift, partial coherence, ... (dose damage: exposure_damage)
    detector_pixel_a: float = 2.5  # physical pixel; the 10 Å voxel is a binned pixel
    detector_mtf: str = "k3_standard_300kV_FL2"  # measured Gatan K3 at 300 kV (ttsim3d), or "ideal"
    mask_volume_factor: float = 1.0  # mask volume = factor x protein volume (1.21 Å^3/Da)
    # "lowpass": the target's potential low-pass filtered to mask_resolution_a (Gaussian whose transform falls to
    # 1/e at 1/resolution, ChimeraX molmap's convention) and thresholded at the level enclosing the protein volume:
    # one connected envelope, as in the simulation lineage (Pei et al. 2016 maps made at a set resolution).
    # "volume": the full-resolution potential's top voxels of that volume (fragmented at 10 Å for some classes).
    mask_rule: str = "lowpass"
    mask_resolution_a: float = 30.0
    path: str = "fast"  # "fast" (3-D Fourier filter) or "tiltseries" (reference)
    polarity: str = "dark"  # "dark": protein darker than ice, as in tomograms from raw tilts; "bright": inverted
    ice_potential_v: float = 4.5  # mean inner potential of the vitreous ice the molecule displaces (0: vacuum)
    ice_thickness_nm: float = 150.0  # specimen thickness t; path length t / cos(tilt)
    inelastic_mean_free_path_nm: float = 350.0  # λ_in at 300 kV; zero-loss fraction exp(-t / (λ_in cos θ))
    tilt_scheme: str = "dose_symmetric"  # acquisition order: "dose_symmetric" (Hagen 2017) or "bidirectional"
    dose_per_tilt_e_per_a2: float = 2.0  # electrons per Å² per tilt (61 tilts: 122 e/Å² in all)
    exposure_damage: bool = True  # amplitude x exp(-N / (2 N_e(k))), N = exposure before the tilt's midpoint
    noise: str = "snr"  # "snr": noise scaled to the requested SNR; "dose": shot noise of the dose
    phase_shift_deg: float = 0.0  # phase plate: added to the CTF phase (Volta: 90)
    phase_flip: bool = False  # CTF correction: flip each tilt's phases where the CTF is negative (IMOD ctfphaseflip)

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
        need(self.detector_mtf in detector_names(), "detector_mtf", f"one of {', '.join(detector_names())}")
        need(self.mask_volume_factor > 0, "mask_volume_factor", "> 0")
        need(self.mask_rule in MASK_RULES, "mask_rule", f"one of {', '.join(MASK_RULES)}")
        need(self.mask_resolution_a >= 2 * self.voxel_size_a, "mask_resolution_a", f">= 2 x voxel_size_a = {2 * self.voxel_size_a} Å")
        need(self.path in ("fast", "tiltseries"), "path", "'fast' or 'tiltseries'")
        need(self.polarity in POLARITIES, "polarity", "'dark' or 'bright'")
        need(self.ice_potential_v >= 0, "ice_potential_v", ">= 0 V (0: molecules in vacuum)")
        need(self.ice_thickness_nm >= 0, "ice_thickness_nm", ">= 0 nm")
        need(self.inelastic_mean_free_path_nm > 0, "inelastic_mean_free_path_nm", "> 0 nm")
        need(self.tilt_scheme in TILT_SCHEMES, "tilt_scheme", "'dose_symmetric' or 'bidirectional'")
        need(self.dose_per_tilt_e_per_a2 > 0, "dose_per_tilt_e_per_a2", "> 0 electrons per Å² per tilt")
        need(isinstance(self.exposure_damage, bool), "exposure_damage", "true or false")
        need(self.noise in ("snr", "dose"), "noise", "'snr' (noise scaled to the SNR) or 'dose' (shot noise of the dose)")
        need(-360 <= self.phase_shift_deg <= 360, "phase_shift_deg", "a phase shift in degrees within ±360 (Volta: 90)")
        need(isinstance(self.phase_flip, bool), "phase_flip", "true or false")

    def tilts_deg(self) -> list[float]:
        """Tilt angles (degrees), min to max inclusive in steps of ``tilt_step_deg``."""
        n = int(math.floor((self.tilt_max_deg - self.tilt_min_deg) / self.tilt_step_deg + 1e-9)) + 1
        return [self.tilt_min_deg + i * self.tilt_step_deg for i in range(n)]

    def acquisition_order(self) -> list[int]:
        """Indices into :meth:`tilts_deg` in the order the tilts are recorded.

        "dose_symmetric" (Hagen, Wan & Briggs 2017): the tilt nearest 0° first, then groups of two
        tilts alternating between the positive and the negative side (0, +2, +4, −2, −4, +6, …).
        "bidirectional": from the tilt nearest 0° up to the largest tilt, then from the one below the
        start down to the smallest.
        """
        tilts = self.tilts_deg()
        start = min(range(len(tilts)), key=lambda i: (abs(tilts[i]), -tilts[i]))
        up, down = list(range(start + 1, len(tilts))), list(range(start - 1, -1, -1))
        if self.tilt_scheme == "bidirectional":
            return [start, *up, *down]
        order, side = [start], 0
        while up or down:
            group = (up, down)[side] or (down, up)[side]  # one side used up: finish the other
            order += [group.pop(0) for _ in range(min(2, len(group)))]
            side = 1 - side
        return order

    def exposure_e_per_a2(self) -> np.ndarray:
        """(n_tilts,) exposure (e/Å²) each tilt's image has received at its midpoint, in
        :meth:`tilts_deg` order: every earlier tilt's dose plus half its own."""
        order = self.acquisition_order()
        exposure = np.empty(len(order))
        exposure[order] = (np.arange(len(order)) + 0.5) * self.dose_per_tilt_e_per_a2
        return exposure

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
