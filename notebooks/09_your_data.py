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
# # 09 · Your own tomogram: extract, classify, one-shot
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/09_your_data.ipynb)
#
# **What you will do:** walk the path a user takes with their own data, on a small tomogram whose truth we
# know: simulate a "real-looking" tomogram from bundled structures (random positions and orientations,
# missing wedge, CTF, detector, noise) at a voxel size of 6.8 Å, write it as MRC with a RELION-style STAR
# file of picks, then
# ```bash
# python -m cryonb extract TOMOGRAM.mrc COORDS.star --box 32 --voxel-size-a 10 -o subtomos/ --mrc
# python -m cryonb classify subtomos/ --checkpoint CKPT                        # RB3D, trained classes only
# python -m cryonb oneshot subtomos/ --support support/ --checkpoint CKPT      # COS-Net, one example per class
# ```
# and see what each step writes, how good the answers are against the truth, and what the error
# messages say when an input is wrong.
#
# **What you will learn:** why subtomograms are rescaled to the models' voxel size (10 Å) in Fourier
# space; what the `border` flag means; that a classifier only knows the classes it was trained on, while
# COS-Net needs just one example box per class, even of classes it never saw; and how to read both
# outputs (CSV / STAR tables, mask MRCs).
#
# **What you need:** nothing: the tomogram, the RB3D classifier's training data and the COS-Net model are
# built here on first use (cached by content hash; notebook 07's COS-Net is reused when it exists).
#
# **Run time (2 CPU cores):** smoke ≤ 40 s; quick ≈ 1–2 min when notebook 07's COS-Net exists (most of it
# training the small classifier), ≈ 2 min more to train that COS-Net when 07 has not run; paper: a few minutes
# on one GPU for the classifier (2,000 subtomograms, 50 epochs), plus notebook 07's largest model if it is missing.
#
# **What the quick profile can and cannot show.** The whole path runs and every output is checked, but
# both models are small and briefly trained on a few hundred simulated subtomograms: their answers on the
# tomogram are weak (compare each with chance in the tables below), and nothing here says how well they
# would do on *your* tomogram, whose noise, crowding and defocus differ from our simulator's. For real data
# train the classifier on labelled subtomograms (or simulated ones that match your data) with the paper
# profile.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
tomo_shape = [64, 192, 192]  # z, y, x voxels
tomo_voxel_size_a = 6.8  # not the models' 10 Å: extract rescales in Fourier space
n_particles = 36  # picks whose box lies inside the tomogram
n_border = 3  # extra picks near the x/y edges, to show the border flag
cosnet_snr = 0.5  # which of notebook 07's main-variant models to use (an SNR of the spec's cosnet.evaluation.main_snrs)
n_show = 4  # boxes in the mask figure

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

    globals().update(setup("09_your_data"))

# %%
import os
import shutil
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import cryonb.nb
from cryonb.embedding import embed
from cryonb.errors import CryoNBError
from cryonb.experiments import cosnet as cosnet_experiment
from cryonb.experiments import cssl as cssl_experiment
from cryonb.extract import crop_size, extract_boxes, extract_subtomograms
from cryonb.io import write_mrc
from cryonb.metrics import confusion_matrix, dice
from cryonb.oneshot import load_cosnet
from cryonb.paths import repo_root
from cryonb.predict import classify_predict, load_subtomograms, oneshot_predict, read_support, write_oneshot, write_predictions
from cryonb.simulate import SimulationConfig, ensure_dataset, molecule_map, simulate_tomogram, write_coordinates_star

run = cryonb.nb.start("09_your_data", profile, results_dir, work_dir, spec)
seed = run.seed
rng = np.random.default_rng(seed)
classifier = run.spec.cssl.classifier
classes, snr = list(classifier.classes), classifier.snr  # the tomogram holds the classifier's classes, at its SNR
model_simulation = SimulationConfig()  # the models' box and voxel size (every data set's simulation config)
box, voxel_size_a = model_simulation.crop_size, model_simulation.voxel_size_a
print(f"tomogram molecules {classes} at SNR {snr:g}; models take {box}³ boxes of {voxel_size_a:g} Å")
folder = run.work_dir / "09_your_data"
for old in ("subtomos", "subtomos_cli", "support", "errors"):  # outputs of an earlier run; the classifier is kept
    shutil.rmtree(folder / old, ignore_errors=True)
timings: dict[str, float] = {}


def shown(path: os.PathLike) -> str:
    """A path as a user would type it: relative to the repository root."""
    return os.path.relpath(path, repo_root())


# %% [markdown]
# ## 1 · A small "real-looking" tomogram
# `cryonb.simulate.simulate_tomogram` places the molecules of `classes` without overlap at random
# positions and uniformly random orientations, in a slab thin along z (the beam) as a real lamella is,
# and images the whole volume as the data sets of notebook 01 are imaged: the missing wedge and the
# back-projection's noise colour measured on the simulator's geometry, the CTF at one defocus for the
# whole tomogram, the detector MTF, and Gaussian noise. The SNR is set as in the training sets: in a
# model-sized box around each particle, over the frequencies a 10 Å box keeps. (Measured over the whole
# 6.8 Å band instead, the extracted boxes would be about twice as clean as the training data: a domain
# shift that lowered the quick classifier's accuracy on the tomogram in our trials.) The voxel is 6.8 Å,
# as after binning a real tilt series, not the models' 10 Å.
#
# The tomogram is written as MRC (voxel size in the header) and the picks as a RELION-style STAR file:
# what a particle picker (template matching, crYOLO, manual picking in IMOD/napari) would give you.
# `n_border` extra picks sit within half a box of an x or y edge.

# %%
t0 = time.perf_counter()
config = SimulationConfig(voxel_size_a=tomo_voxel_size_a)
tomo = simulate_tomogram(tomo_shape, classes, n_particles, snr, config, rng, n_border=n_border, box_a=box * voxel_size_a,
                         band_voxel_size_a=voxel_size_a)
tomo_path = write_mrc(folder / "tomogram.mrc", tomo.volume, tomo.voxel_size_a)
star_path = write_coordinates_star(folder / "picks.star", tomo.particles, tomo_name="tomogram")
truth = tomo.particles.assign(index=np.arange(len(tomo.particles)))  # row i of the STAR file = box i
truth.to_csv(folder / "truth.csv", index=False)
timings["tomogram"] = time.perf_counter() - t0
run.save_table(truth, "09_particles", formats=("csv",))
print(f"{shown(tomo_path)}: {tomo.volume.shape} voxels (z, y, x) of {tomo.voxel_size_a} Å, defocus {tomo.defocus_um:.2f} µm, "
      f"SNR {tomo.snr_measured:.3g}; {len(truth)} picks ({int(truth.near_border.sum())} near the border)")
print(f"\n{shown(star_path)} (first lines):")
print("\n".join(star_path.read_text().splitlines()[:12]))
truth.groupby("pdb_id").size().rename("particles").to_frame().T

# %% [markdown]
# Orthogonal slices through the tomogram (left) and through the potential that went in (right). Circles
# mark the picks within 3 voxels of each slice (crosses: every pick, at any z); orange squares are the
# 320 Å boxes of the border picks, which reach past the edge. In the x–z and y–z slices the molecules are
# smeared along z (the beam): the missing wedge. The CTF turns each molecule into dark and bright fringes.

# %%
nz, ny, nx = tomo.volume.shape
zc = int(round(truth.loc[~truth.near_border, "z"].median()))
yc, xc = int(round(truth.y.iloc[0])), int(round(truth.x.iloc[0]))
crop = crop_size(box, voxel_size_a, tomo.voxel_size_a)
planes = {  # plane: (slice of a (z, y, x) volume, picks near it, horizontal and vertical coordinate)
    f"x–y at z = {zc}": (lambda v: v[zc], (truth.z - zc).abs() < 3, ("x", "y")),
    f"x–z at y = {yc}": (lambda v: v[:, yc, :], (truth.y - yc).abs() < 3, ("x", "z")),
    f"y–z at x = {xc}": (lambda v: v[:, :, xc], (truth.x - xc).abs() < 3, ("y", "z")),
}
fig, axes = plt.subplots(3, 2, figsize=(10, 5.5 * (ny + 2 * nz) / nx), gridspec_kw={"height_ratios": [ny, nz, nz]})
for col, (vol, what) in enumerate([(tomo.volume, "tomogram"), (tomo.potential, "potential (before imaging)")]):
    for ax, (plane, (cut, near, (u, v))) in zip(axes[:, col], planes.items()):
        ax.imshow(cut(vol), cmap="gray" if col == 0 else "gray_r", origin="lower")
        sel = truth[near]
        ax.scatter(sel[u], sel[v], s=70, facecolors="none", edgecolors=np.where(sel.near_border, "tab:orange", "tab:cyan"), linewidths=1.2)
        ax.set_title(f"{what}, {plane}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for _, p in truth[truth.near_border].iterrows():  # the box reaches past the edge (cut off here)
        axes[0, col].add_patch(plt.Rectangle((round(p.x) - crop // 2 - 0.5, round(p.y) - crop // 2 - 0.5), crop, crop, fill=False, ec="tab:orange", lw=1, clip_on=True))
    axes[0, col].set(xlim=(-0.5, nx - 0.5), ylim=(-0.5, ny - 0.5))
axes[0, 0].scatter(truth.x, truth.y, s=12, c="tab:cyan", marker="+", linewidths=0.8)
fig.tight_layout()
run.save_figure(fig, "tomogram_slices")

# %% [markdown]
# The tomogram in the orthoslice viewer (`cryonb.viewer.view_volume`): in JupyterLab or on Colab, sliders move the
# three slices through the volume; an executed copy (and the course site) shows the slices through its centre.

# %%
from cryonb.viewer import view_volume

fig = view_volume(tomo.volume, title=f"tomogram, {tomo.voxel_size_a:g} Å voxels")
run.save_figure(fig, "tomogram_orthoslices")
plt.show()

# %% [markdown]
# ## 2 · Extract subtomograms
# From a shell:
# ```bash
# python -m cryonb extract runs/quick/09_your_data/tomogram.mrc runs/quick/09_your_data/picks.star \
#     --box 32 --voxel-size-a 10 -o runs/quick/09_your_data/subtomos/ --mrc
# ```
# The command is a thin wrapper around `cryonb.extract.extract_subtomograms`, which we call here. Around
# each pick it cuts `round(32 × 10 / 6.8) = 47` tomogram voxels, resamples them to 32 voxels of 10 Å in
# Fourier space (which also puts the exact, sub-voxel coordinate at the box centre and drops frequencies
# the 10 Å grid cannot hold, so nothing aliases) and z-scores the box. A box reaching past the tomogram's
# edge is padded with its mean and flagged `border`, never dropped: you decide whether to keep it.

# %%
t0 = time.perf_counter()
result = extract_subtomograms(tomo_path, star_path, folder / "subtomos", box=box, voxel_size_a=voxel_size_a, write_mrcs=True, progress=False)
subtomos = load_subtomograms(folder / "subtomos")
timings["extract"] = time.perf_counter() - t0
meta = subtomos.meta
print(f"{result.n} boxes of {box}³ at {voxel_size_a:g} Å from {result.crop}³ tomogram voxels; {result.n_border} flagged border")
print("written:", ", ".join(sorted(p.name for p in (folder / "subtomos").iterdir())))
run.save_table(meta.drop(columns=["tomogram", "mrc"]), "09_extract_meta", formats=("csv",))
meta[["index", "x", "y", "z", "start_x", "start_y", "start_z", "border", "inside_fraction", "flat", "crop"]].tail(n_border + 2)

# %% [markdown]
# The same with the command line, run as a separate process: its boxes must equal the API's bit for bit.

# %%
t0 = time.perf_counter()
cli_out = folder / "subtomos_cli"
cmd = [sys.executable, "-m", "cryonb", "extract", shown(tomo_path), shown(star_path), "--box", str(box),
       "--voxel-size-a", f"{voxel_size_a:g}", "-o", shown(cli_out), "--quiet"]
proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root())
timings["extract (command line)"] = time.perf_counter() - t0
print("$ python -m cryonb " + " ".join(cmd[3:]))
print(proc.stdout + proc.stderr)
assert proc.returncode == 0, f"the extract command failed with exit code {proc.returncode}"
assert np.array_equal(np.asarray(load_subtomograms(cli_out).volumes), np.asarray(subtomos.volumes))

# %% [markdown]
# One extracted box per class (central x–y slice, and x–z to see the wedge), and a border box: its
# padded part is flat.

# %%
picks = [int(truth.index[(truth.pdb_id == c) & ~truth.near_border][0]) for c in classes] + [int(truth.index[truth.near_border][0])]
fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 4.6))
for j, i in enumerate(picks):
    v = subtomos.volumes[i]
    axes[0, j].imshow(v[box // 2], cmap="gray", origin="lower")
    axes[1, j].imshow(v[:, box // 2, :], cmap="gray", origin="lower")
    axes[0, j].set_title(f"box {i}: {truth.pdb_id[i]}" + (" · border" if meta.border[i] else ""), fontsize=9)
for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
axes[0, 0].set_ylabel("x–y")
axes[1, 0].set_ylabel("x–z")
run.save_figure(fig, "extracted_boxes")

# %% [markdown]
# ## 3 · Classify with an RB3D checkpoint
# A classifier knows only the classes it was trained on. Here it is an RB3D (notebook 04's model) trained
# from random weights, with `cryonb.experiments.cssl.ensure_classifier`, on simulated subtomograms of exactly the
# classes in the tomogram, at the same SNR and the models' box and voxel size (notebook 04's checkpoints
# know the ten CSSL classes, none of which is among this notebook's default `classes`). The checkpoint `best.pt`
# records its class names, box and voxel size, which `classify` checks against the subtomograms. From a shell:
# ```bash
# python -m cryonb classify runs/quick/09_your_data/subtomos/ --checkpoint <the best.pt printed below>
# ```

# %%
t0 = time.perf_counter()
train_ds = ensure_dataset(cssl_experiment.classifier_recipe(run.spec), progress=False)
timings["classifier data"] = time.perf_counter() - t0
t0 = time.perf_counter()
clf_ckpt, fit_row = cssl_experiment.ensure_classifier(run.spec, run.work_dir, run.device, progress=False)
timings["classifier (reused or trained)"] = time.perf_counter() - t0
print(f"checkpoint: {shown(clf_ckpt)}")
print(f"trained on {fit_row['n_train']} simulated subtomograms; best epoch {fit_row['best_epoch']}, "
      f"accuracy on the simulated test split {fit_row['test_acc']:.2f} (chance {1 / len(classes):.2f})")

# %%
t0 = time.perf_counter()
pred = classify_predict(clf_ckpt, subtomos)
written = write_predictions(folder / "subtomos" / "classify", pred, tomo_name="tomogram")
timings["classify"] = time.perf_counter() - t0
print("written:", ", ".join(shown(p) for p in written))
run.save_table(pred.drop(columns=["checkpoint"]), "09_predictions", formats=("csv",))
pred.drop(columns=["checkpoint", "seed"]).head(8).round(3)

# %% [markdown]
# Against the truth of our synthetic tomogram (rows: true class, columns: predicted, each row sums to 1).
# Border boxes are scored separately: part of them is padding.

# %%
names = [str(c) for c in classes]
true_id = truth.class_id.to_numpy()
pred_id = pred.class_number.to_numpy() - 1  # same class order as `classes` (the training recipe's)
inside = ~meta.border.to_numpy()
summary = pd.DataFrame([
    {"data": "simulated test split (like the training data)", "n": int(len(train_ds.indices("test"))), "accuracy": fit_row["test_acc"]},
    {"data": "tomogram, interior boxes", "n": int(inside.sum()), "accuracy": float(np.mean(pred_id[inside] == true_id[inside]))},
    {"data": "tomogram, border boxes", "n": int((~inside).sum()), "accuracy": float(np.mean(pred_id[~inside] == true_id[~inside])) if (~inside).any() else float("nan")},
]).assign(chance=1 / len(classes))
run.save_table(summary, "09_classify_accuracy", formats=("csv", "md"))
m = confusion_matrix(true_id[inside], pred_id[inside], len(names))
fig, ax = plt.subplots(figsize=(4.6, 3.9))
im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
for (r, c), val in np.ndenumerate(confusion_matrix(true_id[inside], pred_id[inside], len(names), normalize=False)):
    ax.text(c, r, int(val), ha="center", va="center", color="w" if m[r, c] < 0.6 else "k", fontsize=9)
ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="true",
       title=f"RB3D on the tomogram (interior), acc {summary.accuracy[1]:.2f}")
fig.colorbar(im, ax=ax, fraction=0.046)
run.save_figure(fig, "classify_confusion")
summary.round(3)

# %% [markdown]
# Read the two accuracies together. The first is the model on data like its training data; the second is
# the same model on boxes cut from a tomogram: crowding set by the tomogram instead of four neighbours per
# box, one defocus for all, a 6.8 Å grid resampled to 10 Å. A drop from the first to the second is the domain
# shift every user meets with real data (and real data differ from any simulator far more than this). At this
# profile's scale both numbers are far below a well-trained model's, and with a few dozen boxes a difference
# of ±0.1 between them is within chance variation.

# %% [markdown]
# ## 4 · One-shot with COS-Net: one example box per class
# COS-Net compares each box with a *support set*: one (or a few) example boxes per class, chosen by you.
# No retraining: the model here was trained on episodes of the *seen* classes of notebook 07 and, with
# the default `classes`, has never seen any molecule of this tomogram (the cell prints which it has not seen).
# We pick the first interior box of each class as its example and
# copy its MRC (written by `extract --mrc`) into `support/<class>/`. From a shell:
# ```bash
# mkdir -p support/1w6t && cp subtomos/mrc/subtomo_000012.mrc support/1w6t/    # ... one folder per class
# python -m cryonb oneshot subtomos/ --support support/ --checkpoint runs/quick/cosnet/DuSE-SCNN+decoder-<hash>.pt
# ```

# %%
t0 = time.perf_counter()
evaluation = run.spec.cosnet.evaluation
cds = cosnet_experiment.datasets(run.spec, progress=False)[float(cosnet_snr)]
cos_ckpt = cosnet_experiment.ensure_model(run.spec, evaluation.main_variant, float(cosnet_snr), evaluation.train_n_ways[0], 0, run.work_dir, run.device)
timings["COS-Net (reused or trained)"] = time.perf_counter() - t0
unseen = [c for c in classes if c not in set(cds.meta.pdb_id[cds.meta.class_split == "seen"])]
print(f"checkpoint: {shown(cos_ckpt)}; classes of the tomogram COS-Net never saw: {unseen}")

support_dir = folder / "support"
support_of = {c: int(truth.index[(truth.pdb_id == c) & ~truth.near_border][0]) for c in classes}
for c, i in support_of.items():
    (support_dir / c).mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "subtomos" / meta.mrc[i], support_dir / c)
t0 = time.perf_counter()
support = read_support(support_dir, box, subtomos.voxel_size_a)
shot, masks = oneshot_predict(cos_ckpt, subtomos, support)
written = write_oneshot(folder / "subtomos" / "oneshot", shot, masks, subtomos.voxel_size_a)
timings["one-shot"] = time.perf_counter() - t0
print(f"support: {dict(support_of)} (box index per class); written: {shown(written[-1])}, masks.npy and {len(written) - 2} mask MRCs")
run.save_table(shot.drop(columns=["checkpoint"]), "09_oneshot", formats=("csv",))
shot.drop(columns=["checkpoint", "seed", "variant"]).head(8).round(3)

# %%
query = inside & ~np.isin(np.arange(len(shot)), list(support_of.values()))  # the support boxes would match themselves
shot_id = np.array([support.names.index(p) for p in shot.predicted])
true_sup = np.array([support.names.index(str(c)) for c in truth.pdb_id])
oneshot_acc = float(np.mean(shot_id[query] == true_sup[query]))
m1 = confusion_matrix(true_sup[query], shot_id[query], len(support.names))
one_summary = pd.DataFrame([{"data": "tomogram, interior boxes except the support", "n": int(query.sum()), "accuracy": oneshot_acc,
                             "chance": 1 / len(support.names)}])
run.save_table(one_summary, "09_oneshot_accuracy", formats=("csv", "md"))
fig, ax = plt.subplots(figsize=(4.6, 3.9))
im = ax.imshow(m1, vmin=0, vmax=1, cmap="viridis")
ax.set(xticks=range(len(support.names)), yticks=range(len(support.names)), xticklabels=support.names, yticklabels=support.names,
       xlabel="predicted", ylabel="true", title=f"COS-Net {len(support.names)}-way 1-shot, acc {oneshot_acc:.2f}")
fig.colorbar(im, ax=ax, fraction=0.046)
run.save_figure(fig, "oneshot_confusion")
one_summary.round(3)

# %% [markdown]
# The decoder's mask probabilities (red, with a contour at 0.5) for a few boxes, over the box (top) and over
# the same box cut from the potential (bottom), which shows where the molecule really is. The table compares
# how much of each box the mask claims with how much the molecule fills (its protein volume, 1.21 Å³ per Da).

# %%
clean, _ = extract_boxes(tomo.potential, truth[["x", "y", "z"]], box, crop)
show = [i for i in range(len(truth)) if query[i]][:n_show]
fig, axes = plt.subplots(2, len(show), figsize=(2.4 * len(show), 5), squeeze=False)
for j, i in enumerate(show):
    for r, img in enumerate([subtomos.volumes[i][box // 2], clean[i][box // 2]]):
        ax = axes[r, j]
        ax.imshow(img, cmap="gray" if r == 0 else "gray_r", origin="lower")
        if masks is not None:
            ax.imshow(masks[i][box // 2], cmap="Reds", alpha=0.35, vmin=0, vmax=1, origin="lower")
            ax.contour(masks[i][box // 2], levels=[0.5], colors="tab:red", linewidths=1)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, j].set_title(f"box {i}: {truth.pdb_id[i]} → {shot.predicted[i]}", fontsize=9)
axes[0, 0].set_ylabel("tomogram box")
axes[1, 0].set_ylabel("potential")
run.save_figure(fig, "oneshot_masks")

# %% [markdown]
# One box and its COS-Net mask from three sides (sliders in a live notebook).

# %%
i_view = show[0]
fig = view_volume(subtomos.volumes[i_view], None if masks is None else masks[i_view],
                  title=f"box {i_view}: {truth.pdb_id[i_view]} → {shot.predicted[i_view]}, red: COS-Net mask")
run.save_figure(fig, "box_orthoslices")
plt.show()

# %%
# the same model on a few simulated subtomograms of the same classes, whose true masks are known
ref = cds.meta[cds.meta.pdb_id.isin(classes)].groupby("pdb_id").head(4).index.to_numpy()
ref_masks = embed(load_cosnet(cos_ckpt)[0], cds.volumes, ref)[1]
ref_pred = ref_masks.numpy() > 0.5 if ref_masks is not None else np.zeros((len(ref), box, box, box), bool)
ref_true = np.asarray(cds.masks[ref]) > 0
tomo_pred = masks > 0.5 if masks is not None else np.zeros((len(truth), box, box, box), bool)
rows = []
for c in classes:
    here, there = (cds.meta.pdb_id.to_numpy()[ref] == c), query & (truth.pdb_id == c).to_numpy()
    p_m, t_m = ref_pred[here], ref_true[here]
    rows.append({"pdb_id": c, "molecule (fraction of a box)": molecule_map(c, tomo.voxel_size_a).mass_kda * 1e3 * 1.21 / (box * voxel_size_a) ** 3,
                 "mask > 0.5, tomogram": float(tomo_pred[there].mean()) if there.any() else np.nan,
                 "mask > 0.5, simulated": float(p_m.mean()),
                 "Dice, simulated": float(dice(p_m.reshape(1, -1), t_m.reshape(1, -1))[0])})
coverage = pd.DataFrame(rows)
run.save_table(coverage, "09_mask_coverage", formats=("csv", "md"))
coverage.round(3)

# %% [markdown]
# Compare the columns. If the decoder marks far more of a box than the molecule fills, and does the same on
# simulated subtomograms whose true masks it misses (low Dice), the fault is the model, not your data: the
# quick profile's COS-Net is narrow and briefly trained (notebook 08 measures its Dice properly; the paper
# profile trains a far wider network for 20× more steps). What this section shows is the format: `masks.npy`
# and one `masks/mask_NNNNNN.mrc` per box, at the boxes' voxel size, to open in ChimeraX or napari.

# %% [markdown]
# ## 5 · When an input is wrong
# Every problem with a user's file is raised as `cryonb.errors.CryoNBError`, with a message that names the
# file, the value and what was expected (the command line prints it and exits with status 2). Three
# common mistakes: a pick outside the volume (coordinates in Å instead of voxels, or from another
# tomogram), a voxel size of 0 (a header that was never set), and boxes at another voxel size than the model's.

# %%
(folder / "errors").mkdir(parents=True, exist_ok=True)
bad_csv = folder / "errors" / "picks_outside.csv"
pd.DataFrame({"x": [40.0, 1500.0], "y": [60.0, 60.0], "z": [32.0, 32.0]}).to_csv(bad_csv, index=False)


def classify_at_8a() -> None:
    extract_subtomograms(tomo_path, star_path, folder / "errors" / "subtomos_8a", box=box, voxel_size_a=8.0, progress=False)
    classify_predict(clf_ckpt, load_subtomograms(folder / "errors" / "subtomos_8a"))


mistakes = {
    "a pick outside the volume": lambda: extract_subtomograms(tomo_path, bad_csv, folder / "errors" / "out", progress=False),
    "a tomogram voxel size of 0": lambda: extract_subtomograms(tomo_path, star_path, folder / "errors" / "out", tomo_voxel_size_a=0.0, progress=False),
    "boxes at 8 Å for a 10 Å classifier": classify_at_8a,
}
messages = {}
for what, call in mistakes.items():
    try:
        call()
    except CryoNBError as exc:
        messages[what] = str(exc).replace(f"{repo_root()}{os.sep}", "")  # paths as a user typed them
        print(f"{what}:\n  CryoNBError: {messages[what]}\n")
    else:
        raise AssertionError(f"{what}: expected a CryoNBError")

# %% [markdown]
# ## Checks on the key numbers

# %%
assert result.crop == round(box * voxel_size_a / tomo_voxel_size_a) and result.n == n_particles + n_border
assert (meta.border.to_numpy() == truth.near_border.to_numpy()).all(), "the border flag must mark exactly the picks placed near an edge"
assert abs(tomo.snr_measured - snr) < 1e-3 * snr
assert np.allclose(pred.filter(like="p_").sum(axis=1), 1, atol=1e-4) and len(pred) == len(truth)
assert shot.probability.between(0, 1).all() and (masks is None or masks.shape == (len(truth), box, box, box))
assert "outside the tomogram" in messages["a pick outside the volume"] and "expected > 0" in messages["a tomogram voxel size of 0"]
assert "re-extract with --voxel-size-a 10" in messages["boxes at 8 Å for a 10 Å classifier"]
if fit_row["test_acc"] < 1 / len(classes) + 0.1:  # a weak model is a result at this scale, not an error
    print(f"NOTE: the classifier scores {fit_row['test_acc']:.2f} on simulated test data, near chance ({1 / len(classes):.2f})")
timing_table = pd.DataFrame([{"step": k, "seconds": round(v, 1)} for k, v in timings.items()])
run.save_table(timing_table, "09_timings", formats=("csv", "md"))
timing_table

# %% [markdown]
# ## 6 · A real tomogram from the Portal
# The CryoET Data Portal (cryoetdataportal.czscience.com) publishes real tomograms with ground-truth picks. The
# default here is the training data of the CZII CryoET Object Identification Challenge (Portal data set 10440):
# tomogram `cryonb.portal.DEFAULT_TOMOGRAM_ID` = 17035, run TS_86_3, 10.012 Å voxels, with picks of six
# proteins: apoferritin, β-amylase, β-galactosidase, ribosome, thyroglobulin and virus-like particles. From a shell
# (`pip install 'cryonb[portal]'` first):
# ```bash
# python -m cryonb data fetch portal:tomogram/17035 --voxel-size-a 10 --annotations           # MRC, ~300 MB
# python -m cryonb data fetch portal:tomogram/17035 --voxel-size-a 10 --annotations --format zarr  # nothing downloaded
# python -m cryonb extract data/external/portal/tomogram-17035/<the .mrc it printed> \
#     data/external/portal/tomogram-17035/picks.csv --box 32 --voxel-size-a 10 -o subtomos/ --mrc
# python -m cryonb oneshot subtomos/ --support support/ --checkpoint CKPT --star-style relion5 --copick
# ```
# `data fetch` picks the voxel spacing nearest the model's, downloads only that tomogram (verifying the size the
# Portal gives and recording the sha256 in `data/external/portal/manifest.yaml`) and turns the ground-truth points
# (ndjson, voxels of their spacing) into `picks.csv` with an `object` column, which `extract` reads and copies into
# `meta.csv`. With the network, this cell fetches the OME-Zarr address (only the chunks around the picks are read),
# takes `n_portal` picks per protein, and scores COS-Net against the truth: 1-shot (one support box per protein) and
# 5-shot (five labelled picks per protein, their embeddings averaged: a classifier built from a few labelled picks),
# the real-data analogue of the CSSL paper's Table 2. Without the network (or without `cryonb[portal]`) it says so
# and runs the same code on a recorded, *synthetic* fixture (`tests/fixtures/portal/`, 33 KB: the Portal's answers
# for one run, a 40 × 40 × 20 tomogram and six ndjson files), served on 127.0.0.1.

# %%
import re

from cryonb import portal
from cryonb.extract import read_coordinates
from cryonb.picks import read_copick_picks

n_portal = 12  # picks per protein on the real tomogram (not a parameter: the fixture has 2)
portal_dir = folder / "portal"
shutil.rmtree(portal_dir, ignore_errors=True)
t0 = time.perf_counter()
online = portal.portal_reachable(timeout_s=3.0)
fetched, fixture_note = None, ""
if online:
    try:
        source = portal.CryoETPortalSource(timeout_s=30)
        fetched = portal.fetch_portal_tomogram(source, portal.DEFAULT_TOMOGRAM_ID, portal_dir, voxel_size_a=voxel_size_a,
                                               annotations=True, fmt="zarr", progress=False)
    except CryoNBError as exc:  # no client installed, the API or a file unreachable: say so and use the fixture
        print(f"The Portal could not be used ({exc}); using the recorded fixture instead.")
else:
    print("The CryoET Data Portal is not reachable from here (or CRYONB_OFFLINE is set): using the recorded fixture.")
if fetched is None:
    fixture = repo_root() / "tests" / "fixtures" / "portal"
    with portal.serve_folder_locally(fixture) as base:  # the same download path as for real files, on 127.0.0.1
        fetched = portal.fetch_portal_tomogram(portal.RecordedPortalSource(fixture / "responses.json", base), 70001, portal_dir,
                                               voxel_size_a=voxel_size_a, annotations=True, progress=False)
    fixture_note = " (SYNTHETIC FIXTURE: these numbers say nothing about the models)"
timings["Portal fetch" + (" (fixture)" if fixture_note else "")] = time.perf_counter() - t0
for line in portal.summary_lines(fetched):
    print(line.replace(f"{repo_root()}{os.sep}", ""))
truth_picks = pd.read_csv(fetched.coordinates)
per_object = truth_picks.groupby("object", sort=True).head(n_portal if not fixture_note else 2)
per_object.to_csv(portal_dir / "picks_used.csv", index=False)
per_object.groupby("object").size().rename("picks").to_frame().T

# %% [markdown]
# Extract the boxes at the models' 10 Å with the `object` kept, then choose the support from the truth and score
# COS-Net on the other boxes. `meta.csv` says where the voxel size came from (the tomogram's own metadata, checked
# against the Portal's voxel spacing recorded in the manifest).

# %%
t0 = time.perf_counter()
portal_sub = extract_subtomograms(fetched.location, portal_dir / "picks_used.csv", portal_dir / "subtomos", box=box,
                                  voxel_size_a=voxel_size_a, write_mrcs=True, progress=False)
portal_boxes = load_subtomograms(portal_dir / "subtomos")
pmeta = portal_boxes.meta
print(f"{portal_sub.n} boxes ({portal_sub.crop}³ tomogram voxels -> {box}³), {portal_sub.n_border} at the border")
print(f"voxel_size_source: {pmeta.voxel_size_source.iloc[0].replace(f'{repo_root()}{os.sep}', '')}")


def class_folder(name: str) -> str:
    """A protein name as a support folder name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


rows = []
for k_shot in (1, 5):
    if pmeta.groupby("object").size().min() <= k_shot:
        continue  # the fixture has two picks per protein: 1-shot only
    sup_dir = portal_dir / f"support_{k_shot}shot"
    shutil.rmtree(sup_dir, ignore_errors=True)
    support_rows = pmeta.groupby("object", sort=True).head(k_shot)
    for _, r in support_rows.iterrows():  # one support folder per protein, named after it
        (sup_dir / class_folder(r.object)).mkdir(parents=True, exist_ok=True)
        shutil.copy(portal_dir / "subtomos" / r.mrc, sup_dir / class_folder(r.object))
    support_p = read_support(sup_dir, box, portal_boxes.voxel_size_a)
    scored, _ = oneshot_predict(cos_ckpt, portal_boxes, support_p)
    query = ~pmeta.index.isin(support_rows.index)
    truth_names = pmeta.object.map(class_folder)
    acc = float((scored.predicted[query] == truth_names[query]).mean())
    rows.append({"support": f"{k_shot}-shot", "queries": int(query.sum()), "accuracy": acc, "chance": 1 / len(support_p.names)})
    if k_shot == 1:
        write_oneshot(portal_dir / "oneshot", scored, None, portal_boxes.voxel_size_a, meta=pmeta, star_style="relion5", copick=True)
timings["Portal extract + COS-Net" + (" (fixture)" if fixture_note else "")] = time.perf_counter() - t0
portal_scores = pd.DataFrame(rows).assign(data=("fixture" if fixture_note else f"Portal tomogram {fetched.tomogram.id}"))
run.save_table(portal_scores, "09_portal_scores", formats=("csv", "md"))
print("COS-Net against the Portal's ground truth" + fixture_note)
portal_scores.round(3)

# %% [markdown]
# The 1-shot results also went out in the field's formats: `oneshot.star` in RELION 5's convention (rlnTomoName,
# centred Å coordinates, an optics block with the pixel size) for RELION 5 or Warp, and one copick picks file per
# protein with the match probability as score (copy them into a copick project's `Picks/` folder to see them in
# napari or ChimeraX). Both read back to the same positions.

# %%
star5 = portal_dir / "oneshot" / "oneshot.star"
print("\n".join(star5.read_text().splitlines()[:24]))
back = read_coordinates(star5, shape_zyx=tuple(int(pmeta[f"tomo_size_{a}"].iloc[0]) for a in "zyx"),
                        voxel_size_a=float(pmeta.tomo_voxel_size_a.iloc[0]))
copick_back = read_copick_picks(portal_dir / "oneshot" / "copick")
print("copick files:", ", ".join(sorted(p.name for p in (portal_dir / "oneshot" / "copick").iterdir())))
assert np.allclose(back[["x", "y", "z"]].to_numpy(), pmeta[["x", "y", "z"]].to_numpy(), atol=1e-4)
assert len(copick_back) == len(pmeta) and "Portal's voxel spacing" in pmeta.voxel_size_source.iloc[0]
assert set(pmeta.object) == set(truth_picks.object) and len(portal_scores) >= 1
if fixture_note:
    print("These numbers come from the synthetic fixture: they show the path, not how well the models do on real data.")

# %% [markdown]
# ## Try it yourself
# 1. Set `tomo_voxel_size_a = 10.0` and predict the crop size and whether the boxes change much. Then try
#    `13.6` (binning 2 × 6.8 Å): what does Fourier *padding* from 24 to 32 voxels add, and what can it not add?
# 2. Give COS-Net three examples per class (copy three interior boxes into each `support/<class>/`; the
#    embeddings are averaged). Predict whether one-shot accuracy rises, and by how much compared with chance.
# 3. In a profile of your own (`cp params/quick.yaml params/try.yaml`), lower `cssl: classifier: snr` to `0.1`
#    and run `python -m cryonb run --profile try --only 09` (the classifier is retrained for it, COS-Net is not).
#    Which model loses more, and why is that a question about training data rather than about the architecture?
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: the crop is the tomogram voxels that span the models' box; at 13.6 Å it is smaller than the box, so
# Fourier padding interpolates it up: no detail finer than the tomogram's Nyquist (2 × 13.6 Å) appears.
for v_a in (tomo_voxel_size_a, 10.0, 13.6):
    print(f"{v_a:g} Å: crop {crop_size(box, voxel_size_a, v_a)}³ -> box {box}³; finest detail kept 1/{2 * max(v_a, voxel_size_a):.1f} Å")
# %% tags=["solution", "hide-cell"]
# Solution 2: three interior boxes per class as the support (their embeddings are averaged), queries exclude them all.
support3_dir = folder / "support3"
support3_of = {c: [int(i) for i in truth.index[(truth.pdb_id == c) & ~truth.near_border][:3]] for c in classes}
for c, rows3 in support3_of.items():
    (support3_dir / c).mkdir(parents=True, exist_ok=True)
    for i in rows3:
        shutil.copy(folder / "subtomos" / meta.mrc[i], support3_dir / c)
support3 = read_support(support3_dir, box, subtomos.voxel_size_a)
shot3, _ = oneshot_predict(cos_ckpt, subtomos, support3)
query3 = inside & ~np.isin(np.arange(len(shot3)), [i for rows3 in support3_of.values() for i in rows3])
id3 = np.array([support3.names.index(p) for p in shot3.predicted])
true3 = np.array([support3.names.index(str(c)) for c in truth.pdb_id])
if query3.any():
    print(f"accuracy with 1 example per class {oneshot_acc:.3f}, with 3: {float(np.mean(id3[query3] == true3[query3])):.3f} "
          f"({int(query3.sum())} queries); chance {1 / len(support3.names):.3f}")
else:
    print(f"this tomogram has too few interior boxes per class ({n_particles} picks) to keep queries beside 3 examples each: raise n_particles")
# %% tags=["solution", "hide-cell"]
# Solution 3: the edit. Both models see the same boxes; the classifier was trained at one SNR, so its accuracy on a
# tomogram depends on how close that SNR is to the tomogram's: a question of training data, not of architecture.
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"classifier": {"snr": 0.1}}}, only="09")
print(f"this run: classifier trained at SNR {snr:g}, tomogram at SNR {tomo.snr_measured:.3g}; COS-Net trained at SNR {cosnet_snr:g}")

# %% [markdown]
# ## Further reading
# - `python -m cryonb extract --help`, `classify --help`, `oneshot --help`: every option and output file.
# - Notebooks 04 (RB3D fine-tuning) and 07–08 (COS-Net one-shot and masks) for how the models are trained.
# - Burt et al. (2024) *An image processing pipeline for electron cryo-tomography in RELION-5*, FEBS Open Bio:
#   the STAR conventions for tomograms and particles.
# - Wan & Briggs (2016) *Cryo-electron tomography and subtomogram averaging*, Methods Enzymol. 579: the
#   missing wedge, CTF and voxel sizes from the user's side.
