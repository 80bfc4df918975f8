"""Simulator speed and memory: fast path (batched workers) vs a plain per-particle NumPy/SciPy version
of the same physics, measured in the same run; plus the tilt-series reference path.

Run:  .venv/bin/python benchmarks/bench_simulate.py [--n-per-class 100] [--workers 2]
Prints subtomograms/s, the ratio fast / plain (target >= 5x), the tilt-series path's rate, the
extrapolated time for the three full-size CSSL sets (3 x 5,000) and the peak memory (RSS). On a machine
shared with other jobs the wall-clock rates depend on their load; the CPU seconds per subtomogram (all
processes) do much less, so they are printed too, with the load average.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryonb.simulate import (
    cssl_recipe,
    fast_filters,
    generate_dataset,
    load_maps,
    make_scene,
    simulate_tiltseries,
)
from cryonb.simulate.optics import contrast_per_density, measured_mtf


def _transfer_numpy(k: np.ndarray, defocus_um: float, cfg) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(contrast x CTF x envelope x MTF, MTF) per voxel, written out in NumPy."""
    volt = cfg.voltage_kv * 1e3
    lam = 12.2643247 / np.sqrt(volt * (1 + volt * 0.978466e-6))
    chi = np.pi * lam * defocus_um * 1e4 * k**2 - 0.5 * np.pi * cfg.cs_mm * 1e7 * lam**3 * k**4
    chi += np.arctan(cfg.amplitude_contrast / np.sqrt(1 - cfg.amplitude_contrast**2)) + np.radians(cfg.phase_shift_deg)
    ctf = np.abs(np.sin(chi)) if cfg.phase_flip else np.sin(chi)
    if cfg.detector_mtf == "ideal":
        mtf = np.sinc(k * cfg.detector_pixel_a)
    else:
        freq, value = measured_mtf(cfg.detector_mtf)  # the same table the simulator reads (cached)
        mtf = np.interp(k * cfg.detector_pixel_a, freq.numpy(), value.numpy())
    return contrast_per_density(cfg) * ctf * np.exp(-cfg.b_factor_a2 * k**2 / 4) * mtf, mtf


def plain_sample(recipe, index: int, maps, a: np.ndarray, g: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Same physics, written the straightforward way: scipy affine_transform (quadratic spline, prefiltered per
    call) of each molecule's 2x finer map, full complex numpy FFTs, transfer evaluated per voxel, noise
    from a real white field."""
    cfg = recipe.simulation
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(index,)))
    s = cfg.scene_size
    scene = np.zeros((s, s, s))
    cls = index // recipe.n_per_class
    picks = [cls] + list(rng.integers(0, len(maps), cfg.n_neighbours))
    for j, c in enumerate(picks):
        fine = maps[c].oversampled
        t = maps[c].density.shape[0]
        m = fine.shape[0] // t
        rot_zyx = Rotation.random(random_state=rng).as_matrix()[::-1, ::-1]  # acting on (z, y, x)
        # output voxel o (centre t/2) reads the finer map at m R^T (o - t/2) + m t/2
        block = ndimage.affine_transform(fine, m * rot_zyx.T, offset=m * t / 2 - m * rot_zyx.T @ np.full(3, t / 2),
                                         output_shape=(t, t, t), order=2, mode="constant")
        pos = np.zeros(3, int) if j == 0 else rng.integers(-12, 12, 3)
        lo = s // 2 + pos - t // 2
        scene[lo[0]:lo[0] + t, lo[1]:lo[1] + t, lo[2]:lo[2] + t] += block
    f = np.fft.fftfreq(s, d=cfg.voxel_size_a)
    k = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    a_full = np.concatenate([a, a[:, :, 1:-1][::-1, ::-1, ::-1]], axis=2)  # rfft -> full layout (approx.)
    g_full = np.concatenate([g, g[:, :, 1:-1][::-1, ::-1, ::-1]], axis=2)
    defocus = rng.uniform(cfg.defocus_um_min, cfg.defocus_um_max)
    transfer, mtf = _transfer_numpy(k, defocus, cfg)
    signal = np.real(np.fft.ifftn(np.fft.fftn(scene) * a_full * transfer))
    noise = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal((s, s, s))) * np.sqrt(g_full) * mtf))
    c0 = s // 2 - cfg.crop_size // 2
    sl = slice(c0, c0 + cfg.crop_size)
    sig, noi = signal[sl, sl, sl], noise[sl, sl, sl]
    vol = sig + noi * math.sqrt(sig.var() / (recipe.snr * noi.var()))
    vol = -vol if cfg.polarity == "bright" else vol
    return ((vol - vol.mean()) / vol.std()).astype(np.float32)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=100, help="1,000 subtomograms: start-up costs ~0.8 s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain", type=int, default=40, help="samples for the plain reference")
    parser.add_argument("--tiltseries", type=int, default=3, help="samples for the tilt-series path")
    args = parser.parse_args()

    recipe = cssl_recipe(snr=0.05, n_per_class=args.n_per_class, seed=12345)
    maps = load_maps(recipe)
    a, g = (x.numpy() for x in fast_filters(recipe.simulation))  # measured once, cached: not timed

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(recipe, f"{tmp}/ds", n_workers=args.workers, progress=False)
    fast_rate = recipe.n_total / (time.perf_counter() - t0)
    fast_cpu = (_cpu_seconds() - cpu0) / recipe.n_total

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    for i in range(args.plain):
        plain_sample(recipe, i * 7 % recipe.n_total, maps, a, g)
    plain_rate = args.plain / (time.perf_counter() - t0)
    plain_cpu = (_cpu_seconds() - cpu0) / args.plain

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(args.tiltseries):
        scene = make_scene(i % len(maps), maps, recipe.simulation, rng)
        simulate_tiltseries(scene.volume, 5.0, 0.05, recipe.simulation, rng)
    ts_rate = args.tiltseries / (time.perf_counter() - t0)

    peak_mib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(f"fast path, full pipeline ({args.workers} workers, {recipe.n_total} subtomograms, written to disk): "
          f"{fast_rate:.1f} subtomograms/s")
    print(f"plain per-particle NumPy/SciPy, same physics (1 process): {plain_rate:.1f} subtomograms/s")
    print(f"ratio fast / plain: {fast_rate / plain_rate:.1f}x (target >= 5x)")
    print(f"CPU per subtomogram: fast {fast_cpu * 1e3:.1f} ms, plain {plain_cpu * 1e3:.1f} ms: {plain_cpu / fast_cpu:.1f}x per core, "
          f"{args.workers * plain_cpu / fast_cpu:.1f}x on {args.workers} free cores (load average {os.getloadavg()[0]:.1f})")
    print(f"tilt-series reference path (1 process): {ts_rate:.2f} subtomograms/s")
    print(f"three full-size CSSL sets (15,000 subtomograms) extrapolated: {15000 / fast_rate / 60:.1f} min (target <= 10)")
    print(f"peak memory (largest process RSS): {peak_mib:.0f} MiB (target < 2048)")


if __name__ == "__main__":
    main()
