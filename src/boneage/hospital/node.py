"""`boneage node`: the DICOM node a PACS routes hand films to; the answers go back into the same study.

    PACS --C-STORE--> association threads: header checks; the film into the queue's inbox; the status at once
                      worker thread:       film -> the one assessment -> SR + picture (`answer`) -> outbox
                      sender thread:       outbox -> destination (C-STORE or STOW-RS), retries with back-off

The model never runs on an association's thread: the PACS gets its C-STORE status as soon as the film is on disk,
whatever the worker is doing. Who may send: calling AE titles on an allow-list (others are rejected at association),
and optionally hosts (others are disconnected before any DICOM is read). What: Digital X-Ray (for presentation and
for processing) and Computed Radiography images, in the transfer syntaxes this installation can decode; any other
class or syntax is refused at association. A film whose header already says it cannot be answered (no pixels, several
frames, too large, another body part or modality, no study) is refused with a failure status and its reason (PS3.7
C.4.2: 0xA900 "data set does not match", 0xA700 "out of resources", 0xC000 "cannot understand"); a film the assessment
refuses is answered with "not analysed" objects (`answer`). Logs name SOP Instance UIDs, never patients.
"""

from __future__ import annotations

import logging
import signal
import socketserver
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

from boneage.assessment import Case
from boneage.errors import UserError
from boneage.hospital.answer import REQUIRED, answer_case
from boneage.hospital.delivery import DeliveryError
from boneage.hospital.queue import UID, Queue

log = logging.getLogger("boneage.node")

ACCEPTED = {DigitalXRayImageStorageForPresentation: "DX for presentation",
            DigitalXRayImageStorageForProcessing: "DX for processing", ComputedRadiographyImageStorage: "CR"}


@dataclass
class Settings:
    aet: str = "BONEAGE"
    host: str = "127.0.0.1"
    port: int = 11112
    allow_aets: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()  # empty: any host (the AE titles still apply)
    max_bytes: int = 256 << 20  # a received data set larger than this is refused
    worker_poll_s: float = 1.0
    sender_poll_s: float = 1.0


def decodable_transfer_syntaxes() -> list[str]:
    """The uncompressed syntaxes and every compressed one an installed pydicom plugin decodes."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    out = []
    for ts in AllTransferSyntaxes:
        try:
            if not ts.is_compressed or get_decoder(ts).is_available:
                out.append(str(ts))
        except NotImplementedError:  # a syntax pydicom cannot decode at all (MPEG, HEVC...)
            continue
    return out


def header_refusal(ds, sop_uid: str) -> tuple[int, str] | None:
    """(status, reason) for a film the header alone shows cannot be answered, else None."""
    from boneage.data.pixels import MAX_PIXELS
    from boneage.dicom import NOT_RADIOGRAPH_MODALITIES
    from boneage.quality import body_part_is_not_a_hand

    if str(ds.get("SOPInstanceUID", "")) != sop_uid:
        return 0xA900, "the data set's SOP Instance UID is not the one the request names"
    missing = [k for k in REQUIRED if not str(ds.get(k, "") or "").strip()]
    if missing:
        return 0xC000, f"no {', '.join(missing)}: the answer could not join the film's study"
    if "PixelData" not in ds:
        return 0xA900, "no pixel data"
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return 0xA900, "no valid Rows, Columns or NumberOfFrames"
    if frames > 1:
        return 0xA900, f"multi-frame ({frames} frames): one film per instance is expected"
    if rows * cols > MAX_PIXELS:
        return 0xA900, f"image too large ({cols} x {rows} pixels)"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in NOT_RADIOGRAPH_MODALITIES:
        return 0xC000, f"Modality {modality} is not a radiograph"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and body_part_is_not_a_hand(part):
        return 0xC000, f"BodyPartExamined {part}: not a hand"
    return None


def _status(code: int, comment: str | None = None):
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO: 64 characters
    return status


def _decoded(event):
    """The received data set; a deflated one inflated within bounds (`boneage.dicom`), not by pynetdicom at once."""
    from boneage.dicom import DEFLATED, read_deflated

    if str(event.context.transfer_syntax) == DEFLATED:
        stream = event.request.DataSet
        stream.seek(0)
        return read_deflated(stream, "the data set")
    return event.dataset


def _server_class(allow_hosts: tuple[str, ...]):
    """pynetdicom's threaded server, closing connections from hosts off the allow-list before any DICOM is read."""
    from pynetdicom.transport import ThreadedAssociationServer

    class Server(ThreadedAssociationServer):
        def verify_request(self, request, client_address) -> bool:
            host = client_address[0]
            if allow_hosts and host not in allow_hosts:
                log.warning("refused a connection from %s: not an allowed host", host)
                return False
            return True

        def shutdown(self) -> None:
            # made by `make_server`, not `start_server`: the AE does not list it, so nothing to remove from there
            socketserver.TCPServer.shutdown(self)
            self.server_close()

    return Server


@dataclass
class Node:
    """The running node: a C-STORE SCP, a worker and a sender over one queue. `start`, then `stop`."""

    settings: Settings
    queue: Queue
    predictor: object
    algorithm: object  # boneage.hospital.results.Algorithm
    destination: object  # boneage.hospital.delivery.StoreSCU | StowRS
    _stop: threading.Event = field(default_factory=threading.Event)
    _work: threading.Event = field(default_factory=threading.Event)
    _send: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)
    _server: object = None

    # ------------------------------------------------------------------------------------------ receiving
    def _ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.settings.aet)
        ae.require_called_aet = True  # an association addressed to another AE title is someone else's
        ae.require_calling_aet = list(self.settings.allow_aets)
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in ACCEPTED:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)  # C-ECHO: a PACS administrator tests the connection
        ae.maximum_associations = 16
        return ae

    def _on_store(self, event):
        try:
            return self._store(event)
        except Exception as exc:  # never let a film take the node down; the PACS gets a failure and retries
            log.error("could not store a film: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200] if
                      str(exc) else "")
            return _status(0xA700, "the node could not store the film")

    def _store(self, event):
        peer = f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"
        sop = str(event.request.AffectedSOPInstanceUID or "")
        if not UID.match(sop) or len(sop) > 64:
            log.warning("refused a film from %s: SOP Instance UID %r is not a DICOM UID", peer, sop[:80])
            return _status(0xA900, "invalid SOP Instance UID")
        size = len(event.request.DataSet.getvalue())
        if size > self.settings.max_bytes:
            log.warning("refused %s from %s: %d MB, more than the node's %d MB", sop, peer, size >> 20,
                        self.settings.max_bytes >> 20)
            return _status(0xA700, "data set too large")
        try:
            ds = _decoded(event)
        except UserError as exc:
            log.warning("refused %s from %s: %s", sop, peer, exc)
            return _status(0xA700, "the data set inflates past its pixel data")
        except Exception as exc:
            log.warning("refused %s from %s: the data set cannot be decoded (%s)", sop, peer, type(exc).__name__)
            return _status(0xC000, "the data set cannot be decoded")
        refusal = header_refusal(ds, sop)
        if refusal:
            log.warning("refused %s from %s: %s", sop, peer, refusal[1])
            return _status(*refusal)
        seen = self.queue.receive(sop, event.encoded_dataset(include_meta=True))
        if seen:
            log.info("%s from %s: already %s for this model: not answered twice", sop, peer,
                     {"inbox": "received", "outbox": "answered", "sent": "answered and delivered",
                      "failed": "parked as failed"}[seen])
        else:
            log.info("received %s from %s (%s)", sop, peer, ACCEPTED.get(str(ds.SOPClassUID), ds.SOPClassUID))
            self._work.set()
        return 0x0000

    def _on_rejected(self, event):
        r = event.assoc.requestor
        log.warning("rejected an association from %s@%s to %s: calling or called AE title not allowed", r.ae_title,
                    r.address, event.assoc.acceptor.ae_title)

    def _on_accepted(self, event):
        # A PACS proposes every storage class it knows in each association: only one that offers nothing this node
        # takes (a CT, an unknown transfer syntax) is worth a line.
        if not event.assoc.accepted_contexts:
            names = sorted({str(cx.abstract_syntax.name) for cx in event.assoc.rejected_contexts})
            log.warning("association from %s@%s: nothing it proposed is accepted (%s): only DX and CR images, in a "
                        "transfer syntax this node decodes", event.assoc.requestor.ae_title,
                        event.assoc.requestor.address, ", ".join(names)[:200])

    def _on_aborted(self, event):
        log.warning("association from %s@%s aborted: a film it was sending, if any, is not stored",
                    event.assoc.requestor.ae_title, event.assoc.requestor.address)

    # --------------------------------------------------------------------------------------------- working
    def _answer(self, film: Path) -> None:
        sop = film.stem.split("_")[0]
        started = time.perf_counter()
        try:
            answer = answer_case(Case(data=film, name=sop), self.predictor, self.algorithm)
        except UserError as exc:  # a header the answer cannot refer to: checked at reception, so rare
            log.error("%s; parked as failed", exc)
            self.queue.park_film(film, str(exc))
            return
        except Exception as exc:  # the node's error, not the film's: keep the film, say so, go on with the next
            text = str(exc).splitlines()[0][:200] if str(exc) else ""
            log.error("%s: answering failed (%s: %s); parked as failed", sop, type(exc).__name__, text)
            self.queue.park_film(film, f"answering failed: {type(exc).__name__}: {text}")
            return
        self.queue.answered(film, answer.objects, answer.summary())
        log.info("%s: %s (%.1f s)", sop, answer.summary(), time.perf_counter() - started)
        self._send.set()

    def _worker(self) -> None:
        while not self._stop.is_set():
            films = []
            try:
                films = self.queue.films()
                for film in films:
                    if self._stop.is_set():
                        return
                    self._answer(film)
            except OSError as exc:  # the queue's disk (full, gone): say so, keep the film, try again later
                log.error("the queue cannot be written (%s); trying again", exc)
                films = []
            if not films:
                self._work.wait(self.settings.worker_poll_s)
                self._work.clear()

    def _sender(self) -> None:
        while not self._stop.is_set():
            try:
                self._deliver_due()
            except OSError as exc:
                log.error("the queue cannot be written (%s); trying again", exc)
            self._send.wait(self.settings.sender_poll_s)
            self._send.clear()

    def _deliver_due(self) -> None:
        for item in self.queue.due():
            if self._stop.is_set():
                return
            try:
                self.destination.send(item.files)
            except Exception as exc:  # DeliveryError says why; anything else is still one failed attempt
                if not isinstance(exc, DeliveryError):
                    exc = DeliveryError(f"{self.destination}: {type(exc).__name__}: {str(exc)[:200]}")
                parked = self.queue.attempt_failed(item, str(exc))
                attempts = item.state["attempts"]
                if parked:
                    log.error("%s: delivery failed %d times; parked as failed (%s); `boneage node --status` lists "
                              "it, `--requeue-failed` tries again", item.state["film"], attempts, exc)
                else:
                    log.warning("%s: delivery attempt %d failed (%s); next in %.0f s", item.state["film"], attempts,
                                exc, self.queue.next_delay(item))
                return  # the destination is probably down for the others too: they wait for their own turn
            self.queue.delivered(item, str(self.destination))
            log.info("%s: delivered to %s (%s)", item.state["film"], self.destination,
                     ", ".join(item.state["objects"].values()))
            if item.state["attempts"]:  # it is back: the others need not sit out their back-off
                self.queue.retry_now()

    # ------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        from pynetdicom import evt

        for line in self.queue.recover():
            log.info("queue: %s", line)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_ABORTED, self._on_aborted)]
        ae = self._ae()
        try:
            self._server = ae.make_server((self.settings.host, self.settings.port), evt_handlers=handlers,
                                          server_class=_server_class(self.settings.allow_hosts))
        except OSError as exc:
            raise UserError(f"cannot listen on {self.settings.host}:{self.settings.port} ({exc.strerror})") from None
        for target in (self._server.serve_forever, self._worker, self._sender):
            thread = threading.Thread(target=target, name=f"boneage-node-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("listening as %s on %s:%d; accepting %s from %s; answers to %s", self.settings.aet,
                 self.settings.host, self.settings.port, ", ".join(ACCEPTED.values()),
                 ", ".join(self.settings.allow_aets) + (f" on {', '.join(self.settings.allow_hosts)}"
                                                        if self.settings.allow_hosts else ""), self.destination)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop receiving, let the worker finish its film and the sender its delivery."""
        self._stop.set()
        self._work.set()
        self._send.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout_s)

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        self.start()
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        log.info("stopping")
        self.stop()


def parse_list(value: str | None) -> tuple[str, ...]:
    """'A,B, C' -> ('A', 'B', 'C')."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def setup_logging() -> None:
    """One line per event on stderr, with the time; pynetdicom's own chatter only when it is an error."""
    import sys

    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s boneage-node %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its errors are ours to report, in our words
    # pydicom's and highdicom's warnings about a header quote its values (a patient's name, too): not for a log
    warnings.filterwarnings("ignore", module=r"(pydicom|highdicom)(\.|$)")
    for name in ("pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(settings: Settings, queue_dir: str | Path, send_to: str, models=None, tta: str = "flip",
        runtime: str = "auto", max_attempts: int = 12, retry_delay_s: float = 5.0) -> None:
    """`boneage node`: check the settings, load the model, open the queue, serve until SIGTERM or SIGINT."""
    from boneage.hospital.delivery import check_aet, parse_destination
    from boneage.hospital.results import Algorithm
    from boneage.inference.loading import load_predictor

    check_aet(settings.aet, "--aet")
    if not settings.allow_aets:
        raise UserError("--allow: name the calling AE titles that may send films (e.g. --allow PACS,MODALITY1)")
    for aet in settings.allow_aets:
        check_aet(aet, "--allow")
    if not 0 < settings.port < 65536:
        raise UserError(f"--port {settings.port}: expected 1 to 65535")
    if max_attempts < 1 or retry_delay_s < 0 or settings.max_bytes <= 0:
        raise UserError("--max-attempts must be at least 1, --retry-delay at least 0 and --max-mb above 0")
    destination = parse_destination(send_to, settings.aet)
    setup_logging()
    predictor = load_predictor(models, runtime, tta=tta, log=log.info)
    algorithm = Algorithm.of(predictor)
    log.info("model %s %s (%s)", algorithm.name, algorithm.version, ", ".join(algorithm.parameters))
    queue = Queue(queue_dir, algorithm.identity, max_attempts, retry_delay_s)
    Node(settings, queue, predictor, algorithm, destination).serve_forever()
