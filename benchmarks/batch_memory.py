"""Batch scoring keeps its memory flat: the peak resident memory of `boneage predict FOLDER --out` at 200 and at 2,000
full-resolution DICOM films, in one run.

The films are the three example radiographs enlarged to SIZE x SIZE*1.25, 16-bit, MONOCHROME2 (a typical CR/DX film,
10 MB of pixels each), written once and hard-linked N times (no disk cost). Each count is scored in a fresh process;
its peak RSS comes from the kernel (`ru_maxrss` of the finished child). Bounded (films in flight <= batch + 2 x
workers), the peak at 2,000 is the peak at 200; unbounded, it grows with the folder.

    python benchmarks/batch_memory.py [--counts 200,2000] [--size 2000] [--model M] [--runtime auto]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_films(folder: Path, size: int) -> list[Path]:
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    out = []
    for i, jpeg in enumerate(sorted((REPO / "examples").glob("*.jpg"))):
        gray = Image.open(jpeg).convert("L").resize((size, round(size * 1.25)), Image.BILINEAR)
        pixels = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.BodyPartExamined, ds.PatientSex = "DX", "HAND", "MF"[i % 2]
        ds.set_pixel_data(pixels, "MONOCHROME2", 16)
        path = folder / f"film{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def score(folder: Path, out: Path, args) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one `boneage predict FOLDER --out` in its own process."""
    cmd = [sys.executable, "-m", "boneage", "predict", str(folder), "--out", str(out), "--runtime", args.runtime]
    if args.model:
        cmd += ["--model", args.model]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB; the largest child so far: counts rise
    return time.perf_counter() - t0, max(peak, before) / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="200,2000")
    p.add_argument("--size", type=int, default=2000, help="film width in pixels (height 1.25x)")
    p.add_argument("--model")
    p.add_argument("--runtime", default="auto")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = write_films(tmp, args.size)
        rows = []
        for n in sorted(int(c) for c in args.counts.split(",")):  # smallest first: ru_maxrss only rises
            folder = tmp / f"n{n}"
            folder.mkdir()
            for i in range(n):
                os.link(sources[i % len(sources)], folder / f"{i:05d}.dcm")
            seconds, peak = score(folder, tmp / f"n{n}.csv", args)
            rows.append((n, seconds, peak))
            print(f"{n} films: {seconds:.0f} s ({n / seconds:.1f} films/s), peak RSS {peak:.0f} MB", flush=True)
        if len(rows) > 1:
            print(f"peak at {rows[-1][0]} / peak at {rows[0][0]}: {rows[-1][2] / rows[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
