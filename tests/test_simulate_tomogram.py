"""Whole simulated tomograms: filters carried to any grid, placement, SNR, truth that extract recovers, bad input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryonb.errors import CryoNBError
from cryonb.extract import extract_subtomograms, fourier_rescale, read_coordinates
from cryonb.io import write_mrc
from cryonb.simulate import SimulationConfig, fast_filters, place_particles, simulate_tomogram, tomogram_filters, write_coordinates_star

# A 32³ measurement geometry keeps the one-off filter measurement to a second.
CFG = SimulationConfig(voxel_size_a=10.0, scene_size=32, crop_size=16, n_neighbours=0, max_shift_vox=1.0)
SHAPE = (24, 48, 56)  # z, y, x
BOX_A = 160.0  # 16 voxels of 10 Å
SMALL = ["3gl1", "4d4r"]  # radius 40 and 35 Å: 4 voxels


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tomogram(snr: float = 0.5, seed: int = 0, n: int = 5, n_border: int = 2):  # type: ignore[no-untyped-def]
    return simulate_tomogram(SHAPE, SMALL, n, snr, CFG, np.random.default_rng(seed), n_border=n_border, box_a=BOX_A)


# ---- filters ------------------------------------------------------------------------------------

def test_filters_equal_the_measured_ones_on_the_measurement_grid() -> None:
    a, g = tomogram_filters((32, 32, 32), CFG)
    a0, g0 = fast_filters(CFG)
    assert torch.equal(a, a0) and torch.equal(g, g0)


def test_filters_on_a_twice_finer_grid_agree_at_the_shared_frequencies() -> None:
    a, g = tomogram_filters((64, 64, 64), CFG)
    a0, g0 = fast_filters(CFG)
    # every second frequency of a 64-grid (cycles per voxel) is one of the 32-grid's, in FFT order too
    assert torch.allclose(a[::2, ::2, ::2], a0, atol=1e-6) and torch.allclose(g[::2, ::2, ::2], g0, atol=1e-9)


def test_missing_wedge_lies_along_z_on_a_non_cubic_grid() -> None:
    # geometry alone: exposure damage would lower the ky axis, which every tilt shares, to ~0.77 here
    a, _ = tomogram_filters(SHAPE, dataclasses.replace(CFG, exposure_damage=False))
    nz, ny, nx = SHAPE
    # a quarter of the sampling rate along each axis: x and y are measured (tilt axis y), z is in the wedge
    assert a[0, 0, nx // 4] > 0.8 and a[0, ny // 4, 0] > 0.8
    assert abs(float(a[nz // 4, 0, 0])) < 0.2


# ---- placement ----------------------------------------------------------------------------------

def test_interior_boxes_fit_border_boxes_reach_past_an_edge_and_nobody_overlaps() -> None:
    radii, box = [4.0, 3.5], 16
    p = place_particles(SHAPE, radii, 6, box, np.random.default_rng(3), n_border=3, gap_vox=0.5)
    assert len(p) == 9 and p.near_border.sum() == 3 and set(p.class_id) == {0, 1}
    starts = np.rint(p[["z", "y", "x"]].to_numpy()).astype(int) - box // 2
    inside = ((starts >= 0) & (starts + box <= np.array(SHAPE))).all(axis=1)
    assert (inside == ~p.near_border.to_numpy()).all()
    xyz, r = p[["x", "y", "z"]].to_numpy(), np.array(radii)[p.class_id]
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert (dist >= r[:, None] + r[None] + 0.5 - 1e-9).all()


def test_every_class_has_interior_particles() -> None:
    p = place_particles(SHAPE, [3.0, 3.0, 3.0], 3, 16, np.random.default_rng(0), n_border=3)
    assert sorted(p.class_id[~p.near_border]) == [0, 1, 2]


# ---- imaging ------------------------------------------------------------------------------------

@pytest.mark.parametrize("snr", [0.1, 2.0])
def test_snr_is_exact(snr: float) -> None:
    t = _tomogram(snr)
    assert t.snr_measured == pytest.approx(snr, rel=1e-6)
    assert t.volume.shape == SHAPE and t.volume.dtype == np.float32 and np.isfinite(t.volume).all()


def test_no_noise_at_snr_inf_and_the_seed_fixes_everything() -> None:
    clean, again = _tomogram(math.inf), _tomogram(math.inf)
    assert math.isinf(clean.snr_measured) and np.array_equal(clean.volume, again.volume)
    assert not np.array_equal(_tomogram(0.5, seed=1).volume, _tomogram(0.5, seed=2).volume)
    pd.testing.assert_frame_equal(_tomogram(0.5, seed=4).particles, _tomogram(0.5, seed=4).particles)


def test_tomogram_polarity_and_dose_mode() -> None:
    dark = _tomogram(0.5, seed=3)
    bright = simulate_tomogram(SHAPE, SMALL, 5, 0.5, dataclasses.replace(CFG, polarity="bright"), np.random.default_rng(3),
                               n_border=2, box_a=BOX_A)
    np.testing.assert_array_equal(bright.volume, -dark.volume)
    assert (dark.polarity, bright.polarity) == ("dark", "bright")
    assert 0 < dark.dose_e_per_a2 < math.inf  # the equivalent dose of SNR 0.5
    # dose mode: the shot noise of the dose; four times the dose, a quarter of the noise variance
    low, high = (simulate_tomogram(SHAPE, SMALL, 5, 1.0, dataclasses.replace(CFG, noise="dose", exposure_damage=False,
                                                                        dose_per_tilt_e_per_a2=d), np.random.default_rng(3),
                                   n_border=2, box_a=BOX_A) for d in (1.0, 4.0))
    assert low.dose_e_per_a2 == pytest.approx(61.0) and high.snr_measured == pytest.approx(4 * low.snr_measured, rel=0.1)


def test_each_molecule_sits_at_its_coordinate() -> None:
    t = simulate_tomogram(SHAPE, ["3gl1"], 1, math.inf, CFG, np.random.default_rng(5), box_a=BOX_A)
    w = np.clip(t.potential, 0, None).astype(np.float64)
    grid = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    centre_zyx = np.array([(w * g).sum() / w.sum() for g in grid])
    # centre of scattering vs atom centroid, plus trilinear rotation: well under a voxel
    assert np.abs(centre_zyx - t.particles[["z", "y", "x"]].to_numpy()[0]).max() < 0.5


def test_band_limited_snr_is_the_snr_of_extracted_boxes() -> None:
    cfg = dataclasses.replace(CFG, voxel_size_a=6.8)
    shape, box, crop = (48, 80, 80), 32, 47  # the notebook's boxes: 32 voxels of 10 Å from 47 of 6.8 Å
    kw = dict(n_border=0, box_a=320.0, band_voxel_size_a=10.0)
    noisy = simulate_tomogram(shape, SMALL, 5, 0.5, cfg, np.random.default_rng(7), **kw)
    clean = simulate_tomogram(shape, SMALL, 5, math.inf, cfg, np.random.default_rng(7), **kw)  # same draws up to the noise
    assert noisy.snr_measured == pytest.approx(0.5, rel=1e-6)
    starts = np.rint(noisy.particles[["z", "y", "x"]].to_numpy()).astype(int) - crop // 2

    def boxes(vol: np.ndarray) -> np.ndarray:
        return fourier_rescale(np.stack([vol[z : z + crop, y : y + crop, x : x + crop] for z, y, x in starts]), box)

    signal, noise = boxes(clean.volume), boxes(noisy.volume) - boxes(clean.volume)
    # the SNR was set over the band the rescale keeps (|k| <= 15 cycles per 47 voxels); a crop is not periodic,
    # so its DFT leaks some of the back-projection's strong high-frequency noise into that band (measured: -11 %)
    assert signal.var(axis=(1, 2, 3)).mean() / noise.var() == pytest.approx(0.5, rel=0.15)


def test_extract_recovers_the_picks_and_the_border_flag(tmp_path: Path) -> None:
    t = _tomogram()
    tomo = write_mrc(tmp_path / "tomo.mrc", t.volume, t.voxel_size_a)
    star = write_coordinates_star(tmp_path / "picks.star", t.particles, tomo_name="tomo")
    back = read_coordinates(star)
    assert np.allclose(back[["x", "y", "z"]].to_numpy(), t.particles[["x", "y", "z"]].to_numpy(), atol=1e-3)
    result = extract_subtomograms(tomo, star, tmp_path / "sub", box=16, voxel_size_a=10.0, progress=False)
    meta = pd.read_csv(result.meta)
    assert (meta.border.to_numpy() == t.particles.near_border.to_numpy()).all()


# ---- bad input ----------------------------------------------------------------------------------

def test_too_crowded() -> None:
    with pytest.raises(CryoNBError, match="no free spot for molecule .* expected fewer particles"):
        place_particles(SHAPE, [6.0], 40, 16, np.random.default_rng(0), max_tries=50)


def test_tomogram_thinner_than_the_box() -> None:
    with pytest.raises(CryoNBError, match="tomogram z size 12 voxels is smaller than the 16-voxel box"):
        place_particles((12, 48, 48), [3.0], 1, 16, np.random.default_rng(0))


@pytest.mark.parametrize("shape", [(48, 48), (4, 48, 48)])
def test_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(CryoNBError, match="tomogram shape .* expected three sizes"):
        simulate_tomogram(shape, SMALL, 1, 1.0, CFG, np.random.default_rng(0))


def test_bad_snr_and_no_classes() -> None:
    with pytest.raises(CryoNBError, match="snr=0"):
        simulate_tomogram(SHAPE, SMALL, 1, 0.0, CFG, np.random.default_rng(0))
    with pytest.raises(CryoNBError, match="classes: expected at least one"):
        simulate_tomogram(SHAPE, [], 1, 1.0, CFG, np.random.default_rng(0))


def test_star_needs_coordinates(tmp_path: Path) -> None:
    with pytest.raises(CryoNBError, match=r"picks.star: particle table lacks column\(s\) \['z'\]"):
        write_coordinates_star(tmp_path / "picks.star", pd.DataFrame({"x": [1.0], "y": [2.0]}))


def test_paste_block_clips_each_axis_of_a_non_cubic_volume() -> None:
    from cryonb.simulate.scene import paste_block

    volume = np.zeros((4, 10, 6), np.float32)
    paste_block(volume, np.ones((4, 4, 4), np.float32), np.array([3, 8, 5]))  # overhangs z (4), y (10) and x (6)
    # z rows 1..4 → 1..3 (3), y 6..9 (4, inside), x 3..6 → 3..5 (3): each axis clipped to its own size
    assert volume.sum() == 3 * 4 * 3 and volume[1:4, 6:10, 3:6].min() == 1
