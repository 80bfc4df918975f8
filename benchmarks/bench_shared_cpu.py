"""Training beside other CPU-bound processes: the slowdown one competing process costs, before and after cryonb's
thread settings (:mod:`cryonb.device`), measured in the same run.

Each configuration trains RB3D (width 8, the quick profile's; batch 16, 32³, Adam) in a fresh worker process
(OpenMP settings only take effect before torch loads), alone and beside one competing single-threaded busy loop
that this benchmark starts, at low priority (``nice -n 19``) and at normal priority. Slowdown = median seconds per
model-step beside the competitor / median alone, same configuration; every (configuration, condition) is measured
``--repeats`` times round robin, so a change in other users' load hits all alike. Goals: ≤ 1.5× beside the
low-priority process, ≤ 2.5× beside the normal one.

Configurations:
- ``before``: torch as it comes (imported before cryonb): 2 threads, GNU OpenMP's default wait (spinning);
- ``passive``: 2 threads, ``OMP_WAIT_POLICY=PASSIVE`` only;
- ``after``: ``import cryonb`` first: one intra-op thread, passive wait (what every cryonb process now runs);
- ``after-many``: the same, two models trained together by ``fit_many`` (one per core), per model-step.

Run: python benchmarks/bench_shared_cpu.py [--steps 6] [--repeats 3] [--configs before passive after after-many]
The load average is printed: on a machine that is already busy, "alone" is not idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = "--worker"
CONFIGS = ("before", "passive", "after", "after-many")


def _worker(config: str, steps: int, width: int) -> None:
    """Train in this process; print JSON with the median seconds per model-step."""
    policy = os.environ.get("OMP_WAIT_POLICY", "")  # what OpenMP reads when torch loads (importing cryonb later sets it for children)
    if config.startswith("after"):
        import cryonb  # noqa: F401  (its thread settings, before torch loads)

        policy = os.environ.get("OMP_WAIT_POLICY", "")
    import torch
    import torch.nn.functional as F

    from cryonb.models.rb3d import RB3D, RB3DConfig
    from cryonb.train import TrainConfig, fit_many

    def model(seed: int) -> RB3D:
        torch.manual_seed(seed)
        return RB3D(RB3DConfig(width=width, embedding_dim=64))

    x, y = torch.randn(16, 1, 32, 32, 32), torch.randint(0, 10, (16,))
    if config == "after-many":
        loss = lambda m, b: {"loss": F.cross_entropy(m(b[0]), b[1])}  # noqa: E731
        source = lambda k: (lambda epoch, g: iter([(x, y)] * k))  # noqa: E731
        cfg = TrainConfig(epochs=1, lr=1e-3)
        fit_many([model(0), model(1)], loss, [source(1), source(1)], cfg, seeds=[0, 1], progress=False, workers=2)  # warm-up
        t0 = time.perf_counter()
        fit_many([model(0), model(1)], loss, [source(steps), source(steps)], cfg, seeds=[0, 1], progress=False, workers=2)
        per_step = (time.perf_counter() - t0) / (2 * steps)
    else:
        net = model(0)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        times = []
        for step in range(steps + 2):
            t0 = time.perf_counter()
            out = F.cross_entropy(net(x), y)
            opt.zero_grad()
            out.backward()
            opt.step()
            if step >= 2:  # warm-up: oneDNN primitive creation, first allocations
                times.append(time.perf_counter() - t0)
        per_step = statistics.median(times)
    print(json.dumps({"config": config, "threads": torch.get_num_threads(), "s_per_step": per_step,
                      "wait_policy": policy}))


def _env(config: str) -> dict[str, str]:
    # a clean environment: this benchmark's own process imported cryonb, which set these
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "CRYONB_NUM_THREADS")}
    if config == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _measure(config: str, steps: int, width: int) -> dict:
    out = subprocess.run([sys.executable, __file__, WORKER, config, str(steps), str(width)], env=_env(config),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _competitor(nice: int) -> subprocess.Popen:
    """One single-threaded CPU-bound process (a busy loop) at the given niceness."""
    return subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every (configuration, condition); medians are reported")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = parser.parse_args()
    start_load = os.getloadavg()[0]
    print(f"cores {os.cpu_count()}, load average at start {start_load:.2f}; RB3D width {args.width}, batch 16, {args.steps} steps per measurement")
    times: dict[tuple[str, str], list[float]] = {}
    info: dict[str, dict] = {}
    # round robin: a change in the machine's background load hits every configuration and condition alike
    for _ in range(args.repeats):
        for config in args.configs:
            for condition, nice in (("alone", None), ("low", 19), ("normal", 0)):
                proc = _competitor(nice) if nice is not None else None
                try:
                    if proc is not None:
                        time.sleep(0.5)  # let the competitor reach the scheduler's steady state
                    result = _measure(config, args.steps, args.width)
                finally:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
                info[config] = result
                times.setdefault((config, condition), []).append(result["s_per_step"])
    print(f"{'config':10s} {'threads':>7s} {'wait policy':>12s} {'alone s/step':>13s} {'low-prio ×':>11s} {'normal ×':>9s}")
    for config in args.configs:
        med = {c: statistics.median(times[(config, c)]) for c in ("alone", "low", "normal")}
        print(f"{config:10s} {info[config]['threads']:7d} {info[config]['wait_policy'] or '(default)':>12s} {med['alone']:13.3f} "
              f"{med['low'] / med['alone']:11.2f} {med['normal'] / med['alone']:9.2f}")
    print(f"goals: low-priority ≤ 1.5×, normal ≤ 2.5×; load average at start {start_load:.2f}, at end {os.getloadavg()[0]:.2f} "
          "(the benchmark's own worker adds ~1)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
