"""Duplicate grouping at library scale (issue 14), and the pHash measurement on the samples.

Usage::

    python benchmarks/duplicates.py [--images 100000] [--dim 512] [--no-store] [--seed 0]
    python benchmarks/duplicates.py --samples ../shared/samples

**Scale** (default). Synthetic data with a known answer, one JSON object on stdout:

- hashes: ``--images`` random 64-bit pHashes with 32 bits set (a pHash sets the bits above the
  median of its 64 DCT terms), of which ``--near-pairs`` are planted copies 0-8 bits from another
  one (uniformly), and ``--blank`` images sharing one hash (a run of black frames);
- vectors: unit (``--dim``,) float32 vectors shaped like CLIP's (a component shared by all, one
  of 2,000 topics, noise: unrelated images at cosine ~0.3, same topic ~0.5), of which
  ``--bursts`` planted groups of 3-5 frames at cosine ~0.93-0.98 with each other and
  ``taken_at`` within 4 s (other images spread over 10 years).

``core`` times the algorithms of :mod:`vibe_assets.duplicates` on the arrays (near: multi-index
hashing + components; similar: blocked matrix products + leader clustering; similar with a 60 s
window), with recall (planted pairs / bursts found whole) and the groups that hold nothing
planted. ``store`` (unless ``--no-store``; in a subprocess, so its peak RSS is its own) writes the
same library into a temporary ``VIBE_HOME`` (listings of 100 folders with 2 % exact copies,
decode outcomes with pHashes, embeddings in the cache) and times :func:`find_groups` per tier,
reading everything from the store as the CLI and the asset do. ``peak_rss_mb``: ``ru_maxrss``.

**Samples** (``--samples DIR``): decodes every photo and RAW of ``DIR/photos`` and ``DIR/raw``
into its preview as the pipeline does, makes copies of each (JPEG q75, half size q80, quarter
size q70, PNG, EXIF stripped by dropping the APP1 segments, brightness +10 % / +25 %, contrast
+15 %, crop 3 % / 6 % per side) and prints, per hash function, the Hamming distances of each copy
kind to its original (max, mean) and of the unrelated pairs of originals (min, 5th percentile,
median). ``phash8`` is ours (:func:`vibe_assets.imaging.phash.phash_of_jpeg`); the others are
imagehash's functions on the full-scale preview.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

YEAR_S = 365.25 * 86400


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- synthetic library ----------------------------------------------------------------------------


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    """Hashes, vectors, times and the planted answers (see the module docstring)."""
    rng = np.random.default_rng(args.seed)
    n = args.images
    # 32 of 64 bits set, like a pHash (bits above the median)
    bits = rng.random((n, 64)).argsort(axis=1) < 32
    hashes = np.packbits(bits, axis=1, bitorder="little").view("<u8").reshape(-1).copy()
    near_src = rng.choice(n // 2, args.near_pairs, replace=False)
    near_dst = n // 2 + rng.choice(n // 2, args.near_pairs, replace=False)
    for s, d in zip(near_src, near_dst, strict=True):
        flips = rng.choice(64, int(rng.integers(0, 9)), replace=False)
        value = int(hashes[s])
        for f in flips:
            value ^= 1 << int(f)
        hashes[d] = value
    taken = set(near_src.tolist()) | set(near_dst.tolist())
    free = np.array(sorted(set(range(n)) - taken))
    blank = rng.choice(free, args.blank, replace=False)
    hashes[blank] = hashes[blank[0]]

    dim = args.dim
    shared = rng.normal(size=dim)
    shared /= np.linalg.norm(shared)
    topics = rng.normal(size=(2000, dim))
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    vectors = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 10_000):
        b = min(a + 10_000, n)
        noise = rng.normal(size=(b - a, dim)) / np.sqrt(dim)
        chunk = 0.8 * shared + 0.6 * topics[rng.integers(0, 2000, b - a)] + noise
        vectors[a:b] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    times = rng.uniform(0, 10 * YEAR_S, n) + 1.3e9
    rest = np.array(sorted(set(range(n)) - taken - set(blank.tolist())))
    rng.shuffle(rest)
    bursts = []
    pos = 0
    for _ in range(args.bursts):
        size = int(rng.integers(3, 6))
        frames = rest[pos : pos + size]
        pos += size
        base = vectors[frames[0]].astype(np.float64)
        eps = rng.uniform(0.10, 0.18)  # frame-to-frame cosine ~ 1 / (1 + 2 eps^2 ...) ~0.93-0.98
        start = times[frames[0]]
        for k, f in enumerate(frames):
            v = base + eps * rng.normal(size=dim) / np.sqrt(dim) * np.sqrt(2)
            vectors[f] = v / np.linalg.norm(v)
            times[f] = start + k * rng.uniform(0.2, 1.0)
        bursts.append(frames)
    return {
        "hashes": hashes,
        "near_pairs": list(zip(near_src.tolist(), near_dst.tolist(), strict=True)),
        "blank": blank,
        "vectors": vectors,
        "times": times,
        "bursts": bursts,
        "rank": rng.permutation(n),
    }


def _group_of(groups: list[np.ndarray], n: int) -> np.ndarray:
    label = np.full(n, -1, dtype=np.int64)
    for k, g in enumerate(groups):
        label[g] = k
    return label


def core(args: argparse.Namespace) -> dict[str, Any]:
    from vibe_assets.duplicates import (
        DEFAULT_NEAR_THRESHOLD,
        DEFAULT_SIMILAR_THRESHOLD,
        leader_groups,
        near_components,
        similar_pairs,
    )

    t0 = time.perf_counter()
    data = synthetic(args)
    n = args.images
    out: dict[str, Any] = {"generate_s": round(time.perf_counter() - t0, 2)}

    t0 = time.perf_counter()
    groups = near_components(data["hashes"], DEFAULT_NEAR_THRESHOLD)
    out["near_s"] = round(time.perf_counter() - t0, 2)
    label = _group_of(groups, n)
    found = sum(label[a] >= 0 and label[a] == label[b] for a, b in data["near_pairs"])
    blank_ok = len(set(label[data["blank"]].tolist())) == 1 and label[data["blank"][0]] >= 0
    planted = {a for pair in data["near_pairs"] for a in pair} | set(data["blank"].tolist())
    out["near"] = {
        "groups": len(groups),
        "planted_pairs": len(data["near_pairs"]),
        "planted_pairs_found": int(found),
        "blank_run_one_group": bool(blank_ok),
        "groups_without_planted": sum(not (set(g.tolist()) & planted) for g in groups),
    }

    vectors, rank = data["vectors"], data["rank"]
    for name, window in (("similar", None), ("similar_window_60s", 60.0)):
        t0 = time.perf_counter()
        times = data["times"] if window else None
        i, j, _ = similar_pairs(vectors, DEFAULT_SIMILAR_THRESHOLD, times, window)
        groups = leader_groups(n, i, j, rank)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        label = _group_of(groups, n)
        whole = sum(label[b[0]] >= 0 and len(set(label[b].tolist())) == 1 for b in data["bursts"])
        planted = {int(f) for b in data["bursts"] for f in b}
        out[name] = {
            "pairs": len(i),
            "groups": len(groups),
            "planted_bursts": len(data["bursts"]),
            "planted_bursts_found_whole": int(whole),
            "groups_without_planted": sum(not (set(g.tolist()) & planted) for g in groups),
        }
    out["peak_rss_mb"] = _rss_mb()
    return out


# -- through the store ----------------------------------------------------------------------------


def store_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The synthetic library written into a temporary store, grouped by :func:`find_groups`."""
    from vibe_assets.duplicates import find_groups, tier_counts
    from vibe_assets.resources.store import StoreResource
    from vibe_assets.state import write_hashes

    data = synthetic(args)
    n = args.images
    model_id = "ViT-B-32/random-seed0"
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as home:
        store = StoreResource(home=home, size_limit_bytes=2**40)
        shas = [f"{i:064x}" for i in range(n)]
        t0 = time.perf_counter()
        rng = np.random.default_rng(args.seed + 1)
        copies = set(rng.choice(n, n // 50, replace=False).tolist())  # 2 % have an exact copy
        folders = 100
        for f in range(folders):
            files = {}
            for i in range(f, n, folders):
                entry = {"size": 3_000_000 + i, "mtime_ns": 10**18 + i, "inode": i + 1}
                files[f"/lib/f{f}/img{i}.jpg"] = {**entry, "format": "jpeg", "sha256": shas[i]}
                if i in copies:
                    copy = {**entry, "mtime_ns": 10**18 + n + i, "inode": n + i + 1}
                    files[f"/lib/f{f}/copy/img{i}.jpg"] = {
                        **copy,
                        "format": "jpeg",
                        "sha256": shas[i],
                    }
            write_hashes(store.state, f"f{f}", {"root": f"/lib/f{f}", "files": files})
        hashes = [f"{int(h):016x}" for h in data["hashes"]]
        with store.state.write() as conn:
            conn.executemany(
                "INSERT INTO decode_outcomes (sha256, status, width, height, format, decoder,"
                " exif, phash, updated_at) VALUES (?, 'preview', ?, ?, 'jpeg', 'pillow', ?, ?, 0)",
                [
                    (
                        shas[i],
                        6000 - int(data["rank"][i] % 7),
                        4000,
                        json.dumps({"taken_at": _iso(data["times"][i]), "camera_model": "X"}),
                        hashes[i],
                    )
                    for i in range(n)
                ],
            )
        for a in range(0, n, 5000):
            store.put_embeddings(
                model_id,
                ((shas[i], data["vectors"][i]) for i in range(a, min(a + 5000, n))),
            )
        out["setup_s"] = round(time.perf_counter() - t0, 1)
        for tiers in (["exact"], ["near"], ["similar"]):
            t0 = time.perf_counter()
            groups = find_groups(store, model_id, tiers=tiers)
            out[f"{tiers[0]}_s"] = round(time.perf_counter() - t0, 2)
            out[f"{tiers[0]}_groups"] = tier_counts(groups, tiers)[tiers[0]]["groups"]
        out["similar_s_note"] = "includes the near tier (a near group takes part via its keeper)"
        store.close()
    out["peak_rss_mb"] = _rss_mb()
    return out


def _iso(seconds: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# -- the samples ----------------------------------------------------------------------------------


def _strip_app1(data: bytes) -> bytes:
    """A JPEG without its APP1 segments (EXIF, XMP): the pixels' bytes untouched."""
    out = bytearray(data[:2])
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xE1:
            out += data[i : i + 2 + length]
        i += 2 + length
    out += data[i:]
    return bytes(out)


def samples(folder: Path) -> dict[str, Any]:
    import imagehash
    from PIL import Image, ImageEnhance

    from vibe_assets.imaging.decode import PREVIEW_SIZE, decode_photo, encode_preview
    from vibe_assets.imaging.phash import phash_of_jpeg

    def hashes(path: Path) -> dict[str, Any]:
        preview = encode_preview(decode_photo(str(path), preview_size=PREVIEW_SIZE).image)
        with Image.open(io.BytesIO(preview)) as im:
            rgb = im.convert("RGB")
        return {
            "phash8": imagehash.hex_to_hash(phash_of_jpeg(preview)),
            "phash16": imagehash.phash(rgb, 16),
            "dhash8": imagehash.dhash(rgb, 8),
            "ahash8": imagehash.average_hash(rgb, 8),
            "whash8": imagehash.whash(rgb, 8),
        }

    sources = sorted((folder / "photos").glob("*")) + sorted((folder / "raw").glob("*"))
    base: dict[str, dict[str, Any]] = {}
    copies: dict[str, dict[str, dict[str, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            base[src.name] = hashes(src)
            full = decode_photo(str(src), preview_size=8192).image.convert("RGB")
            w, h = full.size
            made: dict[str, Path] = {}

            def save(
                kind: str, image: Any, suffix: str = ".jpg", stem: str = src.stem, **kw: Any
            ) -> None:
                path = Path(tmp) / f"{stem}.{kind}{suffix}"
                image.save(path, **kw)
                made[kind] = path  # noqa: B023 (called at once, in this iteration)

            save("jpeg_q75", full, quality=75)
            save("half_q80", full.resize((w // 2, h // 2), Image.Resampling.LANCZOS), quality=80)
            save(
                "quarter_q70",
                full.resize((max(1, w // 4), max(1, h // 4)), Image.Resampling.LANCZOS),
                quality=70,
            )
            save("png", full, ".png")
            if src.suffix.lower() in (".jpg", ".jpeg"):
                path = Path(tmp) / f"{src.stem}.noexif.jpg"
                path.write_bytes(_strip_app1(src.read_bytes()))
                made["exif_stripped"] = path
            save("bright_10", ImageEnhance.Brightness(full).enhance(1.10), quality=90)
            save("bright_25", ImageEnhance.Brightness(full).enhance(1.25), quality=90)
            save("contrast_15", ImageEnhance.Contrast(full).enhance(1.15), quality=90)
            for pct in (3, 6):
                dx, dy = int(w * pct / 100), int(h * pct / 100)
                save(f"crop_{pct}", full.crop((dx, dy, w - dx, h - dy)), quality=90)
            for kind, path in made.items():
                copy = hashes(path)
                copies.setdefault(kind, {})[src.name] = {
                    fn: int(base[src.name][fn] - copy[fn]) for fn in copy
                }
    functions = list(next(iter(base.values())))
    result: dict[str, Any] = {"originals": len(sources), "copy_kinds": list(copies)}
    pairs = list(itertools.combinations(base, 2))
    for fn in functions:
        unrelated = [int(base[a][fn] - base[b][fn]) for a, b in pairs]
        row: dict[str, Any] = {
            "bits": int(base[sources[0].name][fn].hash.size),
            "unrelated_pairs": len(pairs),
            "unrelated_min": min(unrelated),
            "unrelated_p5": float(np.percentile(unrelated, 5)),
            "unrelated_median": float(np.median(unrelated)),
        }
        for kind, per_source in copies.items():
            values = [d[fn] for d in per_source.values()]
            row[kind] = {"max": max(values), "mean": round(float(np.mean(values)), 1)}
        result[fn] = row
    closest = sorted((int(base[a]["phash8"] - base[b]["phash8"]), a, b) for a, b in pairs)[:3]
    result["phash8_closest_unrelated"] = [list(c) for c in closest]
    result["phash8_per_copy"] = {
        kind: {name: d["phash8"] for name, d in per.items()} for kind, per in copies.items()
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--near-pairs", type=int, default=2000)
    parser.add_argument("--blank", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-store", action="store_true", help="skip the store phase")
    parser.add_argument("--phase", choices=["core", "store"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, default=None, help="measure pHash on samples")
    args = parser.parse_args()
    if args.samples is not None:
        print(json.dumps(samples(args.samples), indent=1))
        return
    if args.phase == "store":
        print(json.dumps(store_phase(args)))
        return
    result: dict[str, Any] = {
        "images": args.images,
        "dim": args.dim,
        "machine": f"{len(__import__('os').sched_getaffinity(0))} CPUs",
        "core": core(args),
    }
    if not args.no_store:
        cmd = [sys.executable, __file__, "--phase", "store", *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result["store"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
