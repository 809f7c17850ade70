"""Progressive JPEG fast path: DC scans only at 1/8 scale, same picture, same error codes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vibe_assets.imaging import decode as decode_module
from vibe_assets.imaging.decode import decode_photo
from vibe_assets.imaging.errors import ErrorCode, PhotoError
from vibe_assets.imaging.progressive import dc_scans_only, is_eighth_scale
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


def test_rewritten_file_keeps_segments_and_drops_ac_scans(progressive: Path) -> None:
    data = progressive.read_bytes()
    dc = dc_scans_only(data)
    assert dc is not None and dc.endswith(b"\xff\xd9") and len(dc) < len(data) / 2
    assert data[:200] == dc[:200]  # SOI and header segments untouched
    with Image.open(io.BytesIO(dc)) as im:
        assert im.size == (4200, 2400) and im.info.get("progressive")


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.999])
def test_truncated_progressive_jpeg_keeps_its_error_code(
    progressive: Path, tmp_path: Path, fraction: float
) -> None:
    data = progressive.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * fraction)])
    assert dc_scans_only(cut.read_bytes()) is None
    with pytest.raises(PhotoError) as info:
        decode_photo(cut)
    assert info.value.code == ErrorCode.ERR_TRUNCATED_IMAGE


def test_other_jpegs_take_the_ordinary_path(tmp_path: Path) -> None:
    baseline = jpeg(picture(4200, 2400))
    assert dc_scans_only(baseline) is None
    (tmp_path / "base.jpg").write_bytes(baseline)
    assert decode_photo(tmp_path / "base.jpg").decoder == "pillow-draft"
    small = tmp_path / "small.jpg"  # progressive, but 1/8 scale would be under 512 px
    small.write_bytes(jpeg(picture(2000, 1200), progressive=True))
    assert decode_photo(small).decoder == "pillow-draft"
    assert dc_scans_only(b"not a jpeg") is None


@needs_samples
@pytest.mark.parametrize(
    "name", ["lomiri_seeding_Clemens_Engelhardt.jpg", "lomiri_sunset_Aitzol_Berasategi.jpg"]
)
def test_real_progressive_photos(name: str) -> None:
    path = SAMPLES / "photos" / name
    decoded = decode_photo(path)
    assert decoded.decoder == "pillow-draft-dc"
    diff = np.abs(np.asarray(decoded.image, dtype=np.int16) - normal_preview(path))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12
