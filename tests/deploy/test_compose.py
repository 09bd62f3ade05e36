"""Static checks of the deployment files: compose files, Dockerfile, .dockerignore, docs.

Containers cannot run where the tests run, so the compose files are read the way Compose
reads them: YAML with anchors, ``${VAR}`` interpolation, files merged in command-line
order honouring ``!reset`` and ``!override`` (Compose Specification, "Merge"), and the
result validated against the Compose Specification JSON schema in tests/data.
Commands are checked against the real click groups of ``producer.cli`` and ``worker.cli``.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from tests.support.deployfiles import (
    BASE,
    COMBINATIONS,
    COMMAND_LINES,
    CPU,
    DEPLOY_DOC,
    ENV,
    FRAMESTATS_SERVICES,
    PROGRAMS,
    ROOT,
    SCHEMA,
    STACKS,
    ComposeLoader,
    MissingVariable,
    argv,
    check_celery_app,
    check_cli,
    environment,
    gpu_reservations,
    interpolate,
    load,
    model,
    mount_targets,
    seconds,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


# --------------------------------------------------------------------------- compose tests


@pytest.mark.parametrize("files", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_compose_files_validate_against_the_compose_schema(
    validator: jsonschema.Draft7Validator, files: tuple[str, ...]
) -> None:
    errors = sorted(validator.iter_errors(model(*files)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


@pytest.mark.parametrize("missing", sorted(ENV))
@pytest.mark.parametrize("empty", [False, True], ids=["unset", "empty"])
def test_secrets_are_required_variables(missing: str, empty: bool) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    if empty:
        env[missing] = ""
    with pytest.raises(MissingVariable, match=missing):
        model(*BASE, env=env)


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_runs_a_known_program(stack: str) -> None:
    for name, service in model(*STACKS[stack])["services"].items():
        words = argv(service)
        assert words, f"{name} sets no command; say what it runs"
        assert words[0] in PROGRAMS, f"{name} runs {words[0]!r}, not one of {sorted(PROGRAMS)}"


@pytest.mark.parametrize(
    "words", [w for _, w in COMMAND_LINES], ids=[where for where, _ in COMMAND_LINES]
)
def test_commands_exist(words: list[str]) -> None:
    if words[0] in ("worker", "producer"):
        check_cli(words)
    elif words[0] == "celery":
        check_celery_app(words)
    else:
        assert words[0] == "redis-server"


def test_redis_requires_a_password_and_persists() -> None:
    services = model(*BASE)["services"]
    words = argv(services["redis"])
    assert words[0] == "redis-server"
    assert words[words.index("--requirepass") + 1] == ENV["REDIS_PASSWORD"]
    assert words[words.index("--appendonly") + 1] == "yes"
    assert "redis-data" in (model(*BASE).get("volumes") or {})
    assert mount_targets(services["redis"])["/data"] == "redis-data"
    assert services["redis"].get("healthcheck", {}).get("test")
    for name in FRAMESTATS_SERVICES:
        url = environment(services[name])["REDIS_URL"] or ""
        assert url.startswith("redis://:" + ENV["REDIS_PASSWORD"] + "@redis:6379/"), name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


_SIZE = re.compile(r"(?P<n>\d+)\s*(?P<unit>[kmg]?b?)", re.I)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}


def redis_bytes(text: str) -> int:
    """A redis.conf memory size ("2gb", "512mb", "1000000") in bytes."""
    m = _SIZE.fullmatch(text.strip())
    assert m, f"not a Redis memory size: {text!r}"
    return int(m["n"]) * _UNITS[m["unit"].lower()]


@pytest.mark.parametrize("env", [ENV, {**ENV, "REDIS_MAXMEMORY": "512mb"}], ids=["default", "set"])
def test_redis_memory_is_bounded_and_never_evicts(env: dict[str, str]) -> None:
    """A maxmemory (0 would mean none) and noeviction: at the limit Redis refuses writes,
    which the workers ride out (tests/faults/test_refused_writes.py), rather than
    silently dropping queued chunks or job state."""
    for files in STACKS.values():
        words = argv(model(*files, env=env)["services"]["redis"])
        assert words.count("--maxmemory") == 1 and words.count("--maxmemory-policy") == 1
        limit = redis_bytes(words[words.index("--maxmemory") + 1])
        assert 256 * 2**20 <= limit <= 64 * 2**30, limit
        if "REDIS_MAXMEMORY" in env:
            assert limit == redis_bytes(env["REDIS_MAXMEMORY"])
        assert words[words.index("--maxmemory-policy") + 1] == "noeviction"


@pytest.mark.parametrize("stack", STACKS)
def test_no_port_is_published_beyond_localhost(stack: str) -> None:
    # Raw values (env=None): no variable may move the bind address off 127.0.0.1.
    for env in (None, ENV):
        for name, service in model(*STACKS[stack], env=env)["services"].items():
            for port in service.get("ports") or []:
                if isinstance(port, dict):
                    assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
                else:
                    assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_worker_reserves_all_gpus_in_the_base_file() -> None:
    services = model(*BASE)["services"]
    (gpu,) = gpu_reservations(services["worker"])
    assert gpu["driver"] == "nvidia"
    assert str(gpu["count"]) == "all"
    others = [name for name, s in services.items() if name != "worker" and gpu_reservations(s)]
    assert not others, f"only the worker needs a GPU, not {others}"


def test_cpu_override_removes_the_gpu_reservation() -> None:
    services = model(*CPU)["services"]
    assert not any(gpu_reservations(s) for s in services.values())
    worker = services["worker"]
    words = argv(worker)
    assert words[words.index("--device") + 1] == "cpu"
    assert environment(worker)["FRAMESTATS_DEVICE"] == "cpu"
    # The rest of the worker survives the merge.
    assert mount_targets(worker)["/data"]
    assert environment(worker)["DATA_ROOT"] == "/data"


def test_worker_can_be_scaled() -> None:
    worker = model(*BASE)["services"]["worker"]
    for fixed in ("container_name", "hostname", "ports"):
        assert fixed not in worker, f"worker sets {fixed}: --scale worker=N would clash"
    # Node names default to the container hostname, which differs per replica.
    assert "WORKER_NAME" not in environment(worker)


@pytest.mark.parametrize("stack", STACKS)
def test_worker_has_time_to_finish_a_chunk(stack: str) -> None:
    worker = model(*STACKS[stack])["services"]["worker"]
    assert seconds(worker["stop_grace_period"]) >= 60
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert worker["restart"] in ("always", "unless-stopped", "on-failure")


@pytest.mark.parametrize("name", ["worker", "producer"])
def test_data_is_mounted_at_data_root(name: str) -> None:
    raw = model(*BASE, env=None)["services"][name]
    service = model(*BASE)["services"][name]
    assert environment(service)["DATA_ROOT"] == "/data"
    assert mount_targets(raw)["/data"] == "${DATA_DIR:-./data}"
    assert mount_targets(service)["/data"] == "./data"


def test_flower_requires_basic_auth() -> None:
    flower = model(*BASE)["services"]["flower"]
    words = argv(flower)
    assert words[:4] == ["celery", "-A", "worker.app:app", "flower"]
    env = environment(flower)
    assert env["FLOWER_BASIC_AUTH"] == ENV["FLOWER_BASIC_AUTH"]
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert not any("unauthenticated" in word.lower() for word in words)
    assert [p for p in flower["ports"] if str(p).endswith(":5555")]


def test_metrics_endpoint() -> None:
    metrics = model(*BASE)["services"]["metrics"]
    words = argv(metrics)
    assert words[:2] == ["producer", "metrics"]
    assert words[words.index("--port") + 1] == "9108"
    # Inside the container it must listen on all interfaces for the published port to
    # reach it (the CLI's default is 127.0.0.1); the host side stays on 127.0.0.1.
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert [p for p in metrics["ports"] if str(p).startswith("127.0.0.1:") and p.endswith(":9108")]


def test_producer_is_a_one_off_tool() -> None:
    services = model(*BASE)["services"]
    producer = services["producer"]
    assert "tools" in producer["profiles"]
    assert producer["entrypoint"] == ["producer"]
    started_by_up = [name for name, s in services.items() if not s.get("profiles")]
    assert sorted(started_by_up) == ["flower", "metrics", "redis", "worker"]


def test_per_gpu_example_is_valid_when_uncommented(validator: jsonschema.Draft7Validator) -> None:
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    start = lines.index("  # worker-gpu0:")
    end = start
    while end < len(lines) and lines[end].startswith("  # "):
        end += 1
    text = "\n".join(lines[:start] + ["  " + line[4:] for line in lines[start:end]] + lines[end:])
    services = interpolate(yaml.load(text, Loader=ComposeLoader), ENV)["services"]  # noqa: S506
    assert not list(validator.iter_errors({"services": services}))
    worker = services["worker"]
    for index in ("0", "1"):
        service = services[f"worker-gpu{index}"]
        (gpu,) = gpu_reservations(service)
        assert gpu["device_ids"] == [index] and "count" not in gpu
        for key in ("command", "environment", "volumes", "stop_grace_period", "restart"):
            assert service[key] == worker[key], key


def test_framestats_services_share_one_image_and_environment() -> None:
    raw = load("docker-compose.yml")
    assert any(key.startswith("x-") for key in raw), "shared settings belong in x- fields"
    services = model(*BASE)["services"]
    images = {services[name]["image"] for name in FRAMESTATS_SERVICES}
    assert len(images) == 1, images
    urls = {environment(services[name])["REDIS_URL"] for name in FRAMESTATS_SERVICES}
    assert len(urls) == 1, urls


def test_required_variables_are_documented() -> None:
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docker-compose.cpu.yml").read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    doc = DEPLOY_DOC.read_text()
    undocumented = sorted(name for name in names if name not in doc)
    assert not undocumented, f"docs/deploy.md does not mention {undocumented}"
