"""Run reports: failure tables and counts per error code, as Dagster metadata and JSON."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

MAX_TABLE_ROWS = 500  # keep materialization metadata small; the JSON copy holds every row.

FAILURES_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("path", "string"),
        dg.TableColumn("code", "string"),
        dg.TableColumn("message", "string"),
    ]
)


def failure_metadata(failures: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Metadata entries for a list of ``{"path", "code", "message"}`` failures.

    Returns ``failed`` (int), ``failed_by_code`` (JSON ``{code: count}``), ``failures`` (table of
    at most :data:`MAX_TABLE_ROWS` rows) and ``failures_json`` (every row, for scripts).
    """
    rows = sorted(
        ({k: str(f[k]) for k in ("path", "code", "message")} for f in failures),
        key=lambda r: r["path"],
    )
    by_code = Counter(r["code"] for r in rows)
    return {
        "failed": dg.MetadataValue.int(len(rows)),
        "failed_by_code": dg.MetadataValue.json(dict(sorted(by_code.items()))),
        "failures": dg.MetadataValue.table(
            records=[dg.TableRecord(r) for r in rows[:MAX_TABLE_ROWS]], schema=FAILURES_SCHEMA
        ),
        "failures_json": dg.MetadataValue.json(rows),
    }
