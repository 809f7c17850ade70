"""Run reports: failure tables and counts per error code, sizes for people, and per-partition
metadata as Dagster records it.

In a range run (``context.partition_keys`` has several folder keys) Dagster copies a
``MaterializeResult``'s metadata to every partition's materialization. The assets therefore
record each folder's own numbers with :func:`add_partition_metadata` (partition-scoped metadata,
merged over the result's for that partition's event) and put only run-level values in the
result, under keys starting with :data:`RUN_PREFIX`:

- a key without the prefix (``files``, ``failed``, ``decoded``, ...) is THIS partition's number,
  in single-partition and range runs alike;
- ``run_<name>`` totals (:func:`run_totals`) appear in range runs only (in a single-partition
  run they would repeat the partition's numbers); wall-clock timings of a step shared by all
  the run's folders (decode + embed pipeline, captioning) are ``run_...`` in every run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

MAX_TABLE_ROWS = 500  # keep materialization metadata small; the JSON copy holds every row.
RUN_PREFIX = "run_"  # run-level metadata keys (never a single folder's number)
PER_FOLDER_LOG_MAX = 20
"""Runs over at most this many folders log a line per folder; larger range runs log only the
folders with something to say (failures, deleted points) and a summary: each log line is an event
written to the instance's storage (~8 ms on SQLite), and the per-folder numbers are in each
partition's metadata anyway."""

FAILURES_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("path", "string"),
        dg.TableColumn("code", "string"),
        dg.TableColumn("message", "string"),
    ]
)

_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n_bytes: int | float) -> str:
    """A size in bytes as people read it, in binary units (1 KiB = 1024 B): ``"0 B"``,
    ``"512 B"``, ``"1.5 KiB"``, ``"15.6 GiB"``. Bytes are whole; from KiB up one decimal,
    rounded, never ``"1024.0 KiB"`` (that is ``"1.0 MiB"``); EiB is the largest unit.

    Raises:
        ValueError: ``n_bytes`` is negative.
    """
    if n_bytes < 0:
        raise ValueError(f"a size cannot be negative: {n_bytes}")
    if n_bytes < 1024:
        return f"{int(n_bytes)} B"
    value = float(n_bytes)
    for unit in _BINARY_UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def failure_rows(failures: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """``{"path", "code", "message"}`` rows (text) of ``failures``, sorted by path; other keys
    of a failure (e.g. a cached failure's ``decoder``) are left out."""
    return sorted(
        ({k: str(f[k]) for k in ("path", "code", "message")} for f in failures),
        key=lambda r: r["path"],
    )


def failure_metadata(failures: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Metadata entries for a list of ``{"path", "code", "message"}`` failures.

    Returns ``failed`` (int), ``failed_by_code`` (JSON ``{code: count}``), ``failures`` (table of
    at most :data:`MAX_TABLE_ROWS` rows) and ``failures_json`` (every row, for scripts).
    """
    rows = failure_rows(failures)
    by_code = Counter(r["code"] for r in rows)
    return {
        "failed": dg.MetadataValue.int(len(rows)),
        "failed_by_code": dg.MetadataValue.json(dict(sorted(by_code.items()))),
        "failures": dg.MetadataValue.table(
            records=[dg.TableRecord(r) for r in rows[:MAX_TABLE_ROWS]], schema=FAILURES_SCHEMA
        ),
        "failures_json": dg.MetadataValue.json(rows),
    }


def run_metadata(partition_keys: Sequence[str], totals: Mapping[str, Any]) -> dict[str, Any]:
    """Run-level metadata of a range run: ``run_partitions`` (folders in the run) and
    ``run_<name>`` for each of ``totals``; ``{}`` when the run covers one partition (its own
    metadata already says it all)."""
    if len(partition_keys) < 2:
        return {}
    return {
        f"{RUN_PREFIX}partitions": len(partition_keys),
        **{f"{RUN_PREFIX}{name}": value for name, value in totals.items()},
    }


def run_totals(
    partition_keys: Sequence[str], counts: Mapping[str, Mapping[str, int | float]]
) -> dict[str, Any]:
    """:func:`run_metadata` of per-partition ``counts`` (``{partition key: {name: number}}``)
    summed over the partitions (right for files, which belong to one folder; images shared
    by folders would count once per folder)."""
    totals: Counter[str] = Counter()
    for numbers in counts.values():
        totals.update(numbers)
    return run_metadata(partition_keys, dict(sorted(totals.items())))


def add_partition_metadata(
    context: dg.AssetExecutionContext,
    per_partition: Mapping[str, Mapping[str, Any]],
    asset_key: dg.AssetKey | None = None,
) -> None:
    """Record ``per_partition`` (``{partition key: metadata}``) on each partition's own
    materialization of ``asset_key`` (None: the context's only asset). Call it before the
    asset's ``MaterializeResult`` is returned or yielded; Dagster merges these entries over
    the result's metadata for that partition's event.

    ``context.add_asset_metadata(..., partition_key=k)`` (Dagster 1.13) checks ``k`` against the
    run's range by reading every dynamic partition of the instance, on every call: 200 folders
    of a 5,000-folder library cost ~1.8 s per asset that way (``benchmarks/library.py``
    profile). The keys are checked once here against ``context.partition_keys``, and the
    entries go into the same per-step metadata accumulator that method fills; if that internal
    is not there (another Dagster version), the public method is called per partition.

    Raises:
        dagster.DagsterInvariantViolationError: a key that the run does not target, or an
            asset key the step does not materialize.
    """
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    if len(per_partition) < 2 or not hasattr(accumulator, "with_additional_asset_metadata"):
        for key, metadata in per_partition.items():
            context.add_asset_metadata(dict(metadata), asset_key=asset_key, partition_key=key)
        return
    target = asset_key or context.assets_def.key
    if target not in context.assets_def.keys:
        raise dg.DagsterInvariantViolationError(
            f"Attempted to add metadata for asset key '{target}' that is not being materialized."
        )
    targeted = set(context.partition_keys)
    for key, metadata in per_partition.items():
        if key not in targeted:
            raise dg.DagsterInvariantViolationError(
                f"Attempted to add metadata for partition key '{key}' that is not being targeted."
            )
        accumulator = accumulator.with_additional_asset_metadata(
            asset_key=target, metadata=dict(metadata), partition_key=key
        )
    step._metadata_accumulator = accumulator  # type: ignore[union-attr]
