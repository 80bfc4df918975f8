"""RB3D: the 3-D residual classifier of Che et al. 2018, the encoder of the CSSL paper.

Conv3d 3³ + ReLU → MaxPool (3³, stride 2) → four residual blocks (a 3³ shortcut convolution beside a
1³→3³→1³ bottleneck, concatenated) → average pooling to ``pool_size``³ cells → flatten → embedding
(FC + ReLU + dropout) → linear classifier.

Why ``pool_size`` (default 4) and not global average pooling: a subtomogram's class is the molecule at its
*centre*; its crowding neighbours belong to other classes. Global pooling makes the features translation
invariant, so the network cannot tell the centre from the neighbours, and at SNR 0.1 it stayed at chance
(10 %) while a logistic regression on the radial density profile reached 61 % (measured, quick data set).
Che et al. flatten the whole 16³ map into FC-1024, which keeps position but costs width × 4096 × 1024
weights; 4³ cells keep centre-versus-periphery at 1/64 of that. ``pool_size=1`` gives global pooling.

``encode`` returns the embedding, ``classifier`` is a separate handle, so the SSL heads and fine-tuning share
one encoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cryonb.errors import CryoNBError

__all__ = ["RB3DConfig", "RB3D", "count_parameters"]


@dataclass(frozen=True)
class RB3DConfig:
    n_classes: int = 10
    width: int = 32
    embedding_dim: int = 1024
    norm: str = "batch"  # "batch" | "none"
    dropout: float = 0.5
    pool_size: int = 4  # cells per axis after average pooling (1 = global average pooling)

    def __post_init__(self) -> None:
        if self.width < 4 or self.width % 4:
            raise CryoNBError(f"RB3D width must be a multiple of 4 and ≥ 4, got {self.width}")
        if self.norm not in ("batch", "none"):
            raise CryoNBError(f"RB3D norm must be 'batch' or 'none', got {self.norm!r}")
        if not 0 <= self.dropout < 1:
            raise CryoNBError(f"RB3D dropout must be in [0, 1), got {self.dropout}")
        if not 1 <= self.pool_size <= 16:
            raise CryoNBError(f"RB3D pool_size must be in 1..16 (cells per axis of a 16³ feature map), got {self.pool_size}")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm3d(channels) if kind == "batch" else nn.Identity()


class ResidualBlock3d(nn.Module):
    """A 3³ shortcut convolution beside a 1³→3³→1³ bottleneck, concatenated along channels."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__()
        half, neck = out_channels // 2, out_channels // 4
        self.shortcut = nn.Sequential(nn.Conv3d(in_channels, half, 3, padding=1), _norm(norm, half))
        self.bottleneck = nn.Sequential(
            nn.Conv3d(in_channels, neck, 1), _norm(norm, neck), nn.ReLU(inplace=True),
            nn.Conv3d(neck, neck, 3, padding=1), _norm(norm, neck), nn.ReLU(inplace=True),
            nn.Conv3d(neck, half, 1), _norm(norm, half),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(torch.cat([self.shortcut(x), self.bottleneck(x)], dim=1))


class RB3D(nn.Module):
    """RB3D classifier.

    Input ``(batch, 1, z, y, x)``; ``encode`` → ``(batch, embedding_dim)``; ``forward`` → ``(batch, n_classes)`` logits.
    """

    def __init__(self, config: RB3DConfig | None = None) -> None:
        super().__init__()
        self.config = config or RB3DConfig()
        c = self.config
        self.stem = nn.Sequential(nn.Conv3d(1, c.width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool3d(3, stride=2, padding=1))
        self.blocks = nn.Sequential(*[ResidualBlock3d(c.width, c.width, c.norm) for _ in range(4)])
        self.pool = nn.AdaptiveAvgPool3d(c.pool_size)
        self.embedding = nn.Sequential(nn.Linear(c.width * c.pool_size**3, c.embedding_dim), nn.ReLU(inplace=True), nn.Dropout(c.dropout))
        self.classifier = nn.Linear(c.embedding_dim, c.n_classes)

    @property
    def last_conv(self) -> nn.Conv3d:
        """The last Conv3d before pooling (Grad-CAM's layer): the final block's shortcut convolution."""
        return self.blocks[-1].shortcut[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before pooling, ``(batch, width, z/2, y/2, x/2)``."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise CryoNBError(f"RB3D expects (batch, 1, z, y, x) input, got shape {tuple(x.shape)}")
        return self.blocks(self.stem(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.pool(self.features(x)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encode(x))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(B, embedding_dim) embeddings and no mask: the interface :func:`cryonb.embedding.embed` uses."""
        return self.encode(x), None

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """Weights of everything but the classifier: what pre-training hands to fine-tuning."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("classifier.")}

    def load_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        bad = [m for m in missing if not m.startswith("classifier.")]
        if bad or unexpected:
            raise CryoNBError(f"encoder weights do not fit this RB3D ({asdict(self.config)}): missing {bad[:3]}, unexpected {unexpected[:3]}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
