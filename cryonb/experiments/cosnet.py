"""COS-Net as one experiment: data sets → the training grid → test episodes → masks, CRF and Dice, from the spec.

Public surface: :func:`recipes`, :func:`datasets`, :func:`model_path`, :func:`ensure_model`, :func:`ensure_models`,
:func:`class_pools`, :func:`evaluate`, :func:`segmentation_rows`, :func:`mask_probabilities`, :func:`choose_crf`,
:func:`refine_and_score`, :class:`Pools`, :class:`Evaluation`.

Models live under ``work_dir/cosnet/`` in files named by :func:`cryonb.cache.content_key` of (training config with
its variant and n-way, data set, seed): notebooks 07, 08, 09 and ``python -m cryonb train cosnet`` share them.

Test classes: episodes and segmentation use the *unseen* classes only; training uses the seen classes' training
rows and every choice made here (the CRF weights) the seen classes' validation rows.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryonb import oneshot
from cryonb.cache import content_key
from cryonb.crf import CRFParams, dense_crf, probs_to_unary, select_crf_params, sweep_crf_params
from cryonb.embedding import embed
from cryonb.episodes import Episode
from cryonb.errors import CryoNBError
from cryonb.metrics import dice
from cryonb.models.rb3d import RB3DConfig
from cryonb.pretrain import random_encoder
from cryonb.simulate import DatasetRecipe, SubtomoDataset, cosnet_recipe, ensure_dataset
from cryonb.simulate.config import snr_label
from cryonb.spec import Spec

__all__ = [
    "Pools",
    "Evaluation",
    "recipes",
    "datasets",
    "model_path",
    "ensure_model",
    "ensure_models",
    "class_pools",
    "evaluate",
    "segmentation_rows",
    "mask_probabilities",
    "choose_crf",
    "refine_and_score",
]

Job = tuple[str, float, int]  # (variant, SNR, training n-way)


def recipes(spec: Spec) -> dict[float, DatasetRecipe]:
    """SNR → recipe of the COS-Net data set (seen classes split 60:20:20, unseen classes test-only)."""
    data = spec.cosnet.data
    return {snr: cosnet_recipe(snr=snr, n_per_class=data.n_per_class, seed=spec.seed) for snr in data.snrs}


def datasets(spec: Spec, progress: bool = True) -> dict[float, SubtomoDataset]:
    """SNR → data set, generated on first use (cached by recipe hash)."""
    return {snr: ensure_dataset(r, progress=progress) for snr, r in recipes(spec).items()}


def model_path(spec: Spec, variant: str, snr: float, n_way: int, work_dir: str | Path) -> Path:
    """Where the model of one job lives: ``cosnet/<variant>-snr<snr>-<n>way-<content key>.pt``."""
    cfg = spec.cosnet.training.for_job(variant, n_way)
    key = content_key(cfg, recipes(spec)[snr].folder_name, spec.seed)
    return Path(work_dir) / "cosnet" / f"{variant}-snr{snr_label(snr)}-{n_way}way-{key}.pt"


def ensure_model(spec: Spec, variant: str, snr: float, n_way: int, work_dir: str | Path, device: torch.device | str = "cpu",
                 progress: bool = True) -> Path:
    """The checkpoint of one job: reused if present, else trained on the seen classes' training rows (resumable)."""
    target = model_path(spec, variant, snr, n_way, work_dir)
    if target.is_file():
        return target
    ds = ensure_dataset(recipes(spec)[snr], progress=progress)
    cfg = spec.cosnet.training.for_job(variant, n_way)
    pool = ds.indices(split="train", class_split="seen")
    net, log = oneshot.train_cosnet(cfg, ds.volumes, ds.masks, ds.meta["class_id"].to_numpy(), pool, seed=spec.seed, device=device,
                                    checkpoint_dir=target.with_suffix(".run"), progress=progress)
    meta = {"variant": variant, "snr": snr, "train_n_way": n_way, "dataset": ds.root.name, "seeds": {"train": spec.seed}, "seed": spec.seed,
            "box": int(ds.volumes.shape[1]), "voxel_size_a": ds.voxel_size_a, "seen_classes": sorted(set(ds.meta.pdb_id.to_numpy()[pool]))}
    oneshot.save_cosnet(target, net, log, meta)
    shutil.rmtree(target.with_suffix(".run"), ignore_errors=True)  # fit's resumable state: not needed once the model is written
    return target


def ensure_models(spec: Spec, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True) -> dict[Job, Path]:
    """Every model of the evaluation grid (:meth:`cryonb.spec.EvaluationSpec.jobs`), trained once and reused."""
    return {job: ensure_model(spec, *job, work_dir, device, progress) for job in spec.cosnet.evaluation.jobs()}


@dataclass(frozen=True)
class Pools:
    """Row indices of one COS-Net data set: ``unseen`` (every row of the test classes), ``seen_train``
    (training episodes), ``seen_val`` (every choice made on data); ``labels`` (N,) class ids."""

    labels: np.ndarray
    unseen: np.ndarray
    seen_train: np.ndarray
    seen_val: np.ndarray


def class_pools(ds: SubtomoDataset) -> Pools:
    return Pools(ds.meta["class_id"].to_numpy(), np.asarray(ds.indices(split=None, class_split="unseen")),
                 np.asarray(ds.indices(split="train", class_split="seen")), np.asarray(ds.indices(split="val", class_split="seen")))


@dataclass
class Evaluation:
    """Results of the test episodes: ``accuracy`` (one row per method × SNR × n-way × k-shot, with Wilson
    intervals), ``episodes[(variant, snr, n_way, k_shot)] = (episodes, predicted positions)`` of the COS-Net
    models, and the unseen-pool embeddings of every model."""

    accuracy: pd.DataFrame
    episodes: dict[tuple[str, float, int, int], tuple[list[Episode], np.ndarray]]
    embeddings: dict[Job, torch.Tensor]


def _episode_seed(spec: Spec, n_way: int, k_shot: int) -> int:
    # the same episodes for every model at (n_way, k_shot): comparisons between rows are paired
    return spec.seed + 1000 * n_way + k_shot


def evaluate(spec: Spec, models: dict[Job, Path], data: dict[float, SubtomoDataset], device: torch.device | str = "cpu") -> Evaluation:
    """Score every model on seeded unseen-class episodes, plus three prototype baselines per SNR:
    raw voxels, random-init RB3D features, and the main variant's own COS-Net embedding."""
    ev = spec.cosnet.evaluation
    rows: list[dict[str, Any]] = []
    episodes: dict[tuple[str, float, int, int], tuple[list[Episode], np.ndarray]] = {}
    embeddings: dict[Job, torch.Tensor] = {}
    for (variant, snr, n_train), path in models.items():
        net, _ = oneshot.load_cosnet(path, device)
        pools = class_pools(data[snr])
        emb = embeddings[(variant, snr, n_train)] = embed(net, data[snr].volumes, pools.unseen, device=device)[0]
        for w in ev.n_ways:
            if ev.scoring_n_way(w) != n_train:
                continue  # each test n-way is scored by one model
            for k in ev.k_shots if variant == ev.main_variant else (1,):
                row, eps, pred = oneshot.evaluate_episodes(oneshot.cosnet_scorer(net, emb, pools.unseen), pools.labels, pools.unseen, w, k,
                                                           ev.n_episodes, _episode_seed(spec, w, k))
                rows.append({"method": variant, "snr": snr_label(snr), "train_n_way": n_train, **row})
                episodes[(variant, snr, w, k)] = (eps, pred)
    for snr in data:
        rows += _baselines(spec, data[snr], snr, embeddings)
    return Evaluation(pd.DataFrame(rows), episodes, embeddings)


def _baselines(spec: Spec, ds: SubtomoDataset, snr: float, embeddings: dict[Job, torch.Tensor]) -> list[dict[str, Any]]:
    ev = spec.cosnet.evaluation
    pools = class_pools(ds)
    vox = torch.from_numpy(np.asarray(ds.volumes[pools.unseen], dtype=np.float32).reshape(len(pools.unseen), -1))
    rb3d = random_encoder(RB3DConfig(width=ev.rb3d_width, dropout=0.0), spec.seed).eval()
    with torch.no_grad():  # pooled feature maps of an untrained RB3D: what the architecture alone gives
        rb_emb = torch.cat([rb3d.pool(rb3d.features(vox[i : i + 32].reshape(-1, 1, *ds.volumes.shape[1:]))).flatten(1) for i in range(0, len(vox), 32)])
    features = {"prototype on voxels": (vox, ev.k_shots, 0), "prototype on random RB3D features": (rb_emb, (1,), 0)}
    main = (ev.main_variant, snr, ev.train_n_ways[0])
    if main in embeddings:
        features[f"prototype on {ev.main_variant} embedding"] = (embeddings[main], (1,), ev.train_n_ways[0])
    rows = []
    for method, (emb, k_shots, n_train) in features.items():
        for w in ev.n_ways:
            for k in k_shots:
                row, _, _ = oneshot.evaluate_episodes(oneshot.prototype_scorer(emb, pools.unseen), pools.labels, pools.unseen, w, k,
                                                      ev.n_episodes, _episode_seed(spec, w, k))
                rows.append({"method": method, "snr": snr_label(snr), "train_n_way": n_train, **row})
    return rows


def segmentation_rows(spec: Spec, ds: SubtomoDataset) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows to segment (``segmentation.n_per_class`` per unseen class) and the seen-class validation
    rows that choose the CRF weights (``crf.n_val``); both drawn with the spec's seed."""
    pools = class_pools(ds)
    rng = np.random.default_rng(spec.seed)
    per_class = spec.cosnet.segmentation.n_per_class
    seg = np.sort(np.concatenate([rng.choice(pools.unseen[pools.labels[pools.unseen] == c], size=min(per_class, int((pools.labels[pools.unseen] == c).sum())),
                                             replace=False) for c in np.unique(pools.labels[pools.unseen])]))
    val = np.sort(rng.choice(pools.seen_val, size=min(spec.cosnet.crf.n_val, len(pools.seen_val)), replace=False))
    return seg, val


def mask_probabilities(path: Path, ds: SubtomoDataset, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(M, D, D, D) decoder mask probabilities of ``rows`` under the model at ``path``."""
    net, _ = oneshot.load_cosnet(path, device)
    masks = embed(net, ds.volumes, rows, device=device)[1]
    if masks is None:
        raise CryoNBError(f"{path}: this COS-Net variant has no decoder, so it cannot segment")
    return masks


def _volumes(array: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array[rows], dtype=np.float32))


def choose_crf(spec: Spec, models: dict[Job, Path], data: dict[float, SubtomoDataset], device: torch.device | str = "cpu"
               ) -> tuple[pd.DataFrame, dict[float, CRFParams]]:
    """CRF weights per SNR, chosen on seen-class validation volumes with the first segmentation model's variant.

    Every weight pair of ``crf`` is scored by validation Dice; pairs that wipe the mask are rejected
    (:func:`cryonb.crf.select_crf_params`). An SNR without that variant borrows the nearest SNR's choice.
    Returns the whole sweep (one row per SNR × pair) and SNR → chosen parameters.
    """
    main_variant, n_main = spec.cosnet.segmentation.models[0][0], spec.cosnet.evaluation.train_n_ways[0]
    grid = spec.cosnet.crf.grid()
    rows, chosen = [], {}
    for (variant, snr, n_train), path in models.items():
        if (variant, n_train) != (main_variant, n_main):
            continue
        val = segmentation_rows(spec, data[snr])[1]
        probs = mask_probabilities(path, data[snr], val, device)
        swept = sweep_crf_params(probs[:, None], _volumes(data[snr].volumes, val)[:, None], _volumes(data[snr].masks, val), grid)
        rows += [{"snr": snr_label(snr), **r} for r in swept]
        chosen[snr] = select_crf_params(swept)
    if not chosen:
        raise CryoNBError(f"no trained {main_variant} model to choose the CRF weights with")
    for snr in data:  # log10 distance, with SNR ∞ counted as 10^6
        chosen.setdefault(snr, chosen[min(chosen, key=lambda c: abs(np.log10(min(c, 1e6)) - np.log10(min(snr, 1e6))))])
    return pd.DataFrame(rows), chosen


def refine_and_score(spec: Spec, models: dict[Job, Path], data: dict[float, SubtomoDataset], chosen: dict[float, CRFParams],
                     device: torch.device | str = "cpu") -> tuple[pd.DataFrame, dict[Job, torch.Tensor], dict[Job, torch.Tensor]]:
    """Masks of the unseen test rows by every segmentation model, refined with the chosen CRF, scored by Dice.

    Returns one row per (model, volume) with ``dice_before`` (decoder mask > 0.5) and ``dice_after`` (CRF),
    the decoder probabilities and the CRF labels per model, keyed by (variant, SNR, training n-way).
    """
    wanted = set(spec.cosnet.segmentation.models)
    records, probs, refined = [], {}, {}
    for (variant, snr, n_train), path in models.items():
        if (variant, snr) not in wanted:
            continue
        ds = data[snr]
        seg = segmentation_rows(spec, ds)[0]
        names = ds.meta.groupby("class_id")["pdb_id"].first()
        labels = ds.meta["class_id"].to_numpy()
        pr = probs[(variant, snr, n_train)] = mask_probabilities(path, ds, seg, device)
        img, gt = _volumes(ds.volumes, seg)[:, None], _volumes(ds.masks, seg)
        q = torch.cat([dense_crf(probs_to_unary(pr[i : i + 4, None]), img[i : i + 4], chosen[snr]) for i in range(0, len(pr), 4)])
        lab = refined[(variant, snr, n_train)] = q.argmax(1)
        before, after = dice((pr > 0.5).float(), gt).numpy(), dice(lab.float(), gt).numpy()
        records += [{"model": variant, "snr": snr_label(snr), "train_n_way": n_train, "row": int(r), "class": names[labels[r]],
                     "dice_before": b, "dice_after": a} for r, b, a in zip(seg, before, after)]
    return pd.DataFrame(records), probs, refined
