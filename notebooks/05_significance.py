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
# # 05 · Is the gain significant? t-tests, effect sizes, Holm and power
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/cryonb/cryonb/blob/main/results/quick/05_significance.ipynb)
#
# **What you will do:** test each CSSL initialisation against random initialisation at every label fraction,
# with the paper's two-tailed Student t-test, the paired t-test (runs share seeds and labelled subsets) and
# Welch's test; attach effect sizes with 95 % confidence intervals, correct for the many comparisons (Holm)
# and ask how many runs would be needed to detect the observed effects.
#
# **What you will learn:** what the paper's "p = 0.046 with 5 runs" does and does not show; why the paired
# design fits this experiment; how fragile a single p-value just under 0.05 is.
#
# **What you need:** the fine-tuning runs of notebook 04 (reused from `runs/<profile>/finetune/`; if they are
# missing, the same `cryonb` function that notebook 04 calls runs them, from the same spec).
#
# **Run time (2 CPU cores):** smoke ≤ 40 s, quick ≤ 1 min once notebook 04 has run, paper < 1 min.
# With the quick profile's few runs the tests have little power: expect wide intervals and large
# "runs needed"; that is the lesson, not a failure.

# %% tags=["parameters"]
profile = "quick"
results_dir = "results/quick"
work_dir = "runs/quick"
spec = None  # the experiment spec; None reads params/<profile>.yaml (the runner passes it in)
alpha = 0.05
metric = "test_acc"

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

    globals().update(setup("05_significance"))

# %%
import numpy as np
import pandas as pd

import cryonb.nb
from cryonb.experiments import cssl as cssl_experiment
from cryonb.stats import compare_inits, paired_t, runs_needed, student_t, welch_t

run = cryonb.nb.start("05_significance", profile, results_dir, work_dir, spec)
seed = run.seed
runs, _ = cssl_experiment.run_sweep(run.spec, run.work_dir, run.device)  # notebook 04's sweep: reused, or run here
print(f"{len(runs)} fine-tuning runs of the spec's sweep ({cssl_experiment.sweep_folder(run.spec, run.work_dir).name})")
assert {"snr", "init", "fraction", "run", metric} <= set(runs.columns)

# %% [markdown]
# ## Every initialisation against random, at every SNR and label fraction
# `diff` is the mean accuracy gain over random initialisation; `p_student` is the paper's test, `p_paired`
# matches runs by their shared seed and labelled subset, `p_welch` drops the equal-variance assumption.
# `*_holm` columns are adjusted across the whole family of comparisons in this table. `hedges_g` and `d_z`
# are standardised effects with exact 95 % intervals; `runs_needed` is the number of runs *per
# initialisation* a new experiment would need to detect an effect this large with power 0.8 at α = 0.05.

# %%
comparison = compare_inits(runs, metric=metric, alpha=alpha)
show = ["snr", "fraction", "init", "n", "diff", "p_student", "p_paired", "p_welch", "p_paired_holm", "hedges_g", "g_ci_low", "g_ci_high", "d_z", "runs_needed", "runs_needed_paired"]
show = [c for c in show if c in comparison]
run.save_table(comparison, "05_comparisons", formats=("csv",))
run.save_table(comparison[show].round(4), "05_comparisons_summary", formats=("md", "tex"))
comparison[show].round(3)

# %%
assert len(comparison) == runs.groupby(["snr", "fraction"]).ngroups * (runs["init"].nunique() - 1)
assert comparison["p_student"].dropna().between(0, 1).all()
assert (comparison["p_paired_holm"].dropna() >= comparison.loc[comparison["p_paired_holm"].notna(), "p_paired"] - 1e-12).all()
n_sig = {t: int((comparison[f"p_{t}_holm"] < alpha).sum()) for t in ("student", "paired", "welch")}
print(f"comparisons significant after Holm at α = {alpha}: {n_sig} of {len(comparison)}")

# %% [markdown]
# ## The rule the REPORT uses, and its power
# The tests above treat every fine-tuning run as independent. They are not quite: runs that start from the same
# pre-trained encoder share its luck. `cryonb.verdicts` therefore averages the paired differences (CSSL − random,
# same run index) within each encoder cluster and tests the cluster means, and it controls the family-wise error
# over all settings with Holm. Before calling a claim false it asks whether this design could have seen the
# paper's own effect: d = 1.49, the effect a two-tailed Student test with 5 + 5 runs needs for p = 0.046.

# %%
from cryonb import verdicts

rule_rows = []
for init in [i for i in ("moco", "simclr", "swav") if i in set(runs["init"])]:
    for (snr, frac), g in runs.groupby(["snr", "fraction"]):
        a, b = g[g.init == init].set_index("run"), g[g.init == "random"].set_index("run")
        common = a.index.intersection(b.index)
        clusters = (a.loc[common, metric] - b.loc[common, metric]).groupby(a.loc[common, "encoder"]).mean()
        mean, t, p = verdicts.cluster_t(clusters.to_numpy()[None, :])
        per_cluster = len(common) // len(clusters)
        rule_rows.append({"init": init, "snr": snr, "fraction": frac, "clusters": len(clusters), "runs_per_cluster": per_cluster,
                          "gain": mean[0], "p_cluster": p[0],
                          "power_at_paper_effect": verdicts.power_positive(verdicts.paper_effect_d() / np.sqrt(2) * np.sqrt(per_cluster), len(clusters))})
rules_table = pd.DataFrame(rule_rows)
rules_table["p_holm"] = rules_table.groupby("init")["p_cluster"].transform(lambda p: verdicts.holm_reject(p.to_numpy(), alpha).astype(float))
rules_table = rules_table.rename(columns={"p_holm": "significant_after_holm"})
run.save_table(rules_table, "05_decision_rule", formats=("csv", "md"))
print(f"design: {int(rules_table.clusters.iloc[0])} encoder clusters of {int(rules_table.runs_per_cluster.iloc[0])} run(s); "
      f"power per setting at the paper's effect: {rules_table.power_at_paper_effect.iloc[0]:.2f} "
      f"(below {verdicts.MIN_POWER} the REPORT says 'not testable' rather than 'does not hold')")
rules_table.round(4)

# %% [markdown]
# ## The differences, with their uncertainty
# Each point is the mean accuracy difference of a CSSL initialisation over random (positive: pre-training
# helps); the bars are Hedges' g 95 % confidence intervals drawn on the effect-size axis. An interval
# that crosses zero is an effect these runs cannot tell from none.

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 + 0.35 * max(len(comparison), 2)), squeeze=False)
labels = [f"SNR {r.snr} · {r.fraction:.0%} · {r.init}" for r in comparison.itertuples()]
pos = np.arange(len(comparison))
axes[0][0].barh(pos, comparison["diff"], color="tab:blue")
axes[0][0].set_yticks(pos, labels, fontsize=7)
axes[0][0].axvline(0, color="k", lw=0.8)
axes[0][0].set_xlabel(f"mean {metric} difference vs random")
g = comparison["hedges_g"].fillna(0)
err = np.vstack([(g - comparison["g_ci_low"]).fillna(0), (comparison["g_ci_high"] - g).fillna(0)])
axes[0][1].errorbar(g, pos, xerr=err, fmt="o", color="tab:red", capsize=2)
axes[0][1].set_yticks(pos, [""] * len(pos))
axes[0][1].axvline(0, color="k", lw=0.8)
axes[0][1].set_xlabel("Hedges' g with 95 % CI")
fig.tight_layout()
run.save_figure(fig, "effect_sizes")
plt.show()

# %% [markdown]
# ## Which test fits this design?
# Run *r* of MoCo and run *r* of random initialisation are fine-tuned on the **same** labelled subset with
# the **same** seed for the classifier head and batch order. A lucky subset lifts both; the paired test
# removes that shared part and tests the within-pair difference. Student's test (the paper's) treats the
# two groups as independent: it is valid but wastes the pairing, and it also assumes equal variances,
# which Welch's test does not. If the pairing carries information, the paired p is the smaller one:

# %%
pairing = comparison[["snr", "fraction", "init", "p_student", "p_paired", "p_welch"]].copy()
if {"p_student", "p_paired"} <= set(comparison) and comparison["p_paired"].notna().any():
    pairing["paired_smaller"] = comparison["p_paired"] < comparison["p_student"]
    print(f"paired p < Student p in {int(pairing['paired_smaller'].sum())} of {len(pairing)} comparisons")
pairing.round(4)

# %% [markdown]
# ## What does "p = 0.046 with 5 runs" mean?
# In plain words: *if* MoCo pre-training made no difference at all, five runs of each would produce a
# difference in mean accuracy at least as large as the one observed in about 4.6 % of repeated
# experiments. It does **not** say that the probability that MoCo is no better is 4.6 %, nor that the
# gain is large or would replicate. Three things make it weak evidence on its own:
#
# 1. **It sits just under the line.** With 5 runs per group, a small change in one run moves p across 0.05.
#    Below we recompute the paper-style test on our own runs after dropping each run in turn.
# 2. **It is one of many comparisons.** The paper compares 3 methods × 4 fractions (× SNRs): with 12
#    independent tests at α = 0.05, the chance of at least one p < 0.05 under no effect at all is
#    1 − 0.95¹² ≈ 46 %. Holm's correction controls that; a lone 0.046 does not survive it.
# 3. **Power.** The paper does not report which comparison gave 0.046; with 5 runs, a Student test only
#    has 80 % power for effects of about d ≈ 2 (huge). A replication with 5 runs would often miss a real
#    but modest effect, and a significant result at low power tends to overstate the effect.

# %%
print(f"two-sided Student test, n = 5 per group: power 0.8 at α = 0.05 needs d ≥ ", end="")
d_grid = np.round(np.arange(0.5, 4.01, 0.05), 2)
print(next(d for d in d_grid if runs_needed(d, alpha) <= 5))
print(f"family-wise error with 12 independent tests at α = 0.05: {1 - 0.95 ** 12:.2f}")

# %% [markdown]
# **Leave-one-run-out.** How stable is the paper-style p-value of the largest gain in our table?

# %%
top = comparison.loc[comparison["diff"].idxmax()]
sel = lambda init: runs[(runs["init"] == init) & np.isclose(runs["snr"], top["snr"]) & np.isclose(runs["fraction"], top["fraction"])].sort_values("run")  # noqa: E731
a, b = sel(top["init"]), sel("random")
rows = []
for r in a["run"]:
    aa, bb = a[a["run"] != r][metric], b[b["run"] != r][metric]
    if len(aa) >= 2 and len(bb) >= 2:
        rows.append({"dropped_run": int(r), "p_student": student_t(aa, bb).pvalue, "p_paired": paired_t(aa, bb).pvalue, "p_welch": welch_t(aa, bb).pvalue})
loo = pd.DataFrame(rows)
run.save_table(loo, "05_leave_one_out", formats=("csv", "md"))
print(f"largest gain: {top['init']} at SNR {top['snr']:g}, {100 * top['fraction']:g} % labels: diff {top['diff']:+.3f}, Student p {top['p_student']:.3f}")
loo.round(4)

# %% [markdown]
# ## Try it yourself
# 1. Predict how `runs_needed` changes if you double the effect size (hint: n ∝ 1/d²); check with
#    `cryonb.stats.runs_needed(2 * d)`.
# 2. Rerun notebook 04 with `runs = 5` (only the new runs train). Do the intervals of `hedges_g` narrow as
#    √(3/5) predicts?
# 3. Shuffle the `run` column of the random-init rows (breaking the pairing) and recompute: which p-values
#    change, and which do not?
#
# *Answer keys*: the folded cells below, one per exercise (predict first, then open them).

# %% tags=["solution", "hide-cell"]
# Solution 1: n ∝ 1/d², so doubling the effect needs about a quarter of the runs.
d = float(comparison["hedges_g"].abs().replace(0, np.nan).dropna().median())
print(f"d = {d:.2f}: {runs_needed(d):.1f} runs per group; 2d: {runs_needed(2 * d):.1f} (ratio {runs_needed(d) / runs_needed(2 * d):.1f})")
# %% tags=["solution", "hide-cell"]
# Solution 2: an interval's width shrinks as 1/sqrt(n): from n runs to n_new it becomes sqrt(n / n_new) as wide.
from cryonb.nb import try_profile

n_now = run.spec.cssl.sweep.runs
n_new = 5 if n_now < 5 else 2 * n_now
try_profile(run, {"cssl": {"sweep": {"runs": n_new}}}, only="04 05")
width = (comparison["g_ci_high"] - comparison["g_ci_low"]).dropna()
print(f"mean width of the hedges_g intervals now (n = {n_now}): {width.mean():.2f}; predicted at n = {n_new}: {width.mean() * np.sqrt(n_now / n_new):.2f}")
# %% tags=["solution", "hide-cell"]
# Solution 3: shifting the run labels of random initialisation by one breaks the pairing: the paired test changes,
# Student's and Welch's (which ignore the pairing) do not.
shuffled = runs.copy()
for _, idx in shuffled[shuffled["init"] == "random"].groupby(["snr", "fraction"]).groups.items():
    shuffled.loc[idx, "run"] = np.roll(shuffled.loc[idx, "run"].to_numpy(), 1)  # a shift: no run keeps its partner
again = compare_inits(shuffled, metric=metric, alpha=alpha)
changed = {t: float((again[f"p_{t}"] - comparison[f"p_{t}"]).abs().max()) for t in ("student", "welch", "paired")}
print("largest change of each p-value after shuffling:", {k: round(v, 4) for k, v in changed.items()})

# %% [markdown]
# ## Further reading
# - Student 1908, *The probable error of a mean*, Biometrika 6:1–25 (the sleep data used in our tests).
# - Holm 1979, *A simple sequentially rejective multiple test procedure*, Scand. J. Statist. 6:65–70.
# - Wasserstein & Lazar 2016, *The ASA statement on p-values*, The American Statistician 70:129–133.
# - Bouthillier et al. 2021, *Accounting for variance in machine learning benchmarks* (MLSys).
