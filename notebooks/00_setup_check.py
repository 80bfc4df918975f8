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
# # 00 · Setup check
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/00_setup_check.ipynb)
#
# **What you will do:** confirm that the environment works end to end before the long notebooks:
# package versions, whether a GPU is visible, the checksums of every bundled structure, and a first
# look at one macromolecule.
#
# **What you will learn:** where cryonb keeps its data (`data_manifest.yaml`), what a *biological
# assembly* is and why we build it from `REMARK 350` before simulating anything.
#
# **What you need:** nothing but `make reproduce` (or `make lab`). Run time: a few seconds in every profile.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
structure_id = "1bxn"
voxel_size_a = 10.0
box = 32

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

    globals().update(setup("00_setup_check"))

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

import cryonb
from cryonb import manifest, structures
from cryonb.nb import environment, start

run = start("00_setup_check", profile, results_dir, work_dir, spec)
seed = run.seed

# %% [markdown]
# ## The environment
# Versions matter for reproducibility: they are recorded next to every run (`results/<profile>/environment.json`).

# %%
env = environment()
pd.DataFrame(sorted(env["packages"].items()), columns=["package", "version"])

# %%
print(f"python {env['python']} on {env['platform']}, {env['cpu_count']} CPU cores ({env['cpu_model']}); threads {env['threads']}")
print("CUDA available:", torch.cuda.is_available(), "| device used:", run.device)

# %% [markdown]
# ## The data manifest
# Every data set the project reads or writes is listed in `data_manifest.yaml` with a checksum.
# Bundled structures must match exactly; generated sets appear once a notebook has made them.

# %%
entries = manifest.load_manifest()
checks = manifest.verify(entries)
table = pd.DataFrame([{"name": c.name, "status": c.status} for c in checks])
run.save_table(table, "00_manifest_check")
table.status.value_counts()

# %%
bundled = [c for c in checks if c.name.startswith("structure-")]
assert len(bundled) == len(structures.ALL_CLASSES) == 24 and all(c.status == "ok" for c in bundled), "a bundled structure is missing or altered"

# %% [markdown]
# ## The 24 structures
# Several PDB files hold only the crystal's asymmetric unit; the molecule that exists in a cell is the
# *biological assembly* (e.g. RuBisCO is L8S8). gemmi applies the `REMARK 350` operators for us.

# %%
info = pd.DataFrame([structures.describe(pid).__dict__ for pid in structures.ALL_CLASSES])
run.save_table(info, "00_structures", formats=("csv", "md"))
info

# %%
assert (info.n_atoms > 1000).all() and (info.max_radius_a < box * voxel_size_a / 2).all()

# %% [markdown]
# ## A first picture
# A coarse histogram of atom positions on a 32³ grid at 10 Å per voxel: not yet a density map
# (notebook 01 computes the electrostatic potential), but enough to see the molecule's shape.

# %%
grid = structures.atom_count_grid(structure_id, voxel_size_a=voxel_size_a, size=box)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, axis, name in zip(axes, range(3), ["z (xy plane)", "y (xz plane)", "x (yz plane)"]):
    ax.imshow(grid.sum(axis=axis), cmap="gray_r")
    ax.set_title(f"{structure_id}: sum along {name}", fontsize=9)
    ax.axis("off")
run.save_figure(fig, f"{structure_id}_projections")
plt.show()

# %%
assert grid.sum() == info.set_index("pdb_id").loc[structure_id, "n_atoms"], "atoms fell outside the box"
print(f"cryonb {cryonb.__version__}: setup OK")

# %% [markdown]
# ## Try it yourself
# 1. Set `structure_id = "3gl1"` (a 40 kDa monomer): predict how many voxels its projection covers compared with RuBisCO.
# 2. Set `voxel_size_a = 5.0`: the molecule now spans twice as many voxels; does it still fit in `box = 32`?
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: count the voxels each projection covers (the grid holds atom counts, so "covered" = at least one atom).
small = structures.atom_count_grid("3gl1", voxel_size_a=voxel_size_a, size=box)
covered = {pid: int((g.sum(axis=0) > 0).sum()) for pid, g in ((structure_id, grid), ("3gl1", small))}
print(f"voxels covered by the projection along z: {covered}; ratio {covered[structure_id] / covered['3gl1']:.1f}")
# a 40 kDa monomer against a large complex: the area scales roughly as mass^(2/3), not as the mass
# %% tags=["solution", "hide-cell"]
# Solution 2: at 5 Å per voxel the box spans half as many ångström; atoms outside the box are not counted.
fine = structures.atom_count_grid(structure_id, voxel_size_a=5.0, size=box)
n_atoms = int(info.set_index("pdb_id").loc[structure_id, "n_atoms"])
radius_a = float(info.set_index("pdb_id").loc[structure_id, "max_radius_a"])
print(f"{structure_id}: radius {radius_a:.0f} Å, box half-width {box * 5.0 / 2:.0f} Å at 5 Å/voxel; "
      f"{int(fine.sum())} of {n_atoms} atoms inside -> {'fits' if fine.sum() == n_atoms else 'does not fit'}")

# %% [markdown]
# ## Further reading
# - wwPDB, *Biological assemblies* (REMARK 350): https://pdb101.rcsb.org/learn/guide-to-understanding-pdb-data/biological-assemblies
# - gemmi documentation, *Assemblies*: https://gemmi.readthedocs.io/
