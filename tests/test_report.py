"""REPORT.md verdicts come from the run's tables: a claim holds, fails or is not run, as the numbers say."""

from pathlib import Path

import pandas as pd
import pytest

from cryonb.report import CLAIMS, evaluate_claims, write_report


def _runs(moco: float, simclr: float, random: float) -> pd.DataFrame:
    rows = []
    for init, acc in (("moco", moco), ("simclr", simclr), ("random", random)):
        for fraction in (0.25, 1.0):
            for run in range(3):
                rows.append({"snr": 0.1, "init": init, "fraction": fraction, "run": run, "test_acc": acc + 0.01 * run})
    return pd.DataFrame(rows)


def _write(tmp: Path, name: str, df: pd.DataFrame) -> None:
    (tmp / "tables").mkdir(parents=True, exist_ok=True)
    df.to_csv(tmp / "tables" / f"{name}.csv", index=False)


def test_missing_tables_are_not_run(tmp_path: Path) -> None:
    claims = evaluate_claims(tmp_path, "quick")
    assert len(claims) == len(CLAIMS) and (claims.verdict == "not run").all()


def test_cssl_verdicts_follow_the_numbers(tmp_path: Path) -> None:
    _write(tmp_path, "04_finetune_runs", _runs(moco=0.6, simclr=0.5, random=0.4))
    claims = evaluate_claims(tmp_path, "paper").set_index("claim")
    assert claims.loc["CSSL initialisation beats random at every label fraction", "verdict"] == "holds"
    assert claims.loc["MoCo is the best CSSL method in most settings", "verdict"] == "holds"
    assert claims.loc["best accuracy on simulated data", "ours"] == "61.0%"  # mean of 0.60, 0.61, 0.62
    assert claims.loc["best accuracy on simulated data", "verdict"] == "holds"
    _write(tmp_path, "04_finetune_runs", _runs(moco=0.3, simclr=0.35, random=0.4))
    claims = evaluate_claims(tmp_path, "quick").set_index("claim")
    assert claims.loc["CSSL initialisation beats random at every label fraction", "verdict"] == "does not hold"
    assert claims.loc["MoCo is the best CSSL method in most settings", "verdict"] == "does not hold"
    assert claims.loc["best accuracy on simulated data", "verdict"] == "not testable in this profile"


def test_report_file_lists_claims_and_deviations(tmp_path: Path) -> None:
    _write(tmp_path, "08_dice_summary", pd.DataFrame([
        {"snr": "inf", "model": "m", "train_n_way": 2, "dice_before_mean": 0.90, "dice_before_min": 0.10, "dice_after_mean": 0.95,
         "dice_after_min": 0.20, "dice_before_worst_class": 0.91, "dice_after_worst_class": 0.94},
        {"snr": "inf", "model": "weak", "train_n_way": 2, "dice_before_mean": 0.5, "dice_before_min": 0.0, "dice_after_mean": 0.5,
         "dice_after_min": 0.0, "dice_before_worst_class": 0.3, "dice_after_worst_class": 0.3},
    ]))
    text = write_report("quick", tmp_path).read_text()
    # the worst class *mean* of the better model (0.94 after the CRF), not one bad volume (min 0.0-0.2)
    assert "Dice for every unseen class at SNR ∞" in text and "lowest class-mean Dice 0.940" in text
    assert "## Deviations from the papers" in text and "mean Dice change +0.025" in text
    assert (tmp_path / "tables" / "claims.csv").is_file()


def test_cli_unknown_profile_is_an_error_and_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from cryonb.cli import main as cli_main
    from cryonb.paths import repo_root

    for name, message in (("nosuch", "unknown profile 'nosuch': no "), ("../params/smoke", "expected a name of letters, digits")):
        assert cli_main(["report", "--profile", name]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cryonb report: error: ") and message in err, err
    assert "profiles are paper, quick, smoke" in (cli_main(["report", "--profile", "nosuch"]), capsys.readouterr().err)[1]
    assert not (repo_root() / "results" / "nosuch").exists()
