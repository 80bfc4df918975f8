"""COS-Net: a Siamese 3-D encoder/decoder with DuSE attention for one-shot classification and segmentation.

Both branches (support and target) share every weight, so the model is written for one volume
batch; :meth:`COSNet.score` compares embeddings of two batches.

* volume encoder: three levels of (conv–ReLU–BN) × 2 + DuSE, 32³ → 16³ → 8³ (max-pool between levels);
* volume decoder: 8³ → 16³ → 32³ (transposed conv, skip concat, conv–ReLU–BN, DuSE), sigmoid mask;
* feature encoder: two 512-unit fully connected layers on the (optionally pooled) 8³ features;
* match head: |f_s − f_t| (L1 distance, element-wise) → one fully connected layer → logit.

Decoder guidance (``decoder=True``): the predicted mask, pooled to 8³, gates the encoder features
that enter the feature encoder, and the Dice loss on the masks trains the decoder jointly. The paper
says the segmentation "attention" guides the embedding but does not give the exact wiring; this
multiplicative gate (features · (0.5 + mask)) is our reading, so without a mask the features pass
at half scale rather than vanishing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cryonb.errors import CryoNBError

__all__ = ["COSNetConfig", "COSNet", "DuSE", "VARIANTS", "count_parameters", "dice_loss"]

#: the paper's Table 1 rows: (attention, decoder guidance)
VARIANTS: dict[str, dict[str, Any]] = {
    "SCNN": {"attention": "none", "decoder": False},
    "SCNN+decoder": {"attention": "none", "decoder": True},
    "DuSE-SCNN": {"attention": "duse", "decoder": False},
    "DuSE-SCNN+decoder": {"attention": "duse", "decoder": True},
}


@dataclass(frozen=True)
class COSNetConfig:
    """Architecture of one COS-Net variant.

    Attributes
    ----------
    base_channels : channels of the first level (doubled per level).
    attention : "duse" (scSE + csSE), "none" (plain SCNN).
    combine : how DuSE merges its two branches: "add" (paper) or "max".
    decoder : whether the volume decoder exists and guides classification.
    feature_dim : width of the two fully connected feature layers (512 in the paper).
    feature_pool : side of the adaptive average pool before the feature encoder (8 = no pooling).
    reduction : channel reduction of the scSE bottleneck.
    box : input side length (divisible by 4).
    match_head : "linear" (paper: one fully connected layer on |f_s − f_t|, weights of either sign) or
        "monotone" (weights constrained ≤ 0 through −softplus, so the logit can only fall as any feature
        distance grows: a learned weighted L1 metric, which cannot flip sign on unseen classes).
    """

    base_channels: int = 16
    attention: Literal["duse", "none"] = "duse"
    combine: Literal["add", "max"] = "add"
    decoder: bool = True
    feature_dim: int = 512
    feature_pool: int = 2
    reduction: int = 2
    box: int = 32
    match_head: Literal["linear", "monotone"] = "linear"

    def __post_init__(self) -> None:
        if self.attention not in ("duse", "none"):
            raise CryoNBError(f"COS-Net attention={self.attention!r}: expected 'duse' or 'none'")
        if self.combine not in ("add", "max"):
            raise CryoNBError(f"COS-Net combine={self.combine!r}: expected 'add' or 'max'")
        if self.match_head not in ("linear", "monotone"):
            raise CryoNBError(f"COS-Net match_head={self.match_head!r}: expected 'linear' or 'monotone'")
        if self.box % 4 or self.box < 8:
            raise CryoNBError(f"COS-Net box={self.box}: expected a multiple of 4, ≥ 8")
        if self.base_channels < 1 or self.feature_dim < 1:
            raise CryoNBError("COS-Net base_channels and feature_dim: expected ≥ 1")
        if not 1 <= self.feature_pool <= self.box // 4:
            raise CryoNBError(f"COS-Net feature_pool={self.feature_pool}: expected 1…{self.box // 4}")

    @classmethod
    def from_variant(cls, variant: str, **kw: Any) -> "COSNetConfig":
        if variant not in VARIANTS:
            raise CryoNBError(f"unknown COS-Net variant {variant!r}; expected one of {sorted(VARIANTS)}")
        return cls(**{**VARIANTS[variant], **kw})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DuSE(nn.Module):
    """Dual squeeze-and-excitation: scSE (channel gate from global pooling) ⊕ csSE (spatial gate from a 1×1×1 conv).

    (B, C, Z, Y, X) → (B, C, Z, Y, X). ``combine="add"`` is the paper's element-wise sum; "max" the alternative.
    """

    def __init__(self, channels: int, reduction: int = 2, combine: str = "add") -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv3d(channels, 1, kernel_size=1)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.mean(dim=(2, 3, 4))
        channel_gate = torch.sigmoid(self.fc2(F.relu(self.fc1(v))))[:, :, None, None, None]
        spatial_gate = torch.sigmoid(self.spatial(x))
        a, b = x * channel_gate, x * spatial_gate
        return a + b if self.combine == "add" else torch.maximum(a, b)


def _block(c_in: int, c_out: int, cfg: COSNetConfig) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm3d(c_out),
        nn.Conv3d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm3d(c_out),
    ]
    if cfg.attention == "duse":
        layers.append(DuSE(c_out, cfg.reduction, cfg.combine))
    return nn.Sequential(*layers)


class COSNet(nn.Module):
    """The shared-weight branch of COS-Net plus its match head.

    ``forward(x)`` with x (B, 1, D, D, D) returns ``(embedding (B, feature_dim), mask_prob (B, 1, D, D, D) or None)``.
    """

    def __init__(self, cfg: COSNetConfig = COSNetConfig()) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.base_channels
        self.enc1, self.enc2, self.enc3 = _block(1, c, cfg), _block(c, 2 * c, cfg), _block(2 * c, 4 * c, cfg)
        if cfg.decoder:
            self.up2 = nn.ConvTranspose3d(4 * c, 2 * c, 2, stride=2)
            self.dec2 = _block(4 * c, 2 * c, cfg)
            self.up1 = nn.ConvTranspose3d(2 * c, c, 2, stride=2)
            self.dec1 = _block(2 * c, c, cfg)
            self.head = nn.Conv3d(c, 1, 1)
        flat = 4 * c * cfg.feature_pool**3
        self.features = nn.Sequential(nn.Linear(flat, cfg.feature_dim), nn.ReLU(inplace=True), nn.Linear(cfg.feature_dim, cfg.feature_dim))
        self.match = nn.Linear(cfg.feature_dim, 1)

    def _check(self, x: torch.Tensor) -> None:
        d = self.config.box
        if x.ndim != 5 or tuple(x.shape[1:]) != (1, d, d, d):
            raise CryoNBError(f"COS-Net input has shape {tuple(x.shape)}: expected (B, 1, {d}, {d}, {d})")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check(x)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2))
        e3 = self.enc3(F.max_pool3d(e2, 2))
        mask = None
        feats = e3
        if self.config.decoder:
            d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
            mask = torch.sigmoid(self.head(d1))
            feats = e3 * (0.5 + F.avg_pool3d(mask, 4))  # decoder guidance: attend to the predicted molecule
        pooled = F.adaptive_avg_pool3d(feats, self.config.feature_pool).flatten(1)
        return self.features(pooled), mask

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, F) embeddings and (B, 1, D, D, D) mask probabilities (None without decoder): see :func:`cryonb.embedding.embed`."""
        return self(x)

    def score(self, support: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Match logits of every (target, support) pair.

        support : (S, F) embeddings; target : (T, F) embeddings → (T, S) logits (sigmoid = match probability).
        """
        return self.match_logits((target[:, None, :] - support[None, :, :]).abs())

    def match_logits(self, dist: torch.Tensor) -> torch.Tensor:
        """(..., F) non-negative feature distances → (...) match logits."""
        if self.config.match_head == "monotone":
            return -(dist @ F.softplus(self.match.weight[0])) + self.match.bias[0]
        return self.match(dist).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss 1 − 2|P·G| / (|P| + |G|), averaged over the batch.

    prob : (B, 1, Z, Y, X) probabilities; target : (B, Z, Y, X) or (B, 1, Z, Y, X) binary mask.
    """
    if target.ndim == 4:
        target = target[:, None]
    if target.shape != prob.shape:
        raise CryoNBError(f"mask has shape {tuple(target.shape)}: expected {tuple(prob.shape)} to match the prediction")
    p, g = prob.flatten(1), target.float().flatten(1)
    return (1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)).mean()
