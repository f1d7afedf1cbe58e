"""Decoding a radiograph file into a float gray image, whatever its size, bit depth or format.

A decoding problem (not an image, truncated, unsupported mode) is a `UserError` that names the file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from boneage.errors import UserError

MAX_PIXELS = 150_000_000  # decompression-bomb guard: ~12,000 x 12,000, far past any hand radiograph


def _to_gray(img: Image.Image) -> np.ndarray:
    """Pillow image -> 2-D float32 array in the file's own gray scale (0..255 for 8-bit, 0..65535 for 16-bit)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("L")
    elif img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32)


def decode_image(data: bytes | Path | str, name: str | None = None) -> np.ndarray:
    """Decode PNG (8/16-bit), JPEG, WebP, TIFF or BMP into a 2-D float32 array. DICOM is read by `boneage.dicom`."""
    name = name or str(data)
    source = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
    if isinstance(source, Path) and not source.is_file():
        raise UserError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise UserError(f"{name}: image too large ({img.width} x {img.height} pixels)")
                img.load()  # force the full decode here, so a truncated file fails now, not later
                return _to_gray(img)
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{name}: image too large (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{name}: unreadable or truncated image ({exc})") from None


def load_image(path: Path | str) -> np.ndarray:
    """Any supported file, DICOM included, to a 2-D float32 gray array (MONOCHROME2: bone bright)."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        from boneage.dicom import read_dicom  # pydicom only when a DICOM is actually read

        return read_dicom(path).pixels
    return decode_image(path)
