"""Per-image cost of our decode path against a naive one, per format, on the same files.

    python benchmarks/decode.py FOLDER [--repeat 3] [--preview-size 512]

Walks FOLDER recursively and sniffs every file's format from its content
(:func:`vibe_assets.imaging.formats.sniff_format`); files that are not image candidates
(``README.md``, ...) are skipped. Each candidate goes through two paths:

- ours: what ``photo_previews`` does per image: ``decode_photo`` (reduced-scale JPEG decode, RAW
  embedded preview or half-size, EXIF metadata) + ``encode_preview`` + ``encode_thumbnail``;
- naive: Pillow ``Image.open(p).convert("RGB")`` (full decode), resize to long side
  ``--preview-size`` (LANCZOS), ``ImageOps.exif_transpose``; for RAW, rawpy ``postprocess()`` at
  full size, then the same resize. It then runs the same two encoders, so both columns are
  end-to-end per image; ``*_decode_ms`` are the times before encoding.

One untimed pass first warms the page cache and sorts files out: a file our decoder rejects is
counted under its error code and not timed; a file only the naive path fails on is counted under
``naive_failed``. Then ``--repeat`` rounds time every file on both paths back to back (which path
goes first alternates between rounds); each file contributes the median of its rounds. Timings are
single-threaded wall-clock milliseconds per image.

Prints JSON: per sniffed format, ``files``, ``timed``, ``failed`` (``{code: count}``), ``ours_ms``,
``naive_ms``, ``ratio`` (naive / ours, > 1 means ours is faster), the decode-only figures, and the
same over all timed files under ``total``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL
import pillow_heif
import rawpy
from PIL import Image, ImageOps

from vibe_assets.imaging.decode import decode_photo, encode_preview, encode_thumbnail
from vibe_assets.imaging.errors import PhotoError
from vibe_assets.imaging.formats import is_candidate, read_head, sniff_format

THUMBNAIL_SIZE = 256  # as vibe_assets.assets.previews


def find_candidates(folder: Path) -> tuple[list[tuple[Path, str]], int]:
    """``([(path, sniffed format or "none"), ...], files skipped as non-images)``, sorted."""
    found, skipped = [], 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            try:
                head = read_head(path)
                fmt = sniff_format(head, path)
            except OSError:
                found.append((path, "none"))  # unreadable: decode_photo reports its code
                continue
            if is_candidate(name, head, fmt):
                found.append((path, fmt or "none"))
            else:
                skipped += 1
    return found, skipped


def fit(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``size`` scaled to ``long_side`` (pixels), never enlarged."""
    width, height = size
    scale = long_side / max(width, height)
    if scale >= 1:
        return size
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode(image: Image.Image) -> None:
    encode_preview(image)
    encode_thumbnail(image, THUMBNAIL_SIZE)


def ours(path: Path, preview_size: int) -> float:
    """Run our path on ``path``; returns the seconds spent before encoding.

    Raises:
        PhotoError: our decoder rejects the file.
    """
    start = time.perf_counter()
    photo = decode_photo(path, preview_size=preview_size)
    decoded = time.perf_counter() - start
    encode(photo.image)
    return decoded


def naive(path: Path, fmt: str, preview_size: int) -> float:
    """Run the naive path on ``path``; returns the seconds spent before encoding.

    Raises:
        Exception: whatever Pillow or rawpy raise on this file.
    """
    start = time.perf_counter()
    if fmt == "raw":
        with rawpy.imread(os.fspath(path)) as raw:
            image = Image.fromarray(raw.postprocess())
        image = image.resize(fit(image.size, preview_size), Image.Resampling.LANCZOS)
    else:
        with Image.open(path) as im:
            image = im.convert("RGB")  # keeps info["exif"] for exif_transpose
        image = image.resize(fit(image.size, preview_size), Image.Resampling.LANCZOS)
        image = ImageOps.exif_transpose(image)
    decoded = time.perf_counter() - start
    encode(image)
    return decoded


def timed(run: Callable[[], float]) -> tuple[float, float]:
    """``(total seconds, seconds before encoding)`` of one call of ``run``."""
    start = time.perf_counter()
    decoded = run()
    return time.perf_counter() - start, decoded


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Mean ms/image of each path over ``rows`` (one per timed file) and naive/ours ratios."""
    if not rows:
        return {"timed": 0}
    out: dict[str, Any] = {"timed": len(rows)}
    for key in ("ours", "naive", "ours_decode", "naive_decode"):
        out[f"{key}_ms"] = round(1000 * statistics.fmean(row[key] for row in rows), 2)
    out["ratio"] = round(out["naive_ms"] / out["ours_ms"], 2)
    out["decode_ratio"] = round(out["naive_decode_ms"] / out["ours_decode_ms"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per file (median)")
    parser.add_argument("--preview-size", type=int, default=512, help="long side, pixels")
    args = parser.parse_args()
    if not args.folder.is_dir():
        parser.error(f"not a folder: {args.folder}")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    pillow_heif.register_heif_opener()  # the naive path may open HEIC too
    size = args.preview_size

    candidates, skipped = find_candidates(args.folder)
    files: Counter[str] = Counter(fmt for _, fmt in candidates)
    failed: dict[str, Counter[str]] = defaultdict(Counter)
    naive_failed: dict[str, Counter[str]] = defaultdict(Counter)
    to_time: list[tuple[Path, str]] = []
    for path, fmt in candidates:  # warm-up pass: page cache, lazy imports, who fails
        try:
            ours(path, size)
        except PhotoError as exc:
            failed[fmt][exc.code.value] += 1
            continue
        try:
            naive(path, fmt, size)
        except Exception as exc:
            naive_failed[fmt][type(exc).__name__] += 1
            continue
        to_time.append((path, fmt))

    samples: dict[Path, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for round_ in range(args.repeat):
        for path, fmt in to_time:
            runs = [
                ("ours", lambda p=path: ours(p, size)),
                ("naive", lambda p=path, f=fmt: naive(p, f, size)),
            ]
            for name, run in runs if round_ % 2 == 0 else runs[::-1]:
                total, decoded = timed(run)
                samples[path][name].append(total)
                samples[path][f"{name}_decode"].append(decoded)
    medians = {
        path: {key: statistics.median(values) for key, values in per_path.items()}
        for path, per_path in samples.items()
    }

    formats: dict[str, Any] = {}
    for fmt in sorted(files):
        entry: dict[str, Any] = {"files": files[fmt]}
        entry.update(summary([medians[p] for p, f in to_time if f == fmt]))
        if failed[fmt]:
            entry["failed"] = dict(sorted(failed[fmt].items()))
        if naive_failed[fmt]:
            entry["naive_failed"] = dict(sorted(naive_failed[fmt].items()))
        formats[fmt] = entry
    total: dict[str, Any] = {"files": len(candidates)}
    total.update(summary([medians[p] for p, _ in to_time]))
    all_failed = sum((failed[f] for f in failed), Counter())
    total["failed"] = dict(sorted(all_failed.items()))

    report = {
        "folder": str(args.folder),
        "repeat": args.repeat,
        "preview_size": size,
        "skipped_non_images": skipped,
        "formats": formats,
        "total": total,
        "environment": {
            "python": platform.python_version(),
            "pillow": PIL.__version__,
            "pillow_heif": pillow_heif.__version__,
            "rawpy": rawpy.__version__,
            "libraw": ".".join(map(str, rawpy.libraw_version)),
            "cpus": os.cpu_count(),
        },
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
