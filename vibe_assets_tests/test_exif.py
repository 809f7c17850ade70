"""EXIF metadata (vibe_assets.imaging.exif) on real sample files, through ``decode_photo``, and on
hand-built EXIF blocks; expected values were read independently from Pillow's raw tags."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import struct
import time
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from vibe_assets.imaging import decode as decode_module
from vibe_assets.imaging.decode import decode_photo
from vibe_assets.imaging.exif import photo_metadata, read_raw_exif

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason="sample files not present (../shared/samples)"
)

# Sample -> (Make, Model) as Pillow's raw tags give them (0x010F, 0x0110, NULs and spaces
# stripped). The MANIFEST notes state the same for the files they describe (checked below); the
# iPhone 7 HEIC and the 550D DNG notes name no EXIF, their values come from the raw tags alone.
CAMERAS = {
    "photos/mei_Nikon_D90.jpg": ("NIKON CORPORATION", "NIKON D90"),
    "photos/mei_Canon_EOS_5D.jpg": ("Canon", "Canon EOS 5D"),
    "photos/immich_prairie_falcon.jpg": ("Canon", "Canon EOS R5"),  # raw: "Canon\x00"
    "photos/pp_elephants.jpg": ("Canon", "Canon EOS 6D"),
    "raw/pp_canon_eos_6d_lossy.dng": ("Canon", "Canon EOS 6D"),
    "raw/tinydng_colorchart_Canon550D_MagicLantern.dng": ("Canon", "Canon EOS Kiss X4"),
    "edge/wrong-ext_jpeg_pp_this-is-a-jpeg.png": ("Apple", "iPhone SE"),
    "edge/cmyk_sharp_Channel_digital_image_CMYK_color.jpg": ("Canon", "Canon EOS 300D DIGITAL"),
    "edge/heic_pp_iphone_7.heic": ("Apple", "iPhone 7"),
    # header-only DNG: decode_photo rejects it, its header EXIF is still readable
    "edge/raw_stripped_exiftool_DNG.dng": ("Canon", "Canon EOS 350D DIGITAL"),
}
UNDECODABLE = {"edge/raw_stripped_exiftool_DNG.dng"}
# Samples without EXIF metadata (Pillow: getexif() has no Make/Model/dates/Exif IFD; the two
# orientation samples hold only Orientation, which the decoder applies and drops).
NO_EXIF = [
    "edge/exif6_sharp_Landscape_6.jpg",
    "edge/exif8_sharp_Landscape_8.jpg",
    "photos/sklearn_china.jpg",
    "photos/sklearn_flower.jpg",
    "photos/mpl_grace_hopper.jpg",
    "photos/lomiri_seeding_Clemens_Engelhardt.jpg",
    "photos/lomiri_sunset_Aitzol_Berasategi.jpg",
    "photos/imageio_kodim03.png",
    "edge/png_rgba_vips.png",
    "edge/png_16bit_rgb_vips_sample.png",
    "edge/gif_photo_sharp_Crash_test.gif",
]
# Full expected metadata, each value checked against Pillow's raw tags of the file:
# DateTimeOriginal 0x9003, ExposureTime 0x829A, FNumber 0x829D, ISO 0x8827, FocalLength 0x920A,
# LensModel 0xA434, GPS (ref, (deg, min, sec)).
EXPECTED = {
    "photos/mei_Nikon_D90.jpg": {
        "taken_at": "2011-04-25T01:55:30",
        "camera_make": "NIKON CORPORATION",
        "camera_model": "NIKON D90",
        "focal_length_mm": 24.0,
        "aperture": 3.2,
        "exposure_s": 0.1,  # 1/10 s
        "iso": 250,
    },
    "photos/mei_Canon_EOS_5D.jpg": {
        "taken_at": "2005-09-25T00:31:00",
        "camera_make": "Canon",
        "camera_model": "Canon EOS 5D",
        "focal_length_mm": 105.0,
        "aperture": 5.0,
        "exposure_s": 0.00625,  # 1/160 s
        "iso": 160,
    },
    # GPS "S" (33, 27.2082, 0), "E" (25, 45.8787, 0): degrees and decimal minutes
    "photos/pp_elephants.jpg": {
        "taken_at": "2013-11-26T15:53:55",
        "camera_make": "Canon",
        "camera_model": "Canon EOS 6D",
        "lens": "EF70-200mm f/4L IS USM",
        "focal_length_mm": 111.0,
        "aperture": 10.0,
        "exposure_s": 0.0015625,
        "iso": 200,
        "gps_lat": -(33 + 27.2082 / 60),
        "gps_lon": 25 + 45.8787 / 60,
    },
    # HEIC through pillow_heif; GPS "N" (34, 47, 50.82), "E" (134, 45, 52.68)
    "edge/heic_pp_iphone_7.heic": {
        "taken_at": "2018-09-10T12:16:13",
        "camera_make": "Apple",
        "camera_model": "iPhone 7",
        "lens": "iPhone 7 back camera 3.99mm f/1.8",
        "focal_length_mm": 3.99,
        "aperture": 1.8,
        "exposure_s": 0.00025,
        "iso": 20,
        "gps_lat": 34 + 47 / 60 + 50.82 / 3600,
        "gps_lon": 134 + 45 / 60 + 52.68 / 3600,
    },
    # OffsetTime "+02:00" belongs to DateTime (0x0132), not to DateTimeOriginal: naive
    "raw/pp_canon_eos_6d_lossy.dng": {
        "taken_at": "2019-06-06T07:29:51",
        "camera_make": "Canon",
        "camera_model": "Canon EOS 6D",
        "lens": "EF24-105mm f/4L IS USM",
        "focal_length_mm": 65.0,
        "aperture": 5.6,
        "exposure_s": 1 / 60,
        "iso": 1000,
    },
    # Magic Lantern wrote every exposure field as 0 and the dates as NULs: all absent
    "raw/tinydng_colorchart_Canon550D_MagicLantern.dng": {
        "camera_make": "Canon",
        "camera_model": "Canon EOS Kiss X4",
    },
    # only IFD0 DateTime: the last fallback of taken_at
    "photos/pp_dog_orange.jpg": {"taken_at": "2019-05-04T06:01:12"},
}
CAMERA_FIELDS = ("camera_make", "camera_model", "lens", "focal_length_mm", "aperture", "iso")


@functools.cache
def manifest_cameras() -> dict[str, str]:
    """MANIFEST.tsv notes "... PIL <FORMAT> <MODE> EXIF <make> <model>" -> {file: make model}."""
    cameras = {}
    with open(SAMPLES / "MANIFEST.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            match = re.search(r"PIL \w+ \w+ EXIF (.+)$", row["notes (content; decode check)"])
            if match:
                cameras[row["file"]] = " ".join(match.group(1).split())
    return cameras


def sample_metadata(name: str) -> dict[str, Any]:
    """Metadata as the pipeline gets it (``decode_photo``), or from the RAW header for a file
    that does not decode."""
    if name in UNDECODABLE:
        with open(SAMPLES / name, "rb") as f:
            return photo_metadata(read_raw_exif(f))
    return decode_photo(SAMPLES / name).exif


def assert_json_ready(metadata: dict[str, Any]) -> None:
    for key, value in metadata.items():
        assert isinstance(key, str)
        assert type(value) in (str, int, float), (key, value)
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
    json.dumps(metadata, allow_nan=False).encode("utf-8")


def jpeg_with_exif(exif: Image.Exif | bytes, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(out, "JPEG", exif=exif)
    return out.getvalue()


# --- real files --------------------------------------------------------------------------------


@needs_samples
def test_manifest_cameras_are_all_covered() -> None:
    stated = manifest_cameras()
    assert len(stated) >= 8
    for name, text in stated.items():
        assert name in CAMERAS, name
        assert " ".join(CAMERAS[name]) == text


@needs_samples
@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_sample_camera_make_and_model(name: str) -> None:
    metadata = sample_metadata(name)
    assert (metadata.get("camera_make"), metadata.get("camera_model")) == CAMERAS[name]
    assert_json_ready(metadata)


@needs_samples
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_metadata_values(name: str) -> None:
    metadata = sample_metadata(name)
    expected = EXPECTED[name]
    assert sorted(metadata) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, float):
            assert metadata[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert metadata[key] == value, key
    if "taken_at" in metadata:
        datetime.fromisoformat(metadata["taken_at"])


@needs_samples
@pytest.mark.parametrize("name", ["photos/mei_Nikon_D90.jpg", "photos/mei_Canon_EOS_5D.jpg"])
def test_dslr_samples_have_plausible_exposure(name: str) -> None:
    metadata = decode_photo(SAMPLES / name).exif
    taken = datetime.fromisoformat(metadata["taken_at"])
    assert 2000 < taken.year < 2030
    assert 1 / 8000 <= metadata["exposure_s"] <= 30
    assert 1.0 <= metadata["aperture"] <= 32
    assert 50 <= metadata["iso"] <= 102_400
    assert 8 <= metadata["focal_length_mm"] <= 1200


@needs_samples
@pytest.mark.parametrize("name", NO_EXIF)
def test_samples_without_exif_have_no_camera_fields(name: str) -> None:
    metadata = decode_photo(SAMPLES / name).exif
    assert not set(CAMERA_FIELDS) & set(metadata)
    assert metadata == {}


@needs_samples
def test_every_decodable_sample_gives_json_ready_metadata() -> None:
    for path in sorted(SAMPLES.glob("*/*")):
        name = f"{path.parent.name}/{path.name}"
        try:
            metadata = decode_photo(path).exif
        except Exception:  # the failing edge files: covered by test_decode
            continue
        assert_json_ready(metadata)
        assert name in CAMERAS or name in NO_EXIF or name in EXPECTED, (name, metadata)


class CountingReader(io.RawIOBase):
    """A read-only file that counts the bytes read through it."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.data.seek(offset, whence)

    def tell(self) -> int:
        return self.data.tell()

    def readinto(self, buffer: Any) -> int:
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


@needs_samples
@pytest.mark.parametrize(
    "name", ["raw/tinydng_colorchart_Canon550D_MagicLantern.dng", "raw/pp_canon_eos_6d_lossy.dng"]
)
def test_raw_exif_reads_the_header_only_and_is_cheap(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    reader = CountingReader(data)
    metadata = photo_metadata(read_raw_exif(reader))  # type: ignore[arg-type]
    assert metadata["camera_model"] == CAMERAS[name][1]
    # IFD0 + Exif IFD (the 6D's holds a ~130 KB DNG private block), never the raster data
    assert reader.bytes_read < 300_000 < len(data)
    with open(SAMPLES / name, "rb") as f:
        start = time.perf_counter()
        for _ in range(10):
            photo_metadata(read_raw_exif(f))
        per_file = (time.perf_counter() - start) / 10
    assert per_file < 0.05  # measured 1-3 ms; the RAW decode itself takes 20-1000 ms


# --- generated files: parsing ------------------------------------------------------------------


def test_gps_south_west_and_offset_time_through_a_jpeg(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "  Maker\x00"
    exif[0x0110] = "Model 1"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2009:10:10 12:01:02"
    sub[0x9011] = "+02:00"
    sub[0x829A] = IFDRational(1, 250)
    sub[0x829D] = IFDRational(28, 10)
    sub[0x8827] = 400
    sub[0x920A] = IFDRational(35, 1)
    sub[0xA434] = "Lens 35mm F2.8"
    gps = exif.get_ifd(0x8825)
    gps[1] = "S"
    gps[2] = (IFDRational(33, 1), IFDRational(51, 1), IFDRational(3096, 100))
    gps[3] = "W"
    gps[4] = (IFDRational(70, 1), IFDRational(30, 1), IFDRational(0, 1))
    path = tmp_path / "gps.jpg"
    path.write_bytes(jpeg_with_exif(exif))

    metadata = decode_photo(path).exif
    assert metadata == {
        "taken_at": "2009-10-10T12:01:02+02:00",
        "camera_make": "Maker",
        "camera_model": "Model 1",
        "lens": "Lens 35mm F2.8",
        "focal_length_mm": 35.0,
        "aperture": 2.8,
        "exposure_s": 0.004,
        "iso": 400,
        "gps_lat": pytest.approx(-(33 + 51 / 60 + 30.96 / 3600), abs=1e-6),
        "gps_lon": pytest.approx(-70.5, abs=1e-6),
    }
    assert datetime.fromisoformat(metadata["taken_at"]).utcoffset().total_seconds() == 7200


def test_zero_denominators_and_placeholders_are_absent(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "0000:00:00 00:00:00"
    sub[0x9004] = "    :  :     :  :  "
    sub[0x829A] = IFDRational(1, 0)
    sub[0x829D] = IFDRational(0, 0)
    sub[0x920A] = IFDRational(0, 1)
    sub[0x8827] = 0
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (IFDRational(10, 0), IFDRational(0, 1), IFDRational(0, 1))
    gps[3] = "E"
    gps[4] = (IFDRational(10, 1), IFDRational(0, 1), IFDRational(0, 1))
    path = tmp_path / "zeros.jpg"
    path.write_bytes(jpeg_with_exif(exif))
    assert decode_photo(path).exif == {"camera_make": "Maker"}


def test_raw_zero_gps_is_absent() -> None:
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)})  # no fix written as 0, 0
    assert photo_metadata(exif) == {}


def test_garbage_types_omit_only_their_field() -> None:
    exif = Image.Exif()
    exif[0x010F] = b"Canon"  # bytes where text is expected
    exif[0x0110] = 12
    exif[0x0132] = "2001:02:03 04:05:06"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = ("2009:10:10 12:01:02",)
    sub[0x829A] = "1/250"
    sub[0x829D] = IFDRational(56, 10)
    sub[0x8827] = (200, 400)  # some cameras write two values: the first is the ISO
    sub[0x920A] = float("nan")
    sub[0xA434] = None
    gps = exif.get_ifd(0x8825)
    gps.update({1: "X", 2: (1.0, 2.0, 3.0), 3: b"E", 4: "12,3"})
    metadata = photo_metadata(exif)
    assert metadata == {"taken_at": "2001-02-03T04:05:06", "aperture": 5.6, "iso": 200}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({0x9003: "2009:10:10 12:01:02"}, "2009-10-10T12:01:02"),
        ({0x9003: "2009:10:10 12:01:02\x00"}, "2009-10-10T12:01:02"),
        ({0x9003: "2009:10:10 12:01:02.123"}, "2009-10-10T12:01:02"),  # sub-seconds ignored
        ({0x9003: "2009:10:10 12:01:02", 0x9011: "-05:30"}, "2009-10-10T12:01:02-05:30"),
        ({0x9003: "2009:10:10 12:01:02", 0x9011: "+0100"}, "2009-10-10T12:01:02+01:00"),
        ({0x9003: "2009:10:10 12:01:02", 0x9011: "Z"}, "2009-10-10T12:01:02+00:00"),
        ({0x9003: "2009:10:10 12:01:02", 0x9011: "   :  "}, "2009-10-10T12:01:02"),
        ({0x9003: "2009:10:10 12:01:02", 0x9011: "+25:00"}, "2009-10-10T12:01:02"),
        # OffsetTime is DateTime's offset: never lent to DateTimeOriginal
        ({0x9003: "2009:10:10 12:01:02", 0x9010: "+02:00"}, "2009-10-10T12:01:02"),
        ({0x0132: "2009:10:10 12:01:02", 0x9010: "+02:00"}, "2009-10-10T12:01:02+02:00"),
        ({0x9003: "2023-09-27T14:30:13+02:00"}, "2023-09-27T14:30:13+02:00"),  # ISO in the tag
        # invalid original -> digitized -> DateTime
        ({0x9003: "0000:00:00 00:00:00", 0x9004: "2010:01:01 00:00:00"}, "2010-01-01T00:00:00"),
        ({0x9003: "2009:13:10 12:01:02", 0x0132: "2011:01:01 10:00:00"}, "2011-01-01T10:00:00"),
        ({0x9003: "2009:02:30 12:01:02"}, None),
        ({0x9003: "2009:10:10 24:00:00"}, None),
        ({0x9003: "1000:01:01 00:00:00"}, None),
        ({0x9003: "2009:10:10"}, None),
        ({0x9003: "yesterday"}, None),
        ({0x9003: b"2009:10:10 12:01:02"}, None),
    ],
)
def test_taken_at(tags: dict[int, Any], expected: str | None) -> None:
    exif = Image.Exif()
    for tag, value in tags.items():
        if tag == 0x0132:
            exif[tag] = value
        else:
            exif.get_ifd(0x8769)[tag] = value
    assert photo_metadata(exif).get("taken_at") == expected


def test_exif_tags_in_ifd0_are_read_like_dng_allows() -> None:
    exif = Image.Exif()
    exif[0x829D] = IFDRational(4, 1)
    exif[0x9003] = "2020:05:06 07:08:09"
    assert photo_metadata(exif) == {"aperture": 4.0, "taken_at": "2020-05-06T07:08:09"}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({0xA434: "  EF50mm f/1.8 STM\x00"}, "EF50mm f/1.8 STM"),
        ({0xA433: "Canon", 0xA432: (24.0, 105.0, 4.0, 4.0)}, "Canon 24-105mm f/4"),
        ({0xA432: (18.0, 55.0, 3.5, 5.6)}, "18-55mm f/3.5-5.6"),
        ({0xA433: "Sigma", 0xA432: (35.0, 35.0, float("nan"), float("nan"))}, "Sigma 35mm"),
        ({0xA433: "Canon"}, None),  # a make alone names no lens
        ({0xA432: (0.0, 0.0, 0.0, 0.0)}, None),
    ],
)
def test_lens(tags: dict[int, Any], expected: str | None) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769).update(tags)
    assert photo_metadata(exif).get("lens") == expected


def test_utf8_text_is_decoded() -> None:
    exif = Image.Exif()
    exif[0x0110] = "Caméra Ø".encode().decode("latin-1")  # how Pillow reads UTF-8 bytes
    assert photo_metadata(exif) == {"camera_model": "Caméra Ø"}


def test_metadata_leaves_the_exif_unchanged() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    before = exif.tobytes()
    photo_metadata(exif)
    assert exif.tobytes() == before  # no empty Exif/GPS IFD added


# --- generated files: RAW containers and decode wiring ----------------------------------------


def tiff_bytes_with_make(make: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = make
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "TIFF", exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("magic", [b"II*\x00", b"IIRO", b"IIU\x00"])
def test_raw_exif_of_tiff_like_headers(magic: bytes) -> None:
    data = tiff_bytes_with_make("OM Digital")
    assert data[:4] == b"II*\x00"
    exif = read_raw_exif(io.BytesIO(magic + data[4:]))
    assert photo_metadata(exif) == {"camera_make": "OM Digital"}


def test_raw_exif_of_a_fujifilm_raf() -> None:
    exif = Image.Exif()
    exif[0x010F] = "FUJIFILM"
    exif[0x0110] = "X-T5"
    jpeg = jpeg_with_exif(exif)
    header = b"FUJIFILMCCD-RAW 0201FF129502X-T5".ljust(84, b"\x00")
    jpeg_offset = 148
    raf = header + struct.pack(">II", jpeg_offset, len(jpeg))
    raf = raf.ljust(jpeg_offset, b"\x00") + jpeg + b"\x00" * 64
    metadata = photo_metadata(read_raw_exif(io.BytesIO(raf)))
    assert metadata == {"camera_make": "FUJIFILM", "camera_model": "X-T5"}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"II*\x00",
        b"II*\x00\xff\xff\xff\x7f",
        b"MM\x00*\x00\x00\x00\x08\xff\xff",
        b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom",  # CR3: not supported, empty
        b"FUJIFILMCCD-RAW 0201".ljust(84, b"\x00") + struct.pack(">II", 10_000, 50),
        b"II\x1a\x00\x00\x00HEAPCCDR",  # Canon CRW (CIFF), not TIFF
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: "Corrupt EXIF data"
def test_raw_exif_of_unsupported_or_damaged_headers_is_empty(data: bytes) -> None:
    assert photo_metadata(read_raw_exif(io.BytesIO(data))) == {}


def test_broken_exif_sub_ifd_never_fails_the_decode(tmp_path: Path) -> None:
    # IFD0: Make "Abc" (inline), ExifIFD pointer far past the end of the block
    ifd0 = struct.pack("<H", 2)
    ifd0 += struct.pack("<HHI4s", 0x010F, 2, 4, b"Abc\x00")
    ifd0 += struct.pack("<HHII", 0x8769, 4, 1, 0x7FFF_FFF0)
    block = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + struct.pack("<I", 0)
    path = tmp_path / "broken.jpg"
    path.write_bytes(jpeg_with_exif(block))
    with pytest.warns(UserWarning):  # Pillow warns about the unreadable IFD, and goes on
        photo = decode_photo(path)
    assert photo.exif == {"camera_make": "Abc"}
    assert photo.image.size == (64, 48)


def test_failing_metadata_never_fails_the_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(exif: Image.Exif) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(decode_module, "photo_metadata", explode)
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_with_exif(Image.Exif()))
    photo = decode_photo(path)
    assert photo.exif == {}
    assert photo.width == 64


# --- property-based ------------------------------------------------------------------------------

_TAG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.from_regex(r"\d{4}[:-]\d{2}[:-]\d{2} \d{2}:\d{2}:\d{2}([+-]\d{2}:\d{2})?", fullmatch=True),
    st.sampled_from(["N", "S", "E", "W", "+02:00", "-13:45", "Z", "   :  "]),
    st.binary(max_size=16),
    st.builds(
        IFDRational,
        st.integers(min_value=-(2**31), max_value=2**32),
        st.integers(min_value=0, max_value=2**32),
    ),
    st.builds(Fraction, st.integers(-1000, 1000), st.integers(1, 1000)),
)
_VALUES = st.one_of(
    _TAG_VALUES,
    st.lists(_TAG_VALUES, max_size=4).map(tuple),
    st.lists(_TAG_VALUES, max_size=4),
    st.dictionaries(st.integers(0, 5), _TAG_VALUES, max_size=2),
)
_IFD0_TAGS = [0x010F, 0x0110, 0x0132, 0x829A, 0x829D, 0x9003, 0x8769, 0x8825]
_EXIF_TAGS = [0x829A, 0x829D, 0x8827, 0x9003, 0x9004, 0x9010, 0x9011, 0x9012, 0x920A]
_EXIF_TAGS += [0xA432, 0xA433, 0xA434]
_GPS_TAGS = [1, 2, 3, 4]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ifd0=st.dictionaries(st.sampled_from(_IFD0_TAGS), _VALUES, max_size=6),
    exif_ifd=st.dictionaries(st.sampled_from(_EXIF_TAGS), _VALUES, max_size=8),
    gps_ifd=st.dictionaries(st.sampled_from(_GPS_TAGS), _VALUES, max_size=4),
)
def test_random_tag_values_never_raise(
    ifd0: dict[int, Any], exif_ifd: dict[int, Any], gps_ifd: dict[int, Any]
) -> None:
    exif = Image.Exif()
    for tag, value in ifd0.items():
        exif[tag] = value
    if exif_ifd and 0x8769 not in ifd0:
        exif.get_ifd(0x8769).update(exif_ifd)
    if gps_ifd and 0x8825 not in ifd0:
        exif.get_ifd(0x8825).update(gps_ifd)
    metadata = photo_metadata(exif)
    assert_json_ready(metadata)
    if "taken_at" in metadata:
        datetime.fromisoformat(metadata["taken_at"])
    assert ("gps_lat" in metadata) == ("gps_lon" in metadata)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.sampled_from([b"II*\x00\x08\x00\x00\x00", b"MM\x00*\x00\x00\x00\x08", b"IIRO"]),
    body=st.binary(max_size=512),
)
def test_random_raw_headers_never_raise(head: bytes, body: bytes) -> None:
    metadata = photo_metadata(read_raw_exif(io.BytesIO(head + body)))
    assert_json_ready(metadata)
    exif = Image.Exif()
    try:
        exif.load(b"Exif\x00\x00" + head + body)  # the JPEG path: Pillow parses IFD0 eagerly
    except Exception:
        return
    assert_json_ready(photo_metadata(exif))
