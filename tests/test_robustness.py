"""What makes the same film get the same answer: cutting to the hand, capped equalisation, test-time views, and the
precision benchmark that measures it; and what makes GPU time accumulate: warm starts on a fixed validation set."""

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from boneage.config import ModelConfig, ModelSpec, Preprocess, TrainConfig
from boneage.data.crop import hand_box
from boneage.data.intensity import equalize, equalize_clipped
from boneage.data.preprocess import model_region, preprocess_gray
from boneage.data.synthetic import hand_phantom
from boneage.errors import UserError


def _film(grow: float = 0.0, where=(0.5, 0.5), seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A hand phantom (0..255) on a dark film enlarged by `grow`, and where the phantom lies on it."""
    hand = hand_phantom(300, 240, seed=seed) * 200 + 20
    h, w = hand.shape
    big_h, big_w = round(h * (1 + grow)), round(w * (1 + grow))
    film = np.full((big_h, big_w), 20.0, dtype=np.float32)
    top, left = round((big_h - h) * where[0]), round((big_w - w) * where[1])
    film[top : top + h, left : left + w] = hand
    return film, (top, top + h, left, left + w)


def _jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- cutting to the hand
@pytest.mark.parametrize("grow,where", [(0.6, (0.5, 0.5)), (0.6, (0.0, 0.0)), (1.0, (1.0, 0.3))])
def test_the_box_holds_the_hand_and_drops_the_margins(grow, where):
    film, (top, bottom, left, right) = _film(grow, where)
    bt, bb, bl, br = hand_box(film)
    hand_rows = np.flatnonzero((film[:, left:right] > 60).any(axis=1))  # the phantom's own extent
    hand_cols = np.flatnonzero((film[top:bottom] > 60).any(axis=0))
    assert bt <= hand_rows[0] and bb > hand_rows[-1] and bl <= hand_cols[0] and br > hand_cols[-1]
    box_area = (bb - bt) * (br - bl)
    assert box_area < 0.6 * film.size  # most of the empty margin is gone


def test_a_wider_margin_or_another_position_gives_nearly_the_same_model_input():
    pp = Preprocess(image_size=128, crop="hand", clip_limit=3.0)
    plain = Preprocess(image_size=128)
    base, _ = _film(0.3)
    for grow, where in ((0.8, (0.5, 0.5)), (0.8, (0.1, 0.9))):
        other, _ = _film(grow, where)
        cut = np.abs(preprocess_gray(other, pp).astype(float) - preprocess_gray(base, pp)).mean()
        whole = np.abs(preprocess_gray(other, plain).astype(float) - preprocess_gray(base, plain)).mean()
        assert cut < 12 and cut < whole / 3, (cut, whole)


def _on_a_plate(angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A hand lying on a plate a little brighter than the dark film around it (the detector's field, a film
    photographed on a light box), the film rotated by `angle`; and where the hand's tissue is."""
    from scipy import ndimage

    phantom = hand_phantom(260, 200, seed=1)
    film = np.full((420, 380), 15.0, dtype=np.float32)
    film[40:380, 50:330] = 80.0  # the plate, much larger than the hand
    top, left = 380 - 260, 110  # the forearm runs to the plate's lower edge
    film[top:380, left : left + 200] = np.maximum(80.0, phantom * 200 + 20)
    tissue = np.zeros(film.shape, dtype=bool)
    tissue[top:380, left : left + 200] = phantom * 200 + 20 > 100
    if angle:
        film = ndimage.rotate(film, angle, reshape=False, order=1, cval=15.0)
        tissue = ndimage.rotate(tissue.astype(np.float32), angle, reshape=False, order=0) > 0.5
    return film, tissue


@pytest.mark.parametrize("angle", [0.0, 10.0, -15.0])
def test_on_a_plate_the_rule_hand_in_plate_cuts_to_the_hand_and_the_rule_hand_to_the_plate(angle):
    film, tissue = _on_a_plate(angle)
    plate_area = 340 * 280
    area = lambda box: (box[1] - box[0]) * (box[3] - box[2])  # noqa: E731
    assert area(hand_box(film)) > 0.9 * plate_area  # "hand", the rule shipped networks learnt: the plate's box
    bt, bb, bl, br = box = model_region(film, Preprocess(crop="hand-in-plate"))
    assert box == hand_box(film, plate=True)
    rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
    slack = 6  # pixels: the hand's soft edge, found on a 128-pixel copy of the film
    assert bt <= rows[0] + slack and bb >= rows[-1] - slack and bl <= cols[0] + slack and br >= cols[-1] - slack
    assert area(box) < 0.7 * plate_area  # the plate's empty field is left out


def test_without_a_plate_both_rules_give_the_same_box():
    for seed in range(3):
        film = hand_phantom(300, 240, seed=seed) * 200 + 20  # a hand on a dark film, nothing around it
        assert hand_box(film, plate=True) == hand_box(film)
    with pytest.raises(UserError, match="hand-in-plate"):
        Preprocess(crop="plate")


def test_a_blank_or_tiny_film_is_kept_whole():
    assert hand_box(np.full((200, 150), 7.0, dtype=np.float32)) == (0, 200, 0, 150)
    assert hand_box(np.zeros((5, 5), dtype=np.float32)) == (0, 5, 0, 5)


def test_cutting_is_off_for_models_that_were_trained_without_it():
    film, _ = _film(0.6)
    assert Preprocess().crop == "none"
    np.testing.assert_array_equal(preprocess_gray(film, Preprocess(image_size=64)),
                                  preprocess_gray(film, Preprocess(image_size=64, crop="none")))


# --------------------------------------------------------------------------------------------- capped equalisation
def test_capped_equalisation_does_not_blow_up_compression_noise_in_a_flat_background():
    film, _ = _film(0.6)
    film[film == 20.0] = 0.0  # a perfectly flat background: half the film at one level
    noisy = _jpeg(film, 70)
    plain = np.abs(equalize(noisy) - equalize(film)).mean()
    capped = np.abs(equalize_clipped(noisy, 3.0) - equalize_clipped(film, 3.0)).mean()
    assert capped < plain / 3, (capped, plain)


def test_capped_equalisation_ignores_contrast_and_brightness_and_caps_the_slope():
    film, _ = _film(0.3)
    base = equalize_clipped(film, 3.0)
    for other in (film * 0.5, film + 30, film * 257):
        assert np.abs(equalize_clipped(other, 3.0) - base).mean() < 0.01
    levels = np.linspace(0, 1, 2001, dtype=np.float32)
    img = np.concatenate([np.zeros(50_000, np.float32), levels])  # a huge spike at one level
    out = equalize_clipped(img, 3.0)
    lo, hi = np.percentile(img, (0.5, 99.5))  # the range the levels are binned over
    inside = (levels > lo) & (levels < hi)
    slope = np.diff(out[50_000:][inside]) / np.diff((levels[inside] - lo) / (hi - lo))
    assert slope.max() <= 3.0 * 1.05 and out.min() == 0.0 and out.max() == pytest.approx(1.0)


def test_preprocess_settings_are_checked():
    with pytest.raises(UserError, match="crop"):
        Preprocess(crop="wrist")
    with pytest.raises(UserError, match="clip_limit"):
        Preprocess(clip_limit=0.5)


# ----------------------------------------------------------------------------------------------- test-time views
def _tiny_predictor(tta: str, seed: int = 0):
    from boneage.inference.predictor import TorchPredictor
    from boneage.models import create_model

    torch.manual_seed(seed)
    cfg = TrainConfig(model=ModelConfig(arch="tiny_cnn"), preprocess=Preprocess(image_size=64))
    model = create_model(cfg.model)
    model.head.age_std.fill_(1e4)  # an untrained network barely depends on its input: magnify what it does
    return TorchPredictor(model, ModelSpec(cfg.model, cfg.preprocess), tta=tta)


def test_with_flip_views_a_mirrored_film_gets_exactly_the_same_answer():
    film, _ = _film(0.2)
    flip, none = _tiny_predictor("flip"), _tiny_predictor("none")
    a, b = flip.model_input(film), flip.model_input(film[:, ::-1].copy())
    got = flip.predict_batch(np.stack([a, b]), [True, True])
    plain = none.predict_batch(np.stack([a, b]), [True, True])
    assert abs(plain[0] - plain[1]) > 0.1  # a network is not mirror-symmetric by itself
    assert got[0] == pytest.approx(got[1], abs=0.01 * abs(plain[0] - plain[1]))
    views = flip.predict_views(np.stack([a]), [True])
    assert views.shape == (2, 1) and got[0] == pytest.approx(views.mean(), rel=1e-5)


def test_framing_views_prepare_each_framing_and_keep_the_mirror_symmetry():
    from boneage.inference.tta import FRAMINGS, count

    film, _ = _film(0.3)
    framed, none = _tiny_predictor("framings"), _tiny_predictor("none")
    a, b = framed.model_input(film), framed.model_input(film[:, ::-1].copy())
    assert a.shape == (len(FRAMINGS), 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a[0], none.model_input(film))  # the first framing is the film as is
    views = framed.predict_views(np.stack([a, b]), [True, True])
    assert views.shape == (count("framings"), 2) == (8, 2)
    plain = none.predict_batch(np.stack([a[0], b[0]]), [True, True])
    spread = abs(plain[0] - plain[1])
    assert spread > 0.1
    # the mirrored film's framings are the mirrors of the film's (+7° <-> -7°): the same mean, to interpolation
    assert views[:, 0].mean() == pytest.approx(views[:, 1].mean(), abs=0.05 * spread)
    assert views[:, 0].std() > 0  # the framings are different views: the spread is the answer's uncertainty


def test_framing_views_refuse_inputs_prepared_for_one_view():
    film, _ = _film(0.3)
    framed, one = _tiny_predictor("framings"), _tiny_predictor("flip")
    with pytest.raises(ValueError, match="model_input"):
        framed.predict_views(one.model_input(film)[None], [True])


def test_the_cli_offers_every_set_of_views():
    from boneage.cli import VIEWS
    from boneage.inference.tta import VIEWS as known

    assert VIEWS == tuple(known)


def test_the_uncertain_threshold_is_the_one_calibrated_on_the_same_views():
    from boneage.assessment import DEFAULT_UNCERTAIN_MONTHS, uncertain_threshold

    flip, framed = _tiny_predictor("flip"), _tiny_predictor("framings")
    for p in (flip, framed):
        p.card.update(validation_views="flip", uncertain_above_months=5.0)
    assert uncertain_threshold(flip) == 5.0
    assert uncertain_threshold(framed) == DEFAULT_UNCERTAIN_MONTHS  # flip's figure would flag too many
    framed.card["uncertain_above_months_by_views"] = {"framings": 7.5}
    assert uncertain_threshold(framed) == 7.5


def test_an_unknown_set_of_views_is_refused():
    with pytest.raises(UserError, match="test-time"):
        _tiny_predictor("rotations")


# -------------------------------------------------------------------------------- a fixed validation set, balance
def test_validation_ids_from_a_saved_split_are_never_trained_on(synthetic, tmp_path):
    from boneage.data.labels import read_labels, write_labels
    from boneage.data.split import split_by_ids

    images, labels = synthetic
    records = read_labels(labels, images).rows
    write_labels(records[:50], tmp_path / "val.csv")
    train, val = split_by_ids(records, tmp_path / "val.csv")
    assert {r.id for r in val} == {r.id for r in records[:50]}
    assert not {r.id for r in train} & {r.id for r in val} and len(train) + len(val) == len(records)
    write_labels(records, tmp_path / "all.csv")
    with pytest.raises(UserError, match="0 training"):
        split_by_ids(records, tmp_path / "all.csv")


def test_age_balanced_weights_favour_rare_ages():
    from boneage.training.datamodule import age_balance_weights

    ages = torch.tensor([6.0] * 5 + [130.0] * 80)  # 5 films in year 0, 80 in year 10
    w = age_balance_weights(ages, 0.5)
    assert w[0] / w[-1] == pytest.approx((80 / 5) ** 0.5)
    assert torch.all(age_balance_weights(ages, 0.0) == 1)


# ------------------------------------------------------------------------------------------------------ warm start
@pytest.mark.slow
def test_a_warm_start_begins_from_the_given_weights_on_the_given_validation_ids(trained, synthetic, tmp_path):
    from boneage.config import to_dict
    from boneage.inference.checkpoint import load_network
    from boneage.training.train import run

    images, labels = synthetic
    start, start_cfg, _ = load_network(trained / "best.ckpt")
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "warm"),
                      model=ModelConfig(**{**to_dict(start_cfg.model), "age_mean": 1.0, "age_std": 1.0}),
                      preprocess=start_cfg.preprocess, epochs=1, batch_size=32, lr=1e-9,
                      init_from=str(trained / "best.ckpt"), val_ids=str(trained / "val.csv"), balance=0.5,
                      cache_dir=str(tmp_path / "cache"))
    run(cfg, log=lambda m: None)
    warm, warm_cfg, _ = load_network(tmp_path / "warm" / "last.ckpt")
    assert warm_cfg.model.age_mean == start_cfg.model.age_mean  # the head's label scale comes with the weights
    a, b = start.state_dict(), warm.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a
               if "running" not in k and "num_batches" not in k)
    with open(trained / "val.csv") as f, open(tmp_path / "warm" / "val.csv") as g:
        assert {r["id"] for r in csv.DictReader(f)} == {r["id"] for r in csv.DictReader(g)}


def test_a_warm_start_from_another_network_is_refused(trained, synthetic, tmp_path):
    from boneage.training.train import run

    images, labels = synthetic
    cfg = TrainConfig(images=str(images), labels=str(labels), out=str(tmp_path / "x"),
                      model=ModelConfig(arch="resnet18"), preprocess=Preprocess(image_size=64), epochs=1,
                      init_from=str(trained / "best.ckpt"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="same network"):
        run(cfg, log=lambda m: None)


# ------------------------------------------------------------------------------------------------------- precision
def test_precision_summary_pools_each_family_and_finds_the_worst():
    from boneage.evaluation.precision import CHANGES, FAMILIES, summarise

    rng = np.random.default_rng(0)
    deltas = rng.normal(0, 1, (200, len(CHANGES)))
    mirror = [i for i, (f, _, _) in enumerate(CHANGES) if f == "mirroring"]
    deltas[:, mirror] = 0.0
    deltas[3, 0] = 40.0  # one film that moves a lot when re-saved
    out = summarise(deltas)
    assert set(out["families"]) == set(FAMILIES)
    assert out["families"]["mirroring"] == {"median_abs": 0.0, "max_abs": 0.0, "sd_single": 0.0, "share_over_12": 0.0}
    assert out["families"]["rotation"]["sd_single"] == pytest.approx(1 / np.sqrt(2), rel=0.15)
    assert out["largest_abs"] == 40.0 and out["families"]["re-encoding"]["max_abs"] == 40.0


def test_precision_summary_of_some_families_has_only_those():
    from boneage.evaluation.precision import select, summarise

    chosen = select(["sensor noise", "mirroring"])
    assert [f for f, _, _ in chosen] == ["mirroring", "mirroring", "sensor noise", "sensor noise"]  # FAMILIES' order
    deltas = np.zeros((10, len(chosen)))
    deltas[2, 3] = 20.0
    out = summarise(deltas, chosen)
    assert list(out["families"]) == ["mirroring", "sensor noise"]
    assert out["families"]["sensor noise"]["max_abs"] == 20.0 and out["families"]["mirroring"]["max_abs"] == 0.0
    assert list(out["changes"]) == [f"{f}: {n}" for f, n, _ in chosen]


def test_precision_names_an_unknown_family_in_one_line(tmp_path):
    from tests.conftest import cli

    result = cli("precision", "--images", tmp_path, "--labels", tmp_path / "none.csv", "--family", "noise")
    assert result.returncode != 0 and "no family 'noise'" in result.stderr and "sensor noise" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_precision_command_measures_every_change_on_real_predictions(trained, synthetic, tmp_path):
    import json

    from tests.conftest import cli

    images, _ = synthetic
    result = cli("precision", "--model", trained / "best.ckpt", "--images", images, "--labels",
                 trained / "val.csv", "--limit", "4", "--workers", "1", "--out", tmp_path / "p", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n"] == 4 and summary["families"]["mirroring"]["max_abs"] <= summary["largest_abs"]
    assert summary["families"]["re-encoding"]["sd_single"] >= 0
    rows = list(csv.reader((tmp_path / "p" / "deltas.csv").open()))
    assert len(rows) == 5 and len(rows[0]) == 2 + sum(len(c) for c in __import__(
        "boneage.evaluation.precision", fromlist=["FAMILIES"]).FAMILIES.values())

    # one family: the same films, only its changes
    result = cli("precision", "--model", trained / "best.ckpt", "--images", images, "--labels",
                 trained / "val.csv", "--limit", "4", "--workers", "1", "--family", "sensor noise",
                 "--out", tmp_path / "n", "--json")
    assert result.returncode == 0, result.stderr
    assert list(json.loads(result.stdout)["families"]) == ["sensor noise"]
    header = next(csv.reader((tmp_path / "n" / "deltas.csv").open()))
    assert header == ["id", "predicted_months", "sensor noise: SD 1 gray level", "sensor noise: SD 3 gray levels"]

    # framing views: every changed film is framed as the door frames it; rotation moves the mean of framings
    result = cli("precision", "--model", trained / "best.ckpt", "--images", images, "--labels",
                 trained / "val.csv", "--limit", "2", "--workers", "1", "--family", "mirroring", "--tta", "framings",
                 "--json")
    assert result.returncode == 0, result.stderr
    mirroring = json.loads(result.stdout)["changes"]["mirroring: left-right"]
    assert mirroring["max_abs"] < 0.5  # the framings keep the left-right symmetry of the flip views


# ------------------------------------------------------------------------------------------------ int8 calibration
@pytest.mark.slow
def test_int8_calibration_refits_batch_norm_and_keeps_the_rounded_weights(trained, synthetic, tmp_path):
    import json

    import torch

    from tests.conftest import cli

    images, _ = synthetic
    plain = cli("export", "--model", trained / "best.ckpt", "--out", tmp_path / "plain.pt")
    result = cli("export", "--model", trained / "best.ckpt", "--out", tmp_path / "cal.pt", "--calibrate-images",
                 images, "--calibrate-labels", trained / "train.csv", "--calibrate-films", "32")
    assert plain.returncode == 0 and result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["int8_calibration"]
    assert report["films"] == 32 and report["mean_abs_shift_months"][1] <= report["mean_abs_shift_months"][0]
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("plain.pt", "cal.pt"))
    assert b["card"]["int8_calibration"] == report
    ints = [k for k, t in a["state_dict"].items() if t.dtype == torch.int8]
    assert ints and all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in ints)  # same rounding
    means = [k for k in a["state_dict"] if k.endswith("running_mean")]
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in means)  # only statistics moved

    half = cli("export", "--out", tmp_path / "x.pt", "--calibrate-images", images)
    assert half.returncode != 0 and "go together" in half.stderr and "Traceback" not in half.stderr
