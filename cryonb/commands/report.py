"""Write results/<profile>/REPORT.md: the papers' claims next to this run's numbers.

Example:
    python -m cryonb report --profile quick
"""

from __future__ import annotations

import argparse

from cryonb.report import write_report
from cryonb.spec import profile_path


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="a profile of params/ whose results/<profile>/ to report")


def main(args: argparse.Namespace) -> int:
    profile_path(args.profile)  # a typo would otherwise write an all-"not run" report into a new results/<typo>/ and exit 0
    path = write_report(args.profile)
    print(f"report written to {path}")
    return 0
