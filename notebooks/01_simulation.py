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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/01_simulation.ipynb)
#
# **What you will learn:** how a cryo-electron tomogram of a macromolecule is formed — electrostatic
# potential, a crowded cellular scene, a tilt series from −60° to +60° (and hence the *missing wedge*),
# the contrast transfer function (CTF) with its zeros, detector blurring, and noise — and what a
# "signal-to-noise ratio of 0.03" really looks like. Then what real data add: vitreous ice around the
# molecules, thicker ice at high tilt, radiation damage in the order the tilts are taken, electron
# counting noise, phase plates and phase flipping, and why protein is dark in a tomogram.
#
# **What you will do:** compute the potential of the 24 bundled PDB structures, build a crowded scene,
# take its tilt series, reconstruct it, check that the fast simulator (one 3-D Fourier filter) matches
# the tilt-series reference on the same scene, and generate the data sets every later notebook uses, as the
# profile's spec names them: the CSSL paper's 10 classes (the paper: SNR 0.1, 0.05 and 0.03) and the COS-Net
# set of all 24 (14 seen, 8 unseen test classes and 2 validation classes; the paper: 22 classes, 14 seen and 8 unseen,
# at SNR ∞, 1000 and 0.5), with segmentation masks.
#
# **What you need:** nothing beyond `make reproduce`. Data sets are cached in `data/generated/` by a
# hash of their recipe, so later notebooks reuse them. Run time (2 CPU cores): smoke ≈ 40 s,
# quick ≈ 1–2 min from nothing (its measured time is in the wall-time table of `results/quick/REPORT.md`), paper ≈ 2–3 min (15,000 CSSL +
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

# %% tags=["colab", "hide-cell"]
# On Google Colab only (anywhere else this cell does nothing): fetch cryonb, install it beside Colab's own torch,
# and switch to the smoke profile (quick on a GPU runtime) with results and checkpoints under /content/cryonb.
import os
import subprocess
import sys

if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
    if not os.path.isdir("/content/cryonb"):
        subprocess.run(["git", "clone", "--depth", "1", "https://github.com/cryonb/cryonb.git", "/content/cryonb"], check=True)
    sys.path.insert(0, "/content/cryonb")
    os.chdir("/content/cryonb")
    from cryonb.colab import setup

    globals().update(setup("01_simulation"))

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
    "cosnet_split": ["unseen" if m.pdb_id in run.spec.cosnet.data.unseen else "validation" if m.pdb_id in run.spec.cosnet.data.validation else "seen" for m in maps],
})
run.save_table(classes_df, "01_classes", formats=("csv", "md"))
classes_df

# %% [markdown]
# The mask threshold is the level whose super-level set has the protein's volume (1.21 Å³ per Da):
# the COS-Net segmentation target. The smallest molecules (masses in the panel titles) cover only a few dozen voxels at 10 Å.

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
# ## 5a · Rotating a molecule without blurring it
# Every molecule enters a scene in a random orientation, so its map has to be rotated and shifted by a
# fraction of a voxel. Reading a rotated map from the voxel grid by trilinear interpolation averages
# neighbouring voxels: it blurs, and by how much depends on the orientation. The simulator instead keeps
# each potential band-limited to a sphere (the same frequencies in every orientation), sampled twice as
# finely as the voxels, and reads it with a quadratic B-spline (`simulate.rotate_map`), within the sphere
# that fits the molecule's box. Below: the power spectrum of one molecule before and after 20 random
# rotations, for both methods (trilinear here is `scipy.ndimage.affine_transform(order=1)` on the voxel map,
# what the simulator did before), each compared with the unrotated map within the same sphere.

# %%
from scipy import ndimage
from scipy.spatial.transform import Rotation


def shell_power(volume: np.ndarray, n_shells: int) -> np.ndarray:
    """Mean |F|² in n_shells equal shells of |k| from 0 to 0.5 cycles per voxel."""
    f = np.fft.fftfreq(volume.shape[0])
    kk = np.sqrt(sum(g**2 for g in np.meshgrid(f, f, f, indexing="ij")))
    shell = np.minimum((kk / 0.5 * n_shells).astype(int), n_shells)
    power = np.abs(np.fft.fftn(volume)) ** 2
    return (np.bincount(shell.ravel(), power.ravel(), n_shells + 1) / np.bincount(shell.ravel(), minlength=n_shells + 1))[:n_shells]


probe = maps[structures.ALL_CLASSES.index("2h12")]  # a 20-voxel box: enough voxels per shell
unrotated = simulate.rotate_molecule(probe, Rotation.identity(), np.zeros(3))  # the map, within its sphere
in_sphere = unrotated != 0
n_shells, rot_rng = 8, np.random.default_rng(seed)
reference = shell_power(unrotated, n_shells)
methods = ("quadratic B-spline, 2x finer map (simulator)", "trilinear on the voxel grid (before)")
spectra: dict[str, list[np.ndarray]] = {name: [] for name in methods}
for _ in range(20):
    rot, shift = Rotation.random(random_state=rot_rng), rot_rng.uniform(-0.5, 0.5, 3)
    spectra[methods[0]].append(shell_power(simulate.rotate_molecule(probe, rot, shift), n_shells))
    r_zyx = rot.as_matrix()[::-1, ::-1]  # acting on (z, y, x) indices
    centre = np.full(3, probe.density.shape[0] / 2)
    trilinear = ndimage.affine_transform(probe.density, r_zyx.T, offset=centre - r_zyx.T @ (centre + shift), order=1)
    spectra[methods[1]].append(shell_power(trilinear * in_sphere, n_shells))
shell_centres = (np.arange(n_shells) + 0.5) * 0.5 / n_shells
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].semilogy(shell_centres, reference, "k.-", label="unrotated")
for name in methods:
    axes[0].semilogy(shell_centres, np.mean(spectra[name], axis=0), "o-", label=f"rotated: {name}")
    axes[1].plot(shell_centres, np.mean(spectra[name], axis=0) / reference, "o-", label=name)
axes[0].set_ylabel("power (mean |F|² per shell)")
axes[1].set_ylabel("power after / before rotation")
axes[1].axhline(1, color="k", lw=0.5)
for ax in axes:
    ax.axvspan(0.3, 0.5, color="0.92")
    ax.set_xlabel("spatial frequency (cycles per voxel)")
    ax.legend(fontsize=7)
fig.suptitle(f"{probe.pdb_id}: mean over 20 random rotations (grey: 0.3–0.5 cycles per voxel)")
run.save_figure(fig, "rotation_power")
high = (shell_centres >= 0.3) & (shell_centres < 0.5)
rotation_kept = {name: float(np.mean(np.array(spectra[name])[:, high].sum(1) / reference[high].sum())) for name in methods}
print("power kept at 0.3-0.5 cycles/voxel:", {name: round(v, 3) for name, v in rotation_kept.items()})

# %%
assert rotation_kept[methods[0]] >= 0.9, rotation_kept

# %% [markdown]
# ## 5b · Protein in ice: the solvent
# The molecules sit in vitreous ice, not in vacuum. What the electrons see is the difference between the
# protein's potential and that of the ice it displaces. Each atom displaces 1.21 Å³ per dalton of ice
# (with its hydrogens, which the PDB files lack and the simulator adds back as "united atoms"). The map
# is zero outside the molecule and protein-minus-ice inside, so its low-frequency contrast is much
# weaker than in vacuum. The volts come from the map: its integral over the protein volume.

# %%
big = maps[0]  # RuBisCO, the largest molecule
t_big = big.density.shape[0]
vacuum = simulate.molecule_map(big.pdb_id, config.voxel_size_a, ice_potential_v=0.0)
volume_a3 = big.mass_kda * 1000 * 1.21
mip = {name: float(m.density.sum()) * config.voxel_size_a**3 / volume_a3 * simulate.POTENTIAL_V_A2
       for name, m in (("in vacuum", vacuum), ("in ice", big))}
fig, ax = plt.subplots(figsize=(6.5, 3.2))
x_a = (np.arange(t_big) - t_big / 2) * config.voxel_size_a
for name, m in (("in vacuum", vacuum), ("in ice", big)):
    ax.plot(x_a, m.density[t_big // 2, t_big // 2] * simulate.POTENTIAL_V_A2, "o-", label=f"{name}: mean {mip[name]:.2f} V")
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("x through the centre (Å)")
ax.set_ylabel("potential (V)")
ax.set_title(f"{big.pdb_id}: ice at {config.ice_potential_v} V subtracted inside the molecule")
ax.legend()
run.save_figure(fig, "solvent")
print(f"mean inner potential: protein {mip['in vacuum']:.2f} V, contrast in ice {mip['in ice']:.2f} V "
      f"(ratio {mip['in ice'] / mip['in vacuum']:.2f})")

# %% [markdown]
# ## 5c · Signal per tilt: ice thickness, tilt scheme and dose
# A tilted specimen is thicker along the beam: a slab of thickness t is crossed over t / cos θ. With an
# energy filter, only the electrons that lost no energy form the image, a fraction exp(−t / (λ_in cos θ))
# of the dose; the others add no signal, so high tilts are noisier. And every electron damages the
# specimen: the tilts recorded last have lost most of their fine detail. The dose-symmetric scheme
# (Hagen et al. 2017) records the low tilts, which carry the most information, first.

# %%
tilts_arr = np.array(config.tilts_deg())
zero_loss = simulate.zero_loss_fraction(tilts_arr, config)
k_probe = 1 / 30.0  # Å⁻¹: a 30 Å detail
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].plot(tilts_arr, zero_loss, "k.-", label="zero-loss fraction (electrons counted)")
for scheme in simulate.TILT_SCHEMES:
    cfg_s = replace(config, tilt_scheme=scheme)
    left = simulate.exposure_weight_of_k(torch.tensor([k_probe]), torch.as_tensor(cfg_s.exposure_e_per_a2())).numpy()
    axes[0].plot(tilts_arr, left, ".-", label=f"amplitude left at 1/30 Å, {scheme}")
    axes[1].plot(tilts_arr, cfg_s.exposure_e_per_a2(), ".-", label=scheme)
axes[0].set_xlabel("tilt (°)")
axes[0].set_ylim(0, 1.05)
axes[0].legend(fontsize=8)
axes[0].set_title(f"ice {config.ice_thickness_nm:g} nm, λ_in {config.inelastic_mean_free_path_nm:g} nm")
axes[1].set_xlabel("tilt (°)")
axes[1].set_ylabel("exposure before the tilt (e/Å²)")
axes[1].set_title(f"{config.dose_per_tilt_e_per_a2:g} e/Å² per tilt, {len(tilts_arr)} tilts")
axes[1].legend()
run.save_figure(fig, "signal_per_tilt")
print(f"zero-loss fraction at 0° {zero_loss[tilts_arr == 0][0]:.2f}, at ±60° {zero_loss[0]:.2f}; "
      f"total dose {config.dose_per_tilt_e_per_a2 * len(tilts_arr):g} e/Å²")

# %% [markdown]
# ## 5d · Radiation damage: dose-weighting curves
# Grant & Grigorieff (2015) measured the *critical exposure* N_e(k) = 0.245 k^−1.665 + 2.81 e/Å²: after
# an exposure N, the amplitude at spatial frequency k has fallen to exp(−N / (2 N_e(k))). Fine detail
# dies first; the 10 Å voxel's band (left of the dotted line) survives much longer.

# %%
k_curve = torch.linspace(0.005, 0.25, 400, dtype=torch.float64)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for exposure in (5, 20, 60, 120):
    axes[0].plot(k_curve, simulate.exposure_weight_of_k(k_curve, float(exposure)), label=f"after {exposure} e/Å²")
axes[1].plot(k_curve, simulate.critical_exposure_e_per_a2(k_curve))
for ax in axes:
    ax.axvline(0.5 / config.voxel_size_a, color="k", ls=":", lw=1)
    ax.set_xlabel("spatial frequency (Å⁻¹)")
axes[0].set_ylabel("amplitude left")
axes[0].legend()
axes[1].set_ylabel("critical exposure N_e (e/Å²)")
axes[1].set_yscale("log")
run.save_figure(fig, "dose_weighting")

# %% [markdown]
# ## 5e · Dark or bright: the polarity convention
# In an underfocused image protein is *darker* than the ice around it, and a tomogram reconstructed from
# the raw tilts (IMOD, AreTomo, Warp) keeps that: this is the simulator's default, `polarity="dark"`, and
# the convention the models are trained on. Some pipelines invert the contrast (protein white);
# `polarity="bright"` simulates that, and `simulate.convert_polarity` turns one into the other. The
# sign of the correlation between the noise-free subtomogram and the potential tells them apart.

# %%
potential_crop = simulate.crop_center(scene.volume, config.crop_size)
polarity_rows = []
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
axes[0].imshow(potential_crop[c], cmap="gray")
axes[0].set_title("potential (protein white)")
for ax, polarity in zip(axes[1:], simulate.POLARITIES):
    sub = simulate.simulate_fast(scene.volume, defocus_um, math.inf, replace(config, polarity=polarity), np.random.default_rng(1))
    r = float(np.corrcoef(sub.signal.ravel(), potential_crop.ravel())[0, 1])
    polarity_rows.append({"polarity": polarity, "correlation_with_potential": r})
    ax.imshow(sub.signal[c], cmap="gray")
    ax.set_title(f"{polarity}: r = {r:+.2f}")
for ax in axes:
    ax.axis("off")
run.save_figure(fig, "polarity")
polarity_df = pd.DataFrame(polarity_rows)
run.save_table(polarity_df, "01_polarity", formats=("csv", "md"))
polarity_df

# %%
assert polarity_df.correlation_with_potential[0] < 0 < polarity_df.correlation_with_potential[1], polarity_df

# %% [markdown]
# ## 5f · Phase plate and phase flipping
# A Volta phase plate adds a phase shift (here 90°) to every scattered wave, turning the CTF's sine into
# a cosine at low frequency: strong contrast without large defocus, and the first zero moves closer.
# *Phase flipping* (IMOD's ctfphaseflip) multiplies each tilt image by the sign of its CTF before
# back-projection, so that no frequency band cancels another; protein stays dark. Both are options
# (`phase_shift_deg`, `phase_flip`); the papers' data sets use neither.

# %%
variants = {"standard": config, "Volta phase plate 90°": replace(config, phase_shift_deg=90.0),
            "phase-flipped": replace(config, phase_flip=True)}
fig, panels = plt.subplot_mosaic([["ctf"] * 3, list(variants)], figsize=(11, 7), layout="constrained",
                                 height_ratios=[1, 1.2])
ax = panels["ctf"]
k_ax = torch.linspace(0, 0.5 / config.voxel_size_a, 400, dtype=torch.float64)
for name, cfg_v in variants.items():
    ax.plot(k_ax, simulate.transfer_of_k(k_ax, defocus_um, cfg_v), label=name)
ax.axhline(0, color="k", lw=0.5)
ax.set_xlabel("spatial frequency (Å⁻¹)")
ax.set_ylabel("CTF × envelope × MTF")
ax.legend(fontsize=8)
variant_rows = []
for name, cfg_v in variants.items():
    sub = simulate.simulate_fast(scene.volume, defocus_um, math.inf, cfg_v, np.random.default_rng(1))
    r = float(np.corrcoef(sub.signal.ravel(), potential_crop.ravel())[0, 1])
    variant_rows.append({"imaging": name, "correlation_with_potential": r,
                         "first_zero_a": 1 / simulate.ctf_zeros_inv_a(defocus_um, cfg_v, 1.0)[0]})
    panels[name].imshow(sub.signal[c], cmap="gray")
    panels[name].set_title(f"{name}: r = {r:+.2f}", fontsize=9)
    panels[name].axis("off")
run.save_figure(fig, "phase_plate_and_flip")
variant_df = pd.DataFrame(variant_rows)
variant_df

# %%
# flipping keeps protein dark and brings the volume closer to the (negated) potential; the plate moves the first zero in
assert variant_df.correlation_with_potential[2] < variant_df.correlation_with_potential[0] < 0, variant_df
assert variant_df.first_zero_a[1] > variant_df.first_zero_a[0], variant_df

# %% [markdown]
# ## 5g · Counting electrons: dose mode and the equivalent dose
# The papers specify their data by SNR, so the default (`noise="snr"`) scales the noise to the requested
# SNR. Every subtomogram also records the *equivalent dose*: the total dose whose shot noise alone would
# give that SNR. With `noise="dose"` the simulator instead draws the shot noise of the configured dose
# itself, and the SNR is whatever that gives. Below: both, on the scene of section 2, and the fast path
# against the tilt-series path with all of this physics on.

# %%
dose_rows = []
for snr_value in sorted({0.5, 0.1, 0.03, *(s for s in run.spec.cssl.data.snrs if math.isfinite(s))}, reverse=True):
    sub = simulate.simulate_fast(scene.volume, defocus_um, snr_value, config, np.random.default_rng(1))
    dose_rows.append({"noise": "snr", "snr": sub.snr_measured, "dose_e_per_a2": sub.dose_e_per_a2})
dose_cfg = replace(config, noise="dose")
dose_sub = simulate.simulate_fast(scene.volume, defocus_um, 1.0, dose_cfg, np.random.default_rng(1))
dose_ref = simulate.simulate_tiltseries(scene.volume, defocus_um, 1.0, dose_cfg, np.random.default_rng(2))
dose_rows.append({"noise": "dose (fast)", "snr": dose_sub.snr_measured, "dose_e_per_a2": dose_sub.dose_e_per_a2})
dose_rows.append({"noise": "dose (tilt series)", "snr": dose_ref.snr_measured, "dose_e_per_a2": dose_ref.dose_e_per_a2})
dose_df = pd.DataFrame(dose_rows)
dose_df["fast_vs_tiltseries_signal_r"] = float(np.corrcoef(dose_sub.signal.ravel(), dose_ref.signal.ravel())[0, 1])
run.save_table(dose_df, "01_dose", formats=("csv", "md"))
fig, ax = plt.subplots(figsize=(6, 3.4))
snr_rows = dose_df[dose_df.noise == "snr"]
ax.plot(snr_rows.dose_e_per_a2, snr_rows.snr, "o-", label="SNR mode: equivalent dose")
for marker, (_, row) in zip("sD", dose_df[dose_df.noise != "snr"].iterrows()):
    ax.plot(row.dose_e_per_a2, row.snr, marker, label=f"{row.noise}: {config.dose_per_tilt_e_per_a2:g} e/Å² per tilt")
ax.set_xlabel("total dose (e/Å²)")
ax.set_ylabel("SNR of the subtomogram")
ax.legend()
run.save_figure(fig, "dose_mode")
dose_df

# %%
assert dose_df.fast_vs_tiltseries_signal_r[0] > 0.999, dose_df
# the same shot noise in both paths, up to the tilt-series path's noise being weaker towards the scene's faces
# (its interpolation apodises it; the fast path's noise is stationary), which the crop partly reaches
assert abs(dose_df.snr.iloc[-2] / dose_df.snr.iloc[-1] - 1) < 0.15, dose_df

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
assert all(r["unseen_classes"] == len(run.spec.cosnet.data.unseen) for r in rows if r["data_set"].startswith("cosnet"))

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
# ## 8 · One subtomogram from three sides
# The orthoslice viewer (`cryonb.viewer.view_volume`): x–y, x–z and y–z slices through the molecule's centre, its
# mask drawn in red. In JupyterLab or on Colab, sliders move the three slices and toggle the mask; an executed copy
# (and the course site) shows the figure.

# %%
from cryonb.viewer import view_volume

ds_view = datasets[names[-1]]
fig = view_volume(ds_view.volumes[0], ds_view.masks[0], title=f"{names[-1]}: subtomogram 0 ({ds_view.meta.pdb_id[0]}), red: mask")
run.save_figure(fig, "orthoslices")
plt.show()

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
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: the spec edit (validated), and a preview with the fast path on this notebook's scene: the same
# noise-free signal at each SNR, and how well the noisy volume still correlates with it (1 = identical).
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"data": {"snrs": [1.0, 0.1]}}}, only="01")
preview_snrs = [1.0, 0.1, 0.03]
fig, axes = plt.subplots(1, len(preview_snrs), figsize=(3 * len(preview_snrs), 3))
for ax, snr_try in zip(axes, preview_snrs):
    sub = simulate.simulate_fast(scene.volume, defocus_um, snr_try, config, np.random.default_rng(3))
    noisy = sub.signal + sub.noise
    r = float(np.corrcoef(noisy.ravel(), sub.signal.ravel())[0, 1])
    ax.imshow(noisy[c], cmap="gray")
    ax.set_title(f"SNR {snr_try:g}: r = {r:.2f}", fontsize=9)
    ax.axis("off")
plt.show()
# r = sqrt(SNR / (1 + SNR)) for independent noise: the eye needs r well above ~0.5, i.e. SNR near 1 or more
# %% tags=["solution", "hide-cell"]
# Solution 2: tilts to ±30° leave a missing wedge of 2 × (90° − 30°) instead of 2 × (90° − 60°); the elongation
# along z of a point (Radermacher 1988) is sqrt((a + sin a cos a) / (a − sin a cos a)) for a maximum tilt a.
narrow = simulate.SimulationConfig(tilt_min_deg=-30, tilt_max_deg=30)
for cfg_try in (config, narrow):
    a = math.radians(cfg_try.tilt_max_deg)
    elong = math.sqrt((a + math.sin(a) * math.cos(a)) / (a - math.sin(a) * math.cos(a)))
    print(f"tilts ±{cfg_try.tilt_max_deg:g}°: missing wedge {2 * (90 - cfg_try.tilt_max_deg):g}°, elongation along z {elong:.2f}")
ref_narrow = simulate.simulate_tiltseries(scene.volume, defocus_um, 0.5, narrow, np.random.default_rng(2))
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, (name, vol) in zip(axes, [("±60°", ref.signal), ("±30°", ref_narrow.signal)]):
    ax.imshow(vol[:, c], cmap="gray")
    ax.set_title(f"xz slice, tilts {name}", fontsize=9)
    ax.axis("off")
plt.show()
# %% tags=["solution", "hide-cell"]
# Solution 3: less defocus moves every CTF zero to higher frequency (finer detail): more of the band a 10 Å voxel
# holds (up to its Nyquist frequency 1/20 Å) is passed before the first contrast reversal, but low-frequency
# contrast (what makes a molecule visible at 10 Å) drops.
nyquist = 0.5 / config.voxel_size_a
for d_um in (defocus_um, 2.0):
    z_inv_a = simulate.ctf_zeros_inv_a(d_um, config, nyquist)
    print(f"{d_um:g} µm: {len(z_inv_a)} zeros below Nyquist (1/{1 / nyquist:.0f} Å); first at "
          + (f"1/{1 / z_inv_a[0]:.0f} Å" if len(z_inv_a) else "none"))

# %% [markdown]
# ## Further reading
# - Peng, L.-M. et al. (1996) Robust parameterization of elastic and absorptive electron atomic
#   scattering factors. *Acta Cryst. A* 52, 257–276.
# - Crowther, DeRosier & Klug (1970) The reconstruction of a three-dimensional structure from projections.
# - Pei, L. et al. (2016) Simulating cryo electron tomograms of crowded cell cytoplasm for assessment of
#   automated particle picking. *BMC Bioinformatics* 17, 405 (the lineage of the papers' data).
# - teamtomo: torch-fourier-slice, torch-ctf, ttsim3d (github.com/teamtomo).
