"""Reading the deployment files as Docker and Compose would: compose models with
interpolation and merging, Dockerfile instructions, and the command lines they run."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
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
