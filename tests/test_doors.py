"""One film through every door gives one number: the CLI line and --json, the batch CSV, the service's JSON, the
Python API, `explain`, the heatmap caption and the DICOM objects. And the batch CSV's own promises: every field that
fits a cell, the model's identity on each row, a resume with other settings refused, films in flight bounded."""

from __future__ import annotations

import csv
import json
import re
import threading
import time

import numpy as np
import pytest

import boneage
from boneage.assessment import Case
from boneage.record import COLUMNS
from tests.conftest import REPO, cli

EXAMPLE = REPO / "examples" / "14471.jpg"


@pytest.fixture(scope="module")
def model(trained):
    return trained / "best.ckpt"


@pytest.fixture(scope="module")
def reference(model):
    """The Python API's answer, on the CLI's default runtime: what every door must report."""
    return boneage.assess(EXAMPLE, "M", age_months=114, model=boneage.load_model(model), check=False)


def _cli_json(model, *extra):
    done = cli("predict", EXAMPLE, "--model", model, "--sex", "M", "--age", 114, "--no-checks", "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _cli_line(model, tmp_path):
    done = cli("predict", EXAMPLE, "--model", model, "--sex", "M", "--age", 114, "--no-checks")
    assert done.returncode == 0, done.stderr
    return float(re.search(r": ([\d.]+) ± ", done.stdout).group(1))


def _batch(model, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / EXAMPLE.name).write_bytes(EXAMPLE.read_bytes())
    out = tmp_path / "scores.csv"
    done = cli("predict", folder, "--model", model, "--sex", "M", "--age", 114, "--no-checks", "--out", out)
    assert done.returncode == 0, done.stderr
    return float(next(csv.DictReader(out.open()))["bone_age_months"])


def _service(model, tmp_path):
    from fastapi.testclient import TestClient

    from boneage.serving.app import build

    client = TestClient(build([str(model)]))
    r = client.post("/predict", files={"file": (EXAMPLE.name, EXAMPLE.read_bytes())},
                    data={"sex": "M", "chronological_age_months": "114", "heatmap": "true"})
    assert r.status_code == 200, r.text
    return r.json()["bone_age_months"]


def _explain(model, tmp_path):
    done = cli("explain", EXAMPLE, "--model", model, "--sex", "M", "--out", tmp_path / "fig", "--json", "--no-checks")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["bone_age_months"]


def _heatmap_caption(model, tmp_path, monkeypatch):
    """The caption the heatmap figure is titled with."""
    import boneage.explain.files as files

    titles = []
    real = files.saliency_figure
    monkeypatch.setattr(files, "saliency_figure", lambda *a, **k: titles.append(a[3]) or real(*a, **k))
    _cli_json(model, "--heatmap", tmp_path / "maps", "--runtime", "auto")
    return float(re.match(r"bone age ([\d.]+) ± ", titles[0]).group(1))


def _dicom(model, tmp_path):
    pytest.importorskip("highdicom")
    from pydicom import dcmread

    from tests.pacs import dicom_bytes, film, sr_value

    path = tmp_path / "hand.dcm"
    path.write_bytes(dicom_bytes(film("14471.jpg", sex="M")))  # the same pixels as the JPEG
    out = tmp_path / "dicom-out"
    done = cli("predict", path, "--model", model, "--json", "--no-checks", "--dicom-out", out)
    assert done.returncode == 0, done.stderr
    return sr_value(dcmread(out / "hand.boneage-sr.dcm"), "BA")


DOORS = {"cli --json": lambda m, t, mp: _cli_json(m)["bone_age_months"], "cli line": lambda m, t, mp: _cli_line(m, t),
         "batch csv": lambda m, t, mp: _batch(m, t), "service": lambda m, t, mp: _service(m, t),
         "explain": lambda m, t, mp: _explain(m, t), "heatmap caption": _heatmap_caption,
         "dicom sr": lambda m, t, mp: _dicom(m, t)}


@pytest.mark.parametrize("door", DOORS)
def test_every_door_reports_the_number_of_the_one_assessment(door, model, reference, tmp_path, monkeypatch):
    # The line and the caption print one decimal; the rest carry the record's two.
    tolerance = 0.051 if door in ("cli line", "heatmap caption") else 0.006
    assert DOORS[door](model, tmp_path, monkeypatch) == pytest.approx(reference.bone_age_months, abs=tolerance)


def test_the_api_takes_a_path_bytes_or_an_array_and_gives_one_answer(model, reference):
    from PIL import Image

    net = boneage.load_model(model)
    gray = np.asarray(Image.open(EXAMPLE).convert("L"), dtype=np.float32)
    for film in (EXAMPLE.read_bytes(), gray):
        got = boneage.assess(film, "M", age_months=114, model=net, check=False)
        assert got.bone_age_months == pytest.approx(reference.bone_age_months, abs=1e-4)
    assert reference.sds is not None and reference.to_dict()["sds"]["sds"] == round(reference.sds.sds, 2)
    with pytest.raises(boneage.UserError, match="2-D gray"):
        boneage.assess(np.zeros((2, 3, 4, 5)), "M", model=net)


def test_the_batch_csv_carries_every_field_of_the_json_that_fits_a_cell(model, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "old.jpg").write_bytes(EXAMPLE.read_bytes())
    out = tmp_path / "scores.csv"
    # 26 years: outside the reference, so the SDS is empty and the note says why
    assert cli("predict", folder, "--model", model, "--sex", "M", "--age", 290, "--no-checks", "--out",
               out).returncode == 0
    row = next(csv.DictReader(out.open()))
    assert list(row) == COLUMNS
    record = _cli_json(model)  # the JSON of a film with its age known, for its keys
    flat = {k for k in record if not isinstance(record[k], dict)} | {f"model_{k}" for k in record["model"]}
    assert flat <= set(COLUMNS)
    assert row["sds"] == "" and row["sds_flag"] == "above_reference" and row["sds_note"]
    assert row["model_name"] and re.fullmatch(r"[0-9a-f]{12}", row["model_version"]) and row["model_views"] == "flip"


def test_a_resume_with_another_model_or_views_is_refused_in_one_line(model, trained, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(EXAMPLE.read_bytes())
    out = tmp_path / "scores.csv"
    args = ("predict", folder, "--model", model, "--sex", "M", "--no-checks", "--out", out)
    assert cli(*args).returncode == 0
    again = cli(*args, "--tta", "flips")
    assert again.returncode == 2 and "scored with other settings" in again.stderr
    assert again.stderr.count("\n") == 1
    assert len(list(csv.DictReader(out.open()))) == 1  # nothing appended


def test_batch_scoring_keeps_the_films_in_flight_bounded(monkeypatch):
    import boneage.batch as batch

    started, lock = [], threading.Lock()

    def slow_prepare(case, predictor):
        with lock:
            started.append(case.label)
        time.sleep(0.002)
        raise boneage.UserError(f"{case.label}: refused")  # a refusal is the cheapest thing to pass along

    monkeypatch.setattr(batch, "prepare", slow_prepare)
    cases = [Case(b"x", name=f"{i}.png") for i in range(200)]
    consumed = 0
    for _ in batch._prepared(cases, None, workers=2, ahead=6):
        consumed += 1
        time.sleep(0.005)  # the model, slower than decoding
        assert len(started) - consumed <= 6
    assert consumed == 200
