"""Extract normalised subtomograms from your tomogram at the model's voxel size.

Example:
    python -m cryonb extract TOMOGRAM.mrc particles.star --box 32 --voxel-size-a 10 -o subtomos/
    python -m cryonb extract TOMOGRAM.mrc picks.csv --tomo-voxel-size-a 6.8 -o subtomos/ --mrc
    python -m cryonb extract TS_86_3.zarr ExperimentRuns/TS_86_3/Picks/ --object ribosome -o subtomos/
    python -m cryonb extract https://HOST/.../TS_86_3.zarr picks.csv -o subtomos/   # e.g. a Portal tomogram's OME-Zarr

Tomogram: an MRC file (memory-mapped), or an OME-Zarr image (a local .zarr folder, or an http(s):// address
read chunk by chunk: only the chunks the boxes need are fetched; needs pip install 'cryonb[portal]'), opened
at the multiscale level nearest --voxel-size-a.

Coordinates: a RELION/Warp STAR file (rlnCoordinateX/Y/Z, tomogram voxels; or RELION 5
rlnCenteredCoordinateX/Y/ZAngst), a CSV with x, y, z columns (tomogram voxels, 0-based; an `object`
column is kept, e.g. picks.csv of `data fetch portal:... --annotations`), or copick picks (one .json
file or a Picks/ folder of them, Å). A STAR file whose optics give its pixel coordinates another pixel size
than the tomogram's voxel is refused unless --coords-pixel-size-a says which it is; meta.csv records where
the voxel size came from (voxel_size_source) and the coordinates' unit (coords_unit).
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
    parser.add_argument("tomogram", help="tomogram: MRC file, .zarr folder or http(s):// OME-Zarr address")
    parser.add_argument("coordinates", help="particle coordinates: .star, .csv, copick .json or a copick Picks/ folder")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--box", type=int, default=32, help="box edge in model voxels (default 32)")
    parser.add_argument("--voxel-size-a", type=float, default=10.0, help="model voxel size in Å (default 10)")
    parser.add_argument(
        "--tomo-voxel-size-a", type=float, default=None, help="tomogram voxel size in Å (default: MRC header)"
    )
    parser.add_argument("--tomo-name", default=None, help="keep only this rlnTomoName of a multi-tomogram STAR")
    parser.add_argument("--object", action="append", default=None, metavar="NAME",
                        help="keep only picks of this object (CSV object column, copick pickable_object_name); repeatable")
    parser.add_argument("--coords-pixel-size-a", type=float, default=None,
                        help="pixel size in Å of pixel coordinates (STAR rlnCoordinateX, CSV x) when it is not the "
                        "tomogram's voxel, e.g. RELION 4's unbinned tilt-series pixel")
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
                objects=args.object,
                coords_pixel_size_a=args.coords_pixel_size_a,
            )
        finally:
            for w in caught:  # one plain line each, not Python's file:line format
                print(f"cryonb extract: warning: {w.message}", file=sys.stderr)
    print(
        f"extracted {result.n} subtomograms ({result.crop}³ tomogram voxels → {args.box}³ at "
        f"{args.voxel_size_a:g} Å), {result.n_border} at the border (padded, flagged) → {result.volumes.parent}"
    )
    return 0
