"""Bone-age SDS against the Greulich & Pyle (Brush) table, checked against arithmetic done by hand from its rows."""

from __future__ import annotations

from datetime import date
from importlib import resources

import pytest

from boneage.errors import UserError
from boneage.sds import age_from_dates, bone_age_sds, format_years_months, load_reference


def test_reference_ships_inside_the_package_with_its_citation():
    folder = resources.files("boneage") / "reference"
    assert "Greulich WW, Pyle SI" in (folder / "README.md").read_text(encoding="utf-8")
    ref = load_reference()
    assert ref[True].coverage == (3.0, 204.0) and len(ref[True].age) == 24  # boys: 3 months to 17 years
    assert ref[False].coverage == (3.0, 192.0) and len(ref[False].age) == 23  # girls: to 16 years


def test_boy_between_two_rows_is_interpolated():
    # rows M 120: SD 9.79, mean 125.68; M 132: SD 10.09, mean 137.32. At 126 months, halfway:
    # SD = 9.79 + 0.5 * (10.09 - 9.79) = 9.94;  mean = 125.68 + 0.5 * (137.32 - 125.68) = 131.50
    # SDS = (150 - 131.50) / 9.94 = 1.8612;    simple = (150 - 126) / 9.94 = 2.4145
    r = bone_age_sds(150, 126, male=True)
    assert r.sd_months == pytest.approx(9.94)
    assert r.mean_skeletal_age_months == pytest.approx(131.50)
    assert r.sds == pytest.approx(18.5 / 9.94) and r.sds == pytest.approx(1.8612, abs=1e-4)
    assert r.sds_simple == pytest.approx(24 / 9.94) and r.sds_simple == pytest.approx(2.4145, abs=1e-4)
    assert r.difference_months == 24 and r.flag is None


def test_girl_on_a_row_uses_it_exactly():
    # row F 96: SD 10.23, mean 100.66. SDS = (90 - 100.66) / 10.23 = -1.0420; simple = (90 - 96) / 10.23 = -0.5865
    r = bone_age_sds(90, 96, male=False)
    assert (r.sd_months, r.mean_skeletal_age_months) == (pytest.approx(10.23), pytest.approx(100.66))
    assert r.sds == pytest.approx(-1.0420, abs=1e-4)
    assert r.sds_simple == pytest.approx(-0.5865, abs=1e-4)
    assert r.difference_months == -6


def test_the_two_definitions_differ_where_the_reference_mean_is_off_its_age():
    # girls 54 -> 60 months: SD 10.73 -> 11.65, mean 60.06 -> 66.21. At 57: SD 11.19, mean 63.135.
    # A bone age equal to the reference mean has SDS 0, while (63.135 - 57) / 11.19 = 0.5483 by the simple rule.
    r = bone_age_sds(63.135, 57, male=False)
    assert r.sds == pytest.approx(0.0, abs=1e-9)
    assert r.sds_simple == pytest.approx(0.5483, abs=1e-4)


def test_sex_picks_its_own_table():
    # at 96 months: boys SD 9.10 mean 101.38, girls SD 10.23 mean 100.66
    assert bone_age_sds(110, 96, True).sds == pytest.approx((110 - 101.38) / 9.10)
    assert bone_age_sds(110, 96, False).sds == pytest.approx((110 - 100.66) / 10.23)


@pytest.mark.parametrize(("age", "male", "flag"), [
    (2.9, True, "below_reference"), (0, False, "below_reference"),
    (204.5, True, "above_reference"), (192.5, False, "above_reference"), (250, True, "above_reference"),
])
def test_ages_outside_the_table_are_flagged_not_extrapolated(age, male, flag):
    r = bone_age_sds(100, age, male)
    assert r.flag == flag
    assert r.sds is None and r.sds_simple is None and r.sd_months is None
    assert r.difference_months == pytest.approx(100 - age)
    assert "outside" in r.note and "no SDS" in r.note


@pytest.mark.parametrize(("age", "male"), [(3, True), (204, True), (3, False), (192, False)])
def test_the_table_edges_are_inside(age, male):
    r = bone_age_sds(age, age, male)
    assert r.flag is None and r.sds is not None


def test_bad_ages_are_user_errors():
    for ba, ca in ((-1, 100), (float("nan"), 100), (100, float("inf")), ("ten", 100)):
        with pytest.raises(UserError):
            bone_age_sds(ba, ca, True)


def test_to_dict_rounds_for_json():
    d = bone_age_sds(150, 126, True).to_dict()
    assert d["sds"] == 1.86 and d["sds_simple"] == 2.41 and d["flag"] is None and "Greulich" in d["reference"]


def test_age_from_dates_counts_calendar_months():
    assert age_from_dates("2015-01-31", "2025-01-31") == 120.0  # the 10th birthday
    assert age_from_dates("20150310", "20250325") == pytest.approx(120 + 15 / 31)  # 10 Mar -> 10 Apr has 31 days
    assert age_from_dates(date(2015, 1, 31), date(2015, 2, 28)) == 1.0  # 31 Jan + 1 month is the end of February
    assert age_from_dates("2016-02-29", "2017-02-28") == 12.0
    assert age_from_dates("2020-05-01", "2020-05-01") == 0.0


def test_bad_dates_are_user_errors():
    with pytest.raises(UserError, match="before the date of birth"):
        age_from_dates("2020-01-02", "2020-01-01")
    with pytest.raises(UserError, match="YYYY-MM-DD"):
        age_from_dates("02/01/2020", "2021-01-01")


@pytest.mark.parametrize(("months", "text"), [
    (123, "10 y 3 m"), (127.6, "10 y 8 m"), (10.5, "0 y 11 m"), (11.5, "1 y 0 m"), (0, "0 y 0 m"),
    (-14.2, "-1 y 2 m"), (-0.2, "0 y 0 m"),
])
def test_format_years_months(months, text):
    assert format_years_months(months) == text
