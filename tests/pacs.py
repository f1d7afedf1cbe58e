"""Test helpers for the hospital node: DICOM films made from the example radiographs, a real PACS (Orthanc, from
Debian's packages) on loopback with a temporary configuration, and free ports."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb
MISSING_ORTHANC = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/test.sh does it as root)"

# The configuration and routing script the README gives a PACS administrator: the tests run exactly these.
HOSPITAL = REPO / "docs" / "hospital"
AET = "ORTHANC"  # the PACS's AE title in that configuration: the node's --allow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------------ films
def film(jpeg: str = "14471.jpg", sex: str = "M", birth: str = "20120115", study: str = "20220115",
         invert: bool = False, **tags):
    """A DX (for presentation) hand film of an example radiograph, in a new study, with a patient name that logs
    must never show."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    a = np.asarray(Image.open(REPO / "examples" / jpeg).convert("L"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ImageLaterality = "DX", "HAND", "L"
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Secret^Patient", "P-17", sex, birth
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = study, "101500", "A17", "S17"
    ds.set_pixel_data(255 - a if invert else a, "MONOCHROME2", 8)
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def dicom_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def send(ds_list, port: int, calling: str = AET, called: str = "BONEAGE", contexts=None):
    """C-STORE each dataset to the node: the association's result (rejected / accepted) and the statuses."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for cx in contexts or sorted({str(ds.SOPClassUID) for ds in ds_list}):
        ae.add_requested_context(cx, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return "rejected" if assoc.is_rejected else "failed", []
    statuses = []
    for ds in ds_list:
        try:
            status = assoc.send_c_store(ds)
            statuses.append((status.Status, str(status.get("ErrorComment", ""))) if status else (None, ""))
        except ValueError as exc:  # no accepted presentation context for it
            statuses.append(("no context", str(exc)))
    assoc.release()
    return "accepted", statuses


def wait_for(check, timeout_s: float = 60.0, every_s: float = 0.2):
    """Poll `check()` until it returns something truthy; returns it, or the last value after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


# ---------------------------------------------------------------------------------------------------- Orthanc
class Orthanc:
    """Orthanc on 127.0.0.1 with its own storage and ports, routing hand films to a node; stop() and start() keep
    its data. (Orthanc 1.10 has no bind address: remote HTTP is refused by RemoteAccessAllowed false, remote DICOM
    by accepting stores only from the modalities it knows, on their hosts. The tests only use 127.0.0.1.)"""

    def __init__(self, folder: Path, node_port: int):
        self.folder, self.http_port, self.dicom_port, self.node_port = folder, free_port(), free_port(), node_port
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = json.loads((HOSPITAL / "orthanc.json").read_text())
        assert config["DicomAet"] == AET
        config |= {"Name": "test PACS", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                   "HttpPort": self.http_port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
                   "DicomModalities": {"BONEAGE": ["BONEAGE", "127.0.0.1", node_port]},
                   "LuaScripts": [str(HOSPITAL / "boneage-route.lua")],
                   "Plugins": [p for p in config["Plugins"] if Path(p).is_file()]}
        (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import httpx

        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        if not wait_for(lambda: self._up(httpx), 20, 0.05):
            raise RuntimeError(f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")

    def _up(self, httpx) -> bool:
        try:
            return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, ds) -> dict:
        import httpx

        r = httpx.post(f"{self.url}/instances", content=dicom_bytes(ds), timeout=30)
        r.raise_for_status()
        return r.json()

    def study_series(self, study_uid: str) -> list[dict]:
        """The study's series (MainDicomTags and instance ids), [] if Orthanc has no such study."""
        import httpx

        found = httpx.post(f"{self.url}/tools/lookup", content=study_uid, timeout=10).json()
        if not found:
            return []
        return httpx.get(f"{self.url}/studies/{found[0]['ID']}/series", params={"expand": ""}, timeout=10).json()

    def instance(self, instance_id: str):
        import httpx
        import pydicom

        return pydicom.dcmread(io.BytesIO(httpx.get(f"{self.url}/instances/{instance_id}/file", timeout=10).content))

    def answers(self, study_uid: str) -> dict[str, list]:
        """{'SR': [datasets], 'OT': [datasets]} of the study's series that are not the films."""
        out: dict[str, list] = {}
        for series in self.study_series(study_uid):
            modality = series["MainDicomTags"].get("Modality")
            if modality in ("SR", "OT"):
                out.setdefault(modality, []).extend(self.instance(i) for i in series["Instances"])
        return out


# ------------------------------------------------------------------------------------------------ objects
DCIODVFY = shutil.which("dciodvfy")
MISSING_DCIODVFY = "dciodvfy is not installed (apt-get install dicom3tools; scripts/test.sh does it as root)"


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of Debian's DICOM validator (dicom3tools) that report an error."""
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def sr_items(ds) -> list:
    """Every content item of an SR, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += sr_items(item)
    return out


def sr_value(ds, code: str, scheme: str = "99BONEAGE"):
    """The value of the first item named (code, scheme): a number, a text, or a code's meaning."""
    for item in sr_items(ds):
        name = item.ConceptNameCodeSequence[0]
        if (name.CodeValue, name.CodingSchemeDesignator) == (code, scheme):
            if item.ValueType == "NUM":
                return float(item.MeasuredValueSequence[0].NumericValue)
            if item.ValueType == "TEXT":
                return str(item.TextValue)
            if item.ValueType == "CODE":
                return str(item.ConceptCodeSequence[0].CodeMeaning)
    return None


def make_tiny_model(path: Path) -> Path:
    """An untrained tiny network (64 px) as a weights file: the whole assessment, in milliseconds."""
    import torch

    from boneage.config import ModelConfig, Preprocess, TrainConfig, to_dict
    from boneage.inference.weights import make_weights_file
    from boneage.models import create_model

    torch.manual_seed(0)
    cfg = TrainConfig(model=ModelConfig(arch="tiny_cnn", hidden=(32,)), preprocess=Preprocess(image_size=64))
    torch.save(make_weights_file(create_model(cfg.model).state_dict(), to_dict(cfg), "float32"), path)
    return path
