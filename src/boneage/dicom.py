"""Reading a DICOM radiograph: pixels as the model expects them (MONOCHROME2, bone bright) plus the header facts.

Pixel pipeline (DICOM PS3.3 C.11 order): stored values -> Modality LUT (Rescale Slope/Intercept or a Modality LUT
Sequence) -> VOI LUT (a VOI LUT Sequence if present, else the first Window Center/Width, with its VOI LUT Function)
-> inverted when MONOCHROME1 (or MONOCHROME2 with Presentation LUT Shape INVERSE) so that bone is bright. Colour
(RGB/YBR) files become luminance with the same weights Pillow uses for PNG/JPEG; multi-frame files give their first
frame. Any bit depth (8, 12, 16; signed or not) is kept as float32; the preprocessing's histogram equalisation does
not care about the scale.

Compressed transfer syntaxes are decoded by pydicom's plugins: RLE Lossless natively; JPEG Baseline/Extended, JPEG
Lossless (Process 14, SV1), JPEG-LS and JPEG 2000 / HTJ2K with `pylibjpeg`, `pylibjpeg-libjpeg`,
`pylibjpeg-openjpeg` (the `serve` extra; Pillow covers JPEG Baseline and JPEG 2000 alone). A missing decoder is a
`UserError` saying which package to install; a syntax no package decodes (MPEG-2, HEVC...) or an unknown transfer
syntax UID is a `UserError` saying so.

Every failure is a `UserError` naming the file. pydicom is imported only when a DICOM is read.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from boneage.data.pixels import MAX_PIXELS, colour_fraction
from boneage.errors import UserError

# Modalities that are certainly not a projection radiograph of a hand: refused by `boneage.quality`.
NOT_RADIOGRAPH_MODALITIES = frozenset({"CT", "MR", "US", "NM", "PT", "MG", "XC", "ES", "OP", "OPT", "OCT", "SM", "ECG",
                                       "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "SR", "DOC", "KO", "PR", "SEG"})
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_MONTHS_PER_UNIT = {"D": 12 / 365.25, "W": 7 * 12 / 365.25, "M": 1.0, "Y": 12.0}


@dataclass
class DicomImage:
    """A DICOM radiograph read for bone-age estimation. Ages in months; header facts are None when absent."""

    pixels: np.ndarray | None  # float32 (H, W), MONOCHROME2: bone bright (None once handed over for decoding)
    male: bool | None  # PatientSex M -> True, F -> False, O / empty / missing -> None
    age_months: float | None  # from PatientBirthDate and StudyDate if both are there, else from PatientAge ('010Y')
    study_date: date | None  # StudyDate, else AcquisitionDate, SeriesDate, ContentDate
    birth_date: date | None
    photometric: str  # as stored: MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, ...
    transfer_syntax: str  # its name, e.g. "JPEG Lossless, Non-Hierarchical, First-Order Prediction (...)"
    modality: str | None = None  # CR, DX, ...
    body_part: str | None = None  # BodyPartExamined, upper case
    bits_stored: int | None = None
    frames: int = 1
    voi: str = "none"  # what set the gray levels: "VOI LUT", "window C/W" or "none"
    colour_fraction: float | None = None  # for RGB/YBR files: share of clearly coloured pixels (see images.py)
    cross_sectional: str | None = None  # the header fact that marks a CT/MR-like slice, e.g. "ImageType AXIAL"
    notes: list[str] = field(default_factory=list)  # e.g. "first of 3 frames"

    def header(self) -> dict:
        """The facts a report or an API response shows (JSON-ready)."""
        return {"sex": None if self.male is None else ("M" if self.male else "F"),
                "age_months": None if self.age_months is None else round(self.age_months, 2),
                "study_date": self.study_date.isoformat() if self.study_date else None,
                "birth_date": self.birth_date.isoformat() if self.birth_date else None,
                "photometric": self.photometric, "transfer_syntax": self.transfer_syntax, "modality": self.modality,
                "body_part": self.body_part, "bits_stored": self.bits_stored, "frames": self.frames, "voi": self.voi,
                "notes": list(self.notes)}


def is_dicom(head: bytes) -> bool:
    """True for the first 132+ bytes of a DICOM Part 10 file (128-byte preamble, then 'DICM')."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _parse_age(value) -> float | None:
    """PatientAge 'nnnD|W|M|Y' -> months, or None."""
    m = _AGE.match(str(value or ""))
    return int(m.group(1)) * _MONTHS_PER_UNIT[m.group(2).upper()] if m else None


def _parse_da(value) -> date | None:
    text = str(value or "").strip()
    if len(text) >= 8 and text[:8].isdigit():
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
    return None


def _cross_sectional(ds) -> str | None:
    """The header fact that marks a slice of a volume (CT, MR, PET...), not a projection radiograph; None if none.

    Anonymisation often drops Modality but keeps the image-plane tags, which projection (CR/DX) IODs do not have."""
    image_type = ds.get("ImageType")
    kinds = [image_type] if isinstance(image_type, str) else list(image_type or [])
    if "AXIAL" in (str(k).strip().upper() for k in kinds):
        return "ImageType AXIAL"
    for key in ("ImageOrientationPatient", "SliceLocation", "SliceThickness"):
        if ds.get(key) not in (None, "", []):
            return key
    return None


def _read_dataset(source: bytes | Path, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    def read(force: bool):
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        return pydicom.dcmread(fp, force=force)

    try:
        try:
            ds = read(False)
        except InvalidDicomError:  # no 'DICM' preamble: old files written without one are still read
            ds = read(True)
    except Exception as exc:  # pydicom raises many kinds (EOFError, struct.error, ValueError...) for a broken file
        raise UserError(f"{name}: not a readable DICOM file ({_first_line(exc)})") from None
    if "PixelData" not in ds:
        raise UserError(f"{name}: not a DICOM image (no pixel data)")
    return ds


def _decoder_missing(ts) -> bool:
    """True when the transfer syntax is compressed and no installed plugin can decode it."""
    from pydicom.pixels import get_decoder

    try:
        return bool(ts is not None and ts.is_compressed and not get_decoder(ts).is_available)
    except NotImplementedError:  # a syntax pydicom has no decoder for at all
        return True


def _decoder_exists(ts) -> bool:
    """True when pydicom has a decoder for the syntax, installed or not (MPEG-2, HEVC...: none at all)."""
    from pydicom.pixels import get_decoder

    try:
        get_decoder(ts)
    except NotImplementedError:
        return False
    return True


def _decode_first_frame(ds, name: str) -> np.ndarray:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and not ts.is_transfer_syntax:  # a private or mistyped UID: pydicom raises on asking about it
        raise UserError(f"{name}: unknown transfer syntax UID {str(ts)[:64]}: its pixel data cannot be decoded")
    if _decoder_missing(ts):
        if not _decoder_exists(ts):  # installing packages would not help: say so, not what to install
            raise UserError(f"{name}: cannot decode {ts.name} pixel data: no decoder exists for it; send the image "
                            "uncompressed or as JPEG / JPEG 2000")
        raise UserError(f"{name}: cannot decode {ts.name} pixel data: install pylibjpeg, pylibjpeg-libjpeg and "
                        "pylibjpeg-openjpeg (pip install 'boneage[serve]')")
    try:
        ds.pixel_array_options(index=0)  # decode the first frame only
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # a broken stream: RuntimeError from every plugin, ValueError, NotImplementedError...
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Unable to decode") else _first_line(exc)
        raise UserError(f"{name}: DICOM pixel data cannot be decoded ({detail[:200]})") from None


def read_dicom(source: bytes | str | Path, name: str | None = None) -> DicomImage:
    """A DICOM file (path or bytes) -> `DicomImage`. Raises `UserError` naming the file for any problem."""
    if isinstance(source, bytes):
        name = name or "<DICOM bytes>"
    else:
        source = Path(source)
        name = name or str(source)
        if not source.is_file():
            raise UserError(f"{name}: no such file")
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise UserError(f"{name}: reading DICOM needs pydicom (pip install 'boneage[serve]')") from None

    ds = _read_dataset(source, name)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{name}: DICOM image without valid Rows/Columns") from None
    if rows * cols > MAX_PIXELS:  # decompression-bomb guard, before anything is decoded
        raise UserError(f"{name}: image too large ({cols} x {rows} pixels)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise UserError(f"{name}: a PALETTE COLOR DICOM is not a radiograph")

    arr = _decode_first_frame(ds, name)
    if arr.ndim == 3 and samples == 1:  # a multi-frame array despite index=0 (older plugins): take frame 0
        arr = arr[0]
    notes = [f"first of {frames} frames"] if frames > 1 else []
    voi, colour = "none", None
    try:
        if samples >= 3:  # pixel_array gives RGB (YBR converted); luminance with ITU-R 601 weights, like Pillow's "L"
            rgb = arr[..., :3].astype(np.float32)
            colour = colour_fraction(rgb)
            gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        else:
            gray = apply_modality_lut(arr, ds)
            if "VOILUTSequence" in ds:
                voi = "VOI LUT"
            elif "WindowCenter" in ds and "WindowWidth" in ds:
                voi = "window C/W"
            gray = apply_voi_lut(gray, ds, index=0) if voi != "none" else gray
            shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
            if photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE"):
                gray = np.asarray(gray, dtype=np.float32)  # stored integers: max + min overflows uint16
                gray = gray.max() + gray.min() - gray  # same range, bone bright
                if photometric == "MONOCHROME2":
                    notes.append("inverted for Presentation LUT Shape INVERSE")
        gray = np.asarray(gray, dtype=np.float32)
    except Exception as exc:  # a malformed LUT or window in the header
        raise UserError(f"{name}: DICOM gray-level transform failed ({_first_line(exc)})") from None
    if gray.ndim != 2:
        raise UserError(f"{name}: DICOM pixel data has shape {gray.shape}, expected one 2-D image")
    if gray.size and gray.min() < 0:  # signed data (e.g. after an intercept): shift, so the scale starts at 0
        gray = gray - gray.min()

    study = next((d for d in (_parse_da(ds.get(k)) for k in ("StudyDate", "AcquisitionDate", "SeriesDate",
                                                               "ContentDate")) if d), None)
    born = _parse_da(ds.get("PatientBirthDate"))
    age = _parse_age(ds.get("PatientAge"))
    if born and study and study >= born:
        from boneage.sds import age_from_dates

        age = age_from_dates(born, study)
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    bits = ds.get("BitsStored")
    return DicomImage(
        pixels=gray, male={"M": True, "F": False}.get(sex), age_months=age, study_date=study, birth_date=born,
        photometric=photometric, transfer_syntax=ts.name if ts is not None else "unknown",
        modality=(str(ds.get("Modality", "")).strip().upper() or None),
        body_part=(str(ds.get("BodyPartExamined", "")).strip().upper() or None),
        bits_stored=int(bits) if bits is not None else None, frames=frames, voi=voi, colour_fraction=colour,
        cross_sectional=_cross_sectional(ds), notes=notes)
