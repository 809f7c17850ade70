"""Content sniffing: which image format a file really holds, whatever its extension says.

The format is decided from the first :data:`HEAD_BYTES` bytes (magic numbers). The extension is
only a hint where the content is ambiguous: TIFF-structured camera RAW files (DNG, NEF, ARW, ...)
all start with the plain TIFF magic. A TIFF-magic file with a non-RAW extension is still a RAW when
its first IFD carries the DNGVersion tag, read with a tiny ``struct`` reader (a few small reads,
never a pixel decode). The same reader lists where each image's strips/tiles lie, which lets the
decoder reject header-only or truncated TIFF-based RAWs that LibRaw would "decode" to garbage.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import BinaryIO

HEAD_BYTES = 64
"""Bytes read from the start of a file to sniff its format (the longest magic used is 15 bytes at
offset 0; ``ftyp`` boxes list their brands within the first few dozen bytes)."""

FORMATS = ("jpeg", "png", "gif", "webp", "bmp", "heif", "tiff", "raw")
"""Every value :func:`sniff_format` can return (besides ``None``)."""

RAW_EXTENSIONS: frozenset[str] = frozenset(
    {
        # TIFF-structured: the content sniffs as TIFF, the extension says RAW
        *(".dng", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".pef", ".kdc", ".dcr", ".3fr"),
        *(".erf", ".mef", ".mos", ".rwl", ".iiq", ".srw", ".cr2"),
        # own magic numbers
        *(".cr3", ".crw", ".raf", ".orf", ".rw2", ".mrw", ".x3f"),
    }
)
"""Camera RAW extensions (lowercase, with the dot)."""

IMAGE_EXTENSIONS: frozenset[str] = RAW_EXTENSIONS | {
    *(".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff"),
    *(".heic", ".heif", ".hif", ".avif"),
    # no reliable magic: decoded by Pillow only under these extensions
    *(".tga", ".jp2", ".j2k", ".qoi", ".ppm", ".pgm", ".pbm", ".pnm"),
}
"""Extensions of files worth trying to decode (lowercase, with the dot): images and RAWs."""

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_BIGTIFF_MAGICS = (b"II+\x00", b"MM\x00+")
_HEIF_BRANDS = frozenset(b"heic heix hevc heim heis hevm hevs mif1 msf1 avif avis".split())
_APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"  # macOS "._name" resource-fork sidecar files
_TRANSFORM_BOXES = frozenset({b"irot", b"imir", b"clap"})
_MAX_META_BYTES = 4 << 20  # a HEIF meta box is a few KiB; larger ones are not inspected

_TAG_NEW_SUBFILE_TYPE = 254
_TAG_WIDTH = 256
_TAG_HEIGHT = 257
_TAG_STRIP_OFFSETS = 273
_TAG_STRIP_BYTE_COUNTS = 279
_TAG_TILE_OFFSETS = 324
_TAG_TILE_BYTE_COUNTS = 325
_TAG_SUB_IFDS = 330
_TAG_DNG_VERSION = 50706
_WANTED_TAGS = frozenset(
    {
        _TAG_NEW_SUBFILE_TYPE,
        _TAG_WIDTH,
        _TAG_HEIGHT,
        _TAG_STRIP_OFFSETS,
        _TAG_STRIP_BYTE_COUNTS,
        _TAG_TILE_OFFSETS,
        _TAG_TILE_BYTE_COUNTS,
        _TAG_SUB_IFDS,
        _TAG_DNG_VERSION,
    }
)
# TIFF field type -> struct code for the integer types we read (BYTE, SHORT, LONG, IFD).
_INT_TYPES = {1: "B", 3: "H", 4: "I", 13: "I"}
_MAX_IFDS = 32  # IFD0 chain + SubIFDs visited per file; real RAWs have fewer than 10
_MAX_VALUES = 1 << 16  # values read per tag (strip/tile counts); more is not a real file


def read_head(path: str | os.PathLike[str]) -> bytes:
    """Return the first :data:`HEAD_BYTES` bytes of ``path`` (fewer for a shorter file).

    Raises:
        OSError: the file cannot be opened or read (the caller maps it with
            :func:`~vibe_assets.imaging.errors.error_from_os_error`).
    """
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def sniff_format(head: bytes, path: str | os.PathLike[str] | None = None) -> str | None:
    """Classify a file from its first bytes; ``None`` when no known image magic matches.

    Args:
        head: the file's first bytes (:data:`HEAD_BYTES` is enough).
        path: the file's path. Its extension separates TIFF-magic RAWs (``.dng``, ``.nef``, ...)
            from plain TIFFs; for another extension the file's first IFD is read to look for the
            DNGVersion tag (50706). Without a path a TIFF-magic file is ``"tiff"``.

    Returns:
        One of :data:`FORMATS` or ``None``.

    Raises:
        OSError: only when ``path`` is given and reading its IFD fails.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if _is_bmp(head):
        return "bmp"
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    if _is_non_tiff_raw(head):
        return "raw"
    if head[:4] in _TIFF_MAGICS:
        if head[8:10] == b"CR":  # Canon CR2
            return "raw"
        if path is not None and PurePath(path).suffix.lower() in RAW_EXTENSIONS:
            return "raw"
        if path is not None and _first_ifd_has_dng_version(path):
            return "raw"
        return "tiff"
    if head[:4] in _BIGTIFF_MAGICS:
        return "tiff"
    return None


def is_candidate(name: str, head: bytes, fmt: str | None) -> bool:
    """Whether a scanned file should go to the decoder (and so appear in the run's report).

    True when the content sniffs as an image, or when the extension is an image/RAW extension (a
    text file named ``.jpg`` is a candidate and later fails with ``ERR_NOT_AN_IMAGE``;
    ``README.txt`` is not). macOS AppleDouble sidecars (``._IMG_0001.jpg``) are never candidates:
    they are resource forks, not the user's files.

    Args:
        name: file name or path (only the extension is used).
        head: the file's first bytes, as returned by :func:`read_head`.
        fmt: the result of :func:`sniff_format`; ``None`` re-sniffs ``head`` (without a path).
    """
    if head.startswith(_APPLEDOUBLE_MAGIC):
        return False
    if fmt is None:
        fmt = sniff_format(head)
    return fmt is not None or PurePath(name).suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class TiffRaster:
    """Where one image of a TIFF-structured file (IFD0 chain or SubIFDs) keeps its data.

    ``width``/``height`` are in pixels (0 when the tag is missing). ``data_bytes`` is the sum of
    its StripByteCounts/TileByteCounts (``None`` when the file has no byte counts) and
    ``data_end`` the largest ``offset + count``: a complete file is at least that long.
    ``subfile_type`` is NewSubFileType (254): 0 = full-resolution image, 1 = reduced preview.
    """

    subfile_type: int
    width: int
    height: int
    data_bytes: int | None
    data_end: int


def read_tiff_rasters(path: str | os.PathLike[str]) -> list[TiffRaster]:
    """List the images of a classic (non-Big) TIFF-structured file: IFD0 chain and SubIFDs.

    Reads only IFD entries (a few small reads). Malformed structures end the walk early; an
    empty list means "not TIFF or nothing readable".

    Raises:
        OSError: the file cannot be opened or read.
    """
    rasters = []
    with open(path, "rb") as f:
        for ifd in _read_ifds(f):
            offsets = ifd.get(_TAG_STRIP_OFFSETS) or ifd.get(_TAG_TILE_OFFSETS) or ()
            counts = ifd.get(_TAG_STRIP_BYTE_COUNTS) or ifd.get(_TAG_TILE_BYTE_COUNTS)
            ends = [o + c for o, c in zip(offsets, counts or (), strict=False)]
            rasters.append(
                TiffRaster(
                    subfile_type=_first(ifd, _TAG_NEW_SUBFILE_TYPE, 0),
                    width=_first(ifd, _TAG_WIDTH, 0),
                    height=_first(ifd, _TAG_HEIGHT, 0),
                    data_bytes=sum(counts) if counts else None,
                    data_end=max(ends, default=0),
                )
            )
    return rasters


@dataclass(frozen=True)
class BmffLayout:
    """Top-level layout of an ISO base media file (HEIF, HEIC, AVIF, Canon CR3).

    ``data_end`` is the largest end offset (bytes) its top-level boxes declare: a complete file is
    at least that long. ``transforms`` holds the transformative item properties found in
    ``meta/iprp/ipco`` (``"irot"``, ``"imir"``, ``"clap"``): decoders apply those themselves.
    """

    data_end: int
    transforms: frozenset[str]


def read_bmff_layout(path: str | os.PathLike[str]) -> BmffLayout:
    """Walk the top-level boxes of ``path`` (and its ``meta`` box, up to 4 MiB); cheap, no decode.

    A header cut short counts as extending past the end of the file. A file that does not start
    with an ``ftyp`` box gives ``BmffLayout(0, frozenset())``.

    Raises:
        OSError: the file cannot be opened or read.
    """
    data_end, transforms = 0, set()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(8)[4:8] != b"ftyp":
            return BmffLayout(0, frozenset())
        offset = 0
        while offset < size:
            f.seek(offset)
            header = f.read(16)
            if len(header) < 8:
                return BmffLayout(offset + 8, frozenset(transforms))
            box_size, kind = struct.unpack(">I4s", header[:8])
            header_size = 8
            if box_size == 1:  # 64-bit size follows
                if len(header) < 16:
                    return BmffLayout(offset + 16, frozenset(transforms))
                box_size, header_size = struct.unpack(">Q", header[8:16])[0], 16
            elif box_size == 0:  # extends to the end of the file
                box_size = size - offset
            if box_size < header_size:
                break  # malformed: stop here, the decoder will complain
            if kind == b"meta" and box_size <= _MAX_META_BYTES:
                f.seek(offset + header_size)
                body = f.read(box_size - header_size)
                transforms |= _heif_transforms(body[4:])  # meta is a FullBox
            data_end = max(data_end, offset + box_size)
            offset += box_size
    return BmffLayout(data_end, frozenset(transforms))


def _heif_transforms(meta_body: bytes) -> set[str]:
    """Names of the transformative properties in ``iprp/ipco`` of a ``meta`` box's content."""
    ipco = _child_box(_child_box(meta_body, b"iprp"), b"ipco")
    return {kind.decode("ascii") for kind, _ in _boxes(ipco) if kind in _TRANSFORM_BOXES}


def _child_box(body: bytes, wanted: bytes) -> bytes:
    return next((content for kind, content in _boxes(body) if kind == wanted), b"")


def _boxes(body: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, content) of the boxes packed in ``body`` (32-bit sizes only; stops when malformed)."""
    offset = 0
    while offset + 8 <= len(body):
        box_size, kind = struct.unpack(">I4s", body[offset : offset + 8])
        if box_size < 8 or offset + box_size > len(body):
            return
        yield kind, body[offset + 8 : offset + box_size]
        offset += box_size


def _first(ifd: dict[int, tuple[int, ...]], tag: int, default: int) -> int:
    values = ifd.get(tag)
    return values[0] if values else default


def _is_bmp(head: bytes) -> bool:
    # "BM" alone matches text ("BMW ..."); also require a known DIB header size at offset 14.
    if head[:2] != b"BM" or len(head) < 18:
        return False
    return struct.unpack("<I", head[14:18])[0] in (12, 16, 40, 52, 56, 64, 108, 124)


def _sniff_ftyp(head: bytes) -> str | None:
    """ISO-BMFF ``ftyp`` box: Canon CR3 (brand ``crx ``) or HEIF/HEIC/AVIF."""
    box_size = struct.unpack(">I", head[:4])[0]
    end = min(len(head), box_size) if box_size >= 16 else len(head)
    major = head[8:12]
    compatible = [head[i : i + 4] for i in range(16, end - 3, 4)]
    if major == b"crx ":
        return "raw"
    if major in _HEIF_BRANDS or any(brand in _HEIF_BRANDS for brand in compatible):
        return "heif"
    return None


def _is_non_tiff_raw(head: bytes) -> bool:
    return (
        head.startswith(b"FUJIFILMCCD-RAW")  # Fujifilm RAF
        or head[:4] in (b"IIRO", b"IIRS", b"MMOR")  # Olympus ORF
        or head.startswith(b"IIU\x00")  # Panasonic RW2 / Leica RWL
        or head.startswith(b"\x00MRM")  # Minolta MRW
        or head.startswith(b"FOVb")  # Sigma X3F
        or head[6:14] == b"HEAPCCDR"  # Canon CRW (CIFF)
    )


def is_dng(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a classic TIFF whose first IFD carries the DNGVersion tag (50706).

    Reads IFD0 only (a few small reads); a non-TIFF or unreadable structure gives ``False``.

    Raises:
        OSError: the file cannot be opened or read.
    """
    return _first_ifd_has_dng_version(path)


def _first_ifd_has_dng_version(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        ifds = _read_ifds(f, max_ifds=1)
    return bool(ifds) and _TAG_DNG_VERSION in ifds[0]


def _read_ifds(f: BinaryIO, max_ifds: int = _MAX_IFDS) -> list[dict[int, tuple[int, ...]]]:
    """Walk a classic TIFF's IFD0 chain and SubIFDs; integer values of :data:`_WANTED_TAGS` only.

    Bounded (``max_ifds``, loops detected) and tolerant: a bad offset or short read ends the walk
    and returns what was read so far.
    """
    f.seek(0)
    header = f.read(8)
    if len(header) < 8 or header[:4] not in _TIFF_MAGICS:  # no room for the IFD0 offset
        return []
    order = "<" if header[:2] == b"II" else ">"
    pending = [struct.unpack(order + "I", header[4:8])[0]]
    seen: set[int] = set()
    ifds: list[dict[int, tuple[int, ...]]] = []
    while pending and len(ifds) < max_ifds:
        offset = pending.pop(0)
        if offset < 8 or offset in seen:
            continue
        seen.add(offset)
        parsed = _read_ifd(f, order, offset)
        if parsed is None:
            break
        entries, next_offset = parsed
        ifds.append(entries)
        pending.extend(entries.get(_TAG_SUB_IFDS, ()))
        if next_offset:
            pending.append(next_offset)
    return ifds


def _read_ifd(
    f: BinaryIO, order: str, offset: int
) -> tuple[dict[int, tuple[int, ...]], int] | None:
    f.seek(offset)
    raw_count = f.read(2)
    if len(raw_count) < 2:
        return None
    (count,) = struct.unpack(order + "H", raw_count)
    body = f.read(12 * count + 4)
    if len(body) < 12 * count + 4:
        return None
    entries: dict[int, tuple[int, ...]] = {}
    for i in range(count):
        tag, field_type, n = struct.unpack(order + "HHI", body[12 * i : 12 * i + 8])
        if tag not in _WANTED_TAGS or field_type not in _INT_TYPES or not 0 < n <= _MAX_VALUES:
            continue
        code = _INT_TYPES[field_type]
        size = struct.calcsize(code) * n
        value = body[12 * i + 8 : 12 * i + 12]
        if size > 4:
            (pointer,) = struct.unpack(order + "I", value)
            f.seek(pointer)
            value = f.read(size)
            if len(value) < size:
                continue
        entries[tag] = struct.unpack(order + code * n, value[:size])
    (next_offset,) = struct.unpack(order + "I", body[12 * count : 12 * count + 4])
    return entries, next_offset
