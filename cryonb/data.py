"""From a simulated data set to training batches: label-fraction subsets and seeded batch iterators."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from cryonb.errors import CryoNBError

__all__ = ["stratified_subset", "iterate_batches", "to_tensor"]


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions (into ``labels``) of a class-stratified subset holding ``fraction`` of each class.

    One permutation per class, fixed by ``seed``, is cut at ``ceil(fraction * n)``: subsets of the same seed
    nest (25 % ⊂ 50 % ⊂ 75 % ⊂ 100 %), so a larger fraction only adds labels.
    """
    if not 0 < fraction <= 1:
        raise CryoNBError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = members[rng.permutation(len(members))]
        chosen.append(order[: max(1, math.ceil(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


def to_tensor(volumes: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """``(len(index), 1, z, y, x)`` float32 tensor from a ``(N, z, y, x)`` (memory-mapped) array."""
    return torch.from_numpy(np.ascontiguousarray(volumes[np.sort(index)][np.argsort(np.argsort(index))], dtype=np.float32)).unsqueeze(1)


def iterate_batches(
    n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Index batches over ``range(n)``; shuffled by ``generator`` when ``shuffle``."""
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
