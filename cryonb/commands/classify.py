"""Classify extracted subtomograms with a trained RB3D classifier; class probabilities to CSV and STAR.

Example:
    python -m cryonb extract TOMO.mrc picks.star --box 32 --voxel-size-a 10 -o subtomos/
    python -m cryonb train classifier --profile quick        # prints runs/quick/classifier/<key>/best.pt
    python -m cryonb classify subtomos/ --checkpoint runs/quick/classifier/<key>/best.pt

The checkpoint is an RB3D classifier written by cryonb (kind "rb3d": `python -m cryonb train classifier`, or
any fine-tuning run of `python -m cryonb train finetune`: runs/<profile>/finetune/<key>/snr<S>-<init>-f<F>-r<R>/best.pt);
it records its class names, box and voxel size, which must match the subtomograms. Only tensors and plain values
are read from it (weights_only loading).
Writes OUT/predictions.csv (predicted class, softmax probability of every class, coordinates, border
flag) and OUT/predictions.star (rlnCoordinateX/Y/Z, rlnClassNumber 1-based, rlnMaxValueProbDistribution).
--star-style relion5 writes RELION 5 coordinates instead (rlnTomoName, rlnCenteredCoordinateX/Y/ZAngst, an optics
block with the pixel size; the tomogram name defaults to its file name), to drop into RELION 5 or Warp;
--copick also writes OUT/copick/cryonb_0_<class>.json, one copick picks file per class with the probability
as score (copy them into your copick project's ExperimentRuns/<run>/Picks/).
OUT defaults to SUBTOMOS/classify/; it is written as one unit and must be new, empty or an earlier
classify output (--overwrite replaces those two files in any folder; other files there are kept).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonb.outputs import check_output_folder, output_folder
from cryonb.predict import classify_predict, load_subtomograms, write_predictions

#: an interrupted run starts over (the output folder is swapped in only when complete)
RESUMABLE = False
OUTPUTS = ("predictions.csv", "predictions.star", "copick")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subtomos", help="folder written by `python -m cryonb extract`")
    parser.add_argument("--checkpoint", required=True, help="RB3D classifier checkpoint (.pt)")
    parser.add_argument("-o", "--out", default=None, help="output folder (default: SUBTOMOS/classify)")
    parser.add_argument("--tomo-name", default=None, help="rlnTomoName to write into predictions.star (copick run name)")
    parser.add_argument("--star-style", choices=["relion4", "relion5"], default="relion4",
                        help="relion4: rlnCoordinateX/Y/Z in tomogram voxels (default); relion5: rlnCenteredCoordinate*Angst + optics")
    parser.add_argument("--copick", action="store_true", help="also write one copick picks file per class (OUT/copick/)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is not a classify output")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.subtomos) / "classify"
    inputs = (args.subtomos, args.checkpoint)
    overwrite = getattr(args, "overwrite", False)
    check_output_folder(out, "classify", OUTPUTS, inputs, overwrite)  # before the model runs
    subtomos = load_subtomograms(args.subtomos)
    table = classify_predict(args.checkpoint, subtomos, batch_size=args.batch_size)
    with output_folder(out, "classify", OUTPUTS, inputs, overwrite) as tmp:
        write_predictions(tmp, table, args.tomo_name, meta=subtomos.meta, star_style=getattr(args, "star_style", "relion4"),
                          copick=getattr(args, "copick", False))
    counts = table["predicted"].value_counts()
    summary = ", ".join(f"{name} {int(n)}" for name, n in counts.items())
    print(f"classified {len(table)} subtomograms ({summary}) → {out / 'predictions.csv'}")
    return 0
