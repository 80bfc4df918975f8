"""Small plotting helpers shared by the notebooks (orthogonal slices of subtomograms)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["orthogonal_slices", "slice_grid"]


def orthogonal_slices(volume: np.ndarray, axes: list, title: str = "", cmap: str = "gray") -> None:
    """Central z, y and x slices of a ``(z, y, x)`` volume on three axes."""
    c = np.array(volume.shape) // 2
    for ax, img, name in zip(axes, (volume[c[0]], volume[:, c[1]], volume[:, :, c[2]]), ("xy", "xz", "yz")):
        ax.imshow(img, cmap=cmap)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title} {name}".strip(), fontsize=8)


def slice_grid(volumes: list[np.ndarray], titles: list[str], cmap: str = "gray") -> plt.Figure:
    """One row per volume: its three central orthogonal slices."""
    fig, axes = plt.subplots(len(volumes), 3, figsize=(6, 2 * len(volumes)), squeeze=False)
    for row, vol, title in zip(axes, volumes, titles):
        orthogonal_slices(vol, list(row), title, cmap)
    fig.tight_layout()
    return fig
