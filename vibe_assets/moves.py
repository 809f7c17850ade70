"""Moving photos out of the library and back: plans, journals, undo (Dagster-free; shared by the
CLI and the web pages).

A **plan** (:class:`Plan`) is a list of moves, each a listed file (``source``) to a
``destination`` under the registered folder (``root``) that listed it, with the file's SHA-256
and that folder's partition key. Making a plan reads the state database only, never the disk:

- ``duplicates`` plans (:func:`plan_duplicates`) go to ``<root>/_VibeDuplicates/<path relative
  to root>``, curation plans (:func:`plan_paths`, :func:`plan_images`) to
  ``<root>/_VibeArchive/<path relative to root>``. Archive folders are never scanned
  (:mod:`vibe_assets.scan`, the ``new_photo_folders`` sensor), so what is archived leaves the
  collections.
- **Nested roots.** When several registered folders list the same file (a recursive parent and
  a child partition), ``root`` is the OUTERMOST of them: a library registered as one folder gets
  one archive at its top that mirrors its tree.
- A file that no listing holds, or that is not hashed yet, is not planned (:class:`Skipped`,
  with the reason): its bytes could not be verified.

:func:`check_plan` inspects the disk (reads only) and lists every reason a plan cannot be
applied; :func:`apply_plan` refuses a plan with any, before moving anything. The rules:

- **Never delete a file.** A move is ``rename(2)`` on one file system; across file systems a
  copy into a hidden temporary file beside the destination, ``fsync``, a re-read that must
  give the same SHA-256, a no-replace rename into place, then the source is unlinked.
- **Never leave a registered root.** The registered folder must still be the real folder it was
  (not replaced by a symbolic link); the source and the destination's nearest existing folder,
  symbolic links resolved, must lie inside it; a source that is itself a symbolic link is
  refused.
- **A name clash never overwrites: the move is refused** (no renamed copy is made: the archive
  mirrors the library, so ``undo`` and people find files where they expect them). Moving a file
  that was archived before, then brought back and changed, clashes with nothing; archiving a
  second file at a path already used in the archive is refused until the old one is moved away.
  The rename itself never replaces a file that appears meanwhile (``renameat2`` with
  ``RENAME_NOREPLACE`` on Linux; elsewhere an existence check right before the rename).
- **Read-only folders** (the source's folder, or the nearest existing folder of the
  destination) are found by the check and refuse the plan, leaving everything in place.
- **All or nothing per plan.** When a move fails while applying (a folder turned read-only, a
  full disk, bytes that differ from the listing's SHA-256, Ctrl-C), the moves already done are
  moved back (verified) in reverse order, the journal says so, and :class:`MoveError` is raised;
  the state and the collections are only changed once every file of the plan has moved.

Each applied plan writes a **journal**, ``$VIBE_HOME/journals/<UTC time>-<kind>.jsonl``: JSON
lines, each written and ``fsync``-ed as it happens, so a crash leaves an accurate journal:

- a header ``{"type": "journal", "version", "kind", "created_at", "moves", ...}``;
- per move ``{"type": "move", "state": "start", "n", "from", "to", "sha256", "folder_key",
  "root", "time"}`` before the file is touched and ``{"type": "move", "state": "done", ...,
  "method": "rename" | "copy", "rows": [listing rows]}`` once it moved and its SHA-256 was
  verified;
- ``{"type": "rollback", "n", ...}`` per move put back by a failed apply;
  ``{"type": "undo", "state": "start" | "done", "n", "from", "to", ...}`` per move undone;
- ``{"type": "end", "status": "applied" | "rolled_back" | "rollback_incomplete" | "undone" |
  "undo_incomplete", ...}`` and ``{"type": "synced", "collections": {...}}``.

After the files moved, the moved paths leave their folders' listings (state database rows; the
images become candidates for the preview collection only after :data:`KEEP_FOR_UNDO_SECONDS`,
so an undo meanwhile recomputes nothing), and every configured collection is re-synced for the
affected folders through :func:`vibe_assets.points.sync_folder` (:func:`resync`): the point of
an image whose only path moved is deleted, other points get their ``paths`` rewritten; nothing
is recomputed. :func:`undo` moves every file back (SHA-256 checked before, and after a copy),
restores the listing rows (with the files' stat now, so nothing is hashed again) and re-syncs:
deleted points are rebuilt from the stored embeddings. Undo checks everything first and refuses
(moving nothing) on a clash, a changed file or a read-only folder; if a move back fails midway
it stops, records what was undone and can simply be run again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from vibe_assets import state as state_db
from vibe_assets.scan import ARCHIVE_DIR, DUPLICATES_DIR, is_archive_path
from vibe_assets.state import StateDB

KIND_DUPLICATES = "duplicates"
KIND_CURATE = "curate"
ARCHIVE_FOLDERS: dict[str, str] = {KIND_DUPLICATES: DUPLICATES_DIR, KIND_CURATE: ARCHIVE_DIR}
"""Plan kind -> the folder (under the root) its moves go into."""
JOURNALS_DIR = "journals"
JOURNAL_VERSION = 1
KEEP_FOR_UNDO_SECONDS = 30 * 86400
"""How long an archived image keeps its preview and decode outcome before the preview
collection may take them (seconds after the move, plus ``VIBE_PREVIEW_GC_GRACE_SECONDS``); an
undo within it rebuilds points from what is stored, later the next ingest decodes again."""
CHUNK_BYTES = 1 << 20

Sync = Callable[[Sequence[str]], dict[str, dict[str, int]]]
"""Re-syncs folder partitions (keys) into every configured collection; returns ``{collection:
counts}``. Build one with :func:`resync`."""
Progress = Callable[[int, int], None]
"""Called with (files moved so far, files to move) after each move, for a progress line."""
Log = Callable[[str], None]


class MoveError(RuntimeError):
    """A plan or an undo cannot be carried out (or was stopped): ``problems`` lists every
    reason, one line each; the message says what was left where."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class JournalError(ValueError):
    """A file is not a readable vibe_assets journal."""


# -- plans --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """Move ``source`` to ``dest`` (absolute paths). ``sha256``: the bytes the listing says it
    holds; ``folder_key``/``root``: the registered folder it was listed under (the outermost
    one, when nested folders list it) and that ``dest`` lies in; ``note``: why it is moved."""

    source: str
    dest: str
    sha256: str
    folder_key: str
    root: str
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (``from``/``to`` as in the journal)."""
        return {
            "from": self.source,
            "to": self.dest,
            "sha256": self.sha256,
            "folder_key": self.folder_key,
            "root": self.root,
            "note": self.note,
        }


@dataclass(frozen=True)
class Skipped:
    """A selected path that is not in the plan, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """What :func:`apply_plan` would do: ``kind`` (``duplicates`` or ``curate``), the
    ``moves`` in order, and the selected paths it ``skipped``."""

    kind: str
    moves: tuple[Move, ...]
    skipped: tuple[Skipped, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "moves": [m.as_dict() for m in self.moves],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


@dataclass(frozen=True)
class _Folder:
    key: str
    path: str


def _registered(state: StateDB) -> dict[str, _Folder]:
    """Registered folders that have not vanished, by absolute path (as registered: resolved)."""
    with state.read() as conn:
        rows = conn.execute("SELECT key, path FROM folders WHERE vanished_at IS NULL").fetchall()
    return {path: _Folder(key, path) for key, path in rows}


def _from_i64(n: int) -> int:
    return n + (1 << 64) if n < 0 else n


def _to_i64(n: int) -> int:
    return n - (1 << 64) if n > (1 << 63) - 1 else n


def _listing_rows(conn: Any, path: str, folders: Mapping[str, _Folder]) -> list[dict[str, Any]]:
    """Rows of every registered folder's listing that hold ``path``: the folders that are
    ancestors of it, each looked up by (key, path) (an index lookup per ancestor)."""
    blob = os.fsencode(path)
    rows = []
    for parent in Path(path).parents:
        folder = folders.get(str(parent))
        if folder is None:
            continue
        row = conn.execute(
            "SELECT size, mtime_ns, inode, format, sha256 FROM listing_files"
            " WHERE folder_key = ? AND path = ?",
            (folder.key, blob),
        ).fetchone()
        if row is not None:
            size, mtime_ns, inode, fmt, sha = row
            rows.append(
                {
                    "folder_key": folder.key,
                    "root": folder.path,
                    "size": size,
                    "mtime_ns": mtime_ns,
                    "inode": _from_i64(inode),
                    "format": fmt,
                    "sha256": sha,
                }
            )
    return rows


def _normal(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def plan_paths(
    state: StateDB,
    paths: Iterable[str],
    kind: str,
    notes: Mapping[str, str] | None = None,
    skipped: Iterable[Skipped] = (),
) -> Plan:
    """The plan that moves each of ``paths`` (files as listed; made absolute, duplicates
    dropped) into ``kind``'s archive folder under its root (see the module docstring). Reads
    the state database only.

    Args:
        kind: ``duplicates`` (to ``_VibeDuplicates``) or ``curate`` (to ``_VibeArchive``).
        notes: why each path is moved (``{path: note}``), kept in the plan and the journal.
        skipped: paths already left out by the caller (e.g. an unknown point id), kept in the
            plan's ``skipped``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in ARCHIVE_FOLDERS:
        raise ValueError(f"unknown plan kind {kind!r}; one of {sorted(ARCHIVE_FOLDERS)}")
    archive = ARCHIVE_FOLDERS[kind]
    notes = notes or {}
    folders = _registered(state)
    moves: list[Move] = []
    left: list[Skipped] = list(skipped)
    seen: set[str] = set()
    with state.read() as conn:
        for raw in paths:
            path = _normal(raw)
            if path in seen:
                continue
            seen.add(path)
            rows = _listing_rows(conn, path, folders)
            if not rows:
                parent = os.path.realpath(os.path.dirname(path))
                other = os.path.join(parent, os.path.basename(path))
                rows = _listing_rows(conn, other, folders) if other != path else []
                if rows:  # given through a symbolic link to a folder: the listed path counts
                    path = other
            if not rows:
                left.append(Skipped(path, "not in any registered folder's listing (ingest it)"))
                continue
            shas = {row["sha256"] for row in rows}
            if None in shas or len(shas) != 1:
                left.append(Skipped(path, "not hashed since it last changed (ingest it again)"))
                continue
            outer = min(rows, key=lambda row: (len(row["root"]), row["root"]))
            rel = os.path.relpath(path, outer["root"])
            if is_archive_path(rel):
                left.append(Skipped(path, "already in an archive folder"))
                continue
            moves.append(
                Move(
                    source=path,
                    dest=os.path.join(outer["root"], archive, rel),
                    sha256=shas.pop(),
                    folder_key=outer["folder_key"],
                    root=outer["root"],
                    note=notes.get(raw, notes.get(path, "")),
                )
            )
    return Plan(kind, tuple(moves), tuple(left))


def image_paths(state: StateDB, shas: Iterable[str]) -> dict[str, list[str]]:
    """``{sha256: [listed paths]}`` of these images (every folder listing; each path once,
    sorted); images no listing holds are absent."""
    listed = state_db.listed_paths(state, shas)
    return {sha: sorted({path for path, _ in rows}) for sha, rows in listed.items()}


def plan_images(state: StateDB, shas: Iterable[str], kind: str, note: str = "") -> Plan:
    """The plan that moves every listed file of the images ``shas`` (see :func:`plan_paths`);
    an image that no listing holds is skipped (its SHA-256 as the path)."""
    wanted = list(dict.fromkeys(shas))
    found = image_paths(state, wanted)
    paths = [path for sha in wanted for path in found.get(sha, [])]
    missing = [
        Skipped(sha, "no listed file holds these bytes") for sha in wanted if sha not in found
    ]
    return plan_paths(state, paths, kind, dict.fromkeys(paths, note), missing)


# -- duplicate groups ---------------------------------------------------------------------------


class MemberLike(Protocol):
    """What a plan needs of a duplicate group's member (:mod:`vibe_assets.duplicates`)."""

    @property
    def sha256(self) -> str: ...

    @property
    def paths(self) -> Sequence[str]: ...


class GroupLike(Protocol):
    """What a plan needs of a duplicate group: ``tier`` (``exact`` | ``near`` | ``similar``),
    ``members``, the suggested ``keep`` member, ``reason`` and ``id``. The keeper's chosen path
    is the group's ``keep_path`` attribute when it has one, else the first of ``keep.paths``."""

    @property
    def id(self) -> str: ...

    @property
    def tier(self) -> str: ...

    @property
    def members(self) -> Sequence[MemberLike]: ...

    @property
    def keep(self) -> MemberLike: ...

    @property
    def reason(self) -> str: ...


def keeper_path(group: GroupLike) -> str | None:
    """The path a group keeps: its ``keep_path`` attribute when set, else ``keep.paths[0]``;
    None when the keeper lists no path."""
    chosen = getattr(group, "keep_path", None)
    if isinstance(chosen, str) and chosen:
        return chosen
    return group.keep.paths[0] if group.keep.paths else None


def group_archive_paths(group: GroupLike) -> list[str]:
    """The paths archiving ``group`` moves, sorted: for an ``exact`` group every path of every
    member but the keeper's chosen path (one copy stays); for the other tiers every path of
    every member that is not the keeper (the keeper's copies stay: archiving exact copies is the
    ``exact`` tier's business). ``[]`` when the keeper has no path (nothing is decided)."""
    keep = keeper_path(group)
    if keep is None:
        return []
    if group.tier == "exact":
        paths = {p for member in (*group.members, group.keep) for p in member.paths}
        return sorted(paths - {keep})
    return sorted(
        {p for member in group.members if member.sha256 != group.keep.sha256 for p in member.paths}
    )


def plan_duplicates(
    state: StateDB, groups: Iterable[GroupLike], tiers: Iterable[str] | None = None
) -> Plan:
    """The ``duplicates`` plan that archives the non-keepers of ``groups`` (those of ``tiers``
    when given) into ``_VibeDuplicates`` (see :func:`group_archive_paths`). A path any of the
    groups keeps is never moved, even if another group would archive it. Each move's note names
    the group (tier, id) and the path it keeps."""
    wanted = set(tiers) if tiers is not None else None
    chosen = [g for g in groups if wanted is None or g.tier in wanted]
    kept = {path for g in chosen if (path := keeper_path(g)) is not None}
    notes: dict[str, str] = {}
    skipped: list[Skipped] = []
    for group in chosen:
        keep = keeper_path(group)
        if keep is None:
            skipped.append(Skipped(f"group {group.id}", "its keeper lists no path: left alone"))
            continue
        for path in group_archive_paths(group):
            if path in kept:
                skipped.append(Skipped(path, "kept by another group"))
            else:
                notes.setdefault(path, f"{group.tier} group {group.id}: keeps {keep}")
    return plan_paths(state, list(notes), KIND_DUPLICATES, notes, skipped)


# -- checks (read the disk, never write) ----------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _writable(folder: str) -> bool:
    """True when files can be created in and removed from ``folder`` (``os.access``: root is
    never refused by mode bits, so a root-owned process relies on the move failing instead)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_move(source: str, dest: str, root: str) -> list[str]:
    """Every reason moving ``source`` to ``dest`` inside registered folder ``root`` is refused
    (``[]`` when none): see the module docstring's rules. Reads the disk (``lstat``,
    ``realpath``, ``access``), writes nothing."""
    problems: list[str] = []
    real_root = os.path.realpath(root)
    if not os.path.isdir(root):
        return [f"registered folder {root} does not exist (or is not a folder)"]
    if real_root != os.path.normpath(root):
        return [f"registered folder {root} is now a symbolic link (to {real_root}): refused"]
    for label, path in (("source", source), ("destination", dest)):
        if not _inside(os.path.normpath(path), root) or os.path.normpath(path) != path:
            problems.append(f"{label} {path} is not inside registered folder {root}: refused")
    if problems:
        return problems
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        problems.append(f"{source} is gone")
    except OSError as exc:
        problems.append(f"{source} cannot be read: {exc.strerror}")
    else:
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{source} is a symbolic link: not moved")
        elif not stat.S_ISREG(st.st_mode):
            problems.append(f"{source} is not a regular file")
        elif not _inside(os.path.realpath(source), real_root):
            problems.append(
                f"{source} resolves to {os.path.realpath(source)}, outside registered folder "
                f"{root} (a symbolic link on its path): refused"
            )
        elif not _writable(os.path.dirname(source)):
            problems.append(
                f"folder {os.path.dirname(source)} is read-only: {source} cannot be moved out"
            )
    if os.path.lexists(dest):
        problems.append(f"{dest} already exists: never overwritten (name clash)")
        return problems
    existing = _nearest_existing(os.path.dirname(dest))
    real = os.path.realpath(existing)
    if not _inside(real, real_root):
        problems.append(
            f"{existing} resolves to {real}, outside registered folder {root} (a symbolic "
            f"link): {dest} refused"
        )
    elif not os.path.isdir(existing):
        problems.append(f"{existing} is not a folder: cannot create {os.path.dirname(dest)}")
    elif not _writable(existing):
        problems.append(f"folder {existing} is read-only: cannot move {source} to {dest}")
    return problems


def check_plan(plan: Plan) -> list[str]:
    """Every reason :func:`apply_plan` would refuse ``plan`` (``[]``: none); reads the disk,
    writes nothing. Used for dry runs and before applying."""
    problems: list[str] = []
    dests = Counter(m.dest for m in plan.moves)
    for move in plan.moves:
        problems += check_move(move.source, move.dest, move.root)
        if dests[move.dest] > 1:
            problems.append(f"{move.dest} is the destination of several moves")
    return list(dict.fromkeys(problems))


# -- moving one file ------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _load_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()


def rename_noreplace(source: str, dest: str) -> None:
    """Rename ``source`` to ``dest`` unless ``dest`` exists (then ``FileExistsError``), never
    replacing it: ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system support it,
    else an existence check right before ``os.rename``.

    Raises:
        FileExistsError: ``dest`` exists.
        OSError: as ``rename(2)`` (``EXDEV`` across file systems, ``EACCES``, ...).
    """
    if _RENAMEAT2 is not None:
        rc = _RENAMEAT2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE
        )
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), source, None, dest)
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dest)
    os.rename(source, dest)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_verified(source: str, dest: str, expected: str | None) -> None:
    """Copy ``source`` to ``dest`` across file systems: a hidden temporary file beside ``dest``,
    ``fsync``, re-read and compare SHA-256s (the source's stream, ``expected`` when given), a
    no-replace rename into place, then unlink ``source``. On any failure the temporary copy is
    removed and ``source`` is untouched."""
    folder, name = os.path.split(dest)
    tmp = os.path.join(folder, f".{name}.vibe-partial-{os.getpid()}")
    try:
        digest = hashlib.sha256()
        with open(source, "rb", buffering=0) as src, open(tmp, "xb") as out:
            while chunk := src.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(OSError):  # times and mode, as a rename keeps them
            st = os.stat(source)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
        read = digest.hexdigest()
        copied = file_sha256(tmp)
        if copied != read or (expected is not None and read != expected):
            raise OSError(
                errno.EIO,
                f"copy of {source} does not verify (read {read[:12]}, copied {copied[:12]}, "
                f"expected {(expected or read)[:12]})",
            )
        rename_noreplace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # our own partial copy, never a user's file
        raise
    _fsync_dir(folder)
    os.unlink(source)
    _fsync_dir(os.path.dirname(source))


def move_file(source: str, dest: str, expected_sha256: str | None = None) -> str:
    """Move one file without ever replacing ``dest``: ``rename`` on one file system, else a
    verified copy then unlink (see :func:`_copy_verified`). Returns ``"rename"`` or ``"copy"``.

    Raises:
        FileExistsError: ``dest`` exists.
        OSError: the move failed; ``source`` is where it was.
    """
    try:
        rename_noreplace(source, dest)
        return "rename"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    _copy_verified(source, dest, expected_sha256)
    return "copy"


def _make_dirs(folder: str) -> list[str]:
    """Create ``folder`` and its missing parents; returns those created, outermost first."""
    missing: list[str] = []
    path = folder
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    created: list[str] = []
    for path in reversed(missing):
        os.mkdir(path)
        created.append(path)
    return created


def _prune(folder: str, stop: str) -> None:
    """Remove ``folder`` and its parents up to and including ``stop`` while they are empty
    (``rmdir`` only: a folder that holds anything stays)."""
    path = folder
    while _inside(path, stop):
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == stop:
            return
        path = os.path.dirname(path)


# -- journals -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def journals_dir(home: str | Path) -> Path:
    """``$VIBE_HOME/journals``."""
    return Path(home) / JOURNALS_DIR


class _Writer:
    """Appends JSON lines to a journal, each flushed and ``fsync``-ed before returning."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._f = handle

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _new_journal(home: str | Path, kind: str, header: Mapping[str, Any], moves: int) -> _Writer:
    folder = journals_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = folder / f"{stamp}-{kind}.jsonl"
    # "x": never replaces a journal; closed by the caller (the journal outlives this call)
    writer = _Writer(path, open(path, "x", encoding="utf-8"))  # noqa: SIM115
    _fsync_dir(str(folder))
    writer.write(
        {
            "type": "journal",
            "version": JOURNAL_VERSION,
            "kind": kind,
            "created_at": _now(),
            "moves": moves,
            "host": socket.gethostname(),
            **dict(header),
        }
    )
    return writer


@dataclass
class JournalEntry:
    """One move of a journal: its ``start`` record, its ``done`` record (None when the journal
    ends before it: a crash mid-move), and whether it was ``rolled_back`` or ``undone``."""

    n: int
    start: dict[str, Any]
    done: dict[str, Any] | None = None
    rolled_back: bool = False
    undone: bool = False


@dataclass
class Journal:
    """A parsed journal: ``path``, ``header``, the ``entries`` in move order, the ``status``
    of its last ``end`` record (None: it never ended, e.g. a crash) and the ``synced`` records."""

    path: Path
    header: dict[str, Any]
    entries: list[JournalEntry]
    status: str | None
    synced: list[dict[str, Any]] = field(default_factory=list)

    @property
    def moved(self) -> int:
        """Moves that are done and neither rolled back nor undone."""
        return sum(1 for e in self.entries if e.done and not (e.rolled_back or e.undone))


def read_journal(path: str | Path) -> Journal:
    """Parse a journal (a torn last line, from a crash mid-write, is ignored).

    Raises:
        JournalError: unreadable, or not a vibe_assets journal.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from exc
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError as exc:
            if i == len(lines) - 1:
                break  # torn by a crash while it was written
            raise JournalError(f"{path}: line {i + 1} is not JSON") from exc
        if isinstance(record, dict):
            records.append(record)
    if not records or records[0].get("type") != "journal":
        raise JournalError(f"{path} is not a vibe_assets journal (no header line)")
    header = records[0]
    if header.get("version") != JOURNAL_VERSION:
        raise JournalError(f"{path}: journal version {header.get('version')} is not supported")
    entries: dict[int, JournalEntry] = {}
    status = None
    synced = []
    for record in records[1:]:
        kind, n = record.get("type"), record.get("n")
        if kind == "move" and isinstance(n, int):
            if record.get("state") == "start":
                entries[n] = JournalEntry(n, record)
            elif record.get("state") == "done" and n in entries:
                entries[n].done = record
        elif kind == "rollback" and n in entries:
            entries[n].rolled_back = True
        elif kind == "undo" and record.get("state") == "done" and n in entries:
            entries[n].undone = True
        elif kind == "end":
            status = record.get("status")
        elif kind == "synced":
            synced.append(record)
    return Journal(path, header, [entries[n] for n in sorted(entries)], status, synced)


def list_journals(home: str | Path) -> list[Journal]:
    """Every readable journal under ``$VIBE_HOME/journals``, oldest first."""
    folder = journals_dir(home)
    out = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        with contextlib.suppress(JournalError):
            out.append(read_journal(path))
    return out


def find_journal(home: str | Path, name: str) -> Path:
    """The journal ``name``: a path, or a file name (with or without ``.jsonl``) under
    ``$VIBE_HOME/journals``.

    Raises:
        JournalError: no such file.
    """
    given = Path(name).expanduser()
    candidates = [given, journals_dir(home) / name, journals_dir(home) / f"{name}.jsonl"]
    for path in candidates:
        if path.is_file():
            return path
    raise JournalError(f"no journal {name!r} (looked in {journals_dir(home)})")


# -- state and collections ------------------------------------------------------------------------


def _forget_paths(state: StateDB, rows: Iterable[tuple[str, dict[str, Any]]], now: float) -> None:
    """Delete the listing rows ``(path, row)`` of moved files (one transaction) and make their
    images candidates for the preview collection from ``now + KEEP_FOR_UNDO_SECONDS``."""
    rows = list(rows)
    with state.write() as conn:
        conn.executemany(
            "DELETE FROM listing_files WHERE folder_key = ? AND path = ?",
            [(row["folder_key"], os.fsencode(path)) for path, row in rows],
        )
        conn.executemany(
            "INSERT INTO preview_gc (sha256, since) VALUES (?, ?) ON CONFLICT (sha256)"
            " DO UPDATE SET since = MAX(since, excluded.since)",
            [(sha, now + KEEP_FOR_UNDO_SECONDS) for sha in {row["sha256"] for _, row in rows}],
        )


def _restore_paths(state: StateDB, rows: Iterable[tuple[str, dict[str, Any]]]) -> list[str]:
    """Put back the listing rows ``(path, row)`` of files moved back, with each file's stat
    now (so the next scan finds them unchanged and hashes nothing), for folders that still have
    a listing. Returns the folder keys written."""
    keys = set()
    with state.write() as conn:
        listed = {key for (key,) in conn.execute("SELECT folder_key FROM listings")}
        for path, row in rows:
            if row["folder_key"] not in listed:
                continue
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            conn.execute(
                "INSERT INTO listing_files (folder_key, path, size, mtime_ns, inode, format,"
                " sha256) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (folder_key, path) DO UPDATE"
                " SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
                " inode = excluded.inode, format = excluded.format, sha256 = excluded.sha256",
                (
                    row["folder_key"],
                    os.fsencode(path),
                    st.st_size,
                    st.st_mtime_ns,
                    _to_i64(st.st_ino),
                    row.get("format"),
                    row["sha256"],
                ),
            )
            keys.add(row["folder_key"])
    return sorted(keys)


def resync(
    vectors: Any, state: StateDB, sources: Mapping[str, Any], folder_keys: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Sync ``folder_keys`` into every collection of ``sources`` that exists, from their
    listings in the state database (:func:`vibe_assets.points.sync_folders`: reconciles first
    when a collection and its records disagree). Nothing is decoded or embedded: new points are
    built from stored embeddings (an image without one is counted ``skipped``).

    Args:
        vectors: the open :class:`~vibe_assets.vectors.base.VectorStore`.
        sources: ``{collection: PointSource}`` (:class:`vibe_assets.point_source.PointSource`).

    Returns:
        ``{collection: summed sync counts}`` (``upserted``, ``payload_updated``, ``deleted``,
        ``unchanged``, ``skipped``, ...).
    """
    from vibe_assets.points import sync_folders

    out: dict[str, dict[str, int]] = {}
    for name, source in sources.items():
        if not vectors.collection_exists(name):
            continue
        folders = []
        for key in folder_keys:
            hashes = source.store.folder_hashes(key)
            if hashes is not None:
                folders.append((key, source.current(hashes)))
        results = sync_folders(
            vectors, state, name, folders, source.point_builder, source.caption_for
        )
        total: Counter[str] = Counter()
        for result in results.values():
            total.update(result.counts)
        out[name] = dict(total)
    return out


def _run_sync(sync: Sync | None, keys: Sequence[str]) -> tuple[dict[str, dict[str, int]], str]:
    if sync is None or not keys:
        return {}, ""
    try:
        return sync(keys), ""
    except Exception as exc:  # the files moved; the collections catch up at the next ingest
        return {}, f"{type(exc).__name__}: {exc}"


# -- apply and undo -------------------------------------------------------------------------------


@dataclass
class ApplyResult:
    """What :func:`apply_plan` did: the ``journal`` written, the ``moved`` moves, the sync
    counts per collection (``synced``) and ``sync_error`` ("" when the sync went through; else
    the files moved and the collections catch up at the next ingest of those folders)."""

    journal: Path
    moved: list[Move]
    synced: dict[str, dict[str, int]]
    sync_error: str = ""


@dataclass
class _Done:
    n: int
    move: Move
    created: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _roll_back(done: list[_Done], journal: _Writer) -> list[str]:
    """Move the ``done`` moves back, newest first; returns the failures (one line each)."""
    failures = []
    for item in reversed(done):
        move = item.move
        try:
            move_file(move.dest, move.source)
        except OSError as exc:
            failures.append(f"{move.dest} could not be moved back to {move.source}: {exc}")
            continue
        for folder in reversed(item.created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        journal.write(
            {"type": "rollback", "n": item.n, "from": move.dest, "to": move.source, "time": _now()}
        )
    return failures


def apply_plan(
    plan: Plan,
    state: StateDB,
    home: str | Path,
    sync: Sync | None = None,
    header: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> ApplyResult:
    """Carry out ``plan`` (see the module docstring): check it, move every file (journaled,
    SHA-256 verified), then remove the moved paths from the listings and re-sync the affected
    folders through ``sync``.

    Args:
        home: ``VIBE_HOME`` (the journal goes to ``home/journals/``).
        sync: re-syncs folder keys into the collections (see :func:`resync`); None: the
            collections catch up at the next ingest of those folders.
        header: extra JSON fields for the journal's header (e.g. the snapshots taken).
        progress: called with (files moved, files in the plan) after each move.

    Raises:
        MoveError: the plan is empty or refused (``problems``; nothing moved, no journal), or a
            move failed (every move done is moved back and the journal says so; if one cannot
            be moved back, ``problems`` names it).
    """
    if not plan.moves:
        raise MoveError("nothing to move")
    problems = check_plan(plan)
    if problems:
        raise MoveError(f"refused ({len(problems)} problems): nothing was moved", problems)
    folders = _registered(state)
    journal = _new_journal(home, plan.kind, header or {}, len(plan.moves))
    done: list[_Done] = []
    try:
        for n, move in enumerate(plan.moves):
            with state.read() as conn:
                rows = _listing_rows(conn, move.source, folders)
            if {row["sha256"] for row in rows} != {move.sha256}:
                raise MoveError(f"{move.source}: its listing changed since the plan was made")
            trouble = check_move(move.source, move.dest, move.root)
            if trouble:
                raise MoveError(trouble[0])
            record = {"type": "move", "n": n, **move.as_dict(), "time": _now()}
            journal.write({**record, "state": "start"})
            item = _Done(n, move, _make_dirs(os.path.dirname(move.dest)), rows)
            try:
                method = move_file(move.source, move.dest, move.sha256)
            except BaseException:
                for folder in reversed(item.created):
                    with contextlib.suppress(OSError):
                        os.rmdir(folder)
                raise
            done.append(item)
            # a copy was verified against the listing's SHA-256 while it was made
            digest = file_sha256(move.dest) if method == "rename" else move.sha256
            if digest != move.sha256:
                raise MoveError(
                    f"{move.source}: its bytes changed since it was hashed (SHA-256 "
                    f"{digest[:12]}…, the listing says {move.sha256[:12]}…); ingest it again"
                )
            journal.write({**record, "state": "done", "method": method, "rows": rows})
            if progress is not None:
                progress(len(done), len(plan.moves))
    except BaseException as exc:
        failures = _roll_back(done, journal)
        status = "rollback_incomplete" if failures else "rolled_back"
        journal.write({"type": "end", "status": status, "error": str(exc), "time": _now()})
        journal.close()
        if not isinstance(exc, Exception):
            raise
        where = (
            f"{len(failures)} could not be moved back (see the problems and {journal.path})"
            if failures
            else f"the {len(done)} files moved so far were moved back; nothing changed"
        )
        raise MoveError(f"stopped: {exc}; {where}", failures) from exc
    _forget_paths(state, [(d.move.source, row) for d in done for row in d.rows], time.time())
    journal.write({"type": "end", "status": "applied", "moved": len(done), "time": _now()})
    keys = sorted({row["folder_key"] for d in done for row in d.rows})
    synced, error = _run_sync(sync, keys)
    journal.write({"type": "synced", "collections": synced, "error": error, "time": _now()})
    journal.close()
    return ApplyResult(journal.path, [d.move for d in done], synced, error)


@dataclass
class UndoResult:
    """What :func:`undo` did: the ``journal``, the files ``moved_back`` (``(from, to)``:
    archive path, original path), ``notes`` on moves left as they were (never moved, already
    back, lost), the sync counts and ``sync_error`` (see :class:`ApplyResult`)."""

    journal: Path
    moved_back: list[tuple[str, str]]
    notes: list[str]
    synced: dict[str, dict[str, int]]
    sync_error: str = ""


def undo(
    journal_path: str | Path,
    state: StateDB,
    sync: Sync | None = None,
    progress: Progress | None = None,
) -> UndoResult:
    """Move every file of a journal back where it was (newest first), byte-identical, restore
    its listing rows and re-sync the affected folders through ``sync`` (points come back from
    stored embeddings). Moves rolled back or undone before are left alone, so an interrupted
    undo can be run again. Records each move back in the journal.

    Checked first, for every move (nothing is moved if any fails): the archived file exists and
    still has the journal's SHA-256; nothing exists at the original path (never overwritten);
    both paths lie in the journal's registered folder, which is still registered and real; the
    folders are writable. A move whose files are both gone is reported in ``notes`` and skipped.
    ``progress`` is called with (files moved back, files to move back) after each one.

    Raises:
        JournalError: not a readable journal.
        MoveError: refused (``problems``; nothing moved), or a move back failed (the undo
            stopped; what was moved back is recorded, restored in the state and synced; run it
            again once the cause is fixed).
    """
    journal = read_journal(journal_path)
    registered = {folder.path for folder in _registered(state).values()}
    todo: list[JournalEntry] = []
    back: list[JournalEntry] = []  # already at the original path with the right bytes
    notes: list[str] = []
    problems: list[str] = []
    for entry in reversed(journal.entries):
        if entry.rolled_back or entry.undone:
            continue
        origin, archived = entry.start["from"], entry.start["to"]
        root, sha = entry.start["root"], entry.start["sha256"]
        at_origin, at_archive = os.path.lexists(origin), os.path.lexists(archived)
        if entry.done is None and (at_origin or not at_archive):
            notes.append(f"{origin}: never moved (the apply stopped before it)")
            continue
        if root not in registered:
            problems.append(
                f"{root} is no longer a registered folder: move {archived} back to {origin} by hand"
            )
        elif at_origin and at_archive:
            problems.append(
                f"{origin} exists again: never overwritten; move it aside to bring {archived} back"
            )
        elif at_origin:
            if _sha_or_none(origin) == sha:
                back.append(entry)
                notes.append(f"{origin}: already back")
            else:
                problems.append(f"{origin} exists again with other bytes: never overwritten")
        elif not at_archive:
            notes.append(f"{origin}: lost (neither it nor {archived} exists)")
        else:
            trouble = check_move(archived, origin, root)
            if not trouble and _sha_or_none(archived) != sha:
                trouble = [f"{archived} was modified since it was archived: left where it is"]
            problems += trouble
            todo.append(entry)
    if problems:
        raise MoveError(f"undo refused ({len(problems)} problems): nothing was moved", problems)
    if not todo and not back:
        notes.append("nothing to undo: every move of this journal was undone or rolled back")
        return UndoResult(journal.path, [], notes, {})
    writer = _Writer(journal.path, open(journal.path, "a", encoding="utf-8"))  # noqa: SIM115
    moved: list[JournalEntry] = []
    error: BaseException | None = None
    try:
        for entry in todo:
            origin, archived = entry.start["from"], entry.start["to"]
            record = {"type": "undo", "n": entry.n, "from": archived, "to": origin}
            writer.write({**record, "state": "start", "time": _now()})
            _make_dirs(os.path.dirname(origin))
            move_file(archived, origin, entry.start["sha256"])
            moved.append(entry)
            writer.write({**record, "state": "done", "time": _now()})
            archive_top = os.path.join(entry.start["root"], _archive_name(entry.start))
            _prune(os.path.dirname(archived), archive_top)
            if progress is not None:
                progress(len(moved), len(todo))
    except BaseException as exc:
        error = exc
    for entry in back:  # the journal records them as undone too
        start = entry.start
        record = {"type": "undo", "n": entry.n, "from": start["to"], "to": start["from"]}
        writer.write({**record, "state": "done", "time": _now(), "note": "already back"})
    rows = [
        (entry.start["from"], row)
        for entry in (*moved, *back)
        for row in (entry.done or {}).get("rows", [])
    ]
    keys = _restore_paths(state, rows)
    status = "undone" if error is None else "undo_incomplete"
    writer.write({"type": "end", "status": status, "error": str(error or ""), "time": _now()})
    synced, sync_error = _run_sync(sync, keys)
    writer.write({"type": "synced", "collections": synced, "error": sync_error, "time": _now()})
    writer.close()
    if error is not None:
        if not isinstance(error, Exception):
            raise error
        raise MoveError(
            f"undo stopped: {error}; {len(moved)} of {len(todo)} files were moved back "
            f"(recorded in {journal.path}); fix the cause and run undo again"
        ) from error
    pairs = [(e.start["to"], e.start["from"]) for e in moved]
    return UndoResult(journal.path, pairs, notes, synced, sync_error)


def _archive_name(start: Mapping[str, Any]) -> str:
    """The archive folder (``_VibeDuplicates``/``_VibeArchive``) a journaled move went into."""
    rel = os.path.relpath(start["to"], start["root"])
    return rel.split(os.sep, 1)[0]


def _sha_or_none(path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None
