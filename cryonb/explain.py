"""3-D Grad-CAM (captum ``LayerGradCam``) and numbers that say how wide and where a map looks.

Public surface: :func:`last_conv3d`, :func:`grad_cam_3d`, :func:`half_max_fraction`,
:func:`mask_mass_fraction`, :func:`half_max_dice`, :func:`cam_metrics`, :func:`randomised_copy`,
:func:`rank_correlation` and :func:`overlay_figure`.

The CSSL paper shows Grad-CAM pictures (its Figure 8) and says the MoCo-pretrained classifier "considers
wider regions". Here that claim becomes two numbers per subtomogram: the fraction of the volume above
half the map's maximum (width), and the overlap of the map with the particle's noise-free mask
(where: the share of map mass inside the mask, and the Dice of the half-max region with the mask).

NOTE: volumes are torch ``(batch, 1, z, y, x)`` float32; maps are returned ``(batch, z, y, x)``,
upsampled trilinearly from the layer's grid to the input grid (32³ for the CSSL data).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cryonb.errors import CryoNBError

__all__ = [
    "last_conv3d",
    "grad_cam_3d",
    "half_max_fraction",
    "mask_mass_fraction",
    "half_max_dice",
    "cam_metrics",
    "randomised_copy",
    "rank_correlation",
    "overlay_figure",
]


def last_conv3d(model: nn.Module) -> nn.Conv3d:
    """The model's ``last_conv`` if it names one (RB3D does), else the last ``nn.Conv3d`` in ``modules()`` order.

    Raises :class:`CryoNBError` when the model has none.
    """
    named = getattr(model, "last_conv", None)
    if isinstance(named, nn.Conv3d):
        return named
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise CryoNBError(f"{type(model).__name__}: no nn.Conv3d layer for Grad-CAM; pass layer= explicitly")
    return convs[-1]


def grad_cam_3d(
    model: nn.Module,
    volumes: torch.Tensor,
    target: int | torch.Tensor | None = None,
    layer: nn.Module | None = None,
    size: tuple[int, int, int] | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Grad-CAM of ``model`` at ``layer`` (default: the last Conv3d), upsampled to the input grid.

    Parameters
    ----------
    model : classifier mapping (B, 1, z, y, x) → (B, n_classes) logits; put in eval mode here.
    volumes : (B, 1, z, y, x) float32 on the model's device.
    target : class whose logit is explained: an int, a (B,) tensor of class ids, or None for the
        predicted class of each volume.
    layer : module whose output is weighted by its pooled gradients.
    size : output grid (z, y, x); default the input's.
    batch_size : volumes per backward pass (memory).

    Returns
    -------
    (B, z, y, x) float32 CPU tensor, ReLU'd (non-negative) and trilinearly upsampled; not normalised.
    """
    from captum.attr import LayerGradCam

    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise CryoNBError(f"grad_cam_3d: volumes must be (batch, 1, z, y, x), got shape {tuple(volumes.shape)}")
    layer = layer if layer is not None else last_conv3d(model)
    size = size or tuple(volumes.shape[2:])  # type: ignore[assignment]
    was_training = model.training
    model.eval()
    cam = LayerGradCam(model, layer)
    out = []
    try:
        for start in range(0, volumes.shape[0], batch_size):
            x = volumes[start : start + batch_size]
            if target is None:
                with torch.no_grad():
                    t: Any = model(x).argmax(dim=1)
            elif isinstance(target, torch.Tensor):
                t = target[start : start + batch_size].to(x.device)
            else:
                t = int(target)
            a = cam.attribute(x, target=t, relu_attributions=True)  # (b, 1, z', y', x')
            a = F.interpolate(a.detach().float(), size=size, mode="trilinear", align_corners=False)
            out.append(a[:, 0].clamp_min(0).cpu())  # trilinear keeps ≥ 0; clamp guards rounding
    finally:
        model.train(was_training)
    return torch.cat(out)


def _as_batch(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    a = np.asarray(cam.detach().cpu() if isinstance(cam, torch.Tensor) else cam, dtype=np.float64)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise CryoNBError(f"expected maps of shape (batch, z, y, x) or (z, y, x), got {a.shape}")
    return a


def half_max_fraction(cam: torch.Tensor | np.ndarray) -> np.ndarray:
    """Fraction of voxels at or above half of each map's maximum (how *wide* the map is).

    cam: (B, z, y, x) non-negative maps. Returns (B,) in (0, 1]; NaN for an all-zero map.
    """
    a = _as_batch(cam)
    peak = a.reshape(len(a), -1).max(axis=1)
    frac = (a >= 0.5 * peak[:, None, None, None]).reshape(len(a), -1).mean(axis=1)
    return np.where(peak > 0, frac, np.nan)


def mask_mass_fraction(cam: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Share of each map's total mass that falls inside the (binary) mask.

    cam, mask: (B, z, y, x). Returns (B,) in [0, 1]; NaN for an all-zero map. A map that ignores the
    particle scores the mask's volume fraction; one confined to the particle scores 1.
    """
    a, m = _as_batch(cam), _as_batch(mask) > 0
    if a.shape != m.shape:
        raise CryoNBError(f"cam {a.shape} and mask {m.shape} must have the same shape")
    total = a.reshape(len(a), -1).sum(axis=1)
    inside = (a * m).reshape(len(a), -1).sum(axis=1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def half_max_dice(cam: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Dice of the half-max region of each map with the mask: 2|A∩M| / (|A| + |M|).

    cam, mask: (B, z, y, x). Returns (B,) in [0, 1]; NaN for an all-zero map.
    """
    a, m = _as_batch(cam), _as_batch(mask) > 0
    if a.shape != m.shape:
        raise CryoNBError(f"cam {a.shape} and mask {m.shape} must have the same shape")
    peak = a.reshape(len(a), -1).max(axis=1)
    region = a >= 0.5 * peak[:, None, None, None]
    inter = (region & m).reshape(len(a), -1).sum(axis=1)
    denom = region.reshape(len(a), -1).sum(axis=1) + m.reshape(len(a), -1).sum(axis=1)
    return np.where(peak > 0, 2.0 * inter / np.maximum(denom, 1), np.nan)


def cam_metrics(cam: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> pd.DataFrame:
    """One row per map: ``half_max_fraction``, ``mask_mass_fraction``, ``half_max_dice``, ``mask_fraction``.

    ``mask_fraction`` (the mask's share of the volume) is the chance level of ``mask_mass_fraction``.
    """
    m = _as_batch(mask)
    return pd.DataFrame({
        "half_max_fraction": half_max_fraction(cam),
        "mask_mass_fraction": mask_mass_fraction(cam, m),
        "half_max_dice": half_max_dice(cam, m),
        "mask_fraction": (m > 0).reshape(len(m), -1).mean(axis=1),
    })


def randomised_copy(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A deep copy of ``model`` with every parameter redrawn (Adebayo et al. 2018 model randomisation).

    Weights become N(0, 1/fan_in) draws from ``generator`` (a He-like scale so activations stay finite);
    biases and norm shifts become zero, norm scales one. A faithful saliency method must give a map that
    differs from the trained model's.
    """
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return clone


def rank_correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Spearman rank correlation between paired maps, per volume.

    a, b: (B, z, y, x). Returns (B,); NaN where a map is constant.
    """
    from scipy.stats import spearmanr

    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise CryoNBError(f"maps {x.shape} and {y.shape} must have the same shape")
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        u, v = x[i].ravel(), y[i].ravel()
        if np.ptp(u) > 0 and np.ptp(v) > 0:
            out[i] = spearmanr(u, v).statistic
    return out


def overlay_figure(volume: np.ndarray, cams: dict[str, np.ndarray], mask: np.ndarray | None = None, title: str = "") -> Any:
    """Orthogonal central slices (z, y, x) of a subtomogram with each map overlaid, one row per map.

    volume: (z, y, x) density; cams: name → (z, y, x) map; mask: optional (z, y, x) outline drawn in white.
    Returns a matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = len(cams)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    c = [s // 2 for s in volume.shape]

    def cut(a: np.ndarray, axis: int) -> np.ndarray:
        return np.take(a, c[axis], axis=axis)

    for r, (name, cam) in enumerate(cams.items()):
        peak = float(np.max(cam)) or 1.0
        for axis, label in enumerate(("z", "y", "x")):
            ax = axes[r, axis]
            ax.imshow(cut(volume, axis), cmap="gray")
            ax.imshow(cut(cam, axis) / peak, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if mask is not None:
                ax.contour(cut(mask, axis), levels=[0.5], colors="white", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {label} = {c[axis]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
