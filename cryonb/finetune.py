"""The CSSL paper's fine-tuning sweep: SNR × initialisation × label fraction × run → one CSV row per run.

Public surface: :class:`FinetuneConfig`, :func:`finetune_run`, :func:`sweep`, :func:`run_dir`,
:func:`load_finetuned`, :func:`load_predictions`, :func:`confusion_matrix`, :func:`accuracy_table`.

Each run fine-tunes RB3D (``cryonb.models.rb3d``) from an encoder checkpoint (MoCo / SimCLR / SwAV from
``cryonb.pretrain``) or from random weights on a class-stratified subset of the training split
(``cryonb.data.stratified_subset``) with ``cryonb.train.fit``: SGD + cosine decay, the model with the best
validation accuracy is kept and scored on the test split.

Pairing: run *r* uses the same labelled subset and the same seed for the classifier head and the batch order
under every initialisation and SNR, so "MoCo vs random at run r" is a matched pair (see ``cryonb.stats``).

Resumable: the table ``<work_dir>/finetune/<config hash>/runs.csv`` gains one row per finished run (atomic
rewrite); a restarted sweep skips the runs already there, and an interrupted run resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from cryonb import budget
from cryonb.data import iterate_batches, stratified_subset, to_tensor
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.io import save_npy_atomic, write_text_atomic
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.train import TrainConfig, fit, load_checkpoint, recalibrate_batchnorm

__all__ = [
    "FinetuneConfig",
    "data_key",
    "RUN_COLUMNS",
    "finetune_run",
    "sweep",
    "sweep_from_params",
    "run_dir",
    "load_finetuned",
    "load_predictions",
    "confusion_matrix",
    "accuracy_table",
]

#: Columns of the long-format table, one row per finished run.
RUN_COLUMNS = ("snr", "init", "fraction", "run", "seed", "n_train", "best_epoch", "val_acc", "test_acc", "wall_s")
INITS = ("random", "moco", "simclr", "swav")


class Dataset(Protocol):
    """What a fine-tuning run needs from a data set (``cryonb.simulate.SubtomoDataset`` has it)."""

    volumes: np.ndarray  # (N, z, y, x) float32
    meta: pd.DataFrame  # class_id, split
    classes: list[str]

    def indices(self, split: str | None = "train") -> np.ndarray: ...


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one sweep (the paper's are the defaults: lr 5e-4, wd 1e-4, batch 16, 50 epochs, 5 runs).

    fractions: label fractions of the training split; runs: repetitions per cell; seed: base seed
    (run r uses ``seed + r`` for its subset, head and batch order). width / embedding_dim / dropout:
    RB3D's, and they must match the pre-trained encoders.
    """

    inits: tuple[str, ...] = INITS
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    runs: int = 5
    epochs: int = 50
    lr: float = 5e-4
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # the paper's; "adam" reaches above chance in a few epochs (quick profile)
    momentum: float = 0.9
    batch_size: int = 16
    width: int = 32
    embedding_dim: int = 1024
    dropout: float = 0.5
    pool_size: int = 4
    recalibrate_bn: bool = True  # exact BatchNorm statistics before each validation (cryonb.train.recalibrate_batchnorm)
    max_train: int | None = None  # cap on the training split, stratified (quick profile); its fractions are taken of this
    max_val: int | None = None  # cap on the validation split, stratified (quick profile)
    seed: int = 0
    device: str = "auto"
    data_key: str = ""  # identity of the data sets (sweep_from_params sets it): runs on other data never share a folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "inits", tuple(str(i).lower() for i in self.inits))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        bad = [i for i in self.inits if i not in INITS]
        if bad or not self.inits:
            raise CryoNBError(f"finetune inits {list(self.inits)}: expected a non-empty subset of {list(INITS)}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise CryoNBError(f"finetune fractions {list(self.fractions)}: expected values in (0, 1]")
        for name in ("runs", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise CryoNBError(f"finetune {name}={getattr(self, name)}: expected an integer ≥ 1")
        if self.optimizer not in ("sgd", "adam"):
            raise CryoNBError(f"finetune optimizer={self.optimizer!r}: expected 'sgd' or 'adam'")
        if not self.lr > 0 or self.weight_decay < 0:
            raise CryoNBError(f"finetune lr={self.lr}, weight_decay={self.weight_decay}: expected lr > 0 and weight_decay ≥ 0")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FinetuneConfig":
        reject_unknown_keys(raw, cls, "fine-tuning")
        return cls(**raw)

    def training_hash(self) -> str:
        """12 hex digits over what changes a run's result (not the list of inits, fractions or runs)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("inits", "fractions", "runs", "device")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]

    def rb3d(self, n_classes: int) -> RB3DConfig:
        return RB3DConfig(n_classes=n_classes, width=self.width, embedding_dim=self.embedding_dim, dropout=self.dropout,
                          pool_size=self.pool_size)


def data_key(folder_names: Iterable[str]) -> str:
    """12 hex digits naming a set of data sets (their content-hashed folder names), for ``FinetuneConfig.data_key``."""
    return hashlib.sha256(json.dumps(sorted(folder_names)).encode()).hexdigest()[:12]


def _snr_tag(snr: float) -> str:
    return "inf" if math.isinf(snr) else f"{snr:g}"


def run_dir(work_dir: str | Path, cfg: FinetuneConfig, snr: float, init: str, fraction: float, run: int) -> Path:
    """Folder of one run: ``<work_dir>/finetune/<hash>/snr<snr>-<init>-f<fraction>-r<run>``."""
    return Path(work_dir) / "finetune" / cfg.training_hash() / f"snr{_snr_tag(snr)}-{init}-f{fraction:g}-r{run}"


def _encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """Encoder weights from a pre-training checkpoint (``encoder``, ``model`` or a bare state dict)."""
    ckpt = load_checkpoint(path) if path.suffix == ".pt" else torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("encoder", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CryoNBError(f"{path}: no encoder weights (expected an 'encoder' or 'model' state dict)")
    if state and all(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def _build(cfg: FinetuneConfig, n_classes: int, seed: int, encoder: Path | None) -> RB3D:
    # fork_rng: the initial weights depend on the run's seed only, never on global state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RB3D(cfg.rb3d(n_classes))
    if encoder is not None:
        model.load_encoder_state(_encoder_state(Path(encoder)))
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


def finetune_run(ds: Dataset, cfg: FinetuneConfig, snr: float, init: str, fraction: float, run: int,
                 work_dir: str | Path, encoder: Path | None = None) -> dict[str, Any]:
    """Fine-tune one model and score it; returns its table row (see :data:`RUN_COLUMNS`).

    ds: data set with (N, z, y, x) volumes and train / val / test splits. encoder: pre-trained encoder
    checkpoint, None for random initialisation. The best-validation weights go to ``best.pt`` and the test
    predictions to ``test_pred.npy`` in :func:`run_dir`.
    """
    if (encoder is None) != (init == "random"):
        raise CryoNBError(f"init {init!r}: expected an encoder checkpoint for a pre-trained init and none for 'random', got {encoder}")
    t0 = time.perf_counter()
    seed = cfg.seed + run
    labels = ds.meta["class_id"].to_numpy()
    train_all, val = _capped(ds.indices("train"), labels, cfg.max_train, cfg.seed), _capped(ds.indices("val"), labels, cfg.max_val, cfg.seed)
    train = train_all[stratified_subset(labels[train_all], fraction, seed)]
    test = ds.indices("test")
    x_tr, y_tr = to_tensor(ds.volumes, train), torch.as_tensor(labels[train])
    x_va, y_va = to_tensor(ds.volumes, val), labels[val]
    model = _build(cfg, len(ds.classes), seed, encoder)
    folder = run_dir(work_dir, cfg, snr, init, fraction, run)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       optimizer=cfg.optimizer, momentum=cfg.momentum, scheduler="cosine", device=cfg.device, seed=seed,
                       checkpoint_dir=folder, progress=False)
    device = next(iter(model.parameters())).device

    def batches(epoch: int, generator: torch.Generator):  # type: ignore[no-untyped-def]
        for idx in iterate_batches(len(x_tr), cfg.batch_size, generator):
            yield x_tr[idx], y_tr[idx]

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": nn.functional.cross_entropy(net(x), y)}

    def validate(net: nn.Module) -> dict[str, float]:
        dev = next(iter(net.parameters())).device
        if cfg.recalibrate_bn:
            recalibrate_batchnorm(net, x_tr)
        return {"val_acc": float(np.mean(_predict(net, x_va, dev) == y_va))}

    meta = {"model_type": "rb3d", "class_names": list(ds.classes), "box": int(ds.volumes.shape[1]), "seed": seed,
            "voxel_size_a": _voxel_size(ds), "init": init, "fraction": fraction, "snr": snr}
    history = fit(model, loss_fn, batches, tcfg, validate=validate, select_metric="val_acc", checkpoint_meta=meta)
    assert history.best_state is not None
    model.load_state_dict(history.best_state)
    device = next(iter(model.parameters())).device
    pred = _predict(model, to_tensor(ds.volumes, test), device)
    save_npy_atomic(folder / "test_pred.npy", np.stack([test, labels[test], pred]))
    return {"snr": snr, "init": init, "fraction": fraction, "run": run, "seed": seed, "n_train": len(train),
            "best_epoch": history.best_epoch, "val_acc": history.best_value,
            "test_acc": float(np.mean(pred == labels[test])), "wall_s": time.perf_counter() - t0}


def _key(row: Any) -> tuple[str, str, str, int]:
    return (_snr_tag(float(row["snr"])), str(row["init"]), f"{float(row['fraction']):g}", int(row["run"]))


def sweep(datasets: dict[float, Dataset], encoder_for: Callable[[float, str], Path | None], cfg: FinetuneConfig,
          work_dir: str | Path, max_runs: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Run every (snr, init, fraction, run) not yet in the sweep's table; return the table.

    datasets: SNR → data set. encoder_for(snr, init): encoder checkpoint (None for 'random'); called only for
    runs still to do, so finished sweeps need no pre-training. max_runs: stop after this many new runs
    (a budget, or a simulated interruption in tests). Rows are sorted by (snr, init order, fraction, run).
    """
    table_path = Path(work_dir) / "finetune" / cfg.training_hash() / "runs.csv"
    table = pd.read_csv(table_path) if table_path.is_file() else pd.DataFrame(columns=list(RUN_COLUMNS))
    done = {_key(r) for _, r in table.iterrows()}
    todo = [(s, i, f, r) for s in datasets for i in cfg.inits for f in cfg.fractions for r in range(cfg.runs)
            if _key({"snr": s, "init": i, "fraction": f, "run": r}) not in done]
    write_text_atomic(table_path.with_name("config.json"), json.dumps(asdict(cfg), indent=2))
    encoders: dict[tuple[float, str], Path | None] = {}
    for n, (snr, init, frac, r) in enumerate(tqdm(todo, desc="fine-tuning runs", disable=not progress)):
        if max_runs is not None and n >= max_runs:
            break
        if (snr, init) not in encoders:
            encoders[(snr, init)] = None if init == "random" else encoder_for(snr, init)
        row = finetune_run(datasets[snr], cfg, snr, init, frac, r, work_dir, encoders[(snr, init)])
        table = pd.concat([table.astype(object), pd.DataFrame([row]).astype(object)], ignore_index=True) if len(table) else pd.DataFrame([row])
        write_text_atomic(table_path, table.to_csv(index=False))  # one atomic rewrite per finished run
        if n + 1 < len(todo):
            budget.check(f"fine-tuning run {n + 1}/{len(todo)} of this call ({table_path})")
    return _sorted(pd.read_csv(table_path) if table_path.is_file() else table, cfg)


def _sorted(table: pd.DataFrame, cfg: FinetuneConfig) -> pd.DataFrame:
    if table.empty:
        return table
    order = {name: k for k, name in enumerate(cfg.inits)}
    t = table.assign(_o=table["init"].map(order).fillna(len(order)))
    return t.sort_values(["snr", "_o", "fraction", "run"], ascending=[False, True, True, True]).drop(columns="_o").reset_index(drop=True)


def sweep_from_params(snrs: Sequence[float], n_per_class: int, pretrain: dict[str, Any], finetune: dict[str, Any], seed: int,
                      work_dir: str | Path, progress: bool = True) -> tuple[pd.DataFrame, FinetuneConfig, dict[float, Any]]:
    """The sweep as notebooks 04–06 run it: CSSL data sets per SNR, encoders from ``cryonb.pretrain``.

    pretrain: ``PretrainConfig`` fields (must equal notebook 03's so its checkpoints are reused);
    finetune: :class:`FinetuneConfig` fields (width / embedding_dim are taken from ``pretrain``).
    Returns (runs table, config, SNR → data set).
    """
    from cryonb.pretrain import PretrainConfig, ensure_pretrained
    from cryonb.simulate import cssl_recipe, ensure_dataset

    pcfg = PretrainConfig.from_dict({**pretrain, "seed": seed})
    recipes = {float(s): cssl_recipe(snr=float(s), n_per_class=n_per_class, seed=seed) for s in snrs}
    cfg = FinetuneConfig.from_dict({**finetune, "width": pcfg.width, "embedding_dim": pcfg.embedding_dim, "pool_size": pcfg.pool_size,
                                    "seed": seed, "data_key": data_key(r.folder_name for r in recipes.values())})
    datasets = {s: ensure_dataset(r, progress=progress) for s, r in recipes.items()}
    table = sweep(datasets, lambda s, init: ensure_pretrained(init, recipes[s], pcfg, work_dir, progress=progress), cfg, work_dir, progress=progress)
    return table, cfg, datasets


def load_finetuned(work_dir: str | Path, cfg: FinetuneConfig, n_classes: int, snr: float, init: str, fraction: float, run: int) -> RB3D:
    """The best-validation model of one finished run (CPU, eval mode)."""
    path = run_dir(work_dir, cfg, snr, init, fraction, run) / "best.pt"
    model = RB3D(cfg.rb3d(n_classes))
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def load_predictions(work_dir: str | Path, cfg: FinetuneConfig, snr: float, init: str, fraction: float, run: int) -> pd.DataFrame:
    """Test-set predictions of one finished run: columns index, label, pred."""
    path = run_dir(work_dir, cfg, snr, init, fraction, run) / "test_pred.npy"
    if not path.is_file():
        raise CryoNBError(f"{path}: no predictions; run the sweep for (snr {snr}, {init}, fraction {fraction}, run {run}) first")
    index, label, pred = np.load(path)
    return pd.DataFrame({"index": index, "label": label, "pred": pred})


def confusion_matrix(labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_classes: int, normalize: bool = True) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted; rows sum to 1 if ``normalize``."""
    y, p = np.asarray(labels, dtype=int), np.asarray(pred, dtype=int)
    if y.shape != p.shape:
        raise CryoNBError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= n_classes):
        raise CryoNBError(f"class ids must lie in [0, {n_classes}), got {min(y.min(), p.min())}..{max(y.max(), p.max())}")
    m = np.zeros((n_classes, n_classes))
    np.add.at(m, (y, p), 1)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    return m


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
