"""The CSSL paper's fine-tuning: one run (a data set, a config, an initialisation in; a scored model out) and
the resumable sweep SNR × initialisation × label fraction × run → one CSV row per run.

Public surface: :class:`FinetuneConfig`, :class:`SweepConfig`, :data:`RUN_COLUMNS`, :func:`finetune_run`,
:class:`FinetuneJob`, :func:`finetune_runs` (several runs trained together), :func:`sweep`, :func:`run_dir`, :func:`load_finetuned`, :func:`load_predictions`, :func:`accuracy_table`.

Each run fine-tunes RB3D (``cryonb.models.rb3d``) from an encoder checkpoint (MoCo / SimCLR / SwAV from
``cryonb.pretrain``) or from random weights on a class-stratified subset of the training split
(``cryonb.data.stratified_subset``) with ``cryonb.train.fit``; the model with the best validation accuracy is
kept and scored on the test split.

Pairing: run *r* uses the same labelled subset and the same seed for the classifier head and the batch order
under every initialisation and SNR, so "MoCo vs random at run r" is a matched pair (see ``cryonb.stats``).

Resumable: the table ``<folder>/runs.csv`` gains one row per finished run (atomic rewrite); a restarted
sweep skips the runs already there, and an interrupted run resumes from its last epoch. The folder (its
content key) is chosen by :mod:`cryonb.experiments.cssl`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from cryonb import budget, checkpoints
from cryonb.data import iterate_batches, stratified_subset, to_tensor
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.io import save_npy_atomic, write_text_atomic
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.simulate.config import snr_label
from cryonb.train import History, TrainConfig, fit, fit_many, recalibrate_batchnorm

__all__ = [
    "FinetuneConfig",
    "SweepConfig",
    "RUN_COLUMNS",
    "INITS",
    "FinetuneJob",
    "finetune_run",
    "finetune_runs",
    "sweep",
    "run_dir",
    "load_finetuned",
    "load_predictions",
    "accuracy_table",
]

#: Columns of the long-format table, one row per finished run. ``encoder``: which independently pre-trained encoder
#: the run started from (run r uses encoder r mod ``SweepConfig.encoders``); random-init runs carry the same index,
#: so that the runs paired with one encoder's form one cluster of the statistical analysis (cryonb.verdicts).
RUN_COLUMNS = ("snr", "init", "fraction", "run", "encoder", "seed", "n_train", "best_epoch", "val_acc", "test_acc", "wall_s")
INITS = ("random", "moco", "simclr", "swav")


class Dataset(Protocol):
    """What a fine-tuning run needs from a data set (``cryonb.simulate.SubtomoDataset`` has it)."""

    volumes: np.ndarray  # (N, z, y, x) float32
    meta: pd.DataFrame  # class_id, split
    classes: list[str]

    def indices(self, split: str | None = "train") -> np.ndarray: ...


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run's settings (the paper's are the defaults: SGD + cosine, lr 5e-4, wd 1e-4, batch 16, 50 epochs).

    model : RB3D architecture; it must equal the pre-trained encoders' (the spec sets it once, in ``cssl.model``).
    recalibrate_bn : exact BatchNorm statistics before each validation (:func:`cryonb.train.recalibrate_batchnorm`).
    max_train / max_val : stratified caps on the training / validation split (quick profile); label fractions
        are taken of the capped training split, the same for every run.
    """

    model: RB3DConfig = field(default_factory=RB3DConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=50, lr=5e-4, weight_decay=1e-4, optimizer="sgd", scheduler="cosine"))
    batch_size: int = 16
    recalibrate_bn: bool = True
    max_train: int | None = None
    max_val: int | None = None

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise CryoNBError(f"finetune batch_size={self.batch_size}: expected an integer ≥ 1")
        for name in ("max_train", "max_val"):
            value = getattr(self, name)
            if value is not None and int(value) < 2:
                raise CryoNBError(f"finetune {name}={value}: expected null or an integer ≥ 2")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], model: RB3DConfig) -> "FinetuneConfig":
        """From a spec's ``finetune:`` (or ``classifier:``) block (without ``model``); the architecture comes from ``cssl.model``."""
        raw = dict(raw)
        reject_unknown_keys(raw, cls, "finetune")
        return cls(model=model, train=TrainConfig.from_dict(raw.pop("train", {}), cls().train), **raw)


@dataclass(frozen=True)
class SweepConfig:
    """Which cells of the paper's tables to run: initialisations × label fractions × runs (per SNR).

    encoders : independently pre-trained encoders per (CSSL method, SNR); run r fine-tunes encoder r mod encoders,
        so the pre-training variance enters the comparison (the statistical unit is the encoder cluster).
    """

    inits: tuple[str, ...] = INITS
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    runs: int = 5
    encoders: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "inits", tuple(str(i).lower() for i in self.inits))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        bad = [i for i in self.inits if i not in INITS]
        if bad or not self.inits or len(set(self.inits)) != len(self.inits):
            raise CryoNBError(f"sweep inits {list(self.inits)}: expected a non-empty subset of {list(INITS)} without repeats")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise CryoNBError(f"sweep fractions {list(self.fractions)}: expected values in (0, 1]")
        if int(self.runs) < 1:
            raise CryoNBError(f"sweep runs={self.runs}: expected an integer ≥ 1")
        if not 1 <= int(self.encoders) <= int(self.runs):
            raise CryoNBError(f"sweep encoders={self.encoders}: expected an integer in 1…runs ({self.runs})")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SweepConfig":
        reject_unknown_keys(raw, cls, "sweep")
        return cls(**raw)

    @property
    def methods(self) -> tuple[str, ...]:
        """The CSSL methods among the initialisations: what must be pre-trained."""
        return tuple(i for i in self.inits if i != "random")


def run_dir(folder: str | Path, snr: float, init: str, fraction: float, run: int) -> Path:
    """Folder of one run inside a sweep's folder: ``<folder>/snr<snr>-<init>-f<fraction>-r<run>``."""
    return Path(folder) / f"snr{snr_label(snr)}-{init}-f{fraction:g}-r{run}"


def _build(model_cfg: RB3DConfig, seed: int, encoder: Path | None) -> RB3D:
    # fork_rng: the initial weights depend on the run's seed only, never on global state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RB3D(model_cfg)
    if encoder is not None:
        payload = checkpoints.load(encoder, "rb3d-encoder")
        model.load_encoder_state(payload["model"])
    return model


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _voxel_size(ds: Dataset) -> float | None:
    recipe = getattr(ds, "recipe", None)
    simulation = getattr(recipe, "simulation", None)
    return float(simulation.voxel_size_a) if simulation is not None else None


def _capped(index: np.ndarray, labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    # the same stratified cap for every run: the "100 %" set does not change between runs
    if cap is None or cap >= len(index):
        return index
    return index[stratified_subset(labels[index], cap / len(index), seed + 999_983)]


@dataclass(frozen=True)
class FinetuneJob:
    """One run of :func:`finetune_runs`: what :func:`finetune_run` takes besides the shared config and seeds.

    ds : the run's data set (runs at different SNRs can train together). encoder : pre-trained encoder
    checkpoint, None for random initialisation. folder : its checkpoints, ``best.pt`` and ``test_pred.npy``.
    """

    ds: Dataset
    fraction: float
    seed: int
    folder: Path
    encoder: Path | None = None
    meta: dict[str, Any] | None = None


@dataclass
class _Prepared:
    """A run ready for :func:`cryonb.train.fit`: model, batches, validation, and what scoring needs."""

    model: RB3D
    batches: Callable[[int, torch.Generator], Any]
    validate: Callable[[nn.Module], dict[str, float]]
    best_meta: dict[str, Any]
    n_train: int
    test: np.ndarray
    labels: np.ndarray
    volumes: np.ndarray


def _loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = batch
    return {"loss": nn.functional.cross_entropy(net(x), y)}


def _prepare(ds: Dataset, cfg: FinetuneConfig, fraction: float, seed: int, base_seed: int, encoder: Path | None,
             meta: dict[str, Any] | None) -> _Prepared:
    labels = ds.meta["class_id"].to_numpy()
    train_all = _capped(ds.indices("train"), labels, cfg.max_train, base_seed)
    val = _capped(ds.indices("val"), labels, cfg.max_val, base_seed)
    train = train_all[stratified_subset(labels[train_all], fraction, seed)]
    x_tr, y_tr = to_tensor(ds.volumes, train), torch.as_tensor(labels[train])
    x_va, y_va = to_tensor(ds.volumes, val), labels[val]
    model = _build(replace(cfg.model, n_classes=len(ds.classes)), seed, encoder)

    def batches(epoch: int, generator: torch.Generator):  # type: ignore[no-untyped-def]
        for idx in iterate_batches(len(x_tr), cfg.batch_size, generator):
            yield x_tr[idx], y_tr[idx]

    def validate(net: nn.Module) -> dict[str, float]:
        dev = next(iter(net.parameters())).device
        if cfg.recalibrate_bn:
            recalibrate_batchnorm(net, x_tr)
        return {"val_acc": float(np.mean(_predict(net, x_va, dev) == y_va))}

    best_meta = {"class_names": list(ds.classes), "box": int(ds.volumes.shape[1]), "voxel_size_a": _voxel_size(ds),
                 "polarity": getattr(ds, "polarity", None),
                 "seeds": {"run": seed, "sweep": base_seed}, "seed": seed, "fraction": fraction, **(meta or {})}
    return _Prepared(model, batches, validate, best_meta, len(train), ds.indices("test"), labels, ds.volumes)


def _score(run: _Prepared, history: History, folder: Path, seed: int, wall_s: float) -> dict[str, Any]:
    """Test-set predictions of the best-validation weights (written to ``folder/test_pred.npy``) and the result row."""
    assert history.best_state is not None
    model = run.model
    model.load_state_dict(history.best_state)
    dev = next(iter(model.parameters())).device
    pred = _predict(model, to_tensor(run.volumes, run.test), dev)
    save_npy_atomic(Path(folder) / "test_pred.npy", np.stack([run.test, run.labels[run.test], pred]))
    return {"seed": seed, "n_train": run.n_train, "best_epoch": history.best_epoch, "val_acc": history.best_value,
            "test_acc": float(np.mean(pred == run.labels[run.test])), "wall_s": wall_s}


def finetune_run(ds: Dataset, cfg: FinetuneConfig, *, fraction: float, seed: int, base_seed: int, folder: Path,
                 encoder: Path | None = None, device: torch.device | str = "cpu", meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune one model and score it; returns ``seed, n_train, best_epoch, val_acc, test_acc, wall_s``.

    ds : data set with (N, z, y, x) volumes and train / val / test splits. encoder : pre-trained encoder
    checkpoint (``rb3d-encoder``), None for random initialisation. seed : this run's (subset, head, batch
    order); base_seed : the sweep's, which fixes the caps shared by every run. The best-validation weights go
    to ``folder/best.pt`` (with ``meta``) and the test predictions to ``folder/test_pred.npy``.
    """
    t0 = time.perf_counter()
    run = _prepare(ds, cfg, fraction, seed, base_seed, encoder, meta)
    history = fit(run.model, _loss_fn, run.batches, cfg.train, seed=seed, device=device, checkpoint_dir=folder, progress=False,
                  validate=run.validate, select_metric="val_acc", best_kind="rb3d", best_meta=run.best_meta)
    return _score(run, history, folder, seed, time.perf_counter() - t0)


def finetune_runs(jobs: Sequence[FinetuneJob], cfg: FinetuneConfig, *, base_seed: int, device: torch.device | str = "cpu",
                  executor: str = "auto", workers: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Fine-tune several runs together (:func:`cryonb.train.fit_many`); one result row per job, in order.

    Each run is the run :func:`finetune_run` makes from the same arguments (its subset, initialisation, batch
    order, dropout, best epoch, files), only trained beside the others: with ``executor="threads"`` (CPU
    default) bit for bit the model ``finetune_run`` trains with one torch thread. ``wall_s`` of each row is
    the batch's time divided by the number of runs. executor, workers : see :func:`cryonb.train.fit_many`.
    """
    if not jobs:
        return []
    t0 = time.perf_counter()
    runs = [_prepare(j.ds, cfg, j.fraction, j.seed, base_seed, j.encoder, j.meta) for j in jobs]
    histories = fit_many([r.model for r in runs], _loss_fn, [r.batches for r in runs], cfg.train, seeds=[j.seed for j in jobs], device=device,
                         checkpoint_dirs=[j.folder for j in jobs], progress=progress, validate=[r.validate for r in runs],
                         select_metric="val_acc", best_kind="rb3d", best_meta=[r.best_meta for r in runs], executor=executor, workers=workers)
    share = (time.perf_counter() - t0) / len(jobs)
    return [_score(r, h, j.folder, j.seed, share) for r, h, j in zip(runs, histories, jobs)]


def _key(row: Any) -> tuple[str, str, str, int]:
    return (snr_label(float(row["snr"])), str(row["init"]), f"{float(row['fraction']):g}", int(row["run"]))


def sweep(datasets: dict[float, Dataset], encoder_for: Callable[[float, str, int], Path | None], cfg: FinetuneConfig, cells: SweepConfig,
          folder: str | Path, *, seed: int, device: torch.device | str = "cpu", max_runs: int | None = None,
          progress: bool = True, runs_per_batch: int = 1, executor: str = "auto") -> pd.DataFrame:
    """Run every (snr, init, fraction, run) of ``cells`` not yet in ``folder/runs.csv``; return the table.

    datasets: SNR → data set. encoder_for(snr, init, index): checkpoint of encoder ``index`` (None for 'random');
    called only for runs still to do, so finished sweeps need no pre-training. Run r uses seed ``seed + r`` and
    encoder ``r mod cells.encoders``. max_runs: stop after this many new runs (a budget, or a simulated
    interruption in tests). Rows are sorted by (snr, init order, fraction, run).
    runs_per_batch: train this many runs together (:func:`finetune_runs`, ``executor`` as there); 1 trains
    one at a time with :func:`finetune_run`. The table gains a batch's rows when the batch is done.
    """
    if int(runs_per_batch) < 1:
        raise CryoNBError(f"sweep runs_per_batch={runs_per_batch}: expected an integer ≥ 1")
    folder = Path(folder)
    table_path = folder / "runs.csv"
    table = pd.read_csv(table_path) if table_path.is_file() else pd.DataFrame(columns=list(RUN_COLUMNS))
    done = {_key(r) for _, r in table.iterrows()}
    todo = [(s, i, f, r) for s in datasets for i in cells.inits for f in cells.fractions for r in range(cells.runs)
            if _key({"snr": s, "init": i, "fraction": f, "run": r}) not in done]
    write_text_atomic(folder / "config.json", json.dumps({"finetune": asdict(cfg), "seed": seed}, indent=2, default=str))
    encoders: dict[tuple[float, str, int], Path | None] = {}

    def encoder(snr: float, init: str, run: int) -> Path | None:
        index = run % cells.encoders
        if (snr, init, index) not in encoders:
            encoders[(snr, init, index)] = None if init == "random" else encoder_for(snr, init, index)
        return encoders[(snr, init, index)]

    total = len(todo)
    if max_runs is not None:
        todo = todo[:max_runs]
    size = int(runs_per_batch)
    bar = tqdm(total=len(todo), desc="fine-tuning runs", disable=not progress)
    for start in range(0, len(todo), size):
        chunk = todo[start : start + size]
        jobs = [FinetuneJob(datasets[snr], frac, seed + r, run_dir(folder, snr, init, frac, r), encoder(snr, init, r),
                            {"init": init, "snr": snr, "encoder": r % cells.encoders}) for snr, init, frac, r in chunk]
        if size == 1:
            j = jobs[0]
            results = [finetune_run(j.ds, cfg, fraction=j.fraction, seed=j.seed, base_seed=seed, folder=j.folder, encoder=j.encoder, device=device, meta=j.meta)]
        else:
            results = finetune_runs(jobs, cfg, base_seed=seed, device=device, executor=executor)
        rows = pd.DataFrame([{"snr": snr, "init": init, "fraction": frac, "run": r, "encoder": r % cells.encoders, **res}
                             for (snr, init, frac, r), res in zip(chunk, results)])
        table = pd.concat([table.astype(object), rows.astype(object)], ignore_index=True) if len(table) else rows
        write_text_atomic(table_path, table[list(RUN_COLUMNS)].to_csv(index=False))  # one atomic rewrite per finished batch of runs
        bar.update(len(chunk))
        done_now = start + len(chunk)
        if done_now < total:
            budget.check(f"fine-tuning run {done_now}/{total} of this call ({table_path})")
    bar.close()
    return _sorted(pd.read_csv(table_path) if table_path.is_file() else table, cells)


def _sorted(table: pd.DataFrame, cfg: SweepConfig) -> pd.DataFrame:
    if table.empty:
        return table
    order = {name: k for k, name in enumerate(cfg.inits)}
    t = table.assign(_o=table["init"].map(order).fillna(len(order)))
    return t.sort_values(["snr", "_o", "fraction", "run"], ascending=[False, True, True, True]).drop(columns="_o").reset_index(drop=True)


def load_finetuned(folder: str | Path, snr: float, init: str, fraction: float, run: int) -> RB3D:
    """The best-validation model of one finished run of the sweep in ``folder`` (CPU, eval mode)."""
    model, _ = checkpoints.load_model(run_dir(folder, snr, init, fraction, run) / "best.pt", "rb3d")
    return model  # type: ignore[return-value]


def load_predictions(folder: str | Path, snr: float, init: str, fraction: float, run: int) -> pd.DataFrame:
    """Test-set predictions of one finished run of the sweep in ``folder``: columns index, label, pred."""
    path = run_dir(folder, snr, init, fraction, run) / "test_pred.npy"
    if not path.is_file():
        raise CryoNBError(f"{path}: no predictions; run the sweep for (snr {snr}, {init}, fraction {fraction}, run {run}) first")
    index, label, pred = np.load(path)
    return pd.DataFrame({"index": index, "label": label, "pred": pred})


def accuracy_table(table: pd.DataFrame, snr: float, metric: str = "test_acc", inits: Sequence[str] = INITS, percent: bool = True) -> pd.DataFrame:
    """The paper's table for one SNR: rows = initialisation, columns = label fraction, "mean ± std" (sample std)."""
    sub = table[np.isclose(table["snr"].astype(float), snr)]
    if sub.empty:
        raise CryoNBError(f"no runs at SNR {snr} in the table (SNRs present: {sorted(set(table['snr']))})")
    scale = 100.0 if percent else 1.0
    rows = []
    for init in [i for i in inits if i in set(sub["init"])]:
        row: dict[str, Any] = {"init": init}
        for frac, g in sub[sub["init"] == init].groupby("fraction"):
            v = g[metric].to_numpy(float) * scale
            sd = v.std(ddof=1) if len(v) > 1 else float("nan")
            row[f"{frac * 100:g} %"] = f"{v.mean():.2f} ± {sd:.2f}" if percent else f"{v.mean():.3f} ± {sd:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)
