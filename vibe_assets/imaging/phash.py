"""Perceptual hash of an image's stored preview, and where the state database keeps it.

The hash is ``imagehash.phash`` with its defaults (``hash_size=8``: the signs of the 8 x 8
lowest DCT frequencies of a 32 x 32 grey image against their median, **64 bits**), taken of the
stored preview JPEG (:func:`phash_of_jpeg`) decoded at reduced scale in grey (JPEG DCT scaling,
``Image.draft("L", (32, 32))``: a 512 px preview decodes at 1/8, e.g. 64 x 43 px, then Pillow's
Lanczos brings it to 32 x 32). Hashing the stored JPEG's pixels, not the decoder's in-memory
image, makes the hash of an image the same whether it was computed at decode time
(:func:`vibe_assets.assets.previews.decode_and_store`) or later from the preview file
(:func:`vibe_assets.duplicates.ensure_phashes`). Cost: ~0.5 ms per 512 px preview on this
2-vCPU machine (a full-scale decode of the same JPEG then ``phash``: ~2.3 ms).

Why pHash 64-bit (measured by ``python benchmarks/duplicates.py --samples ../shared/samples``
on the 13 sample photos and RAWs plus copies made from them, Hamming distance in bits out of 64,
max over the 13 originals):

========================================  ======  =====  =====  =====  =====
copy of each sample vs its original       pHash8  dHash8 aHash8 wHash8 pHash16/256
========================================  ======  =====  =====  =====  =====
JPEG q75 / half size q80 / quarter q70    2       1-4    0      2      14
PNG conversion                            2       1      0      0      16
EXIF stripped (APP1 removed)              0       0      0      0      0
brightness +10 % / +25 %                  4 / 8   5 / 8  2 / 3  2 / 8  16 / 20
contrast +15 %                            4       1      2      2      14
crop 3 % each side / 6 % each side        8 / 18  9 / 16 7 / 12 10/14  62 / 104
unrelated sample pairs (78): min / p5     20 / 24 17/23  10/16  10/16  106 / 112
========================================  ======  =====  =====  =====  =====

pHash8 keeps the widest gap between the edits we call "near" (at most 8 bits, 3 % crop
included) and unrelated photos (at least 20 bits), where aHash and wHash put unrelated pairs
as close as 10 bits and dHash at 17 bits with a 3 % crop already at 9. A 256-bit pHash does
not separate them better relative to its length, and costs 4x the storage and the index
blocks. Hence :data:`vibe_assets.duplicates.DEFAULT_NEAR_THRESHOLD` = 8 bits.

Stored as 16 lowercase hex digits (``str(imagehash.ImageHash)``) in ``decode_outcomes.phash``
(state schema version 3); NULL for images decoded before that version (computed lazily). If
the hash function ever changes, a new migration must clear the column.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from PIL import Image

from vibe_assets.state import StateDB

PHASH_BITS = 64
"""Length of a perceptual hash (bits)."""
PHASH_HEX_DIGITS = PHASH_BITS // 4
_IN_CHUNK = 500  # values per SQL IN (...) list


def phash_of_image(image: Image.Image) -> str:
    """The 64-bit pHash of ``image`` (any mode), as 16 hex digits."""
    import imagehash  # imports scipy (~0.2 s): only where hashes are computed

    return str(imagehash.phash(image, hash_size=8))


def phash_of_jpeg(data: bytes) -> str:
    """The 64-bit pHash of a preview JPEG (its bytes), decoded at reduced scale in grey (see
    the module docstring), as 16 hex digits.

    Raises:
        OSError: ``data`` is not a readable image (``PIL.UnidentifiedImageError`` is one).
    """
    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (32, 32))  # JPEG DCT scaling; a no-op for other formats
        return phash_of_image(im)


def phash_int(value: str) -> int:
    """A hex pHash as an unsigned 64-bit integer.

    Raises:
        ValueError: not 16 hex digits.
    """
    if len(value) != PHASH_HEX_DIGITS:
        raise ValueError(f"a pHash has {PHASH_HEX_DIGITS} hex digits, got {value!r}")
    return int(value, 16)


def hamming(a: str, b: str) -> int:
    """Hamming distance (bits, 0-64) between two hex pHashes."""
    return (phash_int(a) ^ phash_int(b)).bit_count()


# -- the state database (decode_outcomes.phash, schema version 3) --------------------------------


def store_phash(db: StateDB, sha256: str, value: str) -> bool:
    """Record the pHash of an image that has a preview outcome; True when a row was updated
    (False: no preview outcome for these bytes, e.g. it failed or was collected meanwhile).

    Raises:
        ValueError: ``value`` is not 16 hex digits.
    """
    return store_phashes(db, [(sha256, value)]) > 0


def store_phashes(db: StateDB, items: Iterable[tuple[str, str]]) -> int:
    """Record ``(sha256, hex pHash)`` pairs in one write transaction (rows without a preview
    outcome are left alone); returns the rows updated.

    Raises:
        ValueError: a value is not 16 hex digits (nothing is written).
    """
    rows = []
    for sha, value in items:
        phash_int(value)
        rows.append((value.lower(), sha))
    with db.write() as conn:
        before = conn.total_changes
        conn.executemany(
            "UPDATE decode_outcomes SET phash = ? WHERE sha256 = ? AND status = 'preview'", rows
        )
        return conn.total_changes - before


def stored_phashes(db: StateDB, shas: Iterable[str]) -> dict[str, str | None]:
    """``{sha256: hex pHash or None}`` of those of ``shas`` with a preview outcome (None: decoded
    before hashes were stored, not computed yet); other SHA-256s are absent."""
    wanted = list(dict.fromkeys(shas))
    out: dict[str, str | None] = {}
    with db.read() as conn:
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            out.update(
                conn.execute(
                    "SELECT sha256, phash FROM decode_outcomes"
                    f" WHERE status = 'preview' AND sha256 IN ({marks})",
                    chunk,
                ).fetchall()
            )
    return out
