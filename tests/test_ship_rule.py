"""scripts/ship_if_better.py: the rule that decides whether a CPU session's model replaces the shipped one."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ship_if_better.py"


@pytest.fixture(scope="module")
def rule():
    spec = importlib.util.spec_from_file_location("ship_if_better", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures(mad, worst_sd, band=3.0, films=100):
    return {"mad": mad, "mad_raw": mad, "worst_band_bias": band, "films": films, "worst_sd": worst_sd,
            "largest": 10 * worst_sd, "precision_films": 20, "families": ["noise", "rotation"],
            "worst_family": "noise"}


def paired(mean, low, high, films=100):
    return {"films": films, "mean": mean, "low": low, "high": high}


SHIPPED = figures(7.43, 15.3)


def test_more_precise_and_within_the_margin_ships(rule):
    ship, why = rule.better(figures(7.59, 2.5), SHIPPED, paired(0.16, 0.05, 0.27))
    assert ship and "margin" in why and "+0.16" in why


def test_more_precise_but_beyond_the_margin_does_not(rule):
    ship, why = rule.better(figures(7.70, 3.1), SHIPPED, paired(0.27, 0.15, 0.39))
    assert not ship and "beyond" in why


def test_without_answers_per_film_the_point_figures_decide(rule):
    assert not rule.better(figures(7.59, 2.5), SHIPPED)[0]
    assert rule.better(figures(7.43, 2.5), SHIPPED)[0]


def test_a_worse_age_band_holds_a_precision_gain_back(rule):
    ship, why = rule.better(figures(7.50, 2.5, band=4.7), figures(7.43, 15.3, band=3.3), paired(0.07, -0.02, 0.16))
    assert not ship and "band" in why


def test_a_worse_age_band_within_noise_does_not(rule):
    new, old = figures(7.50, 2.5, band=3.9), figures(7.43, 15.3, band=3.3)
    ship, why = rule.better(new, old, paired(0.07, -0.02, 0.16), {"films": 100, "difference": 0.6, "low": -0.9})
    assert ship and "within noise" in why and "-0.90" in why
    ship, why = rule.better(new, old, paired(0.07, -0.02, 0.16), {"films": 100, "difference": 0.6, "low": 0.2})
    assert not ship and "3.9 against 3.3, one-sided 95% bound +0.20" in why
    # answers per film from other films than the figures' do not count as noise
    assert not rule.better(new, old, paired(0.07, -0.02, 0.16), {"films": 50, "difference": 0.6, "low": -0.9})[0]


def test_the_row_names_every_condition_that_failed(rule):
    ship, why = rule.better(figures(7.83, 2.9, band=7.0), figures(7.43, 15.3, band=3.3), paired(0.40, 0.29, 0.51))
    assert not ship and "beyond the 0.3 margin" in why and "7.0 against 3.3" in why


def test_better_mad_with_worse_precision_does_not_ship(rule):
    ship, why = rule.better(figures(7.00, 16.0), SHIPPED, paired(-0.43, -0.55, -0.30))
    assert not ship and "precision family worse" in why


def precision_paired(difference, low, high, films=20):
    return {"films": films, "difference": difference, "low": low, "high": high}


def test_a_clear_mad_gain_may_cost_precision_within_the_margin(rule):
    new, old = figures(7.33, 2.11), figures(7.38, 2.02)
    ship, why = rule.better(new, old, paired(-0.06, -0.09, -0.03), None, precision_paired(0.09, -0.22, 0.19))
    assert ship and "within the 0.2 margin" in why and "+0.09 (95% CI -0.22 to +0.19)" in why
    # without the deltas per film, or measured on other films, the point figures decide as before
    assert not rule.better(new, old, paired(-0.06, -0.09, -0.03))[0]
    assert not rule.better(new, old, paired(-0.06, -0.09, -0.03), None, precision_paired(0.09, -0.2, 0.19, 50))[0]


def test_the_precision_margin_needs_a_mad_gain_beyond_chance_and_stays_a_margin(rule):
    new, old = figures(7.33, 2.11), figures(7.38, 2.02)
    ship, why = rule.better(new, old, paired(-0.05, -0.10, 0.01), None, precision_paired(0.09, -0.22, 0.19))
    assert not ship and "precision family worse" in why and "+0.19" in why
    assert not rule.better(new, old, paired(-0.06, -0.09, -0.03), None, precision_paired(0.15, -0.05, 0.31))[0]


def write_deltas(path: Path, moves) -> Path:
    """A `boneage precision` deltas.csv: one row per film, two families of two changes each."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "predicted_months", "noise: SD 1", "noise: SD 3", "rotation: -5°", "rotation: +5°"])
        for i, row in enumerate(moves):
            w.writerow([i, 100.0, *row])
    return path


def test_paired_precision_difference_recomputes_each_models_worst_family(rule, tmp_path):
    from boneage.evaluation.precision import summarise

    rng = __import__("numpy").random.default_rng(0)
    moves = rng.normal(0, 1, (60, 4)) * [1, 3, 1, 1]
    old = write_deltas(tmp_path / "old.csv", moves)
    assert rule.paired_precision_difference(old, old) == {"films": 60, "difference": 0.0, "low": 0.0, "high": 0.0}
    # the new model moves twice as far under noise: worse beyond chance, by its worst family's SD as reported
    new = write_deltas(tmp_path / "new.csv", moves * [2, 2, 1, 1])
    d = rule.paired_precision_difference(new, old)
    change = lambda family: (family, "", None)  # noqa: E731
    families = [change("noise"), change("noise"), change("rotation"), change("rotation")]
    sd = lambda m: summarise(m, families)["worst_sd_single"]  # noqa: E731
    assert d["difference"] == pytest.approx(sd(moves * [2, 2, 1, 1]) - sd(moves), abs=0.01)
    assert 0 < d["low"] < d["difference"] < d["high"]
    assert rule.paired_precision_difference(tmp_path / "missing.csv", old) is None


def test_other_films_are_not_comparable(rule):
    assert not rule.better(figures(7.0, 2.0, films=90), SHIPPED)[0]
    assert "per-film" in rule.better(figures(7.0, 2.0), SHIPPED, paired(0.0, -0.1, 0.1, films=50))[1]


def write_answers(path: Path, errors: list[float], true: list[float] | None = None) -> Path:
    """An answers.csv: one film per error, at 100 months unless `true` says."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "male", "true_months", "answer_months", "corrected_months"])
        for i, (t, e) in enumerate(zip(true or [100] * len(errors), errors)):
            w.writerow([i, i % 2, t, t + e, t + e])
    return path


def test_paired_difference_is_film_by_film(rule, tmp_path):
    old = write_answers(tmp_path / "old.csv", [(-1) ** i * (i % 7) for i in range(200)])
    same = rule.paired_difference(old, old)
    assert same == {"films": 200, "mean": 0.0, "low": 0.0, "high": 0.0}
    worse = write_answers(tmp_path / "new.csv", [(-1) ** i * (i % 7 + 0.5) for i in range(200)])
    d = rule.paired_difference(worse, old)
    assert d["mean"] == pytest.approx(0.5) and d["low"] == pytest.approx(0.5) and d["high"] == pytest.approx(0.5)
    assert rule.paired_difference(tmp_path / "missing.csv", old) is None


def test_paired_band_difference_resamples_within_each_band(rule, tmp_path):
    # 20 infants and 200 older children; the infants are read 3 months young by the old model
    true = [12.0] * 20 + [100.0] * 200
    spread = [(-1) ** i * (i % 5) for i in range(220)]
    old = write_answers(tmp_path / "old.csv", [e - 3 * (i < 20) for i, e in enumerate(spread)], true)
    same = rule.paired_band_difference(old, old)
    assert same == {"films": 220, "difference": 0.0, "low": 0.0}
    # the new model reads every infant one more month young: worse beyond chance, the same shift on every film
    shifted = write_answers(tmp_path / "shifted.csv", [e - 4 * (i < 20) for i, e in enumerate(spread)], true)
    d = rule.paired_band_difference(shifted, old)
    assert d["difference"] == pytest.approx(1.0) and d["low"] == pytest.approx(1.0)
    # the new model reads the infants 1 month younger on average, but film by film it differs by up to 8 months
    noisy = write_answers(tmp_path / "noisy.csv",
                          [e - 3 * (i < 20) - (1 + 8 * (-1) ** i) * (i < 20) for i, e in enumerate(spread)], true)
    d = rule.paired_band_difference(noisy, old)
    assert d["difference"] == pytest.approx(1.0) and d["low"] < 0
    assert rule.paired_band_difference(tmp_path / "missing.csv", old) is None


def test_main_decides_from_the_files_and_changes_nothing_on_a_dry_run(rule, tmp_path, capsys):
    def side(name, mad, sd, errors):
        d = tmp_path / name
        d.mkdir()
        (d / "bias.json").write_text(json.dumps({"mad_after": mad, "mad_before": mad, "worst_band_bias_after": 1.0,
                                                  "films": len(errors)}))
        (d / "precision.json").write_text(json.dumps({"worst_sd_single": sd, "largest_abs": 5 * sd, "n": 20,
                                                       "families": {"noise": {"sd_single": sd}}}))
        write_answers(d / "answers.csv", errors)
        write_deltas(d / "deltas.csv", [[sd, -sd, 0, 0]] * 20)
        return d

    old = side("shipped", 7.0, 9.0, [7.0] * 50)
    new = side("candidate", 7.1, 2.0, [7.1] * 50)
    (tmp_path / "w.pt").write_bytes(b"weights")
    code = rule.main(["--candidate", str(tmp_path / "w.pt"), "--candidate-bias", str(new / "bias.json"),
                      "--candidate-precision", str(new / "precision.json"), "--shipped-bias", str(old / "bias.json"),
                      "--shipped-precision", str(old / "precision.json"), "--shipped-answers",
                      str(old / "answers.csv"), "--shipped-deltas", str(old / "deltas.csv"), "--run",
                      str(tmp_path), "--dry-run"])
    decision, row = capsys.readouterr().out.splitlines()
    decision = json.loads(decision)
    assert code == 0 and decision["ship"] and decision["paired_mad_difference"]["mean"] == pytest.approx(0.1)
    assert row.startswith("| ") and "**yes**" in row
    # the candidate's moves per film are found beside its precision.json
    assert decision["paired_worst_precision"]["films"] == 20 and decision["paired_worst_precision"]["difference"] < 0


def test_the_row_says_the_runs_learning_rate_and_weight_average(rule, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 8, "lr": 5e-5, "ema_decay": 0.999}))
    (tmp_path / "metrics.csv").write_text("epoch,train_mad,val_mad,lr,seconds\n1,9.8,7.61,4.8e-05,790\n")
    (tmp_path / "train.csv").write_text("id,boneage,male\n1,100,True\n")
    row = rule.history_row(figures(7.5, 2.5), SHIPPED, rule.run_summary(tmp_path), False, "why", "CPU")
    assert "| CPU (lr 5e-05, EMA 0.999) | 1 of 8 |" in row


def test_the_row_says_consistency_and_counts_both_versions_of_each_film(rule, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 4, "lr": 4e-5, "consistency": 1.0}))
    (tmp_path / "metrics.csv").write_text("epoch,train_mad,val_mad,lr,seconds\n1,9.8,7.61,4.8e-05,100\n")
    (tmp_path / "train.csv").write_text("id,boneage,male\n" + "".join(f"{i},100,True\n" for i in range(700)))
    row = rule.history_row(figures(7.5, 2.5), SHIPPED, rule.run_summary(tmp_path), False, "why", "CPU")
    assert "| CPU (lr 4e-05, consistency 1) | 1 of 4 | 2 | 14.0 |" in row
