"""SwAV: online clustering with Sinkhorn codes and swapped prediction (Caron et al. 2020).

Small batches (16 here) cannot be equipartitioned over many prototypes, so the prototypes are few
(tens) and a queue of earlier features joins each Sinkhorn call, as SwAV does for small batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cryonb.models.rb3d import RB3D
from cryonb.ssl.heads import projection_head
from cryonb.ssl.losses import swav_loss

__all__ = ["SwAV"]


class SwAV(nn.Module):
    def __init__(self, encoder: RB3D, dim: int = 128, n_prototypes: int = 30, queue_size: int = 64,
                 temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        emb = encoder.config.embedding_dim
        self.encoder, self.head = encoder, projection_head(emb, emb, dim)
        self.prototypes = nn.Linear(dim, n_prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations
        self.register_buffer("queue", torch.zeros(2, queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: torch.Tensor | None = None

    def loss(self, view1: torch.Tensor, view2: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z = F.normalize(self.head(self.encoder.encode(torch.cat([view1, view2]))), dim=1)
        z1, z2 = z[: len(view1)], z[len(view1):]
        s1, s2 = self.prototypes(z1), self.prototypes(z2)
        queued = (None, None)
        n_queued = int(self.queue_filled)
        if n_queued:
            with torch.no_grad():
                queued = (self.prototypes(self.queue[0, :n_queued]), self.prototypes(self.queue[1, :n_queued]))
        self._pending = torch.stack([z1.detach(), z2.detach()])
        return swav_loss(s1, s2, self.temperature, self.epsilon, self.iterations, *queued)

    @torch.no_grad()
    def after_step(self) -> None:
        if self._pending is None:
            return
        size = self.queue.shape[1]
        new = self._pending[:, -size:]
        self.queue.copy_(torch.cat([new, self.queue[:, : size - new.shape[1]]], dim=1))
        self.queue_filled.copy_(torch.clamp(self.queue_filled + new.shape[1], max=size))
        self._pending = None
