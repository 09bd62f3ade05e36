"""Static checks of the deployment files: compose files, Dockerfile, .dockerignore, docs.

Containers cannot run where the tests run, so the compose files are read the way Compose
reads them: YAML with anchors, ``${VAR}`` interpolation, files merged in command-line
order honouring ``!reset`` and ``!override`` (Compose Specification, "Merge"), and the
result validated against the Compose Specification JSON schema in tests/data.
Commands are checked against the real click groups of ``producer.cli`` and ``worker.cli``.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

BASE = ("docker-compose.yml",)
CPU = ("docker-compose.yml", "docker-compose.cpu.yml")
#: Every file combination that is deployed, and the override file on its own.
COMBINATIONS = {"base": BASE, "cpu-override-alone": ("docker-compose.cpu.yml",), "cpu": CPU}
#: The combinations that describe a whole stack.
STACKS = {"base": BASE, "cpu": CPU}

#: Values for the variables the compose files require (what a .env provides).
ENV = {"REDIS_PASSWORD": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "FLOWER_BASIC_AUTH": "admin:s3cret"}
#: Services that run the framestats image.
FRAMESTATS_SERVICES = ("worker", "flower", "metrics", "producer")
#: Programs a service may start.
PROGRAMS = {"worker", "producer", "celery", "redis-server"}


# --------------------------------------------------------------------------- compose reading


@dataclass(frozen=True)
class Reset:
    """A value tagged ``!reset``: the attribute inherited from earlier files is removed."""

    value: Any


@dataclass(frozen=True)
class Override:
    """A value tagged ``!override``: replaces the inherited value instead of merging."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also knows Compose's merge tags."""


def _tag_constructor(cls: type) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return cls(loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return cls(loader.construct_sequence(node, deep=True))
        return cls(loader.construct_scalar(node))  # type: ignore[arg-type]

    return construct


ComposeLoader.add_constructor("!reset", _tag_constructor(Reset))
ComposeLoader.add_constructor("!override", _tag_constructor(Override))


class MissingVariable(Exception):
    """Raised when a ``${VAR:?message}`` / ``${VAR?message}`` variable is not provided."""


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate_text(text: str, env: dict[str, str]) -> str:
    """``text`` with ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``... resolved."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ValueError(f"invalid interpolation {match[0]!r}")
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        value = env.get(name)
        # The ':' forms treat an empty value like an unset one.
        absent = value is None or (op is not None and op.startswith(":") and value == "")
        if op is None:
            return value or ""
        if op.endswith("-"):
            return arg if absent else value  # type: ignore[return-value]
        if op.endswith("?"):
            if absent:
                raise MissingVariable(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        return "" if absent else arg  # '+': the alternative when set

    return _VARIABLE.sub(substitute, text)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with every string interpolated (Compose interpolates values, not keys)."""
    if isinstance(value, str):
        return interpolate_text(value, env)
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, Reset | Override):
        return type(value)(interpolate(value.value, env))
    return value


#: Service attributes that the later file replaces rather than appends to.
_REPLACED_SEQUENCES = {("command",), ("entrypoint",), ("healthcheck", "test")}


def resolve(value: Any) -> Any:
    """``value`` with merge tags applied against nothing (``!reset`` entries vanish)."""
    if isinstance(value, Override):
        return resolve(value.value)
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [resolve(v) for v in value if not isinstance(v, Reset)]
    return value


def merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """``override`` merged onto ``base`` by the Compose Specification's merge rules."""
    if isinstance(override, Override):
        return resolve(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge(merged[key], value, (*path, key))
            else:
                merged[key] = resolve(value)
        return merged
    replaced = len(path) > 2 and path[0] == "services" and path[2:] in _REPLACED_SEQUENCES
    if isinstance(base, list) and isinstance(override, list) and not replaced:
        return base + [item for item in resolve(override) if item not in base]
    return resolve(override)


def load(name: str) -> Any:
    """One compose file as YAML, merge tags kept."""
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)  # noqa: S506


def model(*names: str, env: dict[str, str] | None = ENV) -> dict[str, Any]:
    """The application model of ``names`` merged in order; ``env=None`` skips interpolation."""
    result: dict[str, Any] = {}
    for name in names:
        document = load(name)
        result = merge(result, document if env is None else interpolate(document, env))
    return result


def argv(service: dict[str, Any]) -> list[str]:
    """What the service's container runs: entrypoint then command."""
    words: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        words += shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    return words


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """The service's environment as a mapping, whichever form the file uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else str(v) for k, v in env.items()}


def mount_targets(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of each volume of the service."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = str(volume.get("source", ""))
        else:
            source, _, rest = str(volume).partition(":")
            mounts[rest.split(":")[0] if rest else source] = source if rest else ""
    return mounts


def gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's device reservations that ask for a GPU."""
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    return [d for d in devices if "gpu" in (d.get("capabilities") or [])]


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def seconds(duration: str) -> float:
    """A Compose duration ('2m', '1m30s', '90s') in seconds."""
    parts = _DURATION_PART.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


# --------------------------------------------------------------------------- Dockerfile reading


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage, its FROM first."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def resolve_from(argument: str) -> str:
    """The image a FROM names, with global ARG defaults substituted."""
    global_args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            global_args[name] = default.strip("\"'")
    image = argument.split()[0] if not argument.startswith("--") else argument.split()[1]
    return interpolate_text(image, global_args)


def exec_form(arguments: str) -> list[str]:
    """The argv of a JSON (exec) form like ``CMD ["worker", "health"]``."""
    words = json.loads(arguments)
    assert isinstance(words, list), f"not the exec (JSON) form: {arguments}"
    return words


def healthcheck_argv() -> list[str]:
    """The command of the final stage's HEALTHCHECK."""
    (arguments,) = [rest for keyword, rest in final_stage() if keyword == "HEALTHCHECK"]
    _, _, command = arguments.partition("CMD ")
    return exec_form(command.strip())


def cmd_argv() -> list[str]:
    """The final stage's CMD."""
    return exec_form([rest for keyword, rest in final_stage() if keyword == "CMD"][-1])


# --------------------------------------------------------------------------- CLI checking


def click_main(program: str) -> click.Command:
    """The click command behind a console script (``producer = producer.cli:main``...)."""
    module_name = f"{program}.cli"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        pytest.skip(f"{module_name} does not exist yet (being written); command not checked")
    # `main` may be the click group itself or a thin function calling it (`cli(...)`).
    for candidate in (getattr(module, "main", None), getattr(module, "cli", None)):
        if isinstance(candidate, click.Command):
            return candidate
    groups = [v for v in vars(module).values() if isinstance(v, click.Group)]
    assert len(groups) == 1, f"cannot tell which click group {module_name}:main runs"
    return groups[0]


def _option(command: click.Command, name: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def check_cli(words: list[str]) -> None:
    """Fail unless ``words`` names real subcommands and options of the framestats CLIs."""
    program, args = words[0], words[1:]
    command = click_main(program)
    path = [program]
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            option = _option(command, name)
            assert option is not None, f"`{' '.join(path)}` has no option {name}"
            takes_value = not (option.is_flag or option.count)
            i += 2 if takes_value and "=" not in word else 1
        elif isinstance(command, click.Group):
            sub = command.get_command(click.Context(command, info_name=program), word)
            assert sub is not None, (
                f"`{' '.join(path)}` has no subcommand {word!r} "
                f"(has: {', '.join(sorted(command.list_commands(click.Context(command))))})"
            )
            command, path = sub, [*path, word]
            i += 1
        else:
            i += 1  # a positional argument of the leaf command
    if isinstance(command, click.Group):
        assert command.invoke_without_command, f"`{' '.join(path)}` needs a subcommand"


def check_celery_app(words: list[str]) -> None:
    """Fail unless ``celery -A module:attr`` names an importable Celery app."""
    app_arg = next(w for i, w in enumerate(words) if i and words[i - 1] in ("-A", "--app"))
    module_name, _, attribute = app_arg.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        pytest.skip(f"{module_name} does not exist yet (being written); app not checked")
    assert hasattr(module, attribute or "app"), f"{module_name} has no {attribute or 'app'}"


_DOC_PRODUCER_RUN = re.compile(r"docker compose (?:-f \S+ )*run --rm producer ([^\n#`]*)")


def command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every framestats command in the compose files, Dockerfile and docs."""
    found: list[tuple[str, list[str]]] = []
    for stack, files in STACKS.items():
        for name, service in model(*files)["services"].items():
            found.append((f"{stack}:{name}", argv(service)))
    found.append(("Dockerfile:HEALTHCHECK", healthcheck_argv()))
    found.append(("Dockerfile:CMD", cmd_argv()))
    if DEPLOY_DOC.exists():
        for n, match in enumerate(_DOC_PRODUCER_RUN.finditer(DEPLOY_DOC.read_text())):
            words = shlex.split(match[1].replace("\\", " "))
            found.append((f"docs:{n}:producer {' '.join(words[:1])}", ["producer", *words]))
    return found


COMMAND_LINES = command_lines()


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


# --------------------------------------------------------------------------- Dockerfile tests


def test_image_is_built_from_a_pytorch_cuda_image() -> None:
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    image = resolve_from(final_stage()[0][1])
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-(runtime|devel)", image), image
    # Every stage builds on the same base, so compiled wheels match its Python.
    assert {resolve_from(f) for f in froms} == {image}


def test_image_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users, "the image never leaves root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), users[-1]


def test_healthcheck_runs_worker_health() -> None:
    assert healthcheck_argv() == ["worker", "health"]
    assert cmd_argv()[0] == "worker"


def test_hdf5plugin_is_built_from_source_with_avx2_and_openmp() -> None:
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    (build,) = [run for run in runs if "--no-binary hdf5plugin" in run]
    for setting in ("HDF5PLUGIN_AVX2=True", "HDF5PLUGIN_OPENMP=True", "HDF5PLUGIN_NATIVE=False"):
        assert setting in build, f"hdf5plugin build lacks {setting}"
    # ...and the image refuses to build if the installed filters lack them.
    assert any("build_config" in run and "avx2" in run and "openmp" in run for run in runs)


def test_pip_keeps_the_base_image_torch() -> None:
    for keyword, rest in final_stage():
        if keyword == "RUN" and "pip install" in rest:
            for command in re.findall(r"pip install[^;&]*", rest):
                assert "-c /tmp/constraints.txt" in command, command
            assert not re.search(r"pip install[^;&]*\btorch\b", rest), rest


def test_dockerignore_allows_only_what_the_image_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from an allow-list, so data and .venv never ship"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for keyword, rest in dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert source.rstrip("*") in allowed, f"COPY {source} is excluded by .dockerignore"
