"""The experiment spec: every setting of both papers' experiments, read once from ``params/<profile>.yaml``.

Public surface: :class:`Spec`, :class:`CSSLSpec`, :class:`COSNetSpec` (and their parts), :func:`load_profile`,
:func:`profile_path`, :func:`list_profiles`, :func:`parse_snr`, :data:`PROFILE_SECTIONS`.

A profile file has four top-level entries::

    seed: 0            # every random source of every step derives from it
    device: auto       # auto (CUDA when present) | cpu | cuda | cuda:1
    cssl:   {data, model, pretrain, finetune, sweep, classifier}   # Gupta et al. 2022
    cosnet: {data, model, train, loss, steps_per_epoch, evaluation, segmentation, crf}   # COS-Net
    notebooks: {NN_name: {presentation knobs}}

Each block becomes the frozen, validated config object its step takes (``TrainConfig``, ``PretrainConfig``,
``FinetuneConfig``, ``COSNetTrainConfig``...), composed rather than copied: a learning rate written here reaches
``cryonb.train.fit`` as the same object. Notebooks, ``python -m cryonb train`` and ``make reproduce`` all read
this one spec, so they train the same models (same content keys, same checkpoints).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cryonb.crf import CRFParams
from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.finetune import FinetuneConfig, SweepConfig
from cryonb.models.cosnet import VARIANTS, COSNetConfig
from cryonb.models.rb3d import RB3DConfig
from cryonb.oneshot import COSNetTrainConfig, LossConfig
from cryonb.paths import repo_root
from cryonb.pretrain import PretrainConfig
from cryonb.simulate.config import check_snr
from cryonb.structures import ALL_CLASSES
from cryonb.train import TrainConfig

__all__ = [
    "PROFILE_SECTIONS",
    "DataSpec",
    "COSNetDataSpec",
    "ClassifierSpec",
    "CSSLSpec",
    "EvaluationSpec",
    "SegmentationSpec",
    "CRFSpec",
    "SelectionSpec",
    "COSNetSpec",
    "Spec",
    "Profile",
    "parse_snr",
    "profile_path",
    "list_profiles",
    "load_profile",
]

#: the top-level entries of a profile file
PROFILE_SECTIONS = ("seed", "device", "cssl", "cosnet", "notebooks")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
T = TypeVar("T")


def parse_snr(value: Any) -> float:
    """An SNR from a spec: a number > 0, or ``.inf`` / ``inf`` / ``∞`` for noise-free data."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", ".inf", "∞", "infinity"):
        return float("inf")
    if isinstance(value, bool):
        raise CryoNBError(f"snr={value!r}: expected a number > 0 (or .inf for no noise)")
    return check_snr(value)


def _snrs(values: Any, what: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise CryoNBError(f"{what}={values!r}: expected a non-empty list of SNRs")
    snrs = tuple(parse_snr(v) for v in values)
    if len(set(snrs)) != len(snrs):
        raise CryoNBError(f"{what}={list(values)}: an SNR appears twice")
    return snrs


def _mapping(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise CryoNBError(f"{what}: expected a mapping of settings, got {type(raw).__name__} {raw!r}")
    return dict(raw)


def _rb3d_block(raw: Any, what: str) -> dict[str, Any]:
    """A block of a step that uses RB3D; the architecture is set once, in ``cssl.model``."""
    raw = _mapping(raw, what)
    if "model" in raw:
        raise CryoNBError(f"{what}: the RB3D architecture is set once, in cssl.model (pre-training and fine-tuning share it)")
    return raw


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CryoNBError(f"{what}={value!r}: expected an integer ≥ 1")
    return value


def _model_fields(raw: Any, config_cls: type, what: str, forbidden: tuple[str, ...]) -> dict[str, Any]:
    raw = _mapping(raw, what)
    reject_unknown_keys(raw, config_cls, what)
    set_elsewhere = sorted(set(raw) & set(forbidden))
    if set_elsewhere:
        raise CryoNBError(f"{what}: {set_elsewhere} cannot be set here (they come from the data or the variant)")
    return raw


@dataclass(frozen=True)
class DataSpec:
    """Which simulated data sets a paper's experiment uses: one per SNR, ``n_per_class`` subtomograms per class."""

    snrs: tuple[float, ...]
    n_per_class: int

    @classmethod
    def from_dict(cls, raw: Any, what: str) -> "DataSpec":
        raw = _mapping(raw, what)
        reject_unknown_keys(raw, cls, what)
        return cls(snrs=_snrs(raw.get("snrs"), f"{what}.snrs"), n_per_class=_positive_int(raw.get("n_per_class"), f"{what}.n_per_class"))


@dataclass(frozen=True)
class COSNetDataSpec(DataSpec):
    """COS-Net's data sets: every bundled class; ``unseen`` are the test classes, ``validation`` the classes only
    choices made from data see (the rest are seen). The lists are written out in the spec and must equal
    :func:`cryonb.structures.cosnet_split`'s rule (a test checks)."""

    unseen: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: Any, what: str) -> "COSNetDataSpec":
        raw = _mapping(raw, what)
        reject_unknown_keys(raw, cls, what)
        lists = {}
        for key in ("unseen", "validation"):
            values = raw.get(key)
            if not isinstance(values, (list, tuple)) or not values:
                raise CryoNBError(f"{what}.{key}={values!r}: expected a non-empty list of PDB ids")
            unknown = sorted(set(map(str, values)) - set(ALL_CLASSES))
            if unknown:
                raise CryoNBError(f"{what}.{key}: {unknown} are not bundled structures ({', '.join(ALL_CLASSES)})")
            lists[key] = tuple(str(v).lower() for v in values)
        both = sorted(set(lists["unseen"]) & set(lists["validation"]))
        if both:
            raise CryoNBError(f"{what}: {both} are both unseen (test) and validation classes")
        base = DataSpec.from_dict({k: raw.get(k) for k in ("snrs", "n_per_class")}, what)
        return cls(base.snrs, base.n_per_class, **lists)


@dataclass(frozen=True)
class ClassifierSpec:
    """Notebook 09's RB3D classifier: trained from random weights on simulated subtomograms of ``classes``
    (the molecules of its tomogram) at ``snr``; architecture from ``cssl.model``."""

    classes: tuple[str, ...]
    n_per_class: int
    snr: float
    finetune: FinetuneConfig

    @classmethod
    def from_dict(cls, raw: Any, model: RB3DConfig, what: str) -> "ClassifierSpec":
        raw = _mapping(raw, what)
        classes = raw.pop("classes", None)
        if not isinstance(classes, (list, tuple)) or len(classes) < 2 or len(set(map(str, classes))) != len(classes):
            raise CryoNBError(f"{what}.classes={classes!r}: expected a list of at least two different PDB ids")
        n = _positive_int(raw.pop("n_per_class", None), f"{what}.n_per_class")
        snr = parse_snr(raw.pop("snr", None))
        return cls(tuple(str(c).lower() for c in classes), n, snr, _section(what, lambda: FinetuneConfig.from_dict(_rb3d_block(raw, what), model)))


@dataclass(frozen=True)
class CSSLSpec:
    """Gupta et al. 2022: data sets, the shared RB3D, pre-training, fine-tuning, the sweep, and notebook 09's classifier."""

    data: DataSpec
    model: RB3DConfig
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    sweep: SweepConfig
    classifier: ClassifierSpec

    @classmethod
    def from_dict(cls, raw: Any) -> "CSSLSpec":
        raw = _mapping(raw, "cssl")
        reject_unknown_keys(raw, cls, "cssl")
        model = _section("cssl.model", lambda: RB3DConfig(**_model_fields(raw.get("model"), RB3DConfig, "cssl.model", ("n_classes",))))
        return cls(
            data=_section("cssl.data", lambda: DataSpec.from_dict(raw.get("data"), "cssl.data")),
            model=model,
            pretrain=_section("cssl.pretrain", lambda: PretrainConfig.from_dict(_rb3d_block(raw.get("pretrain"), "cssl.pretrain"), model)),
            finetune=_section("cssl.finetune", lambda: FinetuneConfig.from_dict(_rb3d_block(raw.get("finetune"), "cssl.finetune"), model)),
            sweep=_section("cssl.sweep", lambda: SweepConfig.from_dict(_mapping(raw.get("sweep"), "cssl.sweep"))),
            classifier=ClassifierSpec.from_dict(raw.get("classifier"), model, "cssl.classifier"),
        )


@dataclass(frozen=True)
class EvaluationSpec:
    """COS-Net's Table 1 grid: which variants are trained at which SNRs and n-ways, and how they are tested.

    variants are trained at ``table_snrs``; ``main_variant`` also at ``main_snrs``; one model per training
    n-way. Tests: every n-way in ``n_ways`` × k in ``k_shots`` (k > 1 for the main variant only), ``n_episodes``
    seeded episodes each. seeds: independently trained models per (variant, SNR, n-way), the statistical unit of
    every COS-Net claim. rb3d_width: the random-init RB3D feature baseline.
    """

    variants: tuple[str, ...]
    main_variant: str
    table_snrs: tuple[float, ...]
    main_snrs: tuple[float, ...]
    train_n_ways: tuple[int, ...]
    n_ways: tuple[int, ...]
    k_shots: tuple[int, ...]
    n_episodes: int
    seeds: int = 1
    rb3d_width: int = 16

    @classmethod
    def from_dict(cls, raw: Any, what: str) -> "EvaluationSpec":
        raw = _mapping(raw, what)
        reject_unknown_keys(raw, cls, what)
        variants = tuple(raw.get("variants") or ())
        unknown = [v for v in variants if v not in VARIANTS] + ([] if raw.get("main_variant") in VARIANTS else [raw.get("main_variant")])
        if unknown or not variants:
            raise CryoNBError(f"{what}: unknown COS-Net variant(s) {unknown}; expected some of {sorted(VARIANTS)}")
        ints = {k: tuple(_positive_int(v, f"{what}.{k}") for v in raw.get(k) or ()) for k in ("train_n_ways", "n_ways", "k_shots")}
        for k, v in ints.items():
            if not v:
                raise CryoNBError(f"{what}.{k}: expected a non-empty list")
        small = [n for n in (*ints["train_n_ways"], *ints["n_ways"]) if n < 2]
        if small:
            raise CryoNBError(f"{what}: n-way {small[0]}: expected ≥ 2")
        return cls(variants=variants, main_variant=raw["main_variant"], table_snrs=_snrs(raw.get("table_snrs"), f"{what}.table_snrs"),
                   main_snrs=_snrs(raw.get("main_snrs"), f"{what}.main_snrs"), **ints,
                   n_episodes=_positive_int(raw.get("n_episodes"), f"{what}.n_episodes"),
                   seeds=_positive_int(raw.get("seeds", 1), f"{what}.seeds"),
                   rb3d_width=_positive_int(raw.get("rb3d_width", 16), f"{what}.rb3d_width"))

    def jobs(self) -> list[tuple[str, float, int, int]]:
        """(variant, SNR, training n-way, seed index) of every model the grid trains, in a fixed order."""
        cells = [(v, s, n) for s in self.table_snrs for v in self.variants for n in self.train_n_ways]
        cells += [(self.main_variant, s, n) for s in self.main_snrs for n in self.train_n_ways if (self.main_variant, s, n) not in cells]
        return [(*cell, i) for cell in cells for i in range(self.seeds)]

    def scoring_n_way(self, n_way: int) -> int:
        """The training n-way of the model that scores test n-way ``n_way``: its own if trained, else the first."""
        return n_way if n_way in self.train_n_ways else self.train_n_ways[0]


@dataclass(frozen=True)
class SegmentationSpec:
    """Notebook 08: which (variant, SNR) models segment, ``n_per_class`` unseen test volumes per class each."""

    models: tuple[tuple[str, float], ...]
    n_per_class: int

    @classmethod
    def from_dict(cls, raw: Any, what: str) -> "SegmentationSpec":
        raw = _mapping(raw, what)
        reject_unknown_keys(raw, cls, what)
        models = raw.get("models") or ()
        if not models or any(not isinstance(m, (list, tuple)) or len(m) != 2 or m[0] not in VARIANTS for m in models):
            raise CryoNBError(f"{what}.models={models!r}: expected a list of [variant, snr] pairs, variants among {sorted(VARIANTS)}")
        without_decoder = [m[0] for m in models if not VARIANTS[m[0]]["decoder"]]
        if without_decoder:
            raise CryoNBError(f"{what}.models: {without_decoder} have no decoder, so they cannot segment")
        return cls(tuple((str(v), parse_snr(s)) for v, s in models), _positive_int(raw.get("n_per_class"), f"{what}.n_per_class"))


@dataclass(frozen=True)
class CRFSpec:
    """The dense CRF's candidate weights (a grid chosen on seen-class validation volumes), fixed widths, and
    ``n_val`` validation volumes."""

    w_bilateral: tuple[float, ...]
    w_spatial: tuple[float, ...]
    sigma_pos_vox: float = 3.0
    sigma_int: float = 1.0
    sigma_smooth_vox: float = 1.0
    n_iter: int = 5
    n_val: int = 8

    @classmethod
    def from_dict(cls, raw: Any, what: str) -> "CRFSpec":
        raw = _mapping(raw, what)
        reject_unknown_keys(raw, cls, what)
        for k in ("w_bilateral", "w_spatial"):
            if not isinstance(raw.get(k), (list, tuple)) or not raw[k]:
                raise CryoNBError(f"{what}.{k}={raw.get(k)!r}: expected a non-empty list of weights ≥ 0")
            raw[k] = tuple(float(v) for v in raw[k])
        spec = cls(**raw)
        spec.grid()  # validates every candidate
        return spec

    def grid(self) -> list[CRFParams]:
        return [CRFParams(w_bilateral=wb, w_spatial=ws, sigma_pos_vox=self.sigma_pos_vox, sigma_int=self.sigma_int,
                          sigma_smooth_vox=self.sigma_smooth_vox, n_iter=self.n_iter)
                for wb in self.w_bilateral for ws in self.w_spatial]


#: training settings a selection grid may vary, and where each lives in COSNetTrainConfig
SELECTABLE = {"lr": "train", "betas": "train", "epochs": "train", "weight_decay": "train", "w_mask_bce": "loss", "w_dice": "loss",
              "match_head": "model", "feature_dim": "model", "feature_pool": "model", "steps_per_epoch": ""}


@dataclass(frozen=True)
class SelectionSpec:
    """How COS-Net's training settings are chosen: every combination of ``grid`` trains the main variant (first
    training n-way, first seed) at ``snr`` and is scored on ``n_episodes`` ``n_way`` validation episodes, which never
    contain a test class; the spec's own settings must be the winner (notebook 07 reruns the choice and says so)."""

    snr: float
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    n_way: int = 2
    n_episodes: int = 500

    @classmethod
    def from_dict(cls, raw: Any, what: str) -> "SelectionSpec":
        raw = _mapping(raw, what)
        reject_unknown_keys(raw, cls, what)
        grid = _mapping(raw.get("grid"), f"{what}.grid")
        unknown = sorted(set(grid) - set(SELECTABLE))
        if unknown or not grid:
            raise CryoNBError(f"{what}.grid: {unknown or 'nothing'} to choose; expected some of {sorted(SELECTABLE)}")
        values = tuple((k, tuple(tuple(x) if isinstance(x, list) else x for x in v)) for k, v in grid.items() if isinstance(v, list) and v)
        if len(values) != len(grid):
            raise CryoNBError(f"{what}.grid: every entry must be a non-empty list of candidate values")
        n_way = _positive_int(raw.get("n_way", 2), f"{what}.n_way")
        if n_way < 2:
            raise CryoNBError(f"{what}.n_way={n_way}: expected ≥ 2")
        return cls(parse_snr(raw.get("snr")), values, n_way, _positive_int(raw.get("n_episodes", 500), f"{what}.n_episodes"))

    def candidates(self, base: COSNetTrainConfig) -> list[tuple[dict[str, Any], COSNetTrainConfig]]:
        """Every combination of the grid applied to ``base``: (the values, the training config)."""
        combos: list[dict[str, Any]] = [{}]
        for key, options in self.grid:
            combos = [{**c, key: v} for c in combos for v in options]
        return [(c, _with(base, c)) for c in combos]


def _with(base: COSNetTrainConfig, values: dict[str, Any]) -> COSNetTrainConfig:
    parts: dict[str, dict[str, Any]] = {"train": {}, "loss": {}, "model": {}, "": {}}
    for key, value in values.items():
        parts[SELECTABLE[key]][key] = value
    return replace(base, train=replace(base.train, **parts["train"]), loss=replace(base.loss, **parts["loss"]),
                   model=replace(base.model, **parts["model"]), **parts[""])


@dataclass(frozen=True)
class COSNetSpec:
    """COS-Net: data sets, the training of every model (variant and n-way set per job), the evaluation grid,
    the segmentation and the CRF."""

    data: COSNetDataSpec
    training: COSNetTrainConfig
    evaluation: EvaluationSpec
    segmentation: SegmentationSpec
    crf: CRFSpec
    selection: SelectionSpec | None = None

    @classmethod
    def from_dict(cls, raw: Any) -> "COSNetSpec":
        raw = _mapping(raw, "cosnet")
        known = {"data", "model", "train", "loss", "steps_per_epoch", "recalibrate_bn", "evaluation", "segmentation", "crf", "selection"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CryoNBError(f"unknown cosnet parameter(s) {unknown}; expected some of {sorted(known)}")
        model = _section("cosnet.model", lambda: COSNetConfig(**_model_fields(raw.get("model"), COSNetConfig, "cosnet.model", ("attention", "decoder", "box"))))
        defaults = COSNetTrainConfig()
        training = _section("cosnet", lambda: COSNetTrainConfig(
            model=model, train=TrainConfig.from_dict(_mapping(raw.get("train"), "cosnet.train"), defaults.train),
            loss=LossConfig.from_dict(_mapping(raw.get("loss"), "cosnet.loss")),
            steps_per_epoch=_positive_int(raw.get("steps_per_epoch", defaults.steps_per_epoch), "cosnet.steps_per_epoch"),
            recalibrate_bn=bool(raw.get("recalibrate_bn", defaults.recalibrate_bn))))
        spec = cls(
            data=_section("cosnet.data", lambda: COSNetDataSpec.from_dict(raw.get("data"), "cosnet.data")),
            training=training,
            evaluation=_section("cosnet.evaluation", lambda: EvaluationSpec.from_dict(raw.get("evaluation"), "cosnet.evaluation")),
            segmentation=_section("cosnet.segmentation", lambda: SegmentationSpec.from_dict(raw.get("segmentation"), "cosnet.segmentation")),
            crf=_section("cosnet.crf", lambda: CRFSpec.from_dict(raw.get("crf"), "cosnet.crf")),
            selection=_section("cosnet.selection", lambda: SelectionSpec.from_dict(raw["selection"], "cosnet.selection")) if "selection" in raw else None,
        )
        if max(spec.evaluation.n_ways) > len(spec.data.unseen):
            raise CryoNBError(f"cosnet.evaluation.n_ways {list(spec.evaluation.n_ways)}: a test episode cannot have more ways than the "
                              f"{len(spec.data.unseen)} unseen classes")
        seen = len(ALL_CLASSES) - len(spec.data.unseen) - len(spec.data.validation)
        if max(spec.evaluation.train_n_ways) > seen:
            raise CryoNBError(f"cosnet.evaluation.train_n_ways {list(spec.evaluation.train_n_ways)}: more ways than the {seen} seen classes")
        used = {*spec.evaluation.table_snrs, *spec.evaluation.main_snrs, *(s for _, s in spec.segmentation.models),
                *([spec.selection.snr] if spec.selection else [])}
        missing = sorted(used - set(spec.data.snrs))
        if missing:
            raise CryoNBError(f"cosnet: SNR(s) {missing} are evaluated but have no data set; add them to cosnet.data.snrs")
        trained = set(spec.evaluation.jobs())
        untrained = [m for m in spec.segmentation.models if not any(j[:2] == m for j in trained)]
        if untrained:
            raise CryoNBError(f"cosnet.segmentation.models: {untrained} are not trained by cosnet.evaluation (variants × table_snrs, main_variant × main_snrs)")
        return spec


@dataclass(frozen=True)
class Spec:
    """Both papers' experiments in one profile, plus the seed and device every step uses."""

    seed: int
    device: str
    cssl: CSSLSpec
    cosnet: COSNetSpec

    @classmethod
    def from_dict(cls, raw: Any, source: str = "spec") -> "Spec":
        """Validate a profile's experiment entries; every error names ``source`` and the key path."""
        raw = _mapping(raw, source)
        raw.pop("notebooks", None)
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise CryoNBError(f"{source}: unknown top-level entr(ies) {unknown}; expected {list(PROFILE_SECTIONS)}")
        try:
            seed = raw.get("seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
                raise CryoNBError(f"seed={seed!r}: expected an integer in [0, 2^31)")
            device = str(raw.get("device", "auto"))
            if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
                raise CryoNBError(f"device={device!r}: expected auto, cpu, cuda, cuda:N or mps")
            return cls(seed=seed, device=device, cssl=CSSLSpec.from_dict(raw.get("cssl")), cosnet=COSNetSpec.from_dict(raw.get("cosnet")))
        except CryoNBError as exc:
            raise CryoNBError(f"{source}: {exc}") from None


def _section(what: str, build: Callable[[], T]) -> T:
    """Run ``build``; a TypeError from a dataclass (a missing or misspelt field) becomes a CryoNBError naming ``what``."""
    try:
        return build()
    except TypeError as exc:
        raise CryoNBError(f"{what}: {exc}") from None
    except CryoNBError as exc:
        message = str(exc)
        raise CryoNBError(message if message.startswith(what) else f"{what}: {message}") from None


@dataclass(frozen=True)
class Profile:
    """A parsed profile file: the spec, each notebook's presentation knobs, and the raw experiment entries
    (what the runner hands to each notebook as its ``spec`` parameter)."""

    name: str
    path: Path
    spec: Spec
    notebooks: dict[str, dict[str, Any]]
    raw_spec: dict[str, Any]


def profile_path(profile: str) -> Path:
    """``params/<profile>.yaml``; the name must be a plain word, so no path can leave ``params/``."""
    if not isinstance(profile, str) or not _PROFILE_NAME.fullmatch(profile):
        raise CryoNBError(f"profile {profile!r}: expected a name of letters, digits, '-' and '_' (e.g. quick, paper, smoke)")
    path = repo_root() / "params" / f"{profile}.yaml"
    if not path.is_file():
        raise CryoNBError(f"unknown profile {profile!r}: no {path}; profiles are {', '.join(list_profiles())}")
    return path


def list_profiles() -> list[str]:
    return sorted(p.stem for p in (repo_root() / "params").glob("*.yaml"))


def load_profile(profile: str) -> Profile:
    """Read and validate ``params/<profile>.yaml``; errors name the file and the key."""
    path = profile_path(profile)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CryoNBError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(doc, dict):
        raise CryoNBError(f"{path}: expected a mapping with entries {list(PROFILE_SECTIONS)}")
    notebooks = _mapping(doc.get("notebooks"), f"{path}: notebooks")
    bad = [k for k, v in notebooks.items() if not isinstance(v, dict)]
    if bad:
        raise CryoNBError(f"{path}: notebooks.{bad[0]}: expected a mapping of that notebook's parameters")
    raw_spec = {k: v for k, v in doc.items() if k != "notebooks"}
    return Profile(profile, path, Spec.from_dict(raw_spec, str(path.relative_to(repo_root()))), notebooks, raw_spec)
