"""Backend declarations: ci/<name>/backend.toml read into plain data.

A backend is one folder with a Dockerfile and a backend.toml; adding one
needs no change here. See ci/README.md for the format.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DeclarationError, UserError

ROOT = Path(__file__).resolve().parent.parent
CI_DIR = ROOT / "ci"

IMAGE_STEPS = ("build", "verify", "push", "tag-dated")
CONTAINER_STEPS = ("start", "install", "test", "print-logs", "stop")
STEPS = IMAGE_STEPS + CONTAINER_STEPS


@dataclass(frozen=True)
class Check:
    """A command run in the container; passes on exit 0 and a matching output."""

    name: str
    command: tuple[str, ...]
    user: str = "root"
    expect: str | None = None
    timeout: float = 60.0

    def matches(self, exit_code: int, output: str) -> bool:
        if exit_code != 0:
            return False
        return self.expect is None or re.search(self.expect, output, re.M) is not None


@dataclass(frozen=True)
class Backend:
    name: str
    folder: Path
    description: str
    image: str
    parent: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    container_name: str = ""
    hostname: str = ""
    ports: tuple[int, ...] = ()
    cap_add: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    ready_timeout: float = 180.0
    ready_checks: tuple[Check, ...] = ()
    smoke: tuple[Check, ...] = ()
    log_status: tuple[str, ...] | None = None
    log_files: tuple[str, ...] = ()
    install_source: tuple[tuple[str, ...], ...] = ()
    install_conformance: tuple[tuple[str, ...], ...] = ()
    test_source: tuple[tuple[str, ...], ...] = ()

    @property
    def runs_services(self) -> bool:
        """Container steps (start, install, test, ...) apply to this backend."""
        return bool(self.test_source)

    @property
    def conformance_dir(self) -> Path:
        return self.folder / "conformance"

    def steps(self) -> tuple[str, ...]:
        return STEPS if self.runs_services else IMAGE_STEPS


def _argv(value: object, where: str) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise DeclarationError(f"{where}: expected a non-empty list of strings, got {value!r}")
    return tuple(value)


def _argv_list(value: object, where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        raise DeclarationError(f"{where}: expected a list of commands, got {value!r}")
    return tuple(_argv(v, f"{where}[{i}]") for i, v in enumerate(value))


def _check(raw: object, where: str) -> Check:
    if not isinstance(raw, dict) or "name" not in raw or "command" not in raw:
        raise DeclarationError(f"{where}: each check needs a name and a command")
    unknown = set(raw) - {"name", "command", "user", "expect", "timeout"}
    if unknown:
        raise DeclarationError(f"{where}: unknown keys {sorted(unknown)}")
    expect = raw.get("expect")
    if expect is not None:
        try:
            re.compile(expect)
        except re.error as error:
            raise DeclarationError(f"{where}: expect is not a valid regex: {error}") from None
    return Check(
        name=str(raw["name"]),
        command=_argv(raw["command"], f"{where}.command"),
        user=str(raw.get("user", "root")),
        expect=expect,
        timeout=float(raw.get("timeout", 60.0)),
    )


def parse(name: str, folder: Path, data: dict) -> Backend:
    """Turn one backend.toml's data into a Backend, or say what is wrong."""
    where = f"{folder / 'backend.toml'}"
    for key in ("description", "image"):
        if not isinstance(data.get(key), str):
            raise DeclarationError(f"{where}: '{key}' (a string) is required")
    run = data.get("run", {})
    ready = data.get("ready", {})
    logs = data.get("logs", {})
    install = data.get("install", {})
    test = data.get("test", {})
    build_args = data.get("build", {}).get("args", {})
    if not all(isinstance(v, str) for v in build_args.values()):
        raise DeclarationError(f"{where}: build.args values must be strings")
    command = run.get("command")
    status = logs.get("status")
    return Backend(
        name=name,
        folder=folder,
        description=data["description"],
        image=data["image"],
        parent=data.get("parent"),
        build_args=dict(build_args),
        container_name=run.get("container_name", data["image"]),
        hostname=run.get("hostname", name),
        ports=tuple(int(p) for p in run.get("ports", ())),
        cap_add=tuple(run.get("cap_add", ())),
        environment={k: str(v) for k, v in run.get("environment", {}).items()},
        command=_argv(command, f"{where} run.command") if command is not None else None,
        ready_timeout=float(ready.get("timeout", 180.0)),
        ready_checks=tuple(
            _check(c, f"{where} ready.checks[{i}]") for i, c in enumerate(ready.get("checks", ()))
        ),
        smoke=tuple(_check(c, f"{where} smoke[{i}]") for i, c in enumerate(data.get("smoke", ()))),
        log_status=_argv(status, f"{where} logs.status") if status is not None else None,
        log_files=tuple(logs.get("files", ())),
        install_source=_argv_list(install.get("source", []), f"{where} install.source"),
        install_conformance=_argv_list(
            install.get("conformance", []), f"{where} install.conformance"
        ),
        test_source=_argv_list(test.get("source", []), f"{where} test.source"),
    )


def _dependency_order(backends: dict[str, Backend]) -> list[str]:
    ordered: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in chain:
            raise DeclarationError(f"parent cycle: {' -> '.join((*chain, name))}")
        parent = backends[name].parent
        if parent is not None:
            if parent not in backends:
                raise DeclarationError(
                    f"{backends[name].folder / 'backend.toml'}: parent '{parent}' is not a backend"
                )
            visit(parent, (*chain, name))
        ordered.append(name)

    for name in sorted(backends, key=lambda n: (backends[n].parent is not None, n)):
        visit(name, ())
    return ordered


def load_all(ci_dir: Path = CI_DIR) -> dict[str, Backend]:
    """Every declared backend, parents before children."""
    found: dict[str, Backend] = {}
    for path in sorted(ci_dir.glob("*/backend.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise DeclarationError(f"{path}: {error}") from None
        found[path.parent.name] = parse(path.parent.name, path.parent, data)
    return {name: found[name] for name in _dependency_order(found)}


def ancestors(backends: dict[str, Backend], name: str) -> list[Backend]:
    """The parent chain of `name`, root first, excluding `name` itself."""
    chain: list[Backend] = []
    parent = backends[name].parent
    while parent is not None:
        chain.insert(0, backends[parent])
        parent = backends[parent].parent
    return chain


def select(backends: dict[str, Backend], names: list[str], step: str) -> list[Backend]:
    """Backends named for `step`, or a UserError listing the valid choices."""
    valid = [b.name for b in backends.values() if step in b.steps()]
    if not names:
        raise UserError(f"'{step}' needs a backend: nox -s {step} -- <{'|'.join(valid)}>")
    for name in names:
        if name not in valid:
            what = "unknown backend" if name not in backends else f"'{step}' does not apply to"
            raise UserError(f"{what} '{name}'; choose from: {', '.join(valid)}")
    return [backends[name] for name in dict.fromkeys(names)]
