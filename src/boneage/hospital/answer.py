"""A film in, its answer out: the one assessment (`boneage.assessment`: the same checks and the same number as
`boneage predict`), then the DICOM objects that carry it (`boneage.hospital.results`).

A film the assessment refuses (not a hand, inverted, blank, no sex in the header...) is answered too, with objects
that say "not analysed" and why: in a hospital the radiographer looks for an answer in the study, and silence would
read as "still running". `boneage node` calls `answer_case` for each film it receives; `boneage predict FILM.dcm
--dicom-out DIR` calls it and writes the objects with `write_answer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from boneage.assessment import Case, assess
from boneage.errors import UserError
from boneage.hospital.files import save_dataset
from boneage.hospital.results import Algorithm, Finding, answer_objects
from boneage.record import Assessment

# What the answer copies from the film to join its study and point at it: without these it has nowhere to go.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class Answer:
    objects: list  # [SR, SC] as pydicom datasets
    record: Assessment | None  # the assessment's record (`boneage.record`); None when not analysed
    finding: Finding | None  # what the objects show of it
    reason: str | None = None  # why the film was not analysed

    @property
    def analysed(self) -> bool:
        return self.finding is not None

    def summary(self) -> str:
        """One line for a log or a status: the bone age, or why there is none."""
        if self.finding is None:
            return f"not analysed: {self.reason}"
        f = self.finding
        return (f"bone age {f.bone_age_months:.1f} ± {f.uncertainty_months:.1f} months"
                + (f", SDS {f.sds:+.2f}" if f.sds is not None else "") + (", UNCERTAIN" if f.uncertain else ""))


def read_header(data: bytes | str | Path, name: str):
    """The film's DICOM header (pixels not read). UserError for a file that is not a DICOM film of a study."""
    from boneage.dicom import dcmread

    try:
        ds = dcmread(data, name, stop_before_pixels=True)
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except UserError:
        raise
    except Exception as exc:  # pydicom raises many kinds for a file that is not DICOM
        raise UserError(f"{name}: not a DICOM file, and the answer joins the film's DICOM study "
                        f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})"
                        ) from None
    missing = [k for k in REQUIRED if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise UserError(f"{name}: the DICOM header has no {', '.join(missing)}: the answer cannot join its study")
    return ds


def _reason(error: UserError, name: str) -> str:
    """The refusal without the film's name in front (the objects are the film's already)."""
    text = str(error)
    return text[len(name) + 2:] if text.startswith(f"{name}: ") else text


def _pixels_for_picture(case: Case):
    """The film's pixels for the picture of a refused film, when they can be decoded at all (else None)."""
    from boneage.data.images import read_image

    try:
        return read_image(case.data, case.label).gray
    except UserError:
        return None


def answer_case(case: Case, predictor, algorithm: Algorithm, header=None) -> Answer:
    """Assess one DICOM film and build its answer's objects; a refusal is an answer that says why. `header`: the
    film's header when the caller has read it already. Raises UserError only for a file the answer cannot refer to
    (not DICOM, no study)."""
    source = header if header is not None else read_header(case.data, case.label)
    try:
        record, prepared = assess(case, predictor)
    except UserError as exc:
        record, finding, reason, gray = None, None, _reason(exc, case.label), _pixels_for_picture(case)
    else:
        finding, reason, gray = Finding.from_record(record), None, prepared.gray
    try:
        objects = answer_objects(source, finding, algorithm, gray, reason)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's verdict on a header we missed
        raise UserError(f"{case.label}: the answer's DICOM objects cannot be built from this header "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    return Answer(objects, record, finding, reason)


def write_answer(answer: Answer, folder: str | Path, stem: str) -> list[Path]:
    """The objects as `STEM.boneage-sr.dcm` and `STEM.boneage-sc.dcm` in `folder` (made if needed), atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_dataset(ds, folder / f"{stem}.boneage-{kind}.dcm") for ds, kind in zip(answer.objects, ("sr", "sc"))]
