"""SimCLR: one encoder on both views, NT-Xent over 2N views (Chen et al. 2020, τ = 0.5 for small batches)."""

from __future__ import annotations

import torch
from torch import nn

from cryonb.models.rb3d import RB3D
from cryonb.ssl.heads import projection_head
from cryonb.ssl.losses import nt_xent

__all__ = ["SimCLR"]


class SimCLR(nn.Module):
    def __init__(self, encoder: RB3D, dim: int = 128, temperature: float = 0.5) -> None:
        super().__init__()
        emb = encoder.config.embedding_dim
        self.encoder, self.head, self.temperature = encoder, projection_head(emb, emb, dim), temperature

    def loss(self, view1: torch.Tensor, view2: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        z = self.head(self.encoder.encode(torch.cat([view1, view2])))
        return nt_xent(z[: len(view1)], z[len(view1):], self.temperature)

    def after_step(self) -> None:
        return None
