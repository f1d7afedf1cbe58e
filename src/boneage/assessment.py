"""One assessment behind every front door: a case in, one record out.

    read -> check -> sex and chronological age -> prepare -> predict (views x members) -> report

The CLI (single files), batch scoring and the service only turn their input into a `Case` and print or return the
record; the rules for sex, age and dates and the record's schema live here alone, so the doors cannot drift apart.
`prepare` (decoding, checks, preprocessing: CPU, parallel) and `report` (after the batched forward pass) are separate
so that a batch decodes the next films while the model runs.

The record (JSON-ready): image, width, height, sex, sex_source ("given" | "dicom"), bone_age_months, bone_age
("10 y 3 m"), uncertainty_months (the spread of the answers over test-time views and ensemble members), uncertain
(that spread is unusually large for this model: read the number with care), chronological_age_months,
chronological_age_source ("given" | "dates" | "dicom") and sds (when an age is known), warnings, dicom (DICOM files),
model (arch, members, views, runtime, validation MAD). Doors may add their own extras (a heatmap, a preview, timing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boneage.data.labels import parse_sex
from boneage.errors import UserError
from boneage.sds import age_from_dates, bone_age_sds, format_years_months, parse_date

MAX_CHRONOLOGICAL_MONTHS = 300.0  # 25 years: past any paediatric question; a larger figure is a typing or header error
# Without a calibrated figure in the model card: twice the largest spread the test-time views usually give.
DEFAULT_UNCERTAIN_MONTHS = 6.0


@dataclass
class Case:
    """What a caller knows about one radiograph. Sex and age fall back to the DICOM header."""

    data: bytes | str | Path  # the file's bytes, or its path
    name: str | None = None  # how messages and the record name it (default: the path)
    sex: str | bool | None = None  # M/F, male/female, true/false, 1/0, or a bool
    age_months: float | None = None  # chronological age
    birth_date: str | None = None  # ISO date; the study date then comes from study_date or the DICOM header
    study_date: str | None = None
    check: bool = True  # the quality checks (boneage.quality); off only for generated or unusual images

    @property
    def label(self) -> str:
        return self.name or ("<upload>" if isinstance(self.data, bytes) else str(self.data))


@dataclass
class Prepared:
    """A case read, checked and preprocessed, waiting for the model."""

    case: Case
    gray: np.ndarray | None  # the decoded film (None once only the model's input is needed)
    pixels: np.ndarray | None  # uint8 (S, S): the model's input, once prepared
    male: bool
    sex_source: str
    age_months: float | None
    age_source: str | None
    warnings: list[str] = field(default_factory=list)
    dicom: object | None = None  # boneage.dicom.DicomImage
    shape: tuple[int, int] = (0, 0)  # the film's (height, width), as decoded


def resolve_sex(value: str | bool | None, dicom, name: str) -> tuple[bool, str]:
    """(male, source): the given value, else the DICOM PatientSex."""
    header_male = dicom.male if dicom is not None else None
    if value is not None and not (isinstance(value, str) and not value.strip()):
        male = value if isinstance(value, bool) else parse_sex(str(value))
        if male is None:
            raise UserError(f"{name}: sex must be M or F, not {value!r}")
        return male, "given"
    if header_male is not None:
        return header_male, "dicom"
    raise UserError(f"{name}: sex unknown: give M or F" + (" (the DICOM header has no PatientSex)" if dicom else ""))


def _in_range(months: float, what: str, name: str) -> float:
    if not 0 <= months <= MAX_CHRONOLOGICAL_MONTHS:
        raise UserError(f"{name}: {what} gives a chronological age of {months:g} months; expected 0 to "
                        f"{MAX_CHRONOLOGICAL_MONTHS:g}")
    return float(months)


def resolve_age(case: Case, dicom, name: str, warnings: list[str]) -> tuple[float | None, str | None]:
    """(months, source): the given age, else birth date + study date (given, else the DICOM's), else the DICOM's."""
    if case.age_months is not None and case.birth_date:
        raise UserError(f"{name}: give the chronological age or the birth date, not both")
    if case.study_date and not case.birth_date:
        raise UserError(f"{name}: a study date goes with a birth date")
    if case.age_months is not None:
        return _in_range(float(case.age_months), "the given age", name), "given"
    if case.birth_date:
        study = case.study_date or (dicom.study_date if dicom is not None else None)
        if study is None:
            raise UserError(f"{name}: a birth date needs the study date (the date of the radiograph)")
        parse_date(case.birth_date, "birth date")
        return _in_range(age_from_dates(case.birth_date, study), "the dates", name), "dates"
    if dicom is not None and dicom.age_months is not None:
        if 0 <= dicom.age_months <= MAX_CHRONOLOGICAL_MONTHS:
            return float(dicom.age_months), "dicom"
        warnings.append(f"the DICOM header's age ({dicom.age_months:g} months) is out of range and was ignored")
    return None, None


def check_dates(case: Case) -> None:
    """Malformed dates fail before any decoding or model work."""
    for value, what in ((case.birth_date, "birth date"), (case.study_date, "study date")):
        if value:
            parse_date(value, what)


def prepare(case: Case, predictor) -> Prepared:
    """Read, check, resolve sex and age, preprocess. Raises `UserError` (naming the film) on any refusal."""
    p = read(case)
    p.pixels = predictor.prepare(p.gray)
    return p


def read(case: Case) -> Prepared:
    """Everything but the preprocessing, which needs the model's settings: a refusal comes before any model work."""
    from boneage.data.images import read_image
    from boneage.quality import read_checked

    name = case.label
    check_dates(case)
    if case.check:
        checked = read_checked(case.data, name)
        gray, dicom, warnings = checked.gray, checked.dicom, list(checked.warnings)
    else:
        decoded = read_image(case.data, name)
        gray, dicom = decoded.gray, decoded.dicom
        warnings = list(dicom.notes) if dicom is not None else []
    male, sex_source = resolve_sex(case.sex, dicom, name)
    age, age_source = resolve_age(case, dicom, name, warnings)
    return Prepared(case, gray, None, male, sex_source, age, age_source, warnings, dicom, gray.shape)


def uncertain_threshold(predictor) -> float:
    """Spread (months) above which an answer is flagged: the model card's calibrated figure, else a default."""
    return float(predictor.card.get("uncertain_above_months") or DEFAULT_UNCERTAIN_MONTHS)


def model_info(predictor) -> dict:
    return {"arch": predictor.spec.model.arch, "members": predictor.members, "views": predictor.tta,
            "runtime": predictor.runtime, "validation_mad_months": predictor.card.get("validation_mad_months")}


def report(p: Prepared, answers: np.ndarray, predictor) -> dict:
    """The record for one prepared case and its answers (one per test-time view and ensemble member)."""
    answers = np.asarray(answers, dtype=np.float64).ravel()
    months = float(answers.mean())
    spread = float(answers.std()) if answers.size > 1 else 0.0
    limit = uncertain_threshold(predictor)
    warnings = list(p.warnings)
    if spread > limit:
        warnings.append(f"uncertain: the answers of the model's views disagree by ±{spread:.1f} months (flagged "
                        f"above ±{limit:.1f}); check the film and read the bone age with care")
    h, w = p.shape
    record: dict = {
        "image": p.case.label, "width": w, "height": h,
        "sex": "M" if p.male else "F", "sex_source": p.sex_source,
        "bone_age_months": round(months, 2), "bone_age": format_years_months(months),
        "uncertainty_months": round(spread, 2), "uncertain": spread > limit,
    }
    if p.age_months is not None:
        record |= {"chronological_age_months": round(p.age_months, 2), "chronological_age_source": p.age_source,
                   "sds": bone_age_sds(months, p.age_months, p.male).to_dict()}
    record["warnings"] = warnings
    if p.dicom is not None:
        record["dicom"] = p.dicom.header()
    record["model"] = model_info(predictor)
    return record


def predict_prepared(predictor, prepared: list[Prepared], batch_size: int = 16) -> list[np.ndarray]:
    """Answers per case, (views x members,) each, in batches."""
    out: list[np.ndarray] = []
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        views = predictor.predict_views(np.stack([p.pixels for p in chunk]), [p.male for p in chunk])  # (V, B)
        out += [views[:, i] for i in range(len(chunk))]
    return out


def assess(case: Case | Prepared, predictor) -> tuple[dict, Prepared]:
    """One case (or one already `read`) -> (record, what was prepared: for a heatmap or a preview)."""
    p = prepare(case, predictor) if isinstance(case, Case) else case
    if p.pixels is None:
        p.pixels = predictor.prepare(p.gray)
    return report(p, predict_prepared(predictor, [p])[0], predictor), p
