"""REPORT.md verdicts come from the run's tables through the rules of cryonb.verdicts: a claim holds, fails, is not
testable (low power, or an interval across the threshold) or is not run, as the numbers and the design say."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryonb.report import CLAIMS, COLUMNS, evaluate_claims, write_report

EVERY = "CSSL initialisation beats random at every label fraction"
MOCO_BEST = "MoCo is the best CSSL method in most settings"
BEST = "best accuracy on simulated data"
MOCO_P = "MoCo vs random: two-tailed t-test significant"


def _runs(gain: dict[str, float], clusters: int, runs_per_cluster: int = 1, base: float = 0.4, noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for fraction in (0.25, 1.0):
        for run in range(clusters * runs_per_cluster):
            shared = rng.normal(0, 0.02)  # the run's labelled subset lifts every initialisation alike (pairing)
            for init, g in {"random": 0.0, **gain}.items():
                rows.append({"snr": 0.1, "init": init, "fraction": fraction, "run": run, "encoder": run % clusters,
                             "test_acc": base + g + shared + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def _write(tmp: Path, name: str, df: pd.DataFrame) -> None:
    (tmp / "tables").mkdir(parents=True, exist_ok=True)
    df.to_csv(tmp / "tables" / f"{name}.csv", index=False)


def test_missing_tables_are_not_run(tmp_path: Path) -> None:
    claims = evaluate_claims(tmp_path, "quick")
    assert len(claims) == len(CLAIMS) and (claims.verdict == "not run").all() and list(claims.columns) == COLUMNS


def test_cssl_verdicts_follow_the_numbers_and_the_power(tmp_path: Path) -> None:
    _write(tmp_path, "04_finetune_runs", _runs({"moco": 0.25, "simclr": 0.1, "swav": 0.1}, clusters=5))
    claims = evaluate_claims(tmp_path, "paper").set_index("claim")
    assert (claims.loc[[EVERY, MOCO_BEST, MOCO_P], "verdict"] == "holds").all()
    assert claims.loc[BEST, "verdict"] == "holds" and claims.loc[BEST, "ours"].startswith("6")
    assert claims.loc[EVERY, "rule"].startswith("every (method, SNR, fraction)")
    # no effect at all: with 12 independent clusters the Holm rule has the power to say "does not hold" ...
    _write(tmp_path, "04_finetune_runs", _runs({"moco": 0.0, "simclr": 0.0, "swav": 0.0}, clusters=12, noise=0.05, seed=1))
    claims = evaluate_claims(tmp_path, "quick").set_index("claim")
    assert float(claims.loc[MOCO_P, "power"]) >= 0.8 and claims.loc[MOCO_P, "verdict"] == "does not hold"
    assert claims.loc[BEST, "verdict"] == "not testable in this profile"  # accuracy is compared at paper scale only
    # ... with 2 clusters nothing is testable: no "does not hold" without power
    _write(tmp_path, "04_finetune_runs", _runs({"moco": 0.0, "simclr": 0.0, "swav": 0.0}, clusters=2, noise=0.05, seed=2))
    claims = evaluate_claims(tmp_path, "quick").set_index("claim")
    for claim in (EVERY, MOCO_BEST, MOCO_P):
        assert float(claims.loc[claim, "power"]) < 0.8 and claims.loc[claim, "verdict"].startswith("not testable in this profile (power")


def test_gradcam_needs_independent_model_pairs(tmp_path: Path) -> None:
    claim = "pre-trained Grad-CAM covers wider regions"
    pairs = pd.DataFrame({"pair": range(6), "metric": "half_max_fraction", "moco": [0.30, 0.32, 0.31, 0.33, 0.29, 0.34],
                          "random": [0.20, 0.21, 0.22, 0.19, 0.20, 0.23]})
    _write(tmp_path, "06_gradcam_pairs", pairs)
    assert evaluate_claims(tmp_path, "quick").set_index("claim").loc[claim, "verdict"] == "holds"
    _write(tmp_path, "06_gradcam_pairs", pairs.iloc[:1])
    assert evaluate_claims(tmp_path, "quick").set_index("claim").loc[claim, "verdict"] == "not testable in this profile"


def _query_scores(accuracy: dict[tuple[str, str, int], float], seeds: int = 3, classes: int = 8, per_class: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for (method, snr, n_way), acc in accuracy.items():
        for seed in range(seeds):
            for c in range(classes):
                for v in range(per_class):
                    rows.append({"method": method, "snr": snr, "n_way": n_way, "k_shot": 1, "seed": seed, "row": c * per_class + v,
                                 "class": f"c{c}", "correct": float(np.clip(acc + rng.normal(0, 0.02), 0, 1))})
    return pd.DataFrame(rows)


def test_cosnet_intervals_decide_or_say_they_cannot(tmp_path: Path) -> None:
    claims_of = lambda: evaluate_claims(tmp_path, "quick").set_index("claim")  # noqa: E731
    low_snr, falls = "2-way 1-shot accuracy at SNR 0.5", "accuracy falls as n-way grows"
    _write(tmp_path, "07_query_scores", _query_scores({("DuSE-SCNN+decoder", "0.5", 2): 0.9, ("DuSE-SCNN+decoder", "0.5", 4): 0.7}))
    claims = claims_of()
    assert claims.loc[low_snr, "verdict"] == "holds" and claims.loc[falls, "verdict"] == "holds"
    _write(tmp_path, "07_query_scores", _query_scores({("DuSE-SCNN+decoder", "0.5", 2): 0.6, ("DuSE-SCNN+decoder", "0.5", 4): 0.7}))
    claims = claims_of()
    assert claims.loc[low_snr, "verdict"] == "does not hold" and claims.loc[falls, "verdict"] == "does not hold"
    _write(tmp_path, "07_query_scores", _query_scores({("DuSE-SCNN+decoder", "0.5", 2): 0.8}))
    assert claims_of().loc[low_snr, "verdict"] == "not testable in this profile (interval contains 0.8)"


def test_n_way_claim_pairs_the_query_volumes_both_n_ways_drew(tmp_path: Path) -> None:
    """Random episodes need not query every volume at every n-way: the claim compares the volumes both drew."""
    falls = "accuracy falls as n-way grows"
    scores = _query_scores({("DuSE-SCNN+decoder", "0.5", 2): 0.9, ("DuSE-SCNN+decoder", "0.5", 4): 0.7})
    drawn = scores[(scores.n_way == 2) | (scores.row % 5 != 4)]  # the 4-way episodes never drew one volume per class
    _write(tmp_path, "07_query_scores", drawn)
    got = evaluate_claims(tmp_path, "quick").set_index("claim").loc[falls]
    assert got.verdict == "holds" and got.ours.startswith("SNR 0.5 2→4: +0.2")


def test_decoder_claim_uses_seeds_as_units(tmp_path: Path) -> None:
    claim = "the volume decoder raises one-shot accuracy (2-way, DuSE, SNR 1000)"
    rows = [{"method": m, "snr": 1000, "n_way": 2, "k_shot": 1, "seed": s, "accuracy": a + 0.001 * s}
            for m, a in (("DuSE-SCNN", 0.70), ("DuSE-SCNN+decoder", 0.80)) for s in range(3)]
    _write(tmp_path, "07_accuracy_seeds", pd.DataFrame(rows))
    got = evaluate_claims(tmp_path, "quick").set_index("claim").loc[claim]
    assert got.verdict == "holds" and "over 3 seeds" in got.ours
    _write(tmp_path, "07_accuracy_seeds", pd.DataFrame(rows).query("seed == 0"))
    assert evaluate_claims(tmp_path, "quick").set_index("claim").loc[claim, "verdict"] == "not testable in this profile"


def _dice(after: float, before: float, snr: str = "inf") -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"model": "DuSE-SCNN+decoder", "snr": snr, "train_n_way": 2, "seed": s, "row": c * 6 + v, "class": f"c{c}",
                          "dice_before": before + rng.normal(0, 0.01), "dice_after": after + rng.normal(0, 0.01)}
                         for s in range(2) for c in range(8) for v in range(6)])


@pytest.mark.parametrize(("after", "weights", "dice_verdict", "crf_verdict"), [
    (0.95, (0.01, 0.1), "holds", "holds"),
    (0.80, (0.01, 0.1), "does not hold", "does not hold"),
    (0.90, (0.0, 0.0), "does not hold", "CRF inactive"),
])
def test_dice_and_crf(tmp_path: Path, after: float, weights: tuple[float, float], dice_verdict: str, crf_verdict: str) -> None:
    dice = _dice(after, before=0.90)
    if weights == (0.0, 0.0):
        dice["dice_after"] = dice["dice_before"]
    _write(tmp_path, "08_dice_per_volume", dice)
    _write(tmp_path, "08_crf_chosen", pd.DataFrame([{"snr": "inf", "w_bilateral": weights[0], "w_spatial": weights[1]}]))
    claims = evaluate_claims(tmp_path, "quick").set_index("claim")
    assert claims.loc["Dice for every unseen class at SNR ∞", "verdict"] == dice_verdict
    assert claims.loc["the dense CRF improves Dice", "verdict"] == crf_verdict


def test_report_file_lists_rules_power_and_deviations(tmp_path: Path) -> None:
    _write(tmp_path, "04_finetune_runs", _runs({"moco": 0.2, "simclr": 0.1, "swav": 0.1}, clusters=5))
    text = write_report("quick", tmp_path).read_text()
    assert "| rule" in text and "| power" in text and "## Deviations from the papers" in text
    assert "paired cluster t of MoCo − random > 0 after Holm" in text
    assert (tmp_path / "tables" / "claims.csv").is_file()


def test_cli_unknown_profile_is_an_error_and_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from cryonb.cli import main as cli_main
    from cryonb.paths import repo_root

    for name, message in (("nosuch", "unknown profile 'nosuch': no "), ("../params/smoke", "expected a name of letters, digits")):
        assert cli_main(["report", "--profile", name]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cryonb report: error: ") and message in err, err
    assert not (repo_root() / "results" / "nosuch").exists()
