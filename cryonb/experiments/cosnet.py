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

import math
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
from cryonb.oneshot import COSNetTrainConfig
from cryonb.pretrain import random_encoder
from cryonb.simulate import DatasetRecipe, SubtomoDataset, cosnet_recipe, ensure_dataset
from cryonb.simulate.config import MASK_RULES, snr_label
from cryonb.simulate.dataset import masks_by_rule
from cryonb.spec import Spec
from cryonb.verdicts import crossed_bootstrap

__all__ = [
    "Pools",
    "Evaluation",
    "recipes",
    "datasets",
    "model_seed",
    "model_path",
    "ensure_model",
    "ensure_models",
    "class_pools",
    "selection_rows",
    "selection_score",
    "evaluate",
    "segmentation_rows",
    "mask_probabilities",
    "select_training",
    "choose_crf",
    "refine_and_score",
]

Job = tuple[str, float, int, int]  # (variant, SNR, training n-way, seed index)
#: independent models trained together (cryonb.train.fit_many); speed and memory only, never a result
MODELS_PER_BATCH = 8


def recipes(spec: Spec) -> dict[float, DatasetRecipe]:
    """SNR → recipe of the COS-Net data set (seen classes split 60:20:20, unseen classes test-only)."""
    data = spec.cosnet.data
    return {snr: cosnet_recipe(snr=snr, n_per_class=data.n_per_class, seed=spec.seed, unseen_classes=data.unseen, validation_classes=data.validation)
            for snr in data.snrs}


def datasets(spec: Spec, progress: bool = True) -> dict[float, SubtomoDataset]:
    """SNR → data set, generated on first use (cached by recipe hash)."""
    return {snr: ensure_dataset(r, progress=progress) for snr, r in recipes(spec).items()}


def model_seed(spec: Spec, index: int) -> int:
    """The training seed of the ``index``-th independent model of a (variant, SNR, n-way)."""
    return spec.seed + index


def model_path(spec: Spec, variant: str, snr: float, n_way: int, index: int, work_dir: str | Path,
               training: COSNetTrainConfig | None = None) -> Path:
    """Where the model of one job lives: ``cosnet/<variant>-snr<snr>-<n>way-s<seed>-<content key>.pt``.

    training : another training config than the spec's (a candidate of the selection grid)."""
    cfg = (training or spec.cosnet.training).for_job(variant, n_way)
    seed = model_seed(spec, index)
    key = content_key(cfg, recipes(spec)[snr].folder_name, seed)
    return Path(work_dir) / "cosnet" / f"{variant}-snr{snr_label(snr)}-{n_way}way-s{seed}-{key}.pt"


def _model_meta(spec: Spec, variant: str, snr: float, n_way: int, index: int, ds: SubtomoDataset, pool: np.ndarray) -> dict[str, Any]:
    seed = model_seed(spec, index)
    return {"variant": variant, "snr": snr, "train_n_way": n_way, "dataset": ds.root.name, "seeds": {"train": seed}, "seed": seed, "seed_index": index,
            "box": int(ds.volumes.shape[1]), "voxel_size_a": ds.voxel_size_a, "polarity": getattr(ds, "polarity", None),
            "seen_classes": sorted(set(ds.meta.pdb_id.to_numpy()[pool]))}


def _train_models(spec: Spec, jobs: list[tuple[Job, COSNetTrainConfig | None]], work_dir: str | Path, device: torch.device | str,
                  progress: bool) -> None:
    """Train the missing models of ``jobs`` ((variant, SNR, n-way, seed index), training config or None for the spec's)
    on the seen classes' training rows, :data:`MODELS_PER_BATCH` at a time (:func:`cryonb.oneshot.train_cosnet_many`:
    each exactly what it would be alone), and write them."""
    missing = [(job, training) for job, training in jobs if not model_path(spec, *job, work_dir, training).is_file()]
    data = {snr: ensure_dataset(recipes(spec)[snr], progress=progress) for snr in dict.fromkeys(job[1] for job, _ in missing)}
    for start in range(0, len(missing), MODELS_PER_BATCH):
        chunk = missing[start : start + MODELS_PER_BATCH]
        targets = [model_path(spec, *job, work_dir, training) for job, training in chunk]
        pools = {snr: ds.indices(split="train", class_split="seen") for snr, ds in data.items()}
        many = [oneshot.COSNetJob((training or spec.cosnet.training).for_job(variant, n_way), data[snr].volumes, data[snr].masks,
                                  data[snr].meta["class_id"].to_numpy(), pools[snr], model_seed(spec, index), target.with_suffix(".run"))
                for ((variant, snr, n_way, index), training), target in zip(chunk, targets)]
        for ((variant, snr, n_way, index), _), target, (net, log) in zip(chunk, targets, oneshot.train_cosnet_many(many, device=device, progress=progress)):
            oneshot.save_cosnet(target, net, log, _model_meta(spec, variant, snr, n_way, index, data[snr], pools[snr]))
            shutil.rmtree(target.with_suffix(".run"), ignore_errors=True)  # fit's resumable state: not needed once the model is written


def ensure_model(spec: Spec, variant: str, snr: float, n_way: int, index: int, work_dir: str | Path, device: torch.device | str = "cpu",
                 progress: bool = True, training: COSNetTrainConfig | None = None) -> Path:
    """The checkpoint of one job: reused if present, else trained on the seen classes' training rows (resumable)."""
    _train_models(spec, [((variant, snr, n_way, index), training)], work_dir, device, progress)
    return model_path(spec, variant, snr, n_way, index, work_dir, training)


def ensure_models(spec: Spec, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True) -> dict[Job, Path]:
    """Every model of the evaluation grid (:meth:`cryonb.spec.EvaluationSpec.jobs`), trained once (together) and reused."""
    jobs = spec.cosnet.evaluation.jobs()
    _train_models(spec, [(job, None) for job in jobs], work_dir, device, progress)
    return {job: model_path(spec, *job, work_dir) for job in jobs}


@dataclass(frozen=True)
class Pools:
    """Row indices of one COS-Net data set: ``unseen`` (every row of the test classes), ``seen_train``
    (training episodes), ``validation`` (every choice made on data: the seen classes' held-out rows and the rows of
    validation-only classes, never a test class); ``labels`` (N,) class ids."""

    labels: np.ndarray
    unseen: np.ndarray
    seen_train: np.ndarray
    validation: np.ndarray


def class_pools(ds: SubtomoDataset) -> Pools:
    split = ds.meta["class_split"].to_numpy()
    validation = np.sort(np.concatenate([ds.indices(split="val", class_split="seen"), np.flatnonzero(split == "validation")]))
    return Pools(ds.meta["class_id"].to_numpy(), np.asarray(ds.indices(split=None, class_split="unseen")),
                 np.asarray(ds.indices(split="train", class_split="seen")), validation.astype(np.int64))


def selection_rows(ds: SubtomoDataset, rows: np.ndarray) -> np.ndarray:
    """``rows`` if none belongs to a test (unseen) class; every choice made from data goes through this gate."""
    rows = np.asarray(rows)
    test = ds.meta["class_split"].to_numpy()[rows] == "unseen"
    if test.any():
        names = sorted(set(ds.meta["pdb_id"].to_numpy()[rows[test]]))
        raise CryoNBError(f"{ds.root.name}: a selection was given {int(test.sum())} row(s) of test classes {names}; "
                          "choices are made on validation data only (seen classes' held-out rows and validation classes)")
    return rows


@dataclass
class Evaluation:
    """Results of the test episodes.

    per_model : one row per trained model (method, snr, train_n_way, seed) × test n-way × k-shot: its accuracy
        over the episodes (and Wilson's interval, which treats episodes as independent: descriptive only).
    query_scores : one row per model × n-way × k-shot × query volume: the fraction of its episodes answered
        correctly; the units of every interval (seeds × classes × volumes, :func:`cryonb.verdicts.crossed_bootstrap`).
    accuracy : one row per method × snr × n-way × k-shot: mean over seeds with that crossed interval.
    episodes : ``[(variant, snr, n_way, k_shot, seed index)] = (episodes, predicted positions)``.
    embeddings : the unseen-pool embeddings of every model.
    """

    per_model: pd.DataFrame
    query_scores: pd.DataFrame
    accuracy: pd.DataFrame
    episodes: dict[tuple[str, float, int, int, int], tuple[list[Episode], np.ndarray]]
    embeddings: dict[Job, torch.Tensor]


def _episode_seed(spec: Spec, n_way: int, k_shot: int) -> int:
    # the same episodes for every model at (n_way, k_shot): comparisons between rows are paired
    return spec.seed + 1000 * n_way + k_shot


def _query_rows(key: dict[str, Any], episodes: list[Episode], pred: np.ndarray, names: pd.Series, labels: np.ndarray) -> pd.DataFrame:
    """Per query volume: the fraction of its episodes answered correctly."""
    frame = pd.DataFrame({"row": [e.query for e in episodes], "correct": [e.label == p for e, p in zip(episodes, pred)]})
    scores = frame.groupby("row")["correct"].agg(["mean", "size"]).reset_index()
    return pd.DataFrame({**key, "row": scores["row"], "class": names[labels[scores["row"]]].to_numpy(),
                         "n_episodes": scores["size"], "correct": scores["mean"]})


def _summarise(query_scores: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy over seeds with the crossed seeds × classes × volumes interval, per method, SNR, n-way, k-shot."""
    rows = []
    for (method, snr, n_train, n_way, k), group in query_scores.groupby(["method", "snr", "train_n_way", "n_way", "k_shot"], sort=False):
        grid = group.pivot_table(index="seed", columns="row", values="correct")
        classes = group.drop_duplicates("row").set_index("row").loc[grid.columns, "class"].to_numpy()
        mean, low, high = crossed_bootstrap(grid.to_numpy(float), classes, seed=0)
        rows.append({"method": method, "snr": snr, "train_n_way": n_train, "n_way": n_way, "k_shot": k, "accuracy": mean,
                     "ci_low": low, "ci_high": high, "n_seeds": len(grid), "n_classes": len(set(classes)), "n_volumes": grid.shape[1]})
    return pd.DataFrame(rows)


def evaluate(spec: Spec, models: dict[Job, Path], data: dict[float, SubtomoDataset], device: torch.device | str = "cpu") -> Evaluation:
    """Score every model on seeded unseen-class episodes, plus three prototype baselines per SNR:
    raw voxels, random-init RB3D features, and the main variant's own COS-Net embedding (per seed)."""
    ev = spec.cosnet.evaluation
    per_model: list[dict[str, Any]] = []
    queries: list[pd.DataFrame] = []
    episodes: dict[tuple[str, float, int, int, int], tuple[list[Episode], np.ndarray]] = {}
    embeddings: dict[Job, torch.Tensor] = {}

    def score(method: str, snr: float, n_train: int, index: int, scorer: Any, ds: SubtomoDataset, w: int, k: int) -> None:
        pools = class_pools(ds)
        row, eps, pred = oneshot.evaluate_episodes(scorer, pools.labels, pools.unseen, w, k, ev.n_episodes, _episode_seed(spec, w, k))
        key = {"method": method, "snr": snr_label(snr), "train_n_way": n_train, "n_way": w, "k_shot": k, "seed": index}
        per_model.append({**key, **{c: row[c] for c in ("accuracy", "ci_low", "ci_high", "n_episodes")}})
        queries.append(_query_rows(key, eps, pred, ds.meta.groupby("class_id")["pdb_id"].first(), pools.labels))
        episodes[(method, snr, w, k, index)] = (eps, pred)

    for (variant, snr, n_train, index), path in models.items():
        net, _ = oneshot.load_cosnet(path, device)
        pools = class_pools(data[snr])
        emb = embeddings[(variant, snr, n_train, index)] = embed(net, data[snr].volumes, pools.unseen, device=device)[0]
        for w in ev.n_ways:
            if ev.scoring_n_way(w) != n_train:
                continue  # each test n-way is scored by one model per seed
            for k in ev.k_shots if variant == ev.main_variant else (1,):
                score(variant, snr, n_train, index, oneshot.cosnet_scorer(net, emb, pools.unseen), data[snr], w, k)
        if variant == ev.main_variant and n_train == ev.train_n_ways[0]:
            for w in ev.n_ways:  # the learned match head against a plain metric on the same embedding
                score(f"prototype on {ev.main_variant} embedding", snr, n_train, index, oneshot.prototype_scorer(emb, pools.unseen), data[snr], w, 1)
    for snr, ds in data.items():
        for method, emb, k_shots in _baseline_embeddings(spec, ds):
            for w in ev.n_ways:
                for k in k_shots:
                    score(method, snr, 0, 0, oneshot.prototype_scorer(emb, class_pools(ds).unseen), ds, w, k)
    query_scores = pd.concat(queries, ignore_index=True)
    return Evaluation(pd.DataFrame(per_model), query_scores, _summarise(query_scores), episodes, embeddings)


def _baseline_embeddings(spec: Spec, ds: SubtomoDataset) -> list[tuple[str, torch.Tensor, tuple[int, ...]]]:
    """Fixed embeddings of the unseen pool with no COS-Net training: raw voxels, and the pooled feature maps of an
    untrained RB3D (what the architecture alone gives)."""
    ev = spec.cosnet.evaluation
    pools = class_pools(ds)
    vox = torch.from_numpy(np.asarray(ds.volumes[pools.unseen], dtype=np.float32).reshape(len(pools.unseen), -1))
    rb3d = random_encoder(RB3DConfig(width=ev.rb3d_width, dropout=0.0), spec.seed).eval()
    with torch.no_grad():
        rb_emb = torch.cat([rb3d.pool(rb3d.features(vox[i : i + 32].reshape(-1, 1, *ds.volumes.shape[1:]))).flatten(1) for i in range(0, len(vox), 32)])
    return [("prototype on voxels", vox, ev.k_shots), ("prototype on random RB3D features", rb_emb, (1,))]


def select_training(spec: Spec, work_dir: str | Path, device: torch.device | str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Score every candidate of ``cosnet.selection`` on validation episodes (no test class, by construction).

    Each candidate trains the main variant (first training n-way, first seed) at the selection SNR; the spec's own
    training is among the candidates when the spec is consistent with this choice, and is then reused by the
    evaluation grid. Returns one row per candidate: its values, validation accuracy with the crossed interval,
    validation Dice, the rule's score (:func:`selection_score`), the winner (highest score) and whether it is the
    spec's own setting.
    """
    sel = spec.cosnet.selection
    if sel is None:
        raise CryoNBError("cosnet.selection: not in this profile's spec; nothing to choose")
    ev = spec.cosnet.evaluation
    ds = ensure_dataset(recipes(spec)[sel.snr], progress=progress)
    pools = class_pools(ds)
    pool = selection_rows(ds, pools.validation)
    names = ds.meta.groupby("class_id")["pdb_id"].first()
    rows = []
    candidates = sel.candidates(spec.cosnet.training)
    _train_models(spec, [((ev.main_variant, sel.snr, ev.train_n_ways[0], 0), training) for _, training in candidates], work_dir, device, progress)
    for values, training in candidates:
        path = model_path(spec, ev.main_variant, sel.snr, ev.train_n_ways[0], 0, work_dir, training)
        net, _ = oneshot.load_cosnet(path, device)
        emb, masks = embed(net, ds.volumes, pool, device=device)
        _, eps, pred = oneshot.evaluate_episodes(oneshot.cosnet_scorer(net, emb, pool), pools.labels, pool, sel.n_way, 1, sel.n_episodes,
                                                 spec.seed + 77, what="validation")
        scores = _query_rows({}, eps, pred, names, pools.labels)
        mean, low, high = crossed_bootstrap(scores["correct"].to_numpy(float)[None, :], scores["class"].to_numpy())
        val_dice = float("nan") if masks is None else float(dice((masks > 0.5).float(), _volumes(ds.masks, pool)).mean())
        rows.append({**{k: str(v) for k, v in values.items()}, "val_accuracy": mean, "ci_low": low, "ci_high": high, "val_dice": val_dice,
                     "score": selection_score(mean, val_dice), "spec": training == spec.cosnet.training, "checkpoint": path.name})
    table = pd.DataFrame(rows)
    table["chosen"] = table.score == table.score.max()
    return table


def selection_score(val_accuracy: float, val_dice: float) -> float:
    """The selection rule, fixed before the run: validation accuracy + validation Dice (decoder mask > 0.5).

    COS-Net is judged on both jobs, and a setting such as ``w_mask_bce`` moves Dice far more than accuracy (at 0
    the masks collapse while accuracy barely changes), so accuracy alone would choose it by noise. Both lie in
    [0, 1] and count equally; a variant without a decoder is scored by accuracy alone."""
    return val_accuracy if math.isnan(val_dice) else val_accuracy + val_dice


def segmentation_rows(spec: Spec, ds: SubtomoDataset) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows to segment (``segmentation.n_per_class`` per unseen class) and the seen-class validation
    rows that choose the CRF weights (``crf.n_val``); both drawn with the spec's seed."""
    pools = class_pools(ds)
    rng = np.random.default_rng(spec.seed)
    per_class = spec.cosnet.segmentation.n_per_class
    seg = np.sort(np.concatenate([rng.choice(pools.unseen[pools.labels[pools.unseen] == c], size=min(per_class, int((pools.labels[pools.unseen] == c).sum())),
                                             replace=False) for c in np.unique(pools.labels[pools.unseen])]))
    val = np.sort(rng.choice(pools.validation, size=min(spec.cosnet.crf.n_val, len(pools.validation)), replace=False))
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
    """CRF weights per SNR, chosen on seen-class validation volumes with the first segmentation model's variant
    (every seed's masks pooled).

    Every weight pair of ``crf`` is scored by validation Dice; pairs that wipe the mask are rejected
    (:func:`cryonb.crf.select_crf_params`). An SNR without that variant borrows the nearest SNR's choice.
    Returns the whole sweep (one row per SNR × pair) and SNR → chosen parameters.
    """
    main_variant, n_main = spec.cosnet.segmentation.models[0][0], spec.cosnet.evaluation.train_n_ways[0]
    grid = spec.cosnet.crf.grid()
    rows, chosen = [], {}
    for snr in data:
        paths = [p for (variant, s, n_train, _), p in models.items() if (variant, s, n_train) == (main_variant, snr, n_main)]
        if not paths:
            continue
        val = selection_rows(data[snr], segmentation_rows(spec, data[snr])[1])
        probs = torch.cat([mask_probabilities(p, data[snr], val, device) for p in paths])
        images = _volumes(data[snr].volumes, val)[:, None].repeat(len(paths), 1, 1, 1, 1)
        swept = sweep_crf_params(probs[:, None], images, _volumes(data[snr].masks, val).repeat(len(paths), 1, 1, 1), grid)
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

    Returns one row per (model, volume) with ``dice_before`` (decoder mask > 0.5) and ``dice_after`` (CRF) against
    the data set's masks (its ``mask_rule``), the same against the other rule's masks (``dice_before_<rule>``...),
    the decoder probabilities and the CRF labels per model, keyed by (variant, SNR, training n-way, seed index).
    """
    wanted = set(spec.cosnet.segmentation.models)
    records, probs, refined = [], {}, {}
    rule = next(iter(data.values())).recipe.simulation.mask_rule
    other = next(r for r in MASK_RULES if r != rule)
    other_masks: dict[int, torch.Tensor] = {}  # the masks depend on the scene only, not on the SNR: one draw
    for (variant, snr, n_train, index), path in models.items():
        if (variant, snr) not in wanted:
            continue
        ds = data[snr]
        seg = segmentation_rows(spec, ds)[0]
        names = ds.meta.groupby("class_id")["pdb_id"].first()
        labels = ds.meta["class_id"].to_numpy()
        pr = probs[(variant, snr, n_train, index)] = mask_probabilities(path, ds, seg, device)
        img, gt = _volumes(ds.volumes, seg)[:, None], _volumes(ds.masks, seg)
        if not other_masks:
            other_masks[0] = torch.from_numpy(masks_by_rule(ds.recipe, seg, other).astype(np.float32))
        q = torch.cat([dense_crf(probs_to_unary(pr[i : i + 4, None]), img[i : i + 4], chosen[snr]) for i in range(0, len(pr), 4)])
        lab = refined[(variant, snr, n_train, index)] = q.argmax(1)
        scores = {"dice_before": dice((pr > 0.5).float(), gt), "dice_after": dice(lab.float(), gt),
                  f"dice_before_{other}": dice((pr > 0.5).float(), other_masks[0]), f"dice_after_{other}": dice(lab.float(), other_masks[0])}
        records += [{"model": variant, "snr": snr_label(snr), "train_n_way": n_train, "seed": index, "row": int(r), "class": names[labels[r]],
                     "mask_rule": rule, **{k: float(v[i]) for k, v in scores.items()}} for i, r in enumerate(seg)]
    return pd.DataFrame(records), probs, refined
