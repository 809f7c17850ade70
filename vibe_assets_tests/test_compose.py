"""docker-compose.yml, validated offline (issue 16): Debian's ``docker-compose`` (1.29, which
validates against the compose specification's schema and needs no Docker daemon) resolves it with
``.env.example``; without that binary the same checks run on the file as PyYAML reads it, with
``${VAR}`` interpolation done here. The checks tie each service to what the tests exercised: the
mounted dagster.yaml is ``dagster.postgres.yaml`` (``test_postgres``), the ``DAGSTER_PG_*``
names are the ones the tests set, the code server serves the module ``pyproject.toml`` and
``workspace.yaml`` name, and the webserver and daemon reach it where the workspace says."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vibe_assets_tests.pg_cluster import PG_ENV_VARS

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DAGSTER_HOME = "/opt/dagster/home"
CODE_SERVERS = ("user-code", "user-code-gpu")
DAGSTER_SERVICES = (*CODE_SERVERS, "dagster-webserver", "dagster-daemon")


def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``,
    ``$$`` for a literal ``$``.

    Raises:
        KeyError: a ``${VAR:?error}`` variable is unset or empty (the message is the error).
    """

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if value:
            return value
        if op in (":?", "?"):
            raise KeyError(arg)
        return arg if op in (":-", "-") else ""

    return _VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def _by_pyyaml() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), _env_example()))


def _by_docker_compose(binary: str) -> dict[str, Any]:
    cmd = [binary, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module", params=["docker-compose", "pyyaml"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The resolved compose file, by Debian's docker-compose and by PyYAML."""
    if request.param == "pyyaml":
        return _by_pyyaml()
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    return _by_docker_compose(binary)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``{target: (source, mode)}``; bind sources made absolute (docker-compose does)."""
    out = {}
    for volume in service.get("volumes", []):
        parts = volume.split(":") if isinstance(volume, str) else None
        assert parts is not None, f"short volume syntax expected, got {volume!r}"
        source, target, mode = (*parts, "rw")[:3]
        if source.startswith("."):
            source = str((REPO / source).resolve())
        out[target] = (source, mode)
    return out


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services_and_health_checks(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"postgres", "qdrant", *DAGSTER_SERVICES}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in DAGSTER_SERVICES:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_dagster_services_mount_the_postgres_instance_the_tests_use(
    config: dict[str, Any],
) -> None:
    env = _env_example()
    services = config["services"]
    postgres = _env(services["postgres"])
    for name in DAGSTER_SERVICES:
        service = services[name]
        service_env = _env(service)
        assert service_env["DAGSTER_HOME"] == DAGSTER_HOME
        source, mode = _mounts(service)[f"{DAGSTER_HOME}/dagster.yaml"]
        assert Path(source) == REPO / "dagster.postgres.yaml" and mode == "ro", name
        assert _mounts(service)[f"{DAGSTER_HOME}/storage"][0] == "dagster_storage"  # logs
        pg = {k: v for k, v in service_env.items() if k.startswith("DAGSTER_PG_")}
        assert set(pg) == set(PG_ENV_VARS), name  # the names dagster.postgres.yaml reads
        assert (pg["DAGSTER_PG_HOST"], pg["DAGSTER_PG_PORT"]) == ("postgres", "5432")
        assert pg["DAGSTER_PG_PASSWORD"] == env["DAGSTER_PG_PASSWORD"]  # from the env file
        assert (pg["DAGSTER_PG_USER"], pg["DAGSTER_PG_PASSWORD"], pg["DAGSTER_PG_DB"]) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
            postgres["POSTGRES_DB"],
        )
    postgres_yaml = yaml.safe_load((REPO / "dagster.postgres.yaml").read_text())
    read = postgres_yaml["storage"]["postgres"]["postgres_db"]
    assert {v["env"] for v in read.values() if isinstance(v, dict)} == set(PG_ENV_VARS)


def test_code_server_serves_the_code_location_where_the_workspace_points(
    config: dict[str, Any],
) -> None:
    import tomllib

    services = config["services"]
    dagster_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]
    [local] = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    [remote] = yaml.safe_load((REPO / "workspace.compose.yaml").read_text())["load_from"]
    grpc = remote["grpc_server"]
    assert grpc["location_name"] == dagster_cfg["code_location_name"]
    assert local["python_module"]["module_name"] == dagster_cfg["module_name"]
    for name in CODE_SERVERS:
        command = services[name]["command"]
        assert command[:3] == ["dagster", "api", "grpc"], name
        args = dict(zip(command[3::2], command[4::2], strict=True))
        assert args["--module-name"] == dagster_cfg["module_name"]
        assert (args["--host"], int(args["--port"])) == ("0.0.0.0", grpc["port"])
        assert services[name]["hostname"] == "vibe-worker"  # dead-run cleanup across restarts
    assert services["user-code"]["profiles"] == ["cpu"]
    gpu = services["user-code-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["networks"]["default"]["aliases"] == [grpc["host"]]  # answers as user-code
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert services["user-code"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    for name in ("dagster-webserver", "dagster-daemon"):
        command = services[name]["command"]
        assert command[command.index("--workspace") + 1].endswith("/workspace.compose.yaml")
    assert "workspace.compose.yaml" in (REPO / "Dockerfile").read_text()


def test_code_servers_read_the_library_and_reach_qdrant(config: dict[str, Any]) -> None:
    services = config["services"]
    env = _env_example()
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"] == env["QDRANT_API_KEY"]
    for name in CODE_SERVERS:
        service_env = _env(services[name])
        roots = service_env["VIBE_PHOTO_ROOTS"]
        source, mode = _mounts(services[name])[roots]
        assert source == env["VIBE_PHOTOS_DIR"] and mode == "ro"  # read-only by default
        assert service_env["QDRANT_URL"] == "http://qdrant:6333"
        assert service_env["QDRANT_API_KEY"] == env["QDRANT_API_KEY"]
        assert _mounts(services[name])[service_env["VIBE_HOME"]][0] == "vibe_home"
    assert _env(services["user-code"])["VIBE_DEVICE"] == "cpu"
    assert _env(services["user-code-gpu"])["VIBE_DEVICE"] == "cuda"


def test_secrets_come_only_from_an_uncommitted_env_file() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required == {"DAGSTER_PG_PASSWORD", "QDRANT_API_KEY", "VIBE_PHOTOS_DIR"}
    assert required <= set(_env_example())
    with pytest.raises(KeyError, match="DAGSTER_PG_PASSWORD"):
        interpolate(COMPOSE.read_text(), {})
    ignored = (REPO / ".gitignore").read_text().split()
    assert ".env" in ignored
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".env" in dockerignore  # never copied into an image either
    raw = yaml.safe_load(COMPOSE.read_text())  # not interpolated
    secrets = [
        value
        for service in raw["services"].values()
        for key, value in service.get("environment", {}).items()
        if key.endswith(("PASSWORD", "API_KEY"))
    ]
    # postgres, qdrant, the 4 Dagster services' DAGSTER_PG_PASSWORD, the 2 code servers' key
    assert len(secrets) == 8
    assert all(re.fullmatch(r"\$\{\w+:\?[^}]+\}", v) for v in secrets), secrets
