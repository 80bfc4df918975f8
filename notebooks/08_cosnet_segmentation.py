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
# # 08 · COS-Net segmentation of unseen classes, refined by a 3-D dense CRF
#
# **What you will do:** take the COS-Net models trained in notebook 07 (reused from the cache, trained
# here if absent), segment subtomograms of the *unseen* classes with the volume decoder, refine each
# mask with a fully connected 3-D CRF, and measure the Dice coefficient per class before and after the
# CRF at SNR ∞, 1000 and 0.5 (the layout of the paper's Tables 2–3).
#
# **What you will learn:** what the decoder's "attention" mask looks like on a class it never saw;
# how a dense CRF trades the network's belief (unary) against smoothness and intensity edges
# (pairwise); why the CRF's kernel parameters are chosen on *seen-class validation* volumes, and why
# parameters that wipe the mask on noisy data must be rejected.
#
# **What you need:** the simulated data set and, ideally, notebook 07 run first with the same
# training parameters (the checkpoints are keyed by their content and shared).
#
# **Run time:** smoke ≤ 40 s; quick < 1 min on 2 CPU cores after notebook 07 (measured 38 s) (plus training time
# when run alone); paper ≈ 15 min on one GPU.
#
# **What the quick profile can and cannot show.** Its networks are narrow and briefly trained (see
# notebook 07), it segments `n_seg_per_class` test volumes per unseen class and sweeps a small CRF
# grid; one model (trained 5-way) stands for every n-way, so the 2/4/6-way columns of the paper appear
# only in the paper profile (`train_n_ways = [2, 4, 6]`). The before/after-CRF comparison and the
# per-class spread are real; absolute Dice values are below the paper's.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
seed = 0
n_per_class = 40  # must match notebook 07 to reuse its data and checkpoints
seg_snrs = ["inf", "1000", "0.5"]
seg_models = [["DuSE-SCNN+decoder", "inf"], ["DuSE-SCNN+decoder", "1000"], ["DuSE-SCNN+decoder", "0.5"], ["SCNN+decoder", "1000"]]
train_n_ways = [2]
train_steps = 200  # the training settings below must match notebook 07 for the cache to hit
base_channels = 4
feature_dim = 128
feature_pool = 2
w_dice = 1.0
w_mask_bce = 0.0  # voxel-wise BCE on the masks, not in the paper (see cryonb.oneshot.TrainEpisodesConfig)
lr = 1e-4  # Adam, the paper's
betas = [0.5, 0.999]  # the paper's
match_head = "linear"
n_seg_per_class = 8  # unseen test volumes segmented per class
n_val = 8  # seen-class validation volumes for choosing the CRF parameters
crf_w_bilateral = [0.0, 0.003, 0.01]
crf_w_spatial = [0.0, 0.15]
crf_sigma_pos_vox = 3.0
crf_sigma_int = 1.0
crf_sigma_smooth_vox = 1.0
crf_n_iter = 5

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import cryonb
import cryonb.nb
from cryonb.crf import CRFParams, dense_crf, dice, probs_to_unary, select_crf_params, sweep_crf_params
from cryonb.oneshot import TrainEpisodesConfig, embed, ensure_cosnet, load_cosnet
from cryonb.simulate import cosnet_recipe, ensure_dataset

run = cryonb.nb.start("08_cosnet_segmentation", profile, seed, results_dir, work_dir)
timings: dict[str, float] = {}

# %% [markdown]
# ## Data and models
# The segmentation is scored on unseen-class test volumes; the CRF is tuned on seen-class validation
# volumes, so nothing about the unseen classes leaks into any choice.

# %%
t0 = time.perf_counter()
snrs = sorted({*seg_snrs, *[s for _, s in seg_models]}, key=lambda s: -float(s))
recipes = {s: cosnet_recipe(snr=float(s), n_per_class=n_per_class, seed=seed) for s in snrs}
datasets = {s: ensure_dataset(r) for s, r in recipes.items()}
ds0 = datasets[snrs[0]]
labels = ds0.meta["class_id"].to_numpy()
names = ds0.meta.groupby("class_id")["pdb_id"].first()
rng = np.random.default_rng(seed)
unseen = np.asarray(ds0.indices(split=None, class_split="unseen"))
seg_rows = np.sort(np.concatenate([rng.choice(unseen[labels[unseen] == c], size=min(n_seg_per_class, int((labels[unseen] == c).sum())), replace=False) for c in np.unique(labels[unseen])]))
val_pool = np.asarray(ds0.indices(split="val", class_split="seen"))
val_rows = np.sort(rng.choice(val_pool, size=min(n_val, len(val_pool)), replace=False))
timings["data"] = time.perf_counter() - t0
t0 = time.perf_counter()
cfg_kw = dict(base_channels=base_channels, feature_dim=feature_dim, feature_pool=feature_pool, w_dice=w_dice, match_head=match_head, seed=seed, steps=train_steps,
              lr=lr, betas=tuple(betas), w_mask_bce=w_mask_bce)
ckpts = {(v, s, n): ensure_cosnet(v, recipes[s], TrainEpisodesConfig(n_way=n, **cfg_kw), run.work_dir, run.device, dataset=datasets[s]) for v, s in seg_models for n in train_n_ways}
timings["train (0 when cached by 07)"] = time.perf_counter() - t0
print(f"{len(seg_rows)} unseen test volumes of {len(np.unique(labels[seg_rows]))} classes; {len(val_rows)} seen validation volumes; {len(ckpts)} models")

# %%
t0 = time.perf_counter()
probs, val_probs = {}, {}
for (v, s, n), p in ckpts.items():
    net, _ = load_cosnet(p, run.device)
    probs[(v, s, n)] = embed(net, datasets[s].volumes, seg_rows, device=run.device)[1]
    val_probs[(v, s, n)] = embed(net, datasets[s].volumes, val_rows, device=run.device)[1]
timings["segment"] = time.perf_counter() - t0


def _t(ds, rows):  # (M, 32, 32, 32) float tensor of rows of a memmap
    return torch.from_numpy(np.asarray(ds[rows], dtype=np.float32))


# %% [markdown]
# ## Choosing the CRF parameters on validation volumes
# For each SNR, every (w_bilateral, w_spatial) pair of the grid refines the main model's masks of the
# seen-class validation volumes. A pair is **rejected** when it removes more than 80 % of the network's
# foreground on any volume (on noisy data a strong smoothness term can erase the molecule and still look
# "smooth"); among the rest, the highest validation Dice wins. The widths σ are fixed (see the parameters).

# %%
t0 = time.perf_counter()
grid = [CRFParams(w_bilateral=wb, w_spatial=ws, sigma_pos_vox=crf_sigma_pos_vox, sigma_int=crf_sigma_int, sigma_smooth_vox=crf_sigma_smooth_vox, n_iter=crf_n_iter) for wb in crf_w_bilateral for ws in crf_w_spatial]
sweeps, chosen = [], {}
for (v, s, n), vp in val_probs.items():
    if (v, n) != (seg_models[0][0], train_n_ways[0]):
        continue  # parameters are chosen once per SNR, with the main model
    rows = sweep_crf_params(vp[:, None], _t(datasets[s].volumes, val_rows)[:, None], _t(datasets[s].masks, val_rows), grid)
    sweeps += [{"snr": s, **r} for r in rows]
    chosen[s] = select_crf_params(rows)
sweep = pd.DataFrame(sweeps)
for s in snrs:  # an SNR without a main model borrows the nearest one's parameters
    chosen.setdefault(s, chosen[min(chosen, key=lambda c: abs(np.log10(float(c) if float(c) < np.inf else 1e6) - np.log10(float(s) if float(s) < np.inf else 1e6)))])
timings["crf sweep"] = time.perf_counter() - t0
chosen_table = pd.DataFrame([{"snr": s, **p.as_dict(), "val_dice": sweep[(sweep.snr == s) & (sweep.w_bilateral == p.w_bilateral) & (sweep.w_spatial == p.w_spatial)].dice.max() if s in set(sweep.snr) else np.nan} for s, p in chosen.items()])
run.save_table(sweep, "08_crf_sweep", formats=("csv",))
run.save_table(chosen_table, "08_crf_chosen", formats=("csv", "md"))
chosen_table

# %%
fig, axes = plt.subplots(1, sweep.snr.nunique(), figsize=(4.2 * sweep.snr.nunique(), 3.5), sharey=True, squeeze=False)
for ax, (s, g) in zip(axes[0], sweep.groupby("snr", sort=False)):
    for wb, gg in g.groupby("w_bilateral"):
        ax.plot(gg.w_spatial, gg.dice, marker="o", label=f"w_bilateral={wb}")
        bad = gg[gg.rejected]
        ax.scatter(bad.w_spatial, bad.dice, marker="x", s=80, c="red", zorder=3)
    ax.set(title=f"SNR {s} (× = rejected: wipes the mask)", xlabel="w_spatial")
axes[0, 0].set_ylabel("validation Dice (seen classes)")
axes[0, -1].legend(fontsize=7)
run.save_figure(fig, "crf_sweep")

# %% [markdown]
# ## Dice per unseen class, before and after the CRF
# The paper's Tables 2 (SNR 1000) and 3 (SNR ∞) layout, plus SNR 0.5: one row per unseen class, one
# column per model; each cell is "Dice of the thresholded decoder mask → Dice after the CRF".

# %%
t0 = time.perf_counter()
n_crf = 0
recs = []
refined = {}
for (v, s, n), pr in probs.items():
    img = _t(datasets[s].volumes, seg_rows)[:, None]
    gt = _t(datasets[s].masks, seg_rows)
    q = torch.cat([dense_crf(probs_to_unary(pr[i : i + 4, None]), img[i : i + 4], chosen[s]) for i in range(0, len(pr), 4)])
    refined[(v, s, n)] = q.argmax(1)
    n_crf += len(pr)
    before = dice((pr > 0.5).float(), gt).numpy()
    after = dice(refined[(v, s, n)].float(), gt).numpy()
    recs += [{"model": v, "snr": s, "train_n_way": n, "row": int(r), "class": names[labels[r]], "dice_before": b, "dice_after": a} for r, b, a in zip(seg_rows, before, after)]
timings["crf apply"] = time.perf_counter() - t0
dice_df = pd.DataFrame(recs)
run.save_table(dice_df, "08_dice_per_volume", formats=("csv",))
per_class = dice_df.groupby(["snr", "model", "train_n_way", "class"])[["dice_before", "dice_after"]].mean().reset_index()
per_class["cell"] = per_class.apply(lambda r: f"{r.dice_before:.3f} → {r.dice_after:.3f}", axis=1)
per_class["column"] = per_class.apply(lambda r: f"{r.model} · {r.train_n_way}-way", axis=1)
for s in snrs:
    t = per_class[per_class.snr == s].pivot(index="class", columns="column", values="cell").reset_index()
    run.save_table(t, f"08_dice_table_snr_{s}", formats=("csv", "md"))
    print(f"SNR {s}")
    print(t.to_markdown(index=False))
summary = dice_df.groupby(["snr", "model", "train_n_way"])[["dice_before", "dice_after"]].agg(["mean", "min"]).round(3)
summary.columns = [f"{a}_{b}" for a, b in summary.columns]
# the paper's Tables 2-3 give one mean Dice per class: the claim "every class > 0.92" is about the worst class mean
worst_class = per_class.groupby(["snr", "model", "train_n_way"])[["dice_before", "dice_after"]].min().round(3)
worst_class.columns = [f"{c}_worst_class" for c in worst_class.columns]
summary = summary.join(worst_class).reset_index()
run.save_table(summary, "08_dice_summary", formats=("csv", "md"))
print(f"CRF: {1e3 * timings['crf apply'] / max(n_crf, 1):.0f} ms per 32³ volume on {run.device}")
summary

# %% [markdown]
# ## Gallery: ground truth, COS-Net, COS-Net + CRF
# Central slices of one test volume per unseen class (main model, SNR 1000 when available). Paper
# profile: one column group per trained n-way (2-, 4-, 6-way).

# %%
s_g = "1000" if any(s == "1000" for _, s in seg_models) else seg_models[0][1]
keys = [k for k in probs if k[0] == seg_models[0][0] and k[1] == s_g]
first = [int(np.flatnonzero(labels[seg_rows] == c)[0]) for c in np.unique(labels[seg_rows])]
cols = 2 + 2 * len(keys)
fig, axes = plt.subplots(len(first), cols, figsize=(1.6 * cols, 1.6 * len(first)), squeeze=False)
mid = ds0.volumes.shape[1] // 2
for r, i in enumerate(first):
    row = seg_rows[i]
    panels = [("subtomogram", datasets[s_g].volumes[row][mid], "gray"), ("ground truth", datasets[s_g].masks[row][mid], "viridis")]
    for k in keys:
        panels += [(f"COS-Net {k[2]}-way", probs[k][i, mid].numpy(), "viridis"), (f"+ CRF {k[2]}-way", refined[k][i, mid].numpy(), "viridis")]
    for c, (title, im, cmap) in enumerate(panels):
        axes[r, c].imshow(im, cmap=cmap, vmin=None if cmap == "gray" else 0, vmax=None if cmap == "gray" else 1)
        axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        if r == 0:
            axes[r, c].set_title(title, fontsize=8)
    axes[r, 0].set_ylabel(names[labels[row]], fontsize=8)
fig.suptitle(f"{seg_models[0][0]}, SNR {s_g}: central z slice")
run.save_figure(fig, "gallery")

# %% [markdown]
# ## Checks on the key numbers

# %%
assert dice_df[["dice_before", "dice_after"]].stack().between(0, 1).all()
assert not chosen_table.empty and all(not sweep[(sweep.snr == s)].rejected.all() for s in sweep.snr.unique())
# the chosen CRF never wipes the unseen-class masks either
kept = {k: (refined[k].flatten(1).sum(1).float() / (probs[k] > 0.5).flatten(1).sum(1).clamp(min=1)).min().item() for k in probs}
print("smallest kept fraction of the network foreground after the CRF:", {f"{k[0]} {k[1]}": round(v, 2) for k, v in kept.items()})
if profile != "smoke":
    main = summary[(summary.model == seg_models[0][0])]
    fill = float(np.asarray(ds0.masks[seg_rows], dtype=np.float32).mean())
    whole_box = 2 * fill / (1 + fill)  # Dice of a mask that marks every voxel
    floor = 0.3 if profile == "paper" else 3 * whole_box
    print(f"molecules fill {fill:.2%} of a box; whole-box Dice {whole_box:.3f}; required here > {floor:.3f}")
    assert (main.dice_before_mean > floor).all(), f"decoder masks (Dice ≥ {main.dice_before_mean.min():.3f}) do not beat {floor:.3f}"
    assert (main.dice_after_mean >= main.dice_before_mean - 0.05).all(), "the chosen CRF made the masks clearly worse"
timing_table = pd.DataFrame([{"step": k, "seconds": round(v, 1)} for k, v in timings.items()])
run.save_table(timing_table, "08_timings", formats=("csv", "md"))
timing_table

# %% [markdown]
# ## Try it yourself
# 1. Set `crf_w_spatial = [0.0, 1.0, 3.0]` and predict what happens at SNR 0.5 before running: which
#    pairs will the sweep reject, and why does a larger smoothness weight remove the molecule rather
#    than just its noisy edges?
# 2. Set `crf_sigma_int` to 0.3 (sharper intensity edges): does the bilateral term help more at SNR ∞ or
#    at SNR 0.5?
# 3. Run notebook 07 and this one with `train_n_ways = [2, 6]`: do masks from the 6-way model differ
#    from the 2-way model's? (The paper reports them as nearly identical.)
#
# ## Further reading
# - Krähenbühl & Koltun, *Efficient inference in fully connected CRFs with Gaussian edge potentials*, NeurIPS 2011.
# - Paris & Durand, *A fast approximation of the bilateral filter using a signal processing approach*, ECCV 2006 (the bilateral grid used here).
# - Kamnitsas et al., *Efficient multi-scale 3D CNN with fully connected CRF for brain lesion segmentation*, MedIA 2017 (the 3-D dense CRF behind SimpleCRF).
# - `benchmarks/bench_crf.py`: speed and agreement of `cryonb.crf` against SimpleCRF.
