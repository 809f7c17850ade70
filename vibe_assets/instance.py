"""The persistent Dagster instance the CLI records its runs in (``$DAGSTER_HOME``)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from vibe_assets.settings import dagster_home

# Same text as the repository's top-level dagster.yaml (a test keeps them equal), so an installed
# package that has no repository checkout beside it still writes it.
INSTANCE_YAML = """\
# Dagster instance settings for vibe_assets.
# `vibe-assets` copies this file into $DAGSTER_HOME (default ~/.vibe_assets/dagster) when that
# folder has no dagster.yaml yet; `dagster dev -w workspace.yaml` reads it from $DAGSTER_HOME.
telemetry:
  enabled: false
concurrency:
  pools:
    # Every pool vibe_assets uses runs one step at a time across all runs:
    #   gpu    - steps that load a model (clip_embeddings, blip_captions)
    #   qdrant - steps that open the embedded Qdrant store (one process at a time may hold it)
    default_limit: 1
run_monitoring:
  enabled: true
  # A cancelled or crashed run gives its pool slots back after 5 minutes instead of never.
  free_slots_after_run_end_seconds: 300
"""


def ensure_dagster_home() -> Path:
    """Create ``$DAGSTER_HOME`` (default ``$VIBE_HOME/dagster``) with a ``dagster.yaml`` if it has
    none, export ``DAGSTER_HOME`` for this process, and return it.

    An existing ``dagster.yaml`` is never replaced: a copy of the repository's
    ``dagster.postgres.yaml`` there puts the instance on PostgreSQL (connection from the
    ``DAGSTER_PG_*`` variables, read when the instance loads)."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


STATEMENT_TIMEOUT_MS = 60_000
"""PostgreSQL ``statement_timeout`` of pooled connections (dagster-webserver's default is 15 s;
run bookkeeping statements take milliseconds, a minute only stops a wedged one)."""
POOL_RECYCLE_S = 3600
POOL_MAX_OVERFLOW = 10
"""Connections beyond the pooled one while threads of this process (a run's steps, prefetch,
the CLI's waiting loop) write at once."""


EVENT_BATCH_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 200
"""Events per write when the event log can store a batch at once (PostgreSQL, and SQLite with
:mod:`vibe_assets.event_log`): Dagster then writes a range run's per-partition materializations
(one per folder) and its planned events in batches of this many (its
``DAGSTER_EVENT_BATCH_SIZE``, off by default) instead of one write each."""
_DONE = "_vibe_storage_optimized"


def optimize_storage(instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """Make ``instance``'s storages cheap per event for this process; returns ``instance``.

    - Keep database connections open, as dagster-webserver does
      (``DagsterInstance.optimize_for_webserver``: a pool of one connection plus up to
      :data:`POOL_MAX_OVERFLOW`, recycled after :data:`POOL_RECYCLE_S` s). dagster-postgres
      otherwise opens a new connection for every storage call (~45 per run).
    - On SQLite (Dagster's ``SqliteEventLogStorage``, whose own ``store_event_batch`` writes
      one event at a time), give this instance's event log batched asset-event writes
      (:func:`vibe_assets.event_log.enable_batched_writes`).
    - Where the event log stores a batch at once (dagster-postgres, or SQLite after the step
      above), set Dagster's ``DAGSTER_EVENT_BATCH_SIZE`` to :data:`EVENT_BATCH_SIZE` for this
      process unless it is set already: a range run over 200 folders then writes its 200
      materializations in one batch.

    On SQLite the first does nothing. Called by the CLI (:func:`get_instance`) and by the
    ``vibe_in_process`` executor, so runs launched from the UI, the sensor or a schedule (a run
    worker process each) get it too; a second call on the same instance does nothing. Measured
    by ``benchmarks/ingest.py`` and ``benchmarks/library.py`` (each with and without
    ``--instance postgres``).

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached (PostgreSQL).
    """
    from dagster._core.storage.event_log.base import EventLogStorage

    from vibe_assets.event_log import enable_batched_writes

    if getattr(instance, _DONE, False):
        return instance
    instance.optimize_for_webserver(
        statement_timeout=STATEMENT_TIMEOUT_MS,
        pool_recycle=POOL_RECYCLE_S,
        max_overflow=POOL_MAX_OVERFLOW,
    )
    storage = instance.event_log_storage
    batched = enable_batched_writes(storage)  # SQLite: see vibe_assets.event_log
    if batched or type(storage).store_event_batch is not EventLogStorage.store_event_batch:
        os.environ.setdefault(EVENT_BATCH_ENV, str(EVENT_BATCH_SIZE))
    setattr(instance, _DONE, True)
    return instance


def get_instance() -> dg.DagsterInstance:
    """The persistent instance at :func:`ensure_dagster_home` (runs show in ``dagster dev``),
    its storages tuned for this process (:func:`optimize_storage`)."""
    ensure_dagster_home()
    return optimize_storage(dg.DagsterInstance.get())
