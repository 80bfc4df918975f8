"""Augmentation speed: cryonb.augment (batched, crop + affine fused in one grid_sample) vs torchio per sample.

Usage::

    .venv/bin/python benchmarks/bench_augment.py [--batch 64] [--rounds 3] [--threads 2]

Both sides apply the CSSL paper's pipeline to the same 32³ inputs: a random resized crop (p = 0.5, volume
fraction in [0.5, 1], resized back to 32³) and a random affine (p = 0.5, rotation ±45° about z, translation
up to 0.1 of the size along x and y, scale 0.9–1.1). torchio is written as a user would: one
``tio.Compose`` applied to one ``tio.Subject`` at a time (its crop is a ``RandomAffine`` scale-up, the nearest
torchio offers to a resized crop). Prints samples/s of each, measured interleaved in the same run, and the
ratio (target ≥ 5× on CPU at batch 64). With CUDA, also prints cryonb's samples/s on the GPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from cryonb.augment import AugmentConfig, augment


def _torchio_pipeline():  # noqa: ANN202
    import torchio as tio

    crop = tio.RandomAffine(scales=(1.0, 1.0 / 0.5 ** (1 / 3)), degrees=0, translation=0, p=0.5)
    affine = tio.RandomAffine(scales=(0.9, 1.1), degrees=(0, 0, 0, 0, -45, 45), translation=(-3.2, 3.2, -3.2, 3.2, 0, 0), p=0.5)
    return tio, tio.Compose([crop, affine])


def _time(fn, rounds: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 32, 32, 32, generator=g)
    cfg = AugmentConfig()
    tio, pipeline = _torchio_pipeline()

    def ours() -> None:
        augment(x, cfg, g)

    def theirs() -> None:
        for v in x:
            pipeline(tio.Subject(img=tio.ScalarImage(tensor=v)))

    ours()
    theirs()  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(args.rounds):  # interleaved so that load from other processes hits both alike
        t_ours.append(_time(ours, 1))
        t_theirs.append(_time(theirs, 1))
    ours_sps, theirs_sps = args.batch / min(t_ours), args.batch / min(t_theirs)
    print(f"threads {args.threads}, batch {args.batch}, 32³, best of {args.rounds}")
    print(f"cryonb.augment (batched, fused): {ours_sps:8.0f} samples/s")
    print(f"torchio per sample             : {theirs_sps:8.0f} samples/s")
    print(f"ratio                          : {ours_sps / theirs_sps:8.1f}x (target ≥ 5x)")
    if torch.cuda.is_available():
        xc, gc = x.cuda(), torch.Generator(device="cpu").manual_seed(0)
        augment(xc, cfg, gc)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            augment(xc, cfg, gc)
        torch.cuda.synchronize()
        print(f"cryonb.augment on {torch.cuda.get_device_name()}: {10 * args.batch / (time.perf_counter() - t0):8.0f} samples/s")


if __name__ == "__main__":
    main()
