"""Runs that never wedge: who runs a run, dead-run cleanup, and cancellation.

Dagster (1.13) never notices a run whose process died (``kill -9``, an OOM kill, power loss): the
default run launcher has no worker health check, so the run stays STARTED, and the daemon frees
concurrency slots only for runs in a finished state. A dead run holding the ``gpu`` or ``qdrant``
pool slot therefore blocks every later run forever. This module fixes that with Dagster's own
APIs:

- every run records its worker in its tags (:class:`Worker`: host name, pid and the process's
  start time, so a recycled pid is not mistaken for the worker);
- :func:`cleanup_dead_runs` marks runs of this instance that are STARTED or CANCELING on this
  host but whose worker is gone as failed (``report_run_failed``) or canceled
  (``report_run_canceled``), and frees their concurrency slots
  (``free_concurrency_slots_for_run``). Runs of other hosts and runs without worker tags are left
  alone: nothing here can tell whether they are alive.

It also holds the process-wide cancellation flag (:func:`request_cancel`) that the CLI's signal
handler sets and the pipeline checks between batches (:func:`raise_if_cancelled`), so Ctrl-C
stops a run after its current batch with the run CANCELED.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import dagster as dg
import psutil
from dagster._core.errors import DagsterExecutionInterruptedError

log = logging.getLogger(__name__)

WORKER_HOST_TAG = "vibe/worker_host"
WORKER_PID_TAG = "vibe/worker_pid"
WORKER_STARTED_TAG = "vibe/worker_started"
"""Run tags naming the process that executes a run: host name, pid, and that process's start
time (Unix seconds, as ``psutil.Process.create_time()`` gives it, 2 decimals)."""

ACTIVE_STATUSES = (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
"""Run statuses in which a run's process should be alive (and may hold pool slots)."""

_START_TIME_TOLERANCE_S = 1.0
"""Process start times are read from ``/proc/<pid>/stat`` in clock ticks (10 ms) plus the boot
time; two reads of one process agree to well under a second, a recycled pid does not."""


@dataclass(frozen=True)
class Worker:
    """The process that executes a run: ``host`` (``socket.gethostname()``), ``pid`` and
    ``started`` (the process's start time, Unix seconds)."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> Worker:
        """This process."""
        return cls(socket.gethostname(), os.getpid(), round(psutil.Process().create_time(), 2))

    def tags(self) -> dict[str, str]:
        """The run tags that record this worker."""
        return {
            WORKER_HOST_TAG: self.host,
            WORKER_PID_TAG: str(self.pid),
            WORKER_STARTED_TAG: f"{self.started:.2f}",
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Worker | None:
        """The worker recorded in a run's tags, or None when the run has no (valid) worker
        tags (started by another tool or an older version)."""
        try:
            return cls(
                tags[WORKER_HOST_TAG], int(tags[WORKER_PID_TAG]), float(tags[WORKER_STARTED_TAG])
            )
        except (KeyError, ValueError):
            return None

    def is_local(self) -> bool:
        """True when the worker ran on this host."""
        return self.host == socket.gethostname()

    def gone_reason(self) -> str | None:
        """Why this (local) worker is gone, or None while its process is alive.

        A pid that exists but belongs to a process started at another time is a recycled pid:
        the worker is gone. A zombie (killed, not yet reaped) is gone too.
        """
        try:
            proc = psutil.Process(self.pid)
            started = proc.create_time()
            status = proc.status()
        except psutil.NoSuchProcess:
            return f"its worker process {self.pid} on {self.host} no longer exists"
        except psutil.AccessDenied:
            return None  # exists, owned by someone else: cannot tell, assume alive
        if abs(started - self.started) > _START_TIME_TOLERANCE_S:
            return (
                f"pid {self.pid} on {self.host} now belongs to another process (started "
                f"{_when(started)}, the worker started {_when(self.started)})"
            )
        if status == psutil.STATUS_ZOMBIE:
            return f"its worker process {self.pid} on {self.host} has exited (zombie)"
        return None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def record_worker(instance: dg.DagsterInstance, run_id: str) -> Worker:
    """Tag run ``run_id`` with this process as its worker; returns the worker."""
    worker = Worker.current()
    instance.add_run_tags(run_id, worker.tags())
    return worker


@dataclass(frozen=True)
class CleanedRun:
    """A dead run that :func:`cleanup_dead_runs` ended: ``run_id``, ``job_name``, the
    ``status`` it had, the status it was given (``new_status``), ``reason`` (why its worker is
    known to be gone) and the ``pools`` whose slots it held."""

    run_id: str
    job_name: str
    status: str
    new_status: str
    reason: str
    pools: tuple[str, ...]

    def describe(self) -> str:
        """One log line: which run was cleaned up and why."""
        held = f"; freed its slots in pool(s) {', '.join(self.pools)}" if self.pools else ""
        return (
            f"cleaned up dead run {self.run_id} ({self.job_name}, was {self.status}): "
            f"{self.reason}; marked {self.new_status}{held}"
        )


@dataclass(frozen=True)
class UnknownRun:
    """A run in an active status that :func:`cleanup_dead_runs` left alone, and ``why``."""

    run_id: str
    job_name: str
    status: str
    why: str


def _pools_held(instance: dg.DagsterInstance, run_id: str) -> tuple[str, ...]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return ()
    keys = storage.get_concurrency_keys()
    infos = storage.get_concurrency_infos(sorted(keys))
    return tuple(
        sorted(
            k for k, info in infos.items() if any(s.run_id == run_id for s in info.claimed_slots)
        )
    )


def find_dead_runs(
    instance: dg.DagsterInstance, exclude: str | None = None
) -> tuple[list[tuple[dg.DagsterRun, str]], list[UnknownRun]]:
    """Runs of ``instance`` in an active status (STARTED, CANCELING) whose worker is gone.

    Returns:
        ``(dead, unknown)``: ``[(run, reason)]`` for runs whose worker ran on this host and is
        gone; and the active runs left alone (no worker tags, or another host). ``exclude`` (a
        run id, e.g. the caller's own run) is never returned.
    """
    dead: list[tuple[dg.DagsterRun, str]] = []
    unknown: list[UnknownRun] = []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE_STATUSES)))
    for run in runs:
        if run.run_id == exclude:
            continue
        worker = Worker.from_tags(run.tags)
        if worker is None:
            why = "no worker tags (started by another tool or an older vibe_assets)"
            unknown.append(UnknownRun(run.run_id, run.job_name, run.status.value, why))
            continue
        if not worker.is_local():
            why = f"its worker runs on another host ({worker.host})"
            unknown.append(UnknownRun(run.run_id, run.job_name, run.status.value, why))
            continue
        reason = worker.gone_reason()
        if reason is not None:
            dead.append((run, reason))
    return dead, unknown


def cleanup_dead_runs(
    instance: dg.DagsterInstance,
    exclude: str | None = None,
    dry_run: bool = False,
    log_fn: Callable[[str], None] | None = None,
) -> list[CleanedRun]:
    """End the runs whose worker on this host is gone, and free their pool slots.

    A dead STARTED run is marked FAILURE (``instance.report_run_failed``, with a message that
    says why), a dead CANCELING run CANCELED (``report_run_canceled``); then every concurrency
    slot the run still holds is freed (``free_concurrency_slots_for_run``). Each cleaned run is
    logged (``log_fn``, default this module's logger at WARNING). With ``dry_run`` nothing is
    changed and the runs that would be cleaned are returned.

    Safe to call from several processes at once: reporting a finished run again is skipped
    (the run's status is re-read first), and freeing slots twice is a no-op.
    """
    emit = log_fn or log.warning
    dead, _ = find_dead_runs(instance, exclude=exclude)
    cleaned: list[CleanedRun] = []
    for run, reason in dead:
        pools = _pools_held(instance, run.run_id)
        canceling = run.status == dg.DagsterRunStatus.CANCELING
        new_status = "CANCELED" if canceling else "FAILURE"
        item = CleanedRun(run.run_id, run.job_name, run.status.value, new_status, reason, pools)
        if not dry_run:
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.status not in ACTIVE_STATUSES:
                continue  # another process cleaned it meanwhile
            message = f"vibe_assets: {reason}; this run cannot finish (killed or crashed)"
            if canceling:
                instance.report_run_canceled(current, message=message)
            else:
                instance.report_run_failed(current, message=message)
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            emit(item.describe())
        cleaned.append(item)
    return cleaned


# -- cancellation -----------------------------------------------------------------------------

_cancel = threading.Event()
_cancel_reason = {"why": ""}


def request_cancel(why: str) -> None:
    """Ask the runs of this process to stop at their next check (thread-safe; called from a
    signal handler)."""
    _cancel_reason["why"] = why
    _cancel.set()


def clear_cancel() -> None:
    """Forget an earlier :func:`request_cancel` (before the next run of this process)."""
    _cancel.clear()
    _cancel_reason["why"] = ""


def cancel_requested() -> str | None:
    """Why a cancellation was requested, or None when none was."""
    if not _cancel.is_set():
        return None
    return _cancel_reason["why"] or "cancel requested"


def raise_if_cancelled() -> None:
    """Raise when this process was asked to stop (see :func:`request_cancel`).

    Called between batches by long-running steps, so a stop loses at most one batch.

    Raises:
        DagsterExecutionInterruptedError: a cancellation was requested; Dagster ends the step
            and, with the run marked CANCELING, the run as CANCELED.
    """
    if _cancel.is_set():
        raise DagsterExecutionInterruptedError(cancel_requested())


# -- running a run in this process, interruptibly ---------------------------------------------

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""Exit status of ``vibe-assets`` stopped by a signal: 128 + the signal number (the shell's
convention: Ctrl-C gives 130)."""
DEFAULT_GRACE_SECONDS = 12.0
"""After the first Ctrl-C/SIGTERM a run has this long to stop at a batch boundary; then (or at a
second Ctrl-C) it is force-stopped: marked CANCELED, its slots freed, the process exits."""

T = TypeVar("T")


@dataclass
class Interrupted:
    """How :func:`run_interruptibly` was stopped: ``signum`` (the first signal), ``forced``
    (the run did not stop by itself in time, or a second signal came), ``seconds`` from the
    first signal to the end."""

    signum: int
    forced: bool = False
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return SIGNAL_EXIT_CODES.get(self.signum, 128 + self.signum)


def run_interruptibly(
    work: Callable[[], T],
    on_cancel: Callable[[], None],
    on_force: Callable[[], None],
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[T | None, Interrupted | None]:
    """Call ``work()`` (which executes a Dagster run in this process) in a worker thread, with
    SIGINT and SIGTERM handled here, in the main thread.

    Dagster installs its own signal handlers only in the main thread; in a worker thread it
    leaves them to us. At the first signal, ``on_cancel()`` is called (it should mark the run
    CANCELING, as Dagster's own termination does, so that the run ends CANCELED rather than
    FAILURE), then :func:`request_cancel`: the run stops at its next check (between batches, or
    at once while it waits for a pool slot). If it has not returned ``grace_seconds`` later, or
    at a second signal, ``on_force()`` is called (it should mark the run CANCELED and free its
    slots) and this returns without waiting for the thread (a daemon thread: it dies with the
    process). The signal handler only records the signal; the callbacks run in the main loop.

    Must be called from the main thread.

    Returns:
        ``(work's result or None when forced, Interrupted or None)``.

    Raises:
        BaseException: whatever ``work()`` raised.
    """
    clear_cancel()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    stop: Interrupted | None = None
    first_at = 0.0

    def handler(signum: int, _frame: Any) -> None:
        nonlocal stop, first_at
        if stop is None:
            stop, first_at = Interrupted(signum), time.monotonic()
        else:
            stop.forced = True

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=target, name="vibe-run", daemon=True)
    cancelling = False
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            if stop is None:
                continue
            if not cancelling:
                cancelling = True
                name = signal.Signals(stop.signum).name
                say(
                    f"{name}: stopping after the current batch (the run ends CANCELED); "
                    "press Ctrl-C again to stop at once"
                )
                on_cancel()
                request_cancel(f"{name} received")
            if stop.forced or time.monotonic() - first_at > grace_seconds:
                stop.forced = True
                say("the run did not stop in time: marking it CANCELED and freeing its slots")
                on_force()
                break
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stop is not None:
        stop.seconds = time.monotonic() - first_at
        if stop.forced:
            return None, stop
    if "error" in box:
        raise box["error"]
    return box.get("result"), stop


def mark_canceling(instance: dg.DagsterInstance, run_id: str | None, why: str) -> None:
    """Mark run ``run_id`` CANCELING (when it is STARTED), as Dagster's termination does before
    it interrupts a run: an interrupted run then ends CANCELED, not FAILURE."""
    if run_id is None:
        return
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status == dg.DagsterRunStatus.STARTED:
        instance.report_run_canceling(run, message=f"{why}: canceling")


def force_cancel_run(instance: dg.DagsterInstance, run_id: str | None, why: str) -> None:
    """Mark run ``run_id`` CANCELED (unless it already finished) and free its pool slots."""
    if run_id is None:
        return
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(run, message=f"vibe_assets: {why}; force-stopped")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
