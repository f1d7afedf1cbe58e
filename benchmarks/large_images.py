"""Memory of `boneage serve` under concurrent large images: N uploads that decode to SIDE x SIDE pixels at once.

Starts the server on 127.0.0.1 (a free port), sends one normal request, reads its resident memory (idle), then posts
N large PNGs (a drawn hand enlarged to SIDE x SIDE, ~1-6 MB compressed, under every limit) all at once, half of them
with heatmap=true, while normal requests (examples/14471.jpg) keep coming from two threads. Prints the server's peak
resident memory above idle (VmHWM minus the idle VmRSS), every status code and the normal requests' latencies, then
one JSON line. Exit status 1 if any request failed.

    python benchmarks/large_images.py [--requests 16] [--side 9000]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import ROOT, free_port, wait_until_up  # noqa: E402


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def large_png(side: int) -> bytes:
    from boneage.data.synthetic import hand_phantom

    small = Image.fromarray(np.round(hand_phantom(600, 600, seed=0) * 255).astype(np.uint8))
    buf = io.BytesIO()
    small.resize((side, side), Image.BILINEAR).save(buf, "PNG")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--side", type=int, default=9000)
    ap.add_argument("--model")
    args = ap.parse_args()

    big = large_png(args.side)
    normal = (ROOT / "examples" / "14471.jpg").read_bytes()
    port = free_port()
    cmd = [sys.executable, "-m", "boneage", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--per-client", "64"]  # every upload comes from this one address: the memory is measured, not the limit
    server = subprocess.Popen(cmd + (["--model", args.model] if args.model else []), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def post(data: bytes, name: str, **form) -> tuple[int, float]:
        t0 = time.perf_counter()
        try:
            code = httpx.post(f"{base}/predict", files={"file": (name, data)}, data={"sex": "M", **form},
                              timeout=600).status_code
        except httpx.HTTPError:
            code = 0
        return code, 1000 * (time.perf_counter() - t0)

    try:
        if not wait_until_up(server, base):
            return 1
        post(normal, "hand.jpg", heatmap="true", preview="true")  # warm: model, grad-cam and imports loaded
        idle = status_mb(server.pid, "VmRSS")

        done = threading.Event()
        normal_results: list[tuple[int, float]] = []

        def keep_normal() -> None:
            while not done.is_set():
                normal_results.append(post(normal, "hand.jpg", preview="true"))

        t0 = time.perf_counter()
        feeders = [threading.Thread(target=keep_normal) for _ in range(2)]
        for f in feeders:
            f.start()
        with ThreadPoolExecutor(args.requests) as pool:
            large = list(pool.map(lambda i: post(big, f"big{i}.png", heatmap=str(i % 2 == 0).lower()),
                                  range(args.requests)))
        done.set()
        for f in feeders:
            f.join()
        wall = time.perf_counter() - t0
        peak = status_mb(server.pid, "VmHWM")
        alive = httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)

    normal_ms = np.array([ms for code, ms in normal_results if code == 200])
    summary = {"side": args.side, "png_mb": round(len(big) / 1e6, 2), "large_requests": args.requests,
               "large_codes": sorted({c for c, _ in large}), "normal_requests": len(normal_results),
               "normal_codes": sorted({c for c, _ in normal_results}), "idle_mb": round(idle),
               "peak_above_idle_mb": round(peak - idle), "wall_s": round(wall, 1),
               "large_max_s": round(max(ms for _, ms in large) / 1000, 1),
               "normal_p50_ms": round(float(np.percentile(normal_ms, 50)), 1) if len(normal_ms) else None,
               "normal_max_ms": round(float(normal_ms.max()), 1) if len(normal_ms) else None,
               "server_alive_after": alive}
    print(f"{args.requests} x {args.side}^2 PNG at once ({summary['png_mb']} MB each) with "
          f"{len(normal_results)} normal requests beside them: peak {summary['peak_above_idle_mb']} MB above idle "
          f"({summary['idle_mb']} MB); codes {summary['large_codes']} / {summary['normal_codes']}; normal p50 "
          f"{summary['normal_p50_ms']} ms, max {summary['normal_max_ms']} ms; {summary['wall_s']} s")
    print(json.dumps(summary))
    ok = summary["large_codes"] == [200] and summary["normal_codes"] == [200] and alive
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
