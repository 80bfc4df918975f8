"""Command line: export-mrc writes the stored sample with its voxel size; simulate rejects bad names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryonb.cli import main as cli_main
from cryonb.errors import CryoNBError
from cryonb.io import read_mrc
from cryonb.simulate import DatasetRecipe, SimulationConfig, ensure_dataset


def test_export_mrc_roundtrip(tmp_path: Path) -> None:
    sim = SimulationConfig(scene_size=32, crop_size=16, n_neighbours=0)
    ds = ensure_dataset(DatasetRecipe(name="cli", classes=("4d4r", "3hhb"), n_per_class=2, snr=0.5, simulation=sim),
                        n_workers=1, progress=False, root_dir=tmp_path)
    out, mask = tmp_path / "s.mrc", tmp_path / "m.mrc"
    assert cli_main(["export-mrc", str(ds.root), "3", "-o", str(out), "--mask", str(mask)]) == 0
    vol = read_mrc(out)
    assert vol.voxel_size_a == pytest.approx(10.0)
    assert np.array_equal(vol.data, np.asarray(ds.volumes[3]))
    assert np.array_equal(read_mrc(mask).data, np.asarray(ds.masks[3], dtype=np.float32))


def test_export_mrc_bad_index(tmp_path: Path) -> None:
    sim = SimulationConfig(scene_size=32, crop_size=16, n_neighbours=0)
    ds = ensure_dataset(DatasetRecipe(name="cli", classes=("4d4r",), n_per_class=1, snr=0.5, simulation=sim),
                        n_workers=1, progress=False, root_dir=tmp_path)
    with pytest.raises(CryoNBError, match="index 5: expected 0 <= index < 1"):
        from cryonb.commands import export_mrc
        import argparse

        export_mrc.main(argparse.Namespace(dataset=str(ds.root), index=5, out=str(tmp_path / "x.mrc"), mask=None))


def test_simulate_rejects_unknown_name() -> None:
    import argparse

    from cryonb.commands import simulate

    with pytest.raises(CryoNBError, match="data set 'shrec'"):
        simulate.main(argparse.Namespace(name="shrec", snr="0.1", n_per_class=2, seed=0, path="fast", workers=1, quiet=True))
