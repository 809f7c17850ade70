"""Real decoding behaviour of vibe_assets.imaging.{formats,decode} on real and generated files."""

from __future__ import annotations

import csv
import errno
import functools
import io
import os
import random
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, JpegImagePlugin, TiffImagePlugin, TiffTags

from vibe_assets.imaging import decode as decode_module
from vibe_assets.imaging.decode import (
    MAX_PIXELS,
    DecodedPhoto,
    decode_photo,
    encode_preview,
    encode_thumbnail,
)
from vibe_assets.imaging.errors import ErrorCode, PhotoError
from vibe_assets.imaging.formats import (
    HEAD_BYTES,
    IMAGE_EXTENSIONS,
    is_candidate,
    read_bmff_layout,
    read_head,
    read_tiff_rasters,
    sniff_format,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason="sample files not present (../shared/samples)"
)

# samples/README.md: edge files that must be ingested -> (sniffed format, upright width, height).
EDGE_INGESTED = {
    "wrong-ext_jpeg_pp_this-is-a-jpeg.png": ("jpeg", 240, 180),
    "gif_photo_sharp_Crash_test.gif": ("gif", 800, 533),
    # stored 4032x3024 with EXIF Orientation 6 and no irot box: upright it is a portrait
    "heic_pp_iphone_7.heic": ("heif", 3024, 4032),
    "png_rgba_vips.png": ("png", 128, 128),
    "png_16bit_rgb_vips_sample.png": ("png", 290, 442),
    "cmyk_sharp_Channel_digital_image_CMYK_color.jpg": ("jpeg", 500, 333),
    # stored 450x600 with Orientation 6 / 8: upright they are landscape
    "exif6_sharp_Landscape_6.jpg": ("jpeg", 600, 450),
    "exif8_sharp_Landscape_8.jpg": ("jpeg", 600, 450),
}
# samples/README.md: edge files that must fail -> their code.
EDGE_FAILED = {
    "truncated_sharp.jpg": ErrorCode.ERR_TRUNCATED_IMAGE,
    "corrupt-header_sharp.jpg": ErrorCode.ERR_DECODE_IMAGE,
    "empty_pp.jpg": ErrorCode.ERR_EMPTY_FILE,
    "not-image_text.jpg": ErrorCode.ERR_NOT_AN_IMAGE,
    "raw_truncated_filetype_Leica-M10.dng": ErrorCode.ERR_DECODE_RAW,
    "raw_stripped_exiftool_DNG.dng": ErrorCode.ERR_DECODE_RAW,
}
PHOTOS = [
    "sklearn_china.jpg",
    "sklearn_flower.jpg",
    "mpl_grace_hopper.jpg",
    "lomiri_seeding_Clemens_Engelhardt.jpg",
    "lomiri_sunset_Aitzol_Berasategi.jpg",
    "mei_Nikon_D90.jpg",
    "mei_Canon_EOS_5D.jpg",
    "immich_prairie_falcon.jpg",
    "pp_elephants.jpg",
    "pp_dog_orange.jpg",
    "imageio_kodim03.png",
]
RAWS = {
    "pp_canon_eos_6d_lossy.dng": "raw-embedded-preview",
    "tinydng_colorchart_Canon550D_MagicLantern.dng": "raw-half-size",
}
DNG_6D = SAMPLES / "raw" / "pp_canon_eos_6d_lossy.dng"
DNG_550D = SAMPLES / "raw" / "tinydng_colorchart_Canon550D_MagicLantern.dng"
CMYK_SAMPLE = SAMPLES / "edge" / "cmyk_sharp_Channel_digital_image_CMYK_color.jpg"


@functools.cache
def manifest_sizes() -> dict[str, tuple[int, int]]:
    """MANIFEST.tsv: relative path -> (width, height) as stored in the file."""
    sizes = {}
    with open(SAMPLES / "MANIFEST.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if "x" in row["width x height"]:
                w, h = row["width x height"].split("x")
                sizes[row["file"]] = (int(w), int(h))
    return sizes


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return float(np.abs(pixels(a) - pixels(b)).mean())


def assert_error(path: Path | str, code: ErrorCode, **kwargs: object) -> PhotoError:
    with pytest.raises(PhotoError) as info:
        decode_photo(path, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


def assert_valid(photo: DecodedPhoto, preview_size: int = 512) -> None:
    assert photo.image.mode == "RGB"
    assert max(photo.image.size) <= preview_size
    assert max(photo.image.size) == min(preview_size, max(photo.width, photo.height))
    assert photo.width > 0 and photo.height > 0


# --- the sample files ------------------------------------------------------------------------


@needs_samples
def test_every_sample_file_has_an_expectation() -> None:
    assert sorted(p.name for p in (SAMPLES / "edge").iterdir()) == sorted(
        [*EDGE_INGESTED, *EDGE_FAILED]
    )
    assert sorted(p.name for p in (SAMPLES / "photos").iterdir()) == sorted(PHOTOS)
    assert sorted(p.name for p in (SAMPLES / "raw").iterdir()) == sorted(RAWS)


@needs_samples
@pytest.mark.parametrize("name", sorted(EDGE_INGESTED))
def test_edge_file_is_ingested(name: str) -> None:
    fmt, width, height = EDGE_INGESTED[name]
    photo = decode_photo(SAMPLES / "edge" / name)
    assert (photo.format, photo.width, photo.height) == (fmt, width, height)
    assert_valid(photo)
    # the preview keeps the upright aspect ratio
    assert photo.image.width / photo.image.height == pytest.approx(width / height, rel=0.01)


@needs_samples
@pytest.mark.parametrize("name", sorted(EDGE_FAILED))
def test_edge_file_fails_with_its_code(name: str) -> None:
    assert_error(SAMPLES / "edge" / name, EDGE_FAILED[name])


@needs_samples
def test_wrong_extension_is_sniffed_from_content() -> None:
    path = SAMPLES / "edge" / "wrong-ext_jpeg_pp_this-is-a-jpeg.png"
    assert sniff_format(read_head(path), path) == "jpeg"


@needs_samples
def test_exif_rotated_samples_are_upright_and_agree() -> None:
    # Landscape_6 and Landscape_8 are the same landscape photo stored rotated both ways; upright
    # they differ only by the digit drawn on them.
    six = decode_photo(SAMPLES / "edge" / "exif6_sharp_Landscape_6.jpg").image
    eight = decode_photo(SAMPLES / "edge" / "exif8_sharp_Landscape_8.jpg").image
    assert six.size == eight.size == (512, 384)
    assert mean_abs_diff(six, eight) < 10
    assert mean_abs_diff(six, eight.transpose(Image.Transpose.ROTATE_180)) > 30
    # the bright sky is at the top of the upright picture
    assert pixels(six)[:40].mean() > pixels(six)[-40:].mean() + 30


@needs_samples
def test_rgba_sample_is_flattened_onto_white() -> None:
    path = SAMPLES / "edge" / "png_rgba_vips.png"
    alpha = np.asarray(Image.open(path))[..., 3]
    preview = np.asarray(decode_photo(path).image)
    assert (alpha == 0).any()
    assert (preview[alpha == 0] == 255).all()


@needs_samples
def test_cmyk_sample_is_converted_with_its_profile() -> None:
    preview = pixels(decode_photo(CMYK_SAMPLE).image)
    _red, green, blue = preview.reshape(-1, 3).mean(axis=0)
    assert 60 < preview.mean() < 200  # not inverted, not black
    assert green > blue  # a park with green grass


@needs_samples
def test_16bit_rgb_sample_is_not_clipped() -> None:
    preview = pixels(decode_photo(SAMPLES / "edge" / "png_16bit_rgb_vips_sample.png").image)
    assert preview.std() > 20
    assert 40 < preview.mean() < 215


@needs_samples
def test_heic_sample_uses_pillow_heif() -> None:
    photo = decode_photo(SAMPLES / "edge" / "heic_pp_iphone_7.heic")
    assert photo.decoder == "heif"
    assert photo.image.size == (384, 512)
    # Himeji castle under a blue sky: upright, the sky (blue) is at the top
    top, bottom = pixels(photo.image)[:100], pixels(photo.image)[-100:]
    assert top[..., 2].mean() > top[..., 0].mean() + 30
    assert top.mean() > bottom.mean() + 30


@needs_samples
def test_truncated_heic_sample(tmp_path: Path) -> None:
    # libheif renders the missing tiles of a cut HEIC as flat green, without an error
    data = (SAMPLES / "edge" / "heic_pp_iphone_7.heic").read_bytes()
    for fraction in (0.003, 0.5, 0.999):
        cut = tmp_path / f"cut{fraction}.heic"
        cut.write_bytes(data[: int(len(data) * fraction)])
        assert_error(cut, ErrorCode.ERR_TRUNCATED_IMAGE)


@needs_samples
def test_stripped_dng_is_rejected_before_libraw_reads_garbage() -> None:
    error = assert_error(
        SAMPLES / "edge" / "raw_stripped_exiftool_DNG.dng", ErrorCode.ERR_DECODE_RAW
    )
    assert "header-only" in error.detail


@needs_samples
def test_stripped_dng_blank_frame_check_in_a_fresh_process() -> None:
    # With the byte-count check disabled, a fresh process's LibRaw decodes the stripped DNG to an
    # (almost) all-black frame without raising; the blank-frame check must reject it.
    code = (
        "import sys\n"
        "from vibe_assets.imaging import decode as d\n"
        "d.MIN_RAW_BYTES_PER_MEGAPIXEL = 0\n"
        "try:\n"
        "    d.decode_photo(sys.argv[1])\n"
        "except d.PhotoError as e:\n"
        "    print(e.code.value, e.detail)\n"
    )
    path = SAMPLES / "edge" / "raw_stripped_exiftool_DNG.dng"
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert result.stdout.strip() == "ERR_DECODE_RAW decoded to a blank frame"


@needs_samples
@pytest.mark.parametrize("name", PHOTOS)
def test_sample_photo_decodes(name: str) -> None:
    width, height = manifest_sizes()[f"photos/{name}"]  # all are stored upright (orientation 1)
    photo = decode_photo(SAMPLES / "photos" / name)
    assert (photo.width, photo.height) == (width, height)
    assert photo.format == ("png" if name.endswith(".png") else "jpeg")
    assert_valid(photo)
    assert (photo.image.width > photo.image.height) == (width > height)
    # reduced-scale JPEG decoding whenever the file is at least twice the preview size
    drafted = photo.format == "jpeg" and max(width, height) >= 1024
    assert photo.decoder in ({"pillow-draft", "pillow-draft-dc"} if drafted else {"pillow"})
    with Image.open(SAMPLES / "photos" / name) as im:  # DC scans only: progressive, 1/8 scale
        dc_only = bool(im.info.get("progressive")) and max(width, height) >= 8 * 512
    assert (photo.decoder == "pillow-draft-dc") == dc_only


@needs_samples
@pytest.mark.parametrize("name", sorted(RAWS))
def test_sample_raw_decodes(name: str) -> None:
    width, height = manifest_sizes()[f"raw/{name}"]
    photo = decode_photo(SAMPLES / "raw" / name)
    assert (photo.width, photo.height, photo.format) == (width, height, "raw")
    assert photo.decoder == RAWS[name]
    assert_valid(photo)
    assert pixels(photo.image).std() > 10


def _dng_with_orientation(source: Path, orientation: int, target: Path) -> Path:
    """Copy a little-endian DNG with IFD0's Orientation (274) rewritten; LibRaw's flip follows."""
    data = bytearray(source.read_bytes())
    (ifd0,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd0 : ifd0 + 2])
    for i in range(count):
        entry = ifd0 + 2 + 12 * i
        if struct.unpack("<H", data[entry : entry + 2])[0] == 274:
            data[entry + 8 : entry + 10] = struct.pack("<H", orientation)
            target.write_bytes(bytes(data))
            return target
    raise AssertionError("no Orientation tag in IFD0")


@needs_samples
@pytest.mark.parametrize("source", [DNG_6D, DNG_550D], ids=["embedded-preview", "half-size"])
@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
    ],
    ids=["orientation3", "orientation6", "orientation8"],
)
def test_raw_orientation_is_applied(
    tmp_path: Path, source: Path, orientation: int, upright: Image.Transpose
) -> None:
    base = decode_photo(source)
    rotated = decode_photo(_dng_with_orientation(source, orientation, tmp_path / "r.dng"))
    assert rotated.decoder == base.decoder
    if orientation == 3:
        assert (rotated.width, rotated.height) == (base.width, base.height)
    else:
        assert (rotated.width, rotated.height) == (base.height, base.width)
    expected = base.image.transpose(upright)
    assert mean_abs_diff(rotated.image, expected) < 6
    assert mean_abs_diff(rotated.image, expected.transpose(Image.Transpose.ROTATE_180)) > 10


@needs_samples
def test_raw_pixel_cap_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "MAX_PIXELS", 1734 * 1156 - 1)
    assert_error(DNG_550D, ErrorCode.ERR_IMAGE_TOO_LARGE)


@needs_samples
def test_dng_with_another_extension_is_raw(tmp_path: Path) -> None:
    copy = tmp_path / "scan.tif"
    copy.write_bytes(DNG_6D.read_bytes())
    assert sniff_format(read_head(copy), copy) == "raw"
    assert sniff_format(read_head(copy)) == "tiff"  # without the path: cannot look inside
    assert decode_photo(copy).decoder == "raw-embedded-preview"


@needs_samples
def test_tiff_rasters_of_a_real_dng() -> None:
    rasters = read_tiff_rasters(DNG_6D)
    full = [r for r in rasters if r.subfile_type == 0]
    assert [(r.width, r.height) for r in full] == [(1224, 816)]
    assert max(r.data_end for r in rasters) <= DNG_6D.stat().st_size


# --- generated files -------------------------------------------------------------------------


def save(image: Image.Image, path: Path, fmt: str, **params: object) -> Path:
    image.save(path, fmt, **params)
    return path


def test_cmyk_jpeg_without_profile(tmp_path: Path) -> None:
    source = Image.new("RGB", (64, 48), (200, 80, 40))
    path = save(source.convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    photo = decode_photo(path)
    assert photo.image.mode == "RGB"
    assert mean_abs_diff(photo.image, source) < 6


@needs_samples
def test_cmyk_jpeg_with_icc_profile(tmp_path: Path) -> None:
    icc = Image.open(CMYK_SAMPLE).info["icc_profile"]  # U.S. Web Coated (SWOP) v2
    swop = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    srgb = ImageCms.createProfile("sRGB")
    # in-gamut colours: a muted orange, a sky blue, a grass green
    source = Image.new("RGB", (96, 32))
    for i, colour in enumerate([(200, 120, 80), (110, 150, 200), (90, 150, 70)]):
        source.paste(colour, (32 * i, 0, 32 * i + 32, 32))
    cmyk = ImageCms.profileToProfile(source, srgb, swop, outputMode="CMYK")
    path = save(cmyk, tmp_path / "icc.jpg", "JPEG", quality=95, icc_profile=icc)
    managed = decode_photo(path).image
    naive = Image.open(path).convert("RGB")
    assert mean_abs_diff(managed, source) < 8
    assert mean_abs_diff(managed, source) < mean_abs_diff(naive, source) / 2


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    ramp = np.tile((np.arange(256, dtype=np.uint32) * 257).astype(np.uint16), (8, 1))
    ramp[:, 128] = 32768
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    photo = decode_photo(save(image, tmp_path / f"gray16.{fmt.lower()}", fmt))
    row = np.asarray(photo.image)[4, :, 0]
    assert row[0] == 0 and row[255] == 255
    assert row[128] == 128  # 32768 / 65535 * 255 = 127.5
    assert row[64] == 64
    assert (np.diff(row.astype(int)) >= 0).all()


def test_rgba_and_la_are_flattened_onto_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 0, 128), (20, 0, 40, 20))  # half-transparent black
    out = np.asarray(decode_photo(save(rgba, tmp_path / "a.png", "PNG")).image).astype(int)
    assert (out[:, :20] == 255).all()
    assert np.abs(out[:, 20:] - 127).max() <= 2
    la = Image.new("LA", (10, 10), (0, 0))
    out = np.asarray(decode_photo(save(la, tmp_path / "la.png", "PNG")).image)
    assert (out == 255).all()


def test_palette_with_transparency_and_first_gif_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in [(0, 0, 255), (255, 0, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = np.asarray(decode_photo(path).image).astype(int)
    assert np.abs(out - [0, 0, 255]).max() <= 2  # the first frame, blue
    palette = Image.new("P", (10, 10), 3)
    palette.putpalette([255, 0, 0] * 256)  # every entry red; entry 3 is transparent
    out = np.asarray(decode_photo(save(palette, tmp_path / "t.png", "PNG", transparency=3)).image)
    assert (out == 255).all()


# Where the stored picture's top-left (red) and top-right (green) corners must appear once the
# EXIF orientation is applied (EXIF 2.32, Orientation: 0th row / 0th column meaning).
ORIENTATIONS = {
    1: ("TL", "TR"),
    2: ("TR", "TL"),
    3: ("BR", "BL"),
    4: ("BL", "BR"),
    5: ("TL", "BL"),
    6: ("TR", "BR"),
    7: ("BR", "TR"),
    8: ("BL", "TL"),
}


def corner_colour(image: Image.Image, corner: str) -> np.ndarray:
    a = pixels(image)
    rows = slice(0, 20) if corner[0] == "T" else slice(-20, None)
    cols = slice(0, 20) if corner[1] == "L" else slice(-20, None)
    return a[rows, cols].reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    stored = Image.new("RGB", (1200, 800), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 200, 200))
    stored.paste((0, 255, 0), (1000, 0, 1200, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(stored, tmp_path / f"o{orientation}.jpg", "JPEG", quality=95, exif=exif)
    photo = decode_photo(path)
    portrait = orientation >= 5
    assert (photo.width, photo.height) == ((800, 1200) if portrait else (1200, 800))
    assert photo.image.size == ((341, 512) if portrait else (512, 341))
    assert photo.decoder == "pillow-draft"
    red_corner, green_corner = ORIENTATIONS[orientation]
    assert np.abs(corner_colour(photo.image, red_corner) - [255, 0, 0]).max() < 25
    assert np.abs(corner_colour(photo.image, green_corner) - [0, 255, 0]).max() < 25


def test_draft_request_is_proportional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 16:9 at 4096 px: a (512, 288) request allows the 1/8 DCT scale; (512, 512) only 1/4.
    path = save(Image.new("RGB", (4096, 2304), (90, 60, 30)), tmp_path / "wide.jpg", "JPEG")
    real_draft = JpegImagePlugin.JpegImageFile.draft
    calls = []

    def recording_draft(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        result = real_draft(self, mode, size)
        calls.append((size, self.size))  # (requested, decoded) sizes
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    photo = decode_photo(path)
    assert calls == [((512, 288), (512, 288))]
    assert (photo.decoder, photo.image.size) == ("pillow-draft", (512, 288))


def test_truncated_jpeg(tmp_path: Path) -> None:
    noise = np.random.default_rng(2).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    data = (save(Image.fromarray(noise), tmp_path / "full.jpg", "JPEG")).read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(data[: len(data) // 2])
    assert_error(half, ErrorCode.ERR_TRUNCATED_IMAGE)


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "random.jpg"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert sniff_format(read_head(path), path) is None
    assert_error(path, ErrorCode.ERR_NOT_AN_IMAGE)


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    assert_error(path, ErrorCode.ERR_EMPTY_FILE)


def test_vanished_file(tmp_path: Path) -> None:
    assert_error(tmp_path / "gone.jpg", ErrorCode.ERR_FILE_VANISHED)
    assert_error(tmp_path / "no-dir" / "gone.jpg", ErrorCode.ERR_FILE_VANISHED)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores mode bits")
def test_unreadable_file(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (8, 8)), tmp_path / "locked.png", "PNG")
    path.chmod(0)
    try:
        assert_error(path, ErrorCode.ERR_PERMISSION_DENIED)
    finally:
        path.chmod(0o600)


def test_permission_error_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(decode_module, "open", denied, raising=False)
    assert_error(tmp_path / "x.jpg", ErrorCode.ERR_PERMISSION_DENIED)


def test_directory_is_a_read_failure(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    assert_error(tmp_path / "folder.jpg", ErrorCode.ERR_READ_FAILED)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_pixel_bomb_header(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + _png_chunk(b"IEND", b"")
    )
    assert MAX_PIXELS < 30000 * 30000
    assert_error(path, ErrorCode.ERR_IMAGE_TOO_LARGE)


def test_pixel_cap_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(Image.new("RGB", (100, 100)), tmp_path / "small.png", "PNG")
    monkeypatch.setattr(decode_module, "MAX_PIXELS", 100 * 100 - 1)
    assert_error(path, ErrorCode.ERR_IMAGE_TOO_LARGE)


def test_avif_goes_through_pillow(tmp_path: Path) -> None:
    if "AVIF" not in Image.SAVE:
        pytest.skip("Pillow built without AVIF")
    source = Image.new("RGB", (640, 480), (30, 160, 90))
    photo = decode_photo(save(source, tmp_path / "x.avif", "AVIF", quality=90))
    assert (photo.format, photo.width, photo.height) == ("heif", 640, 480)
    assert photo.image.size == (512, 384)
    assert np.abs(pixels(photo.image).mean(axis=(0, 1)) - [30, 160, 90]).max() < 8


def test_heif_with_exif_orientation(tmp_path: Path) -> None:
    stored = Image.new("RGB", (600, 400), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "o6.heic"
    pillow_heif.register_heif_opener()
    stored.save(path, "HEIF", exif=exif, quality=90)
    photo = decode_photo(path)
    assert (photo.format, photo.decoder, photo.width, photo.height) == ("heif", "heif", 400, 600)
    assert photo.image.size == (341, 512)
    assert np.abs(corner_colour(photo.image, "TR") - [255, 0, 0]).max() < 25


def test_truncated_heif(tmp_path: Path) -> None:
    noise = np.random.default_rng(3).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    pillow_heif.register_heif_opener()
    data = save(Image.fromarray(noise), tmp_path / "full.heic", "HEIF", quality=90).read_bytes()
    assert decode_photo(tmp_path / "full.heic").image.size == (256, 256)
    (tmp_path / "half.heic").write_bytes(data[: len(data) // 2])
    assert_error(tmp_path / "half.heic", ErrorCode.ERR_TRUNCATED_IMAGE)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def test_bmff_layout_finds_transforms_and_truncation(tmp_path: Path) -> None:
    ipco = _box(b"ipco", _box(b"ispe", bytes(12)) + _box(b"irot", b"\x01"))
    meta = _box(b"meta", bytes(4) + _box(b"hdlr", bytes(24)) + _box(b"iprp", ipco))
    ftyp = _box(b"ftyp", b"heic" + bytes(4) + b"mif1heic")
    path = tmp_path / "x.heic"
    path.write_bytes(ftyp + meta + _box(b"mdat", bytes(100)))
    layout = read_bmff_layout(path)
    assert layout.transforms == {"irot"}
    assert layout.data_end == path.stat().st_size
    path.write_bytes(ftyp + meta + _box(b"mdat", bytes(100))[:50])
    assert read_bmff_layout(path).data_end == path.stat().st_size + 58
    path.write_bytes(b"II*\x00" + bytes(60))
    assert read_bmff_layout(path).data_end == 0


def test_tga_is_decoded_by_extension_only(tmp_path: Path) -> None:
    source = Image.new("RGB", (20, 10), (10, 20, 30))
    tga = save(source, tmp_path / "x.tga", "TGA")
    photo = decode_photo(tga)
    assert (photo.format, photo.width, photo.height) == ("tga", 20, 10)
    renamed = tmp_path / "x.jpg"
    renamed.write_bytes(tga.read_bytes())
    assert_error(renamed, ErrorCode.ERR_NOT_AN_IMAGE)


def test_heif_opener_is_registered_lazily() -> None:
    code = (
        "from PIL import Image\n"
        "import vibe_assets.imaging.decode\n"
        "Image.init()\n"
        "print('HEIF' in Image.OPEN)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert result.stdout.strip() == "False"


def test_encode_preview_and_thumbnail() -> None:
    preview = Image.new("RGB", (512, 288), (250, 10, 10))
    jpeg = Image.open(io.BytesIO(encode_preview(preview)))
    assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (512, 288))
    thumb = Image.open(io.BytesIO(encode_thumbnail(preview)))
    assert (thumb.format, thumb.size) == ("JPEG", (256, 144))
    assert Image.open(io.BytesIO(encode_thumbnail(preview, size=64))).size == (64, 36)
    assert preview.size == (512, 288)  # the input is not modified


# --- arbitrary bytes: PhotoError or a valid result, nothing else -----------------------------

MAGICS = [
    b"",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"II*\x00\x08\x00\x00\x00",
    b"MM\x00*\x00\x00\x00\x08",
    b"GIF89a",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    b"FUJIFILMCCD-RAW ",
]


@pytest.mark.filterwarnings("ignore")
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    magic=st.sampled_from(MAGICS),
    body=st.binary(max_size=1024),
    name=st.sampled_from(["x.jpg", "x.png", "x.dng", "x.tif", "x.tga", "x.bin"]),
)
def test_arbitrary_bytes_never_escape_as_other_errors(magic: bytes, body: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(magic + body)
        try:
            photo = decode_photo(path, preview_size=64)
        except PhotoError as error:
            assert isinstance(error.code, ErrorCode)
            return
        assert_valid(photo, preview_size=64)


@pytest.mark.parametrize("name", ["x.jpg", "x.tif", "x.dng"])
@pytest.mark.parametrize("data", [b"MM\x00*", b"II*\x00\x08\x00"])
def test_tiff_header_cut_before_its_ifd_offset_is_a_photo_error(
    tmp_path: Path, name: str, data: bytes
) -> None:
    """Found by the fuzz test above: a 4-6 byte TIFF header raised struct.error."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(PhotoError) as info:
        decode_photo(path)
    assert isinstance(info.value.code, ErrorCode)


# --- sniffing and candidates -----------------------------------------------------------------


def _tiff_with_dng_version(path: Path) -> Path:
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[50706] = b"\x01\x04\x00\x00"
    ifd.tagtype[50706] = TiffTags.BYTE
    Image.new("RGB", (4, 4)).save(path, "TIFF", tiffinfo=ifd)
    return path


@pytest.mark.parametrize(
    ("head", "path", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", None, "jpeg"),
        (b"\xff\xd8\xff\xe1\x00\x10Exif", "x.png", "jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", None, "png"),
        (b"GIF87a\x10\x00", None, "gif"),
        (b"GIF89a\x10\x00", None, "gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", None, "webp"),
        (b"BM" + bytes(12) + struct.pack("<I", 40), None, "bmp"),
        (b"BMW owners club newsletter\n", None, None),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", None, "heif"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1heichevc", None, "heif"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", None, "heif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None, None),  # MP4 video
        (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom", None, "raw"),  # CR3
        (b"II*\x00\x10\x00\x00\x00CR\x02\x00", None, "raw"),  # CR2
        (b"FUJIFILMCCD-RAW 0201", None, "raw"),
        (b"IIRO\x08\x00\x00\x00", None, "raw"),
        (b"IIRS\x08\x00\x00\x00", None, "raw"),
        (b"MMOR\x00\x00\x00\x08", None, "raw"),
        (b"IIU\x00\x08\x00\x00\x00", None, "raw"),  # RW2
        (b"\x00MRM\x00\x00", None, "raw"),
        (b"FOVb\x00\x00", None, "raw"),
        (b"II\x1a\x00\x00\x00HEAPCCDR", None, "raw"),  # CRW
        (b"II*\x00\x08\x00\x00\x00", "DSC_0001.NEF", "raw"),
        (b"MM\x00*\x00\x00\x00\x08", "IMG_0001.dng", "raw"),
        (b"II*\x00\x08\x00\x00\x00", "_DSC0001.arw", "raw"),
        (b"II*\x00\x08\x00\x00\x00", None, "tiff"),
        (b"II+\x00\x08\x00\x00\x00", None, "tiff"),  # BigTIFF
        (b"This is a plain text file", None, None),
        (b"", None, None),
        (b"\xff\xd8", None, None),
    ],
)
def test_sniff_format(head: bytes, path: str | None, expected: str | None) -> None:
    assert sniff_format(head, path) == expected


def test_sniff_plain_tiff_and_tiff_with_dng_version(tmp_path: Path) -> None:
    plain = save(Image.new("RGB", (4, 4)), tmp_path / "plain.tif", "TIFF")
    dng = _tiff_with_dng_version(tmp_path / "dng-inside.tif")
    assert sniff_format(read_head(plain), plain) == "tiff"
    assert sniff_format(read_head(dng), dng) == "raw"
    assert len(read_head(dng)) == HEAD_BYTES


@pytest.mark.parametrize(
    ("name", "head", "fmt", "expected"),
    [
        ("IMG_0001.JPG", b"This is a plain text file", None, True),  # fails later, reported
        ("README.txt", b"This is a plain text file", None, False),
        ("notes.txt", b"\xff\xd8\xff\xe0", "jpeg", True),  # content wins
        ("no-extension", b"\x89PNG\r\n\x1a\n", None, True),  # re-sniffed from head
        ("DSC_0001.nef", b"II*\x00", "raw", True),
        ("scan.tga", b"\x00\x00\x02", None, True),
        ("empty.jpg", b"", None, True),  # reported as ERR_EMPTY_FILE
        ("data.bin", b"\x00\x01\x02", None, False),
        ("._IMG_0001.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X", None, False),
    ],
)
def test_is_candidate(name: str, head: bytes, fmt: str | None, expected: bool) -> None:
    assert is_candidate(name, head, fmt) is expected


def test_image_extensions_are_lowercase_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".heic", ".dng", ".nef", ".cr3", ".arw"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)
