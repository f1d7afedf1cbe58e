"""Bone-age SDS (z-score) against the Greulich & Pyle (Brush Foundation) reference, and age arithmetic.

The reference (`boneage/reference/greulich-pyle-brush-sd.csv`, citation in the README beside it) gives, for each sex
and chronological age (3 months to 17 y boys, 16 y girls), the mean skeletal age of the Brush Foundation children and
its standard deviation (SD), in months. Between rows both are interpolated linearly. Outside the table there is no
reference: the result is flagged and carries no SDS (nothing is extrapolated).

Two SDS are reported; the headline (`SDSResult.sds`) is the study's definition:

    sds        = (bone age - mean skeletal age at that chronological age) / SD     # headline
    sds_simple = (bone age - chronological age) / SD                              # what most calculators print

They differ by (mean skeletal age - chronological age) / SD: up to 0.66 (boys at 9 y), 0.64 (girls at 6 y).
The Brush children were white North Americans of the 1930s-40s: the SDS is a reference comparison, not a diagnosis.
"""

from __future__ import annotations

import calendar
import csv
import math
from dataclasses import asdict, dataclass
from datetime import date, datetime
from functools import lru_cache
from importlib import resources

import numpy as np

from boneage.errors import UserError, shown

REFERENCE_FILE = "greulich-pyle-brush-sd.csv"
REFERENCE_NAME = "Greulich & Pyle (Brush Foundation), 1959"


@dataclass(frozen=True)
class Reference:
    """One sex's table, rows sorted by chronological age (all in months)."""

    age: np.ndarray  # chronological age
    sd: np.ndarray  # SD of skeletal age
    mean: np.ndarray  # mean skeletal age

    @property
    def coverage(self) -> tuple[float, float]:
        return float(self.age[0]), float(self.age[-1])


@lru_cache(maxsize=1)
def load_reference() -> dict[bool, Reference]:
    """{male: Reference} from the CSV shipped inside the package (never from outside it)."""
    text = resources.files("boneage").joinpath("reference", REFERENCE_FILE).read_text(encoding="utf-8")
    rows: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for row in csv.DictReader(text.splitlines()):
        rows[row["sex"].strip() == "M"].append(
            (float(row["chronological_age_months"]), float(row["sd_months"]), float(row["mean_skeletal_age_months"])))
    out = {}
    for male, values in rows.items():
        a = np.array(sorted(values), dtype=np.float64)
        out[male] = Reference(age=a[:, 0], sd=a[:, 1], mean=a[:, 2])
    return out


@dataclass(frozen=True)
class SDSResult:
    """A bone age compared with a chronological age. All ages and differences in months."""

    bone_age_months: float
    chronological_age_months: float
    male: bool
    difference_months: float  # bone age - chronological age (positive: advanced)
    sd_months: float | None  # SD of skeletal age at this chronological age (interpolated); None outside the table
    mean_skeletal_age_months: float | None  # reference mean skeletal age at this chronological age; None outside
    sds: float | None  # headline: (bone age - mean skeletal age) / SD; None outside the table
    sds_simple: float | None  # (bone age - chronological age) / SD; None outside the table
    flag: str | None  # None inside the table, else "below_reference" or "above_reference"
    note: str  # one sentence for a report: the reference used, or why there is no SDS
    reference: str = REFERENCE_NAME

    def to_dict(self, digits: int = 2) -> dict:
        """JSON-ready, numbers rounded to `digits` decimals."""
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _check_months(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: expected a number of months, got {shown(value)}") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{what}: expected a number of months >= 0, got {value}")
    return value


def bone_age_sds(bone_age_months: float, chronological_age_months: float, male: bool) -> SDSResult:
    """Compare a bone age with the reference for this sex and chronological age (see the module docstring)."""
    ba = _check_months(bone_age_months, "bone age")
    ca = _check_months(chronological_age_months, "chronological age")
    ref = load_reference()[bool(male)]
    lo, hi = ref.coverage
    sex = "boys" if male else "girls"
    if ca < lo or ca > hi:
        flag = "below_reference" if ca < lo else "above_reference"
        note = (f"chronological age {format_years_months(ca)} is outside the {REFERENCE_NAME} reference for {sex} "
                f"({format_years_months(lo)} to {format_years_months(hi)}): no SDS")
        return SDSResult(ba, ca, bool(male), ba - ca, None, None, None, None, flag, note)
    sd = float(np.interp(ca, ref.age, ref.sd))
    mean = float(np.interp(ca, ref.age, ref.mean))
    note = f"SDS against {REFERENCE_NAME}, {sex}: (bone age - mean skeletal age {mean:.1f} months) / SD {sd:.2f} months"
    return SDSResult(ba, ca, bool(male), ba - ca, sd, mean, (ba - mean) / sd, (ba - ca) / sd, None, note)


def parse_date(value: date | datetime | str, what: str = "date") -> date:
    """A date, or 'YYYY-MM-DD' / 'YYYYMMDD' (the DICOM DA form)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise UserError(f"{what}: expected a date as YYYY-MM-DD, got {shown(text)}")


def _add_months(day: date, months: int) -> date:
    """The same day of the month `months` later, clamped to the month's last day (31 Jan + 1 -> 28/29 Feb)."""
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    return date(year, month, min(day.day, _days_in(year, month)))


def _days_in(year: int, month: int) -> int:
    """Days of the month, for any year: calendar.monthrange stops at 9999, and a 31 December 9999 birth date needs
    January 10000."""
    return 29 if month == 2 and calendar.isleap(year) else (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]


def age_from_dates(dob: date | datetime | str, study_date: date | datetime | str) -> float:
    """Age in months on the study date, by the calendar: whole months completed, plus the days since the last monthly
    anniversary as a fraction of that month. The 10th birthday is exactly 120.0; 15 days later, about 120.5."""
    born, seen = parse_date(dob, "date of birth"), parse_date(study_date, "study date")
    if seen < born:
        raise UserError(f"study date {seen.isoformat()} is before the date of birth {born.isoformat()}")
    months = (seen.year - born.year) * 12 + seen.month - born.month
    if _add_months(born, months) > seen:
        months -= 1
    start = _add_months(born, months)
    following = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    length = _days_in(start.year, start.month) - start.day + min(born.day, _days_in(*following))
    return months + (seen - start).days / length


def format_years_months(months: float) -> str:
    """127.6 -> '10 y 8 m' (rounded to the nearest month); a negative difference keeps its sign: '-1 y 2 m'."""
    total = math.floor(abs(float(months)) + 0.5)  # half up: 10.5 -> 11 (round() would give 10)
    sign = "-" if months < 0 and total else ""
    return f"{sign}{total // 12} y {total % 12} m"
