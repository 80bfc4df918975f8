"""Subtomogram extraction speed and memory: cryonb.extract vs a plain per-particle NumPy slicing loop.

Usage:
    python benchmarks/bench_extract.py [--n 2000] [--tomo-voxel-size-a 6.8] [--box 32] [--voxel-size-a 10]

A 512 x 512 x 200 float32 tomogram (~200 MB, noise) and N random particle coordinates are written to a
temporary folder. Each method then runs in a fresh Python process, from the files to normalised boxes
in memory:

- plain: ``mrcfile.read`` (the whole tomogram into RAM), then a Python loop slicing one
  ``crop``-voxel cube per particle at the tomogram's voxel size (``np.pad`` with the mean at the border),
  z-scoring it; no rescaling.
- plain-rescaled: the same loop plus a per-particle ``numpy.fft`` rescale to ``box`` (same output as ours
  but without sub-voxel centring): the plain way to get what cryonb gives.
- cryonb: ``open_tomogram`` (memory-mapped) + ``read_coordinates`` + ``extract_boxes``: the same cubes,
  *plus* Fourier rescaling to ``box`` voxels at the model's voxel size with sub-voxel centring.

- cryonb from OME-Zarr: the same tomogram written as an OME-Zarr (zarr 2, 64³ chunks, zarr's default Blosc
  compressor), opened by ``open_tomogram`` (chunks read lazily, particles in chunk order): the same boxes,
  its rate against the MRC input's in the same run (issue #19).

Reported: subtomograms/s of each and their ratio (cryonb / plain; the issue's target is >= 1), the
end-to-end ``extract_subtomograms`` time to disk, and peak memory: tracemalloc's peak of Python/NumPy
heap allocations (a memory map's pages are not allocations) and the process's max resident set size
(which also counts the tomogram's file pages a memory map touched; they are page cache, reclaimable).
Timings are the best of ``--repeat`` runs with the file hot in the page cache for both; CPU seconds
(``time.process_time``, all threads) are printed too, as wall time on a shared machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

SHAPE = (200, 512, 512)  # z, y, x


def _plain_crops(tomogram: Path, coords_csv: Path, crop: int) -> Iterator[np.ndarray]:
    """Whole tomogram in RAM, one NumPy slice per particle; border boxes padded with their mean."""
    data = mrcfile.read(tomogram)
    xyz = pd.read_csv(coords_csv)[["x", "y", "z"]].to_numpy()
    shape = np.array(data.shape)
    for x, y, z in xyz:
        s = np.rint([z, y, x]).astype(int) - crop // 2
        lo, hi = np.maximum(s, 0), np.minimum(s + crop, shape)
        part = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if (lo != s).any() or (hi != s + crop).any():
            part = np.pad(part, list(zip(lo - s, s + crop - hi)), constant_values=part.mean())
        yield part


def _plain(tomogram: Path, coords_csv: Path, crop: int) -> np.ndarray:
    """Reference: the plain crops, z-scored; no rescaling."""
    return np.stack([((p - p.mean()) / p.std()).astype(np.float32) for p in _plain_crops(tomogram, coords_csv, crop)])


def _plain_rescaled(tomogram: Path, coords_csv: Path, crop: int, box: int) -> np.ndarray:
    """Reference 2, the same output as ours the plain way: the plain crops plus a per-particle
    ``numpy.fft`` rescale (fftn, fftshift, central crop/pad of the spectrum, ifftn); no sub-voxel shift."""
    m = min(crop, box)
    src = slice(crop // 2 - m // 2, crop // 2 - m // 2 + m)
    dst = slice(box // 2 - m // 2, box // 2 - m // 2 + m)
    out = []
    for part in _plain_crops(tomogram, coords_csv, crop):
        spec = np.fft.fftshift(np.fft.fftn(part))
        small = np.zeros((box, box, box), dtype=spec.dtype)
        small[dst, dst, dst] = spec[src, src, src]
        v = np.fft.ifftn(np.fft.ifftshift(small)).real
        out.append(((v - v.mean()) / v.std()).astype(np.float32))
    return np.stack(out)


def _ours(tomogram: Path, coords_csv: Path, box: int, voxel_size_a: float) -> np.ndarray:
    from cryonb.extract import crop_size, extract_boxes, open_tomogram, read_coordinates

    with open_tomogram(tomogram) as (data, tomo_a):
        coords = read_coordinates(coords_csv, shape_zyx=tuple(data.shape), voxel_size_a=tomo_a)
        volumes, _ = extract_boxes(data, coords, box, crop_size(box, voxel_size_a, tomo_a))
    return volumes


def _write_omezarr(tomogram: Path, path: Path, voxel_size_a: float) -> Path:
    """The MRC tomogram as a one-level OME-Zarr (OME-NGFF 0.4, zarr 2, 64³ chunks, zarr's default compressor)."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_dataset("0", data=mrcfile.read(tomogram), chunks=(64, 64, 64))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
                                   "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [voxel_size_a] * 3}]}]}]
    return path


def _ours_to_disk(tomogram: Path, coords_csv: Path, box: int, voxel_size_a: float, out: Path) -> int:
    from cryonb.extract import extract_subtomograms

    return extract_subtomograms(tomogram, coords_csv, out, box=box, voxel_size_a=voxel_size_a, progress=False).n


def _worker(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    tomo, coords = Path(args.tomogram), Path(args.coords)
    crop = int(round(args.box * args.voxel_size_a / args.tomo_voxel_size_a))
    if args.worker not in ("plain", "plain-rescaled"):
        import torch

        import cryonb.extract  # noqa: F401  (module import, torch included, is not extraction time)

        if args.threads:
            torch.set_num_threads(args.threads)
    if args.trace:
        tracemalloc.start()
    times, cpu = [], []
    for _ in range(1 if args.trace else args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        if args.worker == "plain":
            result = _plain(tomo, coords, crop)
            n = len(result)
        elif args.worker == "plain-rescaled":
            result = _plain_rescaled(tomo, coords, crop, args.box)
            n = len(result)
        elif args.worker == "ours":
            result = _ours(tomo, coords, args.box, args.voxel_size_a)
            n = len(result)
        else:
            n = _ours_to_disk(tomo, coords, args.box, args.voxel_size_a, Path(args.out_dir))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # all threads' CPU seconds: steadier than wall time on a busy machine
        assert args.worker == "disk" or np.isfinite(result).all()
        result = None  # free before the next repeat
    peak = tracemalloc.get_traced_memory()[1] if args.trace else None
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"n": n, "seconds": min(times), "cpu_seconds": min(cpu), "trace_peak_mb": peak and peak / 2**20, "maxrss_mb": maxrss_mb}))


def _run(
    args: argparse.Namespace, worker: str, tomo: Path, coords: Path, trace: bool, out_dir: Path, repeat: int | None = None
) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", worker, "--tomogram", str(tomo), "--coords", str(coords),
        "--box", str(args.box), "--voxel-size-a", str(args.voxel_size_a),
        "--tomo-voxel-size-a", str(args.tomo_voxel_size_a), "--repeat", str(repeat or args.repeat), "--threads", str(args.threads), "--out-dir", str(out_dir),
    ] + (["--trace"] if trace else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="particles (default 2000)")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--voxel-size-a", type=float, default=10.0, help="model voxel size, Å")
    parser.add_argument("--tomo-voxel-size-a", type=float, default=6.8, help="tomogram voxel size, Å")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for cryonb (default: all cores)")
    parser.add_argument("--worker", choices=["plain", "plain-rescaled", "ours", "disk"], help=argparse.SUPPRESS)
    parser.add_argument("--tomogram", help=argparse.SUPPRESS)
    parser.add_argument("--coords", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    rng = np.random.default_rng(args.seed)
    crop = int(round(args.box * args.voxel_size_a / args.tomo_voxel_size_a))
    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp_name:
        tmp = Path(tmp_name)
        tomo, coords = tmp / "tomo.mrc", tmp / "coords.csv"
        with mrcfile.new(tomo) as mrc:
            mrc.set_data(rng.standard_normal(SHAPE, dtype=np.float32))
            mrc.voxel_size = args.tomo_voxel_size_a
        xyz = rng.uniform(0, np.array(SHAPE[::-1]) - 1, size=(args.n, 3))
        pd.DataFrame(xyz, columns=["x", "y", "z"]).to_csv(coords, index=False)
        zarr_path = _write_omezarr(tomo, tmp / "tomo.zarr", args.tomo_voxel_size_a)
        mb = tomo.stat().st_size / 2**20
        print(f"tomogram {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} float32 ({mb:.0f} MiB, {args.tomo_voxel_size_a} Å), "
              f"{args.n} particles, crop {crop}^3 -> box {args.box}^3 at {args.voxel_size_a} Å, "
              f"torch threads {args.threads or 'all'} ({os.cpu_count()} cores)")
        plain = _run(args, "plain", tomo, coords, False, tmp / "o")
        plain_rs = _run(args, "plain-rescaled", tomo, coords, False, tmp / "o", repeat=1)  # ~30 s a run
        ours = _run(args, "ours", tomo, coords, False, tmp / "o")
        ours_zarr = _run(args, "ours", zarr_path, coords, False, tmp / "o")
        disk = _run(args, "disk", tomo, coords, False, tmp / "o")
        plain_mem = _run(args, "plain", tomo, coords, True, tmp / "o")
        ours_mem = _run(args, "ours", tomo, coords, True, tmp / "o")
        disk_mem = _run(args, "disk", tomo, coords, True, tmp / "o")

    rate = {k: v["n"] / v["seconds"] for k, v in (("plain", plain), ("plain_rs", plain_rs), ("ours", ours), ("disk", disk))}
    print(f"plain NumPy slicing loop (no rescaling): {plain['seconds']:.2f} s, {rate['plain']:.0f} subtomograms/s")
    print(f"plain loop + numpy.fft rescale:          {plain_rs['seconds']:.2f} s, {rate['plain_rs']:.0f} subtomograms/s")
    print(f"cryonb extract_boxes (Fourier rescaled): {ours['seconds']:.2f} s, {rate['ours']:.0f} subtomograms/s")
    print(f"cryonb extract_subtomograms to disk:     {disk['seconds']:.2f} s, {rate['disk']:.0f} subtomograms/s")
    zarr_rate = ours_zarr["n"] / ours_zarr["seconds"]
    print(f"cryonb extract_boxes from OME-Zarr:      {ours_zarr['seconds']:.2f} s, {zarr_rate:.0f} subtomograms/s "
          f"(64³ chunks, Blosc); ratio OME-Zarr / MRC input {zarr_rate / rate['ours']:.2f}x")
    print(f"ratio cryonb / plain slicing: {rate['ours'] / rate['plain']:.2f}x (issue target >= 1x); "
          f"cryonb / plain + numpy.fft rescale (same output): {rate['ours'] / rate['plain_rs']:.2f}x")
    out_mb = args.n * args.box**3 * 4 / 2**20
    cpu_ms = {k: 1e3 * v["cpu_seconds"] / v["n"] for k, v in (("plain", plain), ("plain_rs", plain_rs), ("ours", ours), ("disk", disk))}
    print(f"CPU ms per subtomogram (all threads): plain {cpu_ms['plain']:.2f}, plain + numpy.fft {cpu_ms['plain_rs']:.2f}, "
          f"cryonb {cpu_ms['ours']:.2f}, cryonb to disk {cpu_ms['disk']:.2f}; "
          f"CPU-time ratio plain / cryonb {cpu_ms['plain'] / cpu_ms['ours']:.2f}x")
    print(f"peak heap (tracemalloc): plain {plain_mem['trace_peak_mb']:.0f} MiB, cryonb {ours_mem['trace_peak_mb']:.0f} MiB "
          f"(of which {out_mb:.0f} MiB is the output array), to disk {disk_mem['trace_peak_mb']:.0f} MiB; tomogram {mb:.0f} MiB")
    print(f"max RSS: plain {plain_mem['maxrss_mb']:.0f} MiB, cryonb {ours_mem['maxrss_mb']:.0f} MiB, "
          f"to disk {disk_mem['maxrss_mb']:.0f} MiB (RSS includes touched, reclaimable memory-map pages)")


if __name__ == "__main__":
    main()
