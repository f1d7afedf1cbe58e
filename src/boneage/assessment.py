"""One assessment behind every front door: a case in, one record out.

    read -> check -> sex and chronological age -> prepare -> predict (views x members) -> report

The CLI (single films and batches), the service, the Python API and the hospital node only turn their input into a
`Case` and print, return or send the record (`boneage.record.Assessment`); the rules for sex, age and dates live
here alone, so the doors cannot drift apart. `prepare` (decoding, checks, preprocessing: CPU, parallel) and `report`
(after the batched forward pass) are separate so that a batch decodes the next films while the model runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from boneage.data.labels import parse_sex
from boneage.errors import UserError, shown
from boneage.record import Assessment, ModelIdentity
from boneage.sds import age_from_dates, bone_age_sds, parse_date

MAX_CHRONOLOGICAL_MONTHS = 300.0  # 25 years: past any paediatric question; a larger figure is a typing or header error
# Without a calibrated figure in the model card: twice the largest spread the test-time views usually give.
DEFAULT_UNCERTAIN_MONTHS = 6.0


@dataclass
class Case:
    """What a caller knows about one radiograph. Sex and age fall back to the DICOM header."""

    data: bytes | str | Path | np.ndarray  # the file's bytes, its path, or the film itself (2-D gray, bone bright)
    name: str | None = None  # how messages and the record name it (default: the path)
    sex: str | bool | None = None  # M/F, male/female, true/false, 1/0, or a bool
    age_months: float | None = None  # chronological age
    birth_date: str | None = None  # ISO date; the study date then comes from study_date or the DICOM header
    study_date: str | None = None
    check: bool = True  # the quality checks (boneage.quality); off only for generated or unusual images

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return "<upload>" if isinstance(self.data, bytes) else "<array>" if isinstance(self.data, np.ndarray) \
            else str(self.data)


@dataclass
class Prepared:
    """A case read, checked and preprocessed, waiting for the model."""

    case: Case
    gray: np.ndarray | None  # the decoded film (None once only the model's input is needed)
    pixels: np.ndarray | None  # uint8 (S, S), or (F, S, S) for framing views: the model's input, once prepared
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
            raise UserError(f"{name}: sex must be M or F, not {shown(value)}")
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
        born, seen = parse_date(case.birth_date, "birth date"), parse_date(study, "study date")
        if seen > date.today() + timedelta(days=1):  # a day's grace: a study seen in a time zone ahead of this one
            raise UserError(f"{name}: study date {seen.isoformat()} is in the future")
        return _in_range(age_from_dates(born, seen), "the dates", name), "dates"
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
    p.pixels = predictor.model_input(p.gray)
    return p


def read(case: Case) -> Prepared:
    """Everything but the preprocessing, which needs the model's settings: a refusal comes before any model work."""
    from boneage.data.images import read_image
    from boneage.quality import check_image, read_checked

    name = case.label
    check_dates(case)
    if isinstance(case.data, np.ndarray):
        gray = film_array(case.data, name)
        dicom, warnings = None, check_image(gray, name) if case.check else []
    elif case.check:
        checked = read_checked(case.data, name)
        gray, dicom, warnings = checked.gray, checked.dicom, list(checked.warnings)
    else:
        decoded = read_image(case.data, name)
        gray, dicom, warnings = decoded.gray, decoded.dicom, list(decoded.notes)
    male, sex_source = resolve_sex(case.sex, dicom, name)
    age, age_source = resolve_age(case, dicom, name, warnings)
    return Prepared(case, gray, None, male, sex_source, age, age_source, warnings, dicom, gray.shape)


def film_array(data: np.ndarray, name: str) -> np.ndarray:
    """A film given as an array (the Python API): 2-D, numeric, finite, as float32 gray (bone bright)."""
    a = np.asarray(data)
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # RGB(A) as Pillow or matplotlib give it: its luminance
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise UserError(f"{name}: a film as an array must be 2-D gray numbers, not {a.dtype} of shape {a.shape}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise UserError(f"{name}: the array holds NaN or infinite values")
    return a


def uncertain_threshold(predictor) -> float:
    """Spread (months) above which an answer is flagged: the model card's figure calibrated on the predictor's own
    test-time views, else a default (more views, such as framings, spread more: another views' figure would flag
    too many)."""
    card = predictor.card
    by_views = card.get("uncertain_above_months_by_views") or {}
    if predictor.tta in by_views:
        return float(by_views[predictor.tta])
    if (card.get("validation_views") or predictor.tta) == predictor.tta and card.get("uncertain_above_months"):
        return float(card["uncertain_above_months"])
    return DEFAULT_UNCERTAIN_MONTHS


def model_identity(predictor) -> ModelIdentity:
    card = predictor.card
    return ModelIdentity(name=card.get("name") or getattr(predictor, "name", None) or predictor.spec.model.arch,
                         version=getattr(predictor, "version", None), arch=predictor.spec.model.arch,
                         members=predictor.members, views=predictor.tta, runtime=predictor.runtime,
                         validation_mad_months=card.get("validation_mad_months"))


def report(p: Prepared, answers: np.ndarray, predictor) -> Assessment:
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
    known = p.age_months is not None
    return Assessment(
        image=p.case.label, width=w, height=h, sex="M" if p.male else "F", sex_source=p.sex_source,
        bone_age_months=months, uncertainty_months=spread, uncertain=spread > limit, model=model_identity(predictor),
        chronological_age_months=p.age_months, chronological_age_source=p.age_source if known else None,
        sds=bone_age_sds(months, p.age_months, p.male) if known else None, warnings=warnings,
        dicom=p.dicom.header() if p.dicom is not None else None)


def predict_prepared(predictor, prepared: list[Prepared], batch_size: int = 16) -> list[np.ndarray]:
    """Answers per case, (views x members,) each, in batches."""
    out: list[np.ndarray] = []
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        views = predictor.predict_views(np.stack([p.pixels for p in chunk]), [p.male for p in chunk])  # (V, B)
        out += [views[:, i] for i in range(len(chunk))]
    return out


def assess(case: Case | Prepared, predictor) -> tuple[Assessment, Prepared]:
    """One case (or one already `read`) -> (record, what was prepared: for a heatmap or a preview)."""
    p = prepare(case, predictor) if isinstance(case, Case) else case
    if p.pixels is None:
        p.pixels = predictor.model_input(p.gray)
    return report(p, predict_prepared(predictor, [p])[0], predictor), p
