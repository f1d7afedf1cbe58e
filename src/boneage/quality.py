"""Input checks: refuse, with a one-line reason, an input that would give a nonsense bone age.

Refusals (`UserError`, message "NAME: reason"), in the order they are tried:
- not an image, truncated, absurdly large (decompression-bomb guard): raised while decoding (`boneage.data.images`,
  `boneage.dicom`) and passed through by `read_checked`;
- empty, non-finite or constant (or nearly: >= 99% of pixels at one value);
- too small (< 64 pixels a side) or too elongated (aspect ratio over 4:1);
- a colour picture (over 10% of pixels clearly coloured), a drawing (fewer than 16 gray levels), or a DICOM whose
  Modality is not a projection radiograph (CT, MR, US...), whose header marks a cross-sectional slice (image-plane
  tags, ImageType AXIAL), or whose BodyPartExamined is clearly another part (HEAD, CHEST, ABDOMEN, FOOT...);
- probably not a hand radiograph: texture statistics outside the range seen on real radiographs;
- probably inverted: bone dark on a bright background (e.g. a MONOCHROME1 image exported without its inversion);
- probably not a hand radiograph from its layout and texture (`not_hand_score`): a whole-body scan, an ultrasound, a
  CT slice or a photograph whose header is gone.
Warnings (returned, not raised): a DICOM BodyPartExamined not recognised as a hand, wrist or upper limb, nor as another
part; borderline inversion scores; an 8-bit film of a narrow gray range (under 80 of 255 levels between its 1st and
99th percentiles: such films are read less accurately and move more under noise or re-encoding, model card).

Texture statistics are computed on the image squeezed to 128 x 128 with the model's own resize, cropped to its content
(`_trim`: outer rows and columns dropped that are uniform, or at the level of a frame around the picture - scanner
frames, padding of any gray level, shaded by a gradient or a vignette or carrying a viewer's text, a light box, empty
background), cut to 64 levels between its 1st and 99th percentiles and histogram-equalised (bit depth and a linear
window do not matter; the levels keep sensor noise in a flat background from being blown up; a gamma moves the
statistics, by up to ~40% on a drawn hand): mean |gradient| (`grad`), share of strong edges (`edge`), lag-1 and lag-8
autocorrelations (`acf1`, `acf8`), Laplacian over gradient energy (`hf`). An image is refused when one lies outside the
range of 2,000 real radiographs widened by 20% (`ENVELOPE`). The inversion score is a logistic regression on the mean
brightness of that image in a 4 x 4 grid made left-right symmetric (a left or a right hand): 8 weights
(`INVERTED_WEIGHTS`) fitted on the same 2,000 radiographs against themselves inverted (255 - image).

What these checks catch and miss, measured on the RSNA films, framed, inverted and generated images
(`benchmarks/quality_frames.py`, `benchmarks/not_hand_fit.py`): docs/benchmarks.md, "Input checks". A cheap screen,
not a body-part classifier: radiographs of other body parts may pass.

The service's recipe: `checked = read_checked(upload_bytes, filename)` (raises `UserError`), then
`predictor.model_input(checked.gray)`; `checked.warnings` and `checked.dicom` (sex, age, dates) go into the assessment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from boneage.config import Preprocess
from boneage.data.images import Decoded, read_image
from boneage.data.preprocess import equalize, resize
from boneage.dicom import NOT_RADIOGRAPH_MODALITIES, DicomImage
from boneage.errors import UserError

MIN_SIDE = 64  # pixels; the RSNA originals are ~1,500-2,500 a side, the smallest useful copy ~100
MAX_ASPECT = 4.0  # long side / short side; hand radiographs are about 1.2-1.6
MAX_MODE_SHARE = 0.99  # share of pixels at the single most common value
MAX_COLOUR = 0.10  # share of clearly coloured pixels (see images.colour_fraction); gray radiographs score ~0
MIN_LEVELS = 16  # distinct gray values (on a 1/4 subsample); the RSNA 8-bit JPEGs have at least 46
# 8-bit films spanning fewer levels than this between their 1st and 99th percentiles get a warning: on the RSNA
# validation films (2026-12-08, benchmarks/film_sources.py) the 344 of 2,522 that narrow were read at MAD 9.1 months
# against 7.0 for the 2,062 over 140 levels; of the first 100, the 15 that narrow moved seven times more under sensor
# noise and re-encoding than the 80 over 140 (SD of one determination 4.9 and 2.8 against 0.7 and 0.4 months: 3 gray
# levels of noise are 4-14 % of such a film's range, and the equalisation stretches them with it). Not asked of
# 16-bit files or DICOM: their scale is their own, and a narrow share of 65,535 levels is still hundreds of levels.
NARROW_LEVELS = 80
HAND_PARTS = ("HAND", "WRIST", "FINGER", "UPPER LIMB", "UPPER EXTREMITY", "EXTREMITY", "ARM", "FOREARM")
# BodyPartExamined words (DICOM PS3.16 Annex L defined terms and common free text) of parts that are not a hand:
# a refusal whatever the Modality says (it is often removed by anonymisation). Matched as whole words and as two
# adjacent words run together ("WHOLE BODY", "C-SPINE", "LOWER LIMB"); a hand or wrist word anywhere wins (a "HAND AND
# FOOT" series stays answered), and upper-limb words that may frame a hand (ARM, EXTREMITY) are not in the list.
NOT_HAND_PARTS = frozenset("""
    HEAD SKULL BRAIN FACE JAW MANDIBLE SINUS ORBIT TMJ IAC EAR NOSE NECK HEADNECK
    CHEST THORAX LUNG HEART BREAST RIB RIBS STERNUM CLAVICLE SCAPULA SHOULDER ELBOW HUMERUS
    ABDOMEN ABDOMENPELVIS CHESTABDOMEN CHESTABDPELVIS ABDPELVIS LIVER KIDNEY BLADDER PROSTATE UTERUS PELVIS
    SPINE CSPINE TSPINE LSPINE SSPINE CTSPINE TLSPINE LSSPINE SACRUM COCCYX
    HIP FEMUR KNEE PATELLA LEG TIBIA FIBULA ANKLE FOOT FEET TOE TOES HEEL CALCANEUS LOWERLIMB LOWEREXTREMITY
    WHOLEBODY
""".split())
_PP = Preprocess(image_size=128, channels=1, resize="stretch")

# Texture envelope (lo, hi): the min and max over 2,000 real radiographs, widened by 20% of the range on each side.
ENVELOPE = {
    "grad": (0.008, 0.073),
    "edge": (0.009, 0.427),
    "acf1": (0.78, 1.0),  # low side lowered after validation: two held-out films at 0.81
    "acf8": (0.178, 0.948),
    "hf": (1.287, 3.701),
}
# Inversion: logit = INVERTED_BIAS + weights . (mean equalised brightness of the 8 left-right symmetric grid cells,
# rows 1 (fingers) to 4 (forearm), each as (outer, inner) column). Refuse above REFUSE, warn above WARN.
INVERTED_WEIGHTS = (-3.559, 7.735, 7.488, 0.146, 10.845, -11.721, 3.779, -2.639)
INVERTED_BIAS = -6.364
INVERTED_REFUSE = 2.0  # the 99.9th percentile of the real calibration radiographs is 0.5
INVERTED_WARN = -1.8  # their 99.5th percentile
# Not a hand radiograph, from pixels alone: logit = NOT_HAND_BIAS + weights . features (NOT_HAND_KEYS, then the 8 grid
# cells); refused above 0. Fitted by benchmarks/not_hand_fit.py --print-constants (logistic regression, 3,000 RSNA
# films against 800 generated impostors, `boneage.data.impostors`; 0 is the highest score of those 3,000 films).
NOT_HAND_KEYS = ("grad", "edge", "acf1", "acf8", "hf", "dark", "runs", "ring", "level", "spread")
NOT_HAND_WEIGHTS: dict[str, float] = {
    "grad": 408, "edge": 9.464, "acf1": 230.1, "acf8": -6.438, "hf": 5.06,
    "dark": -11.95, "runs": -0.2273, "ring": 21.84, "level": 8.885, "spread": 19.59,
    "grid0": -21.6, "grid1": 2.76, "grid2": 1.946, "grid3": 13.69,
    "grid4": 15.91, "grid5": -14.31, "grid6": -10.82, "grid7": -3.23,
}
NOT_HAND_BIAS = -246.63


def _border_level(r: np.ndarray, tol: float) -> np.ndarray:
    """The level a frame around the picture would have at each pixel: a surface fitted to the outermost rows and
    columns, robustly. First the plane that most of them lie within `tol` of (the best of 64 seeded random draws of
    3 pixels: a film touching one or two sides of its canvas, text or a marker do not move it), then a quadratic
    refitted on the pixels close to it. A uniform, linearly shaded or vignetted frame is fitted exactly."""
    h, w = r.shape
    y, x = np.mgrid[0:h, 0:w]
    ring = np.zeros((h, w), dtype=bool)
    ring[[0, -1]], ring[:, [0, -1]] = True, True
    ry, rx, v = y[ring] / max(h - 1, 1), x[ring] / max(w - 1, 1), r[ring].astype(np.float64)
    a = np.stack([np.ones_like(rx), rx, ry, rx * rx, ry * ry, rx * ry], axis=1)  # (ring pixels, 6)
    picks = np.random.default_rng(0).choice(len(v), (64, 3))
    m = a[picks, :3]  # (64, 3, 3)
    ok = np.abs(np.linalg.det(m)) > 1e-9  # not three collinear pixels
    planes = np.linalg.solve(m[ok], v[picks[ok]][..., None])[..., 0]  # (k, 3)
    if len(planes):
        best = planes[np.argmax(np.sum(np.abs(v[None] - planes @ a[:, :3].T) <= tol, axis=1))]
    else:
        best = np.array([np.median(v), 0.0, 0.0])
    coef = np.r_[best, 0.0, 0.0, 0.0]
    keep = np.abs(v - a[:, :3] @ best) <= 2.5 * tol
    for _ in range(3):
        if keep.sum() < 12:
            break
        coef = np.linalg.lstsq(a[keep], v[keep], rcond=None)[0]
        keep = np.abs(v - a @ coef) <= 2.5 * tol
    gy, gx = np.arange(h)[:, None] / max(h - 1, 1), np.arange(w)[None, :] / max(w - 1, 1)
    return coef[0] + coef[1] * gx + coef[2] * gy + coef[3] * gx * gx + coef[4] * gy * gy + coef[5] * gx * gy


def _trim(r: np.ndarray) -> np.ndarray:
    """Cut to the content: drop outer rows and columns that are uniform (>= 90% within 3% of the 1st-99th percentile
    range of their median) or >= 90% border. Border: pixels within that tolerance of the level a frame around the
    picture has there (`_border_level`: any gray level, uniform or shaded by a gradient or a vignette), and, of the
    rest, what is thinner than 3 pixels (burned-in text, lines) or in pieces under 2% of the largest (specks, a small
    marker). So a frame, padding, a light box or empty background goes, up to the film's edge or the hand; the film
    touching one or two sides of its canvas is no matter."""
    lo, hi = np.percentile(r, (1, 99))
    tol = 0.03 * float(hi - lo)
    # off the frame's level, less what is thinner than 3 pixels (text strokes, lines) and small pieces (specks)
    off = ndimage.binary_opening(np.abs(r - _border_level(r, tol)) > tol, structure=np.ones((3, 3)))
    pieces, n = ndimage.label(off, structure=np.ones((3, 3)))
    sizes = np.bincount(pieces.ravel())[1:]
    content = np.isin(pieces, 1 + np.flatnonzero(sizes >= 0.02 * sizes.max())) if n else np.zeros(r.shape, bool)

    def border(values: np.ndarray, inside: np.ndarray) -> bool:
        return np.mean(inside) <= 0.1 or np.mean(np.abs(values - np.median(values)) <= tol) >= 0.9

    t, b, left, right = 0, r.shape[0], 0, r.shape[1]
    while b - t > 32 and border(r[t, left:right], content[t, left:right]):
        t += 1
    while b - t > 32 and border(r[b - 1, left:right], content[b - 1, left:right]):
        b -= 1
    while right - left > 32 and border(r[t:b, left], content[t:b, left]):
        left += 1
    while right - left > 32 and border(r[t:b, right - 1], content[t:b, right - 1]):
        right -= 1
    return r[t:b, left:right]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else 1.0


def image_features(gray: np.ndarray) -> dict[str, float | list[float]]:
    """The statistics the checks use (see the module docstring). `grid`: the 8 inputs of the inversion score."""
    r = _trim(resize(np.asarray(gray, dtype=np.float32), _PP))  # (h, w), h, w <= 128
    # 64 levels between the 1st and 99th percentiles before equalising: sensor noise in a flat background stays flat
    # (equalising it raw would spread it over the background's whole share of the gray range)
    lo, hi = np.percentile(r, (1, 99))
    u = equalize(np.floor(np.clip((r - lo) / max(float(hi - lo), 1e-12), 0, 1) * 63))  # (h, w) in [0, 1]
    dx, dy = np.diff(u, axis=1), np.diff(u, axis=0)
    grad = 0.5 * float(np.abs(dx).mean() + np.abs(dy).mean())
    lap = np.abs(4 * u[1:-1, 1:-1] - u[:-2, 1:-1] - u[2:, 1:-1] - u[1:-1, :-2] - u[1:-1, 2:]).mean()
    h, w = u.shape
    cells = np.array([[u[i * h // 4:(i + 1) * h // 4, j * w // 4:(j + 1) * w // 4].mean() for j in range(4)]
                      for i in range(4)])
    cells = (cells + cells[:, ::-1]) / 2  # a left hand and a right hand score alike
    v = np.clip((r - lo) / max(float(hi - lo), 1e-12), 0, 1)  # the trimmed image, linear, for its layout
    bright = v > v.mean()
    edge_w = max(1, min(h, w) // 10)
    ring = np.ones((h, w), bool)

    def across(b: np.ndarray, axis: int) -> float:
        return float(np.abs(np.diff(b, axis=axis)).sum(axis).mean())

    ring[edge_w:-edge_w, edge_w:-edge_w] = False
    return {
        "grad": grad,
        "edge": float(np.mean(np.hypot(dx[:-1], dy[:, :-1]) > 0.1)),
        "acf1": 0.5 * (_corr(u[:, 1:], u[:, :-1]) + _corr(u[1:], u[:-1])),
        "acf8": 0.5 * (_corr(u[:, 8:], u[:, :-8]) + _corr(u[8:], u[:-8])),
        "hf": float(lap) / max(grad, 1e-6),
        "grid": cells[:, :2].ravel().tolist(),  # rows 1-4: (outer, inner) column means
        "dark": float(np.mean(v < 0.2)),  # the film's background: a large share on a hand radiograph
        "runs": float(max(across(bright, 1), across(bright, 0))),  # crossings of the bright parts: fingers, bones
        "ring": float(v[ring].mean() - v[~ring].mean()),  # edges darker than the middle on a film
        "level": float(v.mean()),
        "spread": float(v.std()),
    }


def body_part_is_not_a_hand(body_part: str) -> bool:
    """True for a BodyPartExamined value that names another part of the body (see NOT_HAND_PARTS)."""
    words = re.findall(r"[A-Z]+", body_part.upper())
    if {"HAND", "HANDS", "WRIST", "FINGER", "FINGERS", "THUMB", "CARPUS", "METACARPUS"} & set(words):
        return False
    return bool(NOT_HAND_PARTS & (set(words) | {a + b for a, b in zip(words, words[1:])}))


def inverted_score(features: dict) -> float:
    """Logit of 'this radiograph is shown inverted' (> INVERTED_REFUSE: refused)."""
    return INVERTED_BIAS + float(np.dot(INVERTED_WEIGHTS, features["grid"]))


def not_hand_score(features: dict) -> float:
    """Logit of 'this is not a hand radiograph' (a whole-body scan, an ultrasound, a CT slice, a photograph; > 0:
    refused)."""
    values = [features[k] for k in NOT_HAND_KEYS] + list(features["grid"])
    return NOT_HAND_BIAS + float(np.dot(list(NOT_HAND_WEIGHTS.values()), values))


def gray_span(gray: np.ndarray) -> float:
    """The film's gray range: its 1st to 99th percentile, in its own scale (NARROW_LEVELS is of 255)."""
    lo, hi = np.percentile(gray, (1, 99))
    return float(hi - lo)


def check_image(gray: np.ndarray, name: str, colour_fraction: float | None = None,
                dicom: DicomImage | None = None, full_scale: float | None = None) -> list[str]:
    """Raise `UserError` ("NAME: reason") for an input that is not a usable hand radiograph; else return warnings.

    gray: float (H, W) as decoded (bone bright). colour_fraction, dicom and full_scale (255 for an 8-bit file): from
    `boneage.data.images.read_image`.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0:
        raise UserError(f"{name}: empty image (shape {gray.shape})")
    if not np.isfinite(gray).all():
        raise UserError(f"{name}: pixel values that are not finite numbers (NaN or infinity)")
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        raise UserError(f"{name}: image too small ({w} x {h} pixels; at least {MIN_SIDE} a side)")
    lo, hi = float(gray.min()), float(gray.max())
    if hi == lo:
        raise UserError(f"{name}: empty or constant image (every pixel is {lo:g})")
    if max(h, w) / min(h, w) > MAX_ASPECT:
        raise UserError(f"{name}: not a hand radiograph (aspect ratio {max(h, w) / min(h, w):.1f}:1, "
                        f"at most {MAX_ASPECT:g}:1)")
    sub = gray[::4, ::4] if min(h, w) >= 4 * MIN_SIDE else gray  # enough to count levels and find the mode
    values, counts = np.unique(sub, return_counts=True)
    mode = values[counts.argmax()]
    share = float(np.mean(gray == mode))
    if share >= MAX_MODE_SHARE:
        raise UserError(f"{name}: nearly constant image ({share:.1%} of pixels are {mode:g})")
    if colour_fraction is not None and colour_fraction > MAX_COLOUR:
        raise UserError(f"{name}: a colour picture ({colour_fraction:.0%} of pixels clearly coloured), "
                        "not a radiograph")
    warnings: list[str] = []
    if dicom is not None:
        if dicom.modality in NOT_RADIOGRAPH_MODALITIES:
            raise UserError(f"{name}: DICOM Modality {dicom.modality} is not a radiograph")
        if dicom.cross_sectional:
            raise UserError(f"{name}: a cross-sectional slice (DICOM {dicom.cross_sectional}), not a radiograph "
                            "of a hand")
        if dicom.body_part and body_part_is_not_a_hand(dicom.body_part):
            raise UserError(f"{name}: DICOM BodyPartExamined is {dicom.body_part}, not a hand")
        if dicom.body_part and not any(p in dicom.body_part for p in HAND_PARTS):
            warnings.append(f"DICOM BodyPartExamined is {dicom.body_part}, not recognised as a hand")
    if len(values) < MIN_LEVELS:
        raise UserError(f"{name}: only {len(values)} gray levels: a drawing or a binary image, not a radiograph")

    f = image_features(gray)
    for key, (low, high) in ENVELOPE.items():
        if not low <= f[key] <= high:
            raise UserError(f"{name}: probably not a hand radiograph ({key} {f[key]:.3f} outside the range of real "
                            f"radiographs, {low:.3f} to {high:.3f})")
    score = inverted_score(f)
    if score > INVERTED_REFUSE:
        raise UserError(f"{name}: probably inverted (background brighter than the hand, score {score:.1f} > "
                        f"{INVERTED_REFUSE:.1f}); send the DICOM, or invert the image, so that bone is bright")
    not_hand = not_hand_score(f)
    if not_hand > 0:
        raise UserError(f"{name}: probably not a hand radiograph (its layout and texture score {not_hand:.1f} > 0, "
                        "like a whole-body scan, an ultrasound, a CT slice or a photograph)")
    if score > INVERTED_WARN:
        warnings.append(f"the image may be inverted (score {score:.1f}): check that bone is bright")
    if full_scale:
        span = 255 * gray_span(sub) / full_scale
        if span < NARROW_LEVELS:
            warnings.append(f"narrow gray range ({span:.0f} of 255 levels between the 1st and 99th percentiles): "
                            "such films are read less accurately and move more under noise; send the 16-bit or "
                            "DICOM original if there is one")
    return warnings


@dataclass
class CheckedImage:
    """An input that passed every check: what the predictor needs, and what a report shows."""

    name: str
    gray: np.ndarray  # float32 (H, W), bone bright: give it to `Predictor.model_input`
    warnings: list[str] = field(default_factory=list)
    dicom: DicomImage | None = None  # header facts (sex, age, study date) when the input was DICOM


def read_checked(data: bytes | str | Path, name: str | None = None) -> CheckedImage:
    """Decode any supported input (DICOM recognised by content) and run every check. Raises `UserError`."""
    name = name or ("<upload>" if isinstance(data, bytes) else str(data))
    decoded: Decoded = read_image(data, name)
    warnings = decoded.notes + check_image(decoded.gray, name, decoded.colour_fraction, decoded.dicom,
                                           decoded.full_scale)
    return CheckedImage(name=name, gray=decoded.gray, warnings=warnings, dicom=decoded.dicom)
