"""A compact pack of an RSNA-style dataset, for carrying it where bandwidth or space is short (a GPU machine).

The pack is a plain zip (stored, not deflated: WebP is already compressed; a tar would spend ~0.7 KB of headers and
padding per 2.3 KB image): `labels.csv` (training layout) and `images/<id>.webp`, the images resized to `size`
(stretched, as the RSNA copy here already is) as lossy WebP. Unpacked (`python -m zipfile -e PACK DIR` or `unzip`),
it is itself an RSNA-style folder that `boneage train --images DIR/images --labels DIR/labels.csv` reads.
12,611 images at 299 px, quality 65: about 29 MB.
"""

from __future__ import annotations

import io
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from boneage.data.images import decode_image
from boneage.data.labels import read_labels
from boneage.errors import UserError


def _encode(args: tuple[str, int, int]) -> bytes | str:
    path, size, quality = args
    try:
        gray = decode_image(path)
    except UserError as exc:
        return str(exc)
    if gray.max() > 255:  # 16-bit: keep its full range in 8 bits; per-image normalisation comes later anyway
        lo, hi = float(gray.min()), float(gray.max())
        gray = (gray - lo) / max(hi - lo, 1e-6) * 255.0
    img = Image.fromarray(np.clip(np.round(gray), 0, 255).astype(np.uint8), mode="L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, method=6)
    return buf.getvalue()


def build_pack(images: str, labels: str, out: str, size: int = 299, quality: int = 65, log=print) -> dict:
    table = read_labels(labels, images)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    jobs = [(str(r.image), size, quality) for r in table.rows]
    skipped = list(table.skipped)
    kept = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as pack, ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for r, data in zip(table.rows, pool.map(_encode, jobs, chunksize=32)):
            if isinstance(data, str):
                skipped.append(data)
                continue
            pack.writestr(f"images/{r.id}.webp", data)
            kept.append(r)
        pack.writestr("labels.csv", "id,boneage,male\n" + "".join(f"{r.id},{r.age_months:g},{r.male}\n" for r in kept))
    os.replace(tmp, out_path)
    result = {"pack": str(out_path), "images": len(kept), "skipped": len(skipped), "bytes": out_path.stat().st_size,
              "size": size, "quality": quality}
    log(f"{out_path}: {len(kept)} images, {result['bytes'] / 1e6:.1f} MB; "
        f"unpack with `python -m zipfile -e {out_path} DIR`")
    return result
