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
# # 03 · Contrastive self-supervised pre-training (MoCo, SimCLR, SwAV)
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/03_cssl_pretraining.ipynb)
#
# **What you will do:** pre-train the RB3D encoder on unlabelled subtomograms with three contrastive methods,
# then measure, without any fine-tuning, how well each frozen embedding separates the ten classes.
#
# **What you will learn:** how MoCo (momentum encoder + queue of 128 negatives, τ = 0.2), SimCLR (NT-Xent over
# 2N views) and SwAV (Sinkhorn cluster codes, swapped prediction) differ; how to tell a useful embedding
# (k-NN accuracy) from a collapsed one (per-dimension spread).
#
# **What you need:** the CSSL data set of notebook 01 (made on demand). Checkpoints land in
# `runs/<profile>/cssl/` and notebook 04 reuses them.
#
# Run time: quick ≈ 10–15 min on an idle 2-core CPU (measured each run: the wall-time table of `results/quick/REPORT.md`); smoke ≈ 20 s; paper: the paper's 200 epochs on a GPU.
#
# **What the quick profile can and cannot show.** The paper pre-trains for 200 epochs with Adam at 1e-4 on the
# training split of each data set. A 2-core CPU trains a narrow RB3D at a few dozen pairs of views per second,
# so the quick profile pre-trains far shorter and at a higher learning rate (the cell below prints the
# settings this run uses, read from the spec `cssl.pretrain` of `params/<profile>.yaml`). It shows the machinery
# working end to end and whether a short pre-training already moves the probes above random initialisation;
# it cannot show the paper's converged embeddings.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
knn_k = 5

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

    globals().update(setup("03_cssl_pretraining"))

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.manifold import TSNE

from cryonb import checkpoints, stats
from cryonb.embedding import embed
from cryonb.experiments import cssl as cssl_experiment
from cryonb.nb import start
from cryonb.pretrain import embedding_std, knn_accuracy, load_encoder, random_encoder, standardise

run = start("03_cssl_pretraining", profile, results_dir, work_dir, spec)
seed = run.seed
cssl = run.spec.cssl
datasets = cssl_experiment.datasets(run.spec)
methods = cssl.sweep.methods
train_cfg = cssl.pretrain.train
first_snr, first = next(iter(datasets.items()))
print(f"pre-training {', '.join(methods)} at SNR {', '.join(f'{s:g}' for s in datasets)}: RB3D width {cssl.model.width}, "
      f"embedding {cssl.model.embedding_dim}; {train_cfg.epochs} epochs, {train_cfg.optimizer} lr {train_cfg.lr:g}, "
      f"batch {cssl.pretrain.batch_size}, on {len(first.indices(split='train'))} training subtomograms per data set "
      f"(labels unused; {len(first.indices(split='val'))} validation)")

# %% [markdown]
# ## Pre-training
# One encoder per (SNR, method). A finished encoder with the same method, data and settings is reused, and an
# interrupted run resumes from its last epoch (the folder name is a content key of all three).

# %%
encoders = cssl_experiment.ensure_encoders(run.spec, run.work_dir, run.device)
for (snr, method, index), path in encoders.items():
    print(f"SNR {snr:g} {method} #{index}: {path.relative_to(run.work_dir.parent.parent)}")

# %% [markdown]
# ## Loss curves

# %%
curves = pd.DataFrame([
    {"snr": snr, "method": m, "encoder": i, "epoch": e["epoch"], "loss": e["loss"]}
    for (snr, m, i), path in encoders.items() for e in checkpoints.load(path, "rb3d-encoder")["history"]
])
run.save_table(curves, "03_loss_curves")
fig, ax = plt.subplots(figsize=(5, 3))
sns.lineplot(data=curves, x="epoch", y="loss", hue="method", style="snr", marker="o", ax=ax)
ax.set_title("contrastive loss")
run.save_figure(fig, "loss_curves")
plt.show()

# %% [markdown]
# ## Is the frozen embedding useful?
# k-NN accuracy on the validation split (neighbours from the training split, cosine similarity after z-scoring
# each dimension with the training split's statistics), against the same architecture with random weights.
# Chance is one over the number of classes. The spread column is the mean per-dimension standard deviation of the L2-normalised raw
# embedding: near zero means every input lands on almost the same point. A randomly initialised RB3D can
# already be close to that (averages of z-scored noisy volumes look alike), so the check below asks that
# pre-training did not shrink the spread further (collapse).
#
# How sure is the probe? Its 95 % interval (Wilson, over the validation volumes) is printed with it; at quick
# scale pre-trained and random encoders usually overlap. A failed probe is a result, not an error: the cell
# reports whether the intervals separate, in every profile, and the REPORT judges the paper's claims.

# %%
rows, embeddings = [], {}
for snr, ds in datasets.items():
    train_idx, val_idx = ds.indices(split="train"), ds.indices(split="val")
    labels = ds.meta.class_id.to_numpy()
    models = {("random", 0): random_encoder(cssl.model, seed),
              **{(m, i): load_encoder(encoders[(snr, m, i)]) for m in methods for i in range(cssl.sweep.encoders)}}
    for (name, index), model in models.items():
        e_train = embed(model, ds.volumes, train_idx)[0].numpy()
        e_val = embed(model, ds.volumes, val_idx)[0].numpy()
        if snr == first_snr and index == 0:
            embeddings[name] = standardise(e_train, e_val)[1]
        acc = knn_accuracy(e_train, labels[train_idx], e_val, labels[val_idx], knn_k)
        low, high = stats.proportion_ci(round(acc * len(val_idx)), len(val_idx))
        rows.append({"snr": snr, "init": name, "encoder": index, "knn_val_acc": acc, "ci_low": low, "ci_high": high,
                     "embedding_spread": embedding_std(e_val), "seed": cssl_experiment.encoder_seed(run.spec, index)})
probe = pd.DataFrame(rows)
run.save_table(probe, "03_knn_probe", formats=("csv", "md"))
probe

# %%
assert probe.knn_val_acc.between(0, 1).all() and len(probe) == len(datasets) * (len(methods) * cssl.sweep.encoders + 1)
collapsed = probe[probe.embedding_spread < 1e-3].init.tolist()
if collapsed:
    print(f"WARNING: near-collapsed embeddings (spread < 1e-3): {collapsed}. A random RB3D's globally pooled "
          "features barely differ between z-scored inputs, so this is expected before training; after "
          "pre-training it means the method collapsed or trained too briefly.")
for snr, group in probe.groupby("snr"):
    random_row = group[group.init == "random"].iloc[0]
    shrunk = group[group.embedding_spread < 0.5 * random_row.embedding_spread].init.tolist()
    assert not shrunk, f"SNR {snr:g}: pre-training shrank the embedding of {shrunk} below half of random initialisation's spread (collapse)"
    best_row = group[group.init != "random"].sort_values("knn_val_acc").iloc[-1]
    separated = best_row.ci_low > random_row.ci_high
    print(f"SNR {snr:g}: best CSSL k-NN accuracy {best_row.knn_val_acc:.3f} ({best_row.init}, 95 % CI {best_row.ci_low:.3f}-{best_row.ci_high:.3f}) "
          f"vs random init {random_row.knn_val_acc:.3f} ({random_row.ci_low:.3f}-{random_row.ci_high:.3f}); chance {1 / len(first.classes):.2f}: "
          + ("pre-training clearly helps" if separated else "the intervals overlap, so this probe cannot tell them apart"))

# %% [markdown]
# ## The embedding in two dimensions (t-SNE, coloured by class)

# %%
fig, axes = plt.subplots(1, len(embeddings), figsize=(3.2 * len(embeddings), 3.2), squeeze=False)
for ax, (name, emb) in zip(axes[0], embeddings.items()):
    xy = TSNE(n_components=2, perplexity=min(30, len(emb) - 1), random_state=seed, init="pca").fit_transform(emb)
    sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=first.meta.pdb_id.to_numpy()[first.indices(split="val")], s=12, ax=ax, legend=name == "random", palette="tab10")
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
if axes[0][0].get_legend():
    axes[0][0].legend(fontsize=6, ncol=2)
run.save_figure(fig, "tsne")
plt.show()

# %% [markdown]
# ## Try it yourself
# Each exercise edits a profile of your own (`cp params/quick.yaml params/try.yaml`, then
# `python -m cryonb run --profile try --only 03`): the spec changes, so new encoders are trained beside the old.
# 1. Set `cssl: sweep: inits: [random, moco]` and `cssl: pretrain: train: {epochs: 10, ...}`: predict whether the k-NN accuracy rises, and by how much more than the loss falls.
# 2. Set `cssl: data: snrs: [0.03]`: which method suffers most?
# 3. Set MoCo's queue to 16 (`cssl: pretrain: ssl: {moco_queue: 16}`): fewer negatives per step — what happens to the loss scale?
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: the edit, then this run's numbers to predict from: how far the loss fell and how far the k-NN
# accuracy is above chance. The contrastive loss keeps falling as the task (find your own view) gets easier;
# the k-NN accuracy rises only as far as what separates views also separates classes.
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"sweep": {"inits": ["random", "moco"]}, "pretrain": {"train": {"epochs": 10}}}}, only="03")
ends = curves.sort_values("epoch").groupby(["snr", "method"]).loss.agg(["first", "last"])
print("loss at the first and the last epoch of this run:\n", ends.round(3).to_string())
print("k-NN accuracy minus chance:\n", (probe.groupby(["snr", "init"]).knn_val_acc.mean() - 1 / len(first.classes)).round(3).to_string())
# %% tags=["solution", "hide-cell"]
# Solution 2: the edit; in this run, how much each method's k-NN accuracy changes from the cleanest to the noisiest
# SNR (a method that leans on fine detail loses most; at one SNR there is nothing to compare).
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"data": {"snrs": [0.03]}}}, only="03")
by_snr = probe.groupby(["init", "snr"]).knn_val_acc.mean().unstack("snr")
if by_snr.shape[1] > 1:
    print("k-NN accuracy, noisiest minus cleanest SNR:\n", (by_snr[by_snr.columns.min()] - by_snr[by_snr.columns.max()]).round(3).to_string())
else:
    print(f"this profile has one SNR ({by_snr.columns[0]:g}); run the edit to see")
# %% tags=["solution", "hide-cell"]
# Solution 3: InfoNCE is a (K + 1)-way classification, so a model that guesses starts near log(K + 1) with K
# negatives: a smaller queue lowers the loss scale without the model being better.
from cryonb.nb import try_profile

try_profile(run, {"cssl": {"pretrain": {"ssl": {"moco_queue": 16}}}}, only="03")
queue = cssl.pretrain.ssl.moco_queue
moco_start = curves[(curves.method == "moco") & (curves.epoch == curves.epoch.min())].loss.mean() if "moco" in set(curves.method) else float("nan")
print(f"log(K + 1): {np.log(queue + 1):.2f} with this run's queue {queue}, {np.log(17):.2f} with 16; "
      f"this run's first-epoch MoCo loss {moco_start:.2f}")

# %% [markdown]
# ## Further reading
# He et al. 2020 (MoCo); Chen et al. 2020 (SimCLR, MoCo v2); Caron et al. 2020 (SwAV); Gupta et al. 2022, section 3.
