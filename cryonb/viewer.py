"""Look at a volume from three sides: an orthoslice viewer for subtomograms, masks and tomograms.

Public surface: :func:`orthoslices_figure` (a static matplotlib figure: the x–y, x–z and y–z slices through one
voxel, an optional mask drawn as a red contour), :func:`orthoslice_widget` (the same with ipywidgets sliders over
z, y and x and a mask toggle) and :func:`view_volume` (both: the static figure always, the sliders only where
someone can move them).

NOTE: volumes are ``(z, y, x)``; slices are drawn with the first remaining axis vertical, origin at the bottom
(x–y: y up; x–z and y–z: z up, the beam axis, along which the missing wedge smears a molecule).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cryonb.errors import CryoNBError

__all__ = ["default_center", "interactive_session", "orthoslice_widget", "orthoslices_figure", "view_volume"]

#: set by the notebook runner: an executed notebook is read as a document, where sliders could only store their state
STATIC_ENV = "CRYONB_STATIC_VIEWER"


def _check(volume: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise CryoNBError(f"orthoslices: expected a (z, y, x) volume, got shape {vol.shape}")
    if mask is None:
        return vol, None
    m = np.asarray(mask)
    if m.shape != vol.shape:
        raise CryoNBError(f"orthoslices: mask shape {m.shape} differs from the volume's {vol.shape}")
    return vol, m > 0.5


def default_center(volume: np.ndarray, mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """The voxel the slices go through: the mask's centre of mass when it has one (the molecule), else the middle."""
    shape = np.asarray(volume).shape
    if mask is not None and np.asarray(mask).any():
        coords = np.argwhere(np.asarray(mask) > 0.5).mean(axis=0)
        return tuple(int(round(c)) for c in coords)  # type: ignore[return-value]
    return tuple(n // 2 for n in shape)  # type: ignore[return-value]


def _planes(vol: np.ndarray, z: int, y: int, x: int) -> list[tuple[str, Any]]:
    return [(f"x–y at z = {z}", lambda a: a[z]), (f"x–z at y = {y}", lambda a: a[:, y, :]), (f"y–z at x = {x}", lambda a: a[:, :, x])]


def _draw(axes: Any, vol: np.ndarray, mask: np.ndarray | None, center: tuple[int, int, int], cmap: str,
          limits: tuple[float, float]) -> None:
    for ax, (title, cut) in zip(axes, _planes(vol, *center)):
        ax.clear()
        ax.imshow(cut(vol), cmap=cmap, origin="lower", vmin=limits[0], vmax=limits[1], interpolation="nearest")
        if mask is not None and cut(mask).any():
            ax.contour(cut(mask).astype(np.float32), levels=[0.5], colors="tab:red", linewidths=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])


def _limits(vol: np.ndarray) -> tuple[float, float]:
    # one grey scale for all slices and slider positions, robust to a few extreme voxels
    lo, hi = np.percentile(vol, [1, 99])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def orthoslices_figure(volume: np.ndarray, mask: np.ndarray | None = None, center: tuple[int, int, int] | None = None,
                       title: str = "", cmap: str = "gray", width_in: float = 9.0) -> Any:
    """A matplotlib figure of three orthogonal slices through ``center`` (default: :func:`default_center`).

    volume : (z, y, x) array. mask : (z, y, x) array, drawn as a red contour at 0.5.
    """
    import matplotlib.pyplot as plt

    vol, m = _check(volume, mask)
    nz, ny, nx = vol.shape
    at = center if center is not None else default_center(vol, m)
    if not all(0 <= c < n for c, n in zip(at, vol.shape)):
        raise CryoNBError(f"orthoslices: center {at} lies outside the volume of shape {vol.shape}")
    # panel widths in voxels, so one voxel has one size in every panel
    fig, axes = plt.subplots(1, 3, figsize=(width_in, width_in * max(ny, nz) / (2 * nx + ny) * 1.15),
                             gridspec_kw={"width_ratios": [nx, nx, ny]})
    _draw(axes, vol, m, at, cmap, _limits(vol))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def orthoslice_widget(volume: np.ndarray, mask: np.ndarray | None = None, title: str = "", cmap: str = "gray") -> Any:
    """Sliders over z, y and x (and a mask toggle when a mask is given) redrawing the three slices.

    Needs ipywidgets and a live front end (JupyterLab, Colab); returns the widget box.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    vol, m = _check(volume, mask)
    start = default_center(vol, m)
    sliders = {name: widgets.IntSlider(value=c, min=0, max=n - 1, description=name, continuous_update=False)
               for name, c, n in zip("zyx", start, vol.shape)}
    show_mask = widgets.Checkbox(value=m is not None, description="mask", disabled=m is None)
    out = widgets.Output()

    def redraw(_: Any = None) -> None:
        with out:
            out.clear_output(wait=True)
            fig = orthoslices_figure(vol, m if show_mask.value else None, tuple(s.value for s in sliders.values()),  # type: ignore[arg-type]
                                     title=title, cmap=cmap)
            display(fig)
            plt.close(fig)

    for w in (*sliders.values(), show_mask):
        w.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([*sliders.values(), show_mask]), out])


def interactive_session() -> bool:
    """True in a live Jupyter kernel with ipywidgets (not in an executed copy made by the runner, nor a script)."""
    if os.environ.get(STATIC_ENV):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def view_volume(volume: np.ndarray, mask: np.ndarray | None = None, title: str = "", cmap: str = "gray",
                interactive: bool | None = None) -> Any:
    """The static orthoslice figure (returned, for ``run.save_figure``), plus the sliders in a live notebook.

    The static figure is what an executed notebook and the course site show; ``interactive=None`` shows the
    sliders only in a live kernel (:func:`interactive_session`).
    """
    fig = orthoslices_figure(volume, mask, title=title, cmap=cmap)
    if interactive if interactive is not None else interactive_session():
        from IPython.display import display

        display(orthoslice_widget(volume, mask, title=title, cmap=cmap))
    return fig
