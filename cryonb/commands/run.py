"""Execute the notebooks with papermill, as `make reproduce` does.

Example:
    python -m cryonb run --profile quick            # every notebook, in order
    python -m cryonb run --profile smoke --only 03  # one notebook
Executed notebooks, figures and tables go to results/<profile>/; checkpoints to runs/<profile>/.
"""

from __future__ import annotations

import argparse

from cryonb.runner import run_all


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="params/<profile>.yaml to use (quick, paper, smoke)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers or stems to run (default: all)")


def main(args: argparse.Namespace) -> int:
    run_all(args.profile, args.only)
    return 0
