"""Hostile memory cases against a real `boneage serve` (127.0.0.1, a free port, the shipped model unless --model):

  bomb     one DICOM whose deflated data set (1.2.840.10008.1.2.1.99) inflates to a --bomb-side^2 16-bit image from
           about a megabyte (the answer's status and first words are printed: a refusal is what is hoped for)
  medium   --rounds rounds of 16 films at once, each a drawn hand enlarged to 3,500 x 3,500 (a PNG of ~100 KB), each
           from its own client address (127.0.0.2...: the per-client limit is not what is measured here)
  heatmap  8 clients asking for heatmaps of a normal film, one request after another each, for --heat-seconds

Throughout, one more client (127.0.0.100) sends a normal request (examples/14471.jpg, no extras) every 0.25 s. The
server's resident memory is sampled every 20 ms. For each case: peak RSS above the idle baseline (measured after a
warm-up request), idle RSS 3 s after the case ended, above that baseline, and the normal requests' p50 / p99 against
their quiet value (20 requests alone beforehand). Goals (issue 19): peak < 1.5 GB above idle, idle back within
200 MB, normal p99 under 3x quiet. Ends with one JSON line.

    python benchmarks/hostile.py [--rounds 3] [--heat-seconds 20] [--bomb-side 20000] [--model PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_images import status_mb  # noqa: E402
from loadtest import ROOT, free_port, wait_until_up  # noqa: E402


def medium_png(side: int = 3500) -> bytes:
    from boneage.data.synthetic import hand_phantom

    small = Image.fromarray(np.round(hand_phantom(500, 400, seed=1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    small.resize((side, side), Image.BILINEAR).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def deflate_bomb_dicom(side: int) -> bytes:
    """A Part-10 file in Deflated Explicit VR Little Endian: the meta header, then the raw-deflated data set whose
    Pixel Data is side^2 zeros (16-bit), compressed as it is generated (never whole in memory)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import DeflatedExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DigitalXRayImageStorageForPresentation, \
        generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientSex, ds.BodyPartExamined = "DX", "M", "HAND"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(body, ds)
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    meta_out = DicomBytesIO()
    meta_out.is_little_endian, meta_out.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(meta_out, meta, enforce_standard=True)
    head.write(meta_out.getvalue())
    z = zlib.compressobj(1, zlib.DEFLATED, -15)  # level 1: zeros still shrink ~1,000-fold, fast
    out = [head.getvalue(), z.compress(body.getvalue())]
    n = side * side * 2
    out.append(z.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n)))
    chunk = b"\0" * (1 << 22)
    for _ in range(n // len(chunk)):
        out.append(z.compress(chunk))
    out.append(z.compress(b"\0" * (n % len(chunk))))
    out.append(z.flush())
    return b"".join(out)


def client_for(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=600)


class Sampler:
    """The server's RSS every 20 ms; `peak()` since the last `reset()`."""

    def __init__(self, pid: int):
        self.pid, self.top, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.top = max(self.top, status_mb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            time.sleep(0.02)

    def reset(self) -> None:
        self.top = 0.0

    def peak(self) -> float:
        return self.top


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--heat-seconds", type=float, default=20.0)
    ap.add_argument("--bomb-side", type=int, default=20000)
    ap.add_argument("--model")
    args = ap.parse_args()

    normal = (ROOT / "examples" / "14471.jpg").read_bytes()
    medium = medium_png()
    bomb = deflate_bomb_dicom(args.bomb_side)
    port = free_port()
    cmd = [sys.executable, "-m", "boneage", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd + (["--model", args.model] if args.model else []), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def post(client: httpx.Client, data: bytes, name: str, **form) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        try:
            r = client.post(f"{base}/predict", files={"file": (name, data)}, data={"sex": "M", **form})
            code, text = r.status_code, r.text[:160]
        except httpx.HTTPError as exc:
            code, text = 0, type(exc).__name__
        return code, 1000 * (time.perf_counter() - t0), text

    results: dict = {"medium_png_kb": round(len(medium) / 1024), "bomb_kb": round(len(bomb) / 1024)}
    try:
        if not wait_until_up(server, base):
            return 1
        watcher = client_for("127.0.0.100")
        post(watcher, normal, "hand.jpg", heatmap="true")  # warm: the model, Grad-CAM and the imports loaded
        quiet = np.array([post(watcher, normal, "hand.jpg")[1] for _ in range(20)])
        time.sleep(1)
        baseline = status_mb(server.pid, "VmRSS")
        results.update(baseline_mb=round(baseline), quiet_p50_ms=round(float(np.percentile(quiet, 50))),
                       quiet_p99_ms=round(float(np.percentile(quiet, 99))))
        sampler = Sampler(server.pid)

        def case(name: str, load) -> None:
            done, normal_ms, codes = threading.Event(), [], []

            def keep_normal() -> None:
                while not done.is_set():
                    code, ms, _ = post(watcher, normal, "hand.jpg")
                    codes.append(code)
                    if code == 200:
                        normal_ms.append(ms)
                    time.sleep(0.25)

            sampler.reset()
            feeder = threading.Thread(target=keep_normal)
            t0 = time.perf_counter()
            feeder.start()
            detail = load()
            done.set()
            feeder.join()
            wall = time.perf_counter() - t0
            peak = sampler.peak()
            time.sleep(3)
            idle = status_mb(server.pid, "VmRSS")
            ms = np.array(normal_ms) if normal_ms else np.array([np.nan])
            results[name] = {"peak_above_baseline_mb": round(peak - baseline),
                             "idle_after_above_baseline_mb": round(idle - baseline), "wall_s": round(wall, 1),
                             "normal_n": len(codes), "normal_codes": sorted(set(codes)),
                             "normal_p50_ms": round(float(np.percentile(ms, 50))),
                             "normal_p99_ms": round(float(np.percentile(ms, 99))), **detail}
            r = results[name]
            print(f"{name:8s} peak +{r['peak_above_baseline_mb']} MB, idle after +{r['idle_after_above_baseline_mb']}"
                  f" MB; normal ({r['normal_n']}, codes {r['normal_codes']}) p50 {r['normal_p50_ms']} ms, p99 "
                  f"{r['normal_p99_ms']} ms ({r['normal_p99_ms'] / results['quiet_p99_ms']:.1f}x quiet p99); "
                  f"{r['wall_s']} s; {detail}", flush=True)

        def bomb_load() -> dict:
            code, ms, text = post(client_for("127.0.0.2"), bomb, "bomb.dcm")
            return {"code": code, "answer": text[:120], "ms": round(ms)}

        def medium_load() -> dict:
            codes = []
            clients = [client_for(f"127.0.0.{2 + i}") for i in range(16)]
            for _ in range(args.rounds):
                with ThreadPoolExecutor(16) as pool:
                    codes += [c for c, _, _ in pool.map(lambda i: post(clients[i], medium, f"m{i}.png"), range(16))]
                results.setdefault("medium_idle_after_round_mb", []).append(
                    round(status_mb(server.pid, "VmRSS") - baseline))
            return {"codes": dict(sorted((str(c), codes.count(c)) for c in set(codes)))}

        def heatmap_load() -> dict:
            stop_at, codes = time.perf_counter() + args.heat_seconds, []

            def client(i: int) -> None:
                c = client_for(f"127.0.0.{30 + i}")
                while time.perf_counter() < stop_at:
                    codes.append(post(c, normal, "hand.jpg", heatmap="true")[0])

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(client, range(8)))
            return {"codes": dict(sorted((str(c), codes.count(c)) for c in set(codes)))}

        case("bomb", bomb_load)
        case("medium", medium_load)
        case("heatmap", heatmap_load)
        sampler.stop.set()
        results["alive_after"] = httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(results))
    return 0 if results.get("alive_after") else 1


if __name__ == "__main__":
    sys.exit(main())
