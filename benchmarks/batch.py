"""Batch scoring against the model alone: is decoding hidden behind the model?

For N films it times (1) the model alone on the films already prepared, batched as batch scoring batches them, and
(2) `boneage.batch.score` from the files (decoding, checks and preprocessing in threads, then the same model), and
prints both rates and their ratio, measured in one run. The issue's bar: batch >= 0.8 x model alone.

    python benchmarks/batch.py --images DIR [--n 64] [--model M] [--runtime auto] [--tta flip] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from boneage.assessment import Case, predict_prepared, prepare
from boneage.batch import score
from boneage.inference.loading import load_predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--model")
    ap.add_argument("--tta", default="flip")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runtime", default="auto", help="auto (the CLI's default), torch or onnx")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    films = sorted(Path(args.images).glob("*.*"))[: args.n]
    predictor = load_predictor(args.model, args.runtime, tta=args.tta)
    cases = [Case(f, sex=True) for f in films]
    t0 = time.perf_counter()
    prepared = [prepare(c, predictor) for c in cases]
    prep_s = time.perf_counter() - t0
    predict_prepared(predictor, prepared[: args.batch_size], args.batch_size)  # warm-up

    t0 = time.perf_counter()
    predict_prepared(predictor, prepared, args.batch_size)
    model_alone = len(films) / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        counts = score(cases, predictor, Path(tmp) / "scores.csv", args.batch_size, args.workers)
        batch = len(films) / (time.perf_counter() - t0)
    assert counts["scored"] == len(films), counts
    print(f"{len(films)} films, runtime {predictor.runtime}, views {args.tta}, batch {args.batch_size}, "
          f"{args.workers} decoding threads")
    print(f"model alone (films prepared beforehand): {model_alone:.2f} films/s")
    print(f"batch scoring from the files:            {batch:.2f} films/s")
    print(f"ratio: {batch / model_alone:.2f}  (decoding hidden when close to 1)")
    print(f"decode + checks + preprocessing alone: {1000 * prep_s / len(films):.1f} ms per film")


if __name__ == "__main__":
    main()
