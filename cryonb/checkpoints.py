"""The one place checkpoints are written and read: format version, model kind, config, metadata, safe loading.

Public surface: :func:`save_model`, :func:`load`, :func:`build_model`, :func:`load_model`,
:func:`save_state`, :func:`load_state`, :func:`infer_kind`, :data:`FORMAT_VERSION`, :data:`MODEL_KINDS`.

A model checkpoint is a dict of tensors and plain values::

    {"format_version": 2, "kind": "rb3d" | "rb3d-encoder" | "cosnet", "model": state dict,
     "model_config": {...}, "class_names": [...], "box": 32, "voxel_size_a": 10.0, "seeds": {...}, ...}

A training state (``last.pt`` of :func:`cryonb.train.fit`) has kind ``"training-state"`` and holds the model,
optimiser, scheduler and AMP scaler state dicts and the history as plain lists and dicts.

Everything is read by torch's loader with ``weights_only=True`` (its only call in the package), so a file from
someone else can hold tensors and plain values but can never run code when loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cryonb.errors import CryoNBError
from cryonb.io import atomic_path
from cryonb.models.cosnet import COSNet, COSNetConfig
from cryonb.models.rb3d import RB3D, RB3DConfig

__all__ = [
    "FORMAT_VERSION",
    "MODEL_KINDS",
    "save_model",
    "load",
    "build_model",
    "load_model",
    "save_state",
    "load_state",
    "infer_kind",
]

#: newest format this code writes and reads (a checkpoint without ``format_version`` counts as 1)
FORMAT_VERSION = 2
#: model kinds and the (network, config) classes they build
MODEL_KINDS: dict[str, tuple[type[nn.Module], type]] = {"rb3d": (RB3D, RB3DConfig), "rb3d-encoder": (RB3D, RB3DConfig), "cosnet": (COSNet, COSNetConfig)}
_STATE_KIND = "training-state"
_HINTS = {"cosnet": "use `python -m cryonb oneshot`", "rb3d": "use `python -m cryonb classify`"}
_NAMES = {"rb3d": "RB3D", "rb3d-encoder": "RB3D encoder", "cosnet": "COS-Net"}


def _write(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise CryoNBError(f"{p}: is a folder, expected a checkpoint file (.pt)")
    if not p.is_file():
        raise CryoNBError(f"{p}: no such checkpoint file")
    try:
        # weights_only: tensors and plain values only; a pickled object (code) is refused, never run
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CryoNBError(
            f"{p}: not a readable cryonb checkpoint ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "only tensors and plain values are loaded, never pickled Python objects"
        ) from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CryoNBError(f"{p}: not a cryonb checkpoint (expected a dict with a 'model' state dict)")
    version = payload.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CryoNBError(f"{p}: checkpoint format_version {version!r} is newer than this cryonb reads ({FORMAT_VERSION}); update cryonb")
    return payload


def infer_kind(payload: Mapping[str, Any]) -> str:
    """The model kind a checkpoint declares, or reads off its contents (format 1 and foreign files)."""
    for key in ("kind", "model_type", "arch", "model_name", "model_class"):
        value = payload.get(key)
        if isinstance(value, str):
            value = value.lower().replace("-", "").replace("_", "")
            return {"rb3dencoder": "rb3d-encoder"}.get(value, value)
    config = payload.get("model_config") or {}
    if "variant" in payload and "attention" in config:
        return "cosnet"
    if {"n_classes", "width", "embedding_dim"} <= set(config):
        return "rb3d"
    return "unknown"


def save_model(path: str | os.PathLike[str], model: nn.Module, kind: str, meta: Mapping[str, Any] | None = None,
               state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a model checkpoint atomically.

    kind: a key of :data:`MODEL_KINDS`; ``"rb3d-encoder"`` stores the encoder without its classifier.
    meta: plain values (class names, box, voxel size, seeds, training log...). state: weights to store
    instead of the model's current ones (e.g. the best epoch's).
    """
    if kind not in MODEL_KINDS:
        raise CryoNBError(f"checkpoint kind {kind!r}: expected one of {sorted(MODEL_KINDS)}")
    weights = dict(state) if state is not None else model.state_dict()
    if kind == "rb3d-encoder":
        weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    payload = {**(meta or {}), "format_version": FORMAT_VERSION, "kind": kind, "model_config": asdict(model.config),
               "model": {k: v.detach().cpu() for k, v in weights.items()}}
    return _write(path, payload)


def load(path: str | os.PathLike[str], kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Read a model checkpoint and check it holds one of ``kind``; every problem is one clear error."""
    payload = _read(path)
    found = infer_kind(payload)
    wanted = (kind,) if isinstance(kind, str) else kind
    if found not in wanted:
        hint = _HINTS.get(found, "")
        raise CryoNBError(f"{path}: checkpoint of model {found!r}, expected {' or '.join(map(repr, wanted))}" + (f"; {hint}" if hint else ""))
    return payload


def _config_from_weights(state: Mapping[str, torch.Tensor]) -> RB3DConfig:
    # format-1 fine-tuning checkpoints stored only the weights; their shapes give the architecture
    return RB3DConfig(
        n_classes=int(state["classifier.weight"].shape[0]),
        width=int(state["stem.0.weight"].shape[0]),
        embedding_dim=int(state["embedding.0.weight"].shape[0]),
        pool_size=round((state["embedding.0.weight"].shape[1] / state["stem.0.weight"].shape[0]) ** (1 / 3)),
        norm="batch" if any(k.endswith("running_mean") for k in state) else "none",
    )


def build_model(payload: Mapping[str, Any], source: str, n_classes: int | None = None) -> nn.Module:
    """The network of a loaded checkpoint with its weights, in eval mode.

    n_classes: for an encoder, the size of the fresh classifier head (default: the recorded one).
    """
    kind = infer_kind(payload)
    net_cls, config_cls = MODEL_KINDS[kind]
    state = {k.removeprefix("module."): v for k, v in payload["model"].items()}  # DDP prefixes every key
    try:
        config = dict(payload["model_config"]) if "model_config" in payload else asdict(_config_from_weights(state))
        if n_classes is not None:
            config["n_classes"] = n_classes
        net = net_cls(config_cls(**config))
        if kind == "rb3d-encoder":
            net.load_encoder_state(state)
        else:
            net.load_state_dict(state)
    except (TypeError, KeyError, RuntimeError, CryoNBError) as exc:
        raise CryoNBError(f"{source}: {_NAMES[kind]} checkpoint incompatible with this cryonb version ({' '.join(str(exc).split())[:300]}); retrain it") from exc
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # a diverged training: every prediction would be NaN
        raise CryoNBError(f"{source}: weights {broken[:3]} hold NaN or inf (the training diverged); retrain it")
    return net.eval()


def load_model(path: str | os.PathLike[str], kind: str | tuple[str, ...], n_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load` then :func:`build_model`: the network (eval mode, CPU) and the checkpoint's metadata."""
    payload = load(path, kind)
    return build_model(payload, str(path), n_classes), payload


def save_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write a training state (plain values and tensors only; see :func:`cryonb.train.fit`)."""
    return _write(path, {**state, "format_version": FORMAT_VERSION, "kind": _STATE_KIND})


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state written by :func:`save_state`."""
    payload = _read(path)
    if payload.get("kind") != _STATE_KIND:
        raise CryoNBError(f"{path}: not a training state (kind {payload.get('kind')!r}); expected a last.pt written by cryonb.train.fit")
    return payload
