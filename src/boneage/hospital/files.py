"""Writes that a kill cannot leave half done: the data goes to a temporary name in the same folder, is flushed to
disk, and only then takes the target's name (os.replace, atomic on one file system). A reader sees the old file or
the whole new one, never a part; a killed writer leaves only a `.part` file, which its folder's owner removes."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PART = ".part"  # the suffix of files being written


def sync_dir(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut, not only a kill."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(file)` on a temporary file, then give it `path`'s name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PART}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_json(path: Path, value) -> Path:
    return write_atomic(path, lambda f: f.write(json.dumps(value, indent=1).encode()))


def save_dataset(ds, path: Path) -> Path:
    """A pydicom dataset as a DICOM Part 10 file."""
    return write_atomic(path, lambda f: ds.save_as(f, enforce_file_format=True))
