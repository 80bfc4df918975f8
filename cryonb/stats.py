"""Statistics for comparing fine-tuning runs: t-tests, effect sizes with CIs, Holm, power.

Public surface: :func:`student_t`, :func:`paired_t`, :func:`welch_t` (thin, checked wrappers over
scipy returning a :class:`TTest`), :func:`cohens_d`, :func:`hedges_g`, :func:`paired_dz`
(effect sizes with exact 95 % confidence intervals from the noncentral t distribution),
:func:`holm` (statsmodels ``multipletests``), :func:`runs_needed` (statsmodels power analysis),
:func:`proportion_ci` (Wilson interval of an accuracy, statsmodels) and
:func:`compare_inits`, which turns the long-format fine-tuning table into one row per
(SNR, label fraction, CSSL initialisation) comparison against random initialisation.

NOTE: the CSSL paper reports "two-tailed Student's t-test, p = 0.046"; every test here is two-sided.
Because run *r* of every initialisation shares its seed and its labelled subset, the paired test is the
design that matches the experiment; Student's and Welch's tests are reported for comparison.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from cryonb.errors import CryoNBError

__all__ = [
    "TTest",
    "EffectSize",
    "student_t",
    "paired_t",
    "welch_t",
    "cohens_d",
    "hedges_g",
    "paired_dz",
    "holm",
    "runs_needed",
    "compare_inits",
    "proportion_ci",
    "FINETUNE_COLUMNS",
]

#: Columns :func:`compare_inits` needs in the long-format fine-tuning table.
FINETUNE_COLUMNS = ("snr", "init", "fraction", "run", "test_acc")


@dataclass(frozen=True)
class TTest:
    """Result of one two-sided t-test of ``mean(a) - mean(b)``.

    statistic: t value; pvalue: two-sided p; df: degrees of freedom (fractional for Welch);
    mean_diff: mean(a) - mean(b) (mean of the differences when paired); ci_low / ci_high: its 95 % CI.
    """

    test: str
    statistic: float
    pvalue: float
    df: float
    mean_diff: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class EffectSize:
    """A standardised mean difference and its confidence interval (same sign convention as a - b)."""

    name: str
    value: float
    ci_low: float
    ci_high: float


def _sample(x: object, name: str, min_n: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size < min_n:
        raise CryoNBError(f"{name}: need at least {min_n} values, got {a.size}")
    if not np.all(np.isfinite(a)):
        raise CryoNBError(f"{name}: contains NaN or infinite values")
    return a


def _result(test: str, res: object, mean_diff: float, df: float, level: float = 0.95) -> TTest:
    ci = res.confidence_interval(confidence_level=level)  # type: ignore[attr-defined]
    return TTest(test, float(res.statistic), float(res.pvalue), float(df), float(mean_diff), float(ci.low), float(ci.high))  # type: ignore[attr-defined]


def student_t(a: object, b: object) -> TTest:
    """Two-sample, two-sided Student t-test assuming equal variances (the paper's test).

    a, b: (n_a,), (n_b,) samples, e.g. test accuracies of CSSL and random initialisation.
    """
    x, y = _sample(a, "a"), _sample(b, "b")
    with warnings.catch_warnings():
        # identical constant samples give 0/0: scipy warns and returns NaN, the honest answer here
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(x, y, equal_var=True)
        return _result("student", res, x.mean() - y.mean(), x.size + y.size - 2)


def welch_t(a: object, b: object) -> TTest:
    """Two-sample, two-sided Welch t-test (unequal variances, Welch–Satterthwaite df)."""
    x, y = _sample(a, "a"), _sample(b, "b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(x, y, equal_var=False)
        return _result("welch", res, x.mean() - y.mean(), float(res.df))


def paired_t(a: object, b: object) -> TTest:
    """Paired, two-sided t-test on ``a[i] - b[i]`` (runs matched by seed and labelled subset)."""
    x, y = _sample(a, "a"), _sample(b, "b")
    if x.size != y.size:
        raise CryoNBError(f"paired_t: a and b must have the same length, got {x.size} and {y.size}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(x, y)
        return _result("paired", res, float(np.mean(x - y)), x.size - 1)


def _nct_ci(t_obs: float, df: float, level: float) -> tuple[float, float]:
    """CI for the noncentrality parameter λ of a noncentral t with ``df`` given an observed t.

    Finds λ_lo, λ_hi with P(T ≤ t_obs | λ_lo) = 1 - α/2 and P(T ≤ t_obs | λ_hi) = α/2
    (Steiger & Fouladi 1997). Returns (nan, nan) for a non-finite t.
    """
    if not math.isfinite(t_obs):
        return float("nan"), float("nan")
    alpha = 1.0 - level

    def f(nc: float, target: float) -> float:
        p = float(stats.nct.cdf(t_obs, df, nc))  # decreasing in nc
        if math.isnan(p):  # scipy gives NaN far in a tail, where the cdf is 0 or 1 to machine precision
            p = 0.0 if nc > t_obs else 1.0
        return p - target

    def root(target: float) -> float:
        span = max(10.0, 2.0 * abs(t_obs))
        lo, hi = t_obs - span, t_obs + span
        while f(lo, target) < 0:
            lo -= span
        while f(hi, target) > 0:
            hi += span
        return float(optimize.brentq(f, lo, hi, args=(target,), xtol=1e-10))

    return root(1.0 - alpha / 2.0), root(alpha / 2.0)


def cohens_d(a: object, b: object, level: float = 0.95) -> EffectSize:
    """Cohen's d = (mean(a) - mean(b)) / pooled SD, with an exact CI (noncentral t).

    a, b: (n_a,), (n_b,) samples. The pooled SD uses the ``n - 1`` variances (df = n_a + n_b - 2).
    Identical constant samples give d = NaN (0/0).
    """
    x, y = _sample(a, "a"), _sample(b, "b")
    na, nb = x.size, y.size
    df = na + nb - 2
    sp = math.sqrt(((na - 1) * x.var(ddof=1) + (nb - 1) * y.var(ddof=1)) / df)
    diff = float(x.mean() - y.mean())
    d = diff / sp if sp > 0 else (float("nan") if diff == 0 else math.copysign(float("inf"), diff))
    scale = math.sqrt(1.0 / na + 1.0 / nb)  # t = d / scale
    lo, hi = _nct_ci(d / scale, df, level)
    return EffectSize("cohens_d", d, lo * scale, hi * scale)


def _hedges_j(df: float) -> float:
    """Exact small-sample bias correction J(df) = Γ(df/2) / (√(df/2) Γ((df-1)/2))."""
    return math.exp(math.lgamma(df / 2.0) - math.lgamma((df - 1.0) / 2.0)) / math.sqrt(df / 2.0)


def hedges_g(a: object, b: object, level: float = 0.95) -> EffectSize:
    """Hedges' g = J · Cohen's d, the small-sample unbiased version (CI scaled by the same J)."""
    x, y = _sample(a, "a"), _sample(b, "b")
    d = cohens_d(x, y, level)
    j = _hedges_j(x.size + y.size - 2)
    return EffectSize("hedges_g", d.value * j, d.ci_low * j, d.ci_high * j)


def paired_dz(a: object, b: object, level: float = 0.95) -> EffectSize:
    """Cohen's d_z = mean(a - b) / SD(a - b) for paired runs, with an exact CI (df = n - 1)."""
    x, y = _sample(a, "a"), _sample(b, "b")
    if x.size != y.size:
        raise CryoNBError(f"paired_dz: a and b must have the same length, got {x.size} and {y.size}")
    diff = x - y
    sd = float(diff.std(ddof=1))
    m = float(diff.mean())
    dz = m / sd if sd > 0 else (float("nan") if m == 0 else math.copysign(float("inf"), m))
    scale = 1.0 / math.sqrt(x.size)
    lo, hi = _nct_ci(dz / scale, x.size - 1, level)
    return EffectSize("cohens_dz", dz, lo * scale, hi * scale)


def holm(pvalues: object, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down adjusted p-values and rejections (statsmodels ``multipletests``).

    pvalues: (m,) raw p-values; NaNs (untestable comparisons) are left out of the family and stay NaN.
    Returns (reject (m,) bool, p_adjusted (m,) float).
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float).ravel()
    if np.any((p < 0) | (p > 1)):
        raise CryoNBError(f"holm: p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)][:3]}")
    ok = np.isfinite(p)
    reject = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, np.nan)
    if ok.any():
        r, adj, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adjusted[ok] = r, adj
    return reject, adjusted


def runs_needed(effect: float, alpha: float = 0.05, power: float = 0.8, paired: bool = False, max_n: int = 100_000) -> float:
    """Runs per group needed to detect a standardised effect with a two-sided t-test.

    effect: Cohen's d (independent design, TTestIndPower, equal group sizes) or d_z (paired design,
    TTestPower on the differences). Returns the smallest integer n reaching ``power``; ``inf`` when the
    effect is zero or more than ``max_n`` runs would be needed; NaN for a NaN effect; 2 for an infinite
    one (two runs per group differing with zero spread).
    """
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if not 0 < alpha < 1 or not 0 < power < 1:
        raise CryoNBError(f"runs_needed: alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")
    if not math.isfinite(effect):
        return float("nan") if math.isnan(effect) else 2.0
    es = abs(float(effect))
    if es == 0:
        return float("inf")
    analysis = TTestPower() if paired else TTestIndPower()
    kw = {} if paired else {"ratio": 1.0}

    def reaches(n: int) -> bool:
        # statsmodels' noncentral t returns NaN where power is 1 to machine precision: count it as reached
        return not analysis.power(es, n, alpha, alternative="two-sided", **kw) < power

    # power is increasing in n: double, then bisect on integers (solve_power's float root can miss by one)
    lo, hi = 2, 2
    while not reaches(hi):
        if hi >= max_n:
            return float("inf")
        lo, hi = hi + 1, min(2 * hi, max_n)
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(mid):
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def compare_inits(table: pd.DataFrame, metric: str = "test_acc", baseline: str = "random", alpha: float = 0.05) -> pd.DataFrame:
    """Each initialisation against ``baseline`` at every (snr, fraction): tests, effects, Holm, power.

    table: long format, one row per fine-tuning run with at least :data:`FINETUNE_COLUMNS` (``metric``
    in place of test_acc). Runs are paired by ``run`` (same seed, same labelled subset).
    Returns one row per (snr, fraction, init): n runs, means and SDs, the difference, Student / Welch /
    paired t and p, Holm-adjusted p for each test over the whole family of comparisons, Hedges' g and d_z
    with 95 % CIs, and the runs per group needed for power 0.8 at ``alpha`` (independent and paired).
    """
    need = {c if c != "test_acc" else metric for c in FINETUNE_COLUMNS}
    missing = need - set(table.columns)
    if missing:
        raise CryoNBError(f"compare_inits: table lacks column(s) {sorted(missing)}; expected {sorted(need)}")
    if baseline not in set(table["init"]):
        raise CryoNBError(f"compare_inits: baseline init {baseline!r} not in the table's inits {sorted(set(table['init']))}")
    rows = []
    for (snr, frac), group in table.groupby(["snr", "fraction"], sort=True):
        base = group[group["init"] == baseline].set_index("run")[metric]
        for init, sub in group[group["init"] != baseline].groupby("init", sort=True):
            other = sub.set_index("run")[metric]
            common = base.index.intersection(other.index)
            a, b = other.to_numpy(float), base.to_numpy(float)
            row: dict[str, object] = {"snr": snr, "fraction": frac, "init": init, "baseline": baseline,
                                      "n": len(a), "n_baseline": len(b), "n_paired": len(common),
                                      "mean": a.mean(), "sd": a.std(ddof=1) if len(a) > 1 else np.nan,
                                      "mean_baseline": b.mean(), "sd_baseline": b.std(ddof=1) if len(b) > 1 else np.nan,
                                      "diff": a.mean() - b.mean()}
            if len(a) >= 2 and len(b) >= 2:
                st, we = student_t(a, b), welch_t(a, b)
                g = hedges_g(a, b)
                row.update(t_student=st.statistic, p_student=st.pvalue, t_welch=we.statistic, df_welch=we.df, p_welch=we.pvalue,
                           hedges_g=g.value, g_ci_low=g.ci_low, g_ci_high=g.ci_high,
                           runs_needed=runs_needed(cohens_d(a, b).value, alpha))
            if len(common) >= 2:
                pa = paired_t(other[common], base[common])
                dz = paired_dz(other[common], base[common])
                row.update(t_paired=pa.statistic, p_paired=pa.pvalue, d_z=dz.value, dz_ci_low=dz.ci_low, dz_ci_high=dz.ci_high,
                           runs_needed_paired=runs_needed(dz.value, alpha, paired=True))
            rows.append(row)
    out = pd.DataFrame(rows)
    for test in ("student", "welch", "paired"):
        col = f"p_{test}"
        if col not in out:
            out[col] = np.nan
        out[f"p_{test}_holm"] = holm(out[col].to_numpy(float), alpha)[1]
    return out


def as_dict(result: TTest | EffectSize) -> dict[str, object]:
    """A result as a plain dict (for tables and JSON)."""
    return asdict(result)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson confidence interval of a proportion such as an accuracy over ``n`` independent trials
    (statsmodels ``proportion_confint``); good near 0 and 1, where the normal approximation is not."""
    from statsmodels.stats.proportion import proportion_confint

    if n < 1 or not 0 <= successes <= n:
        raise CryoNBError(f"proportion of {successes} in {n} trials: expected n >= 1 and 0 <= successes <= n")
    low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return float(low), float(high)
