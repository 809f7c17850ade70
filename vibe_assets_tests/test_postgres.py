"""Dagster on PostgreSQL (issue 16): the repository's ``dagster.postgres.yaml`` against a real
PostgreSQL server, started privately on loopback for this session
(:mod:`vibe_assets_tests.pg_cluster`; skipped, saying why, when PostgreSQL's binaries are not
installed, unless ``VIBE_TEST_REQUIRE_POSTGRES=1``, which ``.ci/run`` sets).

The scenarios are the existing tests', run again with the instance on PostgreSQL (each test gets
its own database): an ingest through the CLI (``test_cli``), a range run requested by the
sensor (``test_sensor``), dead-run cleanup (``test_runs``, unit and a killed CLI run), and a
pool-limited pair of CLI runs in two processes (``test_runs``: the second waits for the first's
``gpu`` slot, is interrupted, then runs once the first is dead and cleaned up).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from vibe_assets_tests import test_cli as cli_tests
from vibe_assets_tests import test_runs as runs_tests
from vibe_assets_tests import test_sensor as sensor_tests
from vibe_assets_tests.conftest import Env
from vibe_assets_tests.pg_cluster import (
    PG_ENV_VARS,
    PostgresCluster,
    PostgresUnavailable,
    start_cluster,
)

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]
POSTGRES_YAML = REPO / "dagster.postgres.yaml"
REQUIRE_ENV = "VIBE_TEST_REQUIRE_POSTGRES"

# Fixtures of the reused tests, made available here under their own names.
cli = runs_tests.cli
root = sensor_tests.root


# -- the configuration (no server needed) ------------------------------------------------------


def test_postgres_yaml_has_the_same_pools_and_monitoring_and_reads_env() -> None:
    sqlite = yaml.safe_load((REPO / "dagster.yaml").read_text())
    postgres = yaml.safe_load(POSTGRES_YAML.read_text())
    for section in ("concurrency", "run_monitoring", "telemetry"):
        assert postgres[section] == sqlite[section], section
    db = postgres["storage"]["postgres"]["postgres_db"]
    fields = ("hostname", "port", "username", "password", "db_name")
    assert {f: db[f] for f in fields} == {
        f: {"env": name} for f, name in zip(fields, PG_ENV_VARS, strict=True)
    }
    assert db["scheme"] == "postgresql+psycopg2"  # the driver dagster-postgres installs
    assert set(postgres) - set(sqlite) == {"storage"}  # nothing else differs


# -- a private PostgreSQL ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but PostgreSQL cannot start: {exc}")
        pytest.skip(f"no PostgreSQL server can start here: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_env(pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A new, empty database; its ``DAGSTER_PG_*`` variables are set in this process and
    returned (for subprocesses)."""
    env = pg_cluster.env(pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _postgres_home(folder: Path) -> Path:
    """``folder`` as a DAGSTER_HOME holding the repository's dagster.postgres.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(POSTGRES_YAML, folder / "dagster.yaml")
    return folder


@pytest.fixture
def pg_instance(tmp_path: Path, pg_env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(str(_postgres_home(tmp_path / "pg_home"))) as instance:
        yield instance


def _runs_in_database(cluster: PostgresCluster, env: dict[str, str]) -> list[str]:
    """Run ids in the ``runs`` table of the database, read with plain SQL (not Dagster)."""
    conn = cluster.connect(env["DAGSTER_PG_DB"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT run_id FROM runs")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def test_instance_is_postgres_with_pools_of_one(pg_instance: dg.DagsterInstance) -> None:
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    storage = pg_instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    storage.initialize_concurrency_limit_to_default("gpu")
    assert storage.get_concurrency_info("gpu").slot_count == 1
    assert pg_instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300


def test_vibe_assets_keeps_connections_open_and_writes_events_in_batches(
    tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-postgres opens a connection per storage call (NullPool); the CLI's instance keeps
    one open per storage (a QueuePool), so a run's ~45 events reuse it, and turns on Dagster's
    batched event writes, which dagster-postgres stores in one statement."""
    from sqlalchemy.pool import NullPool, QueuePool

    from vibe_assets.instance import EVENT_BATCH_SIZE, get_instance, optimize_storage

    home = _postgres_home(tmp_path / "cli_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("VIBE_HOME", str(tmp_path / "vibe_home"))
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    with dg.DagsterInstance.from_config(str(home)) as plain:
        assert isinstance(plain.run_storage._engine.pool, NullPool)
    instance = get_instance()
    try:
        for storage in (instance.run_storage, instance.event_log_storage):
            assert isinstance(storage._engine.pool, QueuePool)
        assert instance.get_runs() == []  # usable: the statement timeout is set on connect
        # a range run's per-folder materializations are written in batches (one INSERT each)
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == str(EVENT_BATCH_SIZE)
        pool = instance.event_log_storage._engine.pool
        for _ in range(5):
            instance.event_log_storage.get_concurrency_keys()
        assert pool.checkedout() == 0 and pool.checkedin() == 1  # one connection, reused
        # the executor's call (runs launched by the UI, sensor, schedule) changes nothing more
        assert optimize_storage(instance).event_log_storage._engine.pool is pool
    finally:
        instance.dispose()


# -- the scenarios of the other tests, on PostgreSQL ---------------------------------------------


def test_cli_ingest_search_and_folders(
    cli_env: Path,
    tmp_path: Path,
    pg_cluster: PostgresCluster,
    pg_env: dict[str, str],
) -> None:
    config = _postgres_home(cli_env / "dagster") / "dagster.yaml"
    cli_tests.test_ingest_json_search_and_folders(cli_env, tmp_path)
    assert config.read_text() == POSTGRES_YAML.read_text()  # kept, not replaced by the SQLite one
    with dg.DagsterInstance.from_config(str(config.parent)) as instance:
        runs = instance.get_runs()
    assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert sorted(_runs_in_database(pg_cluster, pg_env)) == sorted(r.run_id for r in runs)
    assert not list((cli_env / "dagster").glob("**/*.db"))  # no SQLite storage beside it


def test_sensor_range_run(env: Env, root: Path, pg_instance: dg.DagsterInstance) -> None:
    on_postgres = dataclasses.replace(env, instance=pg_instance)
    sensor_tests.test_vanished_folder_is_reported_and_its_run_removes_its_points(on_postgres, root)
    [*_, first] = pg_instance.get_runs()  # newest first: the first run was the range run
    assert (
        first.tags["dagster/asset_partition_range_start"]
        != (first.tags["dagster/asset_partition_range_end"])
    )
    assert pg_instance.get_dynamic_partitions("photo_folder")


def test_dead_run_cleanup(pg_instance: dg.DagsterInstance) -> None:
    runs_tests.test_cleanup_ends_dead_local_runs_only_and_frees_their_slots(pg_instance)


@pytest.fixture
def pg_cli(cli: runs_tests.Cli, pg_env: dict[str, str]) -> runs_tests.Cli:
    """test_runs' CLI environment with its instance on PostgreSQL."""
    _postgres_home(cli.dagster_home)
    cli.env.update(pg_env)
    return cli


@pytest.mark.slow
def test_killed_run_is_cleaned_up_by_the_next_ingest(pg_cli: runs_tests.Cli) -> None:
    runs_tests.test_killed_run_is_cleaned_up_by_the_next_ingest(pg_cli, "clip", "gpu")
    with pg_cli.instance() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"


@pytest.mark.slow
def test_pool_limited_pair_of_runs(pg_cli: runs_tests.Cli) -> None:
    runs_tests.test_waiting_ingest_logs_idles_and_stops_on_sigint_then_runs(pg_cli)
    with pg_cli.instance() as instance:
        runs = instance.get_runs()
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        statuses = sorted(r.status.value for r in runs)
        # holder (killed, then cleaned up: FAILURE), waiter (CANCELED), the last one (SUCCESS)
        assert statuses == ["CANCELED", "FAILURE", "SUCCESS"], statuses
