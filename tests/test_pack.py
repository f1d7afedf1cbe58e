"""The compact pack is itself an RSNA-style dataset once unpacked."""

import zipfile

from boneage.data.labels import read_labels
from boneage.data.pack import build_pack


def test_pack_roundtrip(synthetic, tmp_path):
    images, labels = synthetic
    result = build_pack(str(images), str(labels), str(tmp_path / "p.zip"), size=64, quality=65, log=lambda m: None)
    assert result["images"] == 360 and result["bytes"] < 360 * 3000  # a few KB per 64 px image at most
    with zipfile.ZipFile(tmp_path / "p.zip") as z:
        z.extractall(tmp_path / "out")
    table = read_labels(tmp_path / "out" / "labels.csv", tmp_path / "out" / "images")
    original = read_labels(labels, images)
    assert [(r.id, r.age_months, r.male) for r in table.rows] == [
        (r.id, r.age_months, r.male) for r in original.rows]
    assert table.rows[0].image.suffix == ".webp"
