"""Write results/<profile>/REPORT.md: the papers' claims next to this run's numbers.

Example:
    python -m cryonb report --profile quick
"""

from __future__ import annotations

import argparse

from cryonb.report import write_report


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick")


def main(args: argparse.Namespace) -> int:
    path = write_report(args.profile)
    print(f"report written to {path}")
    return 0
