"""cryonb.stats against scipy / statsmodels and published textbook values."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from cryonb import CryoNBError
from cryonb.stats import cohens_d, compare_inits, hedges_g, holm, paired_dz, paired_t, runs_needed, student_t, welch_t

# Student (1908) / Cushny & Peebles: extra hours of sleep under two drugs, same 10 patients
# (R's `sleep` data set). Published: paired t = -4.0621, df = 9, p = 0.002833, 95 % CI (-2.4599, -0.7001);
# Welch t = -1.8608, df = 17.776, p = 0.07939, CI (-3.3655, 0.2055); Student t = -1.8608, df = 18, p = 0.07919.
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_matches_students_sleep_data() -> None:
    r = paired_t(DRUG1, DRUG2)
    assert r.statistic == pytest.approx(-4.0621, abs=1e-4)
    assert r.df == 9
    assert r.pvalue == pytest.approx(0.002833, abs=2e-6)
    assert (r.ci_low, r.ci_high) == pytest.approx((-2.4599, -0.7001), abs=1e-4)
    assert r.mean_diff == pytest.approx(-1.58)


def test_welch_and_student_match_published_sleep_values() -> None:
    w = welch_t(DRUG1, DRUG2)
    assert (w.statistic, w.df, w.pvalue) == pytest.approx((-1.8608, 17.776, 0.07939), abs=1e-3)
    assert (w.ci_low, w.ci_high) == pytest.approx((-3.3655, 0.2055), abs=1e-4)
    s = student_t(DRUG1, DRUG2)
    assert (s.statistic, s.df, s.pvalue) == pytest.approx((-1.8608, 18, 0.07919), abs=1e-4)


def test_tests_agree_with_scipy_on_random_samples() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.6, 0.05, 5), rng.normal(0.55, 0.08, 5)
    assert student_t(a, b).pvalue == pytest.approx(ss.ttest_ind(a, b).pvalue, rel=1e-12)
    assert welch_t(a, b).pvalue == pytest.approx(ss.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert paired_t(a, b).pvalue == pytest.approx(ss.ttest_rel(a, b).pvalue, rel=1e-12)


def test_effect_sizes_on_sleep_data() -> None:
    # pooled SD = sqrt((s1² + s2²)/2) for equal n; d = 1.58 / 1.8986 = 0.8322
    s1, s2 = np.std(DRUG1, ddof=1), np.std(DRUG2, ddof=1)
    d = cohens_d(DRUG2, DRUG1)
    assert d.value == pytest.approx(1.58 / math.sqrt((s1**2 + s2**2) / 2), rel=1e-12)
    assert d.value == pytest.approx(0.8322, abs=1e-4)
    # Hedges' J(18) = Γ(9) / (√9 Γ(8.5)) exactly, ≈ 1 - 3/(4·18 - 1) (Hedges 1981)
    g = hedges_g(DRUG2, DRUG1)
    assert g.value / d.value == pytest.approx(math.gamma(9) / (3 * math.gamma(8.5)), rel=1e-12)
    assert g.value / d.value == pytest.approx(1 - 3 / (4 * 18 - 1), abs=2e-4)
    dz = paired_dz(DRUG2, DRUG1)
    assert dz.value == pytest.approx(1.58 / np.std(np.subtract(DRUG2, DRUG1), ddof=1), rel=1e-12)
    assert dz.value == pytest.approx(4.0621 / math.sqrt(10), abs=1e-4)


def test_effect_size_ci_inverts_the_noncentral_t() -> None:
    d = cohens_d(DRUG2, DRUG1)
    scale = math.sqrt(2 / 10)
    t_obs = d.value / scale
    # at the bounds the observed t sits at the 97.5 % and 2.5 % points of the noncentral t
    assert ss.nct.cdf(t_obs, 18, d.ci_low / scale) == pytest.approx(0.975, abs=1e-6)
    assert ss.nct.cdf(t_obs, 18, d.ci_high / scale) == pytest.approx(0.025, abs=1e-6)
    # the d CI contains 0 exactly when the Student test is not significant (p = 0.079)
    assert d.ci_low < 0 < d.ci_high
    dz = paired_dz(DRUG2, DRUG1)
    assert 0 < dz.ci_low < dz.value < dz.ci_high  # paired p = 0.0028 → CI excludes 0


def test_holm_matches_hand_computation_and_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.04·1, 0.06) = 0.06
    reject, adj = holm(p)
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]
    assert adj == pytest.approx(multipletests(p, method="holm")[1])


def test_holm_leaves_nan_out_of_the_family() -> None:
    reject, adj = holm([0.01, np.nan, 0.04])
    assert np.isnan(adj[1]) and not reject[1]
    assert adj[[0, 2]] == pytest.approx([0.02, 0.04])
    with pytest.raises(CryoNBError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_runs_needed_matches_cohens_tables_and_statsmodels() -> None:
    # Cohen (1988) Table 2.4.1, two-tailed α = 0.05, power 0.80: d = 0.5 → 64, d = 0.8 → 26 per group
    assert runs_needed(0.5) == 64
    assert runs_needed(0.8) == 26
    assert runs_needed(-0.8) == 26
    assert runs_needed(0.3) == math.ceil(TTestIndPower().solve_power(effect_size=0.3, alpha=0.05, power=0.8))
    assert runs_needed(0.5, paired=True) == math.ceil(TTestPower().solve_power(effect_size=0.5, alpha=0.05, power=0.8)) == 34
    assert runs_needed(0.0) == math.inf
    assert math.isnan(runs_needed(float("nan")))


def test_errors_name_the_problem() -> None:
    with pytest.raises(CryoNBError, match="at least 2"):
        student_t([1.0], [1.0, 2.0])
    with pytest.raises(CryoNBError, match="same length"):
        paired_t([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(CryoNBError, match="NaN"):
        welch_t([1.0, np.nan], [1.0, 2.0])


def _long_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for frac in (0.25, 1.0):
        subset_effect = rng.normal(0, 0.05, 5)  # shared by all inits in run r: what pairing removes
        for init, shift in (("random", 0.0), ("moco", 0.03), ("simclr", 0.0)):
            for r in range(5):
                rows.append({"snr": 0.1, "init": init, "fraction": frac, "run": r, "seed": r, "test_acc": 0.5 + shift + subset_effect[r] + rng.normal(0, 0.005)})
    return pd.DataFrame(rows)


def test_compare_inits_table() -> None:
    t = _long_table()
    out = compare_inits(t)
    assert len(out) == 4 and set(out["init"]) == {"moco", "simclr"}
    row = out[(out["init"] == "moco") & (out["fraction"] == 0.25)].iloc[0]
    a = t[(t["init"] == "moco") & (t["fraction"] == 0.25)].sort_values("run")["test_acc"].to_numpy()
    b = t[(t["init"] == "random") & (t["fraction"] == 0.25)].sort_values("run")["test_acc"].to_numpy()
    assert row["p_student"] == pytest.approx(ss.ttest_ind(a, b).pvalue)
    assert row["p_paired"] == pytest.approx(ss.ttest_rel(a, b).pvalue)
    assert row["diff"] == pytest.approx(a.mean() - b.mean())
    # the shared per-run subset effect makes pairing far more sensitive here
    assert row["p_paired"] < 0.01 < row["p_student"]
    assert out["p_paired_holm"].to_numpy() == pytest.approx(multipletests(out["p_paired"], method="holm")[1])
    assert row["runs_needed_paired"] < row["runs_needed"]


def test_compare_inits_checks_columns_and_baseline() -> None:
    t = _long_table()
    with pytest.raises(CryoNBError, match="lacks column"):
        compare_inits(t.drop(columns="run"))
    with pytest.raises(CryoNBError, match="baseline init 'scratch'"):
        compare_inits(t, baseline="scratch")


def test_proportion_ci_is_wilson() -> None:
    from cryonb.stats import proportion_ci

    # Wilson interval, written out: centre (p + z²/2n) / (1 + z²/n), half-width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)
    z, n, k = 1.959963984540054, 200, 31
    p = k / n
    den = 1 + z**2 / n
    centre, half = (p + z**2 / (2 * n)) / den, z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    assert proportion_ci(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert proportion_ci(0, 10)[0] == 0.0 and proportion_ci(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(CryoNBError, match="proportion of 11 in 10 trials"):
        proportion_ci(11, 10)
