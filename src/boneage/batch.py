"""Batch scoring: a folder (or list) of films -> one CSV row per film, for a research group's archive.

Films are decoded, checked and preprocessed in worker threads while the model scores the previous batch; a film that
is refused or unreadable becomes a row with its reason instead of stopping the run; rows are appended as they are
done (flushed), so a run that is stopped and started again on the same CSV skips what is already there.
"""

from __future__ import annotations

import contextlib
import csv
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from boneage.assessment import Case, Prepared, model_identity, predict_prepared, prepare, report
from boneage.data.labels import IMAGE_EXTENSIONS, parse_sex, read_labels
from boneage.errors import UserError, shown
from boneage.lock import held
from boneage.record import COLUMNS, ModelIdentity, Refusal


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


def parse_sexes(value: str, n: int) -> list[bool]:
    """`M` for every film, or `M,F,M` one per film."""
    parts = [p for p in value.split(",") if p.strip()]
    sexes = [parse_sex(p) for p in parts]
    if not parts or any(s is None for s in sexes):
        raise UserError(f"--sex: expected M or F (or a comma list, one per image), got {shown(value)}")
    if len(sexes) == 1:
        return sexes * n
    if len(sexes) != n:
        raise UserError(f"--sex: {len(sexes)} values for {n} images")
    return sexes


def cases_for(films: list[Path], sex: str | None = None, labels: str | Path | None = None, **facts) -> list[Case]:
    """The cases of films, each film's sex from (first) `sex` (one for all, or one per film), then a label CSV's row
    of the same id (the file name without its suffix), then, at assessment, the DICOM header. `facts`: the other
    fields of `Case` (age, dates, check), the same for every film."""
    sexes: list[bool | None] = parse_sexes(sex, len(films)) if sex else [None] * len(films)
    if labels:
        table = {r.id: r.male for r in read_labels(labels, ".", require_image=False).rows}
        sexes = [s if s is not None else table.get(Path(f).stem) for s, f in zip(sexes, films)]
    return [Case(data=f, name=str(f), sex=s, **facts) for f, s in zip(films, sexes)]


def check_out(out: Path) -> None:
    """--out names a CSV file that can be written (its folder is made), not a folder."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the CSV file to write, e.g. {out / 'scores.csv'}")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise UserError(f"--out {out}: its folder is a file")


@contextlib.contextmanager
def writing(out: Path):
    """The one run writing `out`: a second one on the same CSV would read it half-written and score its films again.
    An advisory lock on a file beside the CSV, released by the system when the run ends however it ends."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot be written ({exc.strerror or exc})") from None
    with held(out.with_name(out.name + ".lock"), f"--out {out}: another boneage run is writing it; wait for it to "
              "end or choose another --out"):
        yield


def done_images(out: Path, identity: ModelIdentity | None = None) -> set[str]:
    """Images already in an existing output CSV (scored or refused): a second run skips them. A CSV written by
    another model or with other test-time views is refused: its rows and this run's could not be told apart."""
    if not out.is_file() or out.stat().st_size == 0:  # an empty file: a run stopped before its first row
        return set()
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise UserError(f"{out}: exists and is not a boneage batch CSV of this version (columns "
                            f"{', '.join(reader.fieldnames or [])[:200]}); choose another --out")
        rows = list(reader)
    if identity is not None:
        want = _settings(identity.to_dict())
        other = next((row for row in rows if _settings(row, "model_") != want), None)
        if other is not None:
            raise UserError(f"{out}: scored with other settings ({_describe(_settings(other, 'model_'))}); this run "
                            f"uses {_describe(want)}; choose another --out")
    return {row["image"] for row in rows}


def _settings(values: dict, prefix: str = "") -> tuple[str, ...]:
    """What must match for two answers to stand in one CSV: the model, its version, the views, the members."""
    return tuple(str(values.get(prefix + k) or "") for k in ("name", "version", "views", "members"))


def _describe(settings: tuple[str, ...]) -> str:
    name, version, views, members = settings
    return f"model {name} {version or '?'}, views {views}, {members} member(s)"


def _prepared(cases: list[Case], predictor, workers: int, ahead: int) -> Iterator[Prepared | tuple[Case, str]]:
    """Each case prepared in worker threads, in order, with at most `ahead` films in flight: a folder of 2,000
    full-resolution films must not be decoded into memory while the model scores the first batch."""
    def one(case: Case):
        try:
            p = prepare(case, predictor)
            p.gray = None  # the model's input is all that is left to use: free the film while it waits
            return p
        except UserError as exc:
            return case, str(exc)

    todo = iter(cases)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(one, case) for case in islice(todo, ahead))
        while pending:
            done = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(one, following))
            yield done


def score(cases: list[Case], predictor, out: Path, batch_size: int = 16, workers: int = 2,
          progress: Callable[[int], None] | None = None) -> dict:
    """Score `cases` into `out` (appending; films already there are skipped). Returns counts."""
    if batch_size < 1 or workers < 1:
        raise UserError(f"batch size {batch_size} and workers {workers}: both must be at least 1")
    check_out(out)
    with writing(out):
        return _score(cases, predictor, out, batch_size, workers, progress)


def _score(cases: list[Case], predictor, out: Path, batch_size: int, workers: int,
           progress: Callable[[int], None] | None) -> dict:
    identity = model_identity(predictor)
    done = done_images(out, identity)
    todo = [c for c in cases if c.label not in done]
    new = not out.is_file() or out.stat().st_size == 0
    counts = {"films": len(cases), "skipped_done": len(cases) - len(todo), "scored": 0, "refused": 0}
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        batch: list[Prepared] = []

        def flush() -> None:
            for p, answers in zip(batch, predict_prepared(predictor, batch, batch_size)):
                writer.writerow(report(p, answers, predictor).to_row())
            counts["scored"] += len(batch)
            f.flush()
            if progress:
                progress(len(batch))
            batch.clear()

        # the next batch decodes while the model scores this one
        for item in _prepared(todo, predictor, workers, ahead=batch_size + 2 * workers):
            if isinstance(item, tuple):
                case, why = item
                writer.writerow(Refusal(case.label, why, identity).to_row())
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
