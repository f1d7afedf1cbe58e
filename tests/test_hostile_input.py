"""Hostile input: a deflated DICOM bomb, absurd dates, two batch runs on one CSV, nonsense batch options, frames,
control characters and megabyte form fields. Each is one line and a 4xx or exit 2, never a traceback or a 500."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, cli

pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'boneage[serve]')")
from pydicom.uid import DeflatedExplicitVRLittleEndian  # noqa: E402

from boneage.errors import UserError  # noqa: E402
from tests.test_dicom import STORED12, make_dicom, to_bytes  # noqa: E402

EXAMPLE = REPO / "examples" / "14471.jpg"


def deflated(ds) -> bytes:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def bomb(pixel_bytes: int = 64 << 20, **tags) -> bytes:
    """A deflated DICOM whose header announces a 48 x 40 film and whose pixel data inflates to `pixel_bytes` of zeros
    (64 MB: 64 KB on disk)."""
    ds = make_dicom(STORED12, bits=12, PatientSex="F", **tags)
    ds.PixelData = bytes(pixel_bytes)
    return deflated(ds)


@pytest.fixture(scope="module")
def client(tiny_model):
    from fastapi.testclient import TestClient

    from boneage.inference.loading import load_predictor
    from boneage.serving.answer import Answerer
    from boneage.serving.app import create_app

    return TestClient(create_app(Answerer(load_predictor([str(tiny_model)], "torch")), max_upload_mb=2))


def _post(client, data: bytes, name="x.jpg", **form):
    return client.post("/predict", files={"file": (name, data)}, data={k: str(v) for k, v in form.items()})


def _one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------------------------- deflated DICOM
def test_a_deflated_dicom_is_read_as_its_uncompressed_twin():
    from boneage.dicom import read_dicom

    ds = make_dicom(STORED12, bits=12, PatientSex="M")
    plain, packed = read_dicom(to_bytes(ds), "a.dcm"), read_dicom(deflated(ds), "b.dcm")
    np.testing.assert_array_equal(plain.pixels, packed.pixels)
    assert packed.male is True and packed.transfer_syntax == "Deflated Explicit VR Little Endian"


def test_a_deflated_bomb_is_refused_before_it_is_inflated(tmp_path):
    import tracemalloc

    from pydicom.uid import generate_uid

    from boneage.data.images import read_image
    from boneage.dicom import dcmread, read_dicom
    from boneage.hospital.answer import read_header

    data = bomb(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    assert len(data) < 200_000
    (tmp_path / "bomb.dcm").write_bytes(data)
    tracemalloc.start()
    try:
        for source in (data, tmp_path / "bomb.dcm"):
            with pytest.raises(UserError, match=r"^bomb.dcm: a deflated DICOM that inflates to more than 8 MB, far "
                                                r"more than the 3,840 bytes of pixel data its header announces"):
                read_dicom(source, "bomb.dcm")
        with pytest.raises(UserError, match="^bomb.dcm: a deflated DICOM"):
            read_image(data, "bomb.dcm")
        header = dcmread(data, "bomb.dcm", stop_before_pixels=True)  # the header alone: a few KB inflated
        assert (header.Rows, header.Columns) == (48, 40)
        assert read_header(data, "bomb.dcm").Modality == "DX"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20  # pydicom alone inflated all 64 MB, twice


def test_a_deflated_film_past_the_ceiling_is_refused(monkeypatch):
    import boneage.dicom
    from boneage.dicom import read_dicom

    ds = make_dicom(np.zeros((1024, 1024), np.uint16), bits=16, PatientSex="F")  # 2 MB of pixels, as announced
    data = deflated(ds)
    assert read_dicom(data, "big.dcm").pixels.shape == (1024, 1024)
    monkeypatch.setattr(boneage.dicom, "MAX_INFLATED_BYTES", 1 << 20)
    with pytest.raises(UserError, match="^big.dcm: a deflated DICOM that inflates to more than 1 MB"):
        read_dicom(data, "big.dcm")


def test_a_deflated_film_announcing_too_many_pixels_is_refused_before_its_pixels_are_inflated():
    import tracemalloc

    from boneage.dicom import read_dicom

    ds = make_dicom(STORED12, bits=12, PatientSex="F")
    ds.Rows = ds.Columns = 20000  # 400 megapixels announced; the data inflate to 64 MB before they run out
    ds.PixelData = bytes(64 << 20)
    data = deflated(ds)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"^big.dcm: image too large \(20000 x 20000 pixels\)"):
            read_dicom(data, "big.dcm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20  # the header alone was inflated


def test_the_service_refuses_a_deflated_bomb_with_a_400(client):
    from boneage.serving.app import decoded_pixels

    data = bomb()
    assert decoded_pixels(data) == 48 * 40  # the admission reads the header without inflating the rest
    r = _post(client, data, "bomb.dcm")
    assert r.status_code == 400 and r.json()["detail"].startswith("bomb.dcm: a deflated DICOM that inflates")


def test_batch_scores_past_a_deflated_bomb(tiny_model, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "bomb.dcm").write_bytes(bomb())
    (folder / "ok.dcm").write_bytes(deflated(make_dicom(STORED12, bits=12, PatientSex="F")))
    out = tmp_path / "scores.csv"
    result = cli("predict", folder, "--out", out, "--model", tiny_model, "--no-checks")
    assert result.returncode == 0, result.stderr
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    assert "inflates to more than" in rows["bomb.dcm"]["error"] and rows["ok.dcm"]["bone_age_months"]


# ------------------------------------------------------------------------------------------------------- dates
def test_dates_at_the_ends_of_the_calendar_do_not_crash_the_arithmetic():
    from boneage.sds import age_from_dates

    assert age_from_dates("9999-12-31", "9999-12-31") == 0.0
    assert age_from_dates("9999-11-30", "9999-12-31") == pytest.approx(1 + 1 / 31)
    assert age_from_dates("0001-01-01", "0001-02-01") == 1.0


@pytest.mark.parametrize(("form", "fragment"), [
    ({"birth_date": "9999-12-31", "study_date": "9999-12-31"}, "study date 9999-12-31 is in the future"),
    ({"birth_date": "0001-01-01", "study_date": "2020-01-01"}, "expected 0 to 300"),
    ({"birth_date": "2020-01-02", "study_date": "2020-01-01"}, "is before the date of birth"),
    ({"birth_date": "2020-13-01", "study_date": "2021-01-01"}, "birth date: expected a date as YYYY-MM-DD"),
], ids=["year-9999", "year-0001", "study-before-birth", "malformed"])
def test_absurd_dates_are_a_400_in_the_service(client, form, fragment):
    r = _post(client, EXAMPLE.read_bytes(), "hand.jpg", sex="M", **form)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["detail"]


def test_absurd_dates_are_one_line_in_the_cli(tiny_model):
    result = cli("predict", EXAMPLE, "--sex", "M", "--dob", "9999-12-31", "--study-date", "9999-12-31", "--model",
                 tiny_model)
    _one_line_error(result, "study date 9999-12-31 is in the future")


def test_absurd_header_dates_are_ignored_with_a_warning_not_a_failed_batch(tiny_model, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    for name, born, study in (("future.dcm", "99991231", "99991231"), ("ancient.dcm", "00010101", "20200101"),
                              ("reversed.dcm", "20200102", "20200101"), ("fine.dcm", "20100115", "20200115")):
        ds = make_dicom(STORED12, bits=12, PatientSex="M", PatientBirthDate=born, StudyDate=study)
        (folder / name).write_bytes(to_bytes(ds))
    out = tmp_path / "scores.csv"
    result = cli("predict", folder, "--out", out, "--model", tiny_model, "--no-checks")
    assert result.returncode == 0, result.stderr
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    assert all(r["bone_age_months"] for r in rows.values()) and len(rows) == 4
    assert "9999-12-31 is in the future and was ignored" in rows["future.dcm"]["warnings"]
    assert not rows["future.dcm"]["chronological_age_months"]
    assert "out of range and was ignored" in rows["ancient.dcm"]["warnings"]
    assert "before its birth date" in rows["reversed.dcm"]["warnings"]
    assert float(rows["fine.dcm"]["chronological_age_months"]) == 120.0


# ------------------------------------------------------------------------------------------------------- batch
def _films(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"f{i}.dcm").write_bytes(to_bytes(make_dicom(STORED12, bits=12, PatientSex="F")))
    return folder


def test_a_second_run_on_the_same_out_is_refused_while_the_first_writes(tiny_model, tmp_path):
    films, out = _films(tmp_path / "films", 3), tmp_path / "scores.csv"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from boneage.batch import writing\n"
                               "with writing(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli("predict", films, "--out", out, "--model", tiny_model, "--no-checks")
        _one_line_error(result, f"--out {out}: another boneage run is writing it")
        assert not out.exists() or out.read_text() == ""
    finally:
        holder.kill()
        holder.wait()
    result = cli("predict", films, "--out", out, "--model", tiny_model, "--no-checks")  # the lock went with it
    assert result.returncode == 0 and json.loads(result.stdout)["scored"] == 3


def test_two_runs_started_together_score_each_film_once(tiny_model, tmp_path):
    """Two runs at once (threads: each opens the lock file itself, as two processes do) on one CSV."""
    from concurrent.futures import ThreadPoolExecutor

    from boneage.assessment import Case
    from boneage.batch import score
    from boneage.inference.loading import load_predictor

    films, out = _films(tmp_path / "films", 8), tmp_path / "scores.csv"
    predictor = load_predictor([str(tiny_model)], "torch")
    cases = [Case(data=f, name=str(f), check=False) for f in sorted(films.iterdir())]

    def run(_):
        try:
            return score(cases, predictor, out, batch_size=2, workers=1)
        except UserError as exc:
            return str(exc)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, range(2)))
    images = [r["image"] for r in csv.DictReader(out.open())]
    assert sorted(images) == sorted(set(images)) and len(images) == 8, results  # no film twice
    for result in results:
        assert isinstance(result, dict) or "another boneage run is writing it" in result, result
    assert sum(r["scored"] for r in results if isinstance(r, dict)) == 8


@pytest.mark.parametrize(("args", "fragment"), [
    (["--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["--workers", "two"], "argument --workers: expected a whole number, got 'two'"),
])
def test_nonsense_batch_options_are_refused(tiny_model, tmp_path, args, fragment):
    films = _films(tmp_path / "films", 2)
    result = cli("predict", films, "--out", tmp_path / "s.csv", "--model", tiny_model, "--no-checks", *args)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.csv").exists()


def test_out_naming_a_folder_is_one_line(tiny_model, tmp_path):
    films = _films(tmp_path / "films", 2)
    result = cli("predict", films, "--out", tmp_path, "--model", tiny_model, "--no-checks")
    _one_line_error(result, f"--out {tmp_path}: is a folder")
    result = cli("predict", films, "--out", films / "f0.dcm" / "s.csv", "--model", tiny_model, "--no-checks")
    _one_line_error(result, "its folder is a file")


def test_score_refuses_a_batch_size_below_one(tiny_model, tmp_path):
    from boneage.batch import score

    with pytest.raises(UserError, match="at least 1"):
        score([], object(), tmp_path / "s.csv", batch_size=-1)


# ----------------------------------------------------------------------------------------- frames, names, fields
@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_animated_gif_and_multipage_tiff_warn_like_a_multiframe_dicom(fmt):
    from boneage.assessment import Case, read

    hand = Image.open(EXAMPLE).convert("L")
    frames = [hand, Image.new("L", hand.size, 0), Image.new("L", hand.size, 255)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    for check in (True, False):
        prepared = read(Case(data=buf.getvalue(), name=f"hand.{fmt.lower()}", sex="M", check=check))
        assert "first of 3 frames" in prepared.warnings
        assert prepared.gray.mean() == pytest.approx(np.asarray(hand, np.float32).mean(), abs=1)


def test_control_characters_in_a_file_name_are_escaped_on_the_cli_lines(tiny_model, tmp_path):
    name = tmp_path / "x\x1b[31mred\x07.png"
    name.write_bytes(EXAMPLE.read_bytes())
    result = cli("predict", name, "--sex", "M", "--model", tiny_model, "--no-checks")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "x\\x1b[31mred\\x07.png: " in result.stdout
    frames = tmp_path / "y\x1b]0;title\x07.gif"
    Image.open(EXAMPLE).convert("L").save(frames, save_all=True, append_images=[Image.new("L", (64, 64))])
    result = cli("predict", frames, "--sex", "M", "--model", tiny_model, "--no-checks")
    assert "first of 2 frames" in result.stderr and "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_a_malformed_field_is_one_422_line_not_fastapis_list(client):
    r = _post(client, EXAMPLE.read_bytes(), sex="M", chronological_age_months="ten")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("chronological_age_months: ") and "'ten'" in detail
    r = client.post("/predict", data={"sex": "M"})  # no file at all
    assert r.status_code == 422 and r.json()["detail"].startswith("file: Field required")


@pytest.mark.parametrize("field", ["sex", "chronological_age_months", "birth_date", "heatmap"])
def test_a_megabyte_field_is_not_echoed_back_whole(client, field):
    form = {"sex": "M", field: "Z" * 1_000_000}
    if field == "birth_date":
        form["study_date"] = "2020-01-01"
    started = time.perf_counter()
    r = _post(client, EXAMPLE.read_bytes(), **form)
    assert r.status_code in (400, 422), r.text[:300]
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail) < 300 and "ZZZZ" in detail and "…" in detail
    assert time.perf_counter() - started < 10


def test_the_cli_does_not_echo_a_huge_value_whole(tiny_model):
    result = cli("predict", EXAMPLE, "--sex", "Q" * 100_000, "--model", tiny_model)
    _one_line_error(result, "--sex: expected M or F")
    assert len(result.stderr) < 300
