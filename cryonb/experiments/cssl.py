"""Gupta et al. 2022 as one experiment: data sets → CSSL pre-training → the fine-tuning sweep, from the spec.

Public surface: :func:`recipes`, :func:`datasets`, :func:`encoder_path`, :func:`ensure_encoder`,
:func:`ensure_encoders`, :func:`sweep_folder`, :func:`run_sweep`, :func:`load_finetuned`,
:func:`load_predictions`, :func:`classifier_recipe`, :func:`ensure_classifier`.

Every artefact lives under ``work_dir`` in a folder named by :func:`cryonb.cache.content_key` of everything
that determines it, so notebooks, ``python -m cryonb train`` and ``make reproduce`` reuse each other's work:

- encoders: ``cssl/<method>-<key(method, data set, PretrainConfig, seed)>/encoder.pt``
- fine-tuning: ``finetune/<key(FinetuneConfig, encoders' keys, data sets, seed)>/runs.csv`` and one folder per run
- notebook 09's classifier: ``classifier/<key(FinetuneConfig, data set, seed)>/best.pt``
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cryonb import finetune, pretrain
from cryonb.cache import content_key
from cryonb.errors import CryoNBError
from cryonb.io import write_text_atomic
from cryonb.models.rb3d import RB3D
from cryonb.simulate import DatasetRecipe, SubtomoDataset, cssl_recipe, ensure_dataset
from cryonb.simulate.config import snr_label
from cryonb.spec import ClassifierSpec, Spec
from cryonb.ssl import METHODS

#: independent models trained together (cryonb.train.fit_many): on a CPU one per core at a time, each bit-identical
#: to training it alone; it changes speed and memory, never a result, so it is not a spec setting
MODELS_PER_BATCH = 8

__all__ = [
    "MODELS_PER_BATCH",
    "recipes",
    "datasets",
    "encoder_seed",
    "encoder_path",
    "ensure_encoder",
    "ensure_encoders",
    "sweep_folder",
    "run_sweep",
    "load_finetuned",
    "load_predictions",
    "classifier_recipe",
    "ensure_classifier",
]


def recipes(spec: Spec) -> dict[float, DatasetRecipe]:
    """SNR → the recipe of the CSSL data set at that SNR (10 classes, split 60:20:20)."""
    data = spec.cssl.data
    return {snr: cssl_recipe(snr=snr, n_per_class=data.n_per_class, seed=spec.seed) for snr in data.snrs}


def datasets(spec: Spec, progress: bool = True) -> dict[float, SubtomoDataset]:
    """SNR → data set, generated on first use (cached by recipe hash)."""
    return {snr: ensure_dataset(r, progress=progress) for snr, r in recipes(spec).items()}


def encoder_seed(spec: Spec, index: int) -> int:
    """The pre-training seed of the ``index``-th independent encoder of a (method, SNR)."""
    return spec.seed + index


def encoder_path(spec: Spec, method: str, snr: float, work_dir: str | Path, index: int = 0) -> Path:
    """Where encoder ``index`` of (method, SNR) lives; its folder name is the content key of what makes it."""
    if method not in METHODS:
        raise CryoNBError(f"unknown CSSL method {method!r}; expected one of {', '.join(METHODS)}")
    key = content_key(method, recipes(spec)[snr].folder_name, spec.cssl.pretrain, encoder_seed(spec, index))
    return Path(work_dir) / "cssl" / f"{method}-snr{snr_label(snr)}-{key}" / "encoder.pt"


def _encoder_meta(spec: Spec, method: str, snr: float, index: int, ds: SubtomoDataset) -> dict[str, Any]:
    seed = encoder_seed(spec, index)
    return {"method": method, "dataset": ds.root.name, "snr": snr, "encoder": index, "seeds": {"pretrain": seed}, "seed": seed,
            "box": int(ds.volumes.shape[1]), "voxel_size_a": ds.voxel_size_a, "polarity": ds.polarity, "class_names": list(ds.classes)}


def _train_encoders(spec: Spec, keys: list[tuple[float, str, int]], work_dir: str | Path, device: torch.device | str, progress: bool) -> None:
    """Pre-train the encoders ``keys`` = (SNR, method, index) that are missing, :data:`MODELS_PER_BATCH` at a time
    (:func:`cryonb.pretrain.pretrain_many`: each exactly what it would be alone), and write them."""
    missing = [k for k in keys if not encoder_path(spec, k[1], k[0], work_dir, k[2]).is_file()]
    data = {snr: ensure_dataset(recipes(spec)[snr], progress=progress) for snr in dict.fromkeys(k[0] for k in missing)}
    for start in range(0, len(missing), MODELS_PER_BATCH):
        chunk = missing[start : start + MODELS_PER_BATCH]
        targets = [encoder_path(spec, m, snr, work_dir, i) for snr, m, i in chunk]
        jobs = [pretrain.PretrainJob(m, data[snr], encoder_seed(spec, i), t.parent / "train") for (snr, m, i), t in zip(chunk, targets)]
        for (snr, m, i), target, (encoder, history) in zip(chunk, targets, pretrain.pretrain_many(jobs, spec.cssl.pretrain, device=device, progress=progress)):
            pretrain.save_encoder(target, encoder, history, _encoder_meta(spec, m, snr, i, data[snr]))


def ensure_encoder(spec: Spec, method: str, snr: float, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True,
                   index: int = 0) -> Path:
    """Encoder ``index`` of (method, SNR): reused if present, else trained (or resumed) and written."""
    _train_encoders(spec, [(snr, method, index)], work_dir, device, progress)
    return encoder_path(spec, method, snr, work_dir, index)


def ensure_encoders(spec: Spec, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True) -> dict[tuple[float, str, int], Path]:
    """(SNR, method, index) → encoder checkpoint: every SNR of the data, every CSSL method of the sweep, every
    independent encoder (``cssl.sweep.encoders``); the missing ones train together."""
    keys = [(snr, m, i) for snr in spec.cssl.data.snrs for m in spec.cssl.sweep.methods for i in range(spec.cssl.sweep.encoders)]
    _train_encoders(spec, keys, work_dir, device, progress)
    return {(snr, m, i): encoder_path(spec, m, snr, work_dir, i) for snr, m, i in keys}


def sweep_folder(spec: Spec, work_dir: str | Path) -> Path:
    """The sweep's folder: keyed by the fine-tuning config, the encoders it starts from, the data and the seed.

    The list of cells (inits, fractions, runs) is not in the key: adding a fraction reuses the finished runs.
    """
    encoders = {f"{snr_label(s)}-{m}-{i}": encoder_path(spec, m, s, work_dir, i).parent.name
                for s in spec.cssl.data.snrs for m in METHODS for i in range(spec.cssl.sweep.encoders)}
    data = sorted(r.folder_name for r in recipes(spec).values())
    return Path(work_dir) / "finetune" / content_key(spec.cssl.finetune, encoders, data, spec.seed)


def run_sweep(spec: Spec, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True,
              max_runs: int | None = None) -> tuple[pd.DataFrame, dict[float, SubtomoDataset]]:
    """Every (SNR, init, fraction, run) of the spec's sweep not yet done; returns the runs table and the data sets.

    Encoders are pre-trained on demand (only for runs still to do), so a finished sweep needs none.
    """
    data = datasets(spec, progress)
    cells = spec.cssl.sweep
    table_path = sweep_folder(spec, work_dir) / "runs.csv"
    finished = len(pd.read_csv(table_path)) if table_path.is_file() else 0
    if finished < len(data) * len(cells.inits) * len(cells.fractions) * cells.runs:
        ensure_encoders(spec, work_dir, device, progress)  # every encoder at once (batched) before the runs that need them
    table = finetune.sweep(data, lambda snr, m, i: ensure_encoder(spec, m, snr, work_dir, device, progress, i), spec.cssl.finetune,
                           spec.cssl.sweep, sweep_folder(spec, work_dir), seed=spec.seed, device=device, max_runs=max_runs,
                           progress=progress, runs_per_batch=MODELS_PER_BATCH)
    return table, data


def load_finetuned(spec: Spec, work_dir: str | Path, snr: float, init: str, fraction: float, run: int) -> RB3D:
    """The best-validation model of one finished run of the spec's sweep (CPU, eval mode)."""
    return finetune.load_finetuned(sweep_folder(spec, work_dir), snr, init, fraction, run)


def load_predictions(spec: Spec, work_dir: str | Path, snr: float, init: str, fraction: float, run: int) -> pd.DataFrame:
    """Test-set predictions (index, label, pred) of one finished run of the spec's sweep."""
    return finetune.load_predictions(sweep_folder(spec, work_dir), snr, init, fraction, run)


def classifier_recipe(spec: Spec) -> DatasetRecipe:
    """The simulated training data of notebook 09's classifier: its classes at its SNR."""
    c: ClassifierSpec = spec.cssl.classifier
    return DatasetRecipe(name=f"classifier-snr{snr_label(c.snr)}-n{c.n_per_class}-s{spec.seed}", classes=c.classes,
                         n_per_class=c.n_per_class, snr=c.snr, seed=spec.seed)


def ensure_classifier(spec: Spec, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Notebook 09's RB3D classifier (random init, all labels): its ``best.pt`` and its result row
    (``n_train``, ``best_epoch``, ``val_acc``, ``test_acc``...), trained once and reused."""
    c = spec.cssl.classifier
    recipe = classifier_recipe(spec)
    folder = Path(work_dir) / "classifier" / content_key(c.finetune, recipe.folder_name, spec.seed)
    result_path = folder / "result.json"
    if result_path.is_file():
        return folder / "best.pt", json.loads(result_path.read_text())
    ds = ensure_dataset(recipe, progress=progress)
    row = finetune.finetune_run(ds, c.finetune, fraction=1.0, seed=spec.seed, base_seed=spec.seed, folder=folder, device=device,
                                meta={"init": "random", "snr": c.snr, "dataset": ds.root.name})
    write_text_atomic(result_path, json.dumps(row, indent=2))
    return folder / "best.pt", row
