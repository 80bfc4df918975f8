"""Embeddings of volumes and the one prototype matcher (COS-Net's match head or a Euclidean baseline).

Public surface: :func:`embed`, :func:`class_prototypes`, :func:`prototype_scores`.

Any model with ``embed(x) -> (embedding (B, F), mask (B, 1, D, D, D) or None)`` works here: RB3D
(its pooled features, no mask) and COS-Net (its feature encoder output and decoder mask).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from cryonb.data import to_tensor

__all__ = ["embed", "class_prototypes", "prototype_scores"]


@torch.no_grad()
def embed(model: nn.Module, volumes: np.ndarray, index: np.ndarray | None = None, batch_size: int = 32,
          device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings (M, F) and mask probabilities (M, D, D, D) (None for a model without masks) of
    ``volumes[index]`` (all rows when ``index`` is None), in eval mode, returned on the CPU.

    volumes : (N, D, D, D) float32 array (memory-mapped is fine); rows are read in sorted order for speed.
    """
    device = torch.device(device)
    model = model.eval().to(device)
    index = np.arange(len(volumes)) if index is None else np.asarray(index)
    embs, masks = [], []
    for start in range(0, len(index), batch_size):
        emb, mask = model.embed(to_tensor(volumes, index[start : start + batch_size]).to(device))
        embs.append(emb.float().cpu())
        if mask is not None:
            masks.append(mask[:, 0].float().cpu())
    if not embs:
        return torch.zeros(0, 0), None
    return torch.cat(embs), (torch.cat(masks) if masks else None)


def class_prototypes(emb: torch.Tensor, class_of: np.ndarray, n_classes: int) -> torch.Tensor:
    """(n_classes, F) mean embedding of each class from (S, F) support embeddings labelled ``class_of`` (S,)."""
    class_of = torch.as_tensor(np.asarray(class_of))
    return torch.stack([emb[class_of == c].mean(0) for c in range(n_classes)])


def prototype_scores(query: torch.Tensor, prototypes: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Scores (Q, n) of each query against n class prototypes; the predicted class is the argmax.

    query : (Q, F); prototypes : (n, F) shared by all queries, or (Q, n, F) per query (episodes).
    head : COS-Net's ``match_logits`` on the feature-wise L1 distance |q − p|; None gives the
        prototypical-network baseline, minus the squared Euclidean distance (1-nearest-neighbour for 1 shot).
    """
    diff = query[:, None, :].float() - prototypes.float()
    return head(diff.abs()) if head is not None else -(diff**2).sum(-1)
