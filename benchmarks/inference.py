"""CPU inference: single-image latency (decode to answer) and batch throughput, PyTorch and ONNX Runtime, one run.

Latency: a 2,000 x 1,600 16-bit PNG (a drawn hand; or --image FILE) from bytes to bone age, as a service sees it: decode
-> quality checks -> preprocess (resize + equalise) -> model. Median and p90 over --repeats runs after 3 warm-up runs,
with the median of each stage and the first (cold) call. Throughput: prepared images through the model alone, in batches
of --batch. Compute floor: the model's FLOPs (torch.utils.flop_counter, one image) over this CPU's measured peak (the
best large float32 matmul in PyTorch or ONNX Runtime, same threads); "x floor" is how many times slower than that the
model runs. Each is run with 1 thread and with all CPUs (--threads).

    python benchmarks/inference.py [--model CKPT] [--repeats 10] [--batch 8] [--threads 1,2] [--image FILE]

Prints a table, then one JSON line. The machine's load average is printed too: other work on a shared CPU slows
every number here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from boneage.data.synthetic import hand_phantom
from boneage.inference.loading import load_predictor
from boneage.quality import read_checked


def drawn_hand(height: int = 2000, width: int = 1600, seed: int = 0) -> bytes:
    """A 16-bit PNG of a drawn hand radiograph (dark film, soft tissue, bright bones, noise) that passes the checks."""
    img = hand_phantom(height, width, seed, supersample=1)  # already large: no need to draw it bigger
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def peak_gflops(threads: int, n: int = 2048, tries: int = 5) -> dict[str, float]:
    """Best float32 n x n matmul rate (GFLOP/s) with `threads` threads, in PyTorch (MKL: on AMD CPUs it may take its
    AVX2 path) and in ONNX Runtime (MLAS). Their maximum is the practical peak the floor is computed from."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def best(fn) -> float:
        fn()  # warm-up
        return 2 * n**3 / min(timed(fn)[1] for _ in range(tries)) / 1e9

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"a": a.numpy(), "b": b.numpy()}
    return {"torch": best(lambda: a @ b), "onnxruntime": best(lambda: session.run(None, feeds))}


def model_gflops(model: torch.nn.Module, size: int, channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, channels, size, size), torch.ones(1))
    return counter.get_total_flops() / 1e9


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def latency(predictor, data: bytes, repeats: int, warmup: int = 3) -> dict:
    """Decode-to-answer runs on bytes; medians per stage (ms). The first `warmup` runs are not counted: the first calls
    fault in memory and build kernels (on this VM PyTorch's first 2-3 calls took seconds); the first is reported."""
    stages: dict[str, list[float]] = {k: [] for k in ("decode+checks", "preprocess", "model", "total")}
    answer, first = None, None
    for i in range(warmup + repeats):
        checked, t_read = timed(lambda: read_checked(data, "bench.png"))
        prepared, t_prep = timed(lambda checked=checked: predictor.model_input(checked.gray))
        months, t_model = timed(lambda prepared=prepared: predictor.predict_batch(prepared[None], [True]))
        answer, first = float(months[0]), first if first is not None else (t_read + t_prep + t_model) * 1000
        if i >= warmup:
            for key, value in zip(stages, (t_read, t_prep, t_model, t_read + t_prep + t_model)):
                stages[key].append(value * 1000)
    total = sorted(stages["total"])
    return {"median_ms": statistics.median(total), "p90_ms": total[min(len(total) - 1, int(0.9 * len(total)))],
            **{f"{k}_ms": statistics.median(v) for k, v in stages.items() if k != "total"},
            "first_call_ms": first, "bone_age_months": answer}


def throughput(predictor, batch: int, rounds: int = 3) -> dict:
    images = np.random.default_rng(0).integers(0, 256, (batch, predictor.preprocess.image_size,
                                                        predictor.preprocess.image_size), dtype=np.uint8)
    male = [i % 2 == 0 for i in range(batch)]
    for _ in range(2):  # warm-up
        predictor.predict_batch(images, male)
    best = min(timed(lambda: predictor.predict_batch(images, male))[1] for _ in range(rounds))
    return {"batch": batch, "images_per_s": batch / best, "ms_per_image": best / batch * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint or weights file (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma list of thread counts to run")
    parser.add_argument("--image", help="a radiograph file instead of the drawn 2,000 x 1,600 16-bit PNG")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    data = open(args.image, "rb").read() if args.image else drawn_hand()
    torch_p = load_predictor(args.model, "torch")
    pp = torch_p.preprocess
    flops = model_gflops(torch_p.model, pp.image_size, pp.channels)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for threads in (int(t) for t in args.threads.split(",")):
            peaks = peak_gflops(threads)  # sets torch's threads too
            peak = max(peaks.values())
            for name in ("torch", "onnx"):
                predictor = torch_p if name == "torch" else load_predictor(args.model, "onnx", threads, cache)
                rows.append({"runtime": name, "threads": threads, "peak_gflops": peak, "matmul_gflops": peaks,
                             "floor_ms": flops / peak * 1e3,
                             "latency": latency(predictor, data, args.repeats),
                             "throughput": throughput(predictor, args.batch)})
    h, w = read_checked(data, "bench").gray.shape
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "arch": torch_p.spec.model.arch, "image_size": pp.image_size,
            "input": f"{w} x {h}" + ("" if args.image else " 16-bit PNG, drawn"), "input_bytes": len(data),
            "model_gflops": flops, "load_average": [load_before, os.getloadavg()[0]], "rows": rows}

    print(f"input {info['input']} ({len(data) / 1e6:.1f} MB); model {info['arch']} at {pp.image_size} px: "
          f"{flops:.2f} GFLOP/image; load average {load_before:.1f} -> {info['load_average'][1]:.1f} "
          f"on {os.cpu_count()} CPUs")
    header = (f"{'runtime':8s} {'thr':>3s} {'peak GF/s':>9s} {'floor':>7s} | {'latency med':>11s} {'p90':>7s} "
              f"{'cold':>7s} {'decode+chk':>10s} {'prep':>5s} {'model':>7s} {'x floor':>7s} | {'batch':>5s} "
              f"{'img/s':>6s} {'ms/img':>7s} {'x floor':>7s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lat, thr, floor = r["latency"], r["throughput"], r["floor_ms"]
        print(f"{r['runtime']:8s} {r['threads']:3d} {r['peak_gflops']:9.0f} {floor:5.0f}ms | "
              f"{lat['median_ms']:9.0f}ms {lat['p90_ms']:5.0f}ms {lat['first_call_ms']:5.0f}ms "
              f"{lat['decode+checks_ms']:8.0f}ms {lat['preprocess_ms']:3.0f}ms {lat['model_ms']:5.0f}ms "
              f"{lat['model_ms'] / floor:7.1f} | {thr['batch']:5d} {thr['images_per_s']:6.2f} "
              f"{thr['ms_per_image']:5.0f}ms {thr['ms_per_image'] / floor:7.1f}")
    answers = {f"{r['runtime']}/{r['threads']}": round(r["latency"]["bone_age_months"], 3) for r in rows}
    print("answers (months):", answers)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
