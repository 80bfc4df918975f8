"""The orthoslice viewer: the static figure always, sliders only in a live kernel."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cryonb import CryoNBError
from cryonb.viewer import (
    STATIC_ENV,
    default_center,
    interactive_session,
    orthoslice_widget,
    orthoslices_figure,
    view_volume,
)


def _blob(shape: tuple[int, int, int] = (16, 24, 20), at: tuple[int, int, int] = (4, 15, 6)) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.indices(shape)
    mask = (zz - at[0]) ** 2 + (yy - at[1]) ** 2 + (xx - at[2]) ** 2 <= 9
    return mask.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, shape).astype(np.float32), mask


def test_slices_go_through_the_mask_centre() -> None:
    vol, mask = _blob()
    assert default_center(vol, mask) == (4, 15, 6)
    assert default_center(vol) == (8, 12, 10)


def test_figure_has_three_slices_of_the_right_shapes_and_a_mask_contour() -> None:
    vol, mask = _blob()
    fig = orthoslices_figure(vol, mask)
    axes = fig.axes
    assert [ax.images[0].get_array().shape for ax in axes] == [(24, 20), (16, 20), (16, 24)]
    assert all(ax.collections for ax in axes), "a mask contour is missing"
    # the x–y slice is the one through the mask centre
    assert np.allclose(axes[0].images[0].get_array(), vol[4])
    plt.close(fig)


def test_bad_inputs_name_the_problem() -> None:
    vol, mask = _blob()
    with pytest.raises(CryoNBError, match="expected a \\(z, y, x\\) volume"):
        orthoslices_figure(vol[0])
    with pytest.raises(CryoNBError, match="mask shape"):
        orthoslices_figure(vol, mask[:-1])
    with pytest.raises(CryoNBError, match="outside the volume"):
        orthoslices_figure(vol, center=(16, 0, 0))


def test_no_sliders_outside_a_live_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATIC_ENV, "1")
    assert not interactive_session()
    vol, mask = _blob()
    fig = view_volume(vol, mask)
    assert len(fig.axes) == 3
    plt.close(fig)


def test_widget_has_a_slider_per_axis_and_a_mask_toggle() -> None:
    pytest.importorskip("ipywidgets")
    vol, mask = _blob()
    box = orthoslice_widget(vol, mask)
    controls = box.children[0].children
    sliders = [w for w in controls if hasattr(w, "max") and w.description in "zyx"]
    assert [(s.description, s.value, s.max) for s in sliders] == [("z", 4, 15), ("y", 15, 23), ("x", 6, 19)]
    assert any(getattr(w, "description", "") == "mask" and w.value for w in controls)
    plt.close("all")
