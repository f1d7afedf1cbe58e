"""The Greulich & Pyle chart: a PNG, the child's films where the reference says, the band over the table only."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from boneage.chart import DPI, LATEST, SIZE, build_chart, draw_chart, render
from boneage.errors import UserError
from boneage.sds import load_reference

# Boys' row at 120 months: mean skeletal age 125.68, SD 9.79 (see tests/test_sds.py)
MEAN_120, SD_120 = 125.68, 9.79


def _legend(chart) -> list[str]:
    return [t.get_text() for t in chart.figure.axes[0].get_legend().get_texts()]


def test_png_signature_size_and_file(tmp_path):
    out = tmp_path / "chart.png"
    png = draw_chart([(120, 130, "2025-03-04")], male=True, out=out)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (round(SIZE[0] * DPI), round(SIZE[1] * DPI))
    assert 20_000 < len(png) < 400_000
    assert out.read_bytes() == png
    assert Image.open(io.BytesIO(png)).size == (width, height)


def _marker_pixel(chart) -> tuple[int, int]:
    """(row, column) in the PNG of the latest film's marker centre."""
    ax, p = chart.figure.axes[0], chart.latest
    x, y = ax.transData.transform((p.chronological_age_months / 12, p.bone_age_months / 12))
    height = chart.figure.bbox.height
    return int(round(height - y)), int(round(x))


def _is_latest_colour(rgb: np.ndarray) -> bool:
    target = np.array([int(LATEST[i:i + 2], 16) for i in (1, 3, 5)])
    return bool(np.abs(rgb[:3].astype(int) - target).max() <= 12)


def test_a_film_on_the_mean_and_one_at_plus_two_sd_are_drawn_where_the_reference_says():
    on_mean = build_chart([(120, MEAN_120, None)], male=True)
    plus2 = build_chart([(120, MEAN_120 + 2 * SD_120, None)], male=True)
    assert on_mean.latest.sds.sds == pytest.approx(0, abs=1e-9)
    assert plus2.latest.sds.sds == pytest.approx(2, abs=1e-9)
    assert any("SDS +0.00" in t for t in _legend(on_mean)) and any("SDS +2.00" in t for t in _legend(plus2))

    images = [np.asarray(Image.open(io.BytesIO(render(c))).convert("RGB")) for c in (on_mean, plus2)]
    (r0, c0), (r2, c2) = _marker_pixel(on_mean), _marker_pixel(plus2)
    assert c0 == c2 and r2 < r0  # same chronological age, the +2 SD film higher up
    # 2 SD is 19.6 months: 1.63 years of the y axis, in pixels
    ax = on_mean.figure.axes[0]
    per_year = ax.transData.transform((0, 1))[1] - ax.transData.transform((0, 0))[1]
    assert r0 - r2 == pytest.approx(2 * SD_120 / 12 * per_year, abs=1.5)
    assert _is_latest_colour(images[0][r0, c0]) and not _is_latest_colour(images[0][r2, c2])
    assert _is_latest_colour(images[1][r2, c2]) and not _is_latest_colour(images[1][r0, c0])

    # the mean line passes through the first film, the +2 SD band edge through the second
    mean = next(line for line in ax.lines if line.get_label() == "Mean skeletal age, boys")
    assert np.interp(10, mean.get_xdata(), mean.get_ydata()) == pytest.approx(MEAN_120 / 12)
    band2 = ax.collections[0].get_paths()[0].vertices  # the ±2 SD band, drawn first
    near = band2[np.abs(band2[:, 0] - 10) < 1e-9]
    assert near[:, 1].max() == pytest.approx((MEAN_120 + 2 * SD_120) / 12)
    assert near[:, 1].min() == pytest.approx((MEAN_120 - 2 * SD_120) / 12)


def test_several_films_are_sorted_joined_and_the_latest_highlighted():
    chart = build_chart([(110, 108, "2023-01-12"), (122.5, 139, "2024-02-01"), (98, 92, "2022-01-10")], male=True)
    assert [p.chronological_age_months for p in chart.points] == [98, 110, 122.5]
    assert chart.latest.label == "2024-02-01" and chart.latest.sds.sds == pytest.approx(1.11, abs=0.01)
    ax = chart.figure.axes[0]
    joined = [line for line in ax.lines if line.get_linestyle() == "-" and len(line.get_xdata()) == 3]
    assert len(joined) == 1 and list(joined[0].get_xdata()) == pytest.approx([98 / 12, 110 / 12, 122.5 / 12])
    legend = _legend(chart)
    assert "Earlier films" in legend
    assert any(t.startswith("Latest film (2024-02-01): bone age 11 y 7 m") and "SDS +1.11" in t for t in legend)
    notes = [t.get_text() for t in ax.texts]
    assert any(t.startswith("2022-01-10  SDS -1.3") for t in notes) and len(notes) == 3
    assert ax.get_title() == "Bone age vs chronological age — Greulich & Pyle, boys"
    assert "Research software, not a medical device" in [t.get_text() for t in chart.figure.texts]


def test_a_film_outside_the_table_is_drawn_without_an_sds_and_the_band_spans_the_table_only():
    chart = build_chart([(215, 200, None)], male=False)  # girls' table ends at 16 y (192 months)
    assert chart.latest.sds.sds is None
    assert any("no SDS (age outside the reference)" in t for t in _legend(chart))
    ax = chart.figure.axes[0]
    lo, hi = load_reference()[False].coverage
    for band in ax.collections:
        xs = band.get_paths()[0].vertices[:, 0]
        assert xs.min() == pytest.approx(lo / 12) and xs.max() == pytest.approx(hi / 12)
    assert ax.get_xlim()[1] >= 215 / 12 + 0.5 and ax.get_title().endswith("girls")


@pytest.mark.parametrize(("points", "message"), [
    ([], "chart: no films to draw"),
    (None, "chart: no films to draw"),
    ([(-3, 100, None)], "chart point 1: chronological age must be a number of months >= 0, got -3"),
    ([(100, 90, "a"), (120, -1, "b")], "chart point 2: bone age must be a number of months >= 0, got -1"),
    ([(100, float("nan"), None)], "chart point 1: bone age must be a number of months >= 0, got nan"),
    ([("ten", 100, None)], "chart point 1: chronological age must be a number of months, got 'ten'"),
    ([(100,)], "chart point 1: expected (chronological age in months, bone age in months, label or None)"),
    ([(1200, 100, None)], "chart point 1: chronological age of 1200 months is over 300 (25 years)"),
])
def test_bad_input_is_one_line_user_error(points, message):
    with pytest.raises(UserError) as err:
        draw_chart(points, male=True)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
