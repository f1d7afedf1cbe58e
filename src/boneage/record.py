"""The one record of an assessment, typed, with its JSON form (`to_dict`) and its CSV form (`to_row`, `COLUMNS`).

Every door returns this: the CLI line and `--json`, the batch CSV, the service's JSON and page, the Python API and
the hospital node's DICOM objects. A film that could not be assessed is a `Refusal`: in a batch CSV, a row with its
reason in `error` and the other cells empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from boneage.sds import SDSResult


@dataclass(frozen=True)
class ModelIdentity:
    """What answered: the model (its card's name and the weights' checksum), how it was run, how good it is."""

    name: str  # the model card's name, else the weights file's name
    version: str | None  # the first 12 hex digits of the weights file's SHA-256 (ensembles: of each, joined by +)
    arch: str
    members: int
    views: str  # test-time views: none | flip | flips
    runtime: str  # torch | onnx
    validation_mad_months: float | None  # the model card's figure

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "arch": self.arch, "members": self.members,
                "views": self.views, "runtime": self.runtime, "validation_mad_months": self.validation_mad_months}


@dataclass
class Assessment:
    """One radiograph's bone age, its uncertainty and its comparison with the chronological age. Ages in months."""

    image: str
    width: int
    height: int
    sex: str  # "M" | "F"
    sex_source: str  # "given" | "dicom"
    bone_age_months: float
    uncertainty_months: float  # the spread (SD) of the answers over test-time views and ensemble members
    uncertain: bool  # that spread is unusually large for this model: read the number with care
    model: ModelIdentity
    chronological_age_months: float | None = None
    chronological_age_source: str | None = None  # "given" | "dates" | "dicom"
    sds: SDSResult | None = None  # against Greulich & Pyle, when the chronological age is known
    warnings: list[str] = field(default_factory=list)
    dicom: dict | None = None  # the DICOM header's facts (sex, age, dates, photometric...), for DICOM files
    # What a door adds for its own users (a heatmap file, a preview, the chart, timing); JSON only, not in the CSV.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def bone_age(self) -> str:
        """'10 y 3 m'."""
        from boneage.sds import format_years_months

        return format_years_months(self.bone_age_months)

    @property
    def male(self) -> bool:
        return self.sex == "M"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: what `predict --json` prints and the service returns."""
        out: dict[str, Any] = {
            "image": self.image, "width": self.width, "height": self.height, "sex": self.sex,
            "sex_source": self.sex_source, "bone_age_months": round(self.bone_age_months, 2),
            "bone_age": self.bone_age, "uncertainty_months": round(self.uncertainty_months, 2),
            "uncertain": self.uncertain,
        }
        if self.chronological_age_months is not None:
            out |= {"chronological_age_months": round(self.chronological_age_months, 2),
                    "chronological_age_source": self.chronological_age_source}
        if self.sds is not None:
            out["sds"] = self.sds.to_dict()
        out["warnings"] = list(self.warnings)
        if self.dicom is not None:
            out["dicom"] = self.dicom
        out["model"] = self.model.to_dict()
        return out | self.extras

    def to_row(self) -> dict[str, Any]:
        """The CSV form: every field of the JSON that fits a cell (nested ones flattened with a prefix, lists as
        JSON), under `COLUMNS`."""
        d = self.to_dict()
        row = {k: d.get(k, "") for k in _PLAIN}
        for key, value in (d.get("sds") or {}).items():  # "sds", "sds_simple", "flag" -> sds_flag...
            column = key if key.startswith("sds") else f"sds_{key}"
            if column in _SDS:
                row[column] = value
        for key, value in (d.get("dicom") or {}).items():
            if f"dicom_{key}" in _DICOM:
                row[f"dicom_{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
        row["warnings"] = json.dumps(self.warnings) if self.warnings else ""
        row |= {f"model_{k}": v for k, v in self.model.to_dict().items()}
        return {c: "" if row.get(c) is None else row.get(c, "") for c in COLUMNS}


@dataclass(frozen=True)
class Refusal:
    """A film that was not assessed, and why (one line naming the film)."""

    image: str
    reason: str
    model: ModelIdentity | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.reason} | ({"model": self.model.to_dict()} if self.model else {})

    def to_row(self) -> dict[str, Any]:
        row = dict.fromkeys(COLUMNS, "") | {"image": self.image, "error": self.reason}
        if self.model is not None:
            row |= {f"model_{k}": "" if v is None else v for k, v in self.model.to_dict().items()}
        return row


_PLAIN = ["image", "width", "height", "sex", "sex_source", "bone_age_months", "bone_age", "uncertainty_months",
          "uncertain", "chronological_age_months", "chronological_age_source"]
_SDS = ["sds", "sds_simple", "sds_difference_months", "sds_sd_months", "sds_mean_skeletal_age_months", "sds_flag",
        "sds_note", "sds_reference"]
_DICOM = ["dicom_sex", "dicom_age_months", "dicom_study_date", "dicom_birth_date", "dicom_photometric",
          "dicom_transfer_syntax", "dicom_modality", "dicom_body_part", "dicom_bits_stored", "dicom_frames",
          "dicom_voi", "dicom_notes"]
_MODEL = [f"model_{k}" for k in ("name", "version", "arch", "members", "views", "runtime", "validation_mad_months")]
COLUMNS = _PLAIN + _SDS + ["warnings"] + _DICOM + _MODEL + ["error"]
