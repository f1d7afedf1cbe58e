"""The Secondary Capture's pixels: what any PACS viewer shows of an answer, without an SR viewer.

    +------------------------------------------------------------------+
    | BONE AGE 10 y 3 m (123.4 ± 1.2 months)         (headline, large) |
    | SDS +0.45 against Greulich & Pyle ...; chronological age ...     |
    | warnings, or why the film was not analysed                       |
    +--------------------------------+---------------------------------+
    | the film, windowed for display | the Greulich & Pyle chart       |
    +--------------------------------+---------------------------------+
    | UNVERIFIED machine estimate ... research software                |
    +------------------------------------------------------------------+

White text on black, like the films around it in a viewer. Fonts: DejaVu Sans, which matplotlib ships (no system font
is assumed). No patient name or identifier is drawn: the picture identifies no one on its own.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FILM_BOX = (770, 820)  # (width, height) in pixels the film is shrunk into: the chart (770 x 814) fits too
MARGIN = 24
WIDTH = 2 * FILM_BOX[0] + 3 * MARGIN  # the chart or an empty panel beside the film: one width for every answer
WHITE, GRAY, ORANGE, RED = (255, 255, 255), (190, 190, 190), (255, 160, 60), (255, 90, 80)


@dataclass(frozen=True)
class Line:
    """One line (or paragraph, wrapped to the picture's width) of the header."""

    text: str
    size: int = 22  # pixels
    colour: tuple[int, int, int] = WHITE


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _film(gray: np.ndarray) -> Image.Image:
    """The film as a person views it: a percentile window (display only), shrunk into FILM_BOX."""
    k = max(1, max(gray.shape) // (2 * max(FILM_BOX)))
    if k > 1:  # block means first: a 9,000-pixel film is not windowed at full size for a picture of 800
        h, w = gray.shape[0] // k * k, gray.shape[1] // k * k
        gray = gray[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float32)
    lo, hi = np.percentile(gray, (0.5, 99.5))
    u8 = np.round(np.clip((gray - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8) if hi > lo else \
        np.zeros(gray.shape, np.uint8)
    img = Image.fromarray(u8).convert("RGB")
    scale = min(FILM_BOX[0] / img.width, FILM_BOX[1] / img.height)  # small films are enlarged too
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)


def _wrapped(lines: list[Line]) -> list[Line]:
    out = []
    for line in lines:
        chars = max(20, int((WIDTH - 2 * MARGIN) / (0.58 * line.size)))  # DejaVu Sans: ~0.55 em per character
        out += [Line(t, line.size, line.colour) for t in textwrap.wrap(line.text, chars) or [""]]
    return out


def _height(lines: list[Line]) -> int:
    return sum(round(1.35 * line.size) for line in lines)


def render(header: list[Line], footer: list[Line], gray: np.ndarray | None = None,
           chart_png: bytes | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB: the header's lines, the film and the chart side by side (either may be absent), the
    footer's lines."""
    header, footer = _wrapped(header), _wrapped(footer)
    panels = []
    if gray is not None:
        panels.append(_film(np.asarray(gray, dtype=np.float32)))
    if chart_png is not None:
        panels.append(Image.open(io.BytesIO(chart_png)).convert("RGB"))
    panel_h = max((p.height for p in panels), default=0)
    top = MARGIN + _height(header) + MARGIN
    height = top + panel_h + (MARGIN if panels else 0) + _height(footer) + MARGIN
    canvas = Image.new("RGB", (WIDTH, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for line in header:
        draw.text((MARGIN, y), line.text, font=_font(line.size), fill=line.colour)
        y += round(1.35 * line.size)
    x = MARGIN
    for panel in panels:
        canvas.paste(panel, (x, top + (panel_h - panel.height) // 2))
        x += FILM_BOX[0] + MARGIN
    y = top + panel_h + (MARGIN if panels else 0)
    for line in footer:
        draw.text((MARGIN, y), line.text, font=_font(line.size), fill=line.colour)
        y += round(1.35 * line.size)
    return np.asarray(canvas)
