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
# # 04 · Fine-tuning with few labels: the CSSL paper's accuracy tables
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/04_finetuning_tables.ipynb)
#
# **What you will do:** fine-tune the RB3D classifier from four starting points (random weights, and the
# MoCo, SimCLR and SwAV encoders of notebook 03) on 25 / 50 / 75 / 100 % of the labelled training split,
# several runs each, keep the model with the best validation accuracy and score it on the test split.
#
# **What you will learn:** how the paper's Table 1 is built (rows = initialisation, columns = label fraction,
# mean ± std over runs), why runs are *paired* (run *r* uses the same labelled subset and seed under every
# initialisation), and how large the run-to-run spread is compared with the differences between methods.
#
# **What you need:** the simulated CSSL data set and the encoders of notebook 03 (both are built here on
# first use if missing, cached by content hash, so this notebook also runs on its own).
#
# **Run time (2 CPU cores):** smoke ≤ 40 s; quick ≈ 10–15 min (the runs printed below, trained eight at a time;
# measured each run: the wall-time table of `results/quick/REPORT.md`), plus notebook 03's pre-training if it has not run;
# paper ≈ 3 SNR × 4 inits × 4 fractions × 5 runs × 50 epochs on 500 subtomograms per class: several GPU hours,
# resumable by parts (rerun the notebook; finished runs are skipped).
#
# **What the quick profile can and cannot show.** The paper's 240 runs × 50 epochs are out of reach of 2 CPU
# cores. The quick profile (printed below from the spec, `cssl.finetune` and `cssl.sweep`) runs two of the
# paper's SNRs, a narrow RB3D (notebook 03's encoders), stratified caps on the training and validation splits, two label
# fractions, a few runs of a few epochs, and Adam instead of the paper's SGD at 5e-4 (SGD at the paper's rate
# does not move the weights in a few epochs; SGD at 0.05 left every run at chance in our first quick run). It
# shows the whole pipeline, the table layout, the spread of runs and the confusion matrices; its accuracies are
# far below the paper's ≈ 69 %, and whether a pre-training advantage at a few epochs survives 50 epochs of
# fine-tuning, the paper's claim, needs the paper profile (notebook 05 tests the differences; the REPORT judges).
#
# *Two design choices that matter at any scale* (both in `cryonb`, both measured on this data set): RB3D
# pools its features to 4³ cells instead of one global average, because the class is the molecule at the
# centre and global pooling cannot tell it from its neighbours (it stayed at chance); and BatchNorm's
# statistics are recomputed over the training subset before each validation ("precise BN"), because with
# batches of 16 and Adam the running averages lag and validation accuracy jumped between 10 % and 35 % from
# one epoch to the next.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
num_threads = 0  # torch CPU threads; 0 keeps torch's default (1 can be much faster on a busy machine)

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

    globals().update(setup("04_finetuning_tables"))

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

import cryonb.nb
from cryonb.experiments import cssl as cssl_experiment
from cryonb.finetune import accuracy_table
from cryonb.metrics import confusion_matrix

run = cryonb.nb.start("04_finetuning_tables", profile, results_dir, work_dir, spec)
seed = run.seed
if num_threads:
    torch.set_num_threads(num_threads)
cssl = run.spec.cssl
cells, train_cfg = cssl.sweep, cssl.finetune.train
print(f"sweep: inits {list(cells.inits)} × fractions {list(cells.fractions)} × {cells.runs} runs × SNR {list(cssl.data.snrs)}; "
      f"{train_cfg.epochs} epochs, {train_cfg.optimizer} lr {train_cfg.lr:g}, {train_cfg.scheduler or 'constant'} schedule, "
      f"batch {cssl.finetune.batch_size}; caps: train {cssl.finetune.max_train}, val {cssl.finetune.max_val}")

# %% [markdown]
# ## The sweep (cached, resumable)
# One row per finished run lands in a CSV under `work_dir` as soon as the run ends; rerunning this cell
# skips finished runs, so an interrupted sweep (or the paper profile run by parts) continues where it stopped.
# Settings: SGD (momentum 0.9) with cosine decay, weight decay and batch size from the parameters; the
# encoder's weights are copied in, the classifier head starts from the run's seed.

# %%
t0 = time.perf_counter()
runs, datasets = cssl_experiment.run_sweep(run.spec, run.work_dir, run.device)
snrs = list(datasets)
sweep_s = time.perf_counter() - t0
run.save_table(runs, "04_finetune_runs", formats=("csv",))
print(f"{len(runs)} runs, {runs['wall_s'].sum():.0f} s of training in total ({sweep_s:.0f} s in this session)")
runs.head(8)

# %%
expected = len(snrs) * len(cells.inits) * len(cells.fractions) * cells.runs
assert len(runs) == expected, f"{len(runs)} runs in the table, expected {expected}"
assert runs["test_acc"].between(0, 1).all() and runs["best_epoch"].between(1, train_cfg.epochs).all()
n_classes = len(next(iter(datasets.values())).classes)
print(f"chance level: {1 / n_classes:.2f}; mean test accuracy {runs['test_acc'].mean():.3f}")

# %% [markdown]
# ## The paper's tables: accuracy (%) mean ± std over runs, one table per SNR
# Rows are initialisations, columns label fractions; the standard deviation is the sample SD over runs.

# %%
for snr in snrs:
    table = accuracy_table(runs, snr, inits=cells.inits)
    run.save_table(table, f"04_accuracy_snr{snr:g}", formats=("csv", "md", "tex"))
    print(f"SNR {snr:g}")
    print(table.to_markdown(index=False))

# %% [markdown]
# ## Accuracy against label fraction
# Points are run means, bars ± one SD over runs; thin dots are the individual runs.

# %%
fig, axes = plt.subplots(1, len(snrs), figsize=(5 * len(snrs), 3.6), squeeze=False)
for ax, snr in zip(axes[0], snrs):
    sub = runs[np.isclose(runs["snr"], snr)].assign(percent=lambda d: 100 * d["fraction"], accuracy=lambda d: 100 * d["test_acc"])
    sns.lineplot(data=sub, x="percent", y="accuracy", hue="init", hue_order=list(cells.inits), errorbar="sd", marker="o", err_style="bars", ax=ax)
    sns.stripplot(data=sub, x="percent", y="accuracy", hue="init", hue_order=list(cells.inits), native_scale=True, dodge=False, size=3, alpha=0.4, legend=False, ax=ax)
    ax.axhline(100 / n_classes, ls=":", c="gray", label="chance")
    ax.set(xlabel="labelled training data (%)", ylabel="test accuracy (%)", title=f"SNR {snr:g}")
run.save_figure(fig, "accuracy_vs_fraction")

# %% [markdown]
# ## Confusion matrices of the best and the worst model
# Rows are the true class, columns the predicted one, each row normalised to 1. Which structures does even
# the best model confuse? Similar-sized complexes at low SNR are the usual suspects.

# %%
best, worst = runs.loc[runs["test_acc"].idxmax()], runs.loc[runs["test_acc"].idxmin()]
ds = datasets[float(best["snr"])]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
for ax, (what, r) in zip(axes, (("best", best), ("worst", worst))):
    p = cssl_experiment.load_predictions(run.spec, run.work_dir, float(r["snr"]), r["init"], float(r["fraction"]), int(r["run"]))
    m = confusion_matrix(p["label"], p["pred"], n_classes)
    sns.heatmap(m, vmin=0, vmax=1, cmap="viridis", xticklabels=ds.classes, yticklabels=ds.classes, ax=ax, cbar=what == "worst")
    ax.set(xlabel="predicted", ylabel="true", title=f"{what}: {r['init']}, {100 * r['fraction']:g} %, run {int(r['run'])} · acc {r['test_acc']:.2f}")
    assert np.isclose(np.trace(confusion_matrix(p["label"], p["pred"], n_classes, normalize=False)) / len(p), r["test_acc"])
fig.tight_layout()
run.save_figure(fig, "confusion_best_worst")

# %% [markdown]
# ## Wall time

# %%
timing = runs.groupby(["init", "fraction"])["wall_s"].agg(["mean", "sum"]).round(1).reset_index()
run.save_table(timing, "04_wall_time", formats=("csv", "md"))
timing

# %% [markdown]
# ## Try it yourself
# In a profile of your own (`cp params/quick.yaml params/try.yaml`; `python -m cryonb run --profile try --only 04`):
# 1. Set `cssl: finetune: train: {optimizer: sgd, lr: 5.0e-4, ...}` (the paper's settings) with the quick
#    profile's epochs. Predict: do the accuracies stay near chance (0.10)? Why does the paper get away with
#    it (hint: 50 epochs, 300 samples/class)?
# 2. Add `0.5` and `0.75` to `cssl: sweep: fractions`. Only the new runs train (the sweep's folder does not
#    depend on the list of cells): check the wall time table.
# 3. Set `cssl: data: snrs: [0.03]`. Predict which initialisation loses the most accuracy.
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: the edit, and the step count behind the hint: SGD at 5e-4 moves the weights a little per step, so
# it needs many steps; compare this profile's optimiser steps with the paper's 50 epochs of 300 samples per class.
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"finetune": {"train": {"optimizer": "sgd", "lr": 5.0e-4}}}}, only="04")
ds_first = next(iter(datasets.values()))
per_class = len(ds_first.indices(split="train")) / n_classes
print(f"this profile: {per_class:.0f} training samples per class × {train_cfg.epochs} epochs; "
      f"paper: 300 × 50, {300 * 50 / (per_class * train_cfg.epochs):.0f}× more sample presentations; chance {1 / n_classes:.2f}")
# %% tags=["solution", "hide-cell"]
# Solution 2: the edit; only the new (fraction) cells train. Their cost, from this run's wall times per run:
from cryonb.nb import try_profile

new_fractions = [f for f in (0.5, 0.75) if f not in cells.fractions]
try_profile(run, {"cssl": {"sweep": {"fractions": sorted({*cells.fractions, *new_fractions})}}}, only="04")
per_run_s = runs.groupby("fraction").wall_s.mean()
slope = np.polyfit(per_run_s.index, per_run_s.values, 1) if len(per_run_s) > 1 else np.array([0.0, per_run_s.mean()])
extra = sum(np.polyval(slope, f) for f in new_fractions) * len(snrs) * len(cells.inits) * cells.runs
print(f"{len(new_fractions) * len(snrs) * len(cells.inits) * cells.runs} new runs, about {extra / 60:.1f} min (linear in the fraction)")
# %% tags=["solution", "hide-cell"]
# Solution 3: the edit; this run's accuracy lost between its cleanest and noisiest SNR, per initialisation, as a guide.
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"data": {"snrs": [0.03]}}}, only="04")
by_init = runs.groupby(["init", "snr"]).test_acc.mean().unstack("snr")
if by_init.shape[1] > 1:
    print((by_init[by_init.columns.max()] - by_init[by_init.columns.min()]).rename("accuracy lost").round(3).to_string())
else:
    print(f"one SNR in this profile ({by_init.columns[0]:g}); run the edit to see")

# %% [markdown]
# ## Further reading
# - Gupta et al. 2022, *Frontiers in Physiology*: the CSSL paper (Tables 1–2, fine-tuning settings).
# - Newell & Deng 2020, *How useful is self-supervised pretraining for visual tasks?* (CVPR): when
#   pre-training helps, and why the benefit shrinks as labels grow.
# - Loshchilov & Hutter 2017, *SGDR: stochastic gradient descent with warm restarts* (cosine decay).
