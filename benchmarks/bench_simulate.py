"""Simulator speed and memory: fast path (batched workers) vs a plain per-particle NumPy/SciPy version
of the same physics, measured in the same run; plus the tilt-series reference path.

Run:  .venv/bin/python benchmarks/bench_simulate.py [--n-per-class 100] [--workers 2]
Prints subtomograms/s, the ratio fast / plain (target >= 5x), the tilt-series path's rate, the
extrapolated time for the three full-size CSSL sets (3 x 5,000) and the peak memory (RSS).
"""

from __future__ import annotations

import argparse
import math
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
from cryonb.simulate.optics import measured_mtf


def _ctf_numpy(k: np.ndarray, defocus_um: float, cfg) -> np.ndarray:  # noqa: ANN001
    volt = cfg.voltage_kv * 1e3
    lam = 12.2643247 / np.sqrt(volt * (1 + volt * 0.978466e-6))
    chi = np.pi * lam * defocus_um * 1e4 * k**2 - 0.5 * np.pi * cfg.cs_mm * 1e7 * lam**3 * k**4
    chi += np.arctan(cfg.amplitude_contrast / np.sqrt(1 - cfg.amplitude_contrast**2))
    if cfg.detector_mtf == "ideal":
        mtf = np.sinc(k * cfg.detector_pixel_a)
    else:
        freq, value = measured_mtf(cfg.detector_mtf)  # the same table the simulator reads (cached)
        mtf = np.interp(k * cfg.detector_pixel_a, freq.numpy(), value.numpy())
    return -np.sin(chi) * np.exp(-cfg.b_factor_a2 * k**2 / 4) * mtf


def plain_sample(recipe, index: int, maps, a: np.ndarray, g: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Same physics, written the straightforward way: scipy affine_transform per molecule, full
    complex numpy FFTs, CTF evaluated per voxel, noise from a real white field."""
    cfg = recipe.simulation
    rng = np.random.default_rng(np.random.SeedSequence(recipe.seed, spawn_key=(index,)))
    s = cfg.scene_size
    scene = np.zeros((s, s, s))
    cls = index // recipe.n_per_class
    picks = [cls] + list(rng.integers(0, len(maps), cfg.n_neighbours))
    for j, c in enumerate(picks):
        m = maps[c].density
        rot = Rotation.random(random_state=rng).as_matrix()
        t = m.shape[0]
        centre = np.full(3, t / 2)
        block = ndimage.affine_transform(m, rot.T, offset=centre - rot.T @ centre, order=1)
        pos = np.zeros(3, int) if j == 0 else rng.integers(-12, 12, 3)
        lo = s // 2 + pos - t // 2
        scene[lo[0]:lo[0] + t, lo[1]:lo[1] + t, lo[2]:lo[2] + t] += block
    f = np.fft.fftfreq(s, d=cfg.voxel_size_a)
    k = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    a_full = np.concatenate([a, a[:, :, 1:-1][::-1, ::-1, ::-1]], axis=2)  # rfft -> full layout (approx.)
    g_full = np.concatenate([g, g[:, :, 1:-1][::-1, ::-1, ::-1]], axis=2)
    defocus = rng.uniform(cfg.defocus_um_min, cfg.defocus_um_max)
    signal = np.real(np.fft.ifftn(np.fft.fftn(scene) * a_full * _ctf_numpy(k, defocus, cfg)))
    noise = np.real(np.fft.ifftn(np.fft.fftn(rng.standard_normal((s, s, s))) * np.sqrt(g_full)))
    c0 = s // 2 - cfg.crop_size // 2
    sl = slice(c0, c0 + cfg.crop_size)
    sig, noi = signal[sl, sl, sl], noise[sl, sl, sl]
    vol = sig + noi * math.sqrt(sig.var() / (recipe.snr * noi.var()))
    return ((vol - vol.mean()) / vol.std()).astype(np.float32)


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

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(recipe, f"{tmp}/ds", n_workers=args.workers, progress=False)
    fast_rate = recipe.n_total / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    for i in range(args.plain):
        plain_sample(recipe, i * 7 % recipe.n_total, maps, a, g)
    plain_rate = args.plain / (time.perf_counter() - t0)

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
    print(f"tilt-series reference path (1 process): {ts_rate:.2f} subtomograms/s")
    print(f"three full-size CSSL sets (15,000 subtomograms) extrapolated: {15000 / fast_rate / 60:.1f} min (target <= 10)")
    print(f"peak memory (largest process RSS): {peak_mib:.0f} MiB (target < 2048)")


if __name__ == "__main__":
    main()
