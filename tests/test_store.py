"""Decode once: the store is reused, and a stale or damaged one is rebuilt, never silently used."""

import numpy as np
from PIL import Image

from boneage.config import Preprocess
from boneage.data.labels import read_labels
from boneage.data.store import open_store


def _dataset(tmp_path, n=6):
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "l.csv").write_text("id,boneage,male\n" + "".join(f"{i},{10 * i + 5},True\n" for i in range(n)))
    return read_labels(tmp_path / "l.csv", folder).rows


def test_store_holds_preprocessed_images_and_is_reused(tmp_path):
    records, pp, logs = _dataset(tmp_path), Preprocess(image_size=32), []
    store = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append)
    assert store.pixels.shape == (6, 32, 32) and store.pixels.dtype == np.uint8
    assert len(logs) == 1 and "decoding 6 images" in logs[0]
    again = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append)
    assert len(logs) == 1  # nothing decoded the second time
    assert np.array_equal(np.asarray(again.pixels), np.asarray(store.pixels))


def test_changed_settings_or_files_make_a_new_store(tmp_path):
    records = _dataset(tmp_path)
    a = open_store(records, Preprocess(image_size=32), tmp_path / "cache", workers=1, log=lambda m: None)
    b = open_store(records, Preprocess(image_size=48), tmp_path / "cache", workers=1, log=lambda m: None)
    Image.new("L", (40, 30), 255).save(records[0].image)
    c = open_store(records, Preprocess(image_size=32), tmp_path / "cache", workers=1, log=lambda m: None)
    assert len({a.path, b.path, c.path}) == 3
    assert not a.path.exists() and b.path.exists()  # the store c replaces is gone, other settings' store is kept
    assert (c.pixels[0] == 0).all()  # the new content: constant, equalised to 0


def test_damaged_store_is_detected_and_rebuilt(tmp_path):
    records, pp, logs = _dataset(tmp_path), Preprocess(image_size=32), []
    store = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append)
    good = np.array(store.pixels)
    with open(store.path, "r+b") as f:  # flip bytes in the pixel data
        f.seek(-100, 2)
        f.write(b"\x00\x01" * 50)
    rebuilt = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append)
    assert any("stale or damaged" in m for m in logs)
    assert np.array_equal(np.asarray(rebuilt.pixels), good)


def test_an_undecodable_image_is_recorded_not_fatal(tmp_path):
    records = _dataset(tmp_path)
    records[2].image.write_bytes(b"not a png")
    store = open_store(records, Preprocess(image_size=32), tmp_path / "cache", workers=1, log=lambda m: None)
    assert list(store.failed) == ["2"] and "not an image" in store.failed["2"]


def test_a_raw_store_holds_the_films_before_their_normalisation_in_8_bit_levels(tmp_path):
    records, pp = _dataset(tmp_path), Preprocess(image_size=32)
    Image.fromarray(np.full((40, 30), 4000, dtype=np.uint16)).save(records[1].image)  # a 16-bit film
    cooked = open_store(records, pp, tmp_path / "cache", workers=1, log=lambda m: None)
    raw = open_store(records, pp, tmp_path / "cache", workers=1, log=lambda m: None, raw=True)
    assert raw.path != cooked.path and raw.pixels.dtype == np.float16 and raw.pixels.shape == (6, 32, 32)
    assert np.asarray(raw.pixels[0]).std() > 10 and np.asarray(raw.pixels[0]).max() <= 255  # gray levels, not [0, 1]
    assert np.allclose(np.asarray(raw.pixels[1], dtype=float), 255.0)  # 16-bit: scaled to 8-bit levels


def _hands(tmp_path, n=4):
    """Films of a bright hand-like block on a dark background, so that the hand crop has something to find."""
    folder = tmp_path / "hands"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        film = np.full((120, 90), 20, np.uint8)
        film[25:100, 20:70] = rng.integers(120, 230, (75, 50), dtype=np.uint8)
        Image.fromarray(film).save(folder / f"{i}.png")
    (tmp_path / "h.csv").write_text("id,boneage,male\n" + "".join(f"{i},{10 * i + 5},True\n" for i in range(n)))
    return read_labels(tmp_path / "h.csv", folder).rows


def test_framed_stores_hold_each_film_framed_once_at_random_and_keep_the_plain_store(tmp_path):
    records, pp, logs = _hands(tmp_path), Preprocess(image_size=32, crop="hand"), []
    framing = {"version": 1, "seed": 0, "rotate_deg": 15.0, "margin": 0.25, "zoom": 0.15}
    plain = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append)
    one = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append, framing=framing)
    two = open_store(records, pp, tmp_path / "cache", workers=1, log=logs.append, framing={**framing, "version": 2})
    assert len({plain.path, one.path, two.path}) == 3 and plain.path.exists() and one.path.exists()
    assert "framed at random (version 1)" in logs[1]
    a, b, c = (np.asarray(s.pixels, dtype=np.float32) for s in (plain, one, two))
    assert all(np.abs(a[i] - b[i]).mean() > 1 and np.abs(b[i] - c[i]).mean() > 1 for i in range(len(records)))
    again = open_store(records, pp, tmp_path / "cache2", workers=1, log=logs.append, framing=framing)
    assert np.array_equal(np.asarray(again.pixels), b)  # each film's draw is fixed: a rebuilt store is the same
