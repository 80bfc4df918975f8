"""Train the models a profile's spec defines, without a notebook: the same checkpoints the notebooks use.

Example:
    python -m cryonb train cssl --profile quick         # every (SNR, method) CSSL encoder (notebook 03)
    python -m cryonb train finetune --profile quick     # the fine-tuning sweep (notebook 04; pre-trains what it needs)
    python -m cryonb train cosnet --profile quick       # every COS-Net model of the evaluation grid (notebook 07)
    python -m cryonb train classifier --profile quick   # notebook 09's RB3D classifier, for `classify`
    python -m cryonb train cosnet --profile paper --max-minutes 9   # by parts: exit 3, rerun to continue

Settings come from params/<profile>.yaml (sections cssl: and cosnet:); checkpoints go to OUT (default
runs/<profile>/) in folders named by a content key of everything that determines them, so a notebook of the
same profile reuses them and a finished model is never trained twice. Data sets are made on first use in
data/generated/. Prints each checkpoint's path: pass a fine-tuned or classifier best.pt to `classify`, a
COS-Net .pt to `oneshot`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryonb.budget import clear_deadline, set_deadline
from cryonb.device import pick_device
from cryonb.experiments import cosnet as cosnet_experiment
from cryonb.experiments import cssl as cssl_experiment
from cryonb.finetune import run_dir
from cryonb.paths import repo_root, resolve
from cryonb.simulate.config import snr_label
from cryonb.spec import load_profile

WHAT = ("cssl", "finetune", "cosnet", "classifier")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=WHAT, help="which models: cssl encoders, the finetune sweep, cosnet models, the classifier")
    parser.add_argument("--profile", default="quick", help="params/<profile>.yaml to read (quick, paper, smoke)")
    parser.add_argument("--out", default=None, help="folder for checkpoints (default runs/<profile>)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="time budget: stop at the next saved state after this many minutes (exit 3; rerun to continue)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    spec = profile.spec
    work = resolve(args.out) if args.out else repo_root() / "runs" / profile.name
    device = pick_device(spec.device)
    progress = not args.quiet
    if args.max_minutes is not None:
        set_deadline(60 * args.max_minutes)
    try:
        if args.what == "cssl":
            for (snr, method, index), path in cssl_experiment.ensure_encoders(spec, work, device, progress).items():
                print(f"encoder {method} SNR {snr_label(snr)} #{index}: {_shown(path)}")
        elif args.what == "finetune":
            table, _ = cssl_experiment.run_sweep(spec, work, device, progress)
            folder = cssl_experiment.sweep_folder(spec, work)
            print(f"{len(table)} fine-tuning runs: {_shown(folder / 'runs.csv')}")
            first = table.iloc[0]
            example = run_dir(folder, float(first.snr), str(first.init), float(first["fraction"]), int(first.run)) / "best.pt"
            print(f"one model per run, e.g. {_shown(example)} (python -m cryonb classify SUBTOMOS --checkpoint ...)")
        elif args.what == "cosnet":
            for (variant, snr, n_way, index), path in cosnet_experiment.ensure_models(spec, work, device, progress).items():
                print(f"COS-Net {variant} SNR {snr_label(snr)} {n_way}-way seed {cosnet_experiment.model_seed(spec, index)}: {_shown(path)}")
        else:
            path, row = cssl_experiment.ensure_classifier(spec, work, device, progress)
            print(f"classifier of {', '.join(spec.cssl.classifier.classes)}: {_shown(path)} "
                  f"(simulated test accuracy {row['test_acc']:.3f}; python -m cryonb classify SUBTOMOS --checkpoint {_shown(path)})")
    finally:
        if args.max_minutes is not None:
            clear_deadline()
    return 0
