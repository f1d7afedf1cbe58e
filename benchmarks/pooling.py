"""Inception v3's 3x3 stride-1 average pool alone (issue 9): forward and forward+backward time of each implementation
in `boneage.models.pooling`, and how far its output and input gradient are from F.avg_pool2d's.

    python benchmarks/pooling.py [--device cpu|cuda] [--shape 16,288,35,35] [--dtype bfloat16,float32]
                                 [--format channels_last,nchw] [--repeats 20]

Times are medians over --repeats runs after 3 warm-up runs (CUDA: synchronised). "max err" is the largest absolute
difference from F.avg_pool2d over the output, and over the input gradient, in units of the output's largest
magnitude. Prints a table, then one JSON line. On a shared CPU other work slows every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from boneage.models.pooling import POOL_IMPLS, avg_pool3x3

FORMATS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of fn()."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(impl: str, x: torch.Tensor, grad_out: torch.Tensor, repeats: int) -> dict:
    def forward():
        with torch.no_grad():
            return avg_pool3x3(x, impl)

    def forward_backward():
        xg = x.detach().requires_grad_()
        avg_pool3x3(xg, impl).backward(grad_out)
        return xg.grad

    xg = x.detach().requires_grad_()
    want = F.avg_pool2d(xg, 3, stride=1, padding=1)
    want.backward(grad_out)
    scale = want.detach().abs().max().float().item()
    got, got_grad = forward(), forward_backward()
    return {
        "impl": impl,
        "forward_ms": round(_timed(forward, x.device, repeats), 3),
        "forward_backward_ms": round(_timed(forward_backward, x.device, repeats), 3),
        "max_err_out": float((got.float() - want.detach().float()).abs().max()) / scale,
        "max_err_grad": float((got_grad.float() - xg.grad.float()).abs().max()) / scale,
        "channels_last_out": got.is_contiguous(memory_format=torch.channels_last),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", default="16,288,35,35", help="B,C,H,W (Mixed_5d's input at 299 px: 288 x 35 x 35)")
    ap.add_argument("--dtype", default="float32,bfloat16")
    ap.add_argument("--format", default="channels_last,nchw")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    rows = []
    for dtype_name in args.dtype.split(","):
        for fmt in args.format.split(","):
            dtype = getattr(torch, dtype_name)
            x = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=FORMATS[fmt])
            grad_out = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=FORMATS[fmt])
            for impl in POOL_IMPLS:
                rows.append({"dtype": dtype_name, "format": fmt, **measure(impl, x, grad_out, args.repeats)})
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    print(f"{args.shape} on {where} (torch {torch.__version__}); median of {args.repeats} runs")
    print(f"{'dtype':9} {'format':14} {'impl':6} {'fwd ms':>8} {'fwd+bwd ms':>11} {'x native':>8} "
          f"{'max err out':>11} {'max err grad':>12}")
    for r in rows:
        native = next(n for n in rows if (n["dtype"], n["format"], n["impl"]) == (r["dtype"], r["format"], "native"))
        r["speedup_forward_backward"] = round(native["forward_backward_ms"] / r["forward_backward_ms"], 2)
        print(f"{r['dtype']:9} {r['format']:14} {r['impl']:6} {r['forward_ms']:8.2f} {r['forward_backward_ms']:11.2f} "
              f"{r['speedup_forward_backward']:8.2f} {r['max_err_out']:11.1e} {r['max_err_grad']:12.1e}")
    print(json.dumps({"device": where, "shape": shape, "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
