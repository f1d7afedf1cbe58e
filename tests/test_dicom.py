"""DICOM input: gray levels (MONOCHROME1/2, rescale, window, VOI LUT, bit depths), compressed syntaxes, header facts,
and every failure as a one-line error naming the file. All files are generated here with pydicom."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed (pip install 'boneage[serve]')")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.uid import (  # noqa: E402
    MPEG2MPML,
    UID,
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)

from boneage.data.images import decode_image, read_image  # noqa: E402
from boneage.dicom import read_dicom  # noqa: E402
from boneage.errors import UserError  # noqa: E402

RNG = np.random.default_rng(0)
STORED12 = RNG.integers(0, 4096, (48, 40)).astype(np.uint16)  # 12-bit values in 16-bit words
STORED12[:4] = 0
STORED12[-4:] = 4095


def make_dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None, **tags) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8)
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def decodable(ts) -> bool:
    return get_decoder(ts).is_available


def jpeg_lossless_sv1(a: np.ndarray, precision: int) -> bytes:
    """A minimal JPEG Lossless encoder (ITU T.81 process 14, predictor 1) for one gray frame: pydicom has none."""
    x = a.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: the left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the one above
    pred[1:, 1:] = x[1:, :-1]  # selection value 1: the left neighbour
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)
    bits = []
    for d in diff.ravel().tolist():
        ssss = 0 if d == 0 else abs(d).bit_length()
        extra = "" if ssss in (0, 16) else format(d if d > 0 else d - 1 + (1 << ssss), f"0{ssss}b")
        bits.append(format(ssss, "05b") + extra)  # 17 categories, each a 5-bit Huffman code equal to itself
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        data.append(int(stream[i:i + 8], 2))
        if data[-1] == 0xFF:
            data.append(0x00)  # byte stuffing
    h, w = a.shape
    sof = bytes([0xFF, 0xC3, 0, 11, precision, h >> 8, h & 255, w >> 8, w & 255, 1, 1, 0x11, 0])
    dht = bytes([0xFF, 0xC4, 0, 36, 0x00, 0, 0, 0, 0, 17, *([0] * 11), *range(17)])
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + bytes(data) + b"\xff\xd9"


# ------------------------------------------------------------------------------------------------ gray levels
def test_monochrome2_16bit_is_read_as_stored():
    a = RNG.integers(0, 65536, (30, 20)).astype(np.uint16)
    d = read_dicom(to_bytes(make_dicom(a)), "m2.dcm")
    assert d.pixels.dtype == np.float32 and d.pixels.shape == (30, 20)
    assert np.array_equal(d.pixels, a.astype(np.float32))
    assert (d.photometric, d.bits_stored, d.voi) == ("MONOCHROME2", 16, "none")


def test_monochrome1_is_inverted_so_bone_is_bright():
    a = STORED12.copy()
    a[20:28, 15:25] = 100  # in MONOCHROME1 a low value is bright: the "bone"
    d = read_dicom(to_bytes(make_dicom(a, "MONOCHROME1", 12)), "m1.dcm")
    assert np.array_equal(d.pixels, (a.max() + a.min() - a).astype(np.float32))  # same range, order reversed
    assert d.pixels[20:28, 15:25].mean() > d.pixels.mean()


def test_16bit_monochrome1_inverts_without_overflow():
    a = RNG.integers(1000, 65536, (30, 20)).astype(np.uint16)  # max + min > 65535: wraps in uint16 arithmetic
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = read_dicom(to_bytes(make_dicom(a, "MONOCHROME1")), "m1.dcm")
    assert np.array_equal(d.pixels, (float(a.max()) + float(a.min()) - a).astype(np.float32))

def test_12bit_rescale_slope_and_intercept():
    ds = make_dicom(STORED12, bits=12, RescaleSlope=2, RescaleIntercept=-1024)
    d = read_dicom(to_bytes(ds), "r.dcm")
    hu = 2.0 * STORED12 - 1024  # modality values; negative ones are shifted so the scale starts at 0
    assert d.bits_stored == 12
    assert np.allclose(d.pixels, hu - hu.min())


def test_window_center_and_width_linear():
    # DICOM PS3.3 C.11.2.1.2, 12-bit unsigned output 0..4095: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 4095
    a = np.full((8, 8), 2048, dtype=np.uint16)
    a[0], a[1] = 1000, 3000  # below c - w/2 and above c + w/2
    d = read_dicom(to_bytes(make_dicom(a, bits=12, WindowCenter=2048, WindowWidth=1024)), "w.dcm")
    assert d.voi == "window C/W"
    assert np.all(d.pixels[0] == 0) and np.all(d.pixels[1] == 4095)
    assert d.pixels[4, 4] == pytest.approx((0.5 / 1023 + 0.5) * 4095, abs=1e-3)


def test_voi_lut_sequence_is_applied():
    a = RNG.integers(0, 256, (16, 16)).astype(np.uint8)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new(0x00283006, "US", [1000 + 2 * i for i in range(256)])  # LUT Data
    ds = make_dicom(a)
    ds.VOILUTSequence = [item]
    d = read_dicom(to_bytes(ds), "lut.dcm")
    assert d.voi == "VOI LUT"
    assert np.array_equal(d.pixels, 1000 + 2 * a.astype(np.float32))


def test_multiframe_gives_the_first_frame():
    frames = np.stack([STORED12, 4095 - STORED12, STORED12 // 2])
    d = read_dicom(to_bytes(make_dicom(frames, bits=12)), "mf.dcm")
    assert d.frames == 3 and "first of 3 frames" in d.notes
    assert np.array_equal(d.pixels, STORED12.astype(np.float32))


def test_colour_dicom_becomes_luminance_and_reports_its_colour():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 30  # a red picture
    d = read_dicom(to_bytes(make_dicom(rgb, "RGB")), "rgb.dcm")
    assert d.pixels.shape == (40, 40)
    assert d.pixels[0, 0] == pytest.approx(0.299 * 200 + 0.114 * 30, abs=0.01)
    assert d.colour_fraction > 0.9


# ------------------------------------------------------------------------------------------- compressed syntaxes
def test_rle_lossless_round_trips():
    ds = make_dicom(STORED12, bits=12)
    ds.compress(RLELossless)
    d = read_dicom(to_bytes(ds), "rle.dcm")
    assert "RLE" in d.transfer_syntax and np.array_equal(d.pixels, STORED12.astype(np.float32))


def test_jpeg_lossless_sv1_round_trips():
    if not decodable(JPEGLosslessSV1):
        pytest.skip("no JPEG Lossless decoder: pip install pylibjpeg pylibjpeg-libjpeg")
    ds = make_dicom(STORED12, bits=12)
    ds.PixelData = encapsulate([jpeg_lossless_sv1(STORED12, 12)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    d = read_dicom(to_bytes(ds), "jl.dcm")
    assert "Lossless" in d.transfer_syntax and np.array_equal(d.pixels, STORED12.astype(np.float32))


def test_jpeg2000_lossless_round_trips():
    from pydicom.pixels import get_encoder

    if not (get_encoder(JPEG2000Lossless).is_available and decodable(JPEG2000Lossless)):
        pytest.skip("no JPEG 2000 codec: pip install pylibjpeg pylibjpeg-openjpeg")
    ds = make_dicom(STORED12, bits=12)
    ds.compress(JPEG2000Lossless)
    d = read_dicom(to_bytes(ds), "j2k.dcm")
    assert "JPEG 2000" in d.transfer_syntax and np.array_equal(d.pixels, STORED12.astype(np.float32))


def test_jpeg_baseline_8bit_is_close():
    from PIL import Image

    a = (np.add.outer(np.arange(64), np.arange(48)) * 2).astype(np.uint8)  # smooth: JPEG keeps it well
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    ds = make_dicom(a)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    d = read_dicom(to_bytes(ds), "jpg.dcm")
    assert "Baseline" in d.transfer_syntax and np.abs(d.pixels - a).mean() < 2


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_third_party_encoded_files_match_the_uncompressed_one(name):
    """JPEG-LS has no encoder here: compare pydicom's own bundled files (written by other toolkits) instead."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    if not (folder / name).is_file() or not (folder / "MR_small.dcm").is_file():
        pytest.skip(f"pydicom's bundled test file {name} is not installed")
    ts = pydicom.dcmread(folder / name, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not decodable(ts):
        pytest.skip(f"no decoder for {ts.name}: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
    assert np.array_equal(read_dicom(folder / name).pixels, read_dicom(folder / "MR_small.dcm").pixels)


def test_missing_decoder_says_what_to_install(monkeypatch):
    import boneage.dicom

    ds = make_dicom(STORED12, bits=12)
    ds.compress(RLELossless)
    monkeypatch.setattr(boneage.dicom, "_decoder_missing", lambda ts: True)
    with pytest.raises(UserError, match=r"^c\.dcm: cannot decode RLE Lossless pixel data: install pylibjpeg"):
        read_dicom(to_bytes(ds), "c.dcm")



def test_unknown_transfer_syntax_is_a_user_error():
    ds = make_dicom(STORED12, bits=12)
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    with pytest.raises(UserError, match=r"^u\.dcm: unknown transfer syntax UID 1\.2\.3\.4\.5"):
        read_dicom(buf.getvalue(), "u.dcm")


def test_a_syntax_without_any_decoder_does_not_say_to_install_one():
    ds = make_dicom(STORED12, bits=12)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UserError, match=r"^v\.dcm: cannot decode MPEG2 .*no decoder exists") as err:
        read_dicom(to_bytes(ds), "v.dcm")
    assert "install" not in str(err.value)

# --------------------------------------------------------------------------------------------------- header
@pytest.mark.parametrize(("tags", "male", "age"), [
    ({"PatientSex": "F", "PatientAge": "010Y"}, False, 120.0),
    ({"PatientSex": "M", "PatientAge": "006M"}, True, 6.0),
    ({"PatientSex": "O", "PatientAge": "026W"}, None, 26 * 7 * 12 / 365.25),
    ({"PatientAge": "009Y", "PatientBirthDate": "20150131", "StudyDate": "20250131"}, None, 120.0),  # dates win
    ({"PatientSex": "", "PatientAge": "junk"}, None, None),
    ({}, None, None),
])
def test_sex_and_age_from_the_header(tags, male, age):
    d = read_dicom(to_bytes(make_dicom(STORED12, bits=12, **tags)), "h.dcm")
    assert d.male is male
    assert d.age_months == (pytest.approx(age) if age is not None else None)


def test_study_date_falls_back_to_acquisition_date():
    d = read_dicom(to_bytes(make_dicom(STORED12, bits=12, AcquisitionDate="20240305")), "d.dcm")
    assert d.study_date.isoformat() == "2024-03-05" and d.header()["study_date"] == "2024-03-05"


# --------------------------------------------------------------------------------------------- finding, failing
def test_dicom_is_recognised_by_content_without_a_suffix(tmp_path):
    data = to_bytes(make_dicom(STORED12, bits=12, PatientSex="F"))
    (tmp_path / "scan").write_bytes(data)
    assert np.array_equal(decode_image(tmp_path / "scan"), STORED12.astype(np.float32))
    assert np.array_equal(decode_image(data), STORED12.astype(np.float32))
    decoded = read_image(data, "upload")
    assert decoded.dicom is not None and decoded.dicom.male is False


@pytest.mark.parametrize("payload", [b"", b"hello, not a DICOM at all", b"\x00" * 128 + b"DICM" + b"\x02\x00garbage",
                                     to_bytes(make_dicom(STORED12, bits=12))[:300]])
def test_broken_files_are_one_line_errors_naming_the_file(tmp_path, payload):
    (tmp_path / "bad.dcm").write_bytes(payload)  # pydicom reads leniently: what is missing is the image
    with pytest.raises(UserError) as err:
        decode_image(tmp_path / "bad.dcm")
    assert str(err.value) == f"{tmp_path / 'bad.dcm'}: not a DICOM image (no pixel data)"


def test_a_reader_crash_is_a_user_error(monkeypatch):
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: (_ for _ in ()).throw(EOFError("unexpected end")))
    with pytest.raises(UserError, match=r"^x.dcm: not a readable DICOM file \(unexpected end\)$"):
        read_dicom(b"\x00" * 200, "x.dcm")


def test_dicom_without_pixel_data_and_truncated_pixel_data():
    ds = make_dicom(STORED12, bits=12)
    del ds.PixelData
    with pytest.raises(UserError, match="no pixel data"):
        read_dicom(to_bytes(ds), "np.dcm")
    ds = make_dicom(STORED12, bits=12)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(UserError, match="^cut.dcm: DICOM pixel data cannot be decoded"):
        read_dicom(to_bytes(ds), "cut.dcm")


def test_huge_header_is_refused_before_decoding():
    ds = make_dicom(STORED12, bits=12)
    ds.Rows, ds.Columns = 20_000, 20_000  # 400 M pixels claimed, 4 KB present
    with pytest.raises(UserError, match=r"^big.dcm: image too large \(20000 x 20000 pixels\)"):
        read_dicom(to_bytes(ds), "big.dcm")


def test_missing_file():
    with pytest.raises(UserError, match="no such file"):
        read_dicom("/nonexistent/x.dcm")


# ---------------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    """`boneage ARGS` in-process; quality checks off: the generated pixels are a test pattern, not a hand."""
    from boneage.cli import main

    return main([str(a) for a in args] + ["--no-checks"])


def test_cli_takes_sex_and_age_from_the_dicom_header(tiny_model, tmp_path, capsys):
    tags = {"PatientSex": "F", "PatientBirthDate": "20120115", "StudyDate": "20220115"}
    (tmp_path / "hand.dcm").write_bytes(to_bytes(make_dicom(STORED12, "MONOCHROME1", 12, **tags)))
    assert _cli("predict", tmp_path / "hand.dcm", "--model", tiny_model, "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["sex"] == "F" and record["sex_source"] == "dicom" and record["chronological_age_source"] == "dicom"
    assert record["sds"]["chronological_age_months"] == 120.0 and record["sds"]["sds"] is not None


def test_cli_needs_sex_when_the_header_has_none(tiny_model, tmp_path, capsys):
    (tmp_path / "anon.dcm").write_bytes(to_bytes(make_dicom(STORED12, bits=12)))
    assert _cli("predict", tmp_path / "anon.dcm", "--model", tiny_model) == 2
    err = capsys.readouterr().err
    assert "anon.dcm: sex unknown: give M or F (the DICOM header has no PatientSex)" in err
    assert _cli("predict", tmp_path / "anon.dcm", "--model", tiny_model, "--sex", "M") == 0
    assert "sex M" in capsys.readouterr().out


def test_cli_unknown_transfer_syntax_is_one_line_and_exit_2(tiny_model, tmp_path, capsys):
    ds = make_dicom(STORED12, bits=12, PatientSex="F")
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5")
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=True, implicit_vr=False, little_endian=True)
    assert _cli("predict", tmp_path / "odd.dcm", "--model", tiny_model) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "odd.dcm: unknown transfer syntax UID" in err[0]
