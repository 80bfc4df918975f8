"""Fully connected 3-D conditional random field (Krähenbühl & Koltun 2011) with mean-field inference.

Energy (COS-Net paper, Sec. 2):

    E(x) = Σ_i ψ_u(x_i) + Σ_{i<j} μ(x_i, x_j) [ w1 exp(-|p_i-p_j|²/2σα² - |I_i-I_j|²/2σβ²)
                                              + w2 exp(-|p_i-p_j|²/2σγ²) ]

with Potts compatibility μ = [x_i ≠ x_j], positions p in voxels and intensities I in the units of
the input volume (z-scores for cryonb subtomograms).

Mean field needs, per iteration, the filtered marginals m_i(l) = Σ_{j≠i} k(i, j) Q_j(l):

* the spatial (appearance-free) Gaussian is separable and computed exactly by three 1-D convolutions;
* the bilateral kernel is approximated with a *bilateral grid* (Paris & Durand 2006): marginals are
  splatted with multilinear weights into a 4-D grid over (z, y, x, intensity) sampled every
  σ/oversample, blurred with a separable Gaussian and sliced back. Splat (index_add) and slice
  (gather) are exact transposes of each other, so the whole step runs on CPU or GPU with plain torch.

:func:`dense_crf_bruteforce` is the O(N²) reference used by the tests (N ≤ ~3,000 voxels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cryonb.errors import CryoNBError, reject_unknown_keys
from cryonb.metrics import dice

__all__ = [
    "CRFParams",
    "dense_crf",
    "dense_crf_bruteforce",
    "probs_to_unary",
    "sweep_crf_params",
    "select_crf_params",
]


@dataclass(frozen=True)
class CRFParams:
    """Kernel weights and widths of the dense CRF.

    Attributes
    ----------
    w_bilateral, w_spatial : float
        w1 and w2 of the paper (≥ 0). Both 0 gives the unary-only CRF (argmax of the input).
        NOTE: the kernels are unnormalised as in the paper, so a message sums over every neighbour
        (≈ (2π)^{3/2} σ³ of them): weights are small numbers, ~1/(that count) gives a message of ~1 nat.
    sigma_pos_vox : float
        σα, spatial width of the bilateral kernel in voxels.
    sigma_int : float
        σβ, intensity width of the bilateral kernel, in input-intensity units.
    sigma_smooth_vox : float
        σγ, width of the spatial smoothness kernel in voxels.
    n_iter : int
        Mean-field iterations.
    oversample : float
        Bilateral grid cells per σ (higher = more accurate, slower).
    """

    w_bilateral: float = 0.01
    w_spatial: float = 0.1
    sigma_pos_vox: float = 3.0
    sigma_int: float = 1.0
    sigma_smooth_vox: float = 1.0
    n_iter: int = 5
    oversample: float = 1.5

    def __post_init__(self) -> None:
        for name in ("w_bilateral", "w_spatial"):
            if getattr(self, name) < 0:
                raise CryoNBError(f"CRF parameter {name}={getattr(self, name)}: expected ≥ 0")
        for name in ("sigma_pos_vox", "sigma_int", "sigma_smooth_vox", "oversample"):
            if not getattr(self, name) > 0:
                raise CryoNBError(f"CRF parameter {name}={getattr(self, name)}: expected > 0")
        if self.n_iter < 1:
            raise CryoNBError(f"CRF parameter n_iter={self.n_iter}: expected ≥ 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CRFParams":
        reject_unknown_keys(d, cls, "CRF")
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probs_to_unary(probs: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Unary potentials ψ_u = -log P.

    Parameters
    ----------
    probs : (B, L, Z, Y, X) label probabilities, or (B, 1, Z, Y, X) foreground probability
        (expanded to the two labels background, foreground).

    Returns
    -------
    (B, L, Z, Y, X) float32 unary energies (L ≥ 2).
    """
    if probs.ndim != 5:
        raise CryoNBError(f"probs has shape {tuple(probs.shape)}: expected (B, L, Z, Y, X)")
    probs = probs.float()
    if probs.shape[1] == 1:
        probs = torch.cat([1 - probs, probs], dim=1)
    return -torch.log(probs.clamp(eps, 1.0))


def _check_inputs(unary: torch.Tensor, image: torch.Tensor) -> None:
    if unary.ndim != 5 or unary.shape[1] < 2:
        raise CryoNBError(f"unary has shape {tuple(unary.shape)}: expected (B, L≥2, Z, Y, X)")
    expected = (unary.shape[0], 1, *unary.shape[2:])
    if tuple(image.shape) != expected:
        raise CryoNBError(f"image has shape {tuple(image.shape)}: expected {expected} to match the unary")


def _gauss_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(n, n) peak-1 Gaussian of the index difference: one separable blur axis as a matrix (no truncation)."""
    x = torch.arange(n, device=device, dtype=torch.float32)
    return torch.exp(-0.5 * ((x[:, None] - x[None, :]) / sigma) ** 2)


def _blur_last_axes(x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Separable Gaussian along the last ``len(sigmas)`` axes of x, zero outside (dense matmuls:
    for the ≤ 40-cell axes here a matrix product beats a 1-D convolution on CPU and GPU)."""
    nd = len(sigmas)
    for i, sigma in enumerate(sigmas):
        axis = x.ndim - nd + i
        m = _gauss_matrix(x.shape[axis], sigma, x.device)
        x = torch.movedim(torch.movedim(x, axis, -1) @ m, -1, axis)  # m is symmetric
    return x


def _spatial_filter(q: torch.Tensor, sigma: float) -> torch.Tensor:
    """Σ_j exp(-|p_i-p_j|²/2σ²) q_j over all j (self included), exact by separability.

    q : (B, L, Z, Y, X) → same shape.
    """
    return _blur_last_axes(q, [sigma] * 3)


class _BilateralGrid:
    """Splat/blur/slice operator for one volume: m = Sᵀ B S q approximates Σ_j k(i, j) q_j (self included)."""

    def __init__(self, image: torch.Tensor, sigma_pos: float, sigma_int: float, oversample: float) -> None:
        # image (Z, Y, X)
        device = image.device
        zyx = torch.stack(torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in image.shape], indexing="ij"), -1)
        coords = torch.cat([zyx.reshape(-1, 3) / sigma_pos, image.reshape(-1, 1).float() / sigma_int], 1) * oversample
        coords = coords - coords.min(0).values + 1.0  # one empty cell of margin for the blur
        self.grid_shape = [int(c) + 3 for c in coords.max(0).values.ceil().tolist()]
        base = coords.floor()
        frac = coords - base
        base = base.long()
        n = coords.shape[0]
        strides = [self.grid_shape[1] * self.grid_shape[2] * self.grid_shape[3], self.grid_shape[2] * self.grid_shape[3], self.grid_shape[3], 1]
        idx, wts = [], []
        for corner in range(16):
            bits = [(corner >> d) & 1 for d in range(4)]
            idx.append(sum((base[:, d] + bits[d]) * strides[d] for d in range(4)))
            w = torch.ones(n, device=device)
            for d in range(4):
                w = w * (frac[:, d] if bits[d] else 1 - frac[:, d])
            wts.append(w)
        # (16·voxels,) cell index and multilinear weight of every (corner, voxel) pair
        self.index = torch.cat(idx)
        self.weight = torch.cat(wts)[:, None]
        self.n_voxels = n
        self.n_cells = math.prod(self.grid_shape)
        # linear splat + linear slice each add a tent of variance 1/6 cell²; subtract it from the blur
        self.blur_sigma = math.sqrt(max(oversample**2 - 1.0 / 3.0, 0.25))
        # the tents keep the kernel's mass but widen it, lowering its peak; restore peak 1 in 4-D
        self.gain = (math.sqrt(self.blur_sigma**2 + 1.0 / 3.0) / self.blur_sigma) ** 4

    def _blur(self, g: torch.Tensor) -> torch.Tensor:
        # g: (cells, L) → 4-D separable blur with a peak-1 Gaussian, zero boundary
        x = g.t().reshape(g.shape[1], *self.grid_shape)
        return _blur_last_axes(x, [self.blur_sigma] * 4).reshape(g.shape[1], -1).t()

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        # q: (voxels, L) → (voxels, L), self term included
        grid = torch.zeros(self.n_cells, q.shape[1], device=q.device, dtype=q.dtype)
        grid.index_add_(0, self.index, self.weight * q.repeat(16, 1))
        grid = self._blur(grid) * self.gain
        return (grid[self.index] * self.weight).reshape(16, self.n_voxels, -1).sum(0)


def _complete(filtered_head: torch.Tensor, filtered_ones: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Append the last label's filtered marginal, K·1 − Σ of the others, along ``dim``."""
    return torch.cat([filtered_head, filtered_ones - filtered_head.sum(dim, keepdim=True)], dim)


def dense_crf(unary: torch.Tensor, image: torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """Mean-field inference of the fully connected 3-D CRF.

    Parameters
    ----------
    unary : (B, L, Z, Y, X) float unary energies (e.g. from :func:`probs_to_unary`), L ≥ 2 labels.
    image : (B, 1, Z, Y, X) intensities used by the bilateral kernel.
    params : kernel weights and widths.

    Returns
    -------
    (B, L, Z, Y, X) approximate marginals Q; ``Q.argmax(1)`` is the refined label map.
    NOTE: device and dtype follow ``unary``; the self pair i = j is excluded from the messages.
    """
    _check_inputs(unary, image)
    unary = unary.float()
    q = torch.softmax(-unary, dim=1)
    if params.w_bilateral == 0 and params.w_spatial == 0:
        return q
    b, l, *size = unary.shape
    grids = [_BilateralGrid(image[i, 0], params.sigma_pos_vox, params.sigma_int, params.oversample) for i in range(b)] if params.w_bilateral > 0 else []
    # The filters are linear and Σ_l q_l = 1, so the last label's message is K·1 − Σ_{l<L} K·q_l: filter
    # L−1 channels per iteration and K·1 once (halves the work for the usual two labels; exact).
    ones = torch.ones_like(q[:, :1])
    spatial_ones = _spatial_filter(ones, params.sigma_smooth_vox) if params.w_spatial > 0 else None
    bilateral_ones = [g(ones[i].reshape(1, -1).t()) for i, g in enumerate(grids)]
    for _ in range(params.n_iter):
        message = torch.zeros_like(q)
        if spatial_ones is not None:
            message += params.w_spatial * (_complete(_spatial_filter(q[:, :-1], params.sigma_smooth_vox), spatial_ones) - q)
        if grids:
            bil = torch.stack([_complete(grids[i](q[i, :-1].reshape(l - 1, -1).t()), bilateral_ones[i], dim=1).t().reshape(l, *size)
                               for i in range(b)])
            message += params.w_bilateral * (bil - q)
        # Potts: E_i(l) = U_i(l) + Σ_{l'≠l} m_i(l') = U_i(l) - m_i(l) + const
        q = torch.softmax(-unary + message, dim=1)
    return q


def dense_crf_bruteforce(unary: torch.Tensor, image: torch.Tensor, params: CRFParams = CRFParams()) -> torch.Tensor:
    """The same mean field with the exact O(N²) kernel matrix (reference for tests; N ≤ a few thousand)."""
    _check_inputs(unary, image)
    b, l, *size = unary.shape
    n = math.prod(size)
    if n > 8000:
        raise CryoNBError(f"dense_crf_bruteforce on {n} voxels: expected ≤ 8000 (memory is O(N²))")
    zyx = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in size], indexing="ij"), -1).reshape(-1, 3)
    d_pos = torch.cdist(zyx, zyx) ** 2
    out = []
    for i in range(b):
        inten = image[i, 0].reshape(-1, 1).double().cpu()
        d_int = (inten - inten.t()) ** 2
        k = params.w_bilateral * torch.exp(-d_pos / (2 * params.sigma_pos_vox**2) - d_int / (2 * params.sigma_int**2))
        k += params.w_spatial * torch.exp(-d_pos / (2 * params.sigma_smooth_vox**2))
        k.fill_diagonal_(0.0)
        u = unary[i].reshape(l, -1).t().double().cpu()
        q = torch.softmax(-u, 1)
        if params.w_bilateral > 0 or params.w_spatial > 0:
            for _ in range(params.n_iter):
                q = torch.softmax(-u + k @ q, 1)
        out.append(q.t().reshape(l, *size))
    return torch.stack(out).to(unary.device, torch.float32)


def sweep_crf_params(
    probs: torch.Tensor,
    image: torch.Tensor,
    target: torch.Tensor,
    grid: list[CRFParams],
    min_kept_fraction: float = 0.2,
) -> list[dict[str, Any]]:
    """Validation Dice of each parameter set; flag sets that wipe the mask.

    Parameters
    ----------
    probs : (B, 1, Z, Y, X) foreground probabilities from the network.
    image : (B, 1, Z, Y, X) intensities.
    target : (B, Z, Y, X) or (B, 1, Z, Y, X) ground-truth masks.
    grid : candidate parameters.
    min_kept_fraction : a set is rejected when, on any volume whose network mask is non-empty, the
        CRF keeps less than this fraction of the foreground voxels (the "wiped mask" failure on noise).

    Returns
    -------
    One dict per candidate: its parameters, ``dice`` (mean), ``min_kept`` and ``rejected``.
    """
    target = target.reshape(probs.shape[0], *probs.shape[2:])
    unary = probs_to_unary(probs)
    before = (probs[:, 0] > 0.5).flatten(1).sum(1).float()
    rows = []
    for p in grid:
        lab = dense_crf(unary, image, p).argmax(1)
        after = lab.flatten(1).sum(1).float()
        has = before > 0
        kept = float((after[has] / before[has]).min()) if bool(has.any()) else 1.0
        rows.append({**p.as_dict(), "dice": float(dice(lab, target).mean()), "min_kept": kept, "rejected": kept < min_kept_fraction})
    return rows


def select_crf_params(rows: list[dict[str, Any]]) -> CRFParams:
    """The non-rejected row of :func:`sweep_crf_params` with the highest validation Dice."""
    ok = [r for r in rows if not r["rejected"]]
    if not ok:
        raise CryoNBError("every CRF parameter set wiped the mask on the validation data; widen the grid or lower the weights")
    best = max(ok, key=lambda r: r["dice"])
    return CRFParams.from_dict({k: best[k] for k in CRFParams.__dataclass_fields__})
