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
# Run time: quick ≈ 6.5 min on an idle 2-core CPU (measured 385 s; ≈ 2 min per method); smoke ≈ 20 s; paper: the paper's 200 epochs on a GPU.
#
# **What the quick profile can and cannot show.** The paper pre-trains for 200 epochs on 3,000 subtomograms
# with Adam at 1e-4. Here a 2-core CPU trains an RB3D 8 channels wide at ≈ 30 pairs of views/s, so the quick
# profile pre-trains each method for 6 epochs on the 600 training subtomograms of one SNR, at lr 1e-3 (at
# 1e-4, 75 steps left the weights close to their start). It shows the machinery working end to end and
# whether a short pre-training already moves the probes above random initialisation; it cannot show the
# paper's converged embeddings. For scale: a logistic regression on each subtomogram's radial density
# profile (no deep learning at all) reaches about 60 % on this data set, so the information is there.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
seed = 0
snr = 0.1
n_per_class = 100
methods = ["moco", "simclr", "swav"]
pretrain = {"width": 8, "embedding_dim": 64, "epochs": 6, "lr": 1e-3}
knn_k = 5

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from sklearn.manifold import TSNE

from cryonb import stats
from cryonb.nb import start
from cryonb.pretrain import PretrainConfig, embed, embedding_std, ensure_pretrained, knn_accuracy, load_encoder, random_encoder, standardise
from cryonb.simulate import cssl_recipe, ensure_dataset
from cryonb.train import load_checkpoint

run = start("03_cssl_pretraining", profile, seed, results_dir, work_dir)
cfg = PretrainConfig.from_dict({**pretrain, "seed": seed})
recipe = cssl_recipe(snr=snr, n_per_class=n_per_class, seed=seed)
ds = ensure_dataset(recipe)
train_idx, val_idx = ds.indices(split="train"), ds.indices(split="val")
labels = ds.meta.class_id.to_numpy()
print(f"{len(train_idx)} training subtomograms (labels unused), {len(val_idx)} validation; config {cfg}")

# %% [markdown]
# ## Pre-training
# One call per method. It reuses a checkpoint with the same method, data and settings, and resumes an
# interrupted run from its last epoch.

# %%
encoders = {}
for method in methods:
    path = ensure_pretrained(method, recipe, cfg, work_dir)
    encoders[method] = (path, load_encoder(path))
    print(f"{method}: {path}")

# %% [markdown]
# ## Loss curves

# %%
curves = pd.DataFrame([
    {"method": m, "epoch": e["epoch"], "loss": e["loss"]}
    for m, (path, _) in encoders.items() for e in load_checkpoint(path)["history"]
])
run.save_table(curves, "03_loss_curves")
fig, ax = plt.subplots(figsize=(5, 3))
sns.lineplot(data=curves, x="epoch", y="loss", hue="method", marker="o", ax=ax)
ax.set_title(f"contrastive loss, SNR {snr}")
run.save_figure(fig, "loss_curves")
plt.show()

# %% [markdown]
# ## Is the frozen embedding useful?
# k-NN accuracy on the validation split (neighbours from the training split, cosine similarity after z-scoring
# each dimension with the training split's statistics), against the same architecture with random weights.
# Chance is 10 %. The spread column is the mean per-dimension standard deviation of the L2-normalised raw
# embedding: near zero means every input lands on almost the same point. A randomly initialised RB3D can
# already be close to that (averages of z-scored noisy volumes look alike), so the check below asks that
# pre-training did not shrink the spread further (collapse).
#
# How sure is the probe? With 200 validation volumes its 95 % interval (Wilson) is about ±5 points, so
# at quick scale (6 epochs on 600 volumes) pre-trained and random encoders usually overlap: we saw the
# best CSSL encoder ahead by 6.5 points on one simulated data set and behind by 2.5 on another that
# differs only in the detector MTF (ideal vs measured K3). The paper profile asserts a clear win; the quick one reports the
# intervals and says whether they separate.

# %%
reference = {"random": random_encoder(cfg, len(ds.classes), seed)}
rows, embeddings = [], {}
for name, model in {**reference, **{m: enc for m, (_, enc) in encoders.items()}}.items():
    e_train, e_val = embed(model, ds.volumes, train_idx), embed(model, ds.volumes, val_idx)
    embeddings[name] = standardise(e_train, e_val)[1]
    acc = knn_accuracy(e_train, labels[train_idx], e_val, labels[val_idx], knn_k)
    low, high = stats.proportion_ci(round(acc * len(val_idx)), len(val_idx))
    rows.append({"snr": snr, "init": name, "knn_val_acc": acc, "ci_low": low, "ci_high": high,
                 "embedding_spread": embedding_std(e_val), "seed": seed})
probe = pd.DataFrame(rows)
run.save_table(probe, "03_knn_probe", formats=("csv", "md"))
probe

# %%
assert probe.knn_val_acc.between(0, 1).all() and len(probe) == len(methods) + 1
collapsed = probe[probe.embedding_spread < 1e-3].init.tolist()
if collapsed:
    print(f"WARNING: near-collapsed embeddings (spread < 1e-3): {collapsed}. A random RB3D's globally pooled "
          "features barely differ between z-scored inputs, so this is expected before training; after "
          "pre-training it means the method collapsed or trained too briefly.")
random_row = probe[probe.init == "random"].iloc[0]
assert (probe.embedding_spread >= 0.5 * random_row.embedding_spread).all(), "pre-training shrank the embedding below its random initialisation (collapse)"
best_row = probe[probe.init != "random"].sort_values("knn_val_acc").iloc[-1]
separated = best_row.ci_low > random_row.ci_high
print(f"best CSSL k-NN accuracy {best_row.knn_val_acc:.3f} ({best_row.init}, 95 % CI {best_row.ci_low:.3f}-{best_row.ci_high:.3f}) "
      f"vs random init {random_row.knn_val_acc:.3f} ({random_row.ci_low:.3f}-{random_row.ci_high:.3f}); chance 0.1: "
      + ("pre-training clearly helps" if separated else "the intervals overlap, so this probe cannot tell them apart"))
if profile == "paper":  # full pre-training on 6,000 volumes: the paper's premise must show here
    assert separated, "no pre-trained encoder beat random initialisation on the k-NN probe beyond its 95 % interval"

# %% [markdown]
# ## The embedding in two dimensions (t-SNE, coloured by class)

# %%
fig, axes = plt.subplots(1, len(embeddings), figsize=(3.2 * len(embeddings), 3.2), squeeze=False)
for ax, (name, emb) in zip(axes[0], embeddings.items()):
    xy = TSNE(n_components=2, perplexity=min(30, len(emb) - 1), random_state=seed, init="pca").fit_transform(emb)
    sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=ds.meta.pdb_id.to_numpy()[val_idx], s=12, ax=ax, legend=name == "random", palette="tab10")
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
if axes[0][0].get_legend():
    axes[0][0].legend(fontsize=6, ncol=2)
run.save_figure(fig, "tsne")
plt.show()

# %% [markdown]
# ## Try it yourself
# 1. Set `methods = ["moco"]` and `pretrain["epochs"] = 10`: predict whether the k-NN accuracy rises, and by how much more than the loss falls.
# 2. Set `snr = 0.03`: which method suffers most?
# 3. Set MoCo's queue to 16 (`pretrain["moco_queue"] = 16`): fewer negatives per step — what happens to the loss scale?
#
# ## Further reading
# He et al. 2020 (MoCo); Chen et al. 2020 (SimCLR, MoCo v2); Caron et al. 2020 (SwAV); Gupta et al. 2022, section 3.
