"""Write results/<profile>/REPORT.md: the papers' claims next to this run's numbers.

Example:
    python -m cryonb report --profile quick
"""

from __future__ import annotations

import argparse

from cryonb.errors import CryoNBError
from cryonb.paths import repo_root
from cryonb.report import write_report


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="a profile of params/ whose results/<profile>/ to report")


def main(args: argparse.Namespace) -> int:
    # a typo would otherwise write an all-"not run" report into a new results/<typo>/ and exit 0
    profiles = sorted(p.stem for p in (repo_root() / "params").glob("*.yaml"))
    if args.profile not in profiles:
        raise CryoNBError(f"unknown profile {args.profile!r}; expected one of {', '.join(profiles)} (params/*.yaml)")
    path = write_report(args.profile)
    print(f"report written to {path}")
    return 0
