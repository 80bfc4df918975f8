"""Bundled PDB structures: load with gemmi, build the biological assembly, describe; the COS-Net class split.

The 24 files under ``data/structures/`` are public-domain RCSB PDB entries
(checksums in ``data/structures/SHA256SUMS``). Several hold an asymmetric
unit and define the biological assembly in REMARK 350; :func:`load_structure`
builds assembly 1 where one is defined, as a cryo-ET sample would contain it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gemmi
import numpy as np

from cryonb.errors import CryoNBError
from cryonb.paths import structures_dir

__all__ = [
    "CSSL_CLASSES",
    "COSNET_CLASSES",
    "OTHER_CLASSES",
    "ALL_CLASSES",
    "cosnet_split",
    "AtomArrays",
    "StructureInfo",
    "structure_path",
    "load_structure",
    "atom_arrays",
    "describe",
    "atom_count_grid",
]

#: The CSSL paper's ten classes (Gupta et al. 2022, section 4.1.1).
CSSL_CLASSES: tuple[str, ...] = ("1bxn", "1f1b", "1yg6", "2byu", "2h12", "2ldb", "3gl1", "3hhb", "4d4r", "6t3e")
#: The structures outside the CSSL set: the pool the COS-Net unseen and validation classes are drawn from.
OTHER_CLASSES: tuple[str, ...] = ("1aon", "1kx5", "1qvr", "1s3x", "1u6g", "1w6t", "2bo9", "2cg9", "2gho", "3cf3", "3d2f", "3h84", "3qm1", "4v1w")
#: All bundled structures; the COS-Net data set uses every one of them (22 in its design + 2 for validation).
ALL_CLASSES: tuple[str, ...] = CSSL_CLASSES + OTHER_CLASSES
COSNET_CLASSES: tuple[str, ...] = ALL_CLASSES


def cosnet_split(n_unseen: int = 8, n_validation: int = 2, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(unseen, validation) classes of the COS-Net design by a rule fixed before any run.

    Both come from :data:`OTHER_CLASSES`, so an encoder pre-trained on the CSSL set has never seen them: the
    sorted ids are permuted by ``numpy.random.default_rng(seed)``; the first ``n_unseen`` are the test classes,
    the next ``n_validation`` the validation-only classes (every choice made from data uses them and the seen
    classes' held-out volumes); the CSSL set and the rest are seen (trained on). The spec lists the result
    explicitly and a test checks it against this rule.
    """
    ids = sorted(OTHER_CLASSES)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return tuple(order[:n_unseen]), tuple(order[n_unseen : n_unseen + n_validation])


@dataclass(frozen=True)
class AtomArrays:
    """Atoms of a structure as arrays.

    xyz_a: (n, 3) coordinates in Å, (x, y, z) order as in the PDB file.
    atomic_number: (n,) int.
    element: (n,) element symbols.
    b_factor_a2: (n,) B-factors in Å².
    occupancy: (n,) float.
    """

    xyz_a: np.ndarray
    atomic_number: np.ndarray
    element: np.ndarray
    b_factor_a2: np.ndarray
    occupancy: np.ndarray


@dataclass(frozen=True)
class StructureInfo:
    pdb_id: str
    n_atoms: int
    n_chains: int
    mass_kda: float
    radius_of_gyration_a: float
    max_radius_a: float
    assembly: str


def structure_path(pdb_id: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """Path of a bundled structure; raises for an unknown id."""
    base = Path(folder) if folder is not None else structures_dir()
    pid = pdb_id.lower()
    path = base / f"{pid}.pdb.gz"
    if not path.is_file():
        known = sorted(p.name.split(".")[0] for p in base.glob("*.pdb.gz"))
        raise CryoNBError(f"unknown PDB id {pdb_id!r}: no file {path}; bundled ids are {', '.join(known)}")
    return path


def _read(path: Path) -> gemmi.Structure:
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise CryoNBError(f"{path}: cannot be read as PDB/mmCIF ({exc})") from exc
    st.setup_entities()
    st.remove_ligands_and_waters()
    st.remove_hydrogens()
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise CryoNBError(f"{path}: the structure file holds no atoms")
    return st


@lru_cache(maxsize=32)
def _load_cached(path_str: str, build_assembly: bool) -> tuple[gemmi.Structure, str]:
    st = _read(Path(path_str))
    if build_assembly and st.assemblies:
        assembly = st.assemblies[0]
        model = gemmi.make_assembly(assembly, st[0], gemmi.HowToNameCopiedChain.AddNumber)
        out = gemmi.Structure()
        out.name = st.name
        out.cell = st.cell
        out.add_model(model)
        return out, f"assembly {assembly.name}"
    return st, "asymmetric unit"


def load_structure(
    pdb_id_or_path: str | os.PathLike[str], build_assembly: bool = True
) -> tuple[gemmi.Structure, str]:
    """Load a bundled id (``"1bxn"``) or a file path; returns (structure, what was built).

    Waters, ligands and hydrogens are removed; assembly 1 of REMARK 350 is built when defined.
    """
    p = Path(pdb_id_or_path)
    path = p if (p.suffix in {".gz", ".pdb", ".cif", ".ent"} or p.exists()) else structure_path(str(pdb_id_or_path))
    if not path.is_file():
        raise CryoNBError(f"{path}: no such structure file")
    st, what = _load_cached(str(path.resolve()), build_assembly)
    return st.clone(), what


def atom_arrays(structure: gemmi.Structure) -> AtomArrays:
    """Flatten the first model's atoms into arrays (see :class:`AtomArrays`)."""
    xyz, z, el, b, occ = [], [], [], [], []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                xyz.append(atom.pos.tolist())
                z.append(atom.element.atomic_number)
                el.append(atom.element.name)
                b.append(atom.b_iso)
                occ.append(atom.occ)
    if not xyz:
        raise CryoNBError(f"structure {structure.name!r} has no atoms")
    return AtomArrays(
        xyz_a=np.asarray(xyz, dtype=np.float64),
        atomic_number=np.asarray(z, dtype=np.int64),
        element=np.asarray(el),
        b_factor_a2=np.asarray(b, dtype=np.float64),
        occupancy=np.asarray(occ, dtype=np.float64),
    )


def describe(pdb_id_or_path: str | os.PathLike[str]) -> StructureInfo:
    """Atoms, chains, mass (kDa), radius of gyration and maximum radius (Å) of the assembly."""
    st, what = load_structure(pdb_id_or_path)
    atoms = atom_arrays(st)
    masses = np.array([gemmi.Element(int(zz)).weight for zz in atoms.atomic_number])
    centre = (atoms.xyz_a * masses[:, None]).sum(0) / masses.sum()
    r2 = ((atoms.xyz_a - centre) ** 2).sum(1)
    return StructureInfo(
        pdb_id=str(st.name).lower() or str(pdb_id_or_path),
        n_atoms=len(atoms.atomic_number),
        n_chains=len(st[0]),
        mass_kda=float(masses.sum() / 1000.0),
        radius_of_gyration_a=float(np.sqrt((r2 * masses).sum() / masses.sum())),
        max_radius_a=float(np.sqrt(r2.max())),
        assembly=what,
    )


def atom_count_grid(pdb_id_or_path: str | os.PathLike[str], voxel_size_a: float = 10.0, size: int = 32) -> np.ndarray:
    """A coarse (z, y, x) histogram of atom counts, centred on the centroid: a picture, not a density."""
    if not voxel_size_a > 0:
        raise CryoNBError(f"voxel_size_a must be > 0, got {voxel_size_a}")
    st, _ = load_structure(pdb_id_or_path)
    xyz = atom_arrays(st).xyz_a
    xyz = xyz - xyz.mean(0)
    edges = (np.arange(size + 1) - size / 2) * voxel_size_a
    counts, _ = np.histogramdd(xyz[:, ::-1], bins=(edges, edges, edges))  # (x,y,z) -> (z,y,x)
    return counts.astype(np.float32)
