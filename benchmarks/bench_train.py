"""RB3D training speed: samples/s, achieved FLOP/s against this machine's matmul FLOP/s, and loader headroom.

Usage::

    .venv/bin/python benchmarks/bench_train.py [--width 16] [--steps 5] [--threads 2]

Measures in one run: (1) RB3D forward + backward + Adam step at batch 16 on 32³ volumes (samples/s);
(2) the FLOP count of one training step (convolutions and linear layers, backward = 2 × forward) divided
by its time, as a fraction of a float32 matmul's FLOP/s measured just before; (3) the batch pipeline the
pre-training uses (memory-mapped read → tensor → two augmented views), in samples/s, which should be
≥ 10× the training rate so the model never waits. With CUDA, also samples/s with and without AMP.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cryonb.augment import AugmentConfig, two_views
from cryonb.data import iterate_batches, to_tensor
from cryonb.models import RB3D, RB3DConfig


def _forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds × 2 of every Conv3d and Linear in one forward pass, counted with hooks."""
    total = [0.0]

    def hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv3d):
            k = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            total[0] += 2.0 * k * out.numel()
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * module.in_features * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def _matmul_flops(device: str, n: int = 1024, reps: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def _train_rate(width: int, steps: int, device: str, amp: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = RB3D(RB3DConfig(width=width, embedding_dim=4 * width)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(16, 1, 32, 32, 32, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    flops = 3 * _forward_flops(model, x)
    scaler = torch.amp.GradScaler(enabled=amp)

    def step() -> None:
        with torch.autocast(device_type=device, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return 16 / dt, flops / dt


def _loader_rate(n: int = 256) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.npy"
        np.save(path, np.random.default_rng(0).standard_normal((n, 32, 32, 32), dtype=np.float32))
        volumes = np.load(path, mmap_mode="r")
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for b in iterate_batches(n, 16, g):
            two_views(to_tensor(volumes, b), AugmentConfig(), g)
        return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = _matmul_flops("cpu")
    sps, achieved = _train_rate(args.width, args.steps, "cpu", amp=False)
    loader = _loader_rate()
    print(f"CPU, {args.threads} threads, RB3D width {args.width}, batch 16, 32³")
    print(f"matmul float32           : {peak / 1e9:8.1f} GFLOP/s")
    print(f"training                 : {sps:8.1f} samples/s, {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.2f} of matmul")
    print(f"loader (read + 2 views)  : {loader:8.1f} samples/s = {loader / sps:.1f}x training (target ≥ 10x)")
    if torch.cuda.is_available():
        peak = _matmul_flops("cuda", n=8192)
        for amp in (False, True):
            sps, achieved = _train_rate(args.width, 20, "cuda", amp=amp)
            print(f"{torch.cuda.get_device_name()} amp={amp}: {sps:8.1f} samples/s, {achieved / peak:.2f} of fp32 matmul")


if __name__ == "__main__":
    main()
