"""Decoding a radiograph file into a float gray image, whatever its size, bit depth or format.

PNG (8/16-bit), JPEG, WebP, TIFF (8/16-bit, float), BMP through Pillow; DICOM through `boneage.dicom`, recognised by
its content (the 'DICM' magic at byte 128) or a .dcm/.dicom suffix. A decoding problem (not an image, truncated,
unsupported mode, too large) is a `UserError` that names the file.

`read_image` returns the gray image with what `boneage.quality` needs (how colourful the file was, the DICOM header);
`decode_image` returns the gray image alone.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from boneage.data.pixels import MAX_PIXELS, colour_fraction
from boneage.dicom import DicomImage, is_dicom, read_dicom
from boneage.errors import UserError

_WIDE = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # Pillow modes kept at their own bit depth


@dataclass
class Decoded:
    """A decoded input: the gray image, plus facts about the file for the quality checks and the report."""

    gray: np.ndarray  # float32 (H, W), bone bright, in the file's own scale (0..255, 0..65535, ...)
    colour_fraction: float | None = None  # colour files only: share of clearly coloured pixels (photos: high)
    dicom: DicomImage | None = None  # DICOM files only: the header facts (sex, age, dates...)
    notes: list[str] = field(default_factory=list)  # for the record's warnings, e.g. "first of 3 frames"
    full_scale: float | None = None  # 255 for an 8-bit file; None where the scale is the file's own (16-bit, DICOM)


def _to_gray(img: Image.Image) -> np.ndarray:
    """Pillow image -> 2-D float32 array in the file's own gray scale (0..255 for 8-bit, 0..65535 for 16-bit)."""
    if img.mode in _WIDE:
        gray = np.asarray(img, dtype=np.float32)
        if img.format == "TIFF" and getattr(img, "tag_v2", {}).get(262) == 0:
            # WhiteIsZero (TIFF's MONOCHROME1): Pillow inverts it for 8-bit but not for 16-bit or float data
            bits = img.tag_v2.get(258, (16,))
            bits = bits[0] if isinstance(bits, tuple) else bits
            gray = (float(2 ** int(bits) - 1) if img.mode != "F" else gray.max() + gray.min()) - gray
        return gray
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("L")
    elif img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32)


def _colour_of(img: Image.Image) -> float | None:
    """colour_fraction of a Pillow image that carries colour, None for a gray one."""
    if img.mode in ("L", "LA", "1") or img.mode in _WIDE:
        return None
    if img.mode == "P" and img.getpalette() is not None:
        pal = np.asarray(img.getpalette(), dtype=np.int32).reshape(-1, 3)
        if (pal.max(axis=1) == pal.min(axis=1)).all():  # a gray palette
            return None
    rgb = img.convert("RGB")
    k = max(1, max(rgb.size) // 512)
    return colour_fraction(np.asarray(rgb.reduce(k) if k > 1 else rgb))


def _head(data: bytes | Path) -> bytes:
    if isinstance(data, bytes):
        return data[:132]
    with open(data, "rb") as f:
        return f.read(132)


def read_image(data: bytes | Path | str, name: str | None = None) -> Decoded:
    """Any supported file or its bytes -> `Decoded`. DICOM is recognised by content or by a .dcm/.dicom suffix."""
    name = name or ("<image bytes>" if isinstance(data, bytes) else str(data))
    source = data if isinstance(data, bytes) else Path(data)
    if isinstance(source, Path) and not source.is_file():
        raise UserError(f"{name}: no such file")
    suffix = Path(name).suffix.lower()
    if is_dicom(_head(source)) or suffix in (".dcm", ".dicom"):
        dcm = read_dicom(source, name)
        gray, dcm.pixels = dcm.pixels, None  # the header goes on with the record: it must not hold the film too
        return Decoded(gray, dcm.colour_fraction, dcm, list(dcm.notes))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise UserError(f"{name}: image too large ({img.width} x {img.height} pixels)")
                img.load()  # force the full decode here, so a truncated file fails now, not later
                # an animated GIF or a multi-page TIFF: the first frame is the film, as for a multi-frame DICOM
                gray, colour = _to_gray(img), _colour_of(img)
                frames = getattr(img, "n_frames", 1)  # counted after the decode: counting seeks through the file
                return Decoded(gray, colour, notes=[f"first of {frames} frames"] if frames > 1 else [],
                               full_scale=None if img.mode in _WIDE else 255.0)
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{name}: image too large (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{name}: unreadable or truncated image ({exc})") from None


def decode_image(data: bytes | Path | str, name: str | None = None) -> np.ndarray:
    """Decode PNG (8/16-bit), JPEG, WebP, TIFF, BMP or DICOM (by content) into a 2-D float32 array."""
    return read_image(data, name).gray
