"""Contrastive losses, written here because lightly (their usual home) needs torchvision, which does not
import beside this torch. Each is tested against a naive formula in tests/test_ssl.py.

NOTE: embeddings are L2-normalised inside each loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "nt_xent", "sinkhorn", "swav_loss"]


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float, queue_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MoCo's InfoNCE: ``-log exp(q·k⁺/τ) / (exp(q·k⁺/τ) + Σ exp(q·k⁻/τ))``.

    q, k: (n, d) queries and their positive keys; queue: (K, d) negative keys;
    queue_mask: (n, K) bool, True where a queue entry must not count as a negative (a key of the same sample).
    """
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    positive = (q * k).sum(1, keepdim=True)
    negative = q @ queue.T
    if queue_mask is not None:
        negative = negative.masked_fill(queue_mask, float("-inf"))
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent over 2N views: each view's positive is its pair, the other 2N − 2 are negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn–Knopp: soft assignments (n, K) of n samples to K prototypes with equal mass per prototype."""
    q = torch.exp((scores - scores.max()) / epsilon).T  # (K, n)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * n
    return (q * n).T


def swav_loss(
    scores1: torch.Tensor, scores2: torch.Tensor, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3,
    queue_scores1: torch.Tensor | None = None, queue_scores2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Swapped prediction: view 1's codes are predicted from view 2's scores and vice versa.

    scores: (n, K) prototype similarities of the normalised features; queue_scores: (m, K) of earlier batches,
    appended before Sinkhorn so equipartition holds over more than a small batch (SwAV's feature queue).
    """
    n = len(scores1)

    def codes(scores: torch.Tensor, queued: torch.Tensor | None) -> torch.Tensor:
        full = scores if queued is None else torch.cat([scores, queued])
        return sinkhorn(full.detach(), epsilon, iterations)[:n]

    q1, q2 = codes(scores1, queue_scores1), codes(scores2, queue_scores2)
    p1, p2 = F.log_softmax(scores1 / temperature, dim=1), F.log_softmax(scores2 / temperature, dim=1)
    return -0.5 * ((q1 * p2).sum(1).mean() + (q2 * p1).sum(1).mean())
