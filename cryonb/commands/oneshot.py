"""COS-Net one-shot classification and segmentation of extracted subtomograms against your support set.

Example:
    python -m cryonb extract TOMO.mrc picks.star --box 32 --voxel-size-a 10 -o subtomos/ --mrc
    mkdir -p support/ribosome support/proteasome      # copy one (or a few) chosen boxes per class:
    cp subtomos/mrc/subtomo_000012.mrc support/ribosome/
    cp subtomos/mrc/subtomo_000345.mrc support/proteasome/
    python -m cryonb train cosnet --profile quick           # prints runs/quick/cosnet/<variant>-snr<S>-<n>way-<key>.pt
    python -m cryonb oneshot subtomos/ --support support/ --checkpoint runs/quick/cosnet/DuSE-SCNN+decoder-snr0.5-5way-<key>.pt

The support folder holds one sub-folder of MRC volumes (or one <class>.mrc) per class, at least two
classes, with the subtomograms' box and voxel size. Several volumes in a class are averaged (k-shot).
Writes OUT/oneshot.csv (predicted class, match probability per class, coordinates, border flag), OUT/oneshot.star
(rlnCoordinateX/Y/Z, rlnClassNumber in support order; --star-style relion5: rlnTomoName +
rlnCenteredCoordinateX/Y/ZAngst + optics, for RELION 5 / Warp), with --copick OUT/copick/cryonb_0_<class>.json
(one copick picks file per class, score = match probability) and, for a variant with the decoder,
OUT/masks.npy and OUT/masks/mask_NNNNNN.mrc (mask probabilities).
OUT defaults to SUBTOMOS/oneshot/; it is written as one unit (no mask of an earlier run remains) and
must be new, empty or an earlier oneshot output (--overwrite replaces oneshot.csv, masks.npy and masks/ in
any folder; other files there are kept). Checkpoints come from `python -m cryonb train cosnet` (or notebook 07).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonb.outputs import check_output_folder, output_folder
from cryonb.predict import load_subtomograms, oneshot_predict, read_support, write_oneshot

#: an interrupted run starts over (the output folder is swapped in only when complete)
RESUMABLE = False
OUTPUTS = ("oneshot.csv", "oneshot.star", "masks.npy", "masks", "copick")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subtomos", help="folder written by `python -m cryonb extract`")
    parser.add_argument("--support", required=True, help="support folder: one sub-folder or <class>.mrc per class")
    parser.add_argument("--checkpoint", required=True, help="COS-Net checkpoint (.pt) from `python -m cryonb train cosnet` (runs/<profile>/cosnet/)")
    parser.add_argument("-o", "--out", default=None, help="output folder (default: SUBTOMOS/oneshot)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tomo-name", default=None, help="rlnTomoName / copick run name (default: the tomogram's file name)")
    parser.add_argument("--star-style", choices=["relion4", "relion5"], default="relion4",
                        help="relion4: rlnCoordinateX/Y/Z in tomogram voxels (default); relion5: rlnCenteredCoordinate*Angst + optics")
    parser.add_argument("--copick", action="store_true", help="also write one copick picks file per class (OUT/copick/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is not a oneshot output")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.subtomos) / "oneshot"
    inputs = (args.subtomos, args.support, args.checkpoint)
    overwrite = getattr(args, "overwrite", False)
    check_output_folder(out, "oneshot", OUTPUTS, inputs, overwrite)  # before the model runs
    subtomos = load_subtomograms(args.subtomos)
    support = read_support(args.support, subtomos.volumes.shape[1], subtomos.voxel_size_a)
    table, masks = oneshot_predict(args.checkpoint, subtomos, support, batch_size=args.batch_size)
    with output_folder(out, "oneshot", OUTPUTS, inputs, overwrite) as tmp:
        write_oneshot(tmp, table, masks, subtomos.voxel_size_a, meta=subtomos.meta, tomo_name=getattr(args, "tomo_name", None),
                      star_style=getattr(args, "star_style", "relion4"), copick=getattr(args, "copick", False))
    counts = table["predicted"].value_counts().reindex(support.names, fill_value=0)
    summary = ", ".join(f"{name} {int(n)}" for name, n in counts.items())
    print(f"classified {len(table)} subtomograms against {len(support.names)} classes ({summary}) → {out / 'oneshot.csv'}"
          + (f"; masks → {out / 'masks'}" if masks is not None else ""))
    return 0
