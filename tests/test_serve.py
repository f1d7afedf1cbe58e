"""The service: every answer is JSON, bad input is a 4xx naming the problem, and the server outlives every request."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "14471.jpg"


@pytest.fixture(scope="module")
def app(trained):
    from boneage.inference.predictor import TorchPredictor
    from boneage.serving.answer import Answerer
    from boneage.serving.app import create_app

    model = trained / "best.ckpt"
    return create_app(Answerer(TorchPredictor.load(model)), max_upload_mb=2)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def _post(client, data: bytes, name="x.png", **form):
    return client.post("/predict", files={"file": (name, data)}, data={k: str(v) for k, v in form.items()})


def test_health_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()  # the schema; no /docs page (see test_serve_hostile)
    assert "/predict" in spec["paths"] and "/health" in spec["paths"]


def test_predict_with_age_gives_bone_age_and_sds(client):
    r = _post(client, EXAMPLE.read_bytes(), "14471.jpg", sex="M", chronological_age_months=114)
    assert r.status_code == 200, r.text
    d = r.json()
    assert 0 < d["bone_age_months"] < 300 and d["sex"] == "M" and d["sex_source"] == "given"
    assert d["sds"]["sd_months"] == pytest.approx(9.39, abs=0.01)  # boys: 9.00 at 108, 9.79 at 120 -> 9.395 at 114
    assert d["bone_age"].endswith(" m") and d["uncertainty_months"] >= 0 and d["uncertain"] in (True, False)


def test_sixteen_bit_png_of_any_shape(client):
    gray = np.asarray(Image.open(EXAMPLE).convert("L"), dtype=np.float64)
    big = Image.fromarray((gray * 257).astype(np.uint16)).resize((420, 560))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    r = _post(client, buf.getvalue(), "big16.png", sex="M")
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (420, 560)


def test_dicom_sex_and_age_from_the_header(client):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    gray = np.asarray(Image.open(EXAMPLE).convert("L"), dtype=np.uint16) * 16  # 12-bit
    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientSex, ds.PatientBirthDate, ds.StudyDate, ds.Modality = "M", "20100101", "20200101", "DX"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = gray.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = _post(client, buf.getvalue(), "hand.dcm")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["sex"] == "M" and d["sex_source"] == "dicom"
    assert d["chronological_age_months"] == pytest.approx(120, abs=0.5) and d["chronological_age_source"] == "dicom"


def test_a_dicom_with_an_unknown_transfer_syntax_is_a_400(client):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import UID, DigitalXRayImageStorageForPresentation

    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.SOPClassUID, ds.Modality, ds.PatientSex = DigitalXRayImageStorageForPresentation, "DX", "F"
    ds.set_pixel_data(np.zeros((300, 300), np.uint16), "MONOCHROME2", 12)
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    r = _post(client, buf.getvalue(), "odd.dcm")
    assert r.status_code == 400 and r.json()["detail"].startswith("odd.dcm: unknown transfer syntax UID 1.2.3.4.5.6")

@pytest.mark.parametrize(
    ("data", "form", "fragment"),
    [
        (b"hello, not an image", {"sex": "M"}, "not an image"),
        (None, {}, "sex unknown: give M or F"),
        (None, {"sex": "X"}, "sex must be M or F"),
        (b"", {"sex": "F"}, "empty upload"),
        ("constant", {"sex": "F"}, "constant"),
        (None, {"sex": "F", "birth_date": "2010-01-01"}, "a birth date needs the study date"),
    ],
    ids=["not-image", "no-sex", "bad-sex", "empty", "constant", "one-date"],
)
def test_bad_input_is_a_400_with_a_reason(client, data, form, fragment):
    if data is None:
        data = EXAMPLE.read_bytes()
    elif data == "constant":
        buf = io.BytesIO()
        Image.new("L", (300, 300), 128).save(buf, "PNG")
        data = buf.getvalue()
    r = _post(client, data, "upload.png", **form)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["detail"]
    assert client.get("/health").status_code == 200  # still serving


def test_upload_limit_is_a_413(client):
    r = _post(client, b"\0" * (3 * 1024 * 1024), "huge.png", sex="M")
    assert r.status_code == 413 and "too large" in r.json()["detail"]



def _post_chunked(app, chunks) -> tuple[int, dict, int]:
    """POST /predict to the ASGI app as a chunked upload, no Content-Length: (status, answer, body chunks it read)."""
    import asyncio
    import json

    read, chunks, sent = 0, iter(chunks), []

    async def receive():
        nonlocal read
        chunk = next(chunks, None)
        read += chunk is not None
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"testserver"), (b"transfer-encoding", b"chunked"),
               (b"content-type", b"multipart/form-data; boundary=BOUNDARY")]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), read


def test_a_chunked_upload_is_cut_at_the_limit_not_spooled_whole(app):
    def body():
        yield (b'--BOUNDARY\r\nContent-Disposition: form-data; name="sex"\r\n\r\nM\r\n--BOUNDARY\r\n'
               b'Content-Disposition: form-data; name="file"; filename="big.png"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        megabyte = b"\0" * (1 << 20)
        for _ in range(100):  # 100 MB offered to a service whose limit is 2 MB
            yield megabyte
        yield b"\r\n--BOUNDARY--\r\n"

    status, answer, read = _post_chunked(app, body())
    assert status == 413 and "too large" in answer["detail"]
    assert read <= 4  # the header chunk and the megabytes up to the limit: the rest never left the client


def test_two_files_in_one_request_are_refused(client):
    data = EXAMPLE.read_bytes()
    r = client.post("/predict", files=[("file", ("a.jpg", data)), ("file", ("b.jpg", data))], data={"sex": "M"})
    assert r.status_code == 400 and "file (2 times)" in r.json()["detail"]


def test_a_refusal_never_carries_terminal_control_codes(client):
    r = _post(client, b"hello, not an image", "\x1b[31mred\x1b[0m.png", sex="M")
    assert r.status_code == 400, r.text
    assert "\x1b" not in r.json()["detail"] and r.json()["detail"].startswith("\\x1b[31mred\\x1b[0m.png: ")



def test_out_of_range_age_is_a_400_and_age_outside_the_table_is_flagged(client):
    r = _post(client, EXAMPLE.read_bytes(), sex="M", chronological_age_months=-3)
    assert r.status_code == 400 and "expected 0 to 300" in r.json()["detail"]  # the CLI's rule and message
    d = _post(client, EXAMPLE.read_bytes(), sex="F", chronological_age_months=200).json()
    assert d["sds"]["sds"] is None and d["sds"]["flag"] == "above_reference"


def test_heatmap_preview_and_chart_are_png_data_urls(client):
    d = _post(client, EXAMPLE.read_bytes(), "14471.jpg", sex="M", heatmap="true", preview="true", chart="true",
              chronological_age_months=114).json()
    for key in ("heatmap_png", "preview_png", "chart_png"):
        assert d[key].startswith("data:image/png;base64,")
    no_age = _post(client, EXAMPLE.read_bytes(), "14471.jpg", sex="M", chart="true").json()
    assert "chart_png" not in no_age  # no chronological age, no point on the chart


def test_concurrent_requests_all_succeed(client):
    from concurrent.futures import ThreadPoolExecutor

    data = EXAMPLE.read_bytes()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: _post(client, data, sex="F").status_code, range(16)))
    assert codes == [200] * 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_page_in_a_real_browser(app, tmp_path):
    """Chromium (Debian's) driven by Playwright: pick a file, set sex and age, see the bone age and SDS."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium on this machine (scripts/test.sh installs Debian's): browser test skipped")
    sync_api = pytest.importorskip("playwright.sync_api")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file", str(EXAMPLE))
            page.select_option("#sex", "M")
            page.fill("#age", "114")
            page.click("#go")
            page.wait_for_selector("#result", state="visible", timeout=60_000)
            assert "months" in page.inner_text("#bone-age")
            facts = page.inner_text("#facts")
            assert "Bone-age SDS" in facts and "Greulich" in facts
            assert page.eval_on_selector("#heat", "img => img.naturalWidth") > 0
            assert page.eval_on_selector("#chart", "img => img.naturalWidth") > 0  # the child on the G&P chart
            assert "±" in page.inner_text("#bone-age") and "Uncertainty" in facts
            page.screenshot(path=str(os.environ.get("BONEAGE_PAGE_SHOT", tmp_path / "page.png")), full_page=True)
            page.set_input_files("#file", str(Path(__file__)))  # not an image: the page shows the reason
            page.click("#go")
            page.wait_for_selector("#error", state="visible", timeout=30_000)
            assert "not an image" in page.inner_text("#error")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------- memory under large images
def test_the_preview_of_a_large_film_makes_no_full_size_copy():
    import tracemalloc

    from boneage.serving.answer import _preview

    film = np.random.default_rng(0).random((4000, 3000), dtype=np.float32)  # 48 MB
    tracemalloc.start()
    small = _preview(film)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert small.shape == (768, 576) and small.dtype == np.uint8
    assert peak < film.nbytes / 2  # the display window used to take ~4 full-size float copies


def _holder(budget, pixels, entered, leave):
    def run():
        with budget.hold(pixels):
            entered.set()
            leave.wait(10)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_pixel_budget_admits_in_order_within_its_limit_and_a_larger_image_alone():
    from boneage.serving.app import PixelBudget

    budget = PixelBudget(100)
    a, b, c = (threading.Event() for _ in range(3))
    leave_a, leave_b, leave_c = (threading.Event() for _ in range(3))
    _holder(budget, 60, a, leave_a)
    assert a.wait(5)
    _holder(budget, 300, b, leave_b)  # larger than the whole budget: waits for an empty one, then runs alone
    time.sleep(0.05)
    _holder(budget, 10, c, leave_c)  # would fit now, but comes after b: first come, first served
    assert not b.wait(0.2) and not c.is_set() and budget.used == 60
    leave_a.set()
    assert b.wait(5) and budget.used == 300
    assert not c.wait(0.2)
    leave_b.set()
    assert c.wait(5)
    leave_c.set()


def test_small_films_are_not_queued_behind_large_ones():
    from boneage.serving.app import Admission

    admission = Admission(1.0)  # 1 megapixel: large films go one at a time, small ones (up to 100,000) the rest
    big1, big2, small = (threading.Event() for _ in range(3))
    leave = threading.Event()
    _holder(admission, 700_000, big1, leave)
    assert big1.wait(5)
    _holder(admission, 700_000, big2, leave)
    _holder(admission, 100_000, small, leave)
    assert small.wait(5) and not big2.is_set()
    leave.set()
    assert big2.wait(5)


def test_the_service_bounds_the_pixels_it_decodes_at_once():
    from boneage.serving.app import create_app, decoded_pixels

    lock, now, most = threading.Lock(), [0], [0]

    class Recorder:  # stands in for the model: notes the decoded pixels in work at once
        def answer(self, data, name, inputs):
            pixels = decoded_pixels(data)
            with lock:
                now[0] += pixels
                most[0] = max(most[0], now[0])
            time.sleep(0.05)
            with lock:
                now[0] -= pixels
            return {"image": name}

    def png_of(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (side, side), 7).save(buf, "PNG")
        return buf.getvalue()

    client = TestClient(create_app(Recorder(), max_decoding_mpx=1.0, per_client=16))
    uploads = [png_of(600)] * 8 + [png_of(200)] * 8  # 360,000 and 40,000 pixels
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda d: _post(client, d, sex="M").status_code, uploads))
    assert codes == [200] * 16
    assert 360_000 <= most[0] <= 1_000_000  # at most two large (750,000) and six small (250,000) at once
