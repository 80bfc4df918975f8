"""The projection head shared by the three methods (MoCo v2 / SimCLR style MLP)."""

from __future__ import annotations

from torch import nn


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
