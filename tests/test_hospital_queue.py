"""The node's queue on disk: a film is kept once per model, an answer is delivered once, failed deliveries back off
and are parked with their reason, and a kill at any step loses nothing and delivers nothing twice (save the one
delivery a kill interrupts, which is repeated with the same objects)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'boneage[node]')")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from boneage.errors import UserError  # noqa: E402
from boneage.hospital.queue import Queue, format_status, open_queue  # noqa: E402

FILM = "1.2.3.4.5"


def answer_objects() -> list[Dataset]:
    """Two small datasets standing in for the SR and the picture (new UIDs each time, as a new answer has)."""
    out = []
    for modality in ("SR", "OT"):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", generate_uid(), modality
        out.append(ds)
    return out


def uids(files: list[Path]) -> tuple[str, ...]:
    return tuple(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)


def test_a_film_is_kept_once_per_model(tmp_path):
    q = Queue(tmp_path, "model-a")
    assert q.receive(FILM, b"film") is None and q.where(FILM) == "inbox"
    assert q.receive(FILM, b"film again") == "inbox"
    assert [p.read_bytes() for p in q.films()] == [b"film"]
    other = Queue(tmp_path, "model-b")  # another model answers the film again
    assert other.where(FILM) is None and other.receive(FILM, b"film") is None


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2.3/../x", "", "1.2." + "3" * 70])
def test_a_uid_that_is_not_one_never_becomes_a_file_name(tmp_path, uid):
    q = Queue(tmp_path, "m")
    with pytest.raises(ValueError, match="not a DICOM UID"):
        q.receive(uid, b"x")
    assert list((tmp_path / "inbox").iterdir()) == []


def test_the_way_through_inbox_outbox_sent(tmp_path):
    q = Queue(tmp_path, "m")
    q.receive(FILM, b"film")
    objects = answer_objects()
    q.answered(q.films()[0], objects, "bone age 123.5 months")
    assert q.films() == [] and q.where(FILM) == "outbox"
    [item] = q.due()
    assert uids(item.files) == tuple(str(ds.SOPInstanceUID) for ds in objects)
    q.delivered(item, "PACS@127.0.0.1:4242")
    assert q.where(FILM) == "sent" and q.due() == [] and list((tmp_path / "outbox").iterdir()) == []
    status = q.status()
    assert status["delivered"] == 1 and status["pending"] == status["failed"] == status["waiting"] == []
    assert status["last_delivered"][0]["summary"] == "bone age 123.5 months"
    assert "1 delivered" in format_status(status) and "-> PACS@127.0.0.1:4242" in format_status(status)


def test_failed_deliveries_back_off_then_are_parked_with_the_reason(tmp_path):
    q = Queue(tmp_path, "m", max_attempts=3, retry_delay_s=10.0)
    q.receive(FILM, b"film")
    q.answered(q.films()[0], answer_objects(), "bone age 1 months")
    waits = []
    for attempt in range(3):
        [item] = q.due(now=time.time() + 1000)
        parked = q.attempt_failed(item, f"PACS@127.0.0.1:4242 could not be reached ({attempt})")
        waits.append(round(q.next_delay(item)))
        assert parked == (attempt == 2)
    assert waits[:2] == [10, 20]  # doubled after each failure
    assert q.due(now=time.time() + 1000) == [] and q.where(FILM) == "failed"
    [failed] = q.status()["failed"]
    assert failed["attempts"] == 3 and failed["last_error"].endswith("could not be reached (2)")
    assert "failed    1.2.3.4.5: bone age 1 months; PACS@127.0.0.1:4242 could not be reached (2)" in \
        format_status(q.status())
    assert q.requeue_failed() == 1 and q.where(FILM) == "outbox"
    assert q.due()[0].state["attempts"] == 0


def test_when_the_destination_is_back_the_waiting_answers_go_at_once(tmp_path):
    q = Queue(tmp_path, "m", retry_delay_s=600.0)
    for uid in ("1.2.1", "1.2.2"):
        q.receive(uid, b"film")
    for film in q.films():
        q.answered(film, answer_objects(), "bone age")
    for item in q.due():
        q.attempt_failed(item, "down")
    assert q.due() == []
    q.retry_now()
    assert len(q.due()) == 2 and all(i.state["attempts"] == 1 for i in q.due())


def test_a_film_the_node_cannot_answer_is_parked_not_lost(tmp_path):
    q = Queue(tmp_path, "m")
    q.receive(FILM, b"film")
    q.park_film(q.films()[0], "answering failed: MemoryError")
    assert q.films() == [] and q.where(FILM) == "failed"
    assert q.status()["failed"][0]["last_error"] == "answering failed: MemoryError"
    q.requeue_failed()
    assert [p.read_bytes() for p in q.films()] == [b"film"]


def test_status_needs_an_existing_queue(tmp_path):
    with pytest.raises(UserError, match="not a boneage node queue"):
        open_queue(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


class Killed(BaseException):
    """What a kill -9 is to the code: nothing after it runs (not even `except Exception`)."""


def _pipeline(root: Path, sends: list[tuple[str, ...]]) -> None:
    """What the node does with one film, from a (re)start: tidy, receive (the PACS sends again until it saw a
    success), answer, deliver."""
    q = Queue(root, "m")
    q.recover()
    if q.where(FILM) is None:
        q.receive(FILM, b"film")
    for film in q.films():
        q.answered(film, answer_objects(), "bone age")
    for item in q.due():
        sends.append(uids(item.files))
        q.delivered(item, "PACS")


def test_a_kill_at_any_step_loses_nothing_and_answers_once(tmp_path, monkeypatch):
    """Kill the pipeline at each of its writes, renames and deletes in turn; a restart must deliver the one answer,
    leaving nothing behind. Only a kill between a delivery and its record repeats that delivery, with the same
    objects (same SOP Instance UIDs: a PACS stores them once)."""
    real = {"replace": os.replace, "unlink": Path.unlink}
    steps = {"n": 0, "kill_at": None}

    def step(kind):
        def run(*args, **kwargs):
            steps["n"] += 1
            if steps["n"] == steps["kill_at"]:
                raise Killed(kind)
            return real[kind](*args, **kwargs)
        return run

    monkeypatch.setattr(os, "replace", step("replace"))
    monkeypatch.setattr(Path, "unlink", step("unlink"))
    _pipeline(tmp_path / "count", [])
    total = steps["n"]
    assert total >= 8  # receive, answer (3 objects' writes, the folder, the film), record, discard
    repeated = 0
    for kill_at in range(1, total + 1):
        root, sends = tmp_path / f"kill-{kill_at}", []
        steps.update(n=0, kill_at=kill_at)
        with pytest.raises(Killed):
            _pipeline(root, sends)
        steps.update(kill_at=None)
        _pipeline(root, sends)  # the restart
        q = Queue(root, "m")
        assert q.where(FILM) == "sent", kill_at
        assert q.films() == [] and q.due() == [] and list((root / "outbox").iterdir()) == [], kill_at
        assert list((root / "inbox").iterdir()) == list((root / "failed").iterdir()) == [], kill_at
        assert len(sends) in (1, 2) and len(set(sends)) == 1, kill_at
        repeated += len(sends) == 2
    assert repeated == 1  # only the kill right after the delivery, before its record
