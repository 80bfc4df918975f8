"""MoCo v2: a momentum key encoder and a FIFO queue of negative keys (He et al. 2020; Chen et al. 2020).

Queue handling, said plainly:
- K need not be a multiple of the batch: keys are written at ``(ptr + i) mod K``.
- A data set smaller than the queue, or several epochs, puts keys of the *same* sample in the queue; those
  would be false negatives, so each queue slot remembers its sample id and is masked out of that sample's loss.
- Until the queue has been filled once, empty slots (id −1) are masked too: random vectors are no negatives.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cryonb.models.rb3d import RB3D
from cryonb.ssl.heads import projection_head
from cryonb.ssl.losses import info_nce

__all__ = ["MoCo"]


class MoCo(nn.Module):
    def __init__(self, encoder: RB3D, dim: int = 128, queue_size: int = 128, momentum: float = 0.999, temperature: float = 0.2) -> None:
        super().__init__()
        emb = encoder.config.embedding_dim
        self.encoder = encoder
        self.head = projection_head(emb, emb, dim)
        self.key_encoder = copy.deepcopy(encoder)
        self.key_head = copy.deepcopy(self.head)
        for p in [*self.key_encoder.parameters(), *self.key_head.parameters()]:
            p.requires_grad = False
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def loss(self, view1: torch.Tensor, view2: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        q = self.head(self.encoder.encode(view1))
        with torch.no_grad():
            k = F.normalize(self.key_head(self.key_encoder.encode(view2)), dim=1)
        mask = (self.queue_ids[None, :] == ids[:, None]) | (self.queue_ids[None, :] < 0)
        self._pending = (k.detach(), ids.detach())
        return info_nce(q, k, self.queue, self.temperature, mask)

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum update θk ← m θk + (1 − m) θq, then enqueue this step's keys."""
        for online, key in ((self.encoder, self.key_encoder), (self.head, self.key_head)):
            for p_q, p_k in zip(online.parameters(), key.parameters()):
                p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1 - self.momentum)
        if self._pending is None:
            return
        keys, ids = self._pending
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[slots] = keys[-len(self.queue):] if len(keys) > len(self.queue) else keys
        self.queue_ids[slots] = ids[-len(self.queue):] if len(ids) > len(self.queue) else ids
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))
        self._pending = None
