"""Check and fetch the data sets named in data_manifest.yaml.

Example:
    python -m cryonb data list
    python -m cryonb data verify            # checksum every present file; exit 1 on a mismatch, a missing
                                            # bundled file or a path outside the repository
    python -m cryonb data fetch NAME        # download an external data set and verify it
"""

from __future__ import annotations

import argparse

from cryonb.fetch import sha256_file
from cryonb.manifest import fetch, load_manifest, verify


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "verify", "fetch"])
    parser.add_argument("name", nargs="?", help="data set to fetch")
    parser.add_argument("--manifest", default=None, help="manifest file (default: data_manifest.yaml)")


def main(args: argparse.Namespace) -> int:
    entries = load_manifest(args.manifest)
    if args.action == "list":
        for e in entries:
            print(f"{e.name:32s} {e.kind:9s} {e.path}")
        return 0
    if args.action == "fetch":
        if not args.name:
            print("data fetch needs a data set NAME (see `python -m cryonb data list`)")
            return 2
        path = fetch(entries, args.name)
        print(f"fetched {args.name} -> {path}")
        entry = next(e for e in entries if e.name == args.name)
        if entry.sha256 is None:
            print(f"verified by the publisher's md5; its sha256, to pin in the manifest: {sha256_file(path)}")
        return 0
    results = verify(entries)
    for r in results:
        print(r.line())
    bad = [r for r in results if r.failed]
    print(f"{len(results)} data sets: {sum(r.status == 'ok' for r in results)} ok, "
          f"{sum(r.status == 'mismatch' for r in results)} mismatched, "
          f"{sum(r.status == 'refused' for r in results)} refused, "
          f"{sum(r.status == 'missing' and r.required for r in results)} bundled missing, "
          f"{sum(r.status == 'missing' and not r.required for r in results)} missing (generated on demand or fetchable)")
    return 1 if bad else 0
