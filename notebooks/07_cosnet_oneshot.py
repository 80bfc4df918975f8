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
# # 07 · COS-Net: one-shot classification of unseen macromolecules
#
# **What you will do:** train the Siamese COS-Net of the second paper on *episodes* drawn from the seen
# classes of the simulated data set, then classify subtomograms of classes the network never saw,
# given a single example per class (n-way 1-shot), and compare the paper's four variants (SCNN vs
# DuSE-SCNN, with and without the volume decoder guiding classification).
#
# **What you will learn:** what an n-way k-shot episode is and why test episodes must come from unseen
# classes only; how accuracy falls with more ways and more noise; how to put a 95 % confidence interval
# on an accuracy measured over ≥ 1,000 episodes; how a plain nearest-prototype baseline compares.
#
# **What you need:** the simulated COS-Net data set (built on first use by `cryonb.simulate`, cached).
#
# **Run time:** smoke ≤ 40 s (tiny model, a few steps: the numbers mean nothing, the pipeline runs);
# quick ≈ 8 min on an idle 2-core CPU (measured 484 s: six models of ≈ 70 s each, then evaluation); paper ≈ 1–2 h on one GPU (all variants × all SNRs × per-n-way models).
#
# **What the quick profile can and cannot show.** On 2 CPU cores a small 3-D CNN trains at roughly
# 10–20 volumes/s, so the quick profile trains *narrow* networks (base width 4, 2 × 512 feature layers
# replaced by 2 × 128) for a few hundred episodes, all four variants at SNR 1000 only and the full
# DuSE-SCNN + decoder at SNR ∞ and 0.5; one model (trained 5-way, Adam lr 1e-3 instead of the paper's
# 1e-4, 200 steps) is tested at every n-way. It shows the
# pipeline, the Table 1 layout with honest confidence intervals, the drop with n-way and noise, and
# the baseline. It cannot settle the paper's small between-variant differences (≈ 0.01 accuracy):
# those need the paper profile.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
seed = 0
n_per_class = 40  # simulated subtomograms per class
table_snrs = ["1000"]  # SNRs at which all four variants are trained ("inf" allowed)
main_snrs = ["inf", "1000", "0.5"]  # SNRs at which the main variant (DuSE-SCNN+decoder) is trained
variants = ["SCNN", "SCNN+decoder", "DuSE-SCNN", "DuSE-SCNN+decoder"]
main_variant = "DuSE-SCNN+decoder"
train_n_ways = [2]  # one model per entry; a test n-way uses its own model if trained, else the first
n_ways = [2, 4, 5]  # test n-ways (each ≤ the number of unseen classes)
k_shots = [1, 3]  # k > 1 is the paper's suggested extension (main variant only)
n_episodes = 1000
train_steps = 200
base_channels = 4
feature_dim = 128
feature_pool = 2
w_dice = 1.0
w_mask_bce = 0.0  # voxel-wise BCE on the masks, not in the paper (see cryonb.oneshot.TrainEpisodesConfig)
rb3d_width = 16  # random-init RB3D baseline (CSSL-pretrained RB3D rows: see Further reading / notebook 03)
lr = 1e-4  # Adam, the paper's
betas = [0.5, 0.999]  # the paper's
match_head = "linear"  # the paper; or monotone (weights ≤ 0), see the training section

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import cryonb
import cryonb.nb
from cryonb.models.cosnet import VARIANTS, COSNet, count_parameters
from cryonb.models.rb3d import RB3D, RB3DConfig
from cryonb.oneshot import TrainEpisodesConfig, cosnet_scorer, embed, ensure_cosnet, evaluate_episodes, load_cosnet, prototype_scorer
from cryonb.simulate import cosnet_recipe, ensure_dataset

run = cryonb.nb.start("07_cosnet_oneshot", profile, seed, results_dir, work_dir)
torch.set_num_threads(max(torch.get_num_threads(), 1))
timings: dict[str, float] = {}

# %% [markdown]
# ## The data: seen classes for training, unseen classes for testing
# The simulator splits the 15 structures into *seen* classes (training episodes) and *unseen* classes
# (test episodes only). A test episode never contains a class the network was trained on.

# %%
t0 = time.perf_counter()
snrs = sorted({*table_snrs, *main_snrs}, key=lambda s: -float(s))
recipes = {s: cosnet_recipe(snr=float(s), n_per_class=n_per_class, seed=seed) for s in snrs}
datasets = {s: ensure_dataset(r) for s, r in recipes.items()}
timings["data"] = time.perf_counter() - t0
ds0 = datasets[snrs[0]]
labels = ds0.meta["class_id"].to_numpy()
unseen_pool = np.asarray(ds0.indices(split=None, class_split="unseen"))
seen_train = np.asarray(ds0.indices(split="train", class_split="seen"))
names = ds0.meta.groupby("class_id")["pdb_id"].first()
split_table = ds0.meta.groupby(["class_split", "class_id", "pdb_id"]).size().rename("subtomograms").reset_index()
run.save_table(split_table, "07_class_split", formats=("csv", "md"))
n_unseen = len(np.unique(labels[unseen_pool]))
print(f"{len(seen_train)} training rows of {len(np.unique(labels[seen_train]))} seen classes; {len(unseen_pool)} test rows of {n_unseen} unseen classes")
split_table

# %%
assert max(n_ways) <= n_unseen, f"n_ways {n_ways} must be ≤ the {n_unseen} unseen classes"
assert not set(labels[seen_train]) & set(labels[unseen_pool]), "seen and unseen classes overlap"

# %% [markdown]
# ## What an episode looks like
# A 4-way 1-shot test episode: one support subtomogram for each of four unseen classes (top, central
# slice) and a query (bottom) that belongs to one of them. The network sees no label, only the
# five volumes.

# %%
from cryonb.episodes import sample_episodes

ep = sample_episodes(labels, unseen_pool, min(4, n_unseen), 1, 1, seed=seed, what="unseen")[0]
fig, axes = plt.subplots(2, ep.n_way, figsize=(2.2 * ep.n_way, 4.6))
mid = ds0.volumes.shape[1] // 2
for i, c in enumerate(ep.classes):
    axes[0, i].imshow(ds0.volumes[ep.support[i, 0]][mid], cmap="gray")
    axes[0, i].set_title(f"support {i}: {names[c]}" + (" ✓" if i == ep.label else ""), fontsize=9)
axes[1, 0].imshow(ds0.volumes[ep.query][mid], cmap="gray")
axes[1, 0].set_title(f"query ({names[labels[ep.query]]})", fontsize=9)
for a in axes.ravel():
    a.axis("off")
fig.suptitle(f"a {ep.n_way}-way 1-shot episode from unseen classes (SNR {snrs[0]})")
run.save_figure(fig, "episode")

# %% [markdown]
# ## The variants and their size
# COS-Net = shared volume encoder (three conv–ReLU–BN levels, 32³ → 8³) ± DuSE attention, ± a volume
# decoder whose mask output gates the features (decoder guidance), a two-layer feature encoder, and a
# match head on the L1 distance of two embeddings. Parameter counts at the widths of this profile:

# %%
cfg_kw = dict(base_channels=base_channels, feature_dim=feature_dim, feature_pool=feature_pool, w_dice=w_dice, match_head=match_head, seed=seed, steps=train_steps,
              lr=lr, betas=tuple(betas), w_mask_bce=w_mask_bce)
params_table = pd.DataFrame(
    [{"variant": v, **VARIANTS[v], "parameters": count_parameters(COSNet(TrainEpisodesConfig(**cfg_kw).model_config(v)))} for v in variants]
)
run.save_table(params_table, "07_parameter_counts", formats=("csv", "md"))
params_table

# %% [markdown]
# ## Training on episodes (cached)
# Each step draws two 1-shot support sets over the same n seen classes; every cross pair is a
# match (same class) or not: BCE on the match logits + Dice on the decoder's masks, Adam lr 1e-4,
# betas (0.5, 0.999) in the paper (parameters `lr`, `betas`; the quick profile takes 1e-3 and (0.9, 0.999):
# at 1e-4 the loss barely moved in 200 steps, 1.69 → 1.61, and 2-way accuracy stayed at 0.56). After the
# last step BatchNorm's running statistics are recomputed exactly over the training pool, because
# batches of 2n volumes make them noisy (`cryonb.train.recalibrate_batchnorm`). Training runs in `cryonb.train.fit`, the loop every model here uses (AMP on a GPU, torchrun, a resumable checkpoint every 20 steps); finished models are keyed by (variant, data recipe, training config) and reused.
#
# *Match head.* The paper's head is one fully connected layer on |f_s − f_t|; its weights may take
# either sign, so on classes it never saw it can reward *distance* (we saw this on toy data: accuracy
# below chance). `match_head = "monotone"` forces the weights ≤ 0 (a learned weighted L1 metric). On
# this simulator at quick settings the paper's head did better (2-way SCNN, 200 steps, 500 episodes:
# 0.586 vs 0.526), so it stays the default.
#
# *Decoder guidance.* The paper does not spell out how the decoder guides classification; here the
# predicted mask, pooled to 8³, gates the deepest features (× (0.5 + mask)) and the Dice loss trains it.

# %%
jobs = [(v, s, n) for s in table_snrs for v in variants for n in train_n_ways]
jobs += [(main_variant, s, n) for s in main_snrs for n in train_n_ways if (main_variant, s, n) not in jobs]
ckpts = {}
t0 = time.perf_counter()
for v, s, n in jobs:
    cfg = TrainEpisodesConfig(n_way=n, **cfg_kw)
    ckpts[(v, s, n)] = ensure_cosnet(v, recipes[s], cfg, run.work_dir, run.device, dataset=datasets[s])
timings["train"] = time.perf_counter() - t0
train_rows = []
for (v, s, n), p in ckpts.items():
    _, meta = load_cosnet(p)
    log = pd.DataFrame(meta["log"])  # one row per fit epoch: mean loss over its steps
    train_rows.append({"variant": v, "snr": s, "train_n_way": n, "steps": int(log["step"].iloc[-1]), "first_loss": log["loss"].iloc[0], "last_loss": log["loss"].iloc[-1], "train_s": meta["train_seconds"], "checkpoint": p.name})
train_table = pd.DataFrame(train_rows)
run.save_table(train_table, "07_training", formats=("csv", "md"))
train_table

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for (v, s, n), p in ckpts.items():
    log = pd.DataFrame(load_cosnet(p)[1]["log"])
    ax.plot(log["step"], log["loss"], marker=".", label=f"{v} · SNR {s} · {n}-way")
ax.set(xlabel="step", ylabel=f"loss (mean of each {TrainEpisodesConfig(**cfg_kw).steps_per_epoch} steps)", title="episode training")
ax.legend(fontsize=7)
run.save_figure(fig, "training_loss")

# %% [markdown]
# ## Test episodes: accuracy with 95 % confidence intervals
# Every model is scored on the *same* seeded episodes (paired comparison). Embeddings of the test pool
# are computed once per model; an episode then costs one tiny matrix product, so ≥ 1,000 episodes are cheap.
# The interval is Wilson's for a binomial proportion over independent episodes.

# %%
t0 = time.perf_counter()
rows, preds = [], {}
embeddings = {}
for (v, s, n), p in ckpts.items():
    net, _ = load_cosnet(p, run.device)
    embeddings[(v, s, n)] = embed(net, datasets[s].volumes, unseen_pool, device=run.device)[0]
for (v, s, n), emb in embeddings.items():
    net, _ = load_cosnet(ckpts[(v, s, n)])
    for w in n_ways:
        if n != (w if w in train_n_ways else train_n_ways[0]):
            continue  # each test n-way is scored by one model
        for k in k_shots if v == main_variant else [1]:
            row, eps, pred = evaluate_episodes(cosnet_scorer(net, emb, unseen_pool), labels, unseen_pool, w, k, n_episodes, seed + 1000 * w + k)
            rows.append({"method": v, "snr": s, "train_n_way": n, **row})
            preds[(v, s, w, k)] = (eps, pred)
# the beyond-the-paper baseline: nearest class prototype (1-NN for k = 1) on the raw voxels
for s in snrs:
    vox = torch.from_numpy(np.asarray(datasets[s].volumes[np.sort(unseen_pool)], dtype=np.float32).reshape(len(unseen_pool), -1))
    for w in n_ways:
        for k in k_shots:
            row, _, _ = evaluate_episodes(prototype_scorer(vox, np.sort(unseen_pool)), labels, unseen_pool, w, k, n_episodes, seed + 1000 * w + k)
            rows.append({"method": "prototype on voxels", "snr": s, "train_n_way": 0, **row})
    # random-init RB3D (paper 1's encoder), global-average-pooled features: what architecture alone gives
    torch.manual_seed(seed)
    rb3d = RB3D(RB3DConfig(width=rb3d_width, dropout=0.0)).eval()
    with torch.no_grad():
        rb_emb = torch.cat([rb3d.pool(rb3d.features(vox[i : i + 32].reshape(-1, 1, *datasets[s].volumes.shape[1:]))).flatten(1) for i in range(0, len(vox), 32)])
    for w in n_ways:
        row, _, _ = evaluate_episodes(prototype_scorer(rb_emb, np.sort(unseen_pool)), labels, unseen_pool, w, 1, n_episodes, seed + 1000 * w + 1)
        rows.append({"method": "prototype on random RB3D features", "snr": s, "train_n_way": 0, **row})
    key = (main_variant, s, train_n_ways[0])
    if key in embeddings:
        for w in n_ways:
            row, _, _ = evaluate_episodes(prototype_scorer(embeddings[key], unseen_pool), labels, unseen_pool, w, 1, n_episodes, seed + 1000 * w + 1)
            rows.append({"method": f"prototype on {main_variant} embedding", "snr": s, "train_n_way": train_n_ways[0], **row})
acc = pd.DataFrame(rows)
timings["evaluate"] = time.perf_counter() - t0
run.save_table(acc, "07_accuracy_all", formats=("csv",))

# %% [markdown]
# ### The paper's Table 1 layout (1-shot)
# Rows: variants; columns: SNR × n-way; cells: accuracy [95 % CI]. Empty cells were not trained in this profile.

# %%
one = acc[acc.k_shot == 1].copy()
one["cell"] = one.apply(lambda r: f"{r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", axis=1)
one["column"] = one.apply(lambda r: f"SNR {r.snr} · {r.n_way}-way", axis=1)
order = [f"SNR {s} · {w}-way" for s in snrs for w in n_ways]
table1 = one.pivot_table(index="method", columns="column", values="cell", aggfunc="first").reindex(columns=order)
table1 = table1.reindex([m for m in [*variants, "prototype on voxels", "prototype on random RB3D features", f"prototype on {main_variant} embedding"] if m in table1.index]).reset_index()
run.save_table(table1, "07_table1_accuracy", formats=("csv", "md"))
table1

# %%
fig, axes = plt.subplots(1, len(snrs), figsize=(4.2 * len(snrs), 3.6), sharey=True, squeeze=False)
for ax, s in zip(axes[0], snrs):
    for m, g in one[one.snr == s].groupby("method"):
        g = g.sort_values("n_way")
        ax.errorbar(g.n_way, g.accuracy, yerr=[g.accuracy - g.ci_low, g.ci_high - g.accuracy], marker="o", capsize=3, label=m)
    ax.plot(n_ways, [1 / w for w in n_ways], "k:", label="chance")
    ax.set(title=f"SNR {s}", xlabel="n-way (1-shot)", xticks=n_ways)
axes[0, 0].set_ylabel("accuracy (95 % CI)")
axes[0, -1].legend(fontsize=7, loc="upper right")
run.save_figure(fig, "accuracy_vs_nway_snr")

# %% [markdown]
# ### More shots (the paper's future work)
# Averaging the embeddings of k examples per class into one prototype before the match head.

# %%
kt = acc[acc.method.isin([main_variant, "prototype on voxels"])].pivot_table(index=["method", "snr", "n_way"], columns="k_shot", values="accuracy").reset_index()
kt.columns = [c if isinstance(c, str) else f"{c}-shot" for c in kt.columns]
run.save_table(kt, "07_kshot", formats=("csv", "md"))
kt

# %% [markdown]
# ## Which unseen classes get confused?
# For the largest n-way at the main SNR: how often a query of class *row* was assigned to class *column*.

# %%
s_conf = "1000" if "1000" in main_snrs else main_snrs[0]
w_conf = max(n_ways)
eps, pred = preds[(main_variant, s_conf, w_conf, 1)]
true_c = np.array([e.classes[e.label] for e in eps])
pred_c = np.array([e.classes[p] for e, p in zip(eps, pred)])
ucls = sorted(np.unique(labels[unseen_pool]))
conf = pd.crosstab(pd.Series([names[c] for c in true_c], name="true"), pd.Series([names[c] for c in pred_c], name="predicted"), normalize="index")
conf = conf.reindex(index=[names[c] for c in ucls], columns=[names[c] for c in ucls]).fillna(0)
fig, ax = plt.subplots(figsize=(4.8, 4))
im = ax.imshow(conf.to_numpy(), cmap="viridis", vmin=0, vmax=1)
ax.set(xticks=range(len(ucls)), yticks=range(len(ucls)), xticklabels=conf.columns, yticklabels=conf.index, xlabel="predicted", ylabel="true", title=f"{main_variant}, SNR {s_conf}, {w_conf}-way 1-shot")
plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
fig.colorbar(im, ax=ax, fraction=0.046)
run.save_figure(fig, "confusion_unseen")

# %% [markdown]
# ## Checks on the key numbers
# Accuracy must beat chance by a clear margin at the least noisy SNR in 2-way (the smoke profile only
# checks that the numbers are valid: its model is too small and too short to learn).

# %%
assert (acc.n_episodes >= min(n_episodes, 1000)).all() or profile == "smoke"
assert acc.accuracy.between(0, 1).all() and (acc.ci_low <= acc.accuracy).all() and (acc.accuracy <= acc.ci_high).all()
best = acc[(acc.method == main_variant) & (acc.snr == snrs[0]) & (acc.n_way == min(n_ways)) & (acc.k_shot == 1)].accuracy.iloc[0]
if profile != "smoke":
    assert best > 1 / min(n_ways) + 0.1, f"{main_variant} 2-way accuracy {best:.3f} is near chance"
timing_table = pd.DataFrame([{"step": k, "seconds": round(v, 1)} for k, v in timings.items()])
run.save_table(timing_table, "07_timings", formats=("csv", "md"))
print(f"{main_variant} at SNR {snrs[0]}, {min(n_ways)}-way 1-shot: {best:.3f}")
timing_table

# %% [markdown]
# ## Try it yourself
# 1. Set `n_ways = [2, 3, 4, 5]` and predict the accuracy at 5-way before running: does it fall like
#    1/n (chance) or more slowly? What does the gap to chance tell you about the embedding?
# 2. Train the main variant with `train_n_ways = [2, 5]` (one model per scheme, as the paper did) and
#    compare its 5-way accuracy with the 2-way-trained model's. Which do you expect to win, and why?
# 3. Raise `k_shots` to `[1, 5]`: how much of the SNR 0.5 loss do five shots recover for COS-Net and for
#    the voxel prototype baseline?
#
# ## Further reading
# - Zhou et al., *One-shot learning with attention-guided segmentation in cryo-electron tomography*
#   (COS-Net), Front. Mol. Biosci. 2021 — `../shared/papers/001_*`.
# - Koch, Zemel & Salakhutdinov, *Siamese neural networks for one-shot image recognition*, 2015.
# - Snell, Swersky & Zemel, *Prototypical networks for few-shot learning*, NeurIPS 2017.
# - Roy, Navab & Wachinger, *Concurrent spatial and channel squeeze & excitation*, MICCAI 2018 (scSE/csSE).
# - Notebook 08 continues with the masks and the 3-D dense CRF.
