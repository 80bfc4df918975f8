"""The scores every notebook reports: accuracy with its interval, confusion matrix, Dice.

Public surface: :func:`accuracy_ci`, :func:`confusion_matrix`, :func:`dice`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cryonb.errors import CryoNBError
from cryonb.stats import proportion_ci

__all__ = ["accuracy_ci", "confusion_matrix", "dice"]


def accuracy_ci(correct: Sequence[bool] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean accuracy and its Wilson interval, treating the trials as independent.

    correct : (E,) booleans → {"accuracy", "ci_low", "ci_high", "n_episodes"}.
    """
    correct = np.asarray(correct, dtype=bool)
    if len(correct) == 0:
        raise CryoNBError("accuracy over 0 episodes: expected at least one")
    low, high = proportion_ci(int(correct.sum()), len(correct), level)
    return {"accuracy": float(correct.mean()), "ci_low": low, "ci_high": high, "n_episodes": len(correct)}


def confusion_matrix(labels: Sequence[int] | np.ndarray, pred: Sequence[int] | np.ndarray, n_classes: int, normalize: bool = True) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted; rows sum to 1 if ``normalize``."""
    y, p = np.asarray(labels, dtype=int), np.asarray(pred, dtype=int)
    if y.shape != p.shape:
        raise CryoNBError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if y.size and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= n_classes):
        raise CryoNBError(f"class ids must lie in [0, {n_classes}), got {min(y.min(), p.min())}..{max(y.max(), p.max())}")
    m = np.zeros((n_classes, n_classes))
    np.add.at(m, (y, p), 1)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    return m


def dice(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, eps: float = 1e-6) -> torch.Tensor:
    """Dice similarity coefficient 2|P∩G| / (|P|+|G|) per volume.

    pred, target : (B, ...) binary or probabilities → (B,) Dice in [0, 1] (1 when both are empty).
    """
    p = torch.as_tensor(np.asarray(pred) if isinstance(pred, np.ndarray) else pred).float().flatten(1)
    g = torch.as_tensor(np.asarray(target) if isinstance(target, np.ndarray) else target).float().flatten(1)
    return (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)
