"""The bias correction by age: fitted so that it removes a shrinking model's bias at every age, measured by
cross-fitting, stored in the model file and applied the same way by PyTorch and ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boneage.bias import BiasCorrection
from boneage.config import ModelSpec
from boneage.errors import UserError
from boneage.evaluation.bias import choose, cross_fit, fit, worst_band_bias
from tests.conftest import cli


def _shrinking(n=2500, seed=1, slope=0.8):
    """Answers pulled toward the mean, as a regression network's are: young children read older, older younger."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(6, 220, n)
    male = rng.random(n) < 0.55
    return 127 + slope * (true - 127) + rng.normal(0, 8, n), true, male


def test_the_correction_removes_the_bias_of_every_age_band():
    answers, true, male = _shrinking()
    chosen = choose(answers, true, male)
    assert worst_band_bias(chosen["before"]) > 10
    assert worst_band_bias(chosen["after"]) < 1.0
    assert chosen["after"]["mad_months"] < chosen["before"]["mad_months"]


def test_the_correction_follows_the_under_read_of_the_first_two_years():
    """The CPU-trained networks read infants about 5 months young and 2-6 year-olds a little old: a bend inside the
    first four years that knots every two years smooth away (0-2 y left at about -2 here, -3.9 on the real films)."""
    rng = np.random.default_rng(4)
    true = np.concatenate([rng.uniform(3, 24, 100), rng.uniform(24, 228, 2400)])
    male = rng.random(true.size) < 0.55
    offset = np.interp(true, [0, 24, 48, 120, 228], [-6, -5, 2, 0, -2])
    chosen = choose(true + offset + rng.normal(0, 5, true.size), true, male)
    assert chosen["before"]["by_age_band"]["0-2y"]["bias_months"] < -4
    assert abs(chosen["after"]["by_age_band"]["0-2y"]["bias_months"]) < 1
    assert chosen["after"]["mad_months"] < chosen["before"]["mad_months"]


def test_cross_fitted_figures_are_not_fitted_on_themselves():
    """On answers that are already unbiased, a correction fitted in-sample looks better than cross-fitted one."""
    rng = np.random.default_rng(3)
    true = rng.uniform(6, 220, 300)
    male = rng.random(300) < 0.5
    answers = true + rng.normal(0, 10, 300)
    in_sample = np.abs(fit(answers, true, male, False).apply(answers, male) - true).mean()
    crossed = np.abs(cross_fit(answers, true, male, False) - true).mean()
    assert crossed > in_sample


def test_a_correction_per_sex_corrects_each_sex_with_its_own_curve():
    rng = np.random.default_rng(0)
    true = rng.uniform(12, 216, 2000)
    male = rng.random(2000) < 0.5
    answers = true + np.where(male, 6.0, -6.0) + rng.normal(0, 3, 2000)  # boys read older, girls younger
    corrected = fit(answers, true, male, per_sex=True).apply(answers, male)
    assert abs(np.mean(corrected[male] - true[male])) < 0.5
    assert abs(np.mean(corrected[~male] - true[~male])) < 0.5
    assert choose(answers, true, male)["per_sex"]


def test_beyond_the_fitted_range_answers_are_shifted_not_extrapolated():
    c = BiasCorrection((0.0, 120.0, 240.0), {"all": (10.0, 125.0, 230.0)})
    out = c.apply(np.array([0.0, 10.0, 125.0, 230.0, 300.0]), np.ones(5, bool))
    assert out == pytest.approx([-10.0, 0.0, 120.0, 240.0, 310.0])


@pytest.mark.parametrize("bad", [{"knots": [0, 1], "curves": {"all": [5, 3]}},  # decreasing
                                 {"knots": [0, 1], "curves": {"M": [0, 1]}},  # one sex only
                                 {"knots": [0], "curves": {"all": [0]}},
                                 {"curves": {"all": [0, 1]}}])
def test_a_malformed_correction_in_a_model_file_is_refused_in_one_line(bad):
    with pytest.raises(UserError, match="bias correction"):
        ModelSpec.from_config({"model": {}, "preprocess": {}, "bias_correction": bad}, "m.pt")


def test_every_runtime_applies_the_model_files_correction_and_keeps_the_spread(trained, tmp_path):
    from boneage.inference.export import export_weights
    from boneage.inference.loading import load_predictor

    shift = BiasCorrection((0.0, 240.0), {"all": (-10.0, 230.0)})  # the model reads 10 months young everywhere
    plain = export_weights(trained / "best.ckpt", tmp_path / "plain.pt", "float32")["path"]
    corrected = export_weights(trained / "best.ckpt", tmp_path / "corrected.pt", "float32",
                               bias_correction=shift)["path"]
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    male = [True, False, True]
    for runtime in ("torch", "onnx"):
        before = load_predictor(plain, runtime, cache=tmp_path / "onnx").predict_views(images, male)
        after = load_predictor(corrected, runtime, cache=tmp_path / "onnx").predict_views(images, male)
        assert after - before == pytest.approx(np.full_like(before, 10.0), abs=1e-4), runtime
        assert after.std(axis=0) == pytest.approx(before.std(axis=0), abs=1e-5)


def test_debias_writes_the_model_with_its_correction_and_the_table(trained, synthetic, tmp_path):
    images, labels = synthetic
    out, report = tmp_path / "debiased.pt", tmp_path / "report"
    done = cli("debias", "--model", trained / "best.ckpt", "--images", images, "--labels", labels,
               "--out", out, "--report", report)
    assert done.returncode == 0, done.stderr
    assert "| age" in done.stdout and "MAD after" in done.stdout
    figures = json.loads((report / "bias.json").read_text())
    assert figures["films"] == 360 and figures["folds"] == 5
    from boneage.inference.checkpoint import load_network

    _, spec, card = load_network(out)
    assert spec.bias_correction is not None
    assert spec.bias_correction.provenance["cross_fitted"]["mad_after"] == figures["mad_after"]
    assert card["validation_mad_months"] == pytest.approx(figures["mad_after"], abs=1e-3)
    rows = (report / "answers.csv").read_text().splitlines()
    assert len(rows) == 361 and rows[0].startswith("id,male,true_months,answer_months,corrected_months")


def test_debias_refuses_a_bad_output_name_in_one_line(trained, synthetic, tmp_path):
    images, labels = synthetic
    done = cli("debias", "--model", trained / "best.ckpt", "--images", images, "--labels", labels,
               "--out", tmp_path / "x.onnx")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and ".pt" in done.stderr
