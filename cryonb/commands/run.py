"""Execute the notebooks with papermill, as `make reproduce` does.

Example:
    python -m cryonb run --profile quick            # every notebook, in order
    python -m cryonb run --profile smoke --only 03  # one notebook
    python -m cryonb run --profile paper --max-minutes 9   # one part; repeat until it exits 0
With --max-minutes, long loops stop at their next saved state once the time is up and the command exits
with status 3 ("part done"); the same command continues where it stopped.
Executed notebooks, figures and tables go to results/<profile>/; checkpoints to runs/<profile>/.
"""

from __future__ import annotations

import argparse

from cryonb.runner import run_all


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="params/<profile>.yaml to use (quick, paper, smoke)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers or stems to run (default: all)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="time budget: stop at the next saved state after this many minutes (exit 3; rerun to continue)")


def main(args: argparse.Namespace) -> int:
    run_all(args.profile, args.only, max_minutes=args.max_minutes)
    return 0
