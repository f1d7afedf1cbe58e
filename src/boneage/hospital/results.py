"""The answer as DICOM objects in the film's own study: a Structured Report for systems and a picture for people.

    Comprehensive 3D SR (TID 1500 "Imaging Measurement Report", highdicom), one TID 1501 group:
        tracking identifier + UID, the source film (IMAGE), the algorithm (TID 4019: name, version, parameters),
        finding site: hand (SCT 85562004)
        NUM bone age (99BONEAGE BA) in months (UCUM mo)
            uncertainty: "+/-" range of measurement uncertainty (TID 310), months: the spread over views and members
            SDS (TID 311): "Z-Score of measurement" (DCM 121416, no units) and the reference's SD at that age
            ("Standard deviation of population", DCM 121414, months); reference authority: Greulich & Pyle (Brush
            Foundation)
        NUM Subject Age (DCM 121033) in months: the chronological age the SDS used
        CODE flagged uncertain (99BONEAGE BA-UNCERTAIN): Yes / No (SCT 373066001 / 373067005)
        TEXT Comment (DCM 121106): each warning of the assessment
    Secondary Capture (RGB): the film, the answer, the SDS and the growth chart (`boneage.hospital.picture`).

A film that was not analysed (refused by the checks, no sex in the header...) gets both too: the group holds
"bone age analysis: not performed" (99BONEAGE BA-ANALYSIS = SCT 262008008) and the reason as a Comment, and the
picture says NOT ANALYSED and why. Both objects are new series of the source's study, reference the source film, and
carry VerificationFlag UNVERIFIED and PreliminaryFlag PRELIMINARY: a machine estimate that a radiologist has not
signed. Codes and their reasons: docs/conformance.md.

This is the one module that reads the assessment's record (`Finding.from_record`); everything below takes a
`Finding`, so a change of the record's form is an edit here alone.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from boneage import __version__
from boneage.hospital.picture import GRAY, ORANGE, RED, Line, render

# There is no DICOM, SNOMED or LOINC concept for a bone-age value, so the few concepts of our own are in a private
# coding scheme (PS3.16 8.2: designators starting "99"), declared in each SR's Coding Scheme Identification Sequence.
SCHEME = "99BONEAGE"
BONE_AGE = Code("BA", SCHEME, "Bone age")
UNCERTAIN = Code("BA-UNCERTAIN", SCHEME, "Bone age flagged uncertain")
ANALYSIS = Code("BA-ANALYSIS", SCHEME, "Bone age analysis")
PROCEDURE = Code("BA-XR-HAND", SCHEME, "Bone age estimation from a hand radiograph")
MANUFACTURER = "boneage (open source)"
SR_SERIES, SC_SERIES = 9901, 9902  # high series numbers: listed after the acquisitions in a viewer
NOTE = "UNVERIFIED machine estimate, for a radiologist to check. Research software, not a medical device."


@dataclass(frozen=True)
class Algorithm:
    """Who answered: written into every object, and part of the node's memory of what it has answered."""

    name: str
    version: str  # package version and model file fingerprint: "0.1.0 model 3f2a9c1b2d4e"
    identity: str  # 16 hex digits: the model files and the test-time views; another identity answers a film again
    parameters: tuple[str, ...]  # arch, views, members, runtime
    validation_mad_months: float | None

    @classmethod
    def of(cls, predictor) -> Algorithm:
        """The loaded predictor's identity: what every door's record says answered (`boneage.record.ModelIdentity`)."""
        import hashlib

        from boneage.assessment import model_identity

        model = model_identity(predictor)
        identity = hashlib.sha256(f"{model.name}|{model.version}|{model.views}".encode()).hexdigest()[:16]
        params = (f"arch={model.arch}", f"views={model.views}", f"members={model.members}",
                  f"runtime={model.runtime}")
        return cls("boneage", f"{__version__} model {model.name} {model.version}", identity, params,
                   model.validation_mad_months)


@dataclass(frozen=True)
class Finding:
    """The fields of the assessment's record that the objects show. Months throughout."""

    bone_age_months: float
    uncertainty_months: float  # SD over test-time views and ensemble members
    uncertain: bool
    male: bool
    warnings: tuple[str, ...]
    chronological_age_months: float | None = None
    sds: float | None = None  # None without an age, or outside the reference's range
    sds_note: str | None = None  # the reference used, or why there is no SDS
    reference: str | None = None
    reference_sd_months: float | None = None

    @classmethod
    def from_record(cls, record) -> Finding:
        """From the assessment's record (`boneage.record.Assessment`)."""
        sds = record.sds
        return cls(bone_age_months=record.bone_age_months, uncertainty_months=record.uncertainty_months,
                   uncertain=record.uncertain, male=record.male, warnings=tuple(record.warnings),
                   chronological_age_months=record.chronological_age_months,
                   sds=sds.sds if sds else None, sds_note=sds.note if sds else None,
                   reference=sds.reference if sds else None, reference_sd_months=sds.sd_months if sds else None)


def _years_months(months: float) -> str:
    from boneage.sds import format_years_months

    return format_years_months(months)


# The film's identity and its patient and study attributes: what the answer copies to join the same study.
_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns")
_SIDE = ("Laterality", "ImageLaterality")
_PATIENT_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                  "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


_FORMS = {"StudyDate": re.compile(r"^\d{8}$"), "PatientBirthDate": re.compile(r"^\d{8}$"),
          "StudyTime": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")}


def _evidence(source: Dataset) -> Dataset:
    """The film's header as highdicom copies it: identity and patient/study attributes, the Type 2 ones present
    (empty when the film has none: real headers often lack a StudyID or an AccessionNumber). A malformed date, time
    or sex is left empty rather than copied: highdicom would refuse the whole answer for it."""
    ds = Dataset()
    for key in _IDENTITY + _PATIENT_STUDY + _SIDE:
        if key in source:
            ds[key] = source[key]
        elif key not in ("SpecificCharacterSet", "IssuerOfPatientID", *_SIDE):
            setattr(ds, key, None)
    for key, form in _FORMS.items():
        if not form.match(str(ds.get(key) or "").strip()):
            setattr(ds, key, None)
    sex = str(ds.PatientSex or "").strip().upper()
    ds.PatientSex = sex if sex in ("M", "F", "O") else None
    return ds


# ----------------------------------------------------------------------------------------------------------- SR
def _sds_properties(f: Finding) -> hd.sr.MeasurementProperties | None:
    """TID 311 of the bone age: the SDS and the reference's SD at this age (its denominator), the reference named."""
    if f.sds is None:
        return None
    values = [hd.sr.NumContentItem(codes.DCM.ZScoreOfMeasurement, round(f.sds, 2), codes.UCUM.NoUnits,
                                   relationship_type="HAS PROPERTIES")]
    if f.reference_sd_months is not None:
        values.append(hd.sr.NumContentItem(codes.DCM.StandardDeviationOfPopulation, round(f.reference_sd_months, 2),
                                           codes.UCUM.Month, relationship_type="HAS PROPERTIES"))
    stats = hd.sr.MeasurementStatisticalProperties(values, description=f.sds_note, authority=f.reference)
    return hd.sr.MeasurementProperties(measurement_statistical_properties=stats)


def _bone_age(f: Finding) -> hd.sr.Measurement:
    m = hd.sr.Measurement(BONE_AGE, round(f.bone_age_months, 2), codes.UCUM.Month, properties=_sds_properties(f))
    # TID 310's uncertainty range, in months: highdicom's own `*_measurement_uncertainty` writes them without units
    m[0].setdefault("ContentSequence", []).value.extend(
        hd.sr.NumContentItem(code, round(f.uncertainty_months, 2), codes.UCUM.Month, relationship_type="HAS PROPERTIES")
        for code in (codes.SCT.RangeOfUpperMeasurementUncertainty, codes.SCT.RangeOfLowerMeasurementUncertainty))
    return m


def _comment(text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(codes.DCM.Comment, text[:1024], relationship_type="CONTAINS")


def _group(source: Dataset, f: Finding | None, reason: str | None, algorithm: Algorithm):
    site = [hd.sr.FindingSite(codes.SCT.Hand)]
    algo = hd.sr.AlgorithmIdentification(algorithm.name, algorithm.version, list(algorithm.parameters))
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"bone age of film {source.SOPInstanceUID}")
    source_image = [hd.sr.SourceImageForMeasurementGroup.from_source_image(source)]
    if f is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking, algorithm_id=algo, finding_sites=site, source_images=source_image,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(ANALYSIS, codes.SCT.NotPerformed)])
        group[0].ContentSequence.append(_comment(f"not analysed: {reason}"))
        return group
    measurements = [_bone_age(f)]
    if f.chronological_age_months is not None:
        measurements.append(hd.sr.Measurement(codes.DCM.SubjectAge, round(f.chronological_age_months, 2),
                                              codes.UCUM.Month))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking, algorithm_id=algo, finding_sites=site, source_images=source_image, measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(UNCERTAIN, codes.SCT.Yes if f.uncertain else
                                                             codes.SCT.No)])
    group[0].ContentSequence.extend(_comment(w) for w in f.warnings)
    return group


def structured_report(source: Dataset, f: Finding | None, algorithm: Algorithm, reason: str | None = None):
    """The SR (highdicom `Comprehensive3DSR`) of one film: its finding, or (f None) why it was not analysed."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["boneage", algorithm.identity]), name=algorithm.name,
        manufacturer_name=MANUFACTURER, model_name=algorithm.version)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device))
    content = hd.sr.MeasurementReport(context, [PROCEDURE], [_group(source, f, reason, algorithm)])
    scheme = CodingSchemeIdentificationItem(SCHEME, name="boneage codes", version="1",
                                                  responsible_organization="boneage project (docs/conformance.md)")
    return hd.sr.Comprehensive3DSR(
        evidence=[source], content=content[0], series_instance_uid=hd.UID(), series_number=SR_SERIES,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description="Bone age (boneage, UNVERIFIED)" if f else "Bone age NOT ANALYSED",
        coding_schemes=[scheme], manufacturer_model_name=algorithm.name, software_versions=algorithm.version)


# ----------------------------------------------------------------------------------------------------------- SC
def _lines(f: Finding | None, reason: str | None) -> list[Line]:
    if f is None:
        return [Line("BONE AGE: NOT ANALYSED", 40, RED), Line(reason or "", 24)]
    lines = [Line(f"BONE AGE {_years_months(f.bone_age_months)}  ({f.bone_age_months:.1f} ± "
                  f"{f.uncertainty_months:.1f} months), {'boy' if f.male else 'girl'}", 40)]
    if f.chronological_age_months is None:
        lines.append(Line("No chronological age in the header: no SDS", 24))
    else:
        ca = f"chronological age {_years_months(f.chronological_age_months)} ({f.chronological_age_months:.1f} months)"
        lines.append(Line(f"SDS {f.sds:+.2f} at {ca}, against {f.reference}" if f.sds is not None else
                          f"{ca}: {f.sds_note}", 24))
    if f.uncertain:
        lines.append(Line("UNCERTAIN: the model's views disagree more than usual; read with care", 24, ORANGE))
    lines += [Line(f"warning: {w}", 20, ORANGE) for w in f.warnings if not w.startswith("uncertain:")]
    return lines


def secondary_capture(source: Dataset, f: Finding | None, algorithm: Algorithm, gray: np.ndarray | None = None,
                      reason: str | None = None):
    """The picture (highdicom `SCImage`, RGB) of one film's answer, or of why it was not analysed."""
    chart = None
    if f is not None and f.chronological_age_months is not None:
        from boneage.chart import draw_chart

        chart = draw_chart([(f.chronological_age_months, f.bone_age_months, None)], f.male)
    footer = [Line(f"{NOTE} {algorithm.name} {algorithm.version}"
                   + (f", validation MAD {algorithm.validation_mad_months:.1f} months."
                      if algorithm.validation_mad_months else "."), 18, GRAY)]
    pixels = render(_lines(f, reason), footer, gray, chart)
    sc = hd.sc.SCImage.from_ref_dataset(
        source, pixels, "RGB", 8, "PATIENT", hd.UID(), SC_SERIES, hd.UID(), 1, MANUFACTURER,
        patient_orientation=("L", "F"), series_description="Bone age picture (boneage, UNVERIFIED)" if f else
        "Bone age NOT ANALYSED", transfer_syntax_uid="1.2.840.10008.1.2.1")
    sc.PatientOrientation = ""  # highdicom asks for one; a page of text, film and chart has none (Type 2: empty)
    # Type 2C when the body part is paired, which a hand is: the film's side if its header says, else empty
    sc.Laterality = next((str(source.get(k)) for k in ("ImageLaterality", "Laterality") if source.get(k) in
                          ("L", "R")), None)
    sc.BurnedInAnnotation = "NO"  # the text is the answer; no name or identifier is drawn
    sc.DerivationDescription = ("Bone age answer: the film, the estimate and the Greulich & Pyle chart"
                                if f else "Bone age not analysed: the reason")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    purpose = codes.DCM.SourceImageForImageProcessingOperation
    ref.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept(purpose.value, purpose.scheme_designator, purpose.meaning)]
    sc.SourceImageSequence = [ref]
    sc.ManufacturerModelName, sc.SoftwareVersions = algorithm.name, algorithm.version
    return sc


def answer_objects(source: Dataset, f: Finding | None, algorithm: Algorithm, gray: np.ndarray | None = None,
                   reason: str | None = None) -> list[Dataset]:
    """[SR, SC] for a film: its finding, or (f None) the reason it was not analysed. `source`: the film's header
    (pixels not needed); `gray`: its decoded pixels for the picture, when they could be decoded."""
    source = _evidence(source)
    with warnings.catch_warnings():  # highdicom's warnings quote header values, the patient's name among them
        warnings.simplefilter("ignore")
        return [structured_report(source, f, algorithm, reason),
                secondary_capture(source, f, algorithm, gray, reason)]
