"""Recursive scan of a photo folder: which files are candidate images, with their stat.

Hidden files and folders (name starting with ``.``) are skipped. Symbolic links are never followed
(neither files nor folders), so a scan never reads outside its folder. Format comes from the
content (first bytes), not the extension; a file with an image extension whose content is not an
image is still listed, so that it is reported with an error code instead of vanishing silently.
A folder whose root no longer exists is *removed* (an empty listing, no failure), not a failed file.

Archive folders (:data:`ARCHIVE_DIR_NAMES`: ``_VibeDuplicates``, where ``vibe-assets duplicates
archive`` moves duplicates, and ``_VibeArchive``, where ``vibe-assets curate archive`` moves a
selection; see :mod:`vibe_assets.moves`) are never scanned, at any depth: a subfolder with one of
these names is skipped (counted in ``skipped_other``), and a folder that lies inside one lists
nothing. What was archived therefore leaves the collections, and comes back only by an undo.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vibe_assets.imaging.errors import PhotoError, error_from_os_error
from vibe_assets.imaging.formats import is_candidate, read_head, sniff_format

DUPLICATES_DIR = "_VibeDuplicates"
"""Folder (under a registered folder) that ``duplicates archive`` moves duplicates into."""
ARCHIVE_DIR = "_VibeArchive"
"""Folder (under a registered folder) that ``curate archive`` moves a selection into."""
ARCHIVE_DIR_NAMES: frozenset[str] = frozenset({DUPLICATES_DIR, ARCHIVE_DIR})
"""Folder names that are never scanned, at any depth (exact, case-sensitive names)."""


def is_archive_path(path: str | Path) -> bool:
    """True when a component of ``path`` (taken as written: nothing is resolved) is an archive
    folder name (:data:`ARCHIVE_DIR_NAMES`), i.e. the path is, or lies inside, an archive."""
    return any(part in ARCHIVE_DIR_NAMES for part in Path(path).parts)


@dataclass(frozen=True)
class ScannedFile:
    """One candidate image: absolute ``path``, ``size`` (bytes), ``mtime_ns``, ``inode``,
    sniffed ``format`` (None when the content is not a recognised image)."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    format: str | None


@dataclass
class ScanResult:
    """Result of :func:`scan_folder`: candidate ``files``, per-path ``failures``
    (``{"path", "code", "message"}``), counts of skipped entries, and ``removed`` (the root
    itself no longer exists: the listing is empty and that is not a failure)."""

    files: list[ScannedFile] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    skipped_hidden: int = 0
    skipped_symlinks: int = 0
    skipped_other: int = 0
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (stored per folder by ``photo_files``)."""
        return {
            "files": [asdict(f) for f in self.files],
            "failures": self.failures,
            "skipped_hidden": self.skipped_hidden,
            "skipped_symlinks": self.skipped_symlinks,
            "skipped_other": self.skipped_other,
            "removed": self.removed,
        }


def _failure(path: str | Path, err: PhotoError) -> dict[str, str]:
    return {"path": str(path), **err.to_dict()}


def _is_missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT


def scan_folder(root: str | Path, recursive: bool = True) -> ScanResult:
    """Walk ``root`` with ``os.scandir`` (into subfolders when ``recursive``) and list
    candidate image files.

    Unreadable folders/files are recorded as failures (``ERR_PERMISSION_DENIED``,
    ``ERR_FILE_VANISHED``, ...), never raised. A ``root`` that no longer exists (``ENOENT``:
    deleted, or a parent folder gone) gives an empty result with ``removed=True`` and no failure,
    so downstream assets remove its points and report nothing failed; a root that exists but
    cannot be read (e.g. ``EACCES``) is a failure on the root's path, not a removal.

    Archive folders (:data:`ARCHIVE_DIR_NAMES`) are never entered (each counts in
    ``skipped_other``); a ``root`` inside one lists nothing (``skipped_other`` = 1).

    Returns:
        ScanResult with files sorted by path.
    """
    result = ScanResult()
    if is_archive_path(root):
        result.skipped_other = 1
        return result
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            if folder == str(root) and _is_missing(exc):
                return ScanResult(removed=True)
            result.failures.append(_failure(folder, error_from_os_error(exc)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                result.skipped_hidden += 1
                continue
            try:
                if entry.is_symlink():
                    result.skipped_symlinks += 1
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if recursive and entry.name not in ARCHIVE_DIR_NAMES:
                        stack.append(entry.path)
                    else:
                        result.skipped_other += 1
                    continue
                if not entry.is_file(follow_symlinks=False):
                    result.skipped_other += 1
                    continue
                st = entry.stat(follow_symlinks=False)
                head = read_head(entry.path)
            except OSError as exc:
                result.failures.append(_failure(entry.path, error_from_os_error(exc)))
                continue
            fmt = sniff_format(head, entry.path)
            if not is_candidate(entry.name, head, fmt):
                result.skipped_other += 1
                continue
            result.files.append(ScannedFile(entry.path, st.st_size, st.st_mtime_ns, st.st_ino, fmt))
    result.files.sort(key=lambda f: f.path)
    return result
