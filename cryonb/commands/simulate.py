"""Generate (or reuse) a simulated subtomogram data set.

Example:
    python -m cryonb simulate cssl --snr 0.03 --n-per-class 500 --seed 0
    python -m cryonb simulate cosnet --snr inf --n-per-class 60 --workers 2
    python -m cryonb simulate cssl-snr0.1-n100-s0          # a data-set name as notebooks print it
    python -m cryonb simulate cssl --snr 0.1 --n-per-class 4 --path tiltseries   # reference path (slow)

The data set lands in data/generated/<name>-<hash>/ (volumes.npy, masks.npy, meta.csv, recipe.json);
an existing one with the same recipe is checked against its checksums and reused. An interrupted run
resumes; while another process generates the same set, this one waits for it (--lock-timeout-s: at
most that long). Prints the folder and the measured SNR.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable

from cryonb.errors import CryoNBError
from cryonb.simulate import cosnet_recipe, cssl_recipe, ensure_dataset
from cryonb.simulate.config import check_snr

_NAME = re.compile(r"^(cssl|cosnet)-snr([0-9.e+-]+|inf)-n(\d+)-s(\d+)$")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="'cssl', 'cosnet', or a full name like cssl-snr0.1-n100-s0")
    parser.add_argument("--snr", default="0.1", help="Var(signal)/Var(noise) over the crop; 'inf' = no noise")
    parser.add_argument("--n-per-class", type=_int_at_least(1), default=None,
                        help="subtomograms per class (cssl 500, cosnet 60)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0)
    parser.add_argument("--path", choices=["fast", "tiltseries"], default="fast", help="imaging path")
    parser.add_argument("--workers", type=_int_at_least(1), default=None, help="worker processes (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--lock-timeout-s", type=_seconds, default=None, help="while another process generates "
                        "the same set, wait at most this many seconds (default: until it is done)")


def main(args: argparse.Namespace) -> int:
    m = _NAME.match(args.name)
    if m:
        kind, snr, n, seed = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
    elif args.name in ("cssl", "cosnet"):
        kind, snr, seed = args.name, args.snr, args.seed
        n = args.n_per_class if args.n_per_class is not None else (500 if kind == "cssl" else 60)
    else:
        raise CryoNBError(f"data set {args.name!r}: expected 'cssl', 'cosnet' or a name like cssl-snr0.1-n100-s0")
    snr_value = check_snr(snr)  # 'abc' -> "snr='abc': expected a number > 0 (or inf for no noise)"
    make = cssl_recipe if kind == "cssl" else cosnet_recipe
    recipe = make(snr=snr_value, n_per_class=n, seed=seed, path=args.path)
    ds = ensure_dataset(recipe, n_workers=args.workers, progress=not args.quiet,
                        lock_timeout_s=getattr(args, "lock_timeout_s", None))
    meta = ds.meta
    print(f"{recipe.name}: {len(ds)} subtomograms, {len(ds.classes)} classes -> {ds.root}")
    print(f"SNR requested {recipe.snr:g}, measured mean {meta.snr_measured.mean():g}; "
          f"splits {meta.split.value_counts().to_dict()}")
    return 0
