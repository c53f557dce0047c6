"""Backend declarations: ci/<name>/backend.toml read into plain data.

A backend is one folder with a Dockerfile and a backend.toml; adding one
needs no change here. Every key is checked against SCHEMA, so a mistake is
one line naming the file, the key and what was expected. See ci/README.md.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DeclarationError, UserError
from .project import CI_DIR

# kind: "services" (the default) runs as a container with services, so the
# container steps (start, install, test, ...) apply; "image" is only built
# and verified, like base, which the others are built on.
IMAGE, SERVICES = "image", "services"

# The declaration format. A type is a value's type (float also takes whole
# numbers), a tuple is a choice of literal values, [x] a list of x, {str: x}
# a table of any keys, and a dict of names a table with exactly those keys.
ARGV = [str]
# A file the build downloads: the build args holding its URL and checksum (their
# values are the Dockerfile's ARG defaults), and its name in a sources folder.
DOWNLOAD = {"url": str, "checksum": str, "file": str, "architecture": str}
CHECK = {"name": str, "command": ARGV, "user": str, "expect": str, "timeout": float}
SCHEMA = {
    "description": str,
    "image": str,
    "kind": (IMAGE, SERVICES),
    "blocking": bool,
    "parent": str,
    "from": str,
    "build": {"args": {str: str}, "downloads": [DOWNLOAD]},
    "run": {
        "container_name": str,
        "hostname": str,
        "ports": [int],
        "capabilities": {"needed": [str], "wanted": [str]},
        "environment": {str: str},
        "command": ARGV,
        "stop_timeout": float,
    },
    "ready": {"timeout": float, "typical": float, "checks": [CHECK]},
    "smoke": [CHECK],
    "logs": {"status": ARGV, "jobs": [ARGV], "files": [str]},
    # What the conformance tests need (no checkout mounted); a checkout's own
    # install and tests are its consumer's (consumers/*.toml, scripts/consumers.py).
    "install": {"conformance": [ARGV]},
}
CAPABILITY = re.compile(r"^[A-Z][A-Z_]*$")
# Debian's names of the architectures the images are built for (platforms.py).
ARCHITECTURES = ("amd64", "arm64")
# A build arg's name, as Dockerfiles write them.
ARG_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# The checksum arg's last word names the algorithm fetch-verified is given.
CHECKSUM_ARG = re.compile(r"^[A-Z][A-Z0-9_]*_(SHA256|SHA512)$")


def describe(schema) -> str:
    if schema is bool:
        return "true or false"
    if schema is str:
        return "a string"
    if schema is int:
        return "a whole number"
    if schema is float:
        return "a number"
    if isinstance(schema, tuple):
        return " or ".join(repr(choice) for choice in schema)
    if isinstance(schema, list):
        if schema == [ARGV]:
            return "a list of commands, each a list of strings"
        return "a list of " + {str: "strings", int: "whole numbers"}.get(schema[0], "tables")
    return "a table"


def validate(value, schema, where: str) -> None:
    """Raise DeclarationError unless `value` has the shape of `schema`."""
    if isinstance(schema, tuple):
        ok = value in schema
    elif isinstance(schema, list):
        ok = isinstance(value, list)
        if ok:
            for index, item in enumerate(value):
                validate(item, schema[0], f"{where}[{index}]")
    elif isinstance(schema, dict):
        ok = isinstance(value, dict)
        if ok and str in schema:  # a table of any keys
            for key, item in value.items():
                validate(item, schema[str], f"{where}.{key}")
        elif ok:
            unknown = sorted(set(value) - set(schema))
            if unknown:
                raise DeclarationError(
                    f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(schema)}"
                )
            for key, item in value.items():
                validate(item, schema[key], f"{where}.{key}" if where else key)
    elif schema is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif schema is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, schema) and not isinstance(value, bool)
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise DeclarationError(f"{where}: expected {describe(schema)}, got {shown}")


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
class Download:
    """A file the build downloads with fetch-verified (see ci/README.md, "Downloads").

        url = "OPENPBS_URL", checksum = "OPENPBS_SHA512"  ->  algorithm "sha512"

    `file` is its name in a sources folder, ${ARG}s expanded as in the
    Dockerfile; empty: the last part of the URL's path. With `architecture`
    (amd64, arm64), only builds for it download the file.
    """

    url: str  # the build arg holding the URL
    checksum: str  # the build arg holding the hex digest
    file: str = ""
    architecture: str = ""

    @property
    def algorithm(self) -> str:
        """hashlib's name of the checksum's algorithm, from the checksum arg's name."""
        match = CHECKSUM_ARG.match(self.checksum)
        assert match, self.checksum  # checked by _download
        return match.group(1).lower()


@dataclass(frozen=True)
class Backend:
    name: str
    folder: Path
    description: str
    image: str
    kind: str = SERVICES
    # False: its failure holds back no other image (CI goes on, publishing
    # leaves it out with a warning); see `blocking` in ci/README.md.
    blocking: bool = True
    parent: str | None = None
    base_image: str | None = None  # the external image the root backend builds FROM
    build_args: dict[str, str] = field(default_factory=dict)
    downloads: tuple[Download, ...] = ()
    container_name: str = ""
    hostname: str = ""
    ports: tuple[int, ...] = ()
    needed_capabilities: tuple[str, ...] = ()
    wanted_capabilities: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    stop_timeout: float = 10.0
    ready_timeout: float = 180.0
    # Seconds the services usually take: polled often until then (see containers).
    ready_typical: float = 10.0
    ready_checks: tuple[Check, ...] = ()
    smoke: tuple[Check, ...] = ()
    log_status: tuple[str, ...] | None = None
    # The scheduler's own record of its jobs, finished ones included (sacct, ...).
    log_jobs: tuple[tuple[str, ...], ...] = ()
    log_files: tuple[str, ...] = ()
    install_conformance: tuple[tuple[str, ...], ...] = ()

    @property
    def runs_services(self) -> bool:
        """Container steps (start, install, test, ...) apply to this backend."""
        return self.kind == SERVICES

    @property
    def conformance_dir(self) -> Path:
        return self.folder / "conformance"

    @property
    def dockerfile(self) -> Path:
        return self.folder / "Dockerfile"


def non_empty(argv: list[str] | None, where: str) -> tuple[str, ...] | None:
    if argv is None:
        return None
    if not argv or not all(argv):
        raise DeclarationError(f"{where}: expected a non-empty command of non-empty strings")
    return tuple(argv)


def _check(raw: dict, where: str) -> Check:
    for key in ("name", "command"):
        if key not in raw:
            raise DeclarationError(f"{where}: '{key}' is required in a check")
    expect = raw.get("expect")
    if expect is not None:
        try:
            re.compile(expect)
        except re.error as error:
            raise DeclarationError(f"{where}.expect: not a valid regex: {error}") from None
    timeout = float(raw.get("timeout", 60.0))
    if timeout <= 0:
        raise DeclarationError(f"{where}.timeout: expected a number of seconds > 0")
    return Check(
        name=raw["name"],
        command=non_empty(raw["command"], f"{where}.command"),
        user=raw.get("user", "root"),
        expect=expect,
        timeout=timeout,
    )


def _download(raw: dict, where: str) -> Download:
    for key in ("url", "checksum"):
        if key not in raw:
            raise DeclarationError(f"{where}: '{key}' (a build arg's name) is required")
    if not ARG_NAME.match(raw["url"]):
        raise DeclarationError(f"{where}.url: {raw['url']!r} is not a build arg's name")
    if not CHECKSUM_ARG.match(raw["checksum"]):
        raise DeclarationError(
            f"{where}.checksum: {raw['checksum']!r} is not a build arg named like "
            "NAME_SHA256 or NAME_SHA512 (its last word is the algorithm)"
        )
    file = raw.get("file", "")
    if "/" in file or file in (".", ".."):
        raise DeclarationError(f"{where}.file: {file!r} is not a file name")
    architecture = raw.get("architecture", "")
    if architecture not in ("", *ARCHITECTURES):
        raise DeclarationError(
            f"{where}.architecture: {architecture!r}; choose from: {', '.join(ARCHITECTURES)}"
        )
    return Download(raw["url"], raw["checksum"], file, architecture)


def capability_names(names: list[str], where: str) -> tuple[str, ...]:
    found = []
    for name in names:
        bare = name.upper().removeprefix("CAP_")
        if not CAPABILITY.match(bare):
            raise DeclarationError(f"{where}: {name!r} is not a capability name like SYS_ADMIN")
        found.append(bare)
    return tuple(found)


def parse(name: str, folder: Path, data: dict) -> Backend:
    """Turn one backend.toml's data into a Backend, or say what is wrong."""
    path = folder / "backend.toml"
    try:
        validate(data, SCHEMA, "")
    except DeclarationError as error:
        raise DeclarationError(f"{path}: {error}") from None
    where = str(path)
    for key in ("description", "image"):
        if key not in data:
            raise DeclarationError(f"{where}: '{key}' (a string) is required")
    if ("parent" in data) == ("from" in data):
        raise DeclarationError(
            f"{where}: give either 'parent' (another backend) or 'from' (an external image)"
        )
    run, ready, logs = data.get("run", {}), data.get("ready", {}), data.get("logs", {})
    install, build = data.get("install", {}), data.get("build", {})
    capabilities = run.get("capabilities", {})
    ports = tuple(run.get("ports", ()))
    for port in ports:
        if not 0 < port < 65536:
            raise DeclarationError(f"{where}: run.ports: {port} is not a port number")
    backend = Backend(
        name=name,
        folder=folder,
        description=data["description"],
        image=data["image"],
        kind=data.get("kind", SERVICES),
        blocking=data.get("blocking", True),
        parent=data.get("parent"),
        base_image=data.get("from"),
        build_args=dict(build.get("args", {})),
        downloads=tuple(
            _download(d, f"{where}: build.downloads[{i}]")
            for i, d in enumerate(build.get("downloads", []))
        ),
        container_name=run.get("container_name", data["image"]),
        hostname=run.get("hostname", name),
        ports=ports,
        needed_capabilities=capability_names(
            capabilities.get("needed", []), f"{where}: run.capabilities.needed"
        ),
        wanted_capabilities=capability_names(
            capabilities.get("wanted", []), f"{where}: run.capabilities.wanted"
        ),
        environment=dict(run.get("environment", {})),
        command=non_empty(run.get("command"), f"{where}: run.command"),
        stop_timeout=float(run.get("stop_timeout", 10.0)),
        ready_timeout=float(ready.get("timeout", 180.0)),
        ready_typical=float(ready.get("typical", 10.0)),
        ready_checks=tuple(
            _check(c, f"{where}: ready.checks[{i}]") for i, c in enumerate(ready.get("checks", []))
        ),
        smoke=tuple(_check(c, f"{where}: smoke[{i}]") for i, c in enumerate(data.get("smoke", []))),
        log_status=non_empty(logs.get("status"), f"{where}: logs.status"),
        log_jobs=tuple(non_empty(c, f"{where}: logs.jobs") for c in logs.get("jobs", [])),
        log_files=tuple(logs.get("files", ())),
        install_conformance=tuple(
            non_empty(c, f"{where}: install.conformance") for c in install.get("conformance", [])
        ),
    )
    if backend.runs_services and not backend.ready_checks:
        raise DeclarationError(f"{where}: kind = 'services' needs at least one [[ready.checks]]")
    if backend.ready_timeout <= 0:
        raise DeclarationError(f"{where}: ready.timeout: expected a number of seconds > 0")
    return backend


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
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise DeclarationError(f"{path}: not valid TOML: {error}") from None
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


def root_of(backends: dict[str, Backend], name: str) -> Backend:
    """The backend at the top of `name`'s chain: the one built FROM an external image."""
    return (ancestors(backends, name) or [backends[name]])[0]


def select(backends: dict[str, Backend], names: list[str], step: str, scope: str) -> list[Backend]:
    """Backends named for `step`, or a UserError listing the valid choices."""
    valid = [b.name for b in backends.values() if scope == IMAGE or b.runs_services]
    if not names:
        raise UserError(f"'{step}' needs a backend: nox -s {step} -- <{'|'.join(valid)}>")
    for name in names:
        if name not in valid:
            what = "unknown backend" if name not in backends else f"'{step}' does not apply to"
            raise UserError(f"{what} '{name}'; choose from: {', '.join(valid)}")
    return [backends[name] for name in dict.fromkeys(names)]
