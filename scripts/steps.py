"""The steps behind the nox sessions: one function per verb.

Every function takes a Context and one Backend. Anything the user can fix
is raised as UserError, which the noxfile turns into one line.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import containers, log, state, summary
from .backends import Backend, ancestors, load_all, select
from .config import Settings, load_settings
from .engine import connect
from .errors import StepFailed, UserError
from .images import build_with_parents, load_archive, require_image, save_archive


@dataclass
class Context:
    backends: dict[str, Backend]
    settings: Settings
    options: argparse.Namespace
    extra: list[str] = field(default_factory=list)
    built: dict[str, str] = field(default_factory=dict)
    _client: object = None

    @property
    def client(self):
        if self._client is None:
            self._client = connect()
        return self._client


# -- image steps ---------------------------------------------------------------


def build(ctx: Context, backend: Backend) -> None:
    build_args = dict(_key_value(item) for item in ctx.options.build_arg)
    if ctx.options.load_parent:
        load_archive(ctx.client, ctx.options.load_parent)
    build_with_parents(
        ctx.client,
        ctx.settings,
        ctx.backends,
        backend,
        built=ctx.built,
        build_parents=not (ctx.options.no_parent_build or ctx.options.load_parent),
        build_args=build_args,
        target=ctx.options.target,
        network_mode=ctx.options.network,
        nocache=ctx.options.no_cache,
    )
    if ctx.options.save:
        save_archive(ctx.client, ctx.settings.reference(backend), ctx.options.save)


def verify(ctx: Context, backend: Backend) -> None:
    image = require_image(ctx.client, ctx.settings, backend)
    reference = ctx.settings.reference(backend)
    started = time.monotonic()
    container = containers.run_detached(
        ctx.client, backend, image, name=containers.throwaway_name(backend)
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
    size = ctx.client.images.get(image).attrs.get("Size")
    summary.record_image(
        reference, tags=["latest"], size=size, verify_seconds=seconds, result="verified"
    )
    log.info(f"verified {reference} ({image[:19]}) in {seconds:.0f}s")


def push(ctx: Context, backend: Backend) -> None:
    from .publish import push_image

    push_image(ctx, backend)


def tag_dated(ctx: Context, backend: Backend) -> None:
    from .publish import tag_dated_image

    tag_dated_image(ctx, backend)


# -- container steps -----------------------------------------------------------


def start(ctx: Context, backend: Backend) -> None:
    source = _source_dir(ctx.options.source)
    existing = containers.find(ctx.client, backend.container_name)
    if existing is not None and existing.status == "running":
        mounted = containers.has_source(existing)
        if source is not None and not mounted:
            raise UserError(
                f"{backend.container_name} is running without a source mount; "
                f"run `nox -s stop -- {backend.name}` first to start it with --source"
            )
        log.info(f"{backend.container_name} is already running")
        containers.wait_ready(existing, backend)
        return
    if existing is not None:
        # Its last words go to the log before it goes: nothing is lost silently.
        code = existing.attrs.get("State", {}).get("ExitCode")
        with log.group(f"{backend.container_name} had stopped (exit code {code}); its last output"):
            log.write(existing.logs(tail=20).decode(errors="replace"))
        log.info(f"removing stopped container {backend.container_name}")
        containers.remove(existing)
    image = require_image(ctx.client, ctx.settings, backend)
    log.info(
        f"starting {backend.container_name} from {ctx.settings.reference(backend)}"
        + (f" with {source} at {containers.SOURCE_MOUNT}" if source else "")
    )
    container = containers.run_detached(
        ctx.client, backend, image, name=backend.container_name, source=source
    )
    try:
        containers.wait_ready(container, backend)
    except StepFailed as error:
        containers.print_logs(container, backend)
        raise StepFailed(
            f"{error}; container left for inspection, remove it with "
            f"`nox -s stop -- {backend.name}`"
        ) from None


def install(ctx: Context, backend: Backend) -> None:
    container = containers.require_running(ctx.client, backend)
    if containers.has_source(container):
        commands, workdir = backend.install_source, containers.SOURCE_MOUNT
    else:
        commands, workdir = backend.install_conformance, "/"
    for command in commands:
        _run_in(container, backend, command, user="root", workdir=workdir, step="install")


def test(ctx: Context, backend: Backend) -> None:
    container = containers.require_running(ctx.client, backend)
    if containers.has_source(container):
        for command in backend.test_source:
            _run_in(
                container,
                backend,
                (*command, *ctx.extra),
                user="dask",
                workdir=containers.SOURCE_MOUNT,
                step="test",
            )
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


def print_logs(ctx: Context, backend: Backend) -> None:
    container = containers.find(ctx.client, backend.container_name)
    if container is None:
        raise UserError(
            f"no {backend.name} container ({backend.container_name}) to show logs of; "
            f"run `nox -s start -- {backend.name}` first"
        )
    containers.print_logs(container, backend)


def stop(ctx: Context, backend: Backend) -> None:
    container = containers.find(ctx.client, backend.container_name)
    if container is None:
        log.info(f"no {backend.container_name} container; nothing to stop")
        return
    containers.remove(container)
    log.info(f"stopped and removed {backend.container_name}")


# -- helpers -------------------------------------------------------------------


def _run_in(container, backend, command, *, user, workdir, step, environment=None) -> None:
    log.info(f"[{backend.name}] {user}@{workdir}$ {shlex.join(command)}")
    result = containers.execute(
        container, command, user=user, workdir=workdir, environment=environment, stream=True
    )
    if result.exit_code == 0:
        return
    # Killed by a signal? The engine may need a moment to report the container gone.
    if not containers.is_running(container, settle=result.exit_code < 0 or result.exit_code > 128):
        code = container.attrs.get("State", {}).get("ExitCode")
        raise StepFailed(
            f"the {backend.name} container stopped during {step} (exit code {code}); "
            f"see `nox -s print-logs -- {backend.name}`, clean up with "
            f"`nox -s stop -- {backend.name}`"
        )
    raise StepFailed(f"{step} failed: `{shlex.join(command)}` exited with code {result.exit_code}")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--build-arg takes KEY=VALUE, got {item!r}")
    return key, value


def _source_dir(option: str | None) -> Path | None:
    value = option or os.environ.get("DASK_GATEWAY_SOURCE")
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise UserError(f"--source {value}: not a directory (a dask-gateway checkout is expected)")
    return path


STEP_FUNCTIONS = {
    "build": build,
    "verify": verify,
    "push": push,
    "tag-dated": tag_dated,
    "start": start,
    "install": install,
    "test": test,
    "print-logs": print_logs,
    "stop": stop,
}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump, no SystemExit
        raise UserError(f"{self.prog}: {message}")


def option_parser(step: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"nox -s {step} --", add_help=False)
    if step == "build":
        parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--target", help="build only this Dockerfile stage (not tagged)")
        parser.add_argument("--network", help="network mode of RUN steps, e.g. host")
        parser.add_argument("--no-cache", action="store_true")
        parser.add_argument(
            "--no-parent-build",
            action="store_true",
            help="use the parent image already here instead of building it",
        )
        parser.add_argument(
            "--load-parent",
            metavar="TAR",
            help="docker load the parent image from TAR first, and build on it",
        )
        parser.add_argument("--save", metavar="TAR", help="docker save the built image to TAR")
    elif step == "start":
        parser.add_argument("--source", help="dask-gateway checkout (default $DASK_GATEWAY_SOURCE)")
    elif step in ("push", "tag-dated"):
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--allow-unverified", action="store_true")
        if step == "push":
            parser.add_argument("--tag", action="append", default=[], dest="tags")
        else:
            parser.add_argument("--suffix", default="")
            parser.add_argument("--date", help="YYYY-MM-DD instead of today (UTC)")
    return parser


def split_posargs(step: str, posargs: list[str], fixed: str | None) -> tuple[list[str], list[str]]:
    """Backend names first, then the step's own options (or pytest's, for test)."""
    if fixed is not None:
        return [fixed], list(posargs)
    names: list[str] = []
    rest = list(posargs)
    while rest and not rest[0].startswith("-"):
        names.append(rest.pop(0))
        if step == "test":  # everything after the backend goes to pytest
            break
    return names, rest


def run(step: str, posargs: list[str], fixed: str | None = None) -> None:
    """Entry point of every step session."""
    backends = load_all()
    names, rest = split_posargs(step, posargs, fixed)
    selected = select(backends, names, step)
    if step == "test":
        options, extra = argparse.Namespace(), rest
    else:
        options, extra = option_parser(step).parse_args(rest), []
    ctx = Context(backends=backends, settings=load_settings(), options=options, extra=extra)
    for backend in selected:
        STEP_FUNCTIONS[step](ctx, backend)
