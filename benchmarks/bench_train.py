"""RB3D training throughput (forward + backward, batch 16, 32³) and how close it runs to this machine's peak.

Reports samples/s, the FLOP/s achieved (counted with torch's FlopCounterMode) as a ratio of the matmul FLOP/s
measured in the same run, and the data loader's samples/s (memory-mapped volumes + augmentation), which must
be ≥ 10× the training rate so training never waits for data. On a GPU it adds AMP on/off.
Run: python benchmarks/bench_train.py [--width 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cryonb.augment import AugmentConfig, two_views
from cryonb.data import iterate_batches, to_tensor
from cryonb.models import RB3D, RB3DConfig


def matmul_flops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def train_rate(width: int, steps: int, device: torch.device, amp: bool) -> tuple[float, float]:
    model = RB3D(RB3DConfig(width=width)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(16, 1, 32, 32, 32, device=device)
    y = torch.randint(0, 10, (16,), device=device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    with FlopCounterMode(display=False) as counter:
        step()
    flops_per_step = counter.get_total_flops()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    return 16 / seconds, flops_per_step / seconds


def loader_rate(n: int = 512) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.npy"
        np.save(path, np.random.default_rng(0).normal(size=(n, 32, 32, 32)).astype(np.float32))
        volumes = np.load(path, mmap_mode="r")
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for idx in iterate_batches(n, 16, g):
            two_views(to_tensor(volumes, idx), AugmentConfig(), g)
        return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    peak = matmul_flops(cpu)
    print(f"cpu threads {torch.get_num_threads()}; matmul reference {peak / 1e9:.1f} GFLOP/s")
    slowest = None
    for width in args.width:
        samples, flops = train_rate(width, args.steps, cpu, amp=False)
        slowest = samples if slowest is None else min(slowest, samples)
        print(f"RB3D width {width:3d}: {samples:7.1f} samples/s, {flops / 1e9:6.1f} GFLOP/s = {flops / peak:5.2f}x of matmul")
    loader = loader_rate()
    print(f"loader (mmap + two augmented views): {loader:7.1f} samples/s = {loader / slowest:5.1f}x the slowest training rate (target ≥ 10x)")
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        gpeak = matmul_flops(gpu, 4096)
        for width in args.width:
            for amp in (False, True):
                samples, flops = train_rate(width, args.steps * 4, gpu, amp)
                print(f"GPU width {width:3d} amp={amp!s:5}: {samples:8.1f} samples/s, {flops / gpeak:5.2f}x of fp32 matmul")


if __name__ == "__main__":
    main()
