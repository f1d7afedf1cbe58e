"""The answer as DICOM objects: a TID 1500 Structured Report and a Secondary Capture in the film's study, for an
answered film and for one that was not analysed, each valid for Debian's dciodvfy; and `predict --dicom-out`, which
writes the same objects without a network."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'boneage[node]')")
import pydicom  # noqa: E402

from boneage.hospital.results import Algorithm, Finding, answer_objects  # noqa: E402
from boneage.sds import REFERENCE_NAME  # noqa: E402
from tests.conftest import cli  # noqa: E402
from tests.pacs import (  # noqa: E402
    DCIODVFY,
    MISSING_DCIODVFY,
    REPO,
    dciodvfy_errors,
    film,
    make_tiny_model,
    sr_items,
    sr_value,
)

ALGORITHM = Algorithm("boneage", "0.1.0 model 0123456789ab", "0123456789abcdef", ("arch=test", "views=flip"), 7.4)
FINDING = Finding(bone_age_months=123.49, uncertainty_months=2.94, uncertain=False, male=True, warnings=(),
                  chronological_age_months=120.0, sds=-0.22, sds_note="SDS against ...", reference=REFERENCE_NAME,
                  reference_sd_months=9.79)
KINDS = {
    "answered": FINDING,
    "no age": Finding(130.0, 1.0, False, False, ("DICOM BodyPartExamined is LIMB, not recognised as a hand",)),
    "uncertain": Finding(40.0, 6.5, True, False, ("uncertain: the answers disagree",), 30.0, 1.2, "n", REFERENCE_NAME,
                         8.0),
    "not analysed": None,
}


@pytest.fixture(scope="module")
def source():
    return film()


@pytest.mark.skipif(DCIODVFY is None, reason=MISSING_DCIODVFY)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_object_passes_dciodvfy(kind, source, tmp_path):
    gray = source.pixel_array.astype(np.float32)
    objects = answer_objects(source, KINDS[kind], ALGORITHM, gray, reason="probably inverted")
    assert [ds.Modality for ds in objects] == ["SR", "OT"]
    for ds in objects:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], f"{kind} {ds.Modality}"


def test_sr_holds_the_answer_in_the_films_study(source):
    sr, _ = answer_objects(source, FINDING, ALGORITHM)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr_value(sr, "BA") == 123.49
    bone_age = next(i for i in sr_items(sr) if i.ConceptNameCodeSequence[0].CodeValue == "BA")
    assert bone_age.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mo"
    assert sr_value(sr, "121416", "DCM") == -0.22  # Z-score
    assert sr_value(sr, "121414", "DCM") == 9.79  # the reference's SD at this age
    assert sr_value(sr, "121406", "DCM") == REFERENCE_NAME  # reference authority
    assert sr_value(sr, "121033", "DCM") == 120.0  # chronological age
    assert sr_value(sr, "371886008", "SCT") == 2.94 and sr_value(sr, "371885007", "SCT") == 2.94  # ± uncertainty
    assert sr_value(sr, "BA-UNCERTAIN") == "No"
    assert sr_value(sr, "111001", "DCM") == "boneage" and sr_value(sr, "111003", "DCM") == ALGORITHM.version
    assert sr_value(sr, "112039", "DCM") and sr_value(sr, "112040", "DCM") is None  # tracking id; the UID is a UIDREF
    assert any(i.ConceptNameCodeSequence[0].CodeValue == "112040" and i.UID for i in sr_items(sr))
    image = next(i for i in sr_items(sr) if i.ValueType == "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99BONEAGE"


def test_a_film_not_analysed_says_why_in_both_objects(source):
    sr, sc = answer_objects(source, None, ALGORITHM, reason="probably inverted (score 3.1 > 2.0)")
    assert sr_value(sr, "BA") is None
    assert sr_value(sr, "BA-ANALYSIS") == "Not performed"
    assert sr_value(sr, "121106", "DCM") == "not analysed: probably inverted (score 3.1 > 2.0)"
    assert sr.SeriesDescription == sc.SeriesDescription == "Bone age NOT ANALYSED"
    assert sc.pixel_array.shape[2] == 3 and sc.pixel_array.shape[0] < 400  # text only: no film, no chart


def test_the_picture_is_in_the_study_and_refers_to_the_film(source):
    _, sc = answer_objects(source, FINDING, ALGORITHM, source.pixel_array.astype(np.float32))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.Laterality == "L"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "NO"
    rgb = sc.pixel_array
    assert rgb.shape[1] == 1612 and rgb.shape[0] > 800  # film and chart side by side
    assert (rgb[..., 0].astype(int) - rgb[..., 2]).max() > 100  # the chart's orange point: the chart is drawn


@pytest.mark.parametrize("tags,missing,sex,date", [
    ({"PatientSex": "X"}, ("AccessionNumber", "StudyID", "StudyTime", "PatientBirthDate", "ImageLaterality"), None,
     "20220115"),
    ({"PatientSex": "m", "StudyDate": "2022-01-15", "StudyTime": "noon"}, ("Modality",), "M", None),
])
def test_gaps_and_junk_in_the_films_header_do_not_stop_the_answer(tags, missing, sex, date):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's, at making the junk
        ds = film(PatientName="Secretname" * 7, **tags)  # one component, 70 characters: highdicom warns about it
    for key in missing:
        delattr(ds, key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sr, sc = answer_objects(ds, FINDING, ALGORITHM)
    assert not [w for w in caught if "Secretname" in str(w.message)]  # warnings quoting a patient's name: none
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == ds.StudyInstanceUID
    assert (sr.PatientSex or None, sr.StudyDate or None) == (sex, date)  # junk left empty (Type 2), not copied
    assert "AccessionNumber" in sr and "StudyTime" in sr


# ---------------------------------------------------------------------------------------------- predict --dicom-out
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def test_predict_dicom_out_writes_the_answer_it_prints(tiny, tmp_path):
    path = tmp_path / "hand.dcm"
    film().save_as(path, enforce_file_format=True)
    r = cli("predict", path, "--model", tiny, "--runtime", "torch", "--dicom-out", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["hand.boneage-sc.dcm", "hand.boneage-sr.dcm"]
    assert record["dicom_out"] == [str(tmp_path / "out" / "hand.boneage-sr.dcm"),
                                   str(tmp_path / "out" / "hand.boneage-sc.dcm")]
    sr = pydicom.dcmread(tmp_path / "out" / "hand.boneage-sr.dcm")
    assert sr_value(sr, "BA") == record["bone_age_months"]
    assert sr_value(sr, "121033", "DCM") == record["chronological_age_months"] == 120.0  # from the header
    assert sr_value(sr, "111003", "DCM").startswith("0.1.0 model ")
    if DCIODVFY:
        assert all(dciodvfy_errors(f) == [] for f in files)


def test_predict_dicom_out_answers_a_refused_film_and_exits_2(tiny, tmp_path):
    path = tmp_path / "inverted.dcm"
    film(invert=True).save_as(path, enforce_file_format=True)
    r = cli("predict", path, "--model", tiny, "--runtime", "torch", "--dicom-out", tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "probably inverted" in r.stderr and "not analysed" in r.stderr
    sr = pydicom.dcmread(tmp_path / "inverted.boneage-sr.dcm")
    assert sr_value(sr, "BA-ANALYSIS") == "Not performed" and "probably inverted" in sr_value(sr, "121106", "DCM")


def test_predict_dicom_out_needs_a_dicom_film(tiny, tmp_path):
    r = cli("predict", REPO / "examples" / "14471.jpg", "--sex", "M", "--model", tiny, "--dicom-out", tmp_path)
    assert r.returncode == 2 and "14471.jpg: not a DICOM file" in r.stderr and r.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
