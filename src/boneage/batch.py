"""Batch scoring: a folder (or list) of films -> one CSV row per film, for a research group's archive.

Films are decoded, checked and preprocessed in worker threads while the model scores the previous batch; a film that
is refused or unreadable becomes a row with its reason instead of stopping the run; rows are appended as they are
done (flushed), so a run that is stopped and started again on the same CSV skips what is already there.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boneage.assessment import Case, Prepared, predict_prepared, prepare, report
from boneage.data.labels import IMAGE_EXTENSIONS
from boneage.errors import UserError

COLUMNS = ["image", "sex", "sex_source", "bone_age_months", "bone_age", "uncertainty_months", "uncertain",
           "chronological_age_months", "sds", "warnings", "error"]


def list_films(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the image files (by extension, DICOM included) directly inside each folder, sorted."""
    films: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            films += sorted(f for f in p.iterdir() if f.is_file() and (f.suffix.lower() in IMAGE_EXTENSIONS
                                                                        or f.suffix.lower() == ".dicom"))
        elif p.is_file():
            films.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return films


def done_images(out: Path) -> set[str]:
    """Images already in an existing output CSV (scored or refused): a second run skips them."""
    if not out.is_file():
        return set()
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise UserError(f"{out}: exists and is not a boneage batch CSV (columns {reader.fieldnames}); "
                            "choose another --out")
        return {row["image"] for row in reader}


def _row(record: dict) -> dict:
    sds = record.get("sds") or {}
    return {"image": record["image"], "sex": record["sex"], "sex_source": record["sex_source"],
            "bone_age_months": record["bone_age_months"], "bone_age": record["bone_age"],
            "uncertainty_months": record["uncertainty_months"], "uncertain": record["uncertain"],
            "chronological_age_months": record.get("chronological_age_months", ""),
            "sds": "" if sds.get("sds") is None else sds["sds"],
            "warnings": json.dumps(record["warnings"]) if record["warnings"] else "", "error": ""}


def _prepared(cases: list[Case], predictor, workers: int) -> Iterator[Prepared | tuple[Case, str]]:
    def one(case: Case):
        try:
            p = prepare(case, predictor)
            p.gray = None  # the model's input is all that is left to use: free the film while it waits
            return p
        except UserError as exc:
            return case, str(exc)

    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(one, cases)


def score(cases: list[Case], predictor, out: Path, batch_size: int = 16, workers: int = 2,
          progress: Callable[[int], None] | None = None) -> dict:
    """Score `cases` into `out` (appending; films already there are skipped). Returns counts."""
    done = done_images(out)
    todo = [c for c in cases if c.label not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.is_file()
    counts = {"films": len(cases), "skipped_done": len(cases) - len(todo), "scored": 0, "refused": 0}
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        batch: list[Prepared] = []

        def flush() -> None:
            for p, answers in zip(batch, predict_prepared(predictor, batch, batch_size)):
                writer.writerow(_row(report(p, answers, predictor)))
            counts["scored"] += len(batch)
            f.flush()
            if progress:
                progress(len(batch))
            batch.clear()

        for item in _prepared(todo, predictor, workers):
            if isinstance(item, tuple):
                case, why = item
                writer.writerow({"image": case.label, **{c: "" for c in COLUMNS[1:-1]}, "error": why})
                counts["refused"] += 1
                if progress:
                    progress(1)
                continue
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return counts
