"""What every notebook does first and last: read the spec, seed, pick the device, save figures and tables.

Notebooks call :func:`start` in their first code cell after the parameters cell, and save every figure and
table through the returned :class:`Run`, so results land in ``results/<profile>/`` with the same names on
every machine. ``run.spec`` is the profile's experiment spec (:mod:`cryonb.spec`): the one the runner handed
over, or ``params/<profile>.yaml`` read here when the notebook is opened by hand, so both train the same models.
"""

from __future__ import annotations

import json
import os
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cryonb.device import configure_threads, pick_device, wait_policy_applied
from cryonb.io import atomic_path, write_text_atomic
from cryonb.paths import resolve
from cryonb.spec import Spec, load_profile

__all__ = ["Run", "start", "seed_everything", "pick_device", "environment", "try_profile"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch generator seeded the same way.

    Library code takes generators explicitly; this only guards against third-party global randomness.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions, CPU and thread settings a result depends on, recorded next to each run.

    Bit-identical training across machines is not promised (CPU kernels differ); recording the CPU model and
    the thread settings says which runs can be expected to agree bit for bit.
    """
    import importlib.metadata as md

    packages = ["torch", "numpy", "scipy", "statsmodels", "pandas", "mrcfile", "gemmi", "captum", "cryonb"]
    versions = {}
    for name in packages:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    threads = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
               **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }


@dataclass
class Run:
    """Paths and helpers of one notebook execution; ``spec`` holds every experiment setting."""

    name: str
    profile: str
    spec: Spec
    results_dir: Path
    work_dir: Path
    device: torch.device
    generator: torch.Generator = field(repr=False)

    @property
    def seed(self) -> int:
        return int(self.spec.seed)

    @property
    def figures_dir(self) -> Path:
        return self.results_dir / "figures"

    @property
    def tables_dir(self) -> Path:
        return self.results_dir / "tables"

    def save_figure(self, fig: Any, name: str, formats: tuple[str, ...] = ("png",), dpi: int = 110) -> Path:
        """Save a matplotlib figure as ``figures/<notebook>_<name>.<fmt>`` (atomic)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        first = None
        for fmt in formats:
            target = self.figures_dir / f"{self.name}_{name}.{fmt}"
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"Software": None} if fmt == "png" else None)
            first = first or target
        assert first is not None
        return first

    def save_table(self, df: Any, name: str, formats: tuple[str, ...] = ("csv",), index: bool = False) -> Path:
        """Save a pandas DataFrame as ``tables/<name>.<fmt>`` for fmt in csv / md / tex (atomic)."""
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        first = None
        for fmt in formats:
            target = self.tables_dir / f"{name}.{fmt}"
            if fmt == "csv":
                text = df.to_csv(index=index, float_format="%.6g")
            elif fmt == "md":
                text = df.to_markdown(index=index)
            elif fmt == "tex":
                text = df.to_latex(index=index)
            else:
                raise ValueError(f"unknown table format {fmt!r}; expected csv, md or tex")
            write_text_atomic(target, text)
            first = first or target
        assert first is not None
        return first

    def save_json(self, obj: Any, name: str) -> Path:
        return write_text_atomic(self.tables_dir / f"{name}.json", json.dumps(obj, indent=2, sort_keys=True, default=str))


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def try_profile(run: Run, changes: dict[str, Any], only: str, name: str = "try") -> Spec:
    """An exercise's edit of the profile: validate it and print what to put in ``params/<name>.yaml`` and the command.

    ``changes`` is a nested mapping merged into this run's profile (``{"cssl": {"data": {"snrs": [0.1]}}}``).
    Writes nothing; returns the validated spec, so an answer key can inspect what would change. A setting that does
    not exist raises :class:`~cryonb.CryoNBError` naming it, so an exercise that asks for one fails its test.
    """
    base = load_profile(run.profile).raw_spec
    spec = Spec.from_dict(_merged(base, changes), f"params/{name}.yaml")
    print(f"cp params/{run.profile}.yaml params/{name}.yaml   # then change these entries:")
    print(yaml.safe_dump(changes, default_flow_style=None, sort_keys=False).rstrip())
    print(f"python -m cryonb run --profile {name} --only {only}")
    return spec


def start(name: str, profile: str, results_dir: str, work_dir: str, spec: dict[str, Any] | None = None) -> Run:
    """Read the spec, seed everything, pick the device, create the output folders and print what a reader needs.

    spec : the profile's experiment entries as the runner passes them; None reads ``params/<profile>.yaml``.
    """
    parsed = load_profile(profile).spec if spec is None else Spec.from_dict(spec, f"the spec of profile {profile!r}")
    run = Run(
        name=name,
        profile=profile,
        spec=parsed,
        results_dir=resolve(results_dir),
        work_dir=resolve(work_dir),
        device=pick_device(parsed.device),
        generator=seed_everything(parsed.seed),
    )
    run.results_dir.mkdir(parents=True, exist_ok=True)
    run.work_dir.mkdir(parents=True, exist_ok=True)
    threads = configure_threads()
    policy = os.environ.get("OMP_WAIT_POLICY", "default") if wait_policy_applied() else "default (spinning)"
    print(f"notebook {name} | profile {profile} | seed {run.seed} | device {run.device} | torch {torch.__version__} | "
          f"CPU threads {threads}, OpenMP wait {policy}")
    return run
