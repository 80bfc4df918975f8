"""Training throughput: N independent models trained together (``cryonb.train.fit_many``) against the same N
trained one after another (``cryonb.train.fit``), at the quick profile's widths; all ratios measured in one run.

Prints, per architecture (RB3D widths 4 / 8 / 16, batch 16, 32³; COS-Net base width 4, 5-way episode pairs):
- samples/s of N sequential ``fit`` runs (torch's default threads) and of ``fit_many`` (goal ≥ 3× at N = 8);
- the FLOP/s achieved by the batched mode (counted with torch's FlopCounterMode) as a fraction of the matmul
  FLOP/s measured in the same run with the same threads (goal ≥ 0.3);
- the data loader's samples/s (memory-mapped volumes + two augmented views, what pre-training reads) as a
  multiple of the batched training rate (goal ≥ 10×);
- CPU variants of one RB3D width-8 step: oneDNN (default, NCDHW), ``channels_last_3d``, oneDNN off, and with
  ``--compile`` ``torch.compile``;
- with ``--compare-batching`` the per-model CPU time of one model at a time vs vmap vs a hand-written
  channel-grouped RB3D (one intra-op thread): the measurement behind :mod:`cryonb.batched`'s choice.
On a GPU it adds a section: sequential vs vmap-batched, AMP off/on (unmeasured so far: no GPU here).

Run: python benchmarks/bench_train.py [--models 8] [--steps 4] [--widths 4 8 16] [--compile] [--compare-batching]
The machine's load average is printed; on a shared machine only the ratios are meaningful.

Measured on this project's 2-core CPU (torch 2.13.0+cpu, oneDNN 3.12; N = 8, 4 steps each; samples/s; "before" =
N ``fit`` calls with torch's defaults, 2 threads + contiguous layout; "now" = N ``fit`` calls with cryonb's, 1 thread +
channels_last_3d; fit_many = 2 workers × 1 thread)::

    load average 0.9 (quiet)     before    now  fit_many  ×before  ×now  FLOP frac   vmap
    RB3D width 4                   85.7  111.7     199.0     2.32  1.78       0.05   72.0
    RB3D width 8                   54.2   77.0     118.3     2.18  1.54       0.09   43.9
    RB3D width 16                  41.5   43.1      65.6     1.58  1.52       0.18   15.5
    COS-Net base 4                 10.2   24.5      30.9     3.03  1.26       0.11   11.6
    load average 1.9 (other users)
    RB3D width 4                    6.7   94.8      86.8    12.91  0.92       0.04   59.0
    RB3D width 8                    7.8   57.5      58.7     7.50  1.02       0.09   40.6
    RB3D width 16                   7.0   44.8      36.8     5.25  0.82       0.19   21.3
    COS-Net base 4                 15.3   20.9      41.2     2.69  1.97       0.28   13.2

The goals (≥ 3× sequential, ≥ 0.3 of matmul FLOP/s) are met only under load, where two OpenMP threads per model
collapse; on a quiet machine two cores can give at most 2× over one model per thread, and the per-core
efficiency is set by oneDNN's small-channel 3-D kernels (5–20 % of matmul), which batching cannot raise on CPU
(see :mod:`cryonb.batched`). Loader: 1,151–1,157 samples/s on one thread, 20–39× a worker's share of the
batched width-8 rate. One width-8 step: channels_last_3d 1.19–1.35× faster than NCDHW, oneDNN off 0.42–0.45×,
``torch.compile`` 1.04× after 39 s of compilation (``--compile``).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cryonb  # noqa: F401  (first: OpenMP wait policy before torch loads)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cryonb.augment import AugmentConfig, two_views
from cryonb.data import iterate_batches, to_tensor
from cryonb.models.cosnet import COSNet, COSNetConfig
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.oneshot import LossConfig, _loss as cosnet_loss
from cryonb.train import TrainConfig, fit, fit_many

BATCH = 16
N_WAY = 5


def matmul_flops(device: torch.device, n: int = 1024, repeats: int = 8) -> float:
    """Best-of FLOP/s of an n×n float32 matmul: the machine's reachable peak with the current threads."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class Workload:
    """N models of one architecture with their fixed batches, and the loss ``fit`` minimises."""

    def __init__(self, kind: str, width: int, n_models: int, steps: int, device: torch.device) -> None:
        self.kind, self.width, self.steps, self.device = kind, width, steps, device
        g = torch.Generator().manual_seed(0)
        if kind == "rb3d":
            self.batch = BATCH
            self.data = [[(torch.randn(BATCH, 1, 32, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)) for _ in range(steps)]
                         for _ in range(n_models)]
            self.loss = _ce
        else:
            self.batch = 2 * N_WAY
            self.data = [[(torch.randn(self.batch, 1, 32, 32, 32, generator=g), (torch.rand(self.batch, 1, 32, 32, 32, generator=g) > 0.9).float())
                          for _ in range(steps)] for _ in range(n_models)]
            cfg = LossConfig(w_mask_bce=10.0)
            self.loss = lambda m, b: cosnet_loss(m, b, N_WAY, cfg)  # noqa: E731
        self.n_models = n_models

    def model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.kind == "rb3d":
            return RB3D(RB3DConfig(width=self.width, embedding_dim=64))
        return COSNet(COSNetConfig(base_channels=self.width, feature_dim=128, feature_pool=2))

    def batches(self, i: int) -> Callable:
        data = self.data[i]

        def batches(epoch: int, g: torch.Generator):  # noqa: ANN202
            yield from data

        return batches

    def flops_per_step(self) -> float:
        model = self.model(0).to(self.device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = tuple(t.to(self.device) for t in self.data[0][0])
        with FlopCounterMode(display=False) as counter:
            loss = self.loss(model, x)["loss"]
            loss.backward()
            opt.step()
        return float(counter.get_total_flops())

    @property
    def name(self) -> str:
        return f"RB3D width {self.width:2d}" if self.kind == "rb3d" else f"COS-Net base {self.width}"


def _ce(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"loss": F.cross_entropy(m(b[0]), b[1])}


def _cfg() -> TrainConfig:
    return TrainConfig(epochs=1, lr=1e-3, optimizer="adam")


def sequential_rate(w: Workload, threads: int, channels_last: bool) -> float:
    """samples/s of N ``fit`` calls, one after another, with ``threads`` intra-op threads and the given layout."""
    before = torch.get_num_threads()
    os.environ["CRYONB_CHANNELS_LAST"] = "1" if channels_last else "0"
    torch.set_num_threads(threads)
    try:
        models = [w.model(i) for i in range(w.n_models)]
        fit(w.model(99), w.loss, w.batches(0), _cfg(), seed=0, device=w.device, progress=False)  # warm-up
        _sync(w.device)
        t0 = time.perf_counter()
        for i, m in enumerate(models):
            fit(m, w.loss, w.batches(i), _cfg(), seed=i, device=w.device, progress=False)
        _sync(w.device)
        return w.n_models * w.steps * w.batch / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
        os.environ.pop("CRYONB_CHANNELS_LAST", None)


def batched_rate(w: Workload, executor: str) -> float:
    """samples/s of one ``fit_many`` call training the N models together."""
    warm = [w.model(i) for i in range(2)]
    fit_many(warm, w.loss, [w.batches(0), w.batches(1)], _cfg(), seeds=[0, 1], device=w.device, progress=False, executor=executor)
    models = [w.model(i) for i in range(w.n_models)]
    _sync(w.device)
    t0 = time.perf_counter()
    fit_many(models, w.loss, [w.batches(i) for i in range(w.n_models)], _cfg(), seeds=list(range(w.n_models)), device=w.device,
             progress=False, executor=executor)
    _sync(w.device)
    return w.n_models * w.steps * w.batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rate(n: int = 512) -> float:
    """samples/s of pre-training's input: memory-mapped volumes → two augmented views (one thread: a worker's share)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.npy"
        np.save(path, np.random.default_rng(0).normal(size=(n, 32, 32, 32)).astype(np.float32))
        volumes = np.load(path, mmap_mode="r")
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for idx in iterate_batches(n, BATCH, g):
            two_views(to_tensor(volumes, idx), AugmentConfig(), g)
        return n / (time.perf_counter() - t0)


def step_variants(width: int, steps: int, compile_too: bool) -> dict[str, float]:
    """Seconds per RB3D training step (fwd + bwd + Adam, batch 16) in CPU variants; best of ``steps``."""
    x, y = torch.randn(BATCH, 1, 32, 32, 32), torch.randint(0, 10, (BATCH,))
    out: dict[str, float] = {}
    variants = ["oneDNN (NCDHW)", "channels_last_3d", "oneDNN off"] + (["torch.compile"] if compile_too else [])
    for name in variants:
        torch.manual_seed(0)
        model = RB3D(RB3DConfig(width=width, embedding_dim=64))
        xx = x
        if name == "channels_last_3d":
            model = model.to(memory_format=torch.channels_last_3d)
            xx = x.contiguous(memory_format=torch.channels_last_3d)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(m: nn.Module = model) -> None:
            loss = F.cross_entropy(m(xx), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        fn = step
        if name == "torch.compile":
            compiled = torch.compile(model)
            fn = lambda: step(compiled)  # noqa: E731
            t0 = time.perf_counter()
            fn()
            out["torch.compile (first step: compilation)"] = time.perf_counter() - t0
        mkldnn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = name != "oneDNN off"
        try:
            fn()
            best = float("inf")
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
        finally:
            torch.backends.mkldnn.enabled = mkldnn
        out[name] = best
    return out


def compare_batching(widths: list[int], n_models: int) -> None:
    """Per-model CPU seconds of one step, one intra-op thread: one model at a time vs vmap vs channel-grouped."""
    from torch.func import functional_call, stack_module_state, vmap

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        print(f"\nbatching on CPU (one thread, CPU ms per model-step, fwd+bwd, {n_models} models, batch {BATCH}):")
        print(f"{'RB3D width':>10s} {'alone':>7s} {'alone CL':>9s} {'vmap':>7s} {'grouped':>8s} {'grouped CL':>11s}")
        for width in widths:
            models = [RB3D(RB3DConfig(width=width, embedding_dim=64, dropout=0.0)) for _ in range(n_models)]
            x = torch.randn(n_models, BATCH, 1, 32, 32, 32)
            y = torch.randint(0, 10, (n_models, BATCH))

            def alone(cl: bool) -> Callable[[], None]:
                ms = [m.to(memory_format=torch.channels_last_3d) if cl else m for m in copy.deepcopy(models)]
                xs = [x[i].contiguous(memory_format=torch.channels_last_3d) if cl else x[i] for i in range(n_models)]
                return lambda: [F.cross_entropy(m(xs[i]), y[i]).backward() for i, m in enumerate(ms)]  # type: ignore[func-returns-value]

            params, buffers = stack_module_state(models)
            base = copy.deepcopy(models[0]).to("meta")

            def vm() -> None:
                f = lambda p, b, xi, yi: F.cross_entropy(functional_call(base, (p, b), (xi,)), yi)  # noqa: E731
                vmap(f)(params, buffers, x, y).sum().backward()

            def grouped(cl: bool) -> Callable[[], None]:
                net = _GroupedRB3D(n_models, width)
                xx = x[:, :, 0].transpose(0, 1).contiguous()
                if cl:
                    net, xx = net.to(memory_format=torch.channels_last_3d), xx.contiguous(memory_format=torch.channels_last_3d)
                return lambda: F.cross_entropy(net(xx).flatten(0, 1), y.flatten(), reduction="sum").backward()

            row = [_cpu_ms(fn, n_models) for fn in (alone(False), alone(True), vm, grouped(False), grouped(True))]
            print(f"{width:10d} " + " ".join(f"{v:{w}.0f}" for v, w in zip(row, (7, 9, 7, 8, 11))))
        _compare_cosnet(n_models)
    finally:
        torch.set_num_threads(before)


def _compare_cosnet(n_models: int, width: int = 4) -> None:
    """COS-Net base 4 (5-way pairs): one model at a time vs vmap, CPU ms per model-step (no hand-written grouped COS-Net)."""
    from torch.func import functional_call, stack_module_state, vmap

    w = Workload("cosnet", width, n_models, 1, torch.device("cpu"))
    models = [w.model(i) for i in range(n_models)]
    batches = [w.data[i][0] for i in range(n_models)]

    def alone(cl: bool) -> Callable[[], None]:
        ms = [m.to(memory_format=torch.channels_last_3d) if cl else m for m in copy.deepcopy(models)]
        return lambda: [w.loss(m, batches[i])["loss"].backward() for i, m in enumerate(ms)]  # type: ignore[func-returns-value]

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.stack([b[0] for b in batches])
    masks = torch.stack([b[1] for b in batches])

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = base

        def forward(self, xi: torch.Tensor, mi: torch.Tensor) -> torch.Tensor:
            return w.loss(self.inner, (xi, mi))["loss"]

    wrap = Wrap()

    def vm() -> None:
        f = lambda p, b, xi, mi: functional_call(wrap, ({f"inner.{k}": v for k, v in p.items()}, {f"inner.{k}": v for k, v in b.items()}), (xi, mi))  # noqa: E731
        vmap(f)(params, buffers, x, masks).sum().backward()

    row = [_cpu_ms(fn, n_models) for fn in (alone(False), alone(True), vm)]
    print(f"{'COS-Net ' + str(width):>10s} " + " ".join(f"{v:{k}.0f}" for v, k in zip(row, (7, 9, 7))) + "      (no grouped version)")


def _cpu_ms(fn: Callable[[], None], n_models: int, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()  # CPU time of this process: robust to other users' load at one thread
        fn()
        best = min(best, time.process_time() - t0)
    return 1000 * best / n_models


class _GroupedBlock(nn.Module):
    """RB3D's residual block for N models at once: groups=N convolutions, BatchNorm over N·C channels."""

    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        half, neck = c // 2, c // 4
        self.n = n
        self.shortcut = nn.Sequential(nn.Conv3d(n * c, n * half, 3, padding=1, groups=n), nn.BatchNorm3d(n * half))
        self.bottleneck = nn.Sequential(
            nn.Conv3d(n * c, n * neck, 1, groups=n), nn.BatchNorm3d(n * neck), nn.ReLU(inplace=True),
            nn.Conv3d(n * neck, n * neck, 3, padding=1, groups=n), nn.BatchNorm3d(n * neck), nn.ReLU(inplace=True),
            nn.Conv3d(n * neck, n * half, 1, groups=n), nn.BatchNorm3d(n * half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.shortcut(x).unflatten(1, (self.n, -1)), self.bottleneck(x).unflatten(1, (self.n, -1))
        return F.relu(torch.cat([a, b], 2).flatten(1, 2))  # model-major channels, as the next grouped conv expects


class _GroupedRB3D(nn.Module):
    """N RB3D models as one network (input (B, N, D, D, D) → logits (N, B, classes)); benchmark only."""

    def __init__(self, n: int, width: int, embedding: int = 64, pool: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.n = n
        self.stem = nn.Sequential(nn.Conv3d(n, n * width, 3, padding=1, groups=n), nn.ReLU(inplace=True), nn.MaxPool3d(3, 2, 1))
        self.blocks = nn.Sequential(*[_GroupedBlock(n, width) for _ in range(4)])
        self.pool = nn.AdaptiveAvgPool3d(pool)
        self.w1 = nn.Parameter(torch.randn(n, width * pool**3, embedding) * 0.01)
        self.b1 = nn.Parameter(torch.zeros(n, 1, embedding))
        self.w2 = nn.Parameter(torch.randn(n, embedding, classes) * 0.01)
        self.b2 = nn.Parameter(torch.zeros(n, 1, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.blocks(self.stem(x)))
        h = h.reshape(h.shape[0], self.n, -1).transpose(0, 1)  # (N, B, features): one matmul per model
        return torch.baddbmm(self.b2, F.relu(torch.baddbmm(self.b1, h, self.w1)), self.w2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8, help="N models trained together")
    parser.add_argument("--steps", type=int, default=4, help="steps per model")
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8, 16], help="RB3D widths (quick profile: 8)")
    parser.add_argument("--cosnet-width", type=int, default=4, help="COS-Net base width (quick profile: 4); 0 skips")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on 2 cores)")
    parser.add_argument("--compare-batching", action="store_true", help="one model at a time vs vmap vs channel-grouped, CPU time")
    parser.add_argument("--no-vmap", action="store_true", help="skip the vmap executor's CPU row")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    load0 = os.getloadavg()[0]
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the reference: matmul on every core (what fit_many's workers share)
    peak = matmul_flops(cpu)
    torch.set_num_threads(1)
    print(f"cores {len(os.sched_getaffinity(0))}, OpenMP wait {os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {load0:.2f}; "
          f"matmul reference (all cores) {peak / 1e9:.1f} GFLOP/s")
    cores = len(os.sched_getaffinity(0))
    print(f"{args.models} models × {args.steps} steps each; samples/s of all models together. sequential: N fit calls, before = "
          f"{cores} threads + contiguous layout (torch's defaults), now = 1 thread + channels_last_3d (cryonb's); fit_many: "
          f"threads executor, {cores} workers × 1 thread")
    print(f"{'model':16s} {'seq before':>10s} {'seq now':>8s} {'fit_many':>9s} {'×before':>7s} {'×now':>5s} {'FLOP frac':>9s}"
          + ("" if args.no_vmap else f" {'vmap':>7s} {'×before':>7s}"))
    workloads = [Workload("rb3d", w, args.models, args.steps, cpu) for w in args.widths]
    if args.cosnet_width:
        workloads.append(Workload("cosnet", args.cosnet_width, args.models, args.steps, cpu))
    rates = {}
    for w in workloads:
        seq_before = sequential_rate(w, cores, channels_last=False)
        seq_now = sequential_rate(w, 1, channels_last=True)
        many = batched_rate(w, "threads")
        frac = many / w.batch * w.flops_per_step() / peak
        rates[w.name] = many
        line = (f"{w.name:16s} {seq_before:10.1f} {seq_now:8.1f} {many:9.1f} {many / seq_before:7.2f} {many / seq_now:5.2f} {frac:9.2f}")
        if not args.no_vmap:
            vm = batched_rate(w, "vmap")
            line += f" {vm:7.1f} {vm / seq_before:7.2f}"
        print(line, flush=True)
    print("goals: fit_many ≥ 3× sequential, ≥ 0.3 of matmul FLOP/s")
    loader = loader_rate()
    ref = rates.get("RB3D width  8", max(rates.values()))
    # each worker thread draws its own model's batches, so one thread's loader feeds one worker's share of the rate
    print(f"loader (mmap + two augmented views, one thread): {loader:7.1f} samples/s = {loader / (ref / cores):5.1f}x a worker's share of "
          f"the batched width-8 rate ({loader / ref:4.1f}x the whole rate; goal ≥ 10x)")
    variants = step_variants(8, max(args.steps, 3), args.compile)
    base = variants["oneDNN (NCDHW)"]
    print("one RB3D width-8 step on CPU: " + ", ".join(f"{k} {v * 1000:.0f} ms ({base / v:.2f}x)" for k, v in variants.items()))
    if args.compare_batching:
        compare_batching(args.widths, args.models)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        gpeak = matmul_flops(gpu, 4096)
        print(f"\nGPU {torch.cuda.get_device_name(0)}: fp32 matmul {gpeak / 1e12:.1f} TFLOP/s")
        for width in args.widths:
            for amp in (False, True):
                w = Workload("rb3d", width, args.models, args.steps * 4, gpu)
                seq, many = _gpu_rates(w, TrainConfig(epochs=1, lr=1e-3, optimizer="adam", amp=amp))
                print(f"GPU RB3D width {width:2d} amp={amp!s:5}: sequential {seq:8.1f}, vmap {many:8.1f} samples/s ({many / seq:5.2f}x)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def _gpu_rates(w: Workload, cfg: TrainConfig) -> tuple[float, float]:
    models = [w.model(i) for i in range(w.n_models)]
    fit(w.model(99), w.loss, w.batches(0), cfg, seed=0, device=w.device, progress=False)
    _sync(w.device)
    t0 = time.perf_counter()
    for i, m in enumerate(models):
        fit(m, w.loss, w.batches(i), cfg, seed=i, device=w.device, progress=False)
    _sync(w.device)
    seq = w.n_models * w.steps * w.batch / (time.perf_counter() - t0)
    models = [w.model(i) for i in range(w.n_models)]
    fit_many([w.model(98), w.model(97)], w.loss, [w.batches(0), w.batches(1)], cfg, seeds=[0, 1], device=w.device, progress=False, executor="vmap")
    _sync(w.device)
    t0 = time.perf_counter()
    fit_many(models, w.loss, [w.batches(i) for i in range(w.n_models)], cfg, seeds=list(range(w.n_models)), device=w.device,
             progress=False, executor="vmap")
    _sync(w.device)
    return seq, w.n_models * w.steps * w.batch / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
