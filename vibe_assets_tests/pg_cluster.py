"""A private PostgreSQL cluster on loopback for the tests and ``benchmarks/ingest.py``.

:func:`start_cluster` runs Debian's ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/<v>/bin``,
or ``initdb`` on ``PATH``) in a new temporary folder, listening on ``127.0.0.1`` at a free port
with a password (scram-sha-256) and its socket in that folder, so it touches nothing of the
machine's own PostgreSQL. PostgreSQL refuses to run as root: as root, the server runs as the
``postgres`` system user (Debian's package creates it) through ``runuser``.

Each test gets its own database (:meth:`PostgresCluster.create_database`); the Dagster
instance then reaches it through the ``DAGSTER_PG_*`` variables that ``dagster.postgres.yaml``
reads (:meth:`PostgresCluster.env`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_ENV_VARS = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)
"""The variables ``dagster.postgres.yaml`` reads (and docker-compose.yml sets)."""

USER = "vibe"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (the message says why: no binaries, root
    without a ``postgres`` user, or the server did not start)."""


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian), else the one of ``initdb`` on ``PATH``;
    None when there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresCluster:
    """A running private cluster: ``port`` on ``127.0.0.1``, superuser :data:`USER` with
    ``password``, files under ``base``."""

    bindir: Path
    base: Path
    port: int
    password: str
    run_as: str | None  # the system user the server runs as (None: this process's user)
    host: str = "127.0.0.1"
    user: str = USER

    @property
    def data(self) -> Path:
        return self.base / "data"

    def env(self, db: str) -> dict[str, str]:
        """The ``DAGSTER_PG_*`` variables for database ``db`` of this cluster."""
        values = (self.host, str(self.port), self.user, self.password, db)
        return dict(zip(PG_ENV_VARS, values, strict=True))

    def connect(self, db: str = "postgres"):  # -> psycopg2 connection
        """A psycopg2 connection (autocommit) to database ``db``."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=db
        )
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (letters, digits, ``_``); returns ``name``.

        Raises:
            ValueError: ``name`` has other characters.
        """
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be letters, digits and _: {name!r}")
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def stop(self) -> None:
        """Stop the server (immediate) and delete its files."""
        _run(
            self.run_as,
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
        )
        shutil.rmtree(self.base, ignore_errors=True)


def _run(run_as: str | None, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if run_as is not None:
        argv = ["runuser", "-u", run_as, "--", *argv]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise PostgresUnavailable(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return proc


def start_cluster(durable: bool = False) -> PostgresCluster:
    """Initialise and start a private cluster (see the module docstring); a few seconds.

    Args:
        durable: keep PostgreSQL's defaults (fsync on, synchronous commit), as a real server
            runs; off (the default, for tests) they are turned off: faster, and a test's
            database need not survive a power loss.

    Raises:
        PostgresUnavailable: no ``initdb``/``pg_ctl`` here, root without a ``postgres`` user or
            without ``runuser``, or the server did not start.
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql)"
        )
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, and there is no 'postgres' user to run the server as "
                "(PostgreSQL refuses to run as root)"
            ) from None
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root without runuser to drop privileges")
        run_as = owner.pw_name
    base = Path(tempfile.mkdtemp(prefix="vibe-pg-"))
    try:
        base.chmod(0o700)
        password = secrets.token_hex(16)
        (base / "pwfile").write_text(password + "\n")
        if run_as is not None:
            owner = pwd.getpwnam(run_as)
            for path in (base, base / "pwfile"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(
            run_as,
            [
                str(bindir / "initdb"),
                "-D", str(base / "data"),
                "-U", USER,
                "--pwfile", str(base / "pwfile"),
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -k {base} -c max_connections=200"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        last: PostgresUnavailable | None = None
        for _ in range(3):  # the free port may be taken between the probe and the start
            port = _free_port()
            cluster = PostgresCluster(bindir, base, port, password, run_as)
            try:
                _run(
                    run_as,
                    [
                        str(bindir / "pg_ctl"),
                        "-D", str(cluster.data),
                        "-l", str(base / "server.log"),
                        "-o", f"{options} -p {port}",
                        "-w", "-t", "60",
                        "start",
                    ],
                )  # fmt: skip
            except PostgresUnavailable as exc:
                last = exc
                time.sleep(0.2)
                continue
            return cluster
        log = base / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise PostgresUnavailable(f"the server did not start: {last}\n{tail}")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


@contextlib.contextmanager
def postgres_env() -> Iterator[str]:
    """``DAGSTER_PG_*`` set in this process for a PostgreSQL database; yields what it is.

    The server named by ``DAGSTER_PG_*`` when ``DAGSTER_PG_HOST`` is set (``DAGSTER_PG_DB``
    must exist); else a private cluster on loopback (Debian's
    PostgreSQL binaries), deleted afterwards.

    Raises:
        PostgresUnavailable: no PostgreSQL server can be started here.
    """
    if os.environ.get("DAGSTER_PG_HOST"):
        yield f"DAGSTER_PG_HOST={os.environ['DAGSTER_PG_HOST']}"
        return
    cluster = start_cluster(durable=True)
    saved = {k: os.environ.get(k) for k in PG_ENV_VARS}
    try:
        os.environ.update(cluster.env(cluster.create_database("bench")))
        version = (cluster.bindir / "..").resolve().name
        yield f"private PostgreSQL {version} on 127.0.0.1 (fsync on)"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cluster.stop()
