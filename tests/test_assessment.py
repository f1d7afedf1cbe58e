"""One assessment behind every door: the same rules for sex, age and dates, the same record from the CLI and the
service, batch scoring that records refusals and resumes, ensembles with an uncertainty, and a model spec that does
not depend on training options."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boneage.assessment import Case, resolve_age, resolve_sex
from boneage.errors import UserError
from tests.conftest import REPO, cli

EXAMPLE = REPO / "examples" / "14471.jpg"


class _Header:
    """The DICOM facts the rules read."""

    def __init__(self, male=None, age_months=None, study_date=None):
        self.male, self.age_months, self.study_date = male, age_months, study_date


@pytest.mark.parametrize("value,header,expected", [
    ("M", None, (True, "given")), ("f", None, (False, "given")), ("male", None, (True, "given")),
    ("1", None, (True, "given")), ("false", None, (False, "given")), (True, None, (True, "given")),
    (None, _Header(male=False), (False, "dicom")), ("M", _Header(male=False), (True, "given")),
    ("", _Header(male=True), (True, "dicom")),
    ("X", None, "sex must be M or F"), (None, None, "sex unknown: give M or F"),
    (None, _Header(), "the DICOM header has no PatientSex"),
])
def test_one_rule_for_sex(value, header, expected):
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            resolve_sex(value, header, "film.png")
    else:
        assert resolve_sex(value, header, "film.png") == expected


@pytest.mark.parametrize("case,header,expected", [
    (dict(age_months=120), None, (120.0, "given")),
    (dict(age_months=0), None, (0.0, "given")),
    (dict(birth_date="2012-01-15", study_date="2022-01-15"), None, (120.0, "dates")),
    (dict(birth_date="2012-01-15"), _Header(study_date="2022-01-15"), (120.0, "dates")),  # the DICOM's study date
    (dict(), _Header(age_months=96.0), (96.0, "dicom")),
    (dict(), None, (None, None)),
    (dict(age_months=-1), None, "chronological age of -1 months"),
    (dict(age_months=301), None, "expected 0 to 300"),
    (dict(birth_date="1012-01-15", study_date="2022-01-15"), None, "expected 0 to 300"),  # dates 1,000 years apart
    (dict(age_months=5, birth_date="2012-01-15"), None, "not both"),
    (dict(study_date="2022-01-15"), None, "goes with a birth date"),
    (dict(birth_date="2012-01-15"), None, "needs the study date"),
])
def test_one_rule_for_age_and_dates(case, header, expected):
    warnings: list[str] = []
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            resolve_age(Case(b"", **case), header, "film.png", warnings)
    else:
        got = resolve_age(Case(b"", **case), header, "film.png", warnings)
        assert (None if got[0] is None else pytest.approx(got[0], abs=0.5), got[1]) == expected
        assert not warnings


def test_an_absurd_age_in_a_dicom_header_is_ignored_with_a_warning():
    warnings: list[str] = []
    assert resolve_age(Case(b""), _Header(age_months=999 * 12.0), "x.dcm", warnings) == (None, None)
    assert "out of range" in warnings[0]


def test_the_cli_and_the_service_give_the_same_record(trained, capsys):
    from fastapi.testclient import TestClient

    from boneage.serving.answer import Answerer
    from boneage.serving.app import create_app

    model = trained / "best.ckpt"
    result = cli("predict", EXAMPLE, "--model", model, "--sex", "M", "--age", 114, "--json", "--no-checks")
    assert result.returncode == 0, result.stderr
    from_cli = json.loads(result.stdout)
    # the service always checks: compare with the CLI's checked run too
    checked = json.loads(cli("predict", EXAMPLE, "--model", model, "--sex", "M", "--age", 114, "--json").stdout)
    from boneage.inference.loading import load_predictor

    # the service's default predictor, as `boneage serve` builds it: the same runtime as the CLI's default
    client = TestClient(create_app(Answerer(load_predictor(model, "auto"))))
    r = client.post("/predict", files={"file": (str(EXAMPLE), EXAMPLE.read_bytes())},
                    data={"sex": "M", "chronological_age_months": "114"})
    assert r.status_code == 200, r.text
    from_service = {k: v for k, v in r.json().items() if k != "elapsed_ms"}
    assert from_service == checked
    assert from_cli["bone_age_months"] == checked["bone_age_months"]
    assert set(from_cli) == set(checked)
    for key in ("bone_age_months", "uncertainty_months", "uncertain", "sds", "chronological_age_source", "model"):
        assert key in from_service


def _film_bytes(seed: int) -> bytes:
    from boneage.data.synthetic import hand_phantom

    buf = io.BytesIO()
    Image.fromarray((hand_phantom(200, 160, seed=seed) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_batch_scoring_records_refusals_and_resumes(trained, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(5):
        (folder / f"{100 + i}.png").write_bytes(_film_bytes(i))
    (folder / "103.png").write_bytes(b"not an image")  # unreadable: a row with its reason, not a stop
    (folder / "notes.txt").write_text("not a film")  # not an image file: not listed
    labels = tmp_path / "labels.csv"
    labels.write_text("id,boneage,male\n100,50,True\n101,60,False\n102,70,True\n103,80,False\n104,90,True\n")
    out = tmp_path / "scores.csv"
    args = ("predict", folder, "--model", trained / "best.ckpt", "--labels", labels, "--out", out, "--no-checks")
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.splitlines()[-1])
    assert (counts["scored"], counts["refused"], counts["skipped_done"]) == (4, 1, 0)
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    assert set(rows) == {f"{100 + i}.png" for i in range(5)}
    assert rows["103.png"]["error"] and not rows["103.png"]["bone_age_months"]
    assert rows["101.png"]["sex"] == "F" and rows["100.png"]["sex"] == "M" and float(rows["100.png"]["bone_age_months"])
    again = cli(*args)
    assert json.loads(again.stdout.splitlines()[-1])["skipped_done"] == 5
    assert len(list(csv.DictReader(out.open()))) == 5  # nothing scored twice


def test_batch_scoring_matches_single_film_answers(trained, tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "7.png").write_bytes(_film_bytes(7))
    out = tmp_path / "s.csv"
    assert cli("predict", folder, "--model", trained / "best.ckpt", "--sex", "F", "--out", out,
               "--no-checks").returncode == 0
    row = next(csv.DictReader(out.open()))
    single = json.loads(cli("predict", folder / "7.png", "--model", trained / "best.ckpt", "--sex", "F", "--json",
                            "--no-checks").stdout)
    assert float(row["bone_age_months"]) == pytest.approx(single["bone_age_months"], abs=0.01)


def test_a_folder_needs_an_output_csv(trained, tmp_path):
    result = cli("predict", tmp_path, "--model", trained / "best.ckpt", "--sex", "F")
    assert result.returncode == 2 and "--out FILE.csv" in result.stderr


@pytest.fixture(scope="module")
def two_models(trained, tmp_path_factory):
    """The trained model and a copy with shifted weights: two members that disagree a little."""
    import torch

    from boneage.config import to_dict
    from boneage.inference.checkpoint import load_network
    from boneage.inference.weights import make_weights_file

    root = tmp_path_factory.mktemp("ensemble")
    model, spec, _ = load_network(trained / "best.ckpt")
    state = {k: (v + 0.02 * torch.randn_like(v) if v.is_floating_point() and v.dim() > 1 else v)
             for k, v in model.state_dict().items()}
    torch.save(make_weights_file(state, to_dict(spec), "float32"), root / "b.pt")
    return trained / "best.ckpt", root / "b.pt"


def test_an_ensemble_reports_its_members_and_their_spread(two_models, tmp_path):
    a, b = two_models
    one = json.loads(cli("predict", EXAMPLE, "--model", a, "--sex", "M", "--json", "--no-checks", "--tta",
                         "none").stdout)
    both = cli("predict", EXAMPLE, "--model", a, "--model", b, "--sex", "M", "--json", "--no-checks", "--tta", "none")
    assert both.returncode == 0, both.stderr
    both = json.loads(both.stdout)
    assert one["uncertainty_months"] == 0 and one["model"]["members"] == 1
    assert both["model"]["members"] == 2 and both["uncertainty_months"] > 0
    assert cli("export", "--model", a, "--model", b, "--out", tmp_path / "ens.pt", "--storage", "float32").returncode \
        == 0
    packed = json.loads(cli("predict", EXAMPLE, "--model", tmp_path / "ens.pt", "--sex", "M", "--json",
                            "--no-checks", "--tta", "none").stdout)
    assert packed["model"]["members"] == 2
    assert packed["bone_age_months"] == pytest.approx(both["bone_age_months"], abs=0.05)


def test_averaging_two_runs_gives_one_network_halfway_between_them(two_models, tmp_path):
    """`export --average` (a model soup): one network, each weight the mean of the runs'; a network of another shape
    is refused with one line."""
    import torch

    from boneage.inference.checkpoint import load_network

    a, b = two_models
    result = cli("export", "--model", a, "--model", b, "--average", "--out", tmp_path / "soup.pt", "--storage",
                 "float32")
    assert result.returncode == 0, result.stderr
    soup, wa, wb = (load_network(p)[0].state_dict() for p in (tmp_path / "soup.pt", a, b))
    name = next(k for k, v in wa.items() if v.is_floating_point() and v.dim() > 1)
    assert not torch.allclose(wa[name], wb[name])
    assert torch.allclose(soup[name], (wa[name] + wb[name]) / 2, atol=1e-6)
    one = json.loads(cli("predict", EXAMPLE, "--model", tmp_path / "soup.pt", "--sex", "M", "--json", "--no-checks",
                         "--tta", "none").stdout)
    assert one["model"]["members"] == 1


def test_runs_of_different_networks_do_not_average(two_models, tmp_path):
    import torch

    from boneage.config import to_dict
    from boneage.inference.checkpoint import load_network
    from boneage.inference.weights import make_weights_file

    a, _ = two_models
    model, spec, _ = load_network(a)
    other = to_dict(spec)
    other["preprocess"]["image_size"] = 2 * other["preprocess"]["image_size"]
    torch.save(make_weights_file(model.state_dict(), other, "float32"), tmp_path / "big.pt")
    result = cli("export", "--model", a, "--model", tmp_path / "big.pt", "--average", "--out", tmp_path / "x.pt")
    assert result.returncode == 2 and "only runs of one network average" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.pt").exists()


def test_an_unusually_uncertain_answer_is_flagged(trained):
    from boneage.assessment import Prepared, report
    from boneage.inference.predictor import TorchPredictor

    predictor = TorchPredictor.load(trained / "best.ckpt")
    predictor.card["uncertain_above_months"] = 3.0
    p = Prepared(Case(b"", name="x.png"), np.zeros((10, 10)), np.zeros((64, 64), np.uint8), True, "given", None, None)
    calm, wild = report(p, np.array([100.0, 101.0]), predictor), report(p, np.array([90.0, 110.0]), predictor)
    assert not calm.uncertain and calm.uncertainty_months == 0.5
    assert wild.uncertain and any("uncertain" in w for w in wild.warnings)


def test_inference_reads_the_model_spec_not_the_training_options(trained, tmp_path):
    """A weights file whose training config has options this version does not know still loads and predicts."""
    import torch

    from boneage.inference.checkpoint import load_network

    ckpt = torch.load(trained / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["boneage"]["config"]["an_option_removed_long_ago"] = 3
    ckpt["boneage"]["config"].pop("epochs")
    torch.save(ckpt, tmp_path / "old.ckpt")
    model, spec, _ = load_network(tmp_path / "old.ckpt")
    assert spec.model.arch == "tiny_cnn" and spec.training["an_option_removed_long_ago"] == 3


def test_predict_draws_the_films_on_the_reference_chart(trained, tmp_path):
    out = tmp_path / "chart.png"
    result = cli("predict", EXAMPLE, EXAMPLE, "--model", trained / "best.ckpt", "--sex", "M", "--age", 114,
                 "--chart", out, "--no-checks")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_age = cli("predict", EXAMPLE, "--model", trained / "best.ckpt", "--sex", "M", "--chart", out, "--no-checks")
    assert no_age.returncode == 2 and "the chart needs the chronological age" in no_age.stderr
