# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Simulating subtomograms from real structures
#
# **What you will learn:** how a cryo-electron tomogram of a macromolecule is formed — electrostatic
# potential, a crowded cellular scene, a tilt series from −60° to +60° (and hence the *missing wedge*),
# the contrast transfer function (CTF) with its zeros, detector blurring, and noise — and what a
# "signal-to-noise ratio of 0.03" really looks like.
#
# **What you will do:** compute the potential of the 15 bundled PDB structures, build a crowded scene,
# take its tilt series, reconstruct it, check that the fast simulator (one 3-D Fourier filter) matches
# the tilt-series reference on the same scene, and generate the data sets every later notebook uses, as the
# profile's spec names them: the CSSL paper's 10 classes (the paper: SNR 0.1, 0.05 and 0.03) and the COS-Net
# set of 15 classes (10 seen, 5 unseen; the paper: SNR ∞, 1000 and 0.5), with segmentation masks.
#
# **What you need:** nothing beyond `make reproduce`. Data sets are cached in `data/generated/` by a
# hash of their recipe, so later notebooks reuse them. Run time (2 CPU cores): smoke ≈ 40 s,
# quick ≈ 0.5 min from nothing (4,800 subtomograms; measured 27 s), paper ≈ 2–3 min (15,000 CSSL +
# 4,500 COS-Net subtomograms at the ≈ 190 per second `benchmarks/bench_simulate.py` measures).
#
# NOTE: the CSSL paper's text lost its first SNR value; **0.1 is our assumption**.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
n_workers = 2
gallery_per_snr = 6

# %%
import math
import time
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import cryonb.nb
from cryonb import simulate, structures
from cryonb.experiments import cosnet as cosnet_experiment
from cryonb.experiments import cssl as cssl_experiment

run = cryonb.nb.start("01_simulation", profile, results_dir, work_dir, spec)
seed = run.seed
config = simulate.SimulationConfig()
config

# %% [markdown]
# ## 1 · Electrostatic potential of each class
# Each structure's biological assembly is turned into a potential map at 10 Å per voxel with the
# 5-Gaussian electron scattering factors of Peng (1996), band-limited at the voxel's Nyquist frequency
# so that no detail finer than 20 Å aliases into the map. The maps are cached in `data/cache/density`.

# %%
maps = [simulate.molecule_map(p, config.voxel_size_a) for p in structures.ALL_CLASSES]
fig, axes = plt.subplots(3, 5, figsize=(11, 7))
for ax, m in zip(axes.ravel(), maps):
    c = m.density.shape[0] // 2
    ax.imshow(m.density[c], cmap="gray_r")
    ax.contour(m.density[c] > m.mask_threshold, levels=[0.5], colors="tab:red", linewidths=0.7)
    ax.set_title(f"{m.pdb_id}  {m.mass_kda:.0f} kDa", fontsize=9)
    ax.axis("off")
fig.suptitle("Central z-slice of each class's potential (red: mask level)")
run.save_figure(fig, "densities")
classes_df = pd.DataFrame({
    "pdb_id": [m.pdb_id for m in maps],
    "mass_kda": [round(m.mass_kda, 1) for m in maps],
    "diameter_a": [round(2 * m.radius_a) for m in maps],
    "cssl": [m.pdb_id in structures.CSSL_CLASSES for m in maps],
    "cosnet_split": ["unseen" if m.pdb_id in simulate.COSNET_UNSEEN_CLASSES else "seen" for m in maps],
})
run.save_table(classes_df, "01_classes", formats=("csv", "md"))
classes_df

# %% [markdown]
# The mask threshold is the level whose super-level set has the protein's volume (1.21 Å³ per Da):
# the COS-Net segmentation target. Small molecules (4d4r, 27 kDa) cover only ~30 voxels at 10 Å.

# %% [markdown]
# ## 2 · A crowded scene
# The target (here RuBisCO, 1bxn) sits near the centre of a 64³ box in a uniformly random orientation;
# neighbours of other classes are packed around it without overlap, close enough to enter the 32³ crop.

# %%
rng = np.random.default_rng(seed)
scene = simulate.make_scene(0, maps, config, rng)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
s = config.scene_size
axes[0].imshow(scene.volume[s // 2], cmap="gray_r")
axes[0].set_title(f"scene (z = centre), {len(scene.placements) - 1} neighbours")
axes[1].imshow(scene.volume.sum(0), cmap="gray_r")
axes[1].set_title("projection along z")
lo = s // 2 - config.crop_size // 2
for ax in axes:
    ax.add_patch(plt.Rectangle((lo, lo), config.crop_size, config.crop_size, fill=False, ec="tab:orange"))
    ax.axis("off")
run.save_figure(fig, "scene")
pd.DataFrame([{"pdb_id": structures.ALL_CLASSES[p.class_id], "offset_vox": np.round(p.offset_vox, 1)} for p in scene.placements])

# %% [markdown]
# ## 3 · Tilt series, CTF and detector
# The scene is projected at 61 tilts about the y axis (−60°…+60°, 2° steps) with torch-fourier-slice.
# Every projection is multiplied by the CTF (torch-ctf: 300 kV, Cs 2.7 mm, 7 % amplitude contrast,
# 4–6 µm underfocus), a B-factor envelope and the detector MTF. The MTF is a measured curve (Gatan K3
# at 300 kV, shipped with ttsim3d; `detector_mtf="ideal"` gives a perfect counting detector's sinc).
# It is read in cycles per *detector* pixel (2.5 Å): the 10 Å voxel is 4× binned, so our whole band
# sits in the first quarter of the detector's band, where any modern camera keeps above 0.9.

# %%
projections = simulate.project_tilt_series(scene.volume, config)
tilts = config.tilts_deg()
fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
for ax, i in zip(axes, [0, len(tilts) // 2, len(tilts) - 1]):
    ax.imshow(projections[i], cmap="gray_r")
    ax.set_title(f"tilt {tilts[i]:+.0f}°")
    ax.axis("off")
run.save_figure(fig, "tilt_series")

defocus_um = 5.0
k, ctf = simulate.ctf_curve(defocus_um, config, n_samples=512)
k_fine = torch.linspace(0, 0.5 / config.voxel_size_a, 512, dtype=torch.float64)
zeros = simulate.ctf_zeros_inv_a(defocus_um, config, 0.5 / config.voxel_size_a)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(k, ctf, label="CTF (torch-ctf)")
ax.plot(k_fine, simulate.transfer_of_k(k_fine, defocus_um, config), label="CTF × envelope × MTF")
ax.axhline(0, color="k", lw=0.5)
for z in zeros:
    ax.axvline(z, color="tab:red", ls=":", lw=1)
ax.set_xlabel("spatial frequency (Å⁻¹)")
ax.set_title(f"{defocus_um} µm underfocus; dotted: analytic zeros at {', '.join(f'1/{1 / z:.0f} Å' for z in zeros)}")
ax.legend()
run.save_figure(fig, "ctf")

k_det = torch.linspace(0, 0.5 / config.detector_pixel_a, 256, dtype=torch.float64)  # to the detector's Nyquist
fig, ax = plt.subplots(figsize=(6, 3.2))
for name in (config.detector_mtf, "ideal"):
    ax.plot(k_det * config.detector_pixel_a, simulate.mtf_of_k(k_det, replace(config, detector_mtf=name)), label=name)
ax.axvspan(0, config.detector_pixel_a / (2 * config.voxel_size_a), color="0.9", label="band of the 10 Å voxels")
ax.set_xlabel("cycles per detector pixel")
ax.set_ylabel("MTF")
ax.legend()
run.save_figure(fig, "mtf")

# %% [markdown]
# ## 4 · Reconstruction and the missing wedge
# Weighted back-projection (torch-fourier-slice's direct Fourier inversion) of the CTF-filtered tilt
# series. No tilt reaches beyond ±60°, so a wedge of Fourier space around the beam axis stays empty —
# the elongation along z of every tomogram.

# %%
# the tilt-series path at SNR 0.5: its noise-free part is shown here, the whole is compared in section 5
ref = simulate.simulate_tiltseries(scene.volume, defocus_um, 0.5, config, np.random.default_rng(2))
power = np.abs(np.fft.fftshift(np.fft.fftn(ref.signal))) ** 2
c = config.crop_size // 2
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
axes[0].imshow(ref.signal[c], cmap="gray")
axes[0].set_title("reconstruction, xy slice")
axes[1].imshow(ref.signal[:, c], cmap="gray")
axes[1].set_title("xz slice (z up)")
axes[2].imshow(np.log10(power[:, c] + 1e-12), cmap="magma")
axes[2].set_title("log power, kx–kz plane: missing wedge")
for ax in axes:
    ax.axis("off")
run.save_figure(fig, "missing_wedge")

# %% [markdown]
# ## 5 · Fast path = tilt-series path
# With the same optics at every tilt, projection → CTF → back-projection is one linear, shift-invariant
# 3-D filter. The fast path applies it with one FFT per subtomogram; its wedge transfer and noise
# spectrum are *measured* from the tilt-series path once (cached). Same scene, both paths:

# %%
fast = simulate.simulate_fast(scene.volume, defocus_um, 0.5, config, np.random.default_rng(1))
slow = ref  # computed in section 4 (the tilt-series path is the slow part of this notebook)
equivalence = pd.DataFrame([{
    "signal_correlation": float(np.corrcoef(fast.signal.ravel(), slow.signal.ravel())[0, 1]),
    "signal_std_ratio": float(fast.signal.std() / slow.signal.std()),
    "snr_fast": fast.snr_measured, "snr_tiltseries": slow.snr_measured,
}])
run.save_table(equivalence, "01_fast_vs_tiltseries", formats=("csv", "md"))
equivalence

# %%
assert equivalence.signal_correlation[0] > 0.99, equivalence
assert abs(equivalence.signal_std_ratio[0] - 1) < 0.05, equivalence
assert abs(equivalence.snr_fast[0] / 0.5 - 1) < 0.05 and abs(equivalence.snr_tiltseries[0] / 0.5 - 1) < 0.05

# %% [markdown]
# ## 6 · The data sets
# SNR is Var(signal)/Var(noise) over the 32³ crop: signal and noise are reconstructed separately and the
# noise scaled, so the requested value is met exactly. Each subtomogram is then z-scored.
# Sample *i* of a recipe uses the seed sequence (seed, i): the same scenes appear at every SNR level
# (paired data), and the result does not depend on the number of worker processes.

# The data sets are the ones the spec (`params/<profile>.yaml`, sections `cssl.data` and `cosnet.data`) names,
# so the later notebooks find them already made.

# %%
recipes = [*cssl_experiment.recipes(run.spec).values(), *cosnet_experiment.recipes(run.spec).values()]
rows, datasets = [], {}
for recipe in recipes:
    t0 = time.perf_counter()
    ds = simulate.ensure_dataset(recipe, n_workers=n_workers)
    seconds = time.perf_counter() - t0
    datasets[recipe.name] = ds
    m = ds.meta
    rows.append({
        "data_set": recipe.name, "folder": ds.root.name, "n": len(ds), "classes": len(ds.classes),
        "snr_requested": recipe.snr, "snr_measured_mean": float(m.snr_measured.mean()),
        "snr_measured_max_rel_error": float((m.snr_measured / m.snr - 1).abs().max()) if math.isfinite(recipe.snr) else 0.0,
        "train/val/test": "/".join(str(int((m.split == s).sum())) for s in ("train", "val", "test")),
        "unseen_classes": int(m[m.class_split == "unseen"].class_id.nunique()),
        "mask_fraction_mean": float(m.mask_fraction.mean()),
        "seconds": round(seconds, 1),
    })
summary = pd.DataFrame(rows)
run.save_table(summary, "01_datasets_snr", formats=("csv", "md"))
summary

# %%
for row, recipe in zip(rows, recipes):
    assert row["n"] == len(recipe.classes) * recipe.n_per_class
    assert row["snr_measured_max_rel_error"] < 0.05, row
    ds = datasets[recipe.name]
    assert abs(float(ds.volumes[0].mean())) < 1e-3 and abs(float(ds.volumes[0].std()) - 1) < 1e-3
    assert ds.masks[:].sum(axis=(1, 2, 3)).min() > 0, "every subtomogram has a non-empty target mask"
assert all(r["unseen_classes"] == 5 for r in rows if r["data_set"].startswith("cosnet"))

# %% [markdown]
# ## 7 · Gallery: what SNR 0.03 looks like
# Central xy slices of the same scenes at every SNR (red: target mask). At 0.03 the molecule is barely
# visible to the eye, which is why the papers need many examples and good representations.

# %%
names = [r.name for r in recipes]
fig, axes = plt.subplots(len(names), gallery_per_snr, figsize=(1.6 * gallery_per_snr, 1.7 * len(names)))
axes = np.atleast_2d(axes)
for r_i, name in enumerate(names):
    ds = datasets[name]
    picks = np.linspace(0, len(ds) - 1, gallery_per_snr).astype(int)
    for c_i, idx in enumerate(picks):
        ax = axes[r_i, c_i]
        ax.imshow(ds.volumes[idx][c], cmap="gray")
        if ds.masks[idx][c].any():
            ax.contour(ds.masks[idx][c], levels=[0.5], colors="tab:red", linewidths=0.6)
        ax.set_xticks([])
        ax.set_yticks([])
        if c_i == 0:
            ax.set_ylabel(name.split("-n")[0], fontsize=7)
        if r_i == 0:
            ax.set_title(ds.meta.pdb_id[idx], fontsize=8)
run.save_figure(fig, "gallery")

# %% [markdown]
# Export any sample for ChimeraX, IMOD or napari with
# `python -m cryonb export-mrc DATASET_FOLDER INDEX -o sample.mrc` (voxel size in the header).
#
# ## Try it yourself
# 1. Copy `params/quick.yaml` to `params/try.yaml`, set `cssl: data: snrs: [1.0, 0.1]` there and run
#    `python -m cryonb run --profile try --only 01`: predict how the gallery changes, then check. At which SNR
#    can you still tell 1bxn from 3hhb by eye?
# 2. Build `simulate.SimulationConfig(tilt_min_deg=-30, tilt_max_deg=30)` and redraw section 4:
#    how wide is the missing wedge now, and how elongated is the xz slice?
# 3. Change `defocus_um` in section 3 to 2 µm: where do the CTF zeros move, and what does that mean
#    for the 10 Å voxel's frequency range?
#
# ## Further reading
# - Peng, L.-M. et al. (1996) Robust parameterization of elastic and absorptive electron atomic
#   scattering factors. *Acta Cryst. A* 52, 257–276.
# - Crowther, DeRosier & Klug (1970) The reconstruction of a three-dimensional structure from projections.
# - Pei, L. et al. (2016) Simulating cryo electron tomograms of crowded cell cytoplasm for assessment of
#   automated particle picking. *BMC Bioinformatics* 17, 405 (the lineage of the papers' data).
# - teamtomo: torch-fourier-slice, torch-ctf, ttsim3d (github.com/teamtomo).
