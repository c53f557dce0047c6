"""Consumer declarations: consumers/<name>.toml read into plain data.

A consumer is a project whose test suites run in the images (dask-gateway,
dask-jobqueue): how a `--source` checkout of it is recognised, and per
backend what to set up and install (as root), what to run, as which user and
where, which module must run, and which capabilities it wants, with what
runs only where they are granted. A third consumer is one more file; adding
one needs no change here. See consumers/README.md.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .backends import ARGV, Backend, capability_names, non_empty, validate
from .errors import DeclarationError, UserError
from .project import ROOT

CONSUMERS_DIR = ROOT / "consumers"
SOURCE_MOUNT = "/working"  # where start mounts the checkout (containers.SOURCE_MOUNT)

WANT = {"capability": str, "why": str, "setup": [ARGV], "deselect": [str]}
NOT_RUN = {"test": str, "why": str}
USE = {
    "setup": [ARGV],
    "install": [ARGV],
    "test": [ARGV],
    "user": str,
    "workdir": str,
    "environment": {str: str},
    "must_run": [str],
    "wants": [WANT],
    "not_run": [NOT_RUN],
    "job_logs": [str],
}
SCHEMA = {"description": str, "detect": [str], "backends": {str: USE}}


@dataclass(frozen=True)
class Want:
    """A capability the suite wants: `setup` runs and nothing is deselected where it
    is granted; where not, `deselect` leaves those tests out, and `test` says so."""

    capability: str
    why: str
    setup: tuple[tuple[str, ...], ...] = ()
    deselect: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotRun:
    """A test left out wherever the suite runs, for a cause of the consumer's own
    that `why` names (a test that cannot pass as written); `test` says so."""

    test: str
    why: str


@dataclass(frozen=True)
class Use:
    """What one consumer does with one backend's container."""

    setup: tuple[tuple[str, ...], ...] = ()  # as root, before install
    install: tuple[tuple[str, ...], ...] = ()  # as root, in the checkout
    test: tuple[tuple[str, ...], ...] = ()
    user: str = "dask"
    workdir: str = SOURCE_MOUNT
    environment: dict[str, str] = field(default_factory=dict)
    must_run: tuple[str, ...] = ()
    wants: tuple[Want, ...] = ()
    not_run: tuple[NotRun, ...] = ()
    # Where the suite's batch jobs write their output (shell globs in the
    # container): its own workers' logs, which print-logs shows.
    job_logs: tuple[str, ...] = ()

    @property
    def wanted_capabilities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(want.capability for want in self.wants))


@dataclass(frozen=True)
class Consumer:
    name: str
    path: Path
    description: str
    detect: tuple[str, ...]  # paths (relative to the checkout) that all exist in one
    uses: dict[str, Use]

    def matches(self, checkout: Path) -> bool:
        return all((checkout / relative).exists() for relative in self.detect)

    def use(self, backend: Backend) -> Use:
        """What this consumer runs in `backend`'s container.

        Raises UserError when it declares nothing for that backend.
        """
        if backend.name not in self.uses:
            raise UserError(
                f"{self.name} declares no tests for {backend.name} ({self.path}); "
                f"it has: {', '.join(sorted(self.uses))}"
            )
        return self.uses[backend.name]


def _commands(raw: list, where: str) -> tuple[tuple[str, ...], ...]:
    return tuple(non_empty(command, where) for command in raw)


def _want(raw: dict, where: str) -> Want:
    for key in ("capability", "why"):
        if key not in raw:
            raise DeclarationError(f"{where}: '{key}' is required in a want")
    (capability,) = capability_names([raw["capability"]], f"{where}.capability")
    return Want(
        capability=capability,
        why=raw["why"],
        setup=_commands(raw.get("setup", []), f"{where}.setup"),
        deselect=tuple(raw.get("deselect", ())),
    )


def _use(raw: dict, where: str) -> Use:
    if not raw.get("test"):
        raise DeclarationError(f"{where}: 'test' (at least one command) is required")
    for key in ("user", "workdir"):
        if key in raw and not raw[key]:
            raise DeclarationError(f"{where}.{key}: expected a non-empty string")
    return Use(
        setup=_commands(raw.get("setup", []), f"{where}.setup"),
        install=_commands(raw.get("install", []), f"{where}.install"),
        test=_commands(raw["test"], f"{where}.test"),
        user=raw.get("user", "dask"),
        workdir=raw.get("workdir", SOURCE_MOUNT),
        environment=dict(raw.get("environment", {})),
        must_run=tuple(raw.get("must_run", ())),
        wants=tuple(_want(w, f"{where}.wants[{i}]") for i, w in enumerate(raw.get("wants", []))),
        not_run=tuple(
            _not_run(n, f"{where}.not_run[{i}]") for i, n in enumerate(raw.get("not_run", []))
        ),
        job_logs=_absolute(raw.get("job_logs", []), f"{where}.job_logs"),
    )


def _absolute(patterns: list[str], where: str) -> tuple[str, ...]:
    """Paths in the container: absolute, since nothing says where a relative one starts."""
    for pattern in patterns:
        if not pattern.startswith("/"):
            raise DeclarationError(f"{where}: {pattern!r} is not an absolute path")
    return tuple(patterns)


def _not_run(raw: dict, where: str) -> NotRun:
    for key in ("test", "why"):
        if not raw.get(key):
            raise DeclarationError(f"{where}: '{key}' (a non-empty string) is required")
    if "::" not in raw["test"]:
        raise DeclarationError(
            f"{where}.test: {raw['test']!r} is not a pytest node id (path::test_name)"
        )
    return NotRun(test=raw["test"], why=raw["why"])


def parse(name: str, path: Path, data: dict, backends: dict[str, Backend]) -> Consumer:
    """Turn one consumers/<name>.toml's data into a Consumer, or say what is wrong."""
    try:
        validate(data, SCHEMA, "")
    except DeclarationError as error:
        raise DeclarationError(f"{path}: {error}") from None
    for key in ("description", "detect", "backends"):
        if not data.get(key):
            raise DeclarationError(f"{path}: '{key}' is required and must not be empty")
    for relative in data["detect"]:
        if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise DeclarationError(f"{path}: detect: {relative!r} is not a path inside a checkout")
    uses = {}
    for backend_name, raw in data["backends"].items():
        backend = backends.get(backend_name)
        if backend is None or not backend.runs_services:
            valid = [b.name for b in backends.values() if b.runs_services]
            raise DeclarationError(
                f"{path}: backends.{backend_name}: not a backend that runs services; "
                f"choose from: {', '.join(valid)}"
            )
        uses[backend_name] = _use(raw, f"{path}: backends.{backend_name}")
    return Consumer(
        name=name,
        path=path,
        description=data["description"],
        detect=tuple(data["detect"]),
        uses=uses,
    )


def load_all(
    backends: dict[str, Backend], consumers_dir: Path = CONSUMERS_DIR
) -> dict[str, Consumer]:
    """Every declared consumer, by name (the file's stem).

    Raises DeclarationError naming the file and the key of a malformed one.
    """
    found = {}
    for path in sorted(consumers_dir.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise DeclarationError(f"{path}: not valid TOML: {error}") from None
        found[path.stem] = parse(path.stem, path, data, backends)
    return found


def choose(
    consumers: dict[str, Consumer], checkout: Path, named: str | None, where: str
) -> Consumer:
    """The consumer `named` (--consumer), else the one whose `detect` paths `checkout` has.

    Raises UserError for an unknown name, a checkout that is no known
    consumer's, or one that looks like several (then --consumer decides).
    """
    if named is not None:
        if named not in consumers:
            raise UserError(
                f"--consumer {named}: no such consumer; choose from: {', '.join(consumers)} "
                f"(declared in {CONSUMERS_DIR.name}/)"
            )
        return consumers[named]
    matching = [c for c in consumers.values() if c.matches(checkout)]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise UserError(
            f"{where}: {checkout} looks like a checkout of "
            f"{' and of '.join(c.name for c in matching)}; choose one with --consumer NAME"
        )
    missing = "; ".join(
        f"no {' or '.join(_shown(checkout, d) for d in c.detect if not (checkout / d).exists())} "
        f"in {checkout} ({c.name})"
        for c in consumers.values()
    )
    raise UserError(
        f"{where}: not a checkout of a known consumer: {missing}; give the root of a "
        f"checkout, or name its consumer with --consumer NAME"
    )


def _shown(checkout: Path, relative: str) -> str:
    """tests -> 'tests/ folder' when a folder is meant (it ends with /)."""
    return f"{relative.rstrip('/')}/ folder" if relative.endswith("/") else relative


def deselected(use: Use, missing: set[str]) -> list[tuple[str, str]]:
    """(test id, why) for every test left out: those declared not run, and those
    whose wanted capability is `missing`."""
    left_out = [(item.test, item.why) for item in use.not_run]
    for want in use.wants:
        if want.capability in missing:
            reason = f"{want.capability} not granted: {want.why}"
            left_out += [(test, reason) for test in want.deselect]
    return left_out
