"""Decode once: every image decoded, resized and normalised a single time into a memory-mapped uint8 array.

A raw store (`raw=True`, for noise added before the intensity normalisation) holds the cut, resized film before the
normalisation instead, as float16 in 8-bit gray levels (a 16-bit film scaled down): twice the bytes.

A framed store (`framing`, for training) holds every film framed once at random before the hand crop
(boneage.data.framing.drawn_framing), each film's draw fixed by the seed, the version number and the film's id.

A store is keyed by the preprocessing settings and by the source files (name, size, modification time), so changing
either builds a new one. Its metadata (written last, atomically) holds a CRC of the pixels: a store whose files are
missing, truncated, stale or corrupt is detected on opening and rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneage.config import Preprocess, to_dict
from boneage.data.framing import drawn_framing
from boneage.data.images import decode_image
from boneage.data.labels import LabelRow
from boneage.data.preprocess import crop_and_resize, preprocess_gray
from boneage.errors import UserError

FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("BONEAGE_CACHE", Path.home() / ".cache" / "boneage")) / "stores"


def store_key(records: list[LabelRow], pp: Preprocess, raw: bool = False, framing: dict | None = None) -> str:
    what = {"format": FORMAT, "preprocess": to_dict(pp)} | ({"raw": True} if raw else {}) | (
        {"framing": framing} if framing else {})
    h = hashlib.sha256(json.dumps(what, sort_keys=True).encode())
    for r in records:
        st = r.image.stat()
        h.update(f"{r.id}\0{r.image.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _crc(array: np.ndarray) -> int:
    crc = 0
    for start in range(0, len(array), 1024):  # in slices: never a second copy of a gigabyte in memory
        crc = zlib.crc32(np.ascontiguousarray(array[start : start + 1024]).data, crc)
    return crc


def raw_gray(gray: np.ndarray, pp: Preprocess) -> np.ndarray:
    """What a raw store holds for a film: `crop_and_resize` in 8-bit gray levels, float16."""
    square = crop_and_resize(gray, pp)
    top = float(gray.max())
    return (square * (255.0 / top) if top > 255 else square).astype(np.float16)


def framed(gray: np.ndarray, film_id: str, framing: dict) -> np.ndarray:
    """The film as the framed store's version `framing["version"]` holds it (before the crop)."""
    rng = np.random.default_rng([framing["seed"], framing["version"], zlib.crc32(film_id.encode())])
    return drawn_framing(gray, rng, framing["rotate_deg"], framing["margin"], framing["zoom"])


def _decode_one(args: tuple[str, dict, bool, dict | None, str]) -> tuple[np.ndarray | None, str | None]:
    path, pp, raw, framing, film_id = args
    try:
        gray = decode_image(path)
        if framing:
            gray = framed(gray, film_id, framing)
        return (raw_gray if raw else preprocess_gray)(gray, Preprocess(**pp)), None
    except UserError as exc:
        return None, str(exc)


@dataclass
class ImageStore:
    pixels: np.ndarray  # uint8 (N, S, S), memory-mapped; float16 for a raw store
    ids: list[str]
    failed: dict[str, str]  # id -> why it could not be decoded; its row in `pixels` is zeros
    path: Path

    @property
    def index(self) -> dict[str, int]:
        return {i: n for n, i in enumerate(self.ids)}


def _open(npy: Path, meta_path: Path, ids: list[str]) -> ImageStore | None:
    """The store if it is complete and intact, else None."""
    try:
        meta = json.loads(meta_path.read_text())
        pixels = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if meta.get("ids") != ids or list(pixels.shape) != meta.get("shape") or _crc(pixels) != meta.get("crc32"):
        return None
    return ImageStore(pixels, ids, meta.get("failed", {}), npy)


def _drop_superseded(cache: Path, meta: dict, log) -> None:
    """Delete the stores this one replaces: the same films, settings and kind under another key, because a file
    changed or the data was copied (new modification times). Each is a full decode of the data set (2 GiB for the
    RSNA set in float16) that would otherwise stay in the cache for ever. Another process still reading one keeps its
    mapping: unlinking does not take the pages from under it."""
    signature = [meta["ids"], meta["preprocess"], meta["raw"], meta.get("framing")]
    mine = json.loads(json.dumps(signature))  # tuples as the file has them
    for other in cache.glob("*.json"):
        if other.stem == meta["key"]:
            continue
        try:
            old = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if [old.get("ids"), old.get("preprocess"), bool(old.get("raw")), old.get("framing")] == mine:
            other.with_suffix(".npy").unlink(missing_ok=True)
            other.unlink(missing_ok=True)
            log(f"removed the store it replaces, {other.with_suffix('.npy')}")


def open_store(
    records: list[LabelRow], pp: Preprocess, cache_dir: str | Path | None = None, workers: int | None = None,
    log=print, raw: bool = False, framing: dict | None = None,
) -> ImageStore:
    """Open the store for these records and settings, building (or rebuilding) it if needed. `framing`: {"version",
    "seed", "rotate_deg", "margin", "zoom"} for a framed store."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = store_key(records, pp, raw, framing)
    npy, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    ids = [r.id for r in records]
    if npy.exists() or meta_path.exists():
        store = _open(npy, meta_path, ids)
        if store is not None:
            return store
        log(f"store {npy} is stale or damaged: rebuilding")
        meta_path.unlink(missing_ok=True)

    size = pp.image_size
    tmp = npy.with_suffix(".npy.tmp")
    pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16 if raw else np.uint8,
                                       shape=(len(records), size, size))
    failed: dict[str, str] = {}
    jobs = [(str(r.image), to_dict(pp), raw, framing, r.id) for r in records]
    workers = workers or min(16, os.cpu_count() or 1)
    what = f" framed at random (version {framing['version']})" if framing else ""
    log(f"decoding {len(records)} images{what} once into {npy} ({workers} processes)")
    with ProcessPoolExecutor(workers) as pool:
        for n, (image, error) in enumerate(pool.map(_decode_one, jobs, chunksize=64)):
            if error:
                failed[records[n].id] = error
            else:
                pixels[n] = image
    pixels.flush()
    crc = _crc(pixels)
    del pixels
    os.replace(tmp, npy)
    meta = {"format": FORMAT, "key": key, "ids": ids, "shape": [len(records), size, size], "crc32": crc,
            "failed": failed, "preprocess": to_dict(pp), "raw": raw} | ({"framing": framing} if framing else {})
    meta_tmp = meta_path.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(meta))
    os.replace(meta_tmp, meta_path)  # the metadata last: a store without it is incomplete by definition
    _drop_superseded(cache, meta, log)
    return ImageStore(np.load(npy, mmap_mode="r"), ids, failed, npy)
