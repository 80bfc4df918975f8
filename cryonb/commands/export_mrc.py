"""Write one simulated subtomogram (and optionally its mask) as MRC, with the voxel size in the header.

Example:
    python -m cryonb export-mrc data/generated/cssl-snr0.1-n100-s0-<hash> 17 -o sample.mrc
    python -m cryonb export-mrc cssl-snr0.1-n100-s0-<hash> 17 -o sample.mrc --mask sample_mask.mrc

DATASET is a data-set folder or its name under data/generated/. Open the file in ChimeraX, IMOD or napari.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cryonb.errors import CryoNBError
from cryonb.io import write_mrc
from cryonb.paths import generated_dir, resolve
from cryonb.simulate import load_dataset


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="data-set folder, or its name under data/generated/")
    parser.add_argument("index", type=int, help="row of meta.csv (0-based)")
    parser.add_argument("-o", "--out", required=True, help="output .mrc file")
    parser.add_argument("--mask", default=None, help="also write the target mask to this .mrc file")


def main(args: argparse.Namespace) -> int:
    folder = resolve(args.dataset)
    if not folder.is_dir():
        folder = generated_dir() / args.dataset
    if not folder.is_dir():
        raise CryoNBError(f"dataset {args.dataset!r}: no such folder (nor under {generated_dir()})")
    ds = load_dataset(folder)
    if not 0 <= args.index < len(ds):
        raise CryoNBError(f"index {args.index}: expected 0 <= index < {len(ds)} for {ds.root.name}")
    write_mrc(args.out, np.asarray(ds.volumes[args.index]), ds.voxel_size_a)
    row = ds.meta.iloc[args.index]
    print(f"{Path(args.out)}: {row.pdb_id} (class {row.class_id}, {row.split}), SNR {row.snr:g}, "
          f"voxel {ds.voxel_size_a:g} Å")
    if args.mask:
        write_mrc(args.mask, np.asarray(ds.masks[args.index], dtype=np.float32), ds.voxel_size_a)
        print(f"{Path(args.mask)}: target mask")
    return 0
