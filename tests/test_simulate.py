"""Simulator physics and data-set contract: CTF zeros, projections, wedge, SNR, seeds, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryonb.errors import CryoNBError
from cryonb.simulate.optics import measured_mtf_path
from cryonb.simulate import (
    DatasetRecipe,
    SimulationConfig,
    cosnet_recipe,
    crop_center,
    cssl_recipe,
    ctf_curve,
    ctf_of_k,
    ctf_zeros_inv_a,
    ensure_dataset,
    generate_dataset,
    irfftn_center_crop,
    load_maps,
    make_scene,
    molecule_map,
    mtf_of_k,
    project_tilt_series,
    reconstruct_tilt_series,
    simulate_fast,
    simulate_sample,
    simulate_tiltseries,
)

SMALL = SimulationConfig(scene_size=32, crop_size=16, n_neighbours=1, max_shift_vox=1.0)


def _gauss(n: int, centre_zyx: tuple[float, float, float], sigma: float) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64)] * 3, indexing="ij")
    return np.exp(-((z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2) / (2 * sigma**2))


# ---- optics ----------------------------------------------------------------------------------

def test_ctf_zeros_at_analytic_frequencies() -> None:
    cfg = SimulationConfig(voxel_size_a=2.0, detector_pixel_a=1.0)  # finer sampling: several zeros below Nyquist
    zeros = ctf_zeros_inv_a(5.0, cfg, 0.25)
    assert len(zeros) >= 5
    # first zero of a phase-contrast CTF: chi = pi*lambda*dz*k^2 ~ pi - phi_amp -> k ~ sqrt((1 - 0.0223)/(lambda dz))
    lam = 0.019687  # Å at 300 kV
    assert zeros[0] == pytest.approx(math.sqrt((1 - math.asin(0.07) / math.pi) / (lam * 5e4)), rel=0.01)
    values = ctf_of_k(torch.tensor(zeros), 5.0, cfg).numpy()
    assert np.abs(values).max() < 5e-3  # |CTF| <= 1; 5e-3 = 0.3 degrees of phase (wavelength constants differ in the 6th digit)
    # torch-ctf's own 1-D curve changes sign at the same frequencies (within one sample)
    k, ctf = ctf_curve(5.0, cfg, n_samples=4000)
    crossings = k[1:][np.sign(ctf[1:]) != np.sign(ctf[:-1])]
    step = k[1] - k[0]
    for z in zeros:
        assert np.min(np.abs(crossings - z)) < 2 * step


# ---- projection and reconstruction -----------------------------------------------------------

def test_measured_mtf_follows_the_detector_curve_at_the_detector_pixel() -> None:
    import starfile

    cfg = SimulationConfig()  # default: measured K3 at 300 kV
    table = starfile.read(measured_mtf_path(cfg.detector_mtf))
    f, value = table["rlnResolutionInversePixel"].to_numpy(), table["rlnMtfValue"].to_numpy()
    # the curve is in cycles per detector pixel: k (1/Å) = f / detector_pixel_a
    got = mtf_of_k(torch.tensor(f / cfg.detector_pixel_a), cfg).numpy()
    np.testing.assert_allclose(got, value, atol=1e-9)
    # halfway between two table points: the linear interpolant
    mid = mtf_of_k(torch.tensor([(f[3] + f[4]) / 2 / cfg.detector_pixel_a]), cfg).item()
    assert mid == pytest.approx((value[3] + value[4]) / 2, abs=1e-9)
    ideal = SimulationConfig(detector_mtf="ideal")
    k = torch.tensor([0.0, 0.1, 0.2])  # 1/Å; ideal = sinc(pi k pixel), 0.25 and 0.5 cycles per pixel
    np.testing.assert_allclose(mtf_of_k(k, ideal).numpy(), [1.0, np.sinc(0.25), np.sinc(0.5)], atol=1e-12)


def test_unknown_detector_is_named() -> None:
    with pytest.raises(CryoNBError, match="detector_mtf='k9'.*k3_standard_300kV_FL2"):
        SimulationConfig(detector_mtf="k9")


def test_cropped_inverse_fft_equals_the_crop_of_the_full_inverse() -> None:
    spec = torch.fft.rfftn(torch.randn(24, 24, 24, generator=torch.Generator().manual_seed(3)))
    full = crop_center(torch.fft.irfftn(spec, s=(24, 24, 24)), 10)
    np.testing.assert_allclose(irfftn_center_crop(spec, 24, 10), full, atol=1e-5)


def test_projection_of_gaussian_equals_line_integral() -> None:
    n, sigma = 32, 2.5
    vol = _gauss(n, (16, 16, 16), sigma).astype(np.float32)
    cfg = SimulationConfig(scene_size=n, crop_size=16, tilt_min_deg=0.0, tilt_max_deg=30.0, tilt_step_deg=30.0)
    proj = project_tilt_series(vol, cfg).numpy()  # tilts 0 and 30 degrees
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    analytic = math.sqrt(2 * math.pi) * sigma * np.exp(-((y - 16) ** 2 + (x - 16) ** 2) / (2 * sigma**2))
    for image in proj:  # a centred blob is rotation invariant: every tilt gives the same integral
        assert np.abs(image - analytic).max() < 0.01 * analytic.max()


def test_projection_at_zero_tilt_is_sum_along_z() -> None:
    rng = np.random.default_rng(1)
    vol = np.zeros((32, 32, 32), dtype=np.float32)
    # blobs within 3 voxels of the centre: torch-fourier-slice pre-divides the volume by the trilinear
    # kernel's sinc^2, which a grid-aligned 0-degree slice does not undo: a bias of 1/sinc^2(r / 2n)
    # (< 1 % for r <= 3 voxels, 4 % at r = 8; see the notebook). Farther blobs would test that quirk.
    for _ in range(3):
        vol += _gauss(32, tuple(rng.uniform(13, 19, 3)), 2.0).astype(np.float32)
    cfg = SimulationConfig(scene_size=32, crop_size=16, tilt_min_deg=0.0, tilt_max_deg=0.0)
    proj = project_tilt_series(vol, cfg).numpy()[0]
    expected = vol.sum(0)
    assert np.abs(proj - expected).max() < 0.015 * expected.max()
    assert np.abs(proj - expected.T).max() > 0.1 * expected.max()  # (y, x) order, not transposed


def _wedge(n: int, max_tilt_deg: float, margin_vox: float = 0.0) -> np.ndarray:
    """Missing wedge (tilt axis y) on an n^3 fftn grid: frequencies beyond the last tilt's plane by
    more than ``margin_vox`` Fourier voxels."""
    f = np.fft.fftfreq(n) * n
    kz, _, kx = np.meshgrid(f, f, f, indexing="ij")
    phi = np.arctan2(np.abs(kz), np.abs(kx))
    beyond = np.hypot(kx, kz) * np.sin(phi - math.radians(max_tilt_deg))
    return (phi > math.radians(max_tilt_deg)) & (beyond > margin_vox)


def test_noise_free_reconstruction_matches_density_outside_the_wedge() -> None:
    cfg = SimulationConfig(scene_size=32, crop_size=16)
    m = molecule_map("2ldb", cfg.voxel_size_a)
    vol = np.zeros((32, 32, 32), dtype=np.float32)
    t = m.density.shape[0]
    vol[16 - t // 2 : 16 - t // 2 + t, 16 - t // 2 : 16 - t // 2 + t, 16 - t // 2 : 16 - t // 2 + t] = m.density
    rec = reconstruct_tilt_series(project_tilt_series(vol, cfg), cfg).numpy()
    spec_rec, spec_vol = np.fft.fftn(rec), np.fft.fftn(vol)
    # deeper than 1.5 Fourier voxels into the wedge (trilinear insertion on the 2x padded grid and
    # the crop back to 32^3 smear ~1 voxel) the reconstruction has < 0.1 % of its energy, while the
    # density had > 5 % there
    deep = _wedge(32, 60.0, margin_vox=1.5)
    energy = lambda spec, sel: (np.abs(spec[sel]) ** 2).sum() / (np.abs(spec) ** 2).sum()  # noqa: E731
    assert energy(spec_vol, deep) > 0.05
    assert energy(spec_rec, deep) < 1e-3
    # outside the wedge and below 0.8 Nyquist (where the 61 tilts overlap: Crowther), the
    # reconstruction is the density: correlation > 0.98 (interpolation errors are ~1 %)
    f = np.fft.fftfreq(32)
    kk = np.sqrt(sum(g**2 for g in np.meshgrid(f, f, f, indexing="ij")))
    keep = ~_wedge(32, 60.0) & (kk < 0.4)
    a, b = spec_rec[keep], spec_vol[keep]
    corr = np.real(np.vdot(a, b)) / np.sqrt(np.vdot(a, a).real * np.vdot(b, b).real)
    assert corr > 0.98
    # and without the wedge mask it is clearly worse: the wedge is really missing
    full = np.corrcoef(rec.ravel(), vol.ravel())[0, 1]
    assert full < corr


# ---- SNR ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("snr", "path"), [(0.03, "fast"), (0.5, "fast"), (1000.0, "fast"), (0.03, "tiltseries")])
def test_snr_is_exact(snr: float, path: str) -> None:
    cfg = SimulationConfig(scene_size=32, crop_size=16, n_neighbours=1, path=path)
    maps = [molecule_map("4d4r"), molecule_map("3hhb")]
    rng = np.random.default_rng(3)
    scene = make_scene(0, maps, cfg, rng)
    sim = simulate_fast if path == "fast" else simulate_tiltseries
    sub = sim(scene.volume, 5.0, snr, cfg, rng)
    noise = sub.volume - sub.signal
    measured = sub.signal.var() / noise.var()
    assert measured == pytest.approx(snr, rel=0.05)
    # the noise is independent of the signal: corr(volume, signal) = sqrt(snr / (1 + snr))
    corr = np.corrcoef(sub.volume.ravel(), sub.signal.ravel())[0, 1]
    assert corr == pytest.approx(math.sqrt(snr / (1 + snr)), abs=0.06)


def test_snr_inf_adds_no_noise() -> None:
    recipe = cosnet_recipe(snr=math.inf, n_per_class=1, seed=0, scene_size=32, crop_size=16, n_neighbours=1)
    recipe = DatasetRecipe(name="t", classes=("4d4r", "3hhb"), n_per_class=1, snr=math.inf, simulation=recipe.simulation)
    maps = load_maps(recipe)
    vol, mask, row = simulate_sample(recipe, 0, maps)
    rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0,)))
    scene = make_scene(0, maps, recipe.simulation, rng)
    defocus = rng.uniform(recipe.simulation.defocus_um_min, recipe.simulation.defocus_um_max)
    sub = simulate_fast(scene.volume, defocus, math.inf, recipe.simulation, rng)
    clean = (sub.signal - sub.signal.mean()) / sub.signal.std()
    assert np.abs(vol - clean).max() < 1e-5
    assert math.isinf(row["snr_measured"]) and row["defocus_um"] == pytest.approx(defocus)
    assert mask.sum() > 0


# ---- data sets: contract, seeds, storage -----------------------------------------------------

def _tiny(seed: int) -> DatasetRecipe:
    sim = SimulationConfig(scene_size=32, crop_size=16, n_neighbours=1)
    return DatasetRecipe(name="tiny", classes=("4d4r", "3hhb", "3gl1"), n_per_class=4, snr=0.5, seed=seed,
                         unseen_classes=("3gl1",), simulation=sim)


def test_same_seed_same_data_whatever_the_workers(tmp_path: Path) -> None:
    a = ensure_dataset(_tiny(0), n_workers=1, progress=False, root_dir=tmp_path / "a")
    b = generate_dataset(_tiny(0), tmp_path / "b" / "x", n_workers=2, chunk_size=3, progress=False)
    from cryonb.simulate import load_dataset

    b = load_dataset(b)
    assert np.array_equal(np.asarray(a.volumes), np.asarray(b.volumes))
    assert np.array_equal(np.asarray(a.masks), np.asarray(b.masks))
    assert a.meta.drop(columns=[]).equals(b.meta)
    c = ensure_dataset(_tiny(1), n_workers=1, progress=False, root_dir=tmp_path / "a")
    assert not np.allclose(np.asarray(a.volumes), np.asarray(c.volumes))
    assert c.root != a.root  # the seed is part of the content hash


def test_dataset_contract(tmp_path: Path) -> None:
    ds = ensure_dataset(_tiny(0), n_workers=1, progress=False, root_dir=tmp_path)
    assert ds.volumes.shape == (12, 16, 16, 16) and ds.volumes.dtype == np.float32
    assert ds.masks.dtype == np.uint8 and set(np.unique(ds.masks)) <= {0, 1}
    v = np.asarray(ds.volumes, dtype=np.float64).reshape(12, -1)
    assert np.abs(v.mean(1)).max() < 1e-4 and np.abs(v.std(1) - 1).max() < 1e-4
    assert list(ds.meta.class_id) == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.classes == ["4d4r", "3hhb", "3gl1"]
    # seen classes: 60:20:20 of 4 -> 2 train (round(2.4)), 1 val, 1 test; unseen: all test
    assert (ds.meta.query("class_id == 0").split.value_counts().to_dict()) == {"train": 2, "val": 1, "test": 1}
    assert set(ds.meta.query("class_id == 2").split) == {"test"}
    assert list(ds.indices("test", "unseen")) == [8, 9, 10, 11]
    assert len(ds.indices("train")) == 4
    assert np.allclose(ds.meta.snr_measured, 0.5, rtol=0.05)
    for col in ("pdb_id", "split", "class_split", "snr", "seed", "rotation", "shift", "defocus_um"):
        assert col in ds.meta.columns
    # reloading reuses the folder (no regeneration): same modification time
    mtime = (ds.root / "volumes.npy").stat().st_mtime_ns
    again = ensure_dataset(_tiny(0), progress=False, root_dir=tmp_path)
    assert (again.root / "volumes.npy").stat().st_mtime_ns == mtime


def test_recipes_follow_the_papers() -> None:
    r = cssl_recipe(snr=0.1, n_per_class=100, seed=0)
    assert len(r.classes) == 10 and r.n_total == 1000 and r.unseen_classes == ()
    c = cosnet_recipe(snr=1000.0, n_per_class=60, seed=0)
    assert len(c.classes) == 24 and len(c.unseen_classes) == 8 and len(c.validation_classes) == 2  # 22 of the paper's design + 2
    assert len(set(c.classes) - set(c.unseen_classes) - set(c.validation_classes)) == 14
    assert cssl_recipe(snr=0.1, n_per_class=100, seed=1).content_hash() != r.content_hash()


# ---- bad input -------------------------------------------------------------------------------

def test_unknown_pdb_id() -> None:
    with pytest.raises(CryoNBError, match="unknown PDB id '9zzz'"):
        molecule_map("9zzz")


def test_structure_without_atoms(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pdb"
    empty.write_text("HEADER    EMPTY\nEND\n")
    with pytest.raises(CryoNBError, match="no atoms"):
        molecule_map(empty, use_cache=False)


def test_molecule_larger_than_box() -> None:
    recipe = DatasetRecipe(name="big", classes=("1bxn",), n_per_class=1, snr=1.0,
                           simulation=SimulationConfig(crop_size=8, scene_size=16, max_shift_vox=1.0))
    with pytest.raises(CryoNBError, match="1bxn: molecule diameter .* exceeds the crop box"):
        load_maps(recipe)


@pytest.mark.parametrize("snr", [0.0, -1.0, float("nan")])
def test_snr_must_be_positive(snr: float) -> None:
    with pytest.raises(CryoNBError, match="snr="):
        cssl_recipe(snr=snr, n_per_class=2)


def test_empty_tilt_range() -> None:
    with pytest.raises(CryoNBError, match="tilt_max_deg"):
        SimulationConfig(tilt_min_deg=10.0, tilt_max_deg=-10.0)


@pytest.mark.parametrize("voxel", [0.0, -10.0])
def test_voxel_size_must_be_positive(voxel: float) -> None:
    with pytest.raises(CryoNBError, match="voxel_size_a"):
        SimulationConfig(voxel_size_a=voxel)
    with pytest.raises(CryoNBError, match="voxel_size_a"):
        molecule_map("4d4r", voxel_size_a=voxel)


def test_unknown_simulation_parameter() -> None:
    with pytest.raises(CryoNBError, match=r"unknown simulation parameter\(s\) \['voxel_a'\]"):
        cssl_recipe(snr=0.1, n_per_class=2, voxel_a=10)
