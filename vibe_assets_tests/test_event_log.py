"""Batched asset-event writes on Dagster's SQLite event log (:mod:`vibe_assets.event_log`): what
Dagster can read back after a range run is the same as with its own one-event-at-a-time
writes, and the range run's materializations really are written in batches."""

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vibe_assets.event_log import enable_batched_writes, store_event_batch
from vibe_assets.instance import EVENT_BATCH_ENV, INSTANCE_YAML, optimize_storage
from vibe_assets.report import add_partition_metadata

KEYS = [f"f{i:03d}" for i in range(45)]
PARTITIONS = dg.StaticPartitionsDefinition(KEYS)


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def listing(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    add_partition_metadata(
        context, {key: {"files": int(key[1:]), "folder": key} for key in context.partition_keys}
    )
    return dg.MaterializeResult(metadata={"run_partitions": len(context.partition_keys)})


@dg.asset(
    partitions_def=PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[listing],
    check_specs=[dg.AssetCheckSpec("has_rows", asset="rows")],
)
def rows(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    context.log.info(f"{len(context.partition_keys)} partitions")
    return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=True)])


@pytest.fixture
def instance_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """Two instances with the repository's dagster.yaml: the first as vibe-assets uses it
    (batched writes, ``DAGSTER_EVENT_BATCH_SIZE``), the second as Dagster makes it."""
    monkeypatch.delenv(EVENT_BATCH_ENV, raising=False)
    homes = []
    for name in ("batched", "plain"):
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(INSTANCE_YAML)
        homes.append(dg.DagsterInstance.from_config(str(home)))
    batched, plain = homes
    try:
        optimize_storage(batched)
        assert os.environ[EVENT_BATCH_ENV] == "200"
        yield batched, plain
    finally:
        for instance in homes:
            instance.dispose()


def _materialize(instance: Any, batch_size: str | None, monkeypatch: pytest.MonkeyPatch) -> str:
    if batch_size is None:
        monkeypatch.delenv(EVENT_BATCH_ENV, raising=False)
    else:
        monkeypatch.setenv(EVENT_BATCH_ENV, batch_size)
    result = dg.materialize(
        [listing, rows],
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": KEYS[0],
            "dagster/asset_partition_range_end": KEYS[-1],
        },
    )
    assert result.success
    return result.run_id


def _readback(instance: Any, run_id: str) -> dict[str, Any]:
    """Everything the UI and asset selection read about the assets, run ids replaced."""
    out: dict[str, Any] = {}
    for key in (dg.AssetKey("listing"), dg.AssetKey("rows")):
        name = key.to_user_string()
        records = instance.fetch_materializations(key, limit=1000).records
        out[f"{name}.materializations"] = [
            (
                r.partition_key,
                {k: v.value for k, v in r.asset_materialization.metadata.items()},
                r.event_log_entry.dagster_event.step_key,
            )
            for r in records
        ]
        out[f"{name}.materialized"] = sorted(instance.get_materialized_partitions(key))
        storage = instance.event_log_storage
        mat_type = dg.DagsterEventType.ASSET_MATERIALIZATION
        latest_ids = storage.get_latest_storage_id_by_partition(key, mat_type)
        out[f"{name}.latest_ids"] = sorted(latest_ids)
        versions = storage.get_latest_tags_by_partition(key, mat_type, ["dagster/data_version"])
        out[f"{name}.data_versions"] = sorted(  # the values derive from the run id
            partition for partition, tags in versions.items() if tags["dagster/data_version"]
        )
        out[f"{name}.planned_not_done"] = (
            storage.get_latest_asset_partition_materialization_attempts_without_materializations(
                key
            )
        )
        latest = instance.get_latest_materialization_event(key)
        out[f"{name}.latest"] = latest.dagster_event.partition
        [record] = instance.get_asset_records([key])
        entry = record.asset_entry
        out[f"{name}.last_run_is_this_run"] = entry.last_run_id == run_id
        last = entry.last_materialization_record
        out[f"{name}.last_record_partition"] = last.event_log_entry.dagster_event.partition
        out[f"{name}.last_record_is_latest"] = last.storage_id == records[0].storage_id
        planned = instance.get_event_records(
            dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, key)
        )
        out[f"{name}.planned"] = sorted(
            r.event_log_entry.dagster_event.event_specific_data.partition for r in planned
        )
        tags = instance.get_event_tags_for_asset(key)  # indexed tags: their names per event
        out[f"{name}.tags"] = sorted(sorted(t) for t in tags)
    out["run_events"] = [
        (e.dagster_event.event_type_value, e.dagster_event.partition)
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None
    ]
    out["run_status"] = instance.get_run_by_id(run_id).status
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("rows"), "has_rows")]
    )
    out["check_status"] = [c.status for c in checks.values()]
    return out


def test_batched_writes_store_what_dagster_stores(
    instance_pair: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    batched, plain = instance_pair
    stored_one_by_one: list[str] = []
    storage = batched.event_log_storage
    original = storage.store_event

    def counting(event: dg.EventLogEntry) -> None:
        if event.dagster_event is not None:
            stored_one_by_one.append(event.dagster_event.event_type_value)
        original(event)

    monkeypatch.setattr(storage, "store_event", counting)
    runs = [_materialize(batched, "200", monkeypatch), _materialize(batched, "200", monkeypatch)]
    plain_runs = [_materialize(plain, None, monkeypatch), _materialize(plain, None, monkeypatch)]

    # per-partition events went in batches, everything else one at a time
    assert "ASSET_MATERIALIZATION" not in stored_one_by_one
    assert "ASSET_MATERIALIZATION_PLANNED" not in stored_one_by_one
    assert "STEP_SUCCESS" in stored_one_by_one
    got, want = _readback(batched, runs[-1]), _readback(plain, plain_runs[-1])
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name
    assert len(got["listing.materializations"]) == 2 * len(KEYS)
    latest = dict((p, md) for p, md, _ in reversed(got["listing.materializations"]))
    assert latest["f044"] == {"files": 44, "folder": "f044", "run_partitions": 45}
    assert got["listing.last_run_is_this_run"] and got["listing.last_record_is_latest"]


def test_mixed_batches_keep_their_order(instance_pair: tuple[Any, Any]) -> None:
    """A batch of several runs and event types is stored in order: single events between and
    around stretches of asset events."""
    from dagster._core.events import StepMaterializationData

    batched, _ = instance_pair
    run_a, other = str(uuid.uuid4()), str(uuid.uuid4())
    key = dg.AssetKey("listing")

    def mat(run_id: str, partition: str) -> dg.EventLogEntry:
        event = dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name="a",
            event_specific_data=StepMaterializationData(
                dg.AssetMaterialization(key, partition=partition)
            ),
        )
        return dg.EventLogEntry(
            error_info=None,
            level="DEBUG",
            user_message="",
            run_id=run_id,
            timestamp=time.time(),
            dagster_event=event,
        )

    def log(run_id: str, text: str) -> dg.EventLogEntry:
        return dg.EventLogEntry(
            error_info=None,
            level="INFO",
            user_message=text,
            run_id=run_id,
            timestamp=time.time(),
        )

    events = [
        log(run_a, "first"),
        mat(run_a, "f001"),
        mat(run_a, "f002"),
        log(run_a, "between"),
        mat(run_a, "f003"),  # a stretch of one: stored alone
        mat(other, "f004"),
        mat(other, "f005"),
    ]
    store_event_batch(batched.event_log_storage, events)
    stored = [
        e.dagster_event.partition if e.dagster_event else e.user_message
        for e in batched.all_logs(run_a)
    ]
    assert stored == ["first", "f001", "f002", "between", "f003"]
    assert [e.dagster_event.partition for e in batched.all_logs(other)] == ["f004", "f005"]
    latest = batched.get_latest_materialization_event(key)
    assert latest.dagster_event.partition == "f005"
    assert sorted(batched.get_materialized_partitions(key)) == [f"f00{i}" for i in range(1, 6)]


def test_only_dagsters_own_sqlite_storage_is_changed(instance_pair: tuple[Any, Any]) -> None:
    batched, plain = instance_pair
    assert enable_batched_writes(batched.event_log_storage)  # again: harmless
    assert "store_event_batch" in vars(batched.event_log_storage)
    assert "store_event_batch" not in vars(plain.event_log_storage)  # other objects untouched

    class Custom(type(plain.event_log_storage)):  # a subclass may write batches its own way
        pass

    assert not enable_batched_writes(object.__new__(Custom))
