"""Batched asset-event writes for Dagster's SQLite event log (a fast path of
:func:`vibe_assets.instance.optimize_storage`).

A range run over 200 folder partitions records 200 ``ASSET_MATERIALIZATION_PLANNED`` events when
it is created and 200 ``ASSET_MATERIALIZATION`` events in its step (one per partition, each with
its own metadata). Dagster hands such events to ``EventLogStorage.store_event_batch`` in batches
of ``DAGSTER_EVENT_BATCH_SIZE``, but ``SqliteEventLogStorage`` inherits the base method, which
stores them one at a time: per event a new SQLAlchemy engine and connection, a transaction in the
run's database and another in the cross-run index database, each committed to disk. That is most
of a range run's Qdrant step once the sync itself is fast (``benchmarks/library.py``).

:func:`store_event_batch` writes the same rows as ``SqliteEventLogStorage.store_event`` does for
each event, in one transaction per database: the events in the run's database, their mirror
rows, asset event tags and ``asset_keys`` rows in the index database. It follows
dagster-postgres's ``PostgresEventLogStorage.store_event_batch`` (dagster-postgres 0.29.27): one
multi-row insert, tags for every event, the ``asset_keys`` row from the last event of each asset
(every column it writes is overwritten by each later event of the same type, so only the last
one's values remain either way). Anything else (other event types, a mixed stretch of types)
goes through ``store_event`` one event at a time, in order.

A batch that fails is stored again one event at a time by Dagster (``handle_new_event``), as
with dagster-postgres; so a failure after part of a batch was committed (a database locked for
longer than Dagster's SQLite busy timeout) can record those events twice, where one-at-a-time
writes would have stopped the run at the first failed event. Both leave the run failed or
retried, never an event lost.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import dagster as dg

_FAST_TYPES = frozenset(
    {
        dg.DagsterEventType.ASSET_MATERIALIZATION,
        dg.DagsterEventType.ASSET_OBSERVATION,
        dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    }
)
_PATCHED = "_vibe_batched_event_writes"


def _kind(event: dg.EventLogEntry) -> tuple[str, Any]:
    dagster_event = event.dagster_event
    event_type = dagster_event.event_type if dagster_event is not None else None
    return (event.run_id, event_type)


def store_event_batch(storage: Any, events: Sequence[dg.EventLogEntry]) -> None:
    """Store ``events`` in ``storage`` (a ``SqliteEventLogStorage``) with the same rows as
    calling its ``store_event`` on each, in order.

    Stretches of at least two consecutive events of one run and one type among asset
    materializations, observations and planned materializations are written in one transaction
    per database (see the module docstring); every other event goes through ``store_event``.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: a write failed. Dagster's ``handle_new_event`` then
            stores the whole batch again one event at a time.
    """
    start = 0
    while start < len(events):
        kind = _kind(events[start])
        end = start + 1
        while end < len(events) and _kind(events[end]) == kind:
            end += 1
        stretch = events[start:end]
        if len(stretch) > 1 and kind[1] in _FAST_TYPES:
            _store_stretch(storage, stretch)
        else:
            for event in stretch:
                storage.store_event(event)
        start = end


def _store_stretch(storage: Any, events: Sequence[dg.EventLogEntry]) -> None:
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

    table = SqlEventLogStorageTable
    rows = [storage._event_to_row(event) for event in events]
    with storage.run_connection(events[0].run_id) as conn:
        conn.execute(table.insert(), rows)
    with storage.index_transaction() as conn:
        result = conn.execute(
            table.insert().returning(table.c.id, sort_by_parameter_order=True), rows
        )
        event_ids = [int(row[0]) for row in result]
        if len(event_ids) != len(events):
            raise RuntimeError(f"stored {len(event_ids)} of {len(events)} events in the index")
        storage._store_asset_event_tags(conn, events, event_ids)
        last: dict[str, tuple[dg.EventLogEntry, int]] = {}
        for event, event_id in zip(events, event_ids, strict=True):
            last[event.get_dagster_event().asset_key.to_string()] = (event, event_id)
        for event, event_id in last.values():
            storage._store_asset_event(conn, event, event_id)


def enable_batched_writes(storage: Any) -> bool:
    """Give ``storage`` :func:`store_event_batch` if it is exactly Dagster's
    ``SqliteEventLogStorage`` (not a subclass, not another engine); returns whether it did.

    Only this object changes (its ``store_event_batch`` attribute); other instances, the class
    and every other method are left as they are. Calling it again is harmless."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    if type(storage) is not SqliteEventLogStorage:
        return False
    if not getattr(storage, _PATCHED, False):
        storage.store_event_batch = types.MethodType(store_event_batch, storage)
        setattr(storage, _PATCHED, True)
    return True
