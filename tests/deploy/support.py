"""Readers for the deployment files and the facts they are checked against.

Everything the checks compare with is derived from the code (``worker.config.Settings``,
the CLI, the side port's routes, the simulators), never restated here.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import tomllib
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import typer
import yaml
from pydantic import AliasChoices, BaseModel, SecretStr, TypeAdapter

from worker.config import Settings
from worker.observability import Metrics, SidePort

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = DEPLOY / "overlays"
EXAMPLE = OVERLAYS / "example"

PREFIX: str = Settings.model_config.get("env_prefix") or ""
DELIMITER: str = Settings.model_config.get("env_nested_delimiter") or "__"


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


# ---- YAML -------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as strings (compose accepts a mapping or KEY=VALUE items)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


_QUANTITY_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes quantity (``2Gi``, ``500M``, ``1024``) in bytes."""
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(value))
    assert match is not None and match[2] in _QUANTITY_UNITS, f"not a byte quantity: {value!r}"
    return int(match[1]) * _QUANTITY_UNITS[match[2]]


# ---- images -----------------------------------------------------------------------------

_IMAGE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        """A version tag (not ``latest``), or a digest."""
        return self.digest is not None or (self.tag is not None and self.tag != "latest")


def parse_image(ref: str) -> ImageRef:
    match = _IMAGE.match(ref)
    assert match is not None, f"not an image reference: {ref!r}"
    return ImageRef(match["name"], match["tag"], match["digest"])


# ---- Settings and the environment ---------------------------------------------------------


@dataclass(frozen=True)
class EnvNames:
    """The environment variable names ``Settings`` reads."""

    exact: frozenset[str]
    open_prefixes: tuple[str, ...]  # dict fields: any key below them is accepted
    paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> attribute path

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name.upper() in self.exact or name.upper().startswith(self.open_prefixes))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: Any) -> bool:
    return any(typing.get_origin(a) is dict for a in (annotation, *typing.get_args(annotation)))


def settings_env_names() -> EnvNames:
    exact: set[str] = set()
    open_prefixes: list[str] = []
    paths: dict[str, tuple[str, ...]] = {}

    def walk(model: type[BaseModel], env_prefix: str, path: tuple[str, ...], top: bool) -> None:
        for name, info in model.model_fields.items():
            alias = info.validation_alias
            if top and isinstance(alias, AliasChoices | str):
                # pydantic-settings reads an aliased field from its alias names verbatim.
                choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
                for choice in choices:
                    if isinstance(choice, str):
                        exact.add(choice.upper())
                        paths[choice.upper()] = (*path, name)
                continue
            env = f"{env_prefix}{name}".upper()
            exact.add(env)
            paths[env] = (*path, name)
            nested = _model_of(info.annotation)
            if nested is not None:
                walk(nested, env + DELIMITER, (*path, name), False)
            elif _is_mapping(info.annotation):
                open_prefixes.append(env + DELIMITER)

    walk(Settings, PREFIX, (), True)
    return EnvNames(frozenset(exact), tuple(open_prefixes), paths)


def required_settings() -> set[str]:
    """Env names of the Settings fields that have no default."""
    names = settings_env_names()
    required_paths = {(name,) for name, info in Settings.model_fields.items() if info.is_required()}
    return {env for env, path in names.paths.items() if path in required_paths}


@contextmanager
def environment(values: Mapping[str, str], *, clear: bool = True) -> Iterator[None]:
    """``values`` in the process environment; with ``clear``, nothing inherited leaks in."""
    with mock.patch.dict(os.environ, dict(values), clear=clear):
        yield


def settings_from(values: Mapping[str, str]) -> Settings:
    no_overrides: dict[str, Any] = {}  # everything from the environment
    with environment(values):
        return Settings(**no_overrides)


def setting_at(settings: Settings, path: tuple[str, ...]) -> tuple[Any, Any]:
    """(value, annotation) of the field at ``path``."""
    obj: Any = settings
    annotation: Any = None
    for part in path:
        annotation = type(obj).model_fields[part].annotation
        obj = getattr(obj, part)
    return obj, annotation


def check_settings_env(values: Mapping[str, str]) -> list[str]:
    """Problems with the EXPORT_WORKER_* variables of one environment: unknown names
    (Settings ignores them silently), missing required ones, and values that did not
    reach the field they name."""
    names = settings_env_names()
    problems = [
        f"{name} is not a Settings field" for name in values if name.upper().startswith(PREFIX) and name not in names
    ]
    problems += [f"{name} (required) is not set" for name in sorted(required_settings() - set(values))]
    if problems:
        return problems
    settings = settings_from(values)
    for name, raw in values.items():
        path = names.paths.get(name.upper())
        if path is None:
            continue
        actual, annotation = setting_at(settings, path)
        if _model_of(annotation) is not None or _is_mapping(annotation):
            continue  # given as JSON: pydantic validated it or Settings() would have failed
        expected = TypeAdapter(annotation).validate_strings(raw)
        if isinstance(actual, SecretStr):
            actual = actual.get_secret_value()
            expected = expected.get_secret_value() if isinstance(expected, SecretStr) else expected
        if actual != expected:
            problems.append(f"{name}={raw!r} gave {'.'.join(path)}={actual!r}")
    return problems


def parse_env_file(path: Path) -> dict[str, str]:
    """A kustomize ``envs`` file: KEY=VALUE lines, # comments."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        out[key.strip()] = value
    return out


# ---- the code's own surfaces ---------------------------------------------------------------


def side_port_paths() -> set[str]:
    """Paths the worker's side port serves."""
    app = SidePort(Metrics(), lambda: (True, "")).app()
    return {route.resource.canonical for route in app.router.routes() if route.resource is not None}


def simulator_paths(vendor: str) -> set[str]:
    from worker import simulators

    sim = simulators.simulator_class(vendor)()
    return {route.resource.canonical for route in sim.app().router.routes() if route.resource is not None}


@dataclass(frozen=True)
class CliCall:
    command: str
    params: dict[str, Any]


def parse_cli(args: list[str]) -> CliCall:
    """Parse ``export-worker <args>`` with the real CLI; raises on unknown commands/options."""
    from worker.cli import app

    group = typer.main.get_command(app)
    assert args, "empty command"
    name, *rest = args
    commands = getattr(group, "commands", {})
    assert name in commands, f"export-worker has no command {name!r} (has {sorted(commands)})"
    ctx = commands[name].make_context(f"export-worker {name}", list(rest))
    return CliCall(name, dict(ctx.params))


# ---- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def env(self, stage: Stage) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in stage.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV without '=': {item!r} (use the KEY=VALUE form)"
                out[key] = value
        return out


def _substitute(text: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), text)


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())  # line continuations
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(_substitute(parts[0], global_args), name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                global_args[key] = default.strip("\"'")
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(global_args, stages)


def healthcheck_command(options_and_cmd: str) -> tuple[dict[str, str], list[str]]:
    """``--interval=15s ... CMD ["python", ...]`` -> (options, exec-form argv)."""
    import json

    head, sep, cmd = options_and_cmd.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    options = dict(opt.lstrip("-").split("=", 1) for opt in head.split())
    argv = json.loads(cmd)
    assert isinstance(argv, list), "HEALTHCHECK CMD should be the exec (JSON) form"
    return options, [str(a) for a in argv]


# ---- .dockerignore ---------------------------------------------------------------------------


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, str]]:
    """(exclude?, pattern) in file order."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((not negate, pattern.strip("/")))
    return rules


def _matches(path: str, pattern: str) -> bool:
    candidates = [pattern]
    if pattern.startswith("**/"):
        candidates.append(pattern[3:])  # "**/" also matches no folder at all
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates)


def in_build_context(path: str, rules: list[tuple[bool, str]] | None = None) -> bool:
    """Whether Docker sends ``path`` (repo-relative) to the build: the last matching rule wins."""
    excluded = False
    for exclude, pattern in rules if rules is not None else dockerignore_rules():
        if _matches(path, pattern):
            excluded = exclude
    return not excluded
