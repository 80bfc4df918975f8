"""Which device a step runs on: the spec's ``device`` entry, resolved once."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
