"""Extract normalised subtomograms from your tomogram at the model's voxel size.

Example:
    python -m cryonb extract TOMOGRAM.mrc particles.star --box 32 --voxel-size-a 10 -o subtomos/
    python -m cryonb extract TOMOGRAM.mrc picks.csv --tomo-voxel-size-a 6.8 -o subtomos/ --mrc

Coordinates: a RELION/Warp STAR file (rlnCoordinateX/Y/Z, tomogram voxels; or RELION 5
rlnCenteredCoordinateX/Y/ZAngst) or a CSV with x, y, z columns (tomogram voxels, 0-based).
The tomogram is memory-mapped; each box is cut at round(box * voxel-size-a / tomogram voxel size)
voxels, resampled to --box in Fourier space and z-scored. Boxes reaching past the tomogram's
edge are padded with their mean and flagged `border` in meta.csv, never dropped. The models take protein
dark (as reconstructed from raw tilts); a tomogram showing protein bright needs --polarity bright, and
classify/oneshot refuse boxes whose recorded polarity is not their checkpoint's.

Writes OUT/volumes.npy (N, box, box, box) float32, OUT/meta.csv and with --mrc OUT/mrc/*.mrc, as one
unit: an interrupted run leaves OUT as it was. OUT must be new, empty or an earlier extract output
(--overwrite replaces those files in any folder; other files there are kept).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from cryonb.extract import extract_subtomograms

#: an interrupted extraction starts over (the output folder is swapped in only when complete)
RESUMABLE = False


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tomogram", help="tomogram MRC file")
    parser.add_argument("coordinates", help="particle coordinates: .star or .csv")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--box", type=int, default=32, help="box edge in model voxels (default 32)")
    parser.add_argument("--voxel-size-a", type=float, default=10.0, help="model voxel size in Å (default 10)")
    parser.add_argument(
        "--tomo-voxel-size-a", type=float, default=None, help="tomogram voxel size in Å (default: MRC header)"
    )
    parser.add_argument("--tomo-name", default=None, help="keep only this rlnTomoName of a multi-tomogram STAR")
    parser.add_argument("--polarity", choices=["dark", "bright"], default="dark",
                        help="what the tomogram shows: 'dark' protein (as reconstructed from raw tilts: IMOD, AreTomo, Warp; "
                        "the default) or 'bright' (after an invert-contrast step); boxes are converted to the models' dark convention")
    parser.add_argument("--mrc", action="store_true", help="also write one MRC file per box")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder that is not an "
                        "extract output (replaces volumes.npy, meta.csv, mrc/ there; keeps other files)")


def main(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            result = extract_subtomograms(
                args.tomogram,
                args.coordinates,
                args.out,
                box=args.box,
                voxel_size_a=args.voxel_size_a,
                tomo_voxel_size_a=args.tomo_voxel_size_a,
                tomo_name=args.tomo_name,
                write_mrcs=args.mrc,
                progress=not args.quiet,
                overwrite=args.overwrite,
                polarity=args.polarity,
            )
        finally:
            for w in caught:  # one plain line each, not Python's file:line format
                print(f"cryonb extract: warning: {w.message}", file=sys.stderr)
    print(
        f"extracted {result.n} subtomograms ({result.crop}³ tomogram voxels → {args.box}³ at "
        f"{args.voxel_size_a:g} Å), {result.n_border} at the border (padded, flagged) → {result.volumes.parent}"
    )
    return 0
