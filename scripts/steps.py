"""The steps behind the nox sessions: one registry, one function per verb.

Each step is registered with `@step(...)`: its name, the line `nox -l`
shows, whether it applies to every image or only to backends that run
services, and its options. The noxfile makes the sessions from STEPS.
Anything the user can fix is raised as UserError, which the noxfile turns
into one line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import containers, log, ports, publish, signals, state, summary
from .backends import IMAGE, SERVICES, Backend, ancestors, load_all, select
from .cli import OneLineParser
from .engine import LazyClient, engine_errors, first_line
from .errors import StepFailed, UserError
from .images import (
    build_with_parents,
    check_build_options,
    image_sizes,
    load_archive,
    require_image,
    save_archive,
)
from .pytest_report import idle_modules
from .settings import LATEST, Settings, load_settings

SOURCE_VARIABLE = "DASK_GATEWAY_SOURCE"


@dataclass
class Context:
    """What one session run knows: the declarations, settings, options, engine."""

    backends: dict[str, Backend]
    settings: Settings
    options: argparse.Namespace
    extra: list[str] = field(default_factory=list)
    built: dict[str, str] = field(default_factory=dict)
    client: object = field(default_factory=LazyClient)
    dated_tag: str = ""  # tag-dated: the one tag of this run, chosen in its prepare
    invoked_from: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    settings: dict


def option(*flags: str, **settings) -> Option:
    return Option(flags, settings)


@dataclass(frozen=True)
class Step:
    name: str
    summary: str  # "{backend}" stands for the backend's name
    scope: str  # IMAGE: every backend; SERVICES: backends that run services
    function: Callable[[Context, Backend], None]
    options: tuple[Option, ...] = ()
    # Arguments it does not know go to the backend's test command (pytest).
    passthrough: bool = False
    # Runs once before the backends, with all of them: may narrow the selection.
    prepare: Callable[[Context, list[Backend]], list[Backend]] | None = None

    def describe(self, backend: str | None) -> str:
        if backend is not None:
            return self.summary.format(backend=backend) + "."
        return self.summary.format(backend="BACKEND") + f"; nox -s {self.name} -- BACKEND..."

    def parser(self) -> argparse.ArgumentParser:
        parser = OneLineParser(prog=f"nox -s {self.name} --", add_help=False, allow_abbrev=False)
        for item in self.options:
            parser.add_argument(*item.flags, **item.settings)
        return parser

    def parse(self, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
        if self.passthrough:
            return self.parser().parse_known_args(args)
        return self.parser().parse_args(args), []


STEPS: dict[str, Step] = {}


def step(
    name: str,
    summary: str,
    *,
    scope: str,
    options=(),
    passthrough: bool = False,
    prepare: Callable[[Context, list[Backend]], list[Backend]] | None = None,
):
    """Register the decorated function as the step `name` (listing order = definition order)."""

    def register(function: Callable[[Context, Backend], None]):
        STEPS[name] = Step(name, summary, scope, function, tuple(options), passthrough, prepare)
        return function

    return register


SOURCE_OPTION = option("--source", help=f"dask-gateway checkout (default ${SOURCE_VARIABLE})")
PORTS_OPTION = option(
    "--ports", help=f"none, or +N to move the host ports (default ${ports.PORTS_VARIABLE})"
)
PUBLISH_OPTIONS = (
    option(
        "--load",
        metavar="PATH",
        help="docker load the image first: a TAR from --save, or a folder of BACKEND.tar",
    ),
    option("--dry-run", action="store_true", help="say what would be pushed; touch nothing"),
    option("--allow-unverified", action="store_true", help="publish without a passed verify"),
)


# -- image steps ---------------------------------------------------------------


@step(
    "build",
    "Build the {backend} image, parents first",
    scope=IMAGE,
    options=(
        option("--build-arg", action="append", default=[], metavar="KEY=VALUE"),
        option("--target", help="build only this Dockerfile stage (not tagged)"),
        option("--network", help="network mode of RUN steps, e.g. host"),
        option("--no-cache", action="store_true"),
        option(
            "--no-parent-build",
            action="store_true",
            help="use the parent image already here instead of building it",
        ),
        option("--load-parent", metavar="TAR", help="docker load the parent from TAR, build on it"),
        option("--save", metavar="TAR", help="docker save the built image to TAR"),
        option(
            "--pull-if-current",
            action="store_true",
            help="pull the published image instead when it was built from these ci/ folders",
        ),
    ),
)
def build(ctx: Context, backend: Backend) -> None:
    o = ctx.options
    build_args = dict(_key_value(item) for item in o.build_arg)
    check_build_options(backend, build_args=build_args, target=o.target, save=o.save)
    if o.target and (o.save or o.pull_if_current):
        raise UserError("--target builds one stage: it takes neither --save nor --pull-if-current")
    if o.load_parent:
        if backend.parent is None:
            raise UserError(f"--load-parent: {backend.name} has no parent to load")
        parent = ctx.backends[backend.parent]
        load_archive(ctx.client, o.load_parent, ctx.settings.reference(parent))
    build_with_parents(
        ctx.client,
        ctx.settings,
        ctx.backends,
        backend,
        built=ctx.built,
        build_parents=not (o.no_parent_build or o.load_parent),
        reuse_published=o.pull_if_current,
        build_args=build_args,
        target=o.target,
        network_mode=o.network,
        nocache=o.no_cache,
    )
    if o.save:
        save_archive(ctx.client, ctx.settings.reference(backend), o.save)


@step(
    "verify",
    "Check the {backend} image against the contract in a throwaway container",
    scope=IMAGE,
)
def verify(ctx: Context, backend: Backend) -> None:
    state.check_writable()
    containers.ready_timeout(backend)  # a bad override fails before anything starts
    image = require_image(ctx.client, ctx.settings, backend)
    reference = ctx.settings.reference(backend)
    started = time.monotonic()
    # No host ports: the checks run inside, and a started container may hold them.
    container = containers.start(
        ctx.client, backend, image, name=containers.throwaway_name(backend), ports={}
    )
    try:
        with log.group(f"verify {reference}"):
            containers.wait_ready(container, backend)
            containers.run_smoke(container, backend)
    except StepFailed:
        containers.print_logs(container, backend)
        summary.record_image(reference, result="verify failed")
        raise
    finally:
        containers.remove(container)
    seconds = time.monotonic() - started
    state.record_verified(image, backend.name, seconds)
    summary.record_image(
        reference,
        tags=[LATEST],
        size=image_sizes(ctx.client, image).unpacked,
        verify_seconds=seconds,
        result="verified",
    )
    log.info(f"verified {reference} ({image[:19]}) in {seconds:.0f}s")


def _load_for_publishing(ctx: Context, selected: list[Backend]) -> list[Backend]:
    """--load: the images other jobs built and verified (their state dir comes along).

    A folder holds one BACKEND.tar per image; an image whose archive is
    missing there is left out with a warning when its backend does not block
    publishing (`blocking = false`: its job may have failed), else an error.
    """
    path = ctx.options.load
    if not path:
        return selected
    folder = Path(path)
    if not folder.is_dir():
        if len(selected) != 1:
            raise UserError(f"--load {path}: give a folder of BACKEND.tar for several images")
        load_archive(ctx.client, path, ctx.settings.reference(selected[0]))
        return selected
    chosen = []
    for backend in selected:
        archive = folder / f"{backend.name}.tar"
        if archive.is_file():
            load_archive(ctx.client, str(archive), ctx.settings.reference(backend))
            chosen.append(backend)
        elif not backend.blocking:
            log.warn(
                f"{backend.name} is not published: no {archive} (its job failed or did not run; "
                f"{backend.name} does not block publishing)"
            )
        else:
            raise UserError(f"--load {path}: no {archive.name} there for {backend.name}")
    return chosen


def _prepare_push(ctx: Context, selected: list[Backend]) -> list[Backend]:
    for backend in selected:
        publish.push_tags(backend, ctx.options.tags)  # checked before anything is loaded
    return _load_for_publishing(ctx, selected)


@step(
    "push",
    "Push the {backend} image (verified images only; --dry-run)",
    scope=IMAGE,
    options=(
        option("--tag", action="append", default=[], dest="tags", help="push this tag too"),
        *PUBLISH_OPTIONS,
    ),
    prepare=_prepare_push,
)
def push(ctx: Context, backend: Backend) -> None:
    o = ctx.options
    publish.push_image(
        ctx.client,
        ctx.settings,
        backend,
        tags=o.tags,
        dry_run=o.dry_run,
        allow_unverified=o.allow_unverified,
    )


def _prepare_tag_dated(ctx: Context, selected: list[Backend]) -> list[Backend]:
    """One dated tag for every image of the run, chosen before any is pushed."""
    o = ctx.options
    publish.dated_candidates(o.date, o.suffix, force_date=o.force_date)  # checked first
    chosen = _load_for_publishing(ctx, selected)
    if o.dry_run:
        ctx.dated_tag = publish.dated_candidates(o.date, o.suffix, force_date=o.force_date)[0]
    elif chosen:
        ctx.dated_tag = publish.dated_tag_for(
            ctx.client,
            ctx.settings,
            chosen,
            day=o.date,
            suffix=o.suffix,
            force_date=o.force_date,
        )
        log.info(f"dated tag of this run: {ctx.dated_tag} ({', '.join(b.name for b in chosen)})")
    return chosen


@step(
    "tag-dated",
    "Tag the {backend} image with today's UTC date and push it (--dry-run)",
    scope=IMAGE,
    options=(
        option("--date", help="YYYY-MM-DD instead of today (UTC)"),
        option("--force-date", action="store_true", help="allow --date more than a day ahead"),
        option(
            "--suffix",
            default="",
            help="N for YYYY-MM-DD.N, or auto: the next one free for every image named",
        ),
        *PUBLISH_OPTIONS,
    ),
    prepare=_prepare_tag_dated,
)
def tag_dated(ctx: Context, backend: Backend) -> None:
    o = ctx.options
    publish.tag_dated_image(
        ctx.client,
        ctx.settings,
        backend,
        tag=ctx.dated_tag,
        dry_run=o.dry_run,
        allow_unverified=o.allow_unverified,
    )


# -- container steps -----------------------------------------------------------


@step(
    "start",
    "Start the {backend} container, wait until ready (--source DIR, --ports, --keep)",
    scope=SERVICES,
    options=(
        SOURCE_OPTION,
        PORTS_OPTION,
        option(
            "--keep",
            action="store_true",
            help="keep a container that does not become ready, for inspection",
        ),
    ),
)
def start(ctx: Context, backend: Backend) -> None:
    client, name = ctx.client, backend.container_name
    source = _source_dir(ctx.options.source, ctx.invoked_from)
    planned = ports.plan(backend.ports, ctx.options.ports)
    containers.ready_timeout(backend)  # a bad override fails before anything starts
    existing = containers.find(client, name)
    if existing is not None and existing.status == "running":
        _use_running(existing, backend, source)
        return
    if existing is not None:
        # Its last words go to the log before it goes: nothing is lost silently
        # (a start the engine's stop or a kill -9 interrupted leaves one).
        with log.group(
            f"{name} is there but {existing.status} (exit code "
            f"{containers.exit_code(existing)}), left by an earlier start; its last output"
        ):
            log.write(existing.logs(tail=20).decode(errors="replace"))
        log.info(f"removing the {existing.status} container {name}")
        containers.remove(existing)
    ports.check_free(client, planned, "--ports")
    image = require_image(client, ctx.settings, backend)
    log.info(
        f"starting {name} from {ctx.settings.reference(backend)}"
        + (f" with {source} at {containers.SOURCE_MOUNT}" if source else "")
    )
    try:
        container = containers.start(
            client, backend, image, name=name, source=source, ports=planned
        )
    except containers.NameTaken:
        # Another start of this backend (a second terminal, a retried CI step)
        # created it between our look and our create: that one goes on.
        other = containers.await_created(client, name)
        if other is None:
            raise UserError(
                f"another start of {backend.name} created {name} and removed it again; "
                f"run `nox -s start -- {backend.name}` once more"
            ) from None
        log.info(f"another start of {backend.name} created {name} just now; waiting for it")
        _use_running(other, backend, source)
        return
    except KeyboardInterrupt as interrupt:
        raise UserError(f"{signals.describe(interrupt)}: {name} was not started") from None
    try:
        _wait_ready_or_show_logs(container, backend)
    except StepFailed as error:
        if ctx.options.keep:
            raise StepFailed(
                f"{error}; kept {name} for inspection (--keep): `nox -s print-logs -- "
                f"{backend.name}`, then `nox -s stop -- {backend.name}`"
            ) from None
        containers.remove(container)
        raise StepFailed(
            f"{error}; its logs are above, and {name} was removed (--keep keeps it)"
        ) from None
    except KeyboardInterrupt as interrupt:
        containers.remove(container)
        raise UserError(f"{signals.describe(interrupt)}: removed the half-started {name}") from None
    except Exception as error:
        from requests.exceptions import ConnectionError as Disconnected

        if not isinstance(error, Disconnected):  # the engine stopped or restarted meanwhile
            raise
        raise UserError(
            f"start {backend.name} failed: the Docker engine stopped answering "
            f"({first_line(error)}); once it is back, `nox -s start -- {backend.name}` names "
            f"and replaces the {name} this one left"
        ) from None


def _use_running(container, backend: Backend, source: Path | None) -> None:
    """An already running container: the same checkout, and ready."""
    mounted = containers.mounted_source(container)
    if source is not None and mounted != str(source):
        raise UserError(
            f"{container.name} is running with {mounted or 'no checkout'} at "
            f"{containers.SOURCE_MOUNT}, not {source}; to switch, "
            f"`nox -s stop -- {backend.name}` and start it again"
        )
    log.info(f"{container.name} is already running" + (f" with {mounted}" if mounted else ""))
    _wait_ready_or_show_logs(container, backend)


@step(
    "install",
    "Install test requirements in the running {backend} container, as root",
    scope=SERVICES,
)
def install(ctx: Context, backend: Backend) -> None:
    container = containers.require_running(ctx.client, backend)
    if containers.mounted_source(container):
        commands, workdir = backend.install_source, containers.SOURCE_MOUNT
    else:
        commands, workdir = backend.install_conformance, "/"
    for command in commands:
        _run_in(container, backend, command, user="root", workdir=workdir, step="install")


@step(
    "test",
    "Run tests in the running {backend} container as dask (extra args to pytest)",
    scope=SERVICES,
    passthrough=True,
)
def test(ctx: Context, backend: Backend) -> None:
    container = containers.require_running(ctx.client, backend)
    if containers.mounted_source(container):
        for command in backend.test_source:
            _run_tests(container, backend, (*command, *ctx.extra))
        return
    probe = containers.execute(container, ("python", "-m", "pytest", "--version"), user="dask")
    if probe.exit_code != 0:
        raise UserError(
            f"pytest is not installed in the {backend.name} container; "
            f"run `nox -s install -- {backend.name}` first"
        )
    folders = []
    for owner in (*ancestors(ctx.backends, backend.name), backend):
        if owner.conformance_dir.is_dir():
            destination = f"{containers.CONFORMANCE_DIR}/{owner.name}"
            containers.copy_tree(container, owner.conformance_dir, destination)
            folders.append(destination)
    command = ("python", "-m", "pytest", "-v", "-p", "no:cacheprovider", *folders, *ctx.extra)
    _run_in(
        container,
        backend,
        command,
        user="dask",
        workdir="/tmp",
        step="test",
        environment={"PYTHONDONTWRITEBYTECODE": "1"},
    )


@step("print-logs", "Print service status and logs of the {backend} container", scope=SERVICES)
def print_logs(ctx: Context, backend: Backend) -> None:
    container = containers.find(ctx.client, backend.container_name)
    if container is None:
        raise UserError(
            f"no {backend.name} container ({backend.container_name}) to show logs of; "
            f"run `nox -s start -- {backend.name}` first"
        )
    containers.print_logs(container, backend)


@step("stop", "Stop and remove the {backend} container", scope=SERVICES)
def stop(ctx: Context, backend: Backend) -> None:
    container = containers.find(ctx.client, backend.container_name)
    if container is None:
        log.info(f"no {backend.container_name} container; nothing to stop")
        return
    containers.stop(container, backend.stop_timeout)
    log.info(f"stopped and removed {backend.container_name}")


@step(
    "cycle",
    "Start, install, test the {backend} container; logs on failure; always stop",
    scope=SERVICES,
    options=(SOURCE_OPTION, PORTS_OPTION),
    passthrough=True,
)
def cycle(ctx: Context, backend: Backend) -> None:
    existing = containers.find(ctx.client, backend.container_name)
    if existing is not None:
        raise UserError(
            f"{backend.container_name} exists already; cycle starts and removes its own: "
            f"`nox -s stop -- {backend.name}` first, or use start/install/test"
        )
    try:
        start(ctx, backend)  # shows the logs itself when the services do not come up
        try:
            install(ctx, backend)
            test(ctx, backend)
        except UserError:
            print_logs(ctx, backend)
            raise
    finally:
        stop(ctx, backend)


# -- helpers -------------------------------------------------------------------


def _wait_ready_or_show_logs(container, backend: Backend) -> None:
    try:
        containers.wait_ready(container, backend)
    except StepFailed:
        containers.print_logs(container, backend)
        raise


def _run_in(container, backend, command, *, user, workdir, step, environment=None) -> int:
    log.info(f"[{backend.name}] {user}@{workdir}$ {shlex.join(command)}")
    try:
        result = containers.execute(
            container, command, user=user, workdir=workdir, environment=environment, stream=True
        )
    except KeyboardInterrupt:
        raise UserError(
            f"interrupted: stopped `{shlex.join(command)}` in the {backend.name} container"
        ) from None
    if result.exit_code == 0:
        return 0
    # Killed by a signal? The engine may need a moment to report the container gone.
    if not containers.is_running(container, settle=result.exit_code < 0 or result.exit_code > 128):
        raise StepFailed(
            f"the {backend.name} container stopped during {step} (exit code "
            f"{containers.exit_code(container)}); see `nox -s print-logs -- {backend.name}`, "
            f"clean up with `nox -s stop -- {backend.name}`"
        )
    raise StepFailed(f"{step} failed: `{shlex.join(command)}` exited with code {result.exit_code}")


def _run_tests(container, backend: Backend, command: tuple[str, ...]) -> None:
    """The backend's tests; with `must_run`, a module that executed no test is a failure."""
    if not backend.must_run:
        _run_in(
            container, backend, command, user="dask", workdir=containers.SOURCE_MOUNT, step="test"
        )
        return
    report = f"/tmp/dask-gateway-ci-junit-{uuid.uuid4().hex[:12]}.xml"
    try:
        _run_in(
            container,
            backend,
            (*command, f"--junitxml={report}"),
            user="dask",
            workdir=containers.SOURCE_MOUNT,
            step="test",
        )
        failure = None
    except StepFailed as error:
        failure = error
    text = containers.read_file(container, report)
    containers.execute(container, ["rm", "-f", report])
    idle = idle_modules(text.decode(errors="replace"), backend.must_run) if text else []
    if idle:
        raise StepFailed(
            f"test tested nothing of {backend.name}: {'; '.join(idle)}"
            + (f" ({failure})" if failure else "")
        )
    if failure is not None:
        raise failure


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--build-arg takes KEY=VALUE, got {item!r}")
    return key, value


def _source_dir(option: str | None, invoked_from: Path) -> Path | None:
    """--source (or $DASK_GATEWAY_SOURCE), taken from where the user ran nox."""
    value = option or os.environ.get(SOURCE_VARIABLE)
    if not value:
        return None
    where = "--source" if option else SOURCE_VARIABLE
    path = (invoked_from / Path(value).expanduser()).resolve()
    if not path.is_dir():
        looked = f" (looked at {path})" if str(path) != value else ""
        raise UserError(
            f"{where} {value}: not a directory{looked}; a dask-gateway checkout is expected"
        )
    if not (path / "tests").is_dir():
        raise UserError(
            f"{where} {value}: no tests/ folder in {path}; give the root of a dask-gateway checkout"
        )
    return path


def split_posargs(step: Step, posargs: list[str], fixed: str | None) -> tuple[list[str], list[str]]:
    """Backend names first, then the step's own options (and pytest's, where it passes them)."""
    if fixed is not None:
        return [fixed], list(posargs)
    names: list[str] = []
    rest = list(posargs)
    while rest and not rest[0].startswith("-"):
        names.append(rest.pop(0))
        if step.passthrough:  # what follows the backend may be pytest's
            break
    return names, rest


def run(
    name: str, posargs: list[str], fixed: str | None = None, invoked_from: Path | None = None
) -> None:
    """Entry point of every step session.

    `invoked_from` is where the user ran nox (nox changes into the noxfile's
    folder first): relative paths in options are taken from there.
    """
    step_ = STEPS[name]
    backends = load_all()
    names, rest = split_posargs(step_, posargs, fixed)
    selected = select(backends, names, name, step_.scope)
    options, extra = step_.parse(rest)
    ctx = Context(
        backends=backends,
        settings=load_settings(),
        options=options,
        extra=extra,
        invoked_from=invoked_from or Path.cwd(),
    )
    with signals.interruptible():
        if step_.prepare is not None:
            selected = _guarded(name, None, lambda: step_.prepare(ctx, selected))
        for backend in selected:
            _guarded(name, backend, lambda b=backend: step_.function(ctx, b))


def _guarded(name: str, backend: Backend | None, call: Callable):
    """Run one part of a step: engine errors, interrupts and OS errors as one line."""
    doing = f"{name} {backend.name}" if backend else name
    try:
        with engine_errors(doing, backend.name if backend else None):
            return call()
    except KeyboardInterrupt as interrupt:
        raise UserError(f"{doing}: {signals.describe(interrupt)}") from None
    except OSError as error:
        raise UserError(f"{doing}: {error}") from None
