"""A child's bone ages on the Greulich & Pyle reference chart: bone age against chronological age, as a PNG.

One chart per child, one or several films. The reference is the one `boneage.sds` computes the SDS from (the Brush
Foundation table shipped in `boneage/reference/`, read through `boneage.sds.load_reference`): for the child's sex, the
mean skeletal age by chronological age, and bands of +-1 SD and +-2 SD around it, interpolated linearly between the
table's rows and drawn only over the table's range (3 months to 17 y for boys, 16 y for girls; nothing is
extrapolated). A film outside that range is still drawn, without an SDS. The dotted diagonal is bone age =
chronological age. Ages are in years on the axes (a tick every year), and in years and months in the legend.

    png = draw_chart([(96, 90, "2023-03-01"), (120, 130, "2025-03-04")], male=True, out="chart.png")

The band is the headline SDS of `boneage.sds`: a point on the +2 SD edge has SDS +2. Pure functions: no state, no
pyplot (a figure of its own, rendered with the Agg canvas), safe to call from a service's threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patheffects import withStroke
from matplotlib.ticker import MultipleLocator

from boneage.errors import UserError
from boneage.sds import REFERENCE_NAME, SDSResult, bone_age_sds, format_years_months, load_reference

MAX_AGE_MONTHS = 300.0  # 25 years: an age above this is a typing error (bone age reaches its adult value by ~19 y)
TITLE = "Bone age vs chronological age — Greulich & Pyle, {sex}"
NOTE = "Research software, not a medical device"
DPI = 110
SIZE = (7.0, 7.4)  # inches: 770 x 814 pixels

# Colours: the reference in grays and blues that print and photocopy apart, the child in a strong orange.
MEAN_COLOUR, BAND1, BAND2 = "#1f3b73", "#9db7e0", "#dbe5f4"
CHILD, LATEST = "#555555", "#d9480f"


@dataclass(frozen=True)
class Point:
    """One film of the child, ages in months."""

    chronological_age_months: float
    bone_age_months: float
    label: str | None
    sds: SDSResult  # against the reference for the child's sex; `.sds` is None outside the table


@dataclass
class Chart:
    """What `draw_chart` renders: the figure and the numbers it shows (for tests and for a report's text)."""

    figure: Figure
    male: bool
    points: list[Point]  # sorted by chronological age: the last is the latest, highlighted

    @property
    def latest(self) -> Point:
        return self.points[-1]


def _month(value: object, what: str, index: int) -> float:
    try:
        months = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"chart point {index + 1}: {what} must be a number of months, got {value!r}") from None
    if not math.isfinite(months) or months < 0:
        raise UserError(f"chart point {index + 1}: {what} must be a number of months >= 0, got {value!r}")
    if months > MAX_AGE_MONTHS:
        raise UserError(f"chart point {index + 1}: {what} of {months:g} months is over {MAX_AGE_MONTHS:g} "
                        f"({MAX_AGE_MONTHS / 12:g} years)")
    return months


def _points(points: Sequence, male: bool) -> list[Point]:
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or len(points) == 0:
        raise UserError("chart: no films to draw (expected a list of (chronological age, bone age, label))")
    out = []
    for i, p in enumerate(points):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) not in (2, 3):
            raise UserError(f"chart point {i + 1}: expected (chronological age in months, bone age in months, "
                            f"label or None), got {p!r}")
        ca, ba = _month(p[0], "chronological age", i), _month(p[1], "bone age", i)
        label = None if len(p) == 2 or p[2] is None else str(p[2])
        out.append(Point(ca, ba, label, bone_age_sds(ba, ca, male)))
    return sorted(out, key=lambda q: q.chronological_age_months)  # stable: films on one day keep their order


def _sds_text(point: Point, short: bool = False) -> str:
    if point.sds.sds is None:
        return "no SDS" if short else "no SDS (age outside the reference)"
    return f"SDS {point.sds.sds:+.1f}" if short else f"SDS {point.sds.sds:+.2f}"


def _span(months: float) -> str:
    """3 -> '3 months', 204 -> '17 years'."""
    return f"{months / 12:g} years" if months % 12 == 0 else f"{months:g} months"


def build_chart(points: Sequence, male: bool) -> Chart:
    """The chart as a matplotlib `Figure` with the numbers it shows; `draw_chart` renders it. Raises `UserError`."""
    male = bool(male)
    pts = _points(points, male)
    ref = load_reference()[male]
    sex = "boys" if male else "girls"

    # The band over the table's range only: straight lines between its rows are the linear interpolation of `sds`.
    lo, hi = ref.coverage
    x, mean, sd = ref.age / 12, ref.mean, ref.sd

    top = max(hi, *(max(p.chronological_age_months, p.bone_age_months) for p in pts)) / 12
    limit = math.ceil(top + 0.5)  # whole years, at least half a year of margin

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(x, (mean - 2 * sd) / 12, (mean + 2 * sd) / 12, color=BAND2, lw=0, label="±2 SD", zorder=1)
    ax.fill_between(x, (mean - sd) / 12, (mean + sd) / 12, color=BAND1, lw=0, label="±1 SD", zorder=2)
    ax.plot(x, mean / 12, color=MEAN_COLOUR, lw=2, label=f"Mean skeletal age, {sex}", zorder=3)
    ax.plot([0, limit], [0, limit], ls=":", lw=1, color="#777777", label="Bone age = chronological age", zorder=3)

    cx = np.array([p.chronological_age_months for p in pts]) / 12
    by = np.array([p.bone_age_months for p in pts]) / 12
    if len(pts) > 1:
        ax.plot(cx[:-1], by[:-1], "o", color=CHILD, ms=6, zorder=5,
                label=f"Earlier film{'s' if len(pts) > 2 else ''}")
        ax.plot(cx, by, "-", color=CHILD, lw=1.2, zorder=4)
    last = pts[-1]
    ax.plot(cx[-1:], by[-1:], "o", color=LATEST, mec="black", mew=1, ms=10, zorder=6,
            label=(f"{'Latest film' if len(pts) > 1 else 'This film'}{f' ({last.label})' if last.label else ''}: "
                   f"bone age {format_years_months(last.bone_age_months)}\nat chronological age "
                   f"{format_years_months(last.chronological_age_months)}: {_sds_text(last)}"))
    for i, p in enumerate(pts):  # each film's label and SDS beside it, right of the point (left near the edge)
        text = f"{p.label}  {_sds_text(p, short=True)}" if p.label else _sds_text(p, short=True)
        right = cx[i] < 0.75 * limit
        ax.annotate(text, (cx[i], by[i]), xytext=(9 if right else -9, -3), textcoords="offset points",
                    ha="left" if right else "right", va="center", fontsize=8, zorder=7,
                    color=LATEST if i == len(pts) - 1 else CHILD, fontweight="bold" if i == len(pts) - 1 else None,
                    path_effects=[withStroke(linewidth=3, foreground="white")])  # legible on the band

    ax.set_xlim(0, limit)
    ax.set_ylim(0, limit)
    ax.set_aspect("equal")
    step = 1 if limit <= 20 else 2
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MultipleLocator(step))
        axis.set_minor_locator(MultipleLocator(0.25))  # every 3 months
    ax.grid(True, which="major", color="#cccccc", lw=0.6)
    ax.grid(True, which="minor", color="#eeeeee", lw=0.4)
    ax.set_axisbelow(True)
    ax.set_xlabel("Chronological age (years)")
    ax.set_ylabel("Bone age (years)")
    ax.set_title(TITLE.format(sex=sex), fontsize=12)
    # The legend top left, above the band, unless a film is there (a bone age far ahead of a young child's age).
    crowded = any(x < 0.5 * limit and y > 0.55 * limit for x, y in zip(cx, by))
    ax.legend(loc="lower right" if crowded else "upper left", fontsize=8.5, framealpha=0.95)
    fig.text(0.01, 0.032, f"Reference: {REFERENCE_NAME}, {sex} aged {_span(lo)} to {_span(hi)} (not extrapolated)",
             fontsize=7.5, color="#333333", ha="left", va="bottom")
    fig.text(0.01, 0.008, NOTE, fontsize=7.5, color="#a01010", ha="left", va="bottom", style="italic")
    fig.get_layout_engine().set(rect=(0, 0.055, 1, 0.93))
    return Chart(figure=fig, male=male, points=pts)


def render(chart: Chart) -> bytes:
    """PNG bytes of a built chart."""
    buf = io.BytesIO()
    chart.figure.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def chart_of(records: Sequence, out: str | Path) -> Path:
    """The chart of assessed films (`boneage.record.Assessment`) of one child, written to `out`: each needs its
    chronological age, and all one sex."""
    dated = [r for r in records if r.chronological_age_months is not None]
    if not dated:
        raise UserError("the chart needs the chronological age (--age, --dob, or a DICOM header with it)")
    if len({r.male for r in dated}) > 1:
        raise UserError("the films are of a boy and a girl; one chart is for one child")
    draw_chart([(r.chronological_age_months, r.bone_age_months, Path(r.image).name) for r in dated], dated[0].male,
               out)
    return Path(out)


def draw_chart(points: Sequence, male: bool, out: str | Path | None = None) -> bytes:
    """PNG of the child's films on the Greulich & Pyle chart for the sex (see the module docstring).

    points: (chronological age in months, bone age in months, label or None) for each film, in any order; the latest
    (highest chronological age) is highlighted with its SDS. Writes `out` too when given. Raises `UserError` (one
    line) for no films or a bad age.
    """
    png = render(build_chart(points, male))
    if out is not None:
        Path(out).write_bytes(png)
    return png
