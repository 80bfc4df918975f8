"""Build the course site (static HTML) from the executed notebooks of results/<profile>/ into site/.

Nothing is executed and nothing is downloaded: the notebooks' outputs are those `make reproduce` wrote.
Needs the `book` extra (pip install -e '.[book]'; `make book` installs it). With --check, every page is then
loaded in headless Chromium (missing images, broken links, JavaScript errors, notebook pages without their
figures) and screenshots of the landing page and notebook 01 go to results/<profile>/site-screenshots/.

Example:
    python -m cryonb book --profile quick            # -> site/index.html
    python -m cryonb book --profile quick --check    # the same, then the browser check (`make test-book`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonb.book import build_site
from cryonb.paths import repo_root
from cryonb.sitecheck import check_book
from cryonb.spec import profile_path

RESUMABLE = False  # the site is written as one unit at the end


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="quick", help="whose results/<profile>/ to render")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: site/)")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder not written by `cryonb book`")
    parser.add_argument("--check", action="store_true", help="then load every page in headless Chromium and save screenshots")


def main(args: argparse.Namespace) -> int:
    profile_path(args.profile)  # a typo names no results folder: say so before Sphinx starts
    result = build_site(args.profile, args.out, overwrite=args.overwrite)
    print(f"site written to {result.out_dir}: {len(result.pages)} pages in {result.seconds:.1f} s")
    for stem, n in result.unexecuted_cells.items():
        if n:
            print(f"  {stem}: {n} code cell(s) newer than results/{args.profile}/ shown without output")
    if not args.check:
        return 0
    results_dir = repo_root() / "results" / args.profile
    reports = check_book(result.out_dir, result.pages, results_dir, results_dir / "site-screenshots")
    for report in reports:
        for problem in report.problems:
            print(f"  {report.url}: {problem}")
    bad = sum(bool(r.problems) for r in reports)
    print(f"{len(reports)} pages checked in Chromium, {bad} with problems; screenshots in {results_dir / 'site-screenshots'}")
    return 1 if bad else 0
