"""Bundled structures load with gemmi, assemblies are built, and bad ids or files are clear errors."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from cryonb import CryoNBError
from cryonb.structures import ALL_CLASSES, atom_arrays, atom_count_grid, describe, load_structure


def test_all_bundled_structures_load_and_fit_the_box() -> None:
    """24 structures; every assembly fits a 32³ box of 10 Å voxels (diameter < 320 Å) in any orientation."""
    assert len(ALL_CLASSES) == 24
    for pid in ALL_CLASSES:
        info = describe(pid)
        assert info.n_atoms > 1000 and 2 * info.max_radius_a < 32 * 10.0, pid


def test_assembly_is_built_from_remark_350() -> None:
    # 1bxn's file holds half of RuBisCO L8S8; REMARK 350 applies two operators to 8 chains.
    asu, what_asu = load_structure("1bxn", build_assembly=False)
    full, what_full = load_structure("1bxn")
    assert what_asu == "asymmetric unit" and what_full == "assembly 1"
    assert len(atom_arrays(full).xyz_a) == 2 * len(atom_arrays(asu).xyz_a)
    assert len(full[0]) == 16


def test_radius_of_gyration_matches_definition() -> None:
    info = describe("3hhb")
    xyz = atom_arrays(load_structure("3hhb")[0]).xyz_a
    rg_unweighted = np.sqrt(((xyz - xyz.mean(0)) ** 2).sum(1).mean())
    assert info.radius_of_gyration_a == pytest.approx(rg_unweighted, rel=0.03)
    assert 50 < info.mass_kda < 70  # haemoglobin tetramer ≈ 64 kDa without hydrogens


def test_unknown_pdb_id() -> None:
    with pytest.raises(CryoNBError, match=r"unknown PDB id 'zzzz'.*bundled ids are 1aon, 1bxn"):
        load_structure("zzzz")


def test_file_without_atoms(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdb.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("HEADER    EMPTY\nEND\n")
    with pytest.raises(CryoNBError, match=r"empty\.pdb\.gz: the structure file holds no atoms"):
        load_structure(path)


def test_atom_grid_counts_every_atom() -> None:
    grid = atom_count_grid("2byu", voxel_size_a=10.0, size=32)
    assert grid.shape == (32, 32, 32)
    assert grid.sum() == describe("2byu").n_atoms
    with pytest.raises(CryoNBError, match="voxel_size_a must be > 0"):
        atom_count_grid("2byu", voxel_size_a=0)
