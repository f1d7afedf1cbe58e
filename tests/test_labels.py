"""The three RSNA label layouts, and each kind of bad row or bad table."""

from pathlib import Path

import pytest
from PIL import Image

from boneage.data.labels import parse_sex, read_labels
from boneage.errors import UserError


def _images(folder: Path, ids, ext=".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.new("L", (8, 8), 100).save(folder / f"{i}{ext}")
    return folder


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("id,boneage,male", ["1,120,True", "2,36,False"]),
        ("Image ID,male,Bone Age (months)", ["1,True,120", "2,False,36"]),
        ("Case ID,Sex,Ground truth bone age (months)", ["1,M,120", "2,F,36"]),
    ],
    ids=["training", "validation", "test"],
)
def test_each_rsna_layout_reads_the_same_records(tmp_path, header, rows):
    images = _images(tmp_path / "img", [1, 2], ext=".jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    table = read_labels(csv, images)
    assert [(r.id, r.male, r.age_months) for r in table.rows] == [("1", True, 120.0), ("2", False, 36.0)]
    assert table.rows[0].image.suffix == ".jpg"


def test_bad_rows_are_skipped_with_file_row_and_reason(tmp_path):
    images = _images(tmp_path / "img", [1, 2, 3, 4, 5, 6])
    csv = tmp_path / "labels.csv"
    csv.write_text("id,boneage,male\n1,120,True\n2,,True\n3,100,\n4,-5,False\n5,900,False\n7,50,True\n1,10,True\n")
    table = read_labels(csv, images)
    assert [r.id for r in table.rows] == ["1"]
    reasons = "\n".join(table.skipped)
    assert f"{csv}:3: no age" in reasons
    assert f"{csv}:4: no sex" in reasons
    assert f"{csv}:5: age out of range" in reasons and f"{csv}:6: age out of range" in reasons
    assert f"{csv}:7: no image" in reasons
    assert f"{csv}:8: duplicate id" in reasons
    assert table.skipped_summary().startswith("6 rows skipped")


def test_unknown_layout_is_refused_naming_the_columns(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("patient,age\n1,2\n")
    with pytest.raises(UserError, match="unknown label layout.*patient,age"):
        read_labels(csv, _images(tmp_path / "img", [1]))


def test_missing_label_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="no such label file"):
        read_labels(tmp_path / "nope.csv", tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text("id,boneage,male\n1,2,True\n")
    with pytest.raises(UserError, match="no such folder"):
        read_labels(csv, tmp_path / "missing")


def test_table_with_no_usable_row_is_an_error(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("id,boneage,male\n1,2,True\n")
    with pytest.raises(UserError, match="no usable rows.*no image"):
        read_labels(csv, _images(tmp_path / "img", []))


@pytest.mark.parametrize(("value", "male"), [("M", True), ("female", False), ("True", True), ("0", False), ("x", None)])
def test_parse_sex(value, male):
    assert parse_sex(value) is male
