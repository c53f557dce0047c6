"""The steps behind the nox sessions, one function per verb, in the README's order.

Each is registered with `@step(...)` (cli.py): its name, the line `nox -l`
shows, whether it applies to every image or only to backends that run
services, and its options. A step body reads top-down as the README's step
table describes it; commands inside a container are commands.py's, the
container itself containers.py's. Anything the user can fix is raised as
UserError, which the noxfile turns into one line.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import (
    commands,
    consumers,
    containers,
    debian,
    log,
    plan,
    platforms,
    ports,
    publish,
    signals,
    sources,
    state,
    summary,
)
from .backends import IMAGE, SERVICES, Backend, ancestors, root_of
from .cli import PROJECT, STEPS, Context, option, step
from .engine import Container, Disconnected
from .errors import StepFailed, UserError, first_line
from .images import (
    build_with_parents,
    check_build_options,
    image_sizes,
    load_archive,
    local_reference,
    require_image,
    save_archive,
)
from .labels import CONSUMER_LABEL
from .settings import LATEST, PORTS_VARIABLE, SOURCE_VARIABLE, SOURCES_VARIABLE

__all__ = ["STEPS"]  # every step, registered as this module is imported

SOURCE_OPTION = option(
    "--source",
    help=f"a checkout of dask-gateway, dask-jobqueue, ... (default ${SOURCE_VARIABLE})",
)
CONSUMER_OPTION = option(
    "--consumer", help="whose checkout --source is (default: recognised from the checkout)"
)
PORTS_OPTION = option(
    "--ports", help=f"none, or +N to move the host ports (default ${PORTS_VARIABLE})"
)
PLATFORM_OPTION = option(
    "--platform",
    help="linux/amd64 or linux/arm64 (default: the engine's own); another architecture runs "
    "under emulation, its local tag is :latest-ARCH",
)
SOURCES_OPTION = option(
    "--sources",
    metavar="DIR",
    help=f"take the files the build downloads from DIR when they are there, checked "
    f"(default ${SOURCES_VARIABLE})",
)
PUBLISH_OPTIONS = (
    option(
        "--load",
        metavar="PATH",
        help="docker load the image first: a TAR from --save, or a folder of BACKEND.tar",
    ),
    option("--dry-run", action="store_true", help="say what would be pushed; touch nothing"),
    option("--allow-unverified", action="store_true", help="publish without a passed verify"),
    option(
        "--platform",
        action="append",
        default=[],
        dest="platforms",
        help="publish each tag as an index of these architectures' images (repeat it: "
        "--platform linux/amd64 --platform linux/arm64)",
    ),
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
        SOURCES_OPTION,
        option(
            "--pull-if-current",
            action="store_true",
            help="pull the published image instead when it was built from these ci/ folders",
        ),
        PLATFORM_OPTION,
    ),
)
def build(ctx: Context, backend: Backend) -> None:
    o = ctx.options
    platform = _platform(ctx)
    build_args = dict(_key_value(item) for item in o.build_arg)
    check_build_options(backend, build_args=build_args, target=o.target, save=o.save)
    folder = sources.folder_of(o.sources, ctx.settings.sources, ctx.invoked_from)
    if o.target and (o.save or o.pull_if_current):
        raise UserError("--target builds one stage: it takes neither --save nor --pull-if-current")
    if o.load_parent:
        if backend.parent is None:
            raise UserError(f"--load-parent: {backend.name} has no parent to load")
        parent = ctx.backends[backend.parent]
        load_archive(ctx.client, o.load_parent, local_reference(ctx.settings, parent, platform))
    build_with_parents(
        ctx.client,
        ctx.settings,
        ctx.backends,
        backend,
        built=ctx.built,
        build_parents=not (o.no_parent_build or o.load_parent),
        reuse_published=o.pull_if_current,
        platform=platform,
        sources_folder=folder,
        build_args=build_args,
        target=o.target,
        network_mode=o.network,
        nocache=o.no_cache,
    )
    if o.save:
        save_archive(ctx.client, local_reference(ctx.settings, backend, platform), o.save)


@step(
    "verify",
    "Check the {backend} image against the contract in a throwaway container",
    scope=IMAGE,
    # --sources: verify downloads nothing; taken so that one argument list serves
    # `nox -s build-pbs verify-pbs -- --sources DIR`.
    options=(PLATFORM_OPTION, SOURCES_OPTION),
)
def verify(ctx: Context, backend: Backend) -> None:
    state.check_writable(ctx.settings)
    timeout = containers.ready_timeout(
        backend, ctx.settings.ready_timeout
    )  # before anything starts
    platform = _platform(ctx)
    image = require_image(ctx.client, ctx.settings, backend, platform)
    reference = local_reference(ctx.settings, backend, platform)
    started = time.monotonic()
    # No host ports: the checks run inside, and a started container may hold them.
    container = containers.start(
        ctx.client,
        backend,
        image,
        name=containers.throwaway_name(backend),
        forwarded=ctx.settings.forwarded,
        ports={},
    )
    try:
        with log.group(f"verify {reference}"):
            containers.wait_ready(container, backend, timeout)
            containers.run_smoke(container, backend)
    except StepFailed:
        containers.print_logs(container, backend)
        summary.record_image(reference, result="verify failed", settings=ctx.settings)
        raise
    finally:
        containers.remove(container)
    seconds = time.monotonic() - started
    state.record_verified(ctx.settings, image, backend.name, seconds)
    summary.record_image(
        reference,
        tags=[LATEST],
        size=image_sizes(ctx.client, image).unpacked,
        verify_seconds=seconds,
        result="verified",
        settings=ctx.settings,
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
    # One archive per architecture: BACKEND.tar (amd64), BACKEND-arm64.tar.
    chosen_platforms = _publish_platforms(ctx) or [None]
    if not folder.is_dir():
        if len(selected) != 1 or len(chosen_platforms) != 1:
            raise UserError(
                f"--load {path}: give a folder of BACKEND.tar (BACKEND-ARCH.tar) for several "
                "images or architectures"
            )
        load_archive(
            ctx.client, path, local_reference(ctx.settings, selected[0], chosen_platforms[0])
        )
        return selected
    chosen = []
    for backend in selected:
        archives = [
            (folder / f"{backend.name}{p.suffix if p else ''}.tar", p) for p in chosen_platforms
        ]
        missing = [archive for archive, _ in archives if not archive.is_file()]
        if not missing:
            for archive, platform in archives:
                load_archive(
                    ctx.client, str(archive), local_reference(ctx.settings, backend, platform)
                )
            chosen.append(backend)
            continue
        archive = missing[0]
        if not backend.blocking:
            log.warn(
                f"{backend.name} is not published: no {archive} (its job failed or did not run; "
                f"{backend.name} does not block publishing)"
            )
        else:
            raise UserError(f"--load {path}: no {archive.name} there for {backend.name}")
    return chosen


def _publish_platforms(ctx: Context) -> list[platforms.Platform]:
    """--platform of push and tag-dated, checked, in the order given, each once."""
    return list(dict.fromkeys(platforms.parse(p) for p in ctx.options.platforms))


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
        platforms=_publish_platforms(ctx),
    )


def _prepare_tag_dated(ctx: Context, selected: list[Backend]) -> list[Backend]:
    """One dated tag for every image of the run, chosen before any is pushed."""
    o = ctx.options
    # Checked before anything is loaded; a dry run names the first candidate.
    candidates = publish.dated_candidates(o.date, o.suffix, force_date=o.force_date)
    chosen = _load_for_publishing(ctx, selected)
    if o.dry_run:
        ctx.dated_tag = candidates[0]
    elif chosen:
        ctx.dated_tag = publish.dated_tag_for(
            ctx.client, ctx.settings, chosen, candidates, platforms=_publish_platforms(ctx)
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
        platforms=_publish_platforms(ctx),
    )


# -- container steps -----------------------------------------------------------


@step(
    "start",
    "Start the {backend} container, wait until ready (--source DIR, --ports, --keep)",
    scope=SERVICES,
    options=(
        SOURCE_OPTION,
        CONSUMER_OPTION,
        PORTS_OPTION,
        PLATFORM_OPTION,
        option(
            "--keep",
            action="store_true",
            help="keep a container that does not become ready, for inspection",
        ),
    ),
)
def start(ctx: Context, backend: Backend) -> None:
    client, name = ctx.client, backend.container_name
    source = _source_dir(ctx.options.source, ctx.settings.checkout, ctx.invoked_from)
    consumer = _consumer(ctx, source)
    use = consumer.use(backend) if consumer else None
    planned = ports.plan(backend.ports, ctx.options.ports, ctx.settings.ports)
    timeout = containers.ready_timeout(
        backend, ctx.settings.ready_timeout
    )  # before anything starts
    existing = containers.find(client, name)
    if existing is not None and existing.status == "created":
        # Another start between its create and its start: not a leftover yet.
        existing = containers.await_started(client, name)
    if existing is not None and existing.status == "running":
        _use_running(existing, backend, source, timeout)
        return
    if existing is not None:
        # Its last words go to the log before it goes: nothing is lost silently
        # (a start the engine's stop or a kill -9 interrupted leaves one).
        with log.group(
            f"{name} is there but {existing.status} (exit code "
            f"{existing.exit_code}), left by an earlier start; its last output"
        ):
            log.write(existing.logs(tail=20))
        log.info(f"removing the {existing.status} container {name}")
        containers.remove(existing)
    ports.check_free(client, planned, "--ports", ctx.settings.docker_host)
    platform = _platform(ctx)
    image = require_image(client, ctx.settings, backend, platform)
    log.info(
        f"starting {name} from {local_reference(ctx.settings, backend, platform)}"
        + (f" with {source} ({consumer.name}) at {containers.SOURCE_MOUNT}" if source else "")
    )
    try:
        container = containers.start(
            client,
            backend,
            image,
            name=name,
            forwarded=ctx.settings.forwarded,
            source=source,
            ports=planned,
            labels={CONSUMER_LABEL: consumer.name} if consumer else None,
            wanted=use.wanted_capabilities if use else (),
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
        _use_running(other, backend, source, timeout)
        return
    except KeyboardInterrupt as interrupt:
        # containers.start removed what it had created, even a container the
        # engine had just started (the signal came before its answer did).
        raise UserError(
            f"{signals.describe(interrupt)}: {name} was not started; nothing of it is left"
        ) from None
    try:
        containers.wait_ready_or_show_logs(container, backend, timeout)
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
    except Disconnected as error:  # the engine stopped or restarted meanwhile
        raise UserError(
            f"start {backend.name} failed: the Docker engine stopped answering "
            f"({first_line(error)}); once it is back, `nox -s start -- {backend.name}` names "
            f"and replaces the {name} this one left"
        ) from None


def _use_running(
    container: Container, backend: Backend, source: Path | None, timeout: float
) -> None:
    """An already running container: the same checkout, and ready."""
    mounted = containers.mounted_source(container)
    if source is not None and mounted != str(source):
        raise UserError(
            f"{container.name} is running with {mounted or 'no checkout'} at "
            f"{containers.SOURCE_MOUNT}, not {source}; to switch, "
            f"`nox -s stop -- {backend.name}` and start it again"
        )
    log.info(f"{container.name} is already running" + (f" with {mounted}" if mounted else ""))
    containers.wait_ready_or_show_logs(container, backend, timeout)


@step(
    "install",
    "Install test requirements in the running {backend} container, as root",
    scope=SERVICES,
)
def install(ctx: Context, backend: Backend) -> None:
    container = containers.require_running(ctx.client, backend)
    use = _use_of(ctx, container, backend)
    if use is None:
        for command in backend.install_conformance:
            commands.run_in(container, backend, command, user="root", workdir="/", step="install")
        return
    for command in use.setup:
        commands.run_in(container, backend, command, user="root", workdir="/", step="setup")
    granted = containers.granted(container, use.wanted_capabilities)
    for want in use.wants:
        if want.capability not in granted:
            log.warn(
                f"{want.capability} is not granted here ({want.why}); its setup is skipped "
                f"and `test` leaves out: {', '.join(want.deselect) or 'nothing'}"
            )
            continue
        for command in want.setup:
            commands.run_in(container, backend, command, user="root", workdir="/", step="setup")
    for command in use.install:
        workdir = containers.SOURCE_MOUNT
        commands.run_in(container, backend, command, user="root", workdir=workdir, step="install")


@step(
    "test",
    "Run tests in the running {backend} container as dask (extra args to pytest)",
    scope=SERVICES,
    passthrough=True,
)
def test(ctx: Context, backend: Backend) -> None:
    container = containers.require_running(ctx.client, backend)
    use = _use_of(ctx, container, backend)
    if use is not None:
        wanted = use.wanted_capabilities
        missing = set(wanted) - containers.granted(container, wanted)
        left_out = consumers.deselected(use, missing)
        for test_id, why in left_out:
            log.warn(f"not run: {test_id} ({why})")
        deselect = [f"--deselect={test_id}" for test_id, _ in left_out]
        try:
            for command in use.test:
                commands.run_tests(container, backend, use, (*command, *deselect, *ctx.extra))
        except StepFailed:
            if use.job_logs:
                log.info(
                    f"its jobs' own logs stay in {container.name} ({', '.join(use.job_logs)}): "
                    f"`nox -s print-logs -- {backend.name}` shows them"
                )
            raise
        if left_out:
            log.warn(f"{len(left_out)} test(s) not run here; see above")
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
    commands.run_in(
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
    use = _use_of(ctx, container, backend)
    containers.print_logs(container, backend, use.job_logs if use is not None else ())


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
    options=(SOURCE_OPTION, CONSUMER_OPTION, PORTS_OPTION, PLATFORM_OPTION),
    passthrough=True,
)
def cycle(ctx: Context, backend: Backend) -> None:
    # A checkout no consumer declares (or not for this backend) fails before the engine.
    source = _source_dir(ctx.options.source, ctx.settings.checkout, ctx.invoked_from)
    consumer = _consumer(ctx, source)
    if consumer is not None:
        consumer.use(backend)
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


def _platform(ctx: Context) -> platforms.Platform | None:
    """--platform, checked before the engine is asked anything; None when not given."""
    value = getattr(ctx.options, "platform", None)
    return platforms.parse(value) if value else None


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--build-arg takes KEY=VALUE, got {item!r}")
    return key, value


def _source_dir(option: str | None, configured: str, invoked_from: Path) -> Path | None:
    """--source, else `configured` (Settings.checkout, $DASK_GATEWAY_SOURCE), taken
    from where the user ran nox. Raises UserError when it is not a directory."""
    value = option or configured
    if not value:
        return None
    where = "--source" if option else SOURCE_VARIABLE
    path = (invoked_from / Path(value).expanduser()).resolve()
    if not path.is_dir():
        looked = f" (looked at {path})" if str(path) != value else ""
        raise UserError(
            f"{where} {value}: not a directory{looked}; a checkout (dask-gateway, "
            "dask-jobqueue, ...) is expected"
        )
    return path


def _consumer(ctx: Context, source: Path | None) -> consumers.Consumer | None:
    """The consumer whose checkout `source` is (--consumer, else recognised), or None."""
    named = ctx.options.consumer
    if source is None:
        if named:
            raise UserError("--consumer names whose checkout --source is: give --source DIR too")
        return None
    where = "--source" if ctx.options.source else SOURCE_VARIABLE
    return consumers.choose(consumers.load_all(ctx.backends), source, named, where)


def _use_of(ctx: Context, container, backend: Backend) -> consumers.Use | None:
    """What the mounted checkout's consumer runs here, or None without a checkout.

    The consumer recorded at start; for a container started before consumers
    were recorded, the one its mounted checkout is recognised as.
    """
    mounted = containers.mounted_source(container)
    if not mounted:
        return None
    declared = consumers.load_all(ctx.backends)
    name = containers.consumer_of(container)
    if name is not None and name not in declared:
        raise UserError(
            f"{container.name} was started for consumer {name!r}, which consumers/ no longer "
            f"declares; `nox -s stop -- {backend.name}` and start it again"
        )
    consumer = consumers.choose(declared, Path(mounted), name, f"the checkout at {mounted}")
    return consumer.use(backend)


# -- project steps: no backend -------------------------------------------------


@step(
    "bootstrap-debian",
    "Create the Debian base image locally with debootstrap (no registry needed)",
    scope=PROJECT,
    options=(
        option("--image", help="the reference to create (default: ci/base's `from`)"),
        option("--suite", help="the Debian release (default: from the tag)"),
        option("--mirror", help="Debian archive URL (default: the host's apt source)"),
        option("--force", action="store_true", help="create it again when it exists"),
        option(
            "--arch",
            help="Debian architecture, e.g. arm64 (default: the host's; another one runs "
            "under qemu-user-static and is named as Docker's official per-architecture "
            "image, arm64v8/debian:...)",
        ),
    ),
)
def bootstrap_debian(ctx: Context, _backend: None) -> None:
    o = ctx.options
    platform = platforms.parse(o.arch or debian.host_architecture(), "--arch")
    declared = root_of(ctx.backends, next(iter(ctx.backends))).base_image
    image = o.image or platform.external(declared)
    debian.bootstrap(
        ctx.client,
        reference=image,
        suite=o.suite or debian.suite_of(declared if not o.image else image),
        mirror=o.mirror,
        force=o.force,
        platform=platform,
    )


@step(
    "plan",
    "Print what a workflow run builds, tests and publishes, as KEY=VALUE lines for "
    "$GITHUB_OUTPUT (DASK_GATEWAY_CI_BACKENDS narrows it)",
    scope=PROJECT,
)
def plan_run(ctx: Context, _backend: None) -> None:
    declared = consumers.load_all(ctx.backends)
    print(plan.render(plan.plan(ctx.backends, declared, ctx.settings)), end="", flush=True)
