"""Label tables in the three layouts the RSNA challenge shipped, read into one record type.

- training:   id,boneage,male                                   (male True/False)
- validation: Image ID,male,Bone Age (months)                   (male True/False)
- test:       Case ID,Sex,Ground truth bone age (months)        (Sex M/F)

Images are found by id in a folder, with any extension Pillow reads. Rows that cannot be used (no sex, no age, an
absurd age, no image) are skipped with a reason; a table in an unknown layout is refused outright.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from boneage.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".dcm")
MAX_AGE_MONTHS = 240.0  # 20 years: past this the hand is adult and the label is an error

# Each layout: (id column, age column, sex column, how sex is written).
LAYOUTS = {
    "training": ("id", "boneage", "male", "bool"),
    "validation": ("Image ID", "Bone Age (months)", "male", "bool"),
    "test": ("Case ID", "Ground truth bone age (months)", "Sex", "MF"),
}


@dataclass(frozen=True)
class LabelRow:
    id: str
    image: Path
    male: bool
    age_months: float


@dataclass
class LabelTable:
    rows: list[LabelRow]
    skipped: list[str] = field(default_factory=list)  # "file:row: reason", one per skipped row

    def skipped_summary(self) -> str:
        """'12 rows skipped: 10 no image, 2 age out of range' — for the log of a run."""
        if not self.skipped:
            return "0 rows skipped"
        reasons = Counter(line.split(": ", 2)[-1].split(" (")[0] for line in self.skipped)
        return f"{len(self.skipped)} rows skipped: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common())


def parse_sex(value: str) -> bool | None:
    """Male -> True, female -> False, anything else -> None. Accepts M/F, male/female, True/False, 1/0."""
    v = value.strip().lower()
    if v in ("m", "male", "true", "1"):
        return True
    if v in ("f", "female", "false", "0"):
        return False
    return None


def _detect_layout(header: list[str], path: Path) -> tuple[str, str, str, str]:
    names = {h.strip() for h in header}
    for columns in LAYOUTS.values():
        if set(columns[:3]) <= names:
            return columns
    expected = "; ".join(",".join(c[:3]) for c in LAYOUTS.values())
    raise UserError(f"{path}: unknown label layout (columns {','.join(header)}); expected one of: {expected}")


def index_images(folder: Path) -> dict[str, Path]:
    """id -> image path for every image file in the folder (one directory listing, not one stat per id)."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder of images")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            found.setdefault(path.stem, path)
    return found


def read_labels(labels: str | Path, images: str | Path, require_image: bool = True) -> LabelTable:
    labels, images = Path(labels), Path(images)
    if not labels.is_file():
        raise UserError(f"{labels}: no such label file")
    try:
        text = labels.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{labels}: not a text CSV file") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise UserError(f"{labels}: empty label file")
    id_col, age_col, sex_col, _ = _detect_layout(rows[0], labels)
    header = [h.strip() for h in rows[0]]
    col = {name: header.index(name) for name in (id_col, age_col, sex_col)}
    on_disk = index_images(images) if require_image else {}

    table = LabelTable(rows=[])
    seen: set[str] = set()
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{labels}:{line_no}"

        def cell(name: str, row: list[str] = row) -> str:
            i = col[name]
            return row[i].strip() if i < len(row) else ""

        image_id = cell(id_col)
        if not image_id:
            table.skipped.append(f"{where}: no id")
            continue
        male = parse_sex(cell(sex_col))
        if male is None:
            table.skipped.append(f"{where}: no sex (got {cell(sex_col)!r})")
            continue
        try:
            age = float(cell(age_col))
        except ValueError:
            table.skipped.append(f"{where}: no age (got {cell(age_col)!r})")
            continue
        if not 0 <= age <= MAX_AGE_MONTHS:
            table.skipped.append(f"{where}: age out of range (got {age:g} months; 0 to {MAX_AGE_MONTHS:g})")
            continue
        if image_id in seen:
            table.skipped.append(f"{where}: duplicate id (got {image_id})")
            continue
        image = on_disk.get(image_id, images / image_id)
        if require_image and image_id not in on_disk:
            table.skipped.append(f"{where}: no image (no file {image_id}.* in {images})")
            continue
        seen.add(image_id)
        table.rows.append(LabelRow(image_id, image, male, age))
    if not table.rows:
        first = f"; first: {table.skipped[0]}" if table.skipped else ""
        raise UserError(f"{labels}: no usable rows ({table.skipped_summary()}{first})")
    return table


def write_labels(rows: list[LabelRow], path: Path) -> None:
    """Write rows in the training layout, so a saved split is itself a label file `evaluate` accepts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "boneage", "male"])
        for r in rows:
            w.writerow([r.id, f"{r.age_months:g}", "True" if r.male else "False"])
