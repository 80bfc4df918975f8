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
# # 02 · Augmentation for contrastive learning
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/02_augmentation.ipynb)
#
# **What you will do:** apply the CSSL paper's augmentation pipeline to simulated subtomograms and look at
# the *positive pairs* that contrastive learning asks the network to recognise as "the same".
#
# **What you will learn:** the paper's two transforms (random resized crop with p = 0.5, scale 0.5–1; random
# affine with p = 0.5: rotation ±45° about z, shift ≤ 10 % in x and y, scale 0.9–1.1), why they are fused into
# one resampling, and why a quarter of all views are left untouched.
#
# **What you need:** the CSSL data sets of notebook 01 (made on demand if missing).
# Run time: quick ≈ 1 min (2-core CPU, data cached), smoke ≈ 15 s, paper ≈ 1 min.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
n_views = 6
n_stats = 2000

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

    globals().update(setup("02_augmentation"))

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from cryonb.augment import AugmentConfig, augment, sample_transforms, two_views
from cryonb.nb import start
from cryonb.plots import slice_grid
from cryonb.experiments import cssl as cssl_experiment

run = start("02_augmentation", profile, results_dir, work_dir, spec)
seed = run.seed
cfg = run.spec.cssl.pretrain.augment  # the pipeline pre-training uses (spec: cssl.pretrain.augment)
cfg

# %% [markdown]
# ## One subtomogram, many views
# Each row is one view: central xy, xz and yz slices. The first row is the original. Rotations are about z
# only (the missing wedge is aligned with the beam, so a z rotation keeps it where it physically is).

# %%
datasets = cssl_experiment.datasets(run.spec)
snrs = list(datasets)
for snr, ds in datasets.items():
    i = int(ds.indices(split="train")[0])
    x = torch.from_numpy(np.array(ds.volumes[i : i + 1]))[:, None].repeat(n_views, 1, 1, 1, 1)
    views = augment(x, cfg, torch.Generator().manual_seed(seed))
    vols = [x[0, 0].numpy()] + [v[0].numpy() for v in views]
    fig = slice_grid(vols, [f"SNR {snr} original ({ds.meta.pdb_id[i]})"] + [f"view {k + 1}" for k in range(n_views)])
    run.save_figure(fig, f"views_snr{snr}")
    plt.show()

# %% [markdown]
# ## A positive pair
# Contrastive learning shows the network two views of the same subtomogram (a positive pair) and views of
# other subtomograms (negatives). At SNR 0.03 the pair is hard to match by eye: the network must learn the
# molecule's shape, not the noise.

# %%
fig, axes = plt.subplots(len(snrs), 2, figsize=(4, 2 * len(snrs)), squeeze=False)
for row, (snr, ds) in zip(axes, datasets.items()):
    i = int(ds.indices(split="train")[1])
    x = torch.from_numpy(np.array(ds.volumes[i : i + 1]))[:, None]
    v1, v2 = two_views(x, AugmentConfig(p_crop=1, p_affine=1), torch.Generator().manual_seed(seed + 1))
    for ax, v, name in zip(row, (v1, v2), ("view 1", "view 2")):
        ax.imshow(v[0, 0, 16].numpy(), cmap="gray")
        ax.set_title(f"SNR {snr}: {name}", fontsize=8)
        ax.axis("off")
fig.tight_layout()
run.save_figure(fig, "positive_pairs")
plt.show()

# %% [markdown]
# ## What the random draws look like
# Over many draws: how often each transform fires, and the crop sizes. These are the numbers a test checks.

# %%
theta, moved, fraction = sample_transforms(n_stats, cfg, torch.Generator().manual_seed(seed))
stats = pd.DataFrame({
    "quantity": ["fraction of views transformed", "fraction cropped", "crop volume fraction min", "crop volume fraction max"],
    "value": [float(moved.float().mean()), float((fraction < 1).float().mean()),
              float(fraction[fraction < 1].min()), float(fraction[fraction < 1].max())],
    "expected": [1 - (1 - cfg.p_crop) * (1 - cfg.p_affine), cfg.p_crop, *cfg.crop_scale],
})
run.save_table(stats, "02_augmentation_draws", formats=("csv", "md"))
fig, ax = plt.subplots(figsize=(4, 2.5))
sns.histplot(fraction[fraction < 1].numpy(), bins=20, ax=ax)
ax.set_xlabel("crop volume fraction")
run.save_figure(fig, "crop_fractions")
stats

# %%
assert abs(stats.value[0] - stats.expected[0]) < 0.05 and abs(stats.value[1] - stats.expected[1]) < 0.05
assert stats.value[2] >= stats.expected[2] and stats.value[3] <= stats.expected[3]

# %% [markdown]
# ## Try it yourself
# 1. Set `cfg = AugmentConfig(full_so3=True)` after the first cell: predict what happens to the missing wedge's
#    direction in the views. (To pre-train with it, set `cssl: pretrain: augment: {full_so3: true}` in a profile.)
# 2. Set `cfg = AugmentConfig(p_crop=1.0)`: how should the fraction of untouched views change? Check the table.
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: with full_so3 the rotation is any 3-D rotation, so the missing wedge (along z in the original)
# turns with the molecule: views now show the smearing along other directions, which no real tomogram has.
from dataclasses import replace

so3 = replace(cfg, full_so3=True)
views_so3 = augment(x, so3, torch.Generator().manual_seed(seed))
fig = slice_grid([x[0, 0].numpy()] + [v[0].numpy() for v in views_so3], ["original"] + [f"SO(3) view {k + 1}" for k in range(n_views)])
plt.show()
# %% tags=["solution", "hide-cell"]
# Solution 2: a view is untouched only when neither transform fires: (1 - p_crop)(1 - p_affine), so 0 at p_crop = 1.
_, moved_crop, _ = sample_transforms(n_stats, replace(cfg, p_crop=1.0), torch.Generator().manual_seed(seed))
print(f"untouched views: {1 - float(moved.float().mean()):.3f} with p_crop = {cfg.p_crop:g} "
      f"(predicted {(1 - cfg.p_crop) * (1 - cfg.p_affine):.3f}); {1 - float(moved_crop.float().mean()):.3f} with p_crop = 1 (predicted 0)")

# %% [markdown]
# ## Further reading
# - Gupta et al. 2022, section 3.3 (the augmentation pipeline). Chen et al. 2020 (SimCLR) on why augmentation strength matters.
