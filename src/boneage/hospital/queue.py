"""The node's memory, on disk: films received and not yet answered, answers not yet delivered, answers delivered, and
what it gave up on. A film is acknowledged to the PACS only once it is here, and nothing leaves one folder before it
is whole in the next, so killing the node (kill -9) at any moment loses nothing and answers nothing twice.

    QUEUE/
      inbox/KEY.dcm         a film received (DICOM Part 10), waiting for the worker
      outbox/KEY/           its answer, waiting for delivery: the objects (*.dcm) and state.json (attempts, next
                            try, last error)
      sent/KEY.json         a delivered answer: when, where, its objects' UIDs, its one-line summary
      failed/KEY/           given up on: the answer after its last attempt (or the film, if answering it crashed),
                            and state.json with the reason
      trash/                folders on their way out

KEY is the film's SOP Instance UID and the algorithm's identity: the same film answered by the same model is answered
once; another model answers it again. Every step is a write to a temporary name and one os.replace (`files`), and each
step puts the item in its next folder before removing it from the last (inbox -> outbox -> sent | failed), so a film
is always in at least one folder and `where` (which looks in that order) always finds it. `recover` (at start) removes
what a killed process left: half-written files and folders, a film whose answer exists, an answer already delivered.

What a kill can repeat: the delivery of an answer whose sending had begun (the PACS stored it; the node died before
writing sent/KEY.json). The answer is the same objects with the same SOP Instance UIDs, which a PACS stores once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from boneage.errors import UserError
from boneage.hospital.files import PART, save_dataset, sync_dir, write_bytes, write_json

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # DICOM UID: digits and dots (64 characters at most): a safe file name
STAGES = ("inbox", "outbox", "sent", "failed")


@dataclass
class Item:
    """An answer in the outbox (or parked in failed): where its files are and how its delivery has gone."""

    key: str
    folder: Path
    state: dict

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


class Queue:
    def __init__(self, root: str | Path, identity: str, max_attempts: int = 12, retry_delay_s: float = 5.0,
                 max_delay_s: float = 600.0):
        self.root = Path(root)
        self.identity = identity
        self.max_attempts, self.retry_delay_s, self.max_delay_s = max_attempts, retry_delay_s, max_delay_s
        self._lock = threading.Lock()  # receiving: "seen?" and "store" are one step for concurrent associations
        try:
            for stage in (*STAGES, "trash"):
                (self.root / stage).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.root}: cannot use as the node's queue ({exc.strerror})") from None

    # ---------------------------------------------------------------------------------------------- naming
    def key(self, sop_uid: str) -> str:
        return f"{sop_uid}_{self.identity}"

    def _path(self, stage: str, key: str) -> Path:
        suffix = {"inbox": ".dcm", "sent": ".json"}.get(stage, "")
        return self.root / stage / f"{key}{suffix}"

    def where(self, sop_uid: str) -> str | None:
        """The stage a film of this model is at ("inbox", "outbox", "sent", "failed"), or None if never received."""
        key = self.key(sop_uid)
        return next((s for s in STAGES if self._path(s, key).exists()), None)

    # ----------------------------------------------------------------------------------------------- steps
    def receive(self, sop_uid: str, data: bytes) -> str | None:
        """Store a received film (DICOM Part 10 bytes) unless this model has it already; returns the stage it was
        found at (nothing stored), or None (stored)."""
        if not UID.match(sop_uid) or len(sop_uid) > 64:
            raise ValueError(f"not a DICOM UID: {sop_uid[:80]!r}")
        with self._lock:
            seen = self.where(sop_uid)
            if seen is None:
                write_bytes(self._path("inbox", self.key(sop_uid)), data)
            return seen

    def films(self) -> list[Path]:
        """Films waiting for an answer, oldest first."""
        return sorted((p for p in (self.root / "inbox").glob("*.dcm")), key=lambda p: p.stat().st_mtime_ns)

    def answered(self, film: Path, objects: list, summary: str) -> None:
        """The film's answer (pydicom datasets) into the outbox, then the film out of the inbox."""
        key = film.stem
        target = self._path("outbox", key)
        if not target.exists():
            work = target.with_name(f".{key}.{uuid.uuid4().hex[:8]}{PART}")
            work.mkdir()
            names = []
            for i, ds in enumerate(objects):
                name = f"{i + 1}-{ds.Modality.lower()}.dcm"
                save_dataset(ds, work / name)
                names.append(name)
            write_json(work / "state.json", {
                "film": key.split("_")[0], "received": film.stat().st_mtime, "answered": time.time(),
                "summary": summary, "objects": {n: str(ds.SOPInstanceUID) for n, ds in zip(names, objects)},
                "attempts": 0, "next_try": 0.0, "last_error": None})
            os.replace(work, target)
            sync_dir(target.parent)
        film.unlink(missing_ok=True)

    def park_film(self, film: Path, reason: str) -> None:
        """A film that could not be answered at all (an error of the node, not of the film) -> failed, with why."""
        key = film.stem
        work = self.root / "failed" / f".{key}.{uuid.uuid4().hex[:8]}{PART}"
        work.mkdir()
        try:  # a second name, not a copy: the film stays in the inbox until this is done
            os.link(film, work / "film.dcm")
        except OSError:  # a file system without hard links
            shutil.copyfile(film, work / "film.dcm")
        write_json(work / "state.json", {"film": key.split("_")[0], "received": film.stat().st_mtime,
                                         "summary": "not answered", "attempts": 0, "last_error": reason,
                                         "parked": time.time(), "objects": {}})
        os.replace(work, self._path("failed", key))
        film.unlink(missing_ok=True)

    def due(self, now: float | None = None) -> list[Item]:
        """Answers whose next delivery attempt is due, oldest first."""
        now = time.time() if now is None else now
        items = [i for i in self._items("outbox") if i.state.get("next_try", 0) <= now]
        return sorted(items, key=lambda i: i.state.get("answered", 0))

    def delivered(self, item: Item, destination: str) -> None:
        """Record the delivery, then drop the outbox copy."""
        write_json(self._path("sent", item.key), item.state | {"delivered": time.time(), "destination": destination,
                                                               "attempts": item.state["attempts"] + 1})
        self._discard(item.folder)

    def attempt_failed(self, item: Item, error: str) -> bool:
        """Count a failed delivery: back off, or after the last attempt park the answer in failed. True if parked."""
        attempts = item.state["attempts"] + 1
        delay = min(self.retry_delay_s * 2 ** (attempts - 1), self.max_delay_s)
        state = item.state | {"attempts": attempts, "last_error": error, "next_try": time.time() + delay}
        parked = attempts >= self.max_attempts
        if parked:
            state["parked"] = time.time()
        write_json(item.folder / "state.json", state)
        item.state = state
        if parked:
            os.replace(item.folder, self._path("failed", item.key))
        return parked

    def retry_now(self) -> None:
        """Every answer waiting out a back-off is due now (the destination answered again)."""
        for item in self._items("outbox"):
            if item.state.get("next_try", 0) > time.time():
                write_json(item.folder / "state.json", item.state | {"next_try": 0.0})

    def next_delay(self, item: Item) -> float:
        return max(0.0, item.state.get("next_try", 0) - time.time())

    def requeue_failed(self) -> int:
        """Every parked answer back to the outbox (attempts from zero), every parked film back to the inbox."""
        n = 0
        for item in self._items("failed"):
            film = item.folder / "film.dcm"
            if film.exists():
                os.replace(film, self._path("inbox", item.key))
                self._discard(item.folder)
            else:
                write_json(item.folder / "state.json", item.state | {"attempts": 0, "next_try": 0.0})
                os.replace(item.folder, self._path("outbox", item.key))
            n += 1
        return n

    # --------------------------------------------------------------------------------------------- recovery
    def recover(self) -> list[str]:
        """Tidy what a killed process left; returns one line per thing done (for the log)."""
        done = []
        shutil.rmtree(self.root / "trash", ignore_errors=True)
        (self.root / "trash").mkdir(exist_ok=True)
        for stage in STAGES:
            for part in (self.root / stage).glob(f".*{PART}"):
                shutil.rmtree(part) if part.is_dir() else part.unlink()
                done.append(f"removed the half-written {stage}/{part.name}")
        for film in (self.root / "inbox").glob("*.dcm"):
            if any(self._path(s, film.stem).exists() for s in ("outbox", "sent", "failed")):
                film.unlink()
                done.append(f"removed the film {film.stem.split('_')[0]}: its answer exists")
        for item in self._items("outbox"):
            if self._path("sent", item.key).exists():
                self._discard(item.folder)
                done.append(f"removed the outbox copy of {item.state.get('film')}: already delivered")
        return done

    def _discard(self, folder: Path) -> None:
        trash = self.root / "trash" / f"{folder.name}.{uuid.uuid4().hex[:8]}"
        os.replace(folder, trash)  # one step out of the outbox; the slow delete happens out of sight
        shutil.rmtree(trash, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- reading
    def _items(self, stage: str) -> list[Item]:
        items = []
        for folder in (self.root / stage).iterdir():
            if folder.is_dir() and not folder.name.endswith(PART):
                try:
                    state = json.loads((folder / "state.json").read_text())
                except (OSError, ValueError):
                    continue  # moved away while listing
                items.append(Item(folder.name, folder, state))
        return items

    def status(self) -> dict:
        """Counts and details, JSON-ready: waiting films, pending answers, delivered, failed with reasons."""
        sent = []
        for path in (self.root / "sent").glob("*.json"):
            try:
                sent.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue

        def brief(state: dict) -> dict:
            return {k: state.get(k) for k in ("film", "summary", "attempts", "last_error")}

        pending = [brief(i.state) | {"next_try_in_s": round(self.next_delay(i), 1)} for i in self._items("outbox")]
        failed = [brief(i.state) for i in self._items("failed")]
        return {"queue": str(self.root), "waiting": [p.stem.split("_")[0] for p in self.films()],
                "pending": pending, "delivered": len(sent), "failed": failed,
                "last_delivered": [brief(s) | {"destination": s.get("destination")} for s in
                                   sorted(sent, key=lambda s: s.get("delivered", 0))[-5:]]}


def format_status(status: dict) -> str:
    """`boneage node --status` for a person."""
    lines = [f"{status['queue']}: {len(status['waiting'])} waiting for an answer, {len(status['pending'])} pending "
             f"delivery, {status['delivered']} delivered, {len(status['failed'])} failed"]
    lines += [f"  waiting   {film}" for film in status["waiting"]]
    lines += [f"  pending   {p['film']}: {p['summary']}; {p['attempts']} attempts"
              + (f", last error: {p['last_error']}" if p["last_error"] else "")
              + (f"; next try in {p['next_try_in_s']:g} s" if p["attempts"] else "") for p in status["pending"]]
    lines += [f"  failed    {f['film']}: {f['summary']}; {f['last_error']}" for f in status["failed"]]
    lines += [f"  delivered {d['film']}: {d['summary']} -> {d['destination']}" for d in status["last_delivered"]]
    return "\n".join(lines)


def open_queue(root: str | Path) -> Queue:
    """An existing queue, for `--status` and `--requeue-failed` (which must not create one by a typing error)."""
    if not (Path(root) / "inbox").is_dir():
        raise UserError(f"{root}: not a boneage node queue (no inbox/ folder)")
    return Queue(root, identity="")
