"""Progressive JPEG fast path: DC coefficients only at 1/8 scale, same picture, same error codes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vibe_assets.imaging import decode as decode_module
from vibe_assets.imaging import progressive as progressive_module
from vibe_assets.imaging.decode import decode_photo
from vibe_assets.imaging.errors import ErrorCode, PhotoError
from vibe_assets.imaging.progressive import dc_only_jpeg, is_eighth_scale
from vibe_assets_tests.conftest import SAMPLES, needs_samples


def picture(width: int, height: int) -> np.ndarray:
    """A deterministic RGB picture with edges, gradients and colour (uint8, HxWx3)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, ((x + y) // 11) % 256], axis=-1)
    return pixels.astype(np.uint8)


def jpeg(pixels: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def progressive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prog") / "big.jpg"
    path.write_bytes(jpeg(picture(4200, 2400), progressive=True))
    return path


def normal_preview(path: Path) -> np.ndarray:
    """The preview the ordinary reduced-scale decode gives (all scans)."""
    with Image.open(path) as im:
        preview, _ = decode_module._shrink_to_rgb(im, decode_module.PREVIEW_SIZE)
    return np.asarray(preview, dtype=np.int16)


def test_is_eighth_scale_follows_pillows_draft_rule() -> None:
    for size, target in [((4200, 2400), (512, 293)), ((4096, 4096), (512, 512))]:
        assert is_eighth_scale(size, target)
    assert not is_eighth_scale((4000, 2400), (512, 307))  # 4000 // 512 = 7: scale 1/4


def test_dc_only_preview_matches_full_decode(progressive: Path) -> None:
    decoded = decode_photo(progressive)
    assert decoded.decoder == "pillow-draft-dc"
    assert (decoded.width, decoded.height, decoded.image.size) == (4200, 2400, (512, 293))
    diff = np.abs(np.asarray(decoded.image, dtype=np.int16) - normal_preview(progressive))
    # synthetic hard colour edges are the worst case for chroma without AC terms
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 24


def scans(data: bytes) -> list[tuple[int, int]]:
    """``[(components, spectral start), ...]`` of every SOS header in ``data`` (a rough scan:
    good enough for files whose entropy-coded data happens not to contain ``FF DA``)."""
    found, pos = [], data.find(b"\xff\xda")
    while pos != -1:
        count = data[pos + 4]
        found.append((count, data[pos + 5 + 2 * count]))
        pos = data.find(b"\xff\xda", pos + 2)
    return found


def eighth(data: bytes, mode: str) -> np.ndarray:
    """``data`` decoded by libjpeg at 1/8 scale in ``mode`` ("L": the luma plane as stored)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft(mode, (im.width // 8, im.height // 8))
        return np.asarray(im.convert(mode))


def test_rewritten_file_keeps_segments_and_zeroes_ac_scans(progressive: Path) -> None:
    data = progressive.read_bytes()
    dc = dc_only_jpeg(data)
    assert dc is not None and dc.endswith(b"\xff\xd9") and len(dc) < len(data) / 2
    assert data[:200] == dc[:200]  # SOI and header segments untouched
    kept = [scan for scan in scans(dc) if scan[1] == 0]
    assert kept == [scan for scan in scans(data) if scan[1] == 0]  # every DC scan, in order
    assert scans(dc)[len(kept) :] == [(1, 1)] * 3  # then one zero-AC scan per component
    with Image.open(io.BytesIO(dc)) as im:
        assert im.size == (4200, 2400) and im.info.get("progressive")


# Block counts per component that exercise each way the zero-AC scan codes its end-of-band
# runs: 32768 blocks (one longest run + a run of 1), 15625 (one shorter run), 32767 (exactly
# one longest run), 157500 (four longest + one over 2**14); then 4:2:0 (chroma counts differ).
@pytest.mark.parametrize(
    ("size", "subsampling"),
    [((2048, 1024), 0), ((1000, 1000), 0), ((1208, 1736), 0), ((4200, 2400), 0), ((4200, 2400), 2)],
)
def test_luma_is_exact_at_eighth_scale(size: tuple[int, int], subsampling: int) -> None:
    data = jpeg(picture(*size), progressive=True, subsampling=subsampling)
    dc = dc_only_jpeg(data)
    assert dc is not None and scans(dc)[-3:] == [(1, 1)] * 3
    luma = eighth(dc, "L")
    assert luma.shape == (-(-size[1] // 8), -(-size[0] // 8))
    assert np.array_equal(luma, eighth(data, "L"))  # bit for bit
    if subsampling == 0:  # chroma at full resolution: its DC alone is exact too
        assert np.array_equal(eighth(dc, "RGB"), eighth(data, "RGB"))


@pytest.mark.parametrize(("mode", "components"), [("L", 1), ("CMYK", 4)])
def test_grey_and_cmyk_progressive_jpegs_are_exact(mode: str, components: int) -> None:
    out = io.BytesIO()
    Image.fromarray(picture(4200, 2400)).convert(mode).save(out, "JPEG", progressive=True)
    data = out.getvalue()
    dc = dc_only_jpeg(data)
    assert dc is not None and scans(dc)[-components:] == [(1, 1)] * components
    assert np.array_equal(eighth(dc, mode), eighth(data, mode))


def test_restart_markers_keep_dc_scans_without_zero_ac_scans() -> None:
    data = jpeg(picture(4200, 2400), progressive=True, restart_marker_blocks=64)
    dc = dc_only_jpeg(data)
    assert dc is not None and all(start == 0 for _, start in scans(dc))
    diff = np.abs(eighth(dc, "L").astype(np.int16) - eighth(data, "L"))
    assert diff.mean() < 2.0  # libjpeg smooths the missing AC terms: close, not exact


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.999])
def test_truncated_progressive_jpeg_keeps_its_error_code(
    progressive: Path, tmp_path: Path, fraction: float
) -> None:
    data = progressive.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert dc_only_jpeg(cut.read_bytes()) is None
    with pytest.raises(PhotoError) as info:
        decode_photo(cut)
    assert info.value.code == ErrorCode.ERR_TRUNCATED_IMAGE


def test_other_jpegs_take_the_ordinary_path(tmp_path: Path) -> None:
    baseline = jpeg(picture(4200, 2400))
    assert dc_only_jpeg(baseline) is None
    (tmp_path / "base.jpg").write_bytes(baseline)
    assert decode_photo(tmp_path / "base.jpg").decoder == "pillow-draft"
    small = tmp_path / "small.jpg"  # progressive, but 1/8 scale would be under 512 px
    small.write_bytes(jpeg(picture(2000, 1200), progressive=True))
    assert decode_photo(small).decoder == "pillow-draft"
    assert dc_only_jpeg(b"not a jpeg") is None


@needs_samples
@pytest.mark.parametrize(
    ("name", "max_mean"),
    # 4:2:0 chroma loses its lowest AC terms (mean 0.70 measured); 4:2:2 comes out exact
    [("lomiri_seeding_Clemens_Engelhardt.jpg", 1.0), ("lomiri_sunset_Aitzol_Berasategi.jpg", 0.0)],
)
def test_real_progressive_photos(name: str, max_mean: float) -> None:
    path = SAMPLES / "photos" / name
    decoded = decode_photo(path)
    assert decoded.decoder == "pillow-draft-dc"
    diff = np.abs(np.asarray(decoded.image, dtype=np.int16) - normal_preview(path))
    assert diff.mean() <= max_mean and np.percentile(diff, 99) <= 6


def eob_runs(scan: bytes) -> tuple[list[int], int]:
    """Decode a zero-AC scan from :func:`progressive._zero_ac_scan`: its end-of-band run
    lengths (codes ``0`` = EOB14 and ``10`` = the table's second symbol) and component id."""
    dht_length = int.from_bytes(scan[2:4], "big")
    table = scan[4 : 2 + dht_length]
    counts, symbols = table[1:17], table[17:]
    assert table[0] == 0x10 and counts[:2] == bytes([1, len(symbols) - 1]) and symbols[0] == 0xE0
    sos = scan[2 + dht_length :]
    assert sos[:4] == b"\xff\xda\x00\x08" and sos[6:10] == bytes([0x00, 1, 63, 0x00])
    coded = sos[10:].replace(b"\xff\x00", b"\xff")
    bits = "".join(format(byte, "08b") for byte in coded)
    runs, i = [], 0
    while i < len(bits):
        if bits[i] == "0":
            r, i = 14, i + 1
        elif bits[i : i + 2] == "10":
            r, i = symbols[1] >> 4, i + 2
        else:
            assert set(bits[i:]) == {"1"} and len(bits) - i < 8  # padding
            break
        runs.append(2**r + (int(bits[i : i + r], 2) if r else 0))
        i += r
    return runs, sos[5]


@pytest.mark.parametrize("blocks", [1, 2, 3, 16383, 16384, 32766, 32767, 32768, 65534, 157500])
def test_zero_ac_scan_covers_every_block_once(blocks: int) -> None:
    runs, component = eob_runs(progressive_module._zero_ac_scan(7, blocks))
    assert component == 7 and sum(runs) == blocks and all(run <= 32767 for run in runs)


def test_component_blocks_follow_the_sampling_factors() -> None:
    data = jpeg(picture(4201, 2399), progressive=True, subsampling=2)  # 4:2:0, odd sizes
    start = data.index(b"\xff\xc2") + 4
    frame = data[start : start - 2 + int.from_bytes(data[start - 2 : start], "big")]
    # luma ceil(4201/8) x ceil(2399/8); chroma ceil(ceil(4201/2)/8) x ceil(ceil(2399/2)/8)
    assert progressive_module._component_blocks(frame) == [
        (1, 526 * 300),
        (2, 263 * 150),
        (3, 263 * 150),
    ]
