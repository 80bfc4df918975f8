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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/07_cosnet_oneshot.ipynb)
#
# **What you will do:** train the Siamese COS-Net of the second paper on *episodes* drawn from the seen
# classes of the simulated data set, then classify subtomograms of classes the network never saw,
# given a single example per class (n-way 1-shot), and compare the paper's four variants (SCNN vs
# DuSE-SCNN, with and without the volume decoder guiding classification).
#
# **What you will learn:** what an n-way k-shot episode is and why test episodes must come from unseen
# classes only; how accuracy falls with more ways and more noise; why 1,000 episodes are not 1,000 independent
# trials, and how to put an honest interval on an accuracy (trained models × classes × volumes); how a plain
# nearest-prototype baseline compares.
#
# **What you need:** the simulated COS-Net data set (built on first use by `cryonb.simulate`, cached).
#
# **Run time:** smoke ≤ 40 s (tiny model, a few steps: the numbers mean nothing, the pipeline runs);
# quick ≈ 10–15 min on an idle 2-core CPU (the models printed below, trained eight at a time, then evaluation;
# measured each run: the wall-time table of `results/quick/REPORT.md`); paper ≈ 1–2 h on one GPU (all variants × all SNRs × per-n-way models).
#
# **What the quick profile can and cannot show.** On 2 CPU cores a small 3-D CNN trains at roughly
# 10–20 volumes/s, so the quick profile trains *narrow* networks for a few hundred episodes, all four variants
# at one SNR and the full DuSE-SCNN + decoder at every SNR, one model per training n-way that is tested at
# every n-way, with a faster optimiser than the paper's (the first cell prints the spec `cosnet` this run uses).
# It shows the pipeline, the Table 1 layout with confidence intervals, the drop with n-way and noise, and the
# baselines. It cannot settle the paper's small between-variant differences (≈ 0.01 accuracy): those need the
# paper profile.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)

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

    globals().update(setup("07_cosnet_oneshot"))

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import cryonb.nb
from cryonb.episodes import sample_episodes
from cryonb.experiments import cosnet as cosnet_experiment
from cryonb.models.cosnet import VARIANTS, COSNet, count_parameters
from cryonb.oneshot import load_cosnet
from cryonb.simulate.config import snr_label

run = cryonb.nb.start("07_cosnet_oneshot", profile, results_dir, work_dir, spec)
seed = run.seed
cos = run.spec.cosnet
ev = cos.evaluation
n_ways, k_shots, variants, main_variant = list(ev.n_ways), list(ev.k_shots), list(ev.variants), ev.main_variant
training = cos.training
print(f"{len(ev.jobs())} models: {variants} at SNR {[snr_label(s) for s in ev.table_snrs]}, {main_variant} also at "
      f"{[snr_label(s) for s in ev.main_snrs]}, trained {list(ev.train_n_ways)}-way for {training.steps} steps "
      f"({training.train.optimizer} lr {training.train.lr:g}, betas {training.train.betas}, w_mask_bce {training.loss.w_mask_bce:g}); "
      f"tests: {n_ways}-way × {k_shots}-shot, {ev.n_episodes} episodes each")
timings: dict[str, float] = {}

# %% [markdown]
# ## The data: seen classes for training, unseen classes for testing
# The spec splits the 24 structures into 14 *seen* classes (training episodes), 8 *unseen* classes (test episodes
# only) and 2 *validation* classes (only for choices made from data), by a rule fixed before any run
# (`cryonb.structures.cosnet_split`: a seeded permutation of the structures outside the CSSL set). A test episode never
# contains a class the network was trained on. One pair to watch: 1s3x (unseen) and 3gl1 (seen) are both Hsp70 ATPase
# domains; the network has seen 3gl1's fold, so an unseen class that looks like a seen one may be easier than the rest.

# %%
t0 = time.perf_counter()
datasets = cosnet_experiment.datasets(run.spec)
snrs = sorted(datasets, reverse=True)
timings["data"] = time.perf_counter() - t0
ds0 = datasets[snrs[0]]
pools = cosnet_experiment.class_pools(ds0)
labels, unseen_pool, seen_train = pools.labels, pools.unseen, pools.seen_train
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
fig.suptitle(f"a {ep.n_way}-way 1-shot episode from unseen classes (SNR {snr_label(snrs[0])})")
run.save_figure(fig, "episode")

# %% [markdown]
# ## The variants and their size
# COS-Net = shared volume encoder (three conv–ReLU–BN levels, 32³ → 8³) ± DuSE attention, ± a volume
# decoder whose mask output gates the features (decoder guidance), a two-layer feature encoder, and a
# match head on the L1 distance of two embeddings. Parameter counts at the widths of this profile:

# %%
params_table = pd.DataFrame(
    [{"variant": v, **VARIANTS[v], "parameters": count_parameters(COSNet(training.for_job(v, ev.train_n_ways[0]).model))} for v in variants]
)
run.save_table(params_table, "07_parameter_counts", formats=("csv", "md"))
params_table

# %% [markdown]
# ## Training on episodes (cached)
# Each step draws two 1-shot support sets over the same n seen classes; every cross pair is a
# match (same class) or not: BCE on the match logits + Dice on the decoder's masks. The paper states no
# optimiser; the paper profile uses Adam 1e-4, betas (0.5, 0.999), and the quick profile's learning rate and
# mask-loss weight were chosen on validation episodes (the next section; spec `cosnet.train`, `cosnet.loss`).
# After the last step BatchNorm's running statistics are recomputed exactly over the training pool, because
# batches of 2n volumes make them noisy (`cryonb.train.recalibrate_batchnorm`). Training runs in
# `cryonb.train.fit_many`, the loop every model here uses (several independent models at once, each exactly as
# if trained alone; AMP on a GPU; a resumable checkpoint every `cosnet.steps_per_epoch` steps); finished models
# are keyed by (training config with variant and n-way, data recipe, seed) and reused by notebooks 08, 09 and
# `python -m cryonb train cosnet`.
#
# *Match head.* The paper's head is one fully connected layer on |f_s − f_t|; its weights may take
# either sign, so on classes it never saw it can reward *distance* (we saw this on toy data: accuracy
# below chance). `cosnet: model: {match_head: monotone}` forces the weights ≤ 0 (a learned weighted L1 metric); the
# default is the paper's head. The baselines below include a plain Euclidean prototype on COS-Net's own
# embedding, which tells how much the learned head adds (the REPORT's "beyond the papers" table).
#
# *Decoder guidance.* The paper does not spell out how the decoder guides classification; here the
# predicted mask, pooled to 8³, gates the deepest features (× (0.5 + mask)) and the Dice loss trains it.

# %%
t0 = time.perf_counter()
ckpts = cosnet_experiment.ensure_models(run.spec, run.work_dir, run.device)
timings["train"] = time.perf_counter() - t0
train_rows = []
for (v, s, n, i), p in ckpts.items():
    _, meta = load_cosnet(p)
    log = pd.DataFrame(meta["log"])  # one row per fit epoch: mean loss over its steps
    train_rows.append({"variant": v, "snr": snr_label(s), "train_n_way": n, "seed": meta["seed"], "steps": int(log["step"].iloc[-1]), "first_loss": log["loss"].iloc[0],
                       "last_loss": log["loss"].iloc[-1], "train_s": meta["train_seconds"], "checkpoint": p.name})
train_table = pd.DataFrame(train_rows)
run.save_table(train_table, "07_training", formats=("csv", "md"))
train_table

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for (v, s, n, i), p in ckpts.items():
    log = pd.DataFrame(load_cosnet(p)[1]["log"])
    ax.plot(log["step"], log["loss"], marker=".", color=f"C{list(ev.variants).index(v) if v in ev.variants else 0}", alpha=0.7,
            label=f"{v} · SNR {snr_label(s)} · {n}-way" if i == 0 else None)
ax.set(xlabel="step", ylabel=f"loss (mean of each {training.steps_per_epoch} steps)", title="episode training")
ax.legend(fontsize=7)
run.save_figure(fig, "training_loss")

# %% [markdown]
# ## How the training settings were chosen: validation episodes, never a test class
# Learning rate, loss weights and the match head change what COS-Net learns, so they must be chosen on data the
# final scores never see. `cosnet.selection` lists the candidates; each trains the main variant at one SNR and is
# scored on episodes drawn from the *validation* pool only: the seen classes' held-out volumes (and validation-only
# classes where the data set has them). `cryonb.experiments.cosnet.selection_rows` refuses any row of a test
# class, so this choice cannot look at the unseen classes (`tests/test_selection.py` proves it). The rule, fixed
# before the run (`cosnet_experiment.selection_score`), adds validation accuracy and validation Dice: COS-Net does
# both jobs, and a mask-loss weight moves Dice far more than accuracy. The spec's own settings should be the winner;
# the cell says whether they are.

# %%
if cos.selection is not None:
    t0 = time.perf_counter()
    selection = cosnet_experiment.select_training(run.spec, run.work_dir, run.device)
    timings["selection"] = time.perf_counter() - t0
    run.save_table(selection, "07_selection", formats=("csv", "md"))
    winner, own = selection[selection.chosen].iloc[0], selection[selection.spec]
    print(f"validation winner: {winner.drop(['val_accuracy', 'ci_low', 'ci_high', 'val_dice', 'score', 'spec', 'chosen', 'checkpoint']).to_dict()} "
          f"(accuracy {winner.val_accuracy:.3f} [{winner.ci_low:.3f}, {winner.ci_high:.3f}], Dice {winner.val_dice:.3f}, score {winner.score:.3f}); "
          + ("the spec's settings are the winner" if bool(winner.spec) else
             f"NOTE: the spec's settings score {own.score.iloc[0]:.3f} and are not the winner: update params/{profile}.yaml"
             if len(own) else "NOTE: the spec's settings are not among the candidates"))
    display_selection = selection.drop(columns=["checkpoint"]).round(3)
else:
    display_selection = "no selection grid in this profile: its settings are the paper's"
display_selection

# %% [markdown]
# ## Test episodes: accuracy with 95 % intervals over the independent units
# Every model is scored on the *same* seeded episodes (paired comparison). Embeddings of the test pool
# are computed once per model; an episode then costs one tiny matrix product, so ≥ 1,000 episodes are cheap.
# But episodes are not independent: a thousand episodes reuse the same few hundred volumes of a handful of
# classes, and each trained model is one draw of the training's randomness. So each volume gets one score per
# model (the fraction of its episodes as the query answered correctly), and the interval resamples trained
# models (seeds), classes and volumes within classes (`cryonb.verdicts.crossed_bootstrap`). A Wilson interval
# over episodes (in `07_accuracy_seeds.csv`, per model) would be far narrower, and wrong.

# %%
t0 = time.perf_counter()
evaluation = cosnet_experiment.evaluate(run.spec, ckpts, datasets, run.device)
acc, preds = evaluation.accuracy, evaluation.episodes
timings["evaluate"] = time.perf_counter() - t0
run.save_table(acc, "07_accuracy_all", formats=("csv",))
run.save_table(evaluation.per_model, "07_accuracy_seeds", formats=("csv",))
run.save_table(evaluation.query_scores, "07_query_scores", formats=("csv",))
acc.groupby("method").accuracy.describe()[["count", "mean", "min", "max"]].round(3)

# %% [markdown]
# ### The paper's Table 1 layout (1-shot)
# Rows: variants; columns: SNR × n-way; cells: accuracy [95 % CI]. Empty cells were not trained in this profile.

# %%
one = acc[acc.k_shot == 1].copy()
one["cell"] = one.apply(lambda r: f"{r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", axis=1)
one["column"] = one.apply(lambda r: f"SNR {r.snr} · {r.n_way}-way", axis=1)
order = [f"SNR {snr_label(s)} · {w}-way" for s in snrs for w in n_ways]
table1 = one.pivot_table(index="method", columns="column", values="cell", aggfunc="first").reindex(columns=order)
table1 = table1.reindex([m for m in [*variants, "prototype on voxels", "prototype on random RB3D features", f"prototype on {main_variant} embedding"] if m in table1.index]).reset_index()
run.save_table(table1, "07_table1_accuracy", formats=("csv", "md"))
table1

# %%
fig, axes = plt.subplots(1, len(snrs), figsize=(4.2 * len(snrs), 3.6), sharey=True, squeeze=False)
for ax, s in zip(axes[0], map(snr_label, snrs)):
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
s_conf = 1000.0 if 1000.0 in ev.main_snrs else ev.main_snrs[0]
w_conf = max(n_ways)
eps, pred = preds[(main_variant, s_conf, w_conf, 1, 0)]  # the first seed's model
true_c = np.array([e.classes[e.label] for e in eps])
pred_c = np.array([e.classes[p] for e, p in zip(eps, pred)])
ucls = sorted(np.unique(labels[unseen_pool]))
conf = pd.crosstab(pd.Series([names[c] for c in true_c], name="true"), pd.Series([names[c] for c in pred_c], name="predicted"), normalize="index")
conf = conf.reindex(index=[names[c] for c in ucls], columns=[names[c] for c in ucls]).fillna(0)
fig, ax = plt.subplots(figsize=(4.8, 4))
im = ax.imshow(conf.to_numpy(), cmap="viridis", vmin=0, vmax=1)
ax.set(xticks=range(len(ucls)), yticks=range(len(ucls)), xticklabels=conf.columns, yticklabels=conf.index, xlabel="predicted", ylabel="true", title=f"{main_variant}, SNR {snr_label(s_conf)}, {w_conf}-way 1-shot")
plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
fig.colorbar(im, ax=ax, fraction=0.046)
run.save_figure(fig, "confusion_unseen")

# %% [markdown]
# ## Checks on the key numbers
# Accuracy must beat chance by a clear margin at the least noisy SNR in 2-way (the smoke profile only
# checks that the numbers are valid: its model is too small and too short to learn).

# %%
assert (evaluation.per_model.n_episodes == ev.n_episodes).all() and (acc.n_seeds[acc.train_n_way > 0] == ev.seeds).all()
assert acc.accuracy.between(0, 1).all() and (acc.ci_low <= acc.accuracy + 1e-12).all() and (acc.accuracy <= acc.ci_high + 1e-12).all()
best = acc[(acc.method == main_variant) & (acc.snr == snr_label(snrs[0])) & (acc.n_way == min(n_ways)) & (acc.k_shot == 1)].accuracy.iloc[0]
if best < 1 / min(n_ways) + 0.1:  # a result to report, not an error: the REPORT judges the claims
    print(f"NOTE: {main_variant} {min(n_ways)}-way accuracy {best:.3f} is near chance ({1 / min(n_ways):.2f}) at this profile's scale")
timing_table = pd.DataFrame([{"step": k, "seconds": round(v, 1)} for k, v in timings.items()])
run.save_table(timing_table, "07_timings", formats=("csv", "md"))
print(f"{main_variant} at SNR {snr_label(snrs[0])}, {min(n_ways)}-way 1-shot: {best:.3f}")
timing_table

# %% [markdown]
# ## Try it yourself
# In a profile of your own (`cp params/quick.yaml params/try.yaml`; `python -m cryonb run --profile try --only 07`):
# 1. Set `cosnet: evaluation: n_ways: [2, 3, 4, 5]` and predict the accuracy at 5-way before running: does it
#    fall like 1/n (chance) or more slowly? What does the gap to chance tell you about the embedding?
# 2. Set `cosnet: evaluation: train_n_ways: [2, 5]` (one model per scheme, as the paper did) and compare the
#    5-way accuracy of the 5-way-trained model with the 2-way-trained one's. Which do you expect to win, and why?
# 3. Set `cosnet: evaluation: k_shots: [1, 5]`: how much of the SNR 0.5 loss do five shots recover for COS-Net
#    and for the voxel prototype baseline?
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: the edit; this run's accuracy against chance 1/n for each n-way it evaluated. "Normalised" rescales
# chance to 0 and perfect to 1: if it stays flat as n grows, the embedding separates classes, and only chance fell.
from cryonb.nb import try_profile

try_profile(run, {"cosnet": {"evaluation": {"n_ways": [2, 3, 4, 5]}}}, only="07")
curve = acc[(acc.method == main_variant) & (acc.k_shot == 1)].groupby(["snr", "n_way"]).accuracy.mean().reset_index()
curve["chance"] = 1 / curve.n_way
curve["normalised"] = (curve.accuracy - curve.chance) / (1 - curve.chance)
curve.round(3)
# %% tags=["solution", "hide-cell"]
# Solution 2: the edit; one model per training scheme. A model trained on 5-way episodes has practised telling five
# classes apart at once, so it usually wins at 5-way; the 2-way model can still win if 2-way training is easier to fit.
from cryonb.nb import try_profile

try_profile(run, {"cosnet": {"evaluation": {"train_n_ways": [2, 5]}}}, only="07")
print(f"this run trains n-way {list(ev.train_n_ways)}; its 1-shot accuracy at {max(n_ways)}-way:",
      acc[(acc.method == main_variant) & (acc.k_shot == 1) & (acc.n_way == max(n_ways))][["snr", "accuracy"]].round(3).to_dict("records"))
# %% tags=["solution", "hide-cell"]
# Solution 3: the edit; more shots average the noise of the support: the gain is largest where the support is noisiest.
from cryonb.nb import try_profile

try_profile(run, {"cosnet": {"evaluation": {"k_shots": sorted({*k_shots, 1, 5})}}}, only="07")
shots = acc[acc.method.isin([main_variant, "prototype on voxels"])].pivot_table(index=["method", "snr", "n_way"], columns="k_shot", values="accuracy")
print(shots.round(3).to_string() if shots.shape[1] > 1 else f"this profile evaluates k_shots {k_shots} only: run the edit to see")

# %% [markdown]
# ## Further reading
# - Zhou et al., *One-shot learning with attention-guided segmentation in cryo-electron tomography*
#   (COS-Net), Front. Mol. Biosci. 2021 — `../shared/papers/001_*`.
# - Koch, Zemel & Salakhutdinov, *Siamese neural networks for one-shot image recognition*, 2015.
# - Snell, Swersky & Zemel, *Prototypical networks for few-shot learning*, NeurIPS 2017.
# - Roy, Navab & Wachinger, *Concurrent spatial and channel squeeze & excitation*, MICCAI 2018 (scSE/csSE).
# - Notebook 08 continues with the masks and the 3-D dense CRF.
