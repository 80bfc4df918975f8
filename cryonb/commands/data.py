"""Check and fetch the data sets named in data_manifest.yaml.

Example:
    python -m cryonb data list
    python -m cryonb data verify            # checksum every present file; exit 1 on a mismatch, a missing
                                            # bundled file or a path outside the repository
    python -m cryonb data fetch NAME        # download an external data set and verify it
    python -m cryonb data fetch portal:tomogram/17035 --voxel-size-a 10 --annotations
                                            # a CryoET Data Portal tomogram (needs pip install 'cryonb[portal]')

portal:tomogram/<id> picks, among the tomograms of the same run and processing, the voxel spacing nearest
--voxel-size-a, downloads only that tomogram (MRC; --format zarr records its OME-Zarr address instead, which
extract reads chunk by chunk) and with --annotations the run's ground-truth point annotations, converted to
DATA_DIR/tomogram-<id>/picks.csv (x, y, z in the tomogram's voxels, object) for `extract`. Sizes are
verified, sha256 recorded in DATA_DIR/manifest.yaml (a user manifest, not data_manifest.yaml). The default
id 17035 is run TS_86_3 of the CZII CryoET Object Identification Challenge's training data (data set 10440:
apoferritin, beta-amylase, beta-galactosidase, ribosome, thyroglobulin, virus-like particles).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonb.fetch import sha256_file
from cryonb.manifest import fetch, load_manifest, verify
from cryonb.paths import resolve


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "verify", "fetch"])
    parser.add_argument("name", nargs="?", help="data set to fetch, or portal:tomogram/<id>")
    parser.add_argument("--manifest", default=None, help="manifest file (default: data_manifest.yaml)")
    portal = parser.add_argument_group("CryoET Data Portal (portal:tomogram/<id>)")
    portal.add_argument("--voxel-size-a", type=float, default=10.0, help="the model's voxel size in Å: the nearest spacing is fetched (default 10)")
    portal.add_argument("--annotations", action="store_true", help="also fetch the run's point annotations -> picks.csv")
    portal.add_argument("--format", choices=["auto", "mrc", "zarr"], default="auto",
                        help="mrc: download the MRC file; zarr: record the OME-Zarr address (nothing downloaded); auto: mrc if there is one")
    portal.add_argument("--data-dir", default=None, help="folder to write into (default data/external/portal)")
    portal.add_argument("--timeout-s", type=float, default=60.0, help="seconds to wait for each answer (default 60)")
    portal.add_argument("--portal-api", default=None, help="the Portal's GraphQL address (default: the public Portal)")


def _fetch_portal(args: argparse.Namespace) -> int:
    from cryonb.portal import DEFAULT_DATA_DIR, CryoETPortalSource, fetch_portal_tomogram, parse_portal_name, summary_lines

    tomogram_id = parse_portal_name(args.name)
    source = CryoETPortalSource(args.portal_api, timeout_s=args.timeout_s)
    data_dir = Path(args.data_dir) if args.data_dir else resolve(DEFAULT_DATA_DIR)  # a folder the user names is theirs (cwd)
    result = fetch_portal_tomogram(source, tomogram_id, data_dir,
                                   voxel_size_a=args.voxel_size_a, annotations=args.annotations, fmt=args.format,
                                   timeout_s=args.timeout_s)
    for line in summary_lines(result):
        print(line)
    return 0


def main(args: argparse.Namespace) -> int:
    if args.action == "fetch" and args.name and args.name.startswith("portal:"):
        return _fetch_portal(args)
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
