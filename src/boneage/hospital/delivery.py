"""Where answers go: a DICOM node by C-STORE (`AET@HOST:PORT`, pynetdicom) or a DICOMweb server by STOW-RS
(`http(s)://...`, dicomweb-client). One attempt per call: the outbox (`boneage.hospital.queue`) does the retrying,
so neither library is let to retry on its own. A failure is a `DeliveryError` with one line saying why."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from boneage.errors import UserError

# C-STORE statuses that mean "stored": success, and the warnings of PS3.4 B.2.3 (coerced, elements discarded...)
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
AET = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")  # 1-16, no backslash


class DeliveryError(Exception):
    """One delivery attempt failed; the message says why in one line."""


def check_aet(value: str, what: str) -> str:
    if not AET.match(value):
        raise UserError(f"{what}: {value!r} is not a DICOM AE title (1 to 16 printable characters, no backslash)")
    return value


def _read(files: list[Path]) -> list:
    import pydicom

    return [pydicom.dcmread(f) for f in files]


@dataclass
class StoreSCU:
    """C-STORE to a DICOM node; the node calls it as `calling_aet`."""

    aet: str
    host: str
    port: int
    calling_aet: str
    timeout_s: float = 30.0

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"

    def send(self, files: list[Path]) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import uid_to_sop_class

        datasets = _read(files)
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = min(self.timeout_s, 10.0)
        for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
            ae.add_requested_context(uid_to_sop_class(sop_class), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.host, self.port, ae_title=self.aet)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            raise DeliveryError(f"{self} {why}")
        try:
            for ds in datasets:
                if not any(cx.abstract_syntax == ds.SOPClassUID for cx in assoc.accepted_contexts):
                    raise DeliveryError(f"{self} does not take {ds.SOPClassUID.name} (association context refused)")
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise DeliveryError(f"{self} gave no answer to C-STORE of {ds.SOPInstanceUID} (connection lost "
                                        "or timed out)")
                if code not in STORED:
                    comment = str(status.get("ErrorComment", "") or "").strip()
                    raise DeliveryError(f"{self} refused {ds.SOPInstanceUID}: status 0x{code:04X}"
                                        + (f" ({comment})" if comment else ""))
        finally:
            if assoc.is_established:
                assoc.release()


@dataclass
class StowRS:
    """STOW-RS to a DICOMweb service root, e.g. http://127.0.0.1:8042/dicom-web."""

    url: str
    timeout_s: float = 60.0

    def __str__(self) -> str:
        return self.url

    def send(self, files: list[Path]) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        client = DICOMwebClient(self.url, timeout=(min(self.timeout_s, 10.0), self.timeout_s))
        client.set_http_retry_params(retry=False)
        try:
            response = client.store_instances(_read(files))
        except requests.RequestException as exc:
            code = getattr(getattr(exc, "response", None), "status_code", None)
            raise DeliveryError(f"{self}: STOW-RS failed" + (f" (HTTP {code})" if code else
                                                              f" ({type(exc).__name__})")) from None
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            uids = ", ".join(str(i.get("ReferencedSOPInstanceUID", "?")) for i in failed)
            raise DeliveryError(f"{self}: STOW-RS refused {uids}")


def parse_destination(text: str, calling_aet: str):
    """`AET@HOST:PORT` -> StoreSCU; `http(s)://...` -> StowRS. UserError for anything else."""
    if re.match(r"^https?://", text):
        return StowRS(text.rstrip("/"))
    m = re.match(r"^(.+)@([^@:]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$", text)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise UserError(f"--send-to {text!r}: expected AET@HOST:PORT (C-STORE) or http(s)://... (STOW-RS)")
    return StoreSCU(check_aet(m.group(1), "--send-to"), m.group(2).strip("[]"), int(m.group(3)), calling_aet)
