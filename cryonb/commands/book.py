"""Build the course site (static HTML) from the executed notebooks of results/<profile>/ into site/.

Nothing is executed and nothing is downloaded: the notebooks' outputs are those `make reproduce` wrote.
Needs the `book` extra (pip install -e '.[book]'; `make book` installs it).

Example:
    python -m cryonb book --profile quick          # -> site/index.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonb.book import build_site
from cryonb.spec import profile_path

RESUMABLE = False  # the site is written as one unit at the end


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="whose results/<profile>/ to render")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: site/)")


def main(args: argparse.Namespace) -> int:
    profile_path(args.profile)  # a typo names no results folder: say so before Sphinx starts
    result = build_site(args.profile, args.out)
    print(f"site written to {result.out_dir}: {len(result.pages)} pages in {result.seconds:.1f} s")
    for stem, n in result.unexecuted_cells.items():
        if n:
            print(f"  {stem}: {n} code cell(s) newer than results/{args.profile}/ shown without output")
    return 0
