"""Projected GPU time of the paper profile on one NVIDIA H200, per notebook, from counted FLOPs (a PROJECTION:
no GPU was available to measure it).

Reads ``params/paper.yaml`` through :func:`cryonb.spec.load_profile`, counts the training steps every notebook's
models take (data set sizes, epochs, label fractions, runs, COS-Net jobs), and counts one step's FLOPs and
kernel launches with torch's FlopCounterMode on the meta device (shapes only, nothing is computed). Then

    time of a group of N models trained together (fit_many, vmap) = steps × max(N·F / (η·P), K·τ)

F : FLOPs of one model-step (forward + backward, counted; the optimiser's elementwise work is left out);
P : the H200's dense FP16/BF16 tensor-core peak, 989 TFLOP/s (NVIDIA's H200 SXM datasheet; 1,979 with
    sparsity, not used); AMP runs the convolutions in FP16;
η : the fraction of that peak small 3-D convolutions reach (default 0.10, an assumption: cuDNN's 3-D kernels
    at 8–32 channels per group reach a few to ~20 % of tensor peak; ``--efficiency`` changes it);
K : aten operators per step (counted: each is at least one kernel launch), τ : 8 µs per operator of eager
    PyTorch on the host side (launch + Python dispatch; an assumption typical of eager mode);
N : models per stacked step (``--group``, default 32, limited by the number of equal models in the notebook).
Trained one at a time, a batch-16 step is launch-bound (K·τ ≫ F/(η·P) for RB3D), which is why the paper
profile needs batching to fit a short GPU slot. Not included: data simulation (notebook 01, CPU), the CRF
(notebook 08, CPU), evaluation forward passes other than validation, and start-up.

Run: python benchmarks/project_paper_profile.py [--efficiency 0.1] [--group 32] [--launch-us 8]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace

import cryonb  # noqa: F401  (first: thread settings)

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from cryonb.models.cosnet import COSNet
from cryonb.models.rb3d import RB3D
from cryonb.pretrain import build_ssl
from cryonb.spec import Spec, load_profile

#: NVIDIA H200 SXM dense FP16/BF16 tensor-core peak (FLOP/s), from the datasheet
H200_FP16_DENSE = 989e12
CSSL_CLASSES = 10  # the CSSL data sets: 10 classes, split 60:20:20
COSNET_SEEN_CLASSES = 10  # COS-Net data sets: 15 classes, 5 unseen (test only); the 10 seen split 60:20:20


class _CountOps(TorchDispatchMode):
    """Counts aten operators (each is at least one kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.n += 1
        return func(*args, **(kwargs or {}))


@dataclass
class Cost:
    """FLOPs and operators of one training step of one model, and of one forward sample (validation)."""

    flops: float
    ops: int
    forward_flops_per_sample: float


def _count(step) -> tuple[float, int]:  # noqa: ANN001
    with FlopCounterMode(display=False) as flops, _CountOps() as ops:
        step()
    return float(flops.get_total_flops()), ops.n


def rb3d_cost(spec: Spec, batch: int, n_classes: int) -> Cost:
    model = RB3D(replace(spec.cssl.model, n_classes=n_classes)).to("meta")
    x = torch.empty(batch, 1, 32, 32, 32, device="meta")
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    flops, ops = _count(lambda: torch.nn.functional.cross_entropy(model(x), y).backward())
    with torch.no_grad():
        forward, _ = _count(lambda: model(x))
    return Cost(flops, ops, forward / batch)


def ssl_cost(spec: Spec, method: str, batch: int) -> Cost:
    # SwAV's queue length is Python control flow that meta tensors cannot run: its encoder work equals SimCLR's
    # (both views through the encoder with gradients), the prototypes and Sinkhorn add little
    counted = "simclr" if method == "swav" else method
    model = build_ssl(counted, RB3D(replace(spec.cssl.model, n_classes=CSSL_CLASSES)), spec.cssl.pretrain.ssl).to("meta")
    v = torch.empty(batch, 1, 32, 32, 32, device="meta")
    ids = torch.arange(batch, device="meta")
    flops, ops = _count(lambda: model.loss(v, v, ids).backward())
    return Cost(flops, ops, 0.0)


def cosnet_cost(spec: Spec, variant: str, n_way: int) -> Cost:
    cfg = spec.cosnet.training.for_job(variant, n_way)
    model = COSNet(cfg.model).to("meta")
    x = torch.empty(2 * n_way, 1, cfg.model.box, cfg.model.box, cfg.model.box, device="meta")

    def step() -> None:
        emb, mask = model(x)
        loss = model.score(emb[:n_way], emb[n_way:]).sum() + (mask.sum() if mask is not None else 0)
        loss.backward()

    flops, ops = _count(step)
    return Cost(flops, ops, 0.0)


@dataclass
class Part:
    notebook: str
    what: str
    models: int  # models of equal architecture (can share stacked steps)
    steps: float  # optimiser steps summed over all models
    cost: Cost
    forward_samples: float = 0.0  # validation forward passes over all models


def parts(spec: Spec) -> list[Part]:
    """Every trained model of the paper profile, grouped by notebook and architecture."""
    c, out = spec.cssl, []
    n_train = int(0.6 * CSSL_CLASSES * c.data.n_per_class)
    n_val = int(0.2 * CSSL_CLASSES * c.data.n_per_class)
    if c.pretrain.max_samples is not None:
        n_train = min(n_train, c.pretrain.max_samples)
    for method in c.sweep.methods:
        steps_per_epoch = n_train // c.pretrain.batch_size
        out.append(Part("03_cssl_pretraining", f"{method} pre-training × {len(c.data.snrs)} SNRs", len(c.data.snrs),
                        len(c.data.snrs) * c.pretrain.train.epochs * steps_per_epoch, ssl_cost(spec, method, c.pretrain.batch_size)))
    cap_train = min(n_train, c.finetune.max_train or n_train)
    cap_val = min(n_val, c.finetune.max_val or n_val)
    runs = len(c.data.snrs) * len(c.sweep.inits) * c.sweep.runs
    steps = sum(runs * c.finetune.train.epochs * math.ceil(math.ceil(f * cap_train) / c.finetune.batch_size) for f in c.sweep.fractions)
    # validation each epoch: BatchNorm recalibration over the run's training subset + the validation split
    forward = sum(runs * c.finetune.train.epochs * (math.ceil(f * cap_train) + cap_val) for f in c.sweep.fractions)
    out.append(Part("04_finetuning_tables", f"fine-tuning sweep: {runs * len(c.sweep.fractions)} runs", runs * len(c.sweep.fractions), steps,
                    rb3d_cost(spec, c.finetune.batch_size, CSSL_CLASSES), forward))
    k = c.classifier
    k_train, k_val = int(0.6 * len(k.classes) * k.n_per_class), int(0.2 * len(k.classes) * k.n_per_class)
    out.append(Part("09_your_data", "RB3D classifier (1 run)", 1, k.finetune.train.epochs * math.ceil(k_train / k.finetune.batch_size),
                    rb3d_cost(spec, k.finetune.batch_size, len(k.classes)), k.finetune.train.epochs * (k_train + k_val)))
    t = spec.cosnet.training
    jobs = spec.cosnet.evaluation.jobs()
    for variant in dict.fromkeys(v for v, _, _ in jobs):
        for n_way in dict.fromkeys(n for v, _, n in jobs if v == variant):
            count = sum(1 for v, _, n in jobs if v == variant and n == n_way)
            out.append(Part("07_cosnet_oneshot", f"COS-Net {variant} {n_way}-way × {count}", count, count * t.steps, cosnet_cost(spec, variant, n_way)))
    return out


def minutes(part: Part, group: int, efficiency: float, launch_s: float) -> tuple[float, float]:
    """GPU minutes of a part trained in stacked groups of up to ``group`` models, and one model at a time."""
    n = max(1, min(group, part.models))
    per_model_step = part.cost.flops / (efficiency * H200_FP16_DENSE)
    batched = part.steps / n * max(n * per_model_step, part.cost.ops * launch_s)
    alone = part.steps * max(per_model_step, part.cost.ops * launch_s)
    forward = part.forward_samples * part.cost.forward_flops_per_sample / (efficiency * H200_FP16_DENSE)
    return (batched + forward) / 60, (alone + forward) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--efficiency", type=float, default=0.10, help="η: fraction of the FP16 tensor peak reached (assumption)")
    parser.add_argument("--group", type=int, default=32, help="models per stacked (vmap) step")
    parser.add_argument("--launch-us", type=float, default=8.0, help="τ: host time per aten operator in µs (assumption)")
    parser.add_argument("--profile", default="paper")
    args = parser.parse_args()
    spec = load_profile(args.profile).spec
    rows = parts(spec)
    print(f"PROJECTION for profile {args.profile!r} on one H200: P = {H200_FP16_DENSE / 1e12:.0f} TFLOP/s (FP16 dense), η = {args.efficiency}, "
          f"τ = {args.launch_us} µs/op, stacked groups of ≤ {args.group} models")
    print(f"{'notebook':22s} {'what':40s} {'model-steps':>11s} {'GFLOP/step':>10s} {'ops/step':>8s} {'batched min':>11s} {'alone min':>9s}")
    totals: dict[str, list[float]] = {}
    for p in rows:
        b, a = minutes(p, args.group, args.efficiency, args.launch_us * 1e-6)
        totals.setdefault(p.notebook, [0.0, 0.0])
        totals[p.notebook][0] += b
        totals[p.notebook][1] += a
        print(f"{p.notebook:22s} {p.what:40s} {p.steps:11.0f} {p.cost.flops / 1e9:10.1f} {p.cost.ops:8d} {b:11.1f} {a:9.1f}")
    print("per notebook (GPU minutes, batched / one at a time):")
    for nb, (b, a) in totals.items():
        print(f"  {nb:22s} {b:7.1f} / {a:7.1f}")
    b_all, a_all = sum(v[0] for v in totals.values()), sum(v[1] for v in totals.values())
    print(f"  {'total':22s} {b_all:7.1f} / {a_all:7.1f}   (goal: ≤ 10 min; CPU parts not included)")
    for eff in (0.05, 0.2, 0.3):
        b = sum(minutes(p, args.group, eff, args.launch_us * 1e-6)[0] for p in rows)
        print(f"  sensitivity: η = {eff:4.2f} → batched total {b:6.1f} min")


if __name__ == "__main__":
    main()
