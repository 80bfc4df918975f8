"""Electrostatic-potential maps of bundled PDB structures, in vitreous ice, at a chosen voxel size.

Atoms (biological assembly, :func:`cryonb.structures.load_structure`) are turned into a
band-limited potential with the 5-Gaussian electron scattering factors of Peng et al. (1996),
read from ttsim3d's table. ``ttsim3d.simulate3d`` computes the same potential atom by atom
(~2 s per class at 10 Å); we grid it instead (NUFFT-style: trilinear splat on a 2x finer grid,
FFT, multiply by the form factor, divide by the splat kernel's sinc², cut to a sphere at the target
Nyquist) because it is ~50x faster and the band limit prevents aliasing. The sphere (not the cube of
the FFT grid) makes the band the same in every orientation, so a rotated map keeps every frequency.

Hydrogens (which the structures lack) are implicit, as "united atoms": each residue's hydrogens
(gemmi's tabulated count for the free residue, less the two lost to each peptide bond) share the
positions of the residue's heavy atoms. At 10 Å voxels a hydrogen's 1 Å offset from its heavy atom
is invisible; its 0.53 Å of forward scattering (a fifth of the potential's mean) is not.

Solvent: the molecule displaces vitreous ice of mean inner potential ``ice_potential_v`` (≈ 4.5 V).
Each atom displaces ``1.21 Å³/Da`` times its mass (with its hydrogens), as a Gaussian sphere of that
volume (Fraser, MacRae & Suzuki 1978, as in CRYSOL), so the displaced volumes add up to the protein
volume the masks use and the map is the contrast against ice: protein minus ice inside the envelope,
zero outside.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import gemmi
from scipy import constants, ndimage

from cryonb.cache import content_key
from cryonb.errors import CryoNBError
from cryonb.io import save_npy_atomic
from cryonb.paths import cache_dir
from cryonb.structures import atom_arrays, load_structure

__all__ = [
    "MAP_OVERSAMPLE",
    "PROTEIN_VOLUME_A3_PER_DA",
    "POTENTIAL_V_A2",
    "MoleculeMap",
    "molecule_map",
    "peng_form_factor",
    "potential_map",
    "template_size",
    "united_hydrogens",
]

_OVERSAMPLE = 2  # splatting grid: 2x finer than the output
MAP_OVERSAMPLE = 2  # MoleculeMap.oversampled: 2x finer than the voxel, for rotation without blur
PROTEIN_VOLUME_A3_PER_DA = 1.21  # partial specific volume of protein, 0.73 cm³/g
#: h² / (2π m₀ e) in V·Å²: the potential in volts of one Å⁻² of form-factor density (Peng 1996, Kirkland)
POTENTIAL_V_A2 = constants.h**2 / (2 * math.pi * constants.m_e * constants.e) * 1e20


@dataclass(frozen=True)
class MoleculeMap:
    """A molecule's potential in a cubic box centred on its atom centroid.

    density: (t, t, t) float32 (z, y, x), potential in Å⁻² (form-factor sum per Å³) relative to the
        displaced ice; × :data:`POTENTIAL_V_A2` gives volts.
    voxel_size_a: Å per voxel.
    radius_a: largest atom distance from the centroid, Å.
    mask_threshold: level of the mask's source map (:func:`mask_source`) whose super-level set has the protein
        volume (1.21 Å³ per Da; documented mask definition).
    mass_kda: mass of the assembly, hydrogens included.
    oversampled: (m t, m t, m t) float32, the same band-limited potential sampled m = :data:`MAP_OVERSAMPLE`
        times finer (``density`` is every m-th voxel of it): what :func:`~cryonb.simulate.scene.rotate_map`
        interpolates.
    """

    pdb_id: str
    density: np.ndarray
    voxel_size_a: float
    radius_a: float
    mask_threshold: float
    mass_kda: float
    oversampled: np.ndarray | None = None


@lru_cache(maxsize=1)
def _peng_table() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    text = resources.files("ttsim3d").joinpath("elastic_scattering_factors.json").read_text()
    raw = json.loads(text)
    return raw["parameters_a"], raw["parameters_b"]


def peng_form_factor(element: str, k_inv_a: np.ndarray, b_factor_a2: float = 0.0) -> np.ndarray:
    """Electron scattering factor f(k) in Å (Peng 1996), with a B-factor.

    k_inv_a: spatial frequency |k| in Å⁻¹ (any shape); s = k/2 in Peng's notation, so
    f = Σ a_i exp(-(b_i + B) k² / 4).
    """
    table_a, table_b = _peng_table()
    key = element.upper()
    if key not in table_a:
        raise CryoNBError(f"element {element!r} has no scattering factor in ttsim3d's Peng table")
    k2 = np.asarray(k_inv_a, dtype=np.float64) ** 2
    return sum(a * np.exp(-(b + b_factor_a2) * k2 / 4.0) for a, b in zip(table_a[key], table_b[key]))


def _splat(coords: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Trilinear splat of points (fractional (z, y, x) indices) onto an n³ grid (np.bincount: fast)."""
    base = np.floor(coords).astype(np.int64)
    frac = coords - base
    grid = np.zeros(n**3, dtype=np.float64)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                idx = base + np.array([dz, dy, dx])
                w = weights * np.abs(1 - dz - frac[:, 0]) * np.abs(1 - dy - frac[:, 1]) * np.abs(1 - dx - frac[:, 2])
                flat = (idx[:, 0] * n + idx[:, 1]) * n + idx[:, 2]
                grid += np.bincount(flat, weights=w, minlength=n**3)
    return grid.reshape(n, n, n)


def potential_map(
    xyz_a: np.ndarray,
    elements: np.ndarray,
    occupancy: np.ndarray,
    voxel_size_a: float,
    size: int,
    b_factor_a2: float,
    *,
    hydrogens: np.ndarray | None = None,
    displaced_volume_a3: np.ndarray | None = None,
    ice_potential_v: float = 0.0,
    max_freq_inv_a: float | None = None,
) -> np.ndarray:
    """Band-limited potential of atoms on a ``size``³ grid centred on the origin.

    xyz_a: (n, 3) atom coordinates in Å, (x, y, z) order, origin at the box centre.
    elements, occupancy: (n,) element symbols and occupancies.
    hydrogens: (n,) implicit hydrogens carried by each atom (united atoms; default none).
    displaced_volume_a3: (n,) ice volume each atom displaces (Å³), a Gaussian sphere of that volume;
        subtracted at ``ice_potential_v`` volts (default: nothing displaced, vacuum).
    max_freq_inv_a: spherical band limit, Å⁻¹ (default: the Nyquist frequency 1 / (2 voxel_size_a)).
    Returns (size, size, size) float32 (z, y, x) in Å⁻² (× :data:`POTENTIAL_V_A2` = volts).
    """
    if not voxel_size_a > 0:
        raise CryoNBError(f"voxel_size_a must be > 0 Å, got {voxel_size_a}")
    n_fine = _OVERSAMPLE * size
    pix = voxel_size_a / _OVERSAMPLE
    coords = xyz_a[:, ::-1] / pix + n_fine / 2  # (z, y, x) fractional indices
    if coords.min() < 0 or coords.max() >= n_fine - 1:
        raise CryoNBError(f"molecule (extent {np.ptp(xyz_a, 0).max():.0f} Å) does not fit a {size}-voxel box at {voxel_size_a} Å")
    freq_full = np.fft.fftfreq(n_fine, d=pix)
    freq_half = np.fft.rfftfreq(n_fine, d=pix)
    kz, ky, kx = np.meshgrid(freq_full, freq_full, freq_half, indexing="ij")
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    # trilinear splatting multiplies the spectrum by sinc² per axis: undo it (gridding correction)
    kernel = (np.sinc(kz * pix) * np.sinc(ky * pix) * np.sinc(kx * pix)) ** 2
    # one splat per scatterer kind, each with its own form factor f(k) in Å
    components = [(elements == el, occupancy, peng_form_factor(str(el), k, b_factor_a2)) for el in np.unique(elements)]
    if hydrogens is not None and np.any(hydrogens):
        components.append((hydrogens > 0, hydrogens, peng_form_factor("H", k, b_factor_a2)))
    if displaced_volume_a3 is not None and ice_potential_v > 0:
        rho_ice = ice_potential_v / POTENTIAL_V_A2  # Å⁻²
        # a Gaussian sphere of volume V, exp(-π r² / V^(2/3)), has transform V exp(-π V^(2/3) k²); one mean
        # width for all atoms (their volumes differ by < 2x, a < 5 % difference at the corner of a 10 Å band)
        width_a2 = float(np.mean(displaced_volume_a3[displaced_volume_a3 > 0] ** (2 / 3)))
        solvent = -rho_ice * np.exp(-math.pi * width_a2 * k**2 - b_factor_a2 * k**2 / 4.0)
        components.append((displaced_volume_a3 > 0, displaced_volume_a3, solvent))
    spectrum = np.zeros(k.shape, dtype=np.complex128)
    for sel, weight, form_factor in components:
        spectrum += np.fft.rfftn(_splat(coords[sel], weight[sel], n_fine)) * form_factor
    spectrum /= kernel
    limit = 0.5 / voxel_size_a if max_freq_inv_a is None else float(max_freq_inv_a)
    spectrum[k > limit * (1 + 1e-9)] = 0.0
    # Fourier crop to the coarse grid (what the sphere left is inside it)
    spectrum = np.fft.fftshift(spectrum, axes=(0, 1))
    lo = n_fine // 2 - size // 2
    spectrum = np.fft.ifftshift(spectrum[lo : lo + size, lo : lo + size, : size // 2 + 1], axes=(0, 1))
    density = np.fft.irfftn(spectrum, s=(size, size, size), axes=(0, 1, 2)) * (size**3 / n_fine**3) / pix**3
    return density.astype(np.float32)


def united_hydrogens(structure: gemmi.Structure) -> np.ndarray:
    """(n,) implicit hydrogens per atom of the first model, in :func:`cryonb.structures.atom_arrays` order.

    Each residue's hydrogens in a chain are gemmi's tabulated count for the free residue less two (the
    water lost to each peptide or phosphodiester bond; termini ignored), shared among the residue's
    heavy atoms in proportion to their occupancy. Residues gemmi does not know carry none.
    """
    out: list[np.ndarray] = []
    for chain in structure[0]:
        for residue in chain:
            occ = np.array([atom.occ for atom in residue], dtype=np.float64)
            info = gemmi.find_tabulated_residue(residue.name)
            n_h = 0.0
            if info is not None:
                polymer = info.is_amino_acid() or info.is_nucleic_acid()
                n_h = float(max(info.hydrogen_count - (2 if polymer else 0), 0))
            out.append(n_h * occ / occ.sum() if occ.sum() > 0 else np.zeros_like(occ))
    return np.concatenate(out) if out else np.zeros(0)


def template_size(radius_a: float, voxel_size_a: float) -> int:
    """Even box edge (voxels) that holds a molecule of this radius in any orientation, with margin."""
    return 2 * int(math.ceil(radius_a / voxel_size_a + 2.0))


def _mask_threshold(density: np.ndarray, mass_kda: float, voxel_size_a: float, factor: float) -> float:
    n_vox = int(round(factor * mass_kda * 1000.0 * PROTEIN_VOLUME_A3_PER_DA / voxel_size_a**3))
    n_vox = max(1, min(n_vox, density.size - 1))
    return float(np.sort(density.ravel())[::-1][n_vox - 1])


def mask_source(density: np.ndarray, rule: str, resolution_a: float, voxel_size_a: float) -> np.ndarray:
    """The map a target mask is thresholded from: the potential itself ("volume") or the potential low-pass
    filtered to ``resolution_a`` ("lowpass": a Gaussian of σ = resolution / (π √2), whose transform falls to 1/e
    at 1 / resolution, as ChimeraX's molmap). (z, y, x) float32 in and out."""
    if rule == "volume":
        return density
    return ndimage.gaussian_filter(density, resolution_a / (math.pi * math.sqrt(2)) / voxel_size_a, mode="constant").astype(np.float32)


def molecule_map(
    pdb_id: str | os.PathLike[str],
    voxel_size_a: float = 10.0,
    size: int | None = None,
    b_factor_a2: float | None = None,
    mask_volume_factor: float = 1.0,
    use_cache: bool = True,
    ice_potential_v: float = 4.5,
    mask_rule: str = "lowpass",
    mask_resolution_a: float = 30.0,
) -> MoleculeMap:
    """Potential of a bundled id or structure file in ice, cached in ``data/cache/density`` by content.

    size: box edge in voxels (default: :func:`template_size` of the molecule).
    b_factor_a2: B-factor applied to every atom (default: the median of the file's B-factors).
    ice_potential_v: mean inner potential of the displaced ice (V); 0 = vacuum. Hydrogens are implicit
    (:func:`united_hydrogens`).
    mask_rule, mask_resolution_a: how the target mask is defined (:func:`mask_source`); the threshold is the level
    whose super-level set of that map has ``mask_volume_factor`` × the protein volume.
    """
    if not voxel_size_a > 0:
        raise CryoNBError(f"voxel_size_a must be > 0 Å, got {voxel_size_a}")
    if not ice_potential_v >= 0:
        raise CryoNBError(f"ice_potential_v={ice_potential_v}: expected >= 0 V")
    st, _ = load_structure(pdb_id)
    atoms = atom_arrays(st)
    if len(atoms.atomic_number) == 0:
        raise CryoNBError(f"{pdb_id}: the structure holds no atoms")
    hydrogens = united_hydrogens(st)
    xyz = atoms.xyz_a - atoms.xyz_a.mean(0)
    radius_a = float(np.sqrt((xyz**2).sum(1).max()))
    atom_mass = atoms.occupancy * np.array([_weight(int(z)) for z in atoms.atomic_number]) + hydrogens * _weight(1)
    mass_kda = float(atom_mass.sum() / 1000.0)
    size = template_size(radius_a, voxel_size_a) if size is None else int(size)
    if 2 * radius_a / voxel_size_a + 2 > size:
        raise CryoNBError(
            f"{pdb_id}: molecule diameter {2 * radius_a:.0f} Å ({2 * radius_a / voxel_size_a:.1f} voxels) "
            f"does not fit the box of size={size} voxels at voxel_size_a={voxel_size_a}")
    b = float(np.median(atoms.b_factor_a2)) if b_factor_a2 is None else float(b_factor_a2)
    m = MAP_OVERSAMPLE
    key = content_key(str(pdb_id), len(xyz), float(xyz.sum()), voxel_size_a, size, b, _OVERSAMPLE, m, float(ice_potential_v), "v2")
    path = cache_dir() / "density" / f"{Path(str(pdb_id)).name.split('.')[0]}-{key}.npy"
    if use_cache and path.is_file():
        fine = np.load(path)
    else:
        # computed m times finer but band-limited at the voxel's Nyquist frequency: every m-th voxel is the map
        fine = potential_map(xyz, atoms.element, atoms.occupancy, voxel_size_a / m, m * size, b, hydrogens=hydrogens,
                             displaced_volume_a3=PROTEIN_VOLUME_A3_PER_DA * atom_mass, ice_potential_v=ice_potential_v,
                             max_freq_inv_a=0.5 / voxel_size_a)
        if use_cache:
            save_npy_atomic(path, fine)
    fine.flags.writeable = False  # rotate_map caches its spline coefficients per array
    density = np.ascontiguousarray(fine[::m, ::m, ::m])
    thr = _mask_threshold(mask_source(density, mask_rule, mask_resolution_a, voxel_size_a), mass_kda, voxel_size_a, mask_volume_factor)
    return MoleculeMap(str(pdb_id), density, voxel_size_a, radius_a, thr, mass_kda, fine)


@lru_cache(maxsize=128)
def _weight(z: int) -> float:
    return float(gemmi.Element(int(z)).weight)
