"""Decode a photo file ONCE into a small upright sRGB preview (see DESIGN.md, "Decode once").

Every later stage (CLIP, BLIP, thumbnails) reads the preview, never the original, so the costly
part happens once per file content:

- JPEG decodes at reduced scale in the DCT domain (``Image.draft``): a 24 MP JPEG to 224 px takes
  87 ms instead of 444 ms for a full decode (DESIGN.md measurement table). A progressive JPEG
  at 1/8 scale skips its AC scans (:mod:`vibe_assets.imaging.progressive`): 3-4x faster in libjpeg.
- RAW uses the embedded JPEG preview when it is at least ``preview_size`` long (``extract_thumb``,
  2-16 ms for a 24 MP DNG) and otherwise LibRaw's ``postprocess(half_size=True)`` (0.25-0.93 s,
  against 1.5-2.7 s for a full ``postprocess()``). Either way the file must first hold enough
  bytes for its sensor's raw data (:func:`_check_raw_data_size`): a header-only RAW is rejected
  even when it carries a usable preview.
- EXIF metadata (:mod:`vibe_assets.imaging.exif`) comes from the same open of the file: the
  Pillow image already decoded, or for RAW a parse of the TIFF header (~1 ms, no pixels).

:func:`decode_photo` raises only :class:`~vibe_assets.imaging.errors.PhotoError`; every failure
carries an :class:`~vibe_assets.imaging.errors.ErrorCode`.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, BinaryIO

import numpy as np
import rawpy
from PIL import Image, ImageCms, UnidentifiedImageError

from vibe_assets.imaging.errors import ErrorCode, PhotoError, error_from_os_error
from vibe_assets.imaging.exif import photo_metadata, read_raw_exif
from vibe_assets.imaging.formats import (
    HEAD_BYTES,
    BmffLayout,
    is_dng,
    read_bmff_layout,
    read_tiff_rasters,
    sniff_format,
)
from vibe_assets.imaging.progressive import dc_only_jpeg, is_eighth_scale

PREVIEW_SIZE = 512
"""Default long side of the preview, in pixels (CLIP/BLIP inputs are 224-384 px)."""

MAX_PIXELS = 200_000_000
"""Largest image accepted, in pixels (width x height, checked from the header before decoding).

The biggest single-shot sensors sold are ~150 MP (Phase One IQ4 150: 14204 x 10652) and 102 MP
(Fujifilm GFX100), so 200 MP admits every real camera file while bounding memory: a full 8-bit
RGB decode of 200 MP is 600 MB, a 16-bit LibRaw buffer more. Pillow's own decompression-bomb
limit (``2 * Image.MAX_IMAGE_PIXELS``, ~179 MP by default, left untouched) raises first for the
formats it decodes; it maps to the same code.
"""

BLANK_MAX_VALUE = 8
"""A RAW preview whose brightest value (0-255) is at most this is a blank frame."""
BLANK_MIN_STD = 1.0
"""A RAW preview whose standard deviation (0-255 scale) is below this is a blank frame."""

MIN_RAW_BYTES_PER_MEGAPIXEL = 1_000
"""Smallest plausible size of a full-resolution TIFF/DNG raster, in bytes per megapixel (0.001
byte per pixel); also the bound :func:`_check_raw_data_size` applies to DNG files.

Lossless-JPEG raw data costs at least 1 bit per sample (125,000 bytes/MP) and even a flat,
lossy-compressed DNG several thousand bytes/MP (baseline JPEG spends at least a DC code and an
end-of-block code, 2 bits, per 8x8 block: ~3,900 bytes/MP per component); deflate (DNG
compression 8) cannot beat ~1:1032 (a 258-byte match in 2 bits), ~1,900 bytes/MP for 16-bit
samples. Header-only files fall far below it (the stripped exiftool sample: 22 bytes for 8.2 MP);
LibRaw "decodes" them from whatever its buffer held, which in a long-lived process is leftover
memory rather than black, so the blank-frame check cannot catch them.
"""

MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL = 62_500
"""Smallest plausible size of the raw data of a maker (non-DNG) RAW, in bytes per megapixel of
LibRaw's ``raw_width x raw_height`` sensor area: 1/16 byte (half a bit) per pixel.

Where the number comes from (LibRaw 0.22 decoders, ``src/decoders/``):

- lossless JPEG (ITU-T T.81 process 14: Canon CR2, Sony lossless ARW, ...) and the other
  per-sample Huffman or unary coders (Nikon NEF lossless and lossy, Pentax PEF, Hasselblad,
  Fujifilm compressed RAF: ``fuji_zerobits``, Olympus ORF) spend at least one code of at least
  1 bit on every sample: 1/8 byte per pixel (125,000 bytes/MP);
- fixed-rate layouts cost more: Sony ARW2 1 byte per pixel (``sony_arw2_load_raw`` reads
  ``raw_width`` bytes a row), Panasonic RW2 (RawFormat 4) 16 bytes per 14 pixels, packed or
  unpacked 10-16 bit data 1.25-2 bytes per pixel;
- only the codecs with run-length modes (Canon CRX in CR3, Canon CRW, Samsung SRW, Kodak RADC)
  could code a noiseless flat frame in less, and a sensor never delivers one (read noise). The
  oldest of them, the 1996 Kodak DC50 (RADC) file of rawpy's test suite, has 0.24 byte per pixel
  (92,675 bytes for 768 x 512, its 64-byte thumbnail aside).

Half the per-sample Huffman floor leaves a 2x margin under every coder that codes each sample and
~4x under the smallest real maker file measured. A header-only file keeps its headers, maker notes
and secondary previews (the largest preview is not counted): typically tens to a few hundred KB,
against 1.25 MB (this bound) for a 20 MP sensor. One whose other content exceeds the bound (a big
uncompressed second preview on a small sensor) passes; LibRaw's unpack errors and the blank-frame
check remain behind it. DNG uses :data:`MIN_RAW_BYTES_PER_MEGAPIXEL` instead (lossy and deflate
DNGs go far lower).
"""

_PILLOW_NAMES = {
    "jpeg": ("JPEG",),
    "png": ("PNG",),
    "gif": ("GIF",),
    "webp": ("WEBP",),
    "bmp": ("BMP",),
    "tiff": ("TIFF",),
    # HEIC/HEIF through pillow_heif; AVIF through Pillow's own plugin (pillow_heif 1.x has none)
    "heif": ("HEIF", "AVIF"),
}
# Formats without a usable magic number, tried by Pillow only when the extension names them (a
# random binary named .jpg must not be "decoded" as TGA noise). Never EPS/PDF (Ghostscript).
_EXTENSION_ONLY_FORMATS = frozenset({"TGA", "PPM", "PCX", "SGI", "QOI", "JPEG2000"})
_UNSUPPORTED_HINTS = ("unsupported", "not supported", "not available", "cannot handle")
_TRUNCATED_HINTS = ("image file is truncated", "broken data stream")
# EXIF Orientation (tag 0x0112) -> transpose that makes the picture upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# LibRaw ``sizes.flip`` -> the EXIF orientation that means the same rotation.
_LIBRAW_FLIP_ORIENTATION = {3: 3, 5: 8, 6: 6}


@dataclass(frozen=True)
class DecodedPhoto:
    """A photo decoded once.

    Attributes:
        image: the preview, mode ``"RGB"`` (8 bits per channel, sRGB), upright, long side at most
            the requested ``preview_size`` pixels and never upscaled.
        width: the ORIGINAL image's upright full-resolution width in pixels (for RAW: LibRaw's
            output width after its flip).
        height: likewise, the upright full-resolution height in pixels.
        format: the format sniffed from the content (``"jpeg"``, ``"raw"``, ...; for a file
            decoded by extension only, Pillow's format name in lowercase, e.g. ``"tga"``).
        decoder: the path used: ``"pillow"``, ``"pillow-draft"`` (JPEG reduced-scale decode),
            ``"pillow-draft-dc"`` (progressive JPEG at 1/8 scale from its DC coefficients only),
            ``"heif"`` (pillow_heif), ``"heif-thumbnail"`` (its embedded thumbnail was large
            enough), ``"raw-embedded-preview"`` or ``"raw-half-size"``.
        exif: the photo's EXIF metadata as returned by
            :func:`~vibe_assets.imaging.exif.photo_metadata` (``taken_at``, ``camera_make``,
            ``gps_lat``, ...; JSON-ready, only the fields the file has; empty when it has none or
            its EXIF is unreadable).
    """

    image: Image.Image
    width: int
    height: int
    format: str
    decoder: str
    exif: dict[str, Any] = field(default_factory=dict)


def decode_photo(path: str | os.PathLike[str], preview_size: int = PREVIEW_SIZE) -> DecodedPhoto:
    """Decode ``path`` once into a :class:`DecodedPhoto` whose preview's long side is at most
    ``preview_size`` pixels.

    The format comes from the content (:func:`~vibe_assets.imaging.formats.sniff_format`), never
    from the extension alone. EXIF orientation (all 8 values) is applied; alpha is flattened onto
    white; CMYK goes through its embedded ICC profile to sRGB; 16-bit samples are scaled to 8 bits.
    EXIF metadata is read from the same open file; a missing or broken EXIF block never fails
    the decode (it only leaves :attr:`DecodedPhoto.exif` short or empty).

    Raises:
        PhotoError: ``ERR_EMPTY_FILE`` (0 bytes), ``ERR_NOT_AN_IMAGE`` (no image magic),
            ``ERR_UNSUPPORTED_FORMAT`` (an image format or variant no installed decoder reads),
            ``ERR_TRUNCATED_IMAGE`` (pixel data ends early), ``ERR_DECODE_IMAGE`` (corrupt, a
            broken header included), ``ERR_DECODE_RAW`` (LibRaw fails, the raw data is missing or
            truncated, or the frame is blank), ``ERR_IMAGE_TOO_LARGE`` (over :data:`MAX_PIXELS`),
            or the code of :func:`~vibe_assets.imaging.errors.error_from_os_error` when the file
            cannot be opened or read.
        ValueError: ``preview_size`` < 1 (a programming error, not a file problem).
    """
    if preview_size < 1:
        raise ValueError(f"preview_size must be >= 1, got {preview_size}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEAD_BYTES)
            if size == 0 or not head:
                raise PhotoError(ErrorCode.ERR_EMPTY_FILE)
            fmt = sniff_format(head, path)
            if fmt == "raw":
                return _decode_raw(f, path, size, preview_size)
            return _decode_pillow(f, path, size, fmt, preview_size)
    except OSError as exc:
        raise error_from_os_error(exc) from exc


def encode_preview(image: Image.Image) -> bytes:
    """Encode a preview as JPEG (quality 90, RGB, no EXIF: it is already upright); returns bytes."""
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def encode_thumbnail(image: Image.Image, size: int = 256) -> bytes:
    """Encode a JPEG thumbnail (quality 80) whose long side is at most ``size`` pixels; bytes.

    The thumbnail is for the UI, not for models, so speed wins: a 2x box reduction then Lanczos
    (``reducing_gap=1.0``) and JPEG take ~0.7 ms for a 512 px preview where a plain Lanczos
    resize and WebP (method 2) took ~7 ms on this 2-vCPU machine (Nov 2026), about a sixth of
    a photo's whole decode budget.
    """
    target = _fit(image.size, size)
    thumb = image.convert("RGB")
    if thumb.size != target:
        thumb = thumb.resize(target, Image.Resampling.LANCZOS, reducing_gap=1.0)
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=80)
    return out.getvalue()


# --- Pillow formats (JPEG, PNG, GIF, WebP, BMP, TIFF, HEIF/AVIF, extension-only) ----------------


def _decode_pillow(
    f: BinaryIO, path: str | os.PathLike[str], size: int, fmt: str | None, preview_size: int
) -> DecodedPhoto:
    pillow_names = _pillow_names(fmt, path)
    # libheif renders missing data as flat green without an error: check the boxes first.
    layout = _check_bmff(path, size, ErrorCode.ERR_TRUNCATED_IMAGE) if fmt == "heif" else None
    f.seek(0)
    with _pillow_errors(fmt):
        im = Image.open(f, formats=pillow_names)
        width, height = im.size
        _check_pixels(width, height, ErrorCode.ERR_DECODE_IMAGE)
        dc_only = _progressive_dc_preview(f, im, fmt, preview_size)
        preview, drafted = dc_only or _shrink_to_rgb(im, preview_size)
        # after loading: a PNG's eXIf chunk may follow its pixel data
        orientation = _exif_orientation(im) if layout is None else _heif_orientation(im, layout)
    preview = _apply_orientation(preview, orientation)
    if orientation >= 5:
        width, height = height, width
    if im.format == "HEIF":  # pillow_heif; AVIF goes through Pillow's own plugin
        decoder = "heif-thumbnail" if drafted else "heif"
    elif dc_only:
        decoder = "pillow-draft-dc"
    else:
        decoder = "pillow-draft" if drafted else "pillow"
    exif = _metadata(im.getexif)  # already parsed for the orientation (cached by Pillow)
    return DecodedPhoto(preview, width, height, fmt or str(im.format).lower(), decoder, exif)


def _progressive_dc_preview(
    f: BinaryIO, im: Image.Image, fmt: str | None, preview_size: int
) -> tuple[Image.Image, bool] | None:
    """The preview of a progressive JPEG decoded from its DC coefficients only, when the preview is
    at most an eighth of the photo (:mod:`vibe_assets.imaging.progressive`); ``None`` when that
    does not apply or fails, and the caller decodes normally (keeping its error codes)."""
    if fmt != "jpeg" or not im.info.get("progressive"):
        return None
    if not is_eighth_scale(im.size, _fit(im.size, preview_size)):
        return None
    f.seek(0)
    data = dc_only_jpeg(f.read())
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as dc:
            if dc.size != im.size:
                return None
            return _shrink_to_rgb(dc, preview_size)
    except Exception:  # whatever went wrong, the normal decode decides
        return None


def _pillow_names(fmt: str | None, path: str | os.PathLike[str]) -> list[str]:
    """Pillow plugin names allowed to open a file of sniffed format ``fmt``."""
    Image.init()
    if fmt is None:
        by_extension = Image.registered_extensions().get(PurePath(path).suffix.lower())
        if by_extension not in _EXTENSION_ONLY_FORMATS:
            raise PhotoError(ErrorCode.ERR_NOT_AN_IMAGE)
        return [by_extension]
    if fmt == "heif":
        _register_heif_opener()
    names = [name for name in _PILLOW_NAMES[fmt] if name in Image.OPEN]
    if not names:
        raise PhotoError(ErrorCode.ERR_UNSUPPORTED_FORMAT, f"no {fmt} decoder is installed")
    return names


@functools.cache
def _register_heif_opener() -> None:
    """Teach Pillow to open HEIC/HEIF (pillow_heif); once, on first use, not at import."""
    try:
        import pillow_heif
    except ImportError:  # then "HEIF" stays absent from Image.OPEN: ERR_UNSUPPORTED_FORMAT
        return
    pillow_heif.register_heif_opener()


@contextmanager
def _pillow_errors(fmt: str | None) -> Iterator[None]:
    """Map any exception of Pillow (or its plugins) to a :class:`PhotoError`.

    A header that cannot be read ("Truncated File Read" in the EXIF segment, as in the
    corrupt-header sample) is ``ERR_DECODE_IMAGE``; only pixel data that ends early ("image file
    is truncated") is ``ERR_TRUNCATED_IMAGE``.
    """
    try:
        yield
    except PhotoError:
        raise
    except (Image.DecompressionBombError, MemoryError) as exc:
        raise PhotoError(ErrorCode.ERR_IMAGE_TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        # TIFF is a container with layouts and compressions Pillow lacks (the reason is not in
        # the exception); the other plugins state unsupported variants in an OSError message
        # (see _classify), so for them this means corruption.
        if fmt is None:  # tried by extension only: the content is not that format
            raise PhotoError(ErrorCode.ERR_NOT_AN_IMAGE) from exc
        code = ErrorCode.ERR_UNSUPPORTED_FORMAT if fmt == "tiff" else ErrorCode.ERR_DECODE_IMAGE
        raise PhotoError(code, f"cannot read this {fmt} file") from exc
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error while Pillow was reading
            raise error_from_os_error(exc) from exc
        raise _classify(exc) from exc
    except Exception as exc:  # SyntaxError, ValueError, struct.error, libheif errors, ...
        raise _classify(exc) from exc


def _classify(exc: Exception) -> PhotoError:
    message = str(exc)
    lowered = message.lower()
    if any(hint in lowered for hint in _TRUNCATED_HINTS):
        return PhotoError(ErrorCode.ERR_TRUNCATED_IMAGE, message)
    if any(hint in lowered for hint in _UNSUPPORTED_HINTS):
        return PhotoError(ErrorCode.ERR_UNSUPPORTED_FORMAT, message)
    return PhotoError(ErrorCode.ERR_DECODE_IMAGE, message or type(exc).__name__)


def _shrink_to_rgb(im: Image.Image, preview_size: int) -> tuple[Image.Image, bool]:
    """Decode ``im`` (reduced-scale where the plugin can) into an RGB image that fits
    ``preview_size``; returns it and whether ``draft`` reduced the decode."""
    full_size = im.size
    target = _fit(full_size, preview_size)
    box = None
    if target != full_size:
        # Proportional request, long side = preview_size: JPEG picks the largest DCT scale
        # (1/2, 1/4, 1/8) whose result still covers it; HEIF picks a large enough thumbnail.
        drafted = im.draft("RGB", target)
        if drafted is not None:
            box = drafted[1]
    reduced = im.size != full_size
    rgb = _to_rgb(im)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    elif rgb is im:
        rgb = im.copy()  # a plain in-memory Image, detached from the file and its plugin
    return rgb, reduced


def _fit(size: tuple[int, int], preview_size: int) -> tuple[int, int]:
    """Size (pixels) with the same aspect and long side ``preview_size``; never larger than
    ``size``."""
    width, height = size
    long_side = max(width, height)
    if long_side <= preview_size:
        return size
    scale = preview_size / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit sRGB ``"RGB"``."""
    im.load()  # decode now, while the file is open (and inside the caller's error mapping)
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(im))).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return im.convert("RGB")  # 1, L, P, YCbCr, RGBX, HSV, ...


def _to_uint8(samples: np.ndarray) -> np.ndarray:
    """Scale single-channel integer (16-bit, 0-65535) or float (0-1) samples to uint8 0-255."""
    if samples.dtype.kind == "f":
        values = np.nan_to_num(samples.astype(np.float64))
        peak = values.max(initial=0.0)
        values = values / peak if peak > 1.0 else values
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    values = np.clip(samples.astype(np.int64), 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK -> sRGB through the embedded ICC profile; naive conversion without one (or when the
    profile is unusable)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            return ImageCms.applyTransform(im, _cmyk_to_srgb_transform(icc))
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    return im.convert("RGB")


@functools.lru_cache(maxsize=8)
def _cmyk_to_srgb_transform(icc: bytes) -> ImageCms.ImageCmsTransform:
    """Building a transform costs ~45 ms for a 0.5 MB press profile; applying it ~10 ms."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(source, _srgb_profile(), "CMYK", "RGB")


def _metadata(read_exif: Callable[[], Image.Exif]) -> dict[str, Any]:
    """:func:`photo_metadata` of the EXIF ``read_exif()`` returns; ``{}`` when reading fails."""
    try:
        return photo_metadata(read_exif())
    except Exception:  # corrupt EXIF must not fail a decodable picture
        return {}


def _exif_orientation(im: Image.Image) -> int:
    """EXIF Orientation (1-8); 1 when absent, invalid or the EXIF block is unreadable."""
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # corrupt EXIF must not fail a decodable picture
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _heif_orientation(im: Image.Image, layout: BmffLayout) -> int:
    """Orientation still to apply to a HEIF/AVIF picture.

    libheif applies the ``irot``/``imir`` properties itself, and pillow_heif then resets the EXIF
    Orientation to 1 (keeping the old value in ``info["original_orientation"]``). HEIF says to
    ignore EXIF orientation, but files without ``irot``/``imir`` (early iOS 11 iPhones, e.g. the
    iphone_7 sample: EXIF 6, pixels stored sideways) rely on it, so it is applied in that case.
    """
    if im.format != "HEIF":  # AVIF through Pillow: irot/imir are reported as EXIF orientation
        return _exif_orientation(im)
    value = im.info.get("original_orientation")
    if layout.transforms & {"irot", "imir"} or not isinstance(value, int):
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _check_bmff(path: str | os.PathLike[str], size: int, code: ErrorCode) -> BmffLayout:
    """Raise ``code`` when the top-level boxes of an ISO-BMFF file run past its ``size`` bytes."""
    layout = read_bmff_layout(path)
    if layout.data_end > size:
        raise PhotoError(code, f"boxes declare {layout.data_end} bytes but the file has {size}")
    return layout


def _check_pixels(width: int, height: int, code: ErrorCode) -> None:
    """Header sanity: positive dimensions (else ``code``) and at most :data:`MAX_PIXELS`."""
    if width <= 0 or height <= 0:
        raise PhotoError(code, f"invalid dimensions {width}x{height}")
    if width * height > MAX_PIXELS:
        raise PhotoError(
            ErrorCode.ERR_IMAGE_TOO_LARGE,
            f"{width}x{height} = {width * height / 1e6:.0f} MP > {MAX_PIXELS / 1e6:.0f} MP",
        )


# --- camera RAW (rawpy / LibRaw) -----------------------------------------------------------------


def _decode_raw(
    f: BinaryIO, path: str | os.PathLike[str], size: int, preview_size: int
) -> DecodedPhoto:
    _check_raw_data_present(path, size)
    dng = is_dng(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            sizes = raw.sizes
            width, height = sizes.width, sizes.height
            if sizes.flip in (5, 6):
                width, height = height, width
            _check_pixels(width, height, ErrorCode.ERR_DECODE_RAW)
            thumb = _raw_thumbnail(raw)
            _check_raw_data_size(sizes, size, _thumbnail_bytes(thumb), dng)
            preview = _raw_embedded_preview(raw, thumb, preview_size)
            decoder = "raw-embedded-preview"
            if preview is None:
                # LibRaw applies sizes.flip itself; 8-bit sRGB output, camera white balance.
                pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
                preview, _ = _shrink_to_rgb(Image.fromarray(pixels), preview_size)
                decoder = "raw-half-size"
    except PhotoError:
        raise
    except MemoryError as exc:
        raise PhotoError(ErrorCode.ERR_IMAGE_TOO_LARGE, "out of memory") from exc
    except Exception as exc:  # rawpy.LibRawError and its subclasses, ValueError, ...
        raise PhotoError(ErrorCode.ERR_DECODE_RAW, str(exc) or type(exc).__name__) from exc
    _check_not_blank(preview)
    exif = _metadata(lambda: read_raw_exif(f))  # header only: IFD0 + Exif/GPS IFDs of ``f``
    return DecodedPhoto(preview, width, height, "raw", decoder, exif)


def _check_raw_data_present(path: str | os.PathLike[str], size: int) -> None:
    """Structural checks made before LibRaw opens the file (``size`` in bytes).

    Rejects TIFF-based RAWs whose raster data lies past the end of the file (a truncated copy) or
    whose full-resolution raster is far too small for its pixel count (header-only, see
    :data:`MIN_RAW_BYTES_PER_MEGAPIXEL`), and CR3s whose boxes run past the end. Other
    containers (RAF, ORF, RW2, CRW, MRW, X3F) have no such check here; every RAW, whatever its
    container, then goes through :func:`_check_raw_data_size` once LibRaw has read its header.

    Raises:
        PhotoError: ``ERR_DECODE_RAW``.
        OSError: the file cannot be read.
    """
    _check_bmff(path, size, ErrorCode.ERR_DECODE_RAW)
    for raster in read_tiff_rasters(path):
        if raster.data_end > size:
            raise PhotoError(
                ErrorCode.ERR_DECODE_RAW,
                f"image data runs to byte {raster.data_end} but the file has {size} bytes",
            )
        pixels = raster.width * raster.height
        if (
            raster.subfile_type == 0
            and raster.data_bytes is not None
            and raster.data_bytes * 1_000_000 < pixels * MIN_RAW_BYTES_PER_MEGAPIXEL
        ):
            raise PhotoError(
                ErrorCode.ERR_DECODE_RAW,
                f"raw data is {raster.data_bytes} bytes for {raster.width}x{raster.height} "
                "pixels (header-only file)",
            )


def _check_raw_data_size(
    sizes: rawpy.ImageSizes, file_bytes: int, thumbnail_bytes: int, dng: bool
) -> None:
    """Reject a RAW whose file cannot hold the raw data of the sensor LibRaw reports.

    LibRaw takes the sensor size (``sizes.raw_width x sizes.raw_height``, pixels) from the header
    and does not compare it with what the file holds: a header-only or data-stripped file opens
    without error, and its embedded preview extracts fine or LibRaw "decodes" garbage. rawpy
    exposes neither the raw data's offset nor its length, so the bytes the raw data can occupy
    are bounded from above by ``file_bytes`` less ``thumbnail_bytes`` (the embedded preview
    LibRaw extracts, 0 when none), and that must be at least ``raw_width x raw_height`` times
    :data:`MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL` (:data:`MIN_RAW_BYTES_PER_MEGAPIXEL` for a DNG)
    per million pixels. No pixel is decoded: this costs an integer comparison (the preview is
    extracted anyway, and :func:`~vibe_assets.imaging.formats.is_dng` reads IFD0 only).

    A file that fails is rejected even when its preview would make a fine picture: without its raw
    data it is a damaged copy, not the photo, and ingesting the preview would hide that.

    Raises:
        PhotoError: ``ERR_DECODE_RAW``, with the numbers, when the bound is not met.
    """
    per_megapixel = MIN_RAW_BYTES_PER_MEGAPIXEL if dng else MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL
    pixels = sizes.raw_width * sizes.raw_height
    room = max(0, file_bytes - thumbnail_bytes)
    if room * 1_000_000 < pixels * per_megapixel:
        needed = -(-pixels * per_megapixel // 1_000_000)
        raise PhotoError(
            ErrorCode.ERR_DECODE_RAW,
            f"raw data can take at most {room} bytes ({file_bytes}-byte file less a "
            f"{thumbnail_bytes}-byte preview) but the {sizes.raw_width}x{sizes.raw_height} "
            f"sensor needs at least {needed} ({per_megapixel} bytes/MP): header-only or "
            "data-stripped file",
        )


def _raw_thumbnail(raw: rawpy.RawPy) -> rawpy.Thumbnail | None:
    """LibRaw's embedded preview (the largest it finds), or ``None`` when there is none or it
    cannot be read."""
    try:
        return raw.extract_thumb()
    except rawpy.LibRawError:  # no thumbnail, unsupported thumbnail format, unreadable
        return None


def _thumbnail_bytes(thumb: rawpy.Thumbnail | None) -> int:
    """Bytes of the preview as LibRaw hands it out: the JPEG stream, or the bitmap's 8-bit RGB
    samples; 0 for none. LibRaw prepends an Exif block (~1.4 KB) to a JPEG preview that has none
    (an APP0-first JPEG), so this may exceed the bytes the preview takes in the file by that much:
    negligible against :data:`MIN_MAKER_RAW_BYTES_PER_MEGAPIXEL` x the sensor's megapixels."""
    if thumb is None:
        return 0
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return len(thumb.data)
    return int(np.asarray(thumb.data).nbytes)


def _raw_embedded_preview(
    raw: rawpy.RawPy, thumb: rawpy.Thumbnail | None, preview_size: int
) -> Image.Image | None:
    """The camera's embedded preview ``thumb`` (from :func:`_raw_thumbnail`) as an upright RGB
    image fitting ``preview_size``, or ``None`` when there is none, it is shorter than
    ``preview_size`` or it does not decode."""
    if thumb is None:
        return None
    orientation = _LIBRAW_FLIP_ORIENTATION.get(raw.sizes.flip, 1)
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            im = Image.open(io.BytesIO(thumb.data), formats=["JPEG"])
            if max(im.size) < preview_size:
                return None
            # The thumbnail's own EXIF orientation, when it has one, wins over LibRaw's flip.
            own = _exif_orientation(im)
            orientation = own if own != 1 else orientation
        else:  # rawpy.ThumbFormat.BITMAP: uint8 array (height, width, 3)
            im = Image.fromarray(np.ascontiguousarray(thumb.data, dtype=np.uint8))
            if max(im.size) < preview_size:
                return None
        preview, _ = _shrink_to_rgb(im, preview_size)
    except Exception:  # a broken preview is no reason to fail: decode the raw data instead
        return None
    return _apply_orientation(preview, orientation)


def _check_not_blank(preview: Image.Image) -> None:
    """LibRaw decodes some broken files to a uniform frame without raising: reject those."""
    samples = np.asarray(preview)
    if samples.max() <= BLANK_MAX_VALUE or samples.std() < BLANK_MIN_STD:
        raise PhotoError(ErrorCode.ERR_DECODE_RAW, "decoded to a blank frame")
