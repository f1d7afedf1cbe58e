"""Load test of `boneage serve` on loopback: N requests, C at a time, bounded in count and time.

Starts the server itself on 127.0.0.1 (a free port), waits for /health, posts a radiograph N times from C threads,
then stops the server. Prints latency percentiles (ms), throughput and the error count, then one JSON line.

    python benchmarks/loadtest.py [--requests 300] [--concurrency 4] [--runtime torch|onnx] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(server: subprocess.Popen, base: str, seconds: float = 120) -> bool:
    """Poll /health until the server answers; False (with the server's stderr printed) if it died or never did."""
    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if time.time() > deadline or server.poll() is not None:
            print("server did not start:", server.stderr.read() if server.poll() is not None else "timeout")
            return False
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    ap.add_argument("--model")
    ap.add_argument("--image", default=str(ROOT / "examples" / "14471.jpg"))
    ap.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long")
    args = ap.parse_args()

    port = free_port()
    cmd = [sys.executable, "-m", "boneage", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--runtime", args.runtime] + (["--model", args.model] if args.model else [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_up(server, base):
            return 1

        data = Path(args.image).read_bytes()
        stop_at = time.time() + args.max_seconds

        def one(i: int) -> tuple[float, int]:
            if time.time() > stop_at:
                return float("nan"), -1  # not sent: the time bound was reached
            t0 = time.perf_counter()
            try:
                r = httpx.post(f"{base}/predict", files={"file": ("hand.jpg", data)},
                               data={"sex": "M", "chronological_age_months": "120"}, timeout=60)
                code = r.status_code
            except httpx.HTTPError:
                code = 0
            return 1000 * (time.perf_counter() - t0), code

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        sent = [(ms, c) for ms, c in results if c != -1]
        ms = np.array([m for m, c in sent if c == 200])
        errors = sum(1 for _, c in sent if c != 200)
        alive = httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)

    summary = {"runtime": args.runtime, "requests": len(sent), "concurrency": args.concurrency, "errors": errors,
               "wall_s": round(wall, 1), "throughput_per_s": round(len(sent) / wall, 2),
               "p50_ms": round(float(np.percentile(ms, 50)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
               "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1),
               "server_alive_after": alive}
    print(f"{summary['requests']} requests, {args.concurrency} at a time, {args.runtime}: {errors} errors, "
          f"{summary['throughput_per_s']} req/s; latency p50 {summary['p50_ms']} ms, p90 {summary['p90_ms']} ms, "
          f"p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms")
    print(json.dumps(summary))
    return 0 if errors == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
