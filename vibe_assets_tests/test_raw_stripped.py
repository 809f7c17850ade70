"""Header-only and data-stripped RAW files of maker formats (not DNG) fail with ``ERR_DECODE_RAW``.

LibRaw trusts the sensor size a RAW's header declares: a file whose raw data is missing opens
without error and hands out its embedded preview, which the decoder used to ingest as the photo.
Every file here is generated at test time (no third-party file is shipped): a minimal container in
the maker's layout with its Make/Model, the sensor geometry of a real camera, a real 1024 px JPEG
preview (long enough for the embedded-preview path) and raw data that is

- ``header-only``: declared at full size, none of it in the file (the file ends where it starts);
- ``stripped``: a 64 KiB stub, with the tags rewritten to match (every offset and count in the file
  is consistent, so no structural truncation check can see it);
- ``complete``: present at full size (the positive control).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rawpy
from PIL import Image

from vibe_assets.imaging import decode as decode_module
from vibe_assets.imaging.decode import (
    MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL,
    MIN_RAW_BYTES_PER_MEGAPIXEL,
    PREVIEW_SIZE,
    decode_photo,
)
from vibe_assets.imaging.errors import ErrorCode, PhotoError
from vibe_assets.imaging.formats import read_head, sniff_format
from vibe_assets_tests.conftest import SAMPLES, needs_samples

STUB_BYTES = 64 << 10
"""Raw data left in a data-stripped file, in bytes."""
PREVIEW_WIDTH, PREVIEW_HEIGHT = 1024, 683
"""The embedded JPEG preview, in pixels: longer than PREVIEW_SIZE, so it would be used."""

# --- a minimal little-endian TIFF writer ---------------------------------------------------------

_BYTE, _ASCII, _SHORT, _LONG, _UNDEFINED = 1, 2, 3, 4, 7
_PACK = {_BYTE: "B", _ASCII: "B", _SHORT: "H", _LONG: "I", _UNDEFINED: "B"}
Value = list[int] | bytes | str  # a str names a blob: the entry holds that blob's offset
Entries = dict[int, tuple[int, Value]]


@dataclass
class _Ifd:
    entries: Entries
    sub_ifds: list[_Ifd] | None = None
    next: _Ifd | None = None


def _text(value: str) -> tuple[int, Value]:
    return _ASCII, value.encode() + b"\x00"


def _tiff(
    ifd0: _Ifd, blobs: dict[str, bytes], magic: bytes = b"II*\x00", extra: bytes = b""
) -> bytes:
    """``magic``, IFD0's offset, ``extra`` header bytes, every IFD (IFD0 chain and SubIFDs) with
    its out-of-line values, then ``blobs`` in order (a blob's tags may declare more bytes than it
    has: the file simply ends)."""
    ifds: list[_Ifd] = []

    def walk(ifd: _Ifd) -> None:
        ifds.append(ifd)
        for sub in ifd.sub_ifds or ():
            walk(sub)
        if ifd.next is not None:
            walk(ifd.next)

    def entries(ifd: _Ifd, ifd_at: dict[int, int]) -> Entries:
        found = dict(ifd.entries)
        if ifd.sub_ifds:
            found[330] = (_LONG, [ifd_at.get(id(sub), 0) for sub in ifd.sub_ifds])
        return found

    def payload(typ: int, value: Value, blob_at: dict[str, int]) -> bytes:
        if isinstance(value, str):
            value = [blob_at.get(value, 0)]
        if isinstance(value, bytes):
            return value
        return struct.pack("<" + _PACK[typ] * len(value), *value)

    walk(ifd0)
    ifd_at: dict[int, int] = {}
    pos = 8 + len(extra)
    for ifd in ifds:
        ifd_at[id(ifd)] = pos
        found = entries(ifd, {})
        pos += 6 + 12 * len(found)
        for typ, value in found.values():
            size = len(payload(typ, value, {}))
            pos += size + (size & 1) if size > 4 else 0
    blob_at = {}
    for name, blob in blobs.items():
        blob_at[name] = pos
        pos += len(blob)

    out = bytearray(magic + struct.pack("<I", 8 + len(extra)) + extra)
    for ifd in ifds:
        found = entries(ifd, ifd_at)
        body, tail = bytearray(struct.pack("<H", len(found))), bytearray()
        tail_at = len(out) + 6 + 12 * len(found)
        for tag, (typ, value) in sorted(found.items()):
            data = payload(typ, value, blob_at)
            if len(data) > 4:
                field = struct.pack("<I", tail_at + len(tail))
                tail += data + b"\x00" * (len(data) & 1)
            else:
                field = data.ljust(4, b"\x00")
            body += struct.pack("<HHI", tag, typ, len(data) // struct.calcsize(_PACK[typ])) + field
        next_at = ifd_at[id(ifd.next)] if ifd.next is not None else 0
        out += body + struct.pack("<I", next_at) + tail
    for blob in blobs.values():
        out += blob
    return bytes(out)


def _preview_jpeg(make: str, model: str) -> bytes:
    """A colour-gradient JPEG (not blank) of PREVIEW_WIDTH x PREVIEW_HEIGHT with EXIF Make/Model."""
    x = np.linspace(0, 255, PREVIEW_WIDTH, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, PREVIEW_HEIGHT, dtype=np.float32)[:, None]
    rgb = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()


# --- maker formats -------------------------------------------------------------------------------


def _cfa_ifd(width: int, height: int, bps: int, compression: int, declared: int) -> Entries:
    """A CFA raster of ``width x height`` pixels whose single strip is the blob ``"raw"``."""
    return {
        254: (_LONG, [0]),
        256: (_LONG, [width]),
        257: (_LONG, [height]),
        258: (_SHORT, [bps]),
        259: (_SHORT, [compression]),
        262: (_SHORT, [32803]),  # PhotometricInterpretation: CFA
        273: (_LONG, "raw"),
        277: (_SHORT, [1]),
        278: (_LONG, [height]),
        279: (_LONG, [declared]),
        33421: (_SHORT, [2, 2]),  # CFARepeatPatternDim
        33422: (_BYTE, [0, 1, 1, 2]),  # CFAPattern: RGGB
    }


def _camera(make: str, model: str) -> Entries:
    return {271: _text(make), 272: _text(model)}


def _preview_ifd(jpeg: bytes, kind: int = 1) -> Entries:
    """NewSubfileType ``kind`` and JPEGInterchangeFormat/Length (513/514) -> blob ``"preview"``."""
    return {
        254: (_LONG, [kind]),
        259: (_SHORT, [6]),
        513: (_LONG, "preview"),
        514: (_LONG, [len(jpeg)]),
    }


def _sony_arw(raw: bytes, declared: int) -> bytes:
    # ILCE-7M3: 6048 x 4024; compressed ARW 2 (1 byte/pixel) when the strip holds exactly
    # raw_width x raw_height bytes, else LibRaw reads it as ARW 1 (8 more rows). Raw in SubIFD0,
    # preview through IFD0's 513/514, as Sony lays it out.
    jpeg = _preview_jpeg("SONY", "ILCE-7M3")
    raster = _Ifd(_cfa_ifd(6048, 4024, 12, 32767, declared))
    ifd0 = _Ifd({**_preview_ifd(jpeg), **_camera("SONY", "ILCE-7M3")}, [raster])
    return _tiff(ifd0, {"preview": jpeg, "raw": raw})


def _nikon_nef(raw: bytes, declared: int) -> bytes:
    # D750: 6032 x 4032 uncompressed 14-bit in SubIFD1; the full-size preview in SubIFD0.
    jpeg = _preview_jpeg("NIKON CORPORATION", "NIKON D750")
    subs = [_Ifd(_preview_ifd(jpeg)), _Ifd(_cfa_ifd(6032, 4032, 14, 1, declared))]
    ifd0 = _Ifd({254: (_LONG, [1]), **_camera("NIKON CORPORATION", "NIKON D750")}, subs)
    return _tiff(ifd0, {"preview": jpeg, "raw": raw})


def _pentax_pef(raw: bytes, declared: int) -> bytes:
    # K-5: 4992 x 3284, Pentax Huffman compression (65535) in IFD0; the preview in IFD1.
    jpeg = _preview_jpeg("PENTAX", "PENTAX K-5")
    ifd0 = {**_cfa_ifd(4992, 3284, 12, 65535, declared), **_camera("PENTAX", "PENTAX K-5")}
    return _tiff(_Ifd(ifd0, next=_Ifd(_preview_ifd(jpeg))), {"preview": jpeg, "raw": raw})


def _lj92_header(width: int, height: int, components: int) -> bytes:
    """SOI, DHT, SOF3 and SOS of a 14-bit lossless JPEG (predictor 1); the scan data follows."""
    counts = [0, 1, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]  # 15 symbols: 0-14
    dht = struct.pack(">HB", 2 + 1 + 16 + 15, 0) + bytes(counts) + bytes(range(15))
    sof = struct.pack(">HBHHB", 8 + 3 * components, 14, height, width, components)
    sof += b"".join(bytes([c + 1, 0x11, 0]) for c in range(components))
    sos = struct.pack(">HB", 6 + 2 * components, components)
    sos += b"".join(bytes([c + 1, 0]) for c in range(components)) + b"\x01\x00\x00"
    return b"\xff\xd8\xff\xc4" + dht + b"\xff\xc3" + sof + b"\xff\xda" + sos


def _canon_cr2(raw: bytes, declared: int) -> bytes:
    # EOS 5D Mark II: 5792 x 3804 (a lossless JPEG of 4 components 1448 wide) in IFD3, whose
    # offset the CR2 header repeats; the full-size JPEG is IFD0's strip, as Canon lays it out.
    jpeg = _preview_jpeg("Canon", "Canon EOS 5D Mark II")
    header = _lj92_header(1448, 3804, 4)
    ifd3 = _Ifd({259: (_SHORT, [6]), 273: (_LONG, "raw"), 279: (_LONG, [len(header) + declared])})
    ifd0 = {
        256: (_LONG, [PREVIEW_WIDTH]),
        257: (_LONG, [PREVIEW_HEIGHT]),
        259: (_SHORT, [6]),
        273: (_LONG, "preview"),
        279: (_LONG, [len(jpeg)]),
        **_camera("Canon", "Canon EOS 5D Mark II"),
    }
    chain = _Ifd(ifd0, next=_Ifd({254: (_LONG, [1])}, next=_Ifd({254: (_LONG, [1])}, next=ifd3)))
    out = bytearray(
        _tiff(chain, {"preview": jpeg, "raw": header + raw}, extra=b"CR\x02\x00\x00\x00\x00\x00")
    )
    ifd_at = struct.unpack_from("<I", out, 4)[0]
    for _ in range(3):  # follow IFD0 -> IFD1 -> IFD2 -> IFD3
        count = struct.unpack_from("<H", out, ifd_at)[0]
        ifd_at = struct.unpack_from("<I", out, ifd_at + 2 + 12 * count)[0]
    out[12:16] = struct.pack("<I", ifd_at)
    return bytes(out)


def _olympus_orf(raw: bytes, declared: int) -> bytes:
    # E-M5: 4640 x 3472, 12-bit, magic "IIRO" (not a TIFF magic); the preview in IFD1.
    jpeg = _preview_jpeg("OLYMPUS IMAGING CORP.", "E-M5")
    ifd0 = {**_cfa_ifd(4640, 3472, 12, 1, declared), **_camera("OLYMPUS IMAGING CORP.", "E-M5")}
    ifds = _Ifd(ifd0, next=_Ifd(_preview_ifd(jpeg)))
    return _tiff(ifds, {"preview": jpeg, "raw": raw}, magic=b"IIRO")


def _panasonic_rw2(raw: bytes, declared: int) -> bytes:
    # DC-G9: 5248 x 3920 (PanasonicRaw tags 2/3), RawFormat 4, magic "IIU"; the preview is the
    # JpgFromRaw tag (0x2e) inline, as Panasonic lays it out. LibRaw sizes RW2 data from the file
    # length, not from tag 279.
    jpeg = _preview_jpeg("Panasonic", "DC-G9")
    ifd0: Entries = {
        1: (_UNDEFINED, b"0340"),  # PanasonicRawVersion
        2: (_SHORT, [5248]),
        3: (_SHORT, [3920]),
        10: (_SHORT, [12]),  # BitsPerSample
        11: (_SHORT, [34316]),  # Compression
        45: (_SHORT, [4]),  # RawFormat
        46: (_UNDEFINED, jpeg),  # JpgFromRaw
        **_camera("Panasonic", "DC-G9"),
        279: (_LONG, [declared]),
        280: (_LONG, "raw"),  # RawDataOffset
    }
    return _tiff(_Ifd(ifd0), {"raw": raw}, magic=b"IIU\x00")


_XTRANS = bytes([1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1] * 2)


def _fujifilm_raf(raw: bytes, declared: int) -> bytes:
    # X-T3: 6384 x 4182 X-Trans in a RAF container (not TIFF): a fixed header with the offsets and
    # lengths of the JPEG preview, of a tag directory (sensor size, layout) and of the raw data.
    jpeg = _preview_jpeg("FUJIFILM", "X-T3")
    tags = [
        (0x100, struct.pack(">HH", 4182, 6384)),  # RawImageFullSize: height, width
        (0x121, struct.pack(">HH", 4160, 6240)),  # RawImageSize
        (0x130, b"\x00\x08\x00\x00"),  # FujiLayout: not a 45-degree SuperCCD
        (0x131, _XTRANS),  # XTransLayout
    ]
    directory = struct.pack(">I", len(tags))
    directory += b"".join(struct.pack(">HH", tag, len(value)) + value for tag, value in tags)
    jpeg_at = 160
    directory_at = jpeg_at + len(jpeg)
    raw_at = directory_at + len(directory)
    # magic, format version, camera id, model (32 bytes), directory version, 20 bytes: 84 bytes
    header = b"FUJIFILMCCD-RAW 0201FF383501" + b"X-T3".ljust(32, b"\x00") + b"0100" + bytes(20)
    header += struct.pack(">6I", jpeg_at, len(jpeg), directory_at, len(directory), raw_at, declared)
    return header.ljust(jpeg_at, b"\x00") + jpeg + directory + raw


@dataclass(frozen=True)
class Maker:
    """A maker format: ``build(raw, declared)`` gives the file holding ``raw`` as its raw data
    while its tags declare ``declared`` bytes of it; ``full_bytes`` is a complete file's raw data;
    ``sensor`` (raw_width, raw_height) and ``visible`` (width, height) are what LibRaw reports, in
    pixels (``visible`` differs where LibRaw applies the camera model's crop)."""

    suffix: str
    build: Callable[[bytes, int], bytes]
    full_bytes: int
    sensor: tuple[int, int]
    visible: tuple[int, int]


MAKERS = {
    "sony-arw": Maker(".arw", _sony_arw, 6048 * 4024, (6048, 4024), (6024, 4024)),
    "nikon-nef": Maker(".nef", _nikon_nef, 6032 * 4032 * 2, (6032, 4032), (6032, 4032)),
    "pentax-pef": Maker(".pef", _pentax_pef, 4992 * 3284, (4992, 3284), (4992, 3284)),
    "canon-cr2": Maker(".cr2", _canon_cr2, 5792 * 3804, (5792, 3804), (5634, 3752)),
    "olympus-orf": Maker(".orf", _olympus_orf, 4640 * 3472 * 3 // 2, (4640, 3472), (4640, 3472)),
    "panasonic-rw2": Maker(
        ".rw2", _panasonic_rw2, 5248 * 3920 * 8 // 7, (5248, 3920), (5248, 3920)
    ),
    "fujifilm-raf": Maker(".raf", _fujifilm_raf, 6384 * 4182 * 2, (6384, 4182), (6240, 4160)),
}
# Header-only files of TIFF-magic formats declare data past the end of the file, which the
# structural TIFF check rejects before LibRaw opens them; the other containers have no such check.
_TIFF_MAGIC = {"sony-arw", "nikon-nef", "pentax-pef", "canon-cr2"}


def _write(tmp_path: Path, name: str, variant: str) -> Path:
    maker = MAKERS[name]
    if variant == "header-only":
        data = maker.build(b"", maker.full_bytes)
    elif variant == "stripped":
        data = maker.build(bytes(STUB_BYTES), STUB_BYTES)
    else:  # complete: an incompressible 64 KiB block repeated (cheap to make, content irrelevant)
        block = np.random.default_rng(7).integers(0, 256, STUB_BYTES, dtype=np.uint8).tobytes()
        raw = (block * (maker.full_bytes // STUB_BYTES + 1))[: maker.full_bytes]
        data = maker.build(raw, maker.full_bytes)
    path = tmp_path / f"{name}-{variant}{maker.suffix}"
    path.write_bytes(data)
    return path


def _assert_libraw_opens_as_maker_format(path: Path, maker: Maker) -> None:
    """LibRaw opens ``path`` without raising, reports the maker's sensor (and the model's crop)
    and hands out the embedded preview: the path by which a header-only file got ingested."""
    with rawpy.imread(str(path)) as raw:
        sizes = raw.sizes
        # ARW data that is not exactly 1 byte/pixel is read as ARW 1, 8 rows taller (LibRaw).
        assert sizes.raw_width == maker.sensor[0]
        assert sizes.raw_height in (maker.sensor[1], maker.sensor[1] + 8)
        assert sizes.width == maker.visible[0]
        assert sizes.height in (maker.visible[1], maker.visible[1] + 8)
        thumb = raw.extract_thumb()
    assert thumb.format == rawpy.ThumbFormat.JPEG
    with Image.open(io.BytesIO(thumb.data)) as preview:
        assert preview.size == (PREVIEW_WIDTH, PREVIEW_HEIGHT)
        assert max(preview.size) >= PREVIEW_SIZE  # long enough for the embedded-preview path


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["header-only", "stripped"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_data_less_maker_raw_is_rejected(tmp_path: Path, name: str, variant: str) -> None:
    path = _write(tmp_path, name, variant)
    assert sniff_format(read_head(path), path) == "raw"
    _assert_libraw_opens_as_maker_format(path, MAKERS[name])
    with pytest.raises(PhotoError) as info:
        decode_photo(path)
    assert info.value.code is ErrorCode.ERR_DECODE_RAW
    if variant == "stripped" or name not in _TIFF_MAGIC:
        # only the sensor-size check can see these: every offset and count is consistent, or the
        # container (ORF, RW2, RAF) has no structural check
        assert "header-only or data-stripped" in info.value.detail
        assert f"{MAKERS[name].sensor[0]}x" in info.value.detail


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_complete_maker_raw_passes_the_data_check(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, "complete")
    maker = MAKERS[name]
    _assert_libraw_opens_as_maker_format(path, maker)
    photo = decode_photo(path)  # the decode goes on (here through the preview) instead of failing
    assert (photo.width, photo.height, photo.format) == (*maker.visible, "raw")
    assert photo.decoder == "raw-embedded-preview"


def _sizes(raw_width: int, raw_height: int) -> rawpy.ImageSizes:
    return SimpleNamespace(raw_width=raw_width, raw_height=raw_height)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("dng", "per_megapixel"),
    [(False, MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL), (True, MIN_RAW_BYTES_PER_MEGAPIXEL)],
)
def test_bound_is_bytes_per_megapixel_of_the_sensor_after_the_preview(
    dng: bool, per_megapixel: int
) -> None:
    sizes = _sizes(4000, 3000)  # 12 MP
    needed = 12 * per_megapixel
    check = decode_module._check_raw_data_size
    check(sizes, file_bytes=needed + 5_000, thumbnail_bytes=5_000, dng=dng)  # exactly enough
    with pytest.raises(PhotoError) as info:
        check(sizes, file_bytes=needed + 4_999, thumbnail_bytes=5_000, dng=dng)
    assert info.value.code is ErrorCode.ERR_DECODE_RAW
    assert info.value.detail == (
        f"raw data can take at most {needed - 1} bytes ({needed + 4_999}-byte file less a "
        f"5000-byte preview) but the 4000x3000 sensor needs at least {needed} "
        f"({per_megapixel} bytes/MP): header-only or data-stripped file"
    )


def test_maker_bound_is_below_every_per_sample_coder() -> None:
    # 1 bit per sample (the floor of lossless JPEG and the other per-sample Huffman coders) is
    # 125,000 bytes/MP: the maker bound is half of it, and DNG (lossy, deflate) gets a lower one.
    assert MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL * 2 == 1_000_000 // 8
    assert MIN_RAW_BYTES_PER_MEGAPIXEL < MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL


# --- the real samples ----------------------------------------------------------------------------

REAL_DNGS = ["pp_canon_eos_6d_lossy.dng", "tinydng_colorchart_Canon550D_MagicLantern.dng"]
DATA_LESS_DNGS = ["raw_stripped_exiftool_DNG.dng", "raw_truncated_filetype_Leica-M10.dng"]


@needs_samples
@pytest.mark.parametrize("name", REAL_DNGS)
def test_real_dng_samples_pass_and_decode(name: str) -> None:
    path = SAMPLES / "raw" / name
    with rawpy.imread(str(path)) as raw:
        pixels = raw.sizes.raw_width * raw.sizes.raw_height
        room = os.path.getsize(path) - decode_module._thumbnail_bytes(
            decode_module._raw_thumbnail(raw)
        )
    assert room * 1_000_000 >= pixels * MIN_RAW_BYTES_PER_MEGAPIXEL
    photo = decode_photo(path)
    assert photo.format == "raw"


@needs_samples
@pytest.mark.parametrize("name", DATA_LESS_DNGS)
def test_data_less_dng_samples_still_fail(name: str) -> None:
    with pytest.raises(PhotoError) as info:
        decode_photo(SAMPLES / "edge" / name)
    assert info.value.code is ErrorCode.ERR_DECODE_RAW
