"""`boneage node` against a real PACS: Orthanc (Debian's package) on loopback routes hand films to the node with a
Lua script, and the answers come back into the same study. Also: what the node refuses and why, films sent twice,
answers waiting while the PACS is down, and a kill -9 with answers pending."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings

import pytest

pytest.importorskip("pynetdicom", reason="pynetdicom is not installed (pip install 'boneage[node]')")
pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'boneage[node]')")
pytest.importorskip("dicomweb_client", reason="dicomweb-client is not installed (pip install 'boneage[node]')")
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian  # noqa: E402

from boneage.hospital.delivery import StoreSCU, StowRS  # noqa: E402
from boneage.hospital.node import Node, Settings  # noqa: E402
from boneage.hospital.queue import Queue  # noqa: E402
from boneage.hospital.results import Algorithm  # noqa: E402
from tests.conftest import cli  # noqa: E402
from tests.pacs import (  # noqa: E402
    AET,
    DCIODVFY,
    DICOMWEB_PLUGIN,
    HOSPITAL,
    MISSING_ORTHANC,
    ORTHANC,
    REPO,
    Orthanc,
    dciodvfy_errors,
    film,
    free_port,
    make_tiny_model,
    send,
    sr_value,
    wait_for,
)

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason=MISSING_ORTHANC)


@pytest.fixture(scope="module")
def shipped():
    """The shipped model on PyTorch (no ONNX conversion in the tests), as `boneage predict --runtime torch` loads it."""
    from boneage.inference.loading import load_predictor

    predictor = load_predictor(None, "torch")
    return predictor, Algorithm.of(predictor)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    if ORTHANC is None:
        pytest.skip(MISSING_ORTHANC)
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), node_port=free_port())
    orthanc.start()
    yield orthanc
    orthanc.stop()


def _node(shipped, queue_dir, port, destination, **settings) -> Node:
    predictor, algorithm = shipped
    node = Node(Settings(port=port, allow_aets=(AET,), worker_poll_s=0.2, sender_poll_s=0.2, **settings),
                Queue(queue_dir, algorithm.identity, max_attempts=1000, retry_delay_s=0.3, max_delay_s=1.0),
                predictor, algorithm, destination)
    node.start()
    return node


@pytest.fixture(scope="module")
def node(pacs, shipped, tmp_path_factory):
    """The node Orthanc routes to, answering by C-STORE to Orthanc."""
    n = _node(shipped, tmp_path_factory.mktemp("queue"), pacs.node_port,
              StoreSCU(AET, "127.0.0.1", pacs.dicom_port, "BONEAGE"), max_bytes=8 << 20)
    yield n
    n.stop()


def answered(pacs, study_uid):
    """The study's SR and picture, once both are there."""
    found = pacs.answers(study_uid)
    return found if found.get("SR") and found.get("OT") else None


def echo(port: int, calling: str = AET) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="BONEAGE")
    ok = assoc.is_established and assoc.send_c_echo().Status == 0
    if assoc.is_established:
        assoc.release()
    return ok


# ------------------------------------------------------------------------------------------------ end to end
@needs_orthanc
def test_a_hand_film_uploaded_to_the_pacs_comes_back_answered_in_its_study(pacs, node, tmp_path, caplog):
    caplog.set_level("INFO", logger="boneage.node")
    ds = film("14471.jpg", sex="M")
    path = tmp_path / "hand.dcm"
    ds.save_as(path, enforce_file_format=True)
    start = time.monotonic()
    pacs.upload(ds)
    found = wait_for(lambda: answered(pacs, ds.StudyInstanceUID), timeout_s=60)
    seconds = time.monotonic() - start
    assert found, f"no answer in the study after {seconds:.0f} s"
    [sr], [sc] = found["SR"], found["OT"]
    expected = json.loads(cli("predict", path, "--runtime", "torch", "--json").stdout)
    assert sr_value(sr, "BA") == expected["bone_age_months"]  # the number `boneage predict` gives for this file
    assert sr_value(sr, "121416", "DCM") == expected["sds"]["sds"]
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    if DCIODVFY:  # what the node wrote, as the PACS stored it
        for ds_answer in (sr, sc):
            ds_answer.save_as(tmp_path / "answer.dcm", enforce_file_format=True)
            assert dciodvfy_errors(tmp_path / "answer.dcm") == [], ds_answer.Modality
    assert seconds < 30, f"{seconds:.1f} s from upload to answer"
    print(f"\nupload to answer in Orthanc: {seconds:.1f} s")
    assert ds.SOPInstanceUID in caplog.text and "Secret" not in caplog.text  # logs name films, not patients


@needs_orthanc
def test_a_ct_or_a_chest_film_is_not_answered(pacs, node, caplog):
    ct = film(SOPClassUID=CTImageStorage, Modality="CT", BodyPartExamined="CHEST")
    chest = film(BodyPartExamined="CHEST")
    hand = film("5460.jpg", sex="F", birth="20150301", study="20180301")
    for ds in (ct, chest, hand):  # the hand last: once it is answered, the others had their chance
        pacs.upload(ds)
    assert wait_for(lambda: answered(pacs, hand.StudyInstanceUID), timeout_s=60)
    assert pacs.answers(ct.StudyInstanceUID) == {} and pacs.answers(chest.StudyInstanceUID) == {}  # not routed
    # sent to the node anyway: refused, with the reason
    assert send([chest], pacs.node_port) == ("accepted", [(0xC000, "BodyPartExamined CHEST: not a hand")])
    assert send([ct], pacs.node_port) == ("failed", [])  # CT is refused at association: nothing to send it on
    assert "nothing it proposed is accepted (CT Image Storage)" in caplog.text
    assert f"refused {chest.SOPInstanceUID} from ORTHANC@127.0.0.1: BodyPartExamined CHEST: not a hand" in caplog.text


@needs_orthanc
def test_an_unknown_calling_ae_or_host_is_refused(pacs, node, shipped, tmp_path, caplog):
    assert send([film()], pacs.node_port, calling="INTRUDER") == ("rejected", [])
    assert send([film()], pacs.node_port, called="SOMEONE_ELSE") == ("rejected", [])
    assert "rejected an association from INTRUDER@127.0.0.1" in caplog.text
    port = free_port()
    strict = _node(shipped, tmp_path / "queue", port, StoreSCU(AET, "127.0.0.1", 1, "BONEAGE"),
                   allow_hosts=("192.0.2.1",))
    try:
        assert send([film()], port) == ("failed", [])  # the connection is closed before any DICOM
    finally:
        strict.stop()
    assert "refused a connection from 127.0.0.1: not an allowed host" in caplog.text
    assert list((tmp_path / "queue" / "inbox").iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--allow", "PACS", "--send-to", "PACS@host"], "expected AET@HOST:PORT (C-STORE) or http(s)://"),
    (["--allow", "PACS", "--send-to", "WAY_TOO_LONG_AE_TITLE@h:104"], "is not a DICOM AE title"),
    (["--allow", "PACS"], "--send-to: where the answers go"),
    (["--send-to", "PACS@h:104"], "--allow: name the calling AE titles"),
    (["--allow", "PACS", "--send-to", "PACS@h:104", "--max-attempts", "0"], "--max-attempts must be at least 1"),
    (["--allow", "PACS", "--send-to", "PACS@h:104", "--aet", "BACK\\SLASH"], "--aet: 'BACK\\\\SLASH' is not"),
])
def test_node_arguments_are_checked_before_anything_starts(tmp_path, args, message):
    r = cli("node", "--queue", tmp_path / "q", "--port", "1", *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "q").exists()


def test_node_status_of_a_folder_that_is_no_queue(tmp_path):
    r = cli("node", "--queue", tmp_path, "--status")
    assert r.returncode == 2 and "not a boneage node queue" in r.stderr


@needs_orthanc
def test_the_same_film_sent_twice_is_answered_once(pacs, node, caplog):
    caplog.set_level("INFO", logger="boneage.node")
    ds = film("14913.jpg", sex="F", birth="20080101", study="20230101")
    assert send([ds], pacs.node_port) == ("accepted", [(0, "")])
    assert send([ds], pacs.node_port) == ("accepted", [(0, "")])
    assert wait_for(lambda: answered(pacs, ds.StudyInstanceUID), timeout_s=60)
    assert send([ds], pacs.node_port) == ("accepted", [(0, "")])  # and once more after the answer went out
    time.sleep(1.0)
    found = pacs.answers(ds.StudyInstanceUID)
    assert len(found["SR"]) == len(found["OT"]) == 1
    assert caplog.text.count(f"{ds.SOPInstanceUID} from ORTHANC@127.0.0.1: already") == 2
    assert sum(d["film"] == ds.SOPInstanceUID for d in node.queue.status()["last_delivered"]) == 1


# ------------------------------------------------------------------------------------------------- bad input
def _truncated_association(port: int) -> None:
    """An association request whose PDU says 1 MB follows, then 100 bytes, then the connection closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack(">BBI", 0x01, 0, 1_000_000) + b"\0" * 100)


def _cut_mid_film(ds, port: int) -> None:
    """A C-STORE whose connection goes down in the middle of the film (16 KB PDUs: half of the second data one)."""
    from pynetdicom import AE

    ae = AE(ae_title=AET)
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="BONEAGE", max_pdu=16384)
    sock, pdata = assoc.dul.socket, []
    send_whole = sock.send

    def send_cut(data: bytes) -> None:
        if data[:1] == b"\x04":  # P-DATA-TF: the command, then the film's fragments
            pdata.append(len(data))
            if len(pdata) == 3:
                sock.socket.sendall(data[: len(data) // 2])
                sock.socket.shutdown(socket.SHUT_RDWR)
        send_whole(data)

    sock.send = send_cut
    assert not assoc.send_c_store(ds)  # no status: the connection is gone


@needs_orthanc
def test_bad_input_is_refused_with_a_reason_and_the_node_goes_on(pacs, node, caplog):
    no_pixels = film()
    del no_pixels.PixelData
    multi = film(NumberOfFrames=2)
    multi.PixelData = multi.PixelData * 2
    huge = film(Rows=20000, Columns=20000)  # claims 400 M pixels
    big = film()
    big.add_new(0x00091010, "OB", b"\0" * (9 << 20))  # a 9 MB private element: over the node's 8 MB
    accepted, statuses = send([no_pixels, multi, huge, big], pacs.node_port)
    assert accepted == "accepted"
    assert statuses == [(0xA900, "no pixel data"),
                        (0xA900, "multi-frame (2 frames): one film per instance is expected"),
                        (0xA900, "image too large (20000 x 20000 pixels)"), (0xA700, "data set too large")]
    # a transfer syntax nobody knows: refused at association
    from pynetdicom import AE

    ae = AE(ae_title=AET)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ["1.2.3.4.5.6.7"])
    assert not ae.associate("127.0.0.1", pacs.node_port, ae_title="BONEAGE").is_established
    assert "nothing it proposed is accepted (Digital X-Ray Image Storage - For Presentation)" in caplog.text
    _truncated_association(pacs.node_port)
    cut = film()
    _cut_mid_film(cut, pacs.node_port)
    assert wait_for(lambda: "aborted" in caplog.text, 10) and node.queue.where(cut.SOPInstanceUID) is None
    # a film the assessment refuses: answered "not analysed", with the reason
    inverted = film(invert=True)
    assert send([inverted], pacs.node_port) == ("accepted", [(0, "")])
    found = wait_for(lambda: answered(pacs, inverted.StudyInstanceUID), timeout_s=60)
    assert found and "probably inverted" in sr_value(found["SR"][0], "121106", "DCM")
    assert found["OT"][0].SeriesDescription == "Bone age NOT ANALYSED"
    assert echo(pacs.node_port)  # still serving
    queue = node.queue.root
    assert list((queue / "inbox").iterdir()) == []  # nothing half-written, nothing stuck
    assert not [p for p in queue.rglob("*.part")] and node.queue.status()["failed"] == []
    assert "Traceback" not in caplog.text


@needs_orthanc
def test_a_deflated_bomb_is_refused_without_inflating_it_whole(pacs, node, caplog):
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from pynetdicom import AE

    bomb = film()
    bomb.PixelData = bytes(64 << 20)  # inflates to 64 MB; about 64 KB on the wire, under the node's 8 MB
    ae = AE(ae_title=AET)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", pacs.node_port, ae_title="BONEAGE")
    assert assoc.is_established
    status = assoc.send_c_store(bomb)
    fine = assoc.send_c_store(film())  # a deflated film of its own size is taken as before
    assoc.release()
    assert (status.Status, status.ErrorComment) == (0xA700, "the data set inflates past its pixel data")
    assert fine.Status == 0
    assert "a deflated DICOM that inflates to more than" in caplog.text and "Traceback" not in caplog.text
    assert node.queue.where(bomb.SOPInstanceUID) is None and echo(pacs.node_port)


# ------------------------------------------------------------------------------------------- delivery waits
@needs_orthanc
@pytest.mark.skipif(not DICOMWEB_PLUGIN.is_file(), reason="Orthanc's DICOMweb plugin is not installed "
                                                           "(apt-get install orthanc-dicomweb)")
def test_answers_wait_while_the_pacs_is_down_and_go_when_it_is_back(pacs, shipped, tmp_path):
    """Through STOW-RS (DICOMweb) this time."""
    port = free_port()
    node = _node(shipped, tmp_path / "queue", port, StowRS(pacs.dicomweb))
    try:
        pacs.stop()
        ds = film("14471.jpg", sex="M")
        assert send([ds], port) == ("accepted", [(0, "")])
        pending = wait_for(lambda: [p for p in node.queue.status()["pending"] if p["attempts"] >= 2], 60)
        assert pending and "STOW-RS failed" in pending[0]["last_error"]
    finally:
        pacs.start()
    found = wait_for(lambda: answered(pacs, ds.StudyInstanceUID), timeout_s=30)
    node.stop()
    assert found and len(found["SR"]) == 1
    assert node.queue.status()["delivered"] == 1 and node.queue.status()["pending"] == []


# ----------------------------------------------------------------------------------------------------- kill -9
class Counter:
    """A C-STORE SCP that counts what it receives (a stand-in destination that can be down, then up)."""

    def __init__(self, port: int):
        self.port, self.received, self.server = port, [], None

    def start(self):
        from pynetdicom import AE, evt

        ae = AE(ae_title="COUNT")
        for sop in ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"):
            ae.add_supported_context(sop, ExplicitVRLittleEndian)

        def store(event):
            self.received.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])

    def stop(self):
        self.server.shutdown()


def _start_node(tmp_path, port, dest_port, model):
    log = open(tmp_path / "node.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "boneage", "node", "--queue", tmp_path / "queue", "--port",
                             str(port), "--allow", AET, "--send-to", f"COUNT@127.0.0.1:{dest_port}", "--model",
                             model, "--runtime", "torch", "--retry-delay", "0.2"], stdout=log, stderr=log)


def test_a_kill_9_with_answers_pending_then_a_restart_delivers_each_once(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.pt")
    port, dest = free_port(), free_port()
    # one component, long: pydicom and highdicom warn about such names, quoting them; the log must not show them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        films = [film(f, sex=s, PatientName="Secret" * 12) for f, s in (("5460.jpg", "F"), ("14471.jpg", "M"),
                                                                        ("14913.jpg", "F"))]
    node = _start_node(tmp_path, port, dest, model)
    counter = Counter(dest)
    try:
        assert wait_for(lambda: echo(port), 120, 0.5), (tmp_path / "node.log").read_text()
        assert send(films, port) == ("accepted", [(0, "")] * 3)

        def pending():
            s = Queue(tmp_path / "queue", "").status()
            return len(s["pending"]) == 3 and all(p["attempts"] >= 1 for p in s["pending"])

        assert wait_for(pending, 60, 0.5), (tmp_path / "node.log").read_text()
        os.kill(node.pid, signal.SIGKILL)  # the destination was down: three answers pending, none delivered
        node.wait(10)
        counter.start()
        node = _start_node(tmp_path, port, dest, model)
        assert wait_for(lambda: len(counter.received) >= 6, 120, 0.5), (tmp_path / "node.log").read_text()
        time.sleep(1.0)  # a repeat would come within the poll interval
    finally:
        node.send_signal(signal.SIGTERM)
        code = node.wait(30)
        if counter.server:
            counter.stop()
    assert code == 0
    assert len(counter.received) == len(set(counter.received)) == 6  # each SR and picture once
    status = cli("node", "--queue", tmp_path / "queue", "--status")
    assert status.returncode == 0
    assert "0 waiting for an answer, 0 pending delivery, 3 delivered, 0 failed" in status.stdout
    log = (tmp_path / "node.log").read_text()
    assert "Traceback" not in log and "Secret" not in log
    assert all(ds.SOPInstanceUID in log for ds in films)


def test_the_readme_gives_the_orthanc_configuration_and_script_the_tests_run():
    readme = (REPO / "README.md").read_text()
    for name in ("orthanc.json", "boneage-route.lua"):
        assert (HOSPITAL / name).read_text() in readme, name


def test_the_node_imports_neither_lightning_nor_training_code():
    code = ("import sys, boneage.hospital.node, boneage.hospital.answer, boneage.hospital.delivery; "
            "print(any(m == 'lightning' or m.startswith('boneage.training') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
