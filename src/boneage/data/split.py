"""The seeded shuffle, `--limit`, and the randomised train/validation split, saved with every run."""

from __future__ import annotations

import random
from pathlib import Path

from boneage.data.labels import LabelRow, read_labels, write_labels
from boneage.errors import UserError


def shuffle_and_limit(records: list[LabelRow], seed: int, limit: int | None) -> list[LabelRow]:
    """A seeded shuffle by id (not by file order), then the first `limit` rows."""
    ordered = sorted(records, key=lambda r: r.id)
    random.Random(seed).shuffle(ordered)
    return ordered[:limit] if limit else ordered


def split(records: list[LabelRow], val_fraction: float, seed: int) -> tuple[list[LabelRow], list[LabelRow]]:
    """Randomised split; at least one image on each side."""
    shuffled = shuffle_and_limit(records, seed + 1, None)
    n_val = min(max(1, round(len(shuffled) * val_fraction)), len(shuffled) - 1)
    return shuffled[n_val:], shuffled[:n_val]


def split_by_ids(records: list[LabelRow], val_labels: str | Path) -> tuple[list[LabelRow], list[LabelRow]]:
    """The validation set named by a saved label CSV (its ids); the training set is every other record."""
    ids = {r.id for r in read_labels(val_labels, ".", require_image=False).rows}
    val = [r for r in records if r.id in ids]
    train = [r for r in records if r.id not in ids]
    if not val or not train:
        raise UserError(f"{val_labels}: its {len(ids)} ids leave {len(train)} training and {len(val)} validation "
                        "images here")
    return train, val


def save_split(train: list[LabelRow], val: list[LabelRow], run_dir: Path) -> None:
    """`train.csv` and `val.csv` in the training layout: `evaluate --labels RUN/val.csv` scores the held-out part."""
    write_labels(train, run_dir / "train.csv")
    write_labels(val, run_dir / "val.csv")


def load_split(run_dir: Path, images: Path) -> tuple[list[LabelRow], list[LabelRow]]:
    return (read_labels(run_dir / "train.csv", images).rows, read_labels(run_dir / "val.csv", images).rows)
