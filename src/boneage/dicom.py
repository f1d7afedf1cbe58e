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

Deflated Explicit VR Little Endian files are inflated here, in a bounded way, not by pydicom (which inflates the
whole stream at once): a 1 MB upload can inflate to gigabytes. The inflated data set may hold the pixel data the
header announces, twice over, plus `HEADER_BYTES`, and never more than `MAX_INFLATED_BYTES`; beyond that the file is
refused. `dcmread` is the one door every reader of DICOM bytes (the film reader, the service's admission, the node)
goes through.

Every failure is a `UserError` naming the file. pydicom is imported only when a DICOM is read.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from boneage.data.pixels import MAX_PIXELS, colour_fraction
from boneage.errors import UserError

# Modalities that are certainly not a projection radiograph of a hand: refused by `boneage.quality`.
NOT_RADIOGRAPH_MODALITIES = frozenset({"CT", "MR", "US", "NM", "PT", "MG", "XC", "ES", "OP", "OPT", "OCT", "SM", "ECG",
                                       "RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "SR", "DOC", "KO", "PR", "SEG"})
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
# A film of MAX_PIXELS in 16-bit gray (300 MB) or 8-bit colour (450 MB) fits; anything larger is no hand radiograph.
MAX_INFLATED_BYTES = 512 << 20
HEADER_BYTES = 8 << 20  # what a deflated header (before the pixel data) may inflate to: private tags, icons, overlays
_CHUNK = 1 << 20
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


def _announced_bytes(ds) -> int:
    """Bytes of pixel data the header announces, every frame; 0 when it does not say."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError):
        return 0
    return max(rows, 0) * max(cols, 0) * max(frames, 1) * max(samples, 1) * -(-max(bits, 1) // 8)


class _Inflater:
    """A raw deflate stream inflated into memory a chunk at a time, never past the limit asked for."""

    def __init__(self, fp):
        self.fp, self.out, self.pending = fp, io.BytesIO(), b""
        self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)

    def fill(self, limit: int) -> bool:
        """Inflate until the stream ends (True) or more than `limit` bytes are out (False)."""
        while not self.zlib.eof:
            if not self.pending:
                self.pending = self.fp.read(_CHUNK)
                if not self.pending:  # a truncated stream: what it gave, for the reader to judge
                    self.out.write(self.zlib.flush())
                    break
            self.out.write(self.zlib.decompress(self.pending, limit + 1 - self.out.tell()))
            self.pending = self.zlib.unconsumed_tail
            if self.out.tell() > limit:
                return False
        return self.out.tell() <= limit


def read_deflated(fp, name: str, stop_before_pixels: bool = False, preamble: bytes | None = None, meta=None):
    """A Deflated Explicit VR Little Endian data set (`fp` just past any file meta) -> pydicom `FileDataset`,
    inflated within the bounds of the module docstring. `UserError` naming the file beyond them."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import read_dataset

    inflater = _Inflater(fp)
    ended = inflater.fill(HEADER_BYTES)
    reached = []

    def at_pixels(tag, vr, length) -> bool:
        if tag == 0x7FE00010:
            reached.append(tag)
        return bool(reached)

    header = read_dataset(io.BytesIO(inflater.out.getvalue()), False, True, stop_when=at_pixels)
    if not ended and not reached:
        raise UserError(f"{name}: a deflated DICOM whose header inflates to more than {HEADER_BYTES >> 20} MB: "
                        "refused")
    if stop_before_pixels:
        ds = header
    else:
        rows, cols = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        if rows * cols > MAX_PIXELS:  # the film would be refused after decoding: refuse it before inflating it
            raise UserError(f"{name}: image too large ({cols} x {rows} pixels)")
        limit = min(MAX_INFLATED_BYTES, 2 * _announced_bytes(header) + HEADER_BYTES)
        if not inflater.fill(limit):
            raise UserError(f"{name}: a deflated DICOM that inflates to more than {limit >> 20} MB, far more than "
                            f"the {_announced_bytes(header):,} bytes of pixel data its header announces: refused")
        inflated, inflater = inflater.out, None
        inflated.seek(0)
        ds = read_dataset(inflated, False, True)
    out = FileDataset(name, ds, preamble=preamble, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    out.set_original_encoding(False, True, ds._character_set)
    return out


def dcmread(source: bytes | str | Path, name: str, stop_before_pixels: bool = False, force: bool = False):
    """`pydicom.dcmread` of a file or its bytes, with a deflated data set inflated by `read_deflated`: the one way
    DICOM bytes are read here. pydicom's exceptions pass through; `UserError` for a deflated bomb."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fp:
        preamble = read_preamble(fp, force)
        meta = _read_file_meta_info(fp)
        if str(meta.get("TransferSyntaxUID", "")).strip("\0 ") == DEFLATED:
            return read_deflated(fp, name, stop_before_pixels, preamble, meta)
        fp.seek(0)
        return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=force)


def _read_dataset(source: bytes | Path, name: str):
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = dcmread(source, name)
        except InvalidDicomError:  # no 'DICM' preamble: old files written without one are still read
            ds = dcmread(source, name, force=True)
    except UserError:
        raise
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
    latest = date.today() + timedelta(days=1)  # a study seen in a time zone ahead of this one
    for what, day in (("study date", study), ("birth date", born)):
        if day and day > latest:
            notes.append(f"the DICOM header's {what} {day.isoformat()} is in the future and was ignored")
    study, born = (study if study and study <= latest else None), (born if born and born <= latest else None)
    if born and study and study < born:
        notes.append(f"the DICOM header's study date {study.isoformat()} is before its birth date "
                     f"{born.isoformat()}: the dates were not used for the age")
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
