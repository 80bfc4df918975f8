"""Generate (or reuse) a simulated subtomogram data set.

Example:
    python -m cryonb simulate cssl --snr 0.03 --n-per-class 500 --seed 0
    python -m cryonb simulate cosnet --snr inf --n-per-class 60 --workers 2
    python -m cryonb simulate cssl-snr0.1-n100-s0          # a data-set name as notebooks print it
    python -m cryonb simulate cssl --snr 0.1 --n-per-class 4 --path tiltseries   # reference path (slow)

The data set lands in data/generated/<name>-<hash>/ (volumes.npy, masks.npy, meta.csv, recipe.json);
an existing one with the same recipe is reused. Prints the folder and the measured SNR.
"""

from __future__ import annotations

import argparse
import math
import re

from cryonb.errors import CryoNBError
from cryonb.simulate import cosnet_recipe, cssl_recipe, ensure_dataset

_NAME = re.compile(r"^(cssl|cosnet)-snr([0-9.e+-]+|inf)-n(\d+)-s(\d+)$")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="'cssl', 'cosnet', or a full name like cssl-snr0.1-n100-s0")
    parser.add_argument("--snr", default="0.1", help="Var(signal)/Var(noise) over the crop; 'inf' = no noise")
    parser.add_argument("--n-per-class", type=int, default=None, help="subtomograms per class (cssl 500, cosnet 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", choices=["fast", "tiltseries"], default="fast", help="imaging path")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    m = _NAME.match(args.name)
    if m:
        kind, snr, n, seed = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    elif args.name in ("cssl", "cosnet"):
        kind, snr, seed = args.name, args.snr, args.seed
        n = args.n_per_class if args.n_per_class is not None else (500 if kind == "cssl" else 60)
    else:
        raise CryoNBError(f"data set {args.name!r}: expected 'cssl', 'cosnet' or a name like cssl-snr0.1-n100-s0")
    snr_value = math.inf if str(snr).lower() == "inf" else float(snr)
    make = cssl_recipe if kind == "cssl" else cosnet_recipe
    recipe = make(snr=snr_value, n_per_class=n, seed=seed, path=args.path)
    ds = ensure_dataset(recipe, n_workers=args.workers, progress=not args.quiet)
    meta = ds.meta
    print(f"{recipe.name}: {len(ds)} subtomograms, {len(ds.classes)} classes -> {ds.root}")
    print(f"SNR requested {recipe.snr:g}, measured mean {meta.snr_measured.mean():g}; "
          f"splits {meta.split.value_counts().to_dict()}")
    return 0
