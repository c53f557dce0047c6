"""Run backend containers: start, wait until ready, exec, logs, stop."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import re
import shlex
import tarfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import capabilities, log, trust
from .backends import Backend, Check
from .engine import APIError, Client, Container, NotFound, create_container, get_container
from .errors import StepFailed, UserError, first_line
from .labels import CONSUMER_LABEL, STARTED_LABEL
from .settings import READY_TIMEOUT_VARIABLE
from .tarballs import folder_archive

SOURCE_MOUNT = "/working"
CONFORMANCE_DIR = "/opt/dask-gateway-ci/conformance"
# Readiness is polled every INSIDE_POLL seconds, inside the container, for as
# long as the services usually take (ready.typical), so a start returns
# within one poll of being ready; after that from outside, every FIRST_POLL
# seconds backing off to LAST_POLL: a slow start costs few execs.
INSIDE_POLL = 0.05
FIRST_POLL, LAST_POLL, BACKOFF = 0.1, 1.0, 1.6
# Seconds between "waiting for ..." lines while a start waits.
REPORT_EVERY = 10.0
# Docker: 409 "Conflict. The container name ... is already in use"; Podman: 500 "... the
# container name ... is already in use ...".
NAME_IN_USE = re.compile(r"container name .* is already in use", re.I)
# A line says something when it has words; "*****" or "----" does not.
WORDY = re.compile(r"[A-Za-z]{2,}")
TELLING = re.compile(
    r"\b(down|error|fail\w*|refused|denied|not|cannot|can't|unable|no such|timed? ?out)\b", re.I
)


class NameTaken(Exception):
    """A container of that name was created by someone else between look and create."""


@dataclass(frozen=True)
class Result:
    exit_code: int
    output: str


def find(client: Client, name: str) -> Container | None:
    """The container called `name`, running or not, or None."""
    container = get_container(client, name)
    if container is not None:
        # Whatever session started it, its forwarded secrets never show in ours.
        trust.hide_forwarded(container.environment)
    return container


def start(
    client: Client,
    backend: Backend,
    image: str,
    *,
    name: str,
    forwarded: Mapping[str, str],
    source: Path | None = None,
    ports: dict[int, int] | None = None,
    labels: dict[str, str] | None = None,
    wanted: tuple[str, ...] = (),
) -> Container:
    """Create and start a container; nothing is left behind when that fails.

    `forwarded`: the host's trust and proxy variables (Settings.forwarded,
    see trust.forwarded). `wanted`: capabilities wanted beside the backend's
    (its consumer's).

    Wanted capabilities are dropped, with a notice, when the engine cannot
    grant them; needed ones are an error naming the capability. Refusals are
    recognised at create and at start, and a capability an engine dropped
    without a word (Podman) is found missing in the container (capabilities.py).

    Raises NameTaken, UserError (a needed capability refused), StepFailed, APIError.
    """
    volumes, environment = trust.forwarded(forwarded)
    if source is not None:
        volumes[str(source)] = {"bind": SOURCE_MOUNT, "mode": "rw"}
    environment.update(backend.environment)
    needed = list(backend.needed_capabilities)
    wanted = list(dict.fromkeys((*backend.wanted_capabilities, *wanted)))
    # What this engine refused before is not asked again (a refused start costs
    # a container create); a notice still says it runs without.
    known = capabilities.remembered(client) & set(wanted) if wanted else set()
    if known:
        log.warn(
            f"this engine cannot grant {', '.join(sorted(known))} (wanted by {backend.name}, "
            "not needed; refused before); starting without"
        )
        wanted = [c for c in wanted if c not in known]
    while True:
        container = None
        try:
            container = create_container(
                client,
                image,
                command=list(backend.command) if backend.command else None,
                name=name,
                hostname=backend.hostname,
                # Only this machine may reach the test services.
                ports={f"{c}/tcp": ("127.0.0.1", h) for c, h in (ports or {}).items()},
                cap_add=[*needed, *wanted] or None,
                environment=environment,
                volumes=volumes,
                labels={**(labels or {}), STARTED_LABEL: backend.name},
            )
            container.start()
        except APIError as error:
            if container is not None:
                remove(container)
            elif error.status_code == 409 or NAME_IN_USE.search(first_line(error)):
                raise NameTaken(name) from None
            if not (needed or wanted) or not capabilities.refused(first_line(error)):
                raise
            _refused(backend, needed, wanted, first_line(error))
            capabilities.remember(client, wanted)
            wanted = []
            continue
        except BaseException:  # Ctrl-C between create and start included
            if container is not None:
                remove(container)
            raise
        absent = _not_granted(container, [*needed, *wanted])
        if any(c in absent for c in needed):
            remove(container)
            _refused(backend, [c for c in needed if c in absent], [], "not granted")
        if absent:  # dropped without a word (Podman): it runs as it would without them
            _refused(backend, [], [c for c in wanted if c in absent], "not granted")
            capabilities.remember(client, absent)
        return container


def _refused(backend: Backend, needed: list[str], wanted: list[str], said: str) -> None:
    """A refusal: a UserError when a needed capability is refused, else a notice."""
    if needed:
        raise UserError(
            f"this engine cannot grant {', '.join(needed)}, which {backend.name} needs "
            f"(run.capabilities.needed in {backend.folder / 'backend.toml'}; it said: {said}); "
            "use an engine that may add it"
        )
    if not wanted:  # refused, yet nothing left to drop: say what the engine said
        raise StepFailed(f"the engine refused the container's capabilities: {said}")
    log.warn(
        f"this engine cannot grant {', '.join(wanted)} (wanted by {backend.name}, "
        "not needed); starting without"
    )


def _not_granted(container: Container, asked: list[str]) -> list[str]:
    """Asked-for capabilities missing from the container's PID 1 (engines that drop silently)."""
    if not asked:
        return []
    try:
        status = execute(container, ["cat", "/proc/1/status"])
    except StepFailed:  # it ended already: nothing to read, nothing it could not do
        return []
    return capabilities.missing(asked, status.output) if status.exit_code == 0 else []


def await_created(client: Client, name: str, timeout: float = 30.0) -> Container | None:
    """The container `name` another process is creating (the engine reserves the
    name before it can be looked up), once that process has started it too
    (await_started); None when it does not appear or goes away again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if find(client, name) is not None:
            # Docker 28 shows it as soon as it is created, before its start.
            return await_started(client, name)
        time.sleep(0.1)
    return None


def await_started(client: Client, name: str, timeout: float = 10.0) -> Container | None:
    """The container `name` once it has left "created" (another start creates, then
    starts it), or None when it went away; still "created" after `timeout`, it is
    returned as it is: a start killed between the two left it."""
    deadline = time.monotonic() + timeout
    found = find(client, name)
    while found is not None and found.status == "created" and time.monotonic() < deadline:
        time.sleep(0.1)
        found = find(client, name)
    return found


def is_running(container: Container, *, settle: bool = False) -> bool:
    """Whether the container runs; `settle` gives a killed one a moment to show it."""
    for _ in range(10 if settle else 1):
        container.reload()
        if container.status != "running":
            return False
        if settle:
            time.sleep(0.5)
    return True


def ensure_running(container: Container, what: str) -> None:
    """Raises StepFailed naming its state, and its last line of output (an image
    that refuses to run says why there), when the container no longer runs."""
    if not is_running(container):
        output = ""
        with contextlib.suppress(APIError):  # removed meanwhile: its state says enough
            output = container.logs(tail=5)
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        said = f"; its last output: {lines[-1][:300]}" if lines else ""
        raise StepFailed(
            f"the {what} container is {container.status} (exit code {container.exit_code}){said}"
        )


def execute(
    container: Container,
    command: tuple[str, ...] | list[str],
    *,
    user: str = "root",
    workdir: str | None = None,
    environment: dict[str, str] | None = None,
    stream: bool = False,
) -> Result:
    """Run a command in the container; stream its output or capture it.

    A streamed command runs as the leader of its own process group, and
    Ctrl-C here stops that group inside the container (docker exec does not).
    Raises StepFailed when the engine cannot run it, or the container is gone.
    """
    pidfile = None
    argv = list(command)
    if stream:
        pidfile = f"/tmp/dask-gateway-ci-exec-{uuid.uuid4().hex[:12]}.pid"
        argv = ["setsid", "--wait", "sh", "-c", 'echo $$ >"$0"; exec "$@"', pidfile, *argv]
    try:
        exec_id = container.exec_create(argv, user=user, workdir=workdir, environment=environment)
        captured: list[str] = []
        for chunk in container.exec_output(exec_id):
            text = chunk.decode(errors="replace")
            if stream:
                log.write(text)
            else:
                captured.append(text)
        code = container.exec_exit_code(exec_id)
    except APIError as error:
        raise StepFailed(f"cannot run {shlex.join(command)}: {first_line(error)}") from None
    except KeyboardInterrupt:
        if pidfile is not None:
            stop_process_group(container, pidfile)
        raise
    finally:
        if pidfile is not None:
            with contextlib.suppress(Exception):
                for _ in container.exec_output(container.exec_create(["rm", "-f", pidfile])):
                    pass
    if code is None:  # the container went away under the command
        ensure_running(container, container.name)
        code = -1
    return Result(code, "".join(captured))


def stop_process_group(container: Container, pidfile: str, grace: float = 5.0) -> None:
    """TERM the process group whose leader wrote `pidfile`, then KILL what is left."""
    # dash's kill takes a negative PID as a process group, but not `--`.
    script = (
        'pid=$(cat "$0" 2>/dev/null) || exit 0; kill -TERM "-$pid" 2>/dev/null || exit 0; '
        f'for _ in $(seq {int(grace * 10)}); do kill -0 "-$pid" 2>/dev/null || exit 0; '
        'sleep 0.1; done; kill -KILL "-$pid" 2>/dev/null; exit 0'
    )
    with contextlib.suppress(Exception):
        for _ in container.exec_output(container.exec_create(["sh", "-c", script, pidfile])):
            pass


def _bounded(check: Check) -> tuple[str, ...]:
    # coreutils' timeout bounds every check, so a hung command cannot hang us.
    return ("timeout", "-k", "5", f"{check.timeout:.0f}", *check.command)


def run_check(container: Container, check: Check) -> Result:
    return execute(container, _bounded(check), user=check.user)


# Runs checks in turn, each every $2 seconds until it exits 0 with an output
# that matches its pattern (when given), then the next; gives up once $1
# seconds have passed (a check that passes still leads to one run of the
# next). The checks follow as pairs: pattern, command (shell-quoted, for
# eval). The match is grep's PCRE over the whole output with (?m), as
# Check.matches does; where grep cannot tell (no -P, a pattern it rejects:
# status 2), the loop ends there and Check.matches decides. Prints
# "check K" (0-based: the checks before K passed) and check K's last output;
# exits with its code.
_CHAIN_LOOP = (
    "end=$(($(date +%s) + $1)); every=$2; shift 2; k=0; while :; do "
    "pattern=$1; command=$2; while :; do "
    'out=$(eval "$command" 2>&1); code=$?; verdict=no; if [ "$code" -eq 0 ]; then '
    'if [ -z "$pattern" ]; then verdict=yes; else '
    'printf "%s\\n" "$out" | grep -zPq -- "(?m)$pattern"; '
    "case $? in 0) verdict=yes ;; 1) ;; *) verdict=ask ;; esac; fi; fi; "
    '[ "$verdict" = no ] || break; [ "$(date +%s)" -ge "$end" ] && break; '
    'sleep "$every"; done; '
    '[ "$verdict" = yes ] && [ "$#" -gt 2 ] || break; shift 2; k=$((k + 1)); done; '
    'printf "check %s\\n%s\\n" "$k" "$out"; exit "$code"'
)
_CHAIN_HEADER = re.compile(r"check (\d+)\n")


def run_checks_until(
    container: Container, checks: Sequence[Check], seconds: float, every: float
) -> tuple[int, Result]:
    """The leading checks that share the first one's user, run in the
    container in turn, each every `every` seconds until it passes, for
    `seconds` in all (whole seconds, at least 1; the checks after one that
    passed still run once): how many passed first, and the last result of
    the one after them (or of the last, when all did), for Check.matches.

    One exec for services that are still coming up instead of one per poll
    and check: each `docker exec` costs the engine, containerd and runc a
    process start (about 0.05 s on Docker 20.10), and on a small machine
    that slowed the services being waited for (slurm's MariaDB came up
    0.3 s later with execs every 0.05 s). The loop also sees a service the
    moment it answers, not at the next poll from outside.
    """
    user = checks[0].user
    chain = list(itertools.takewhile(lambda check: check.user == user, checks))
    loop = ("sh", "-c", _CHAIN_LOOP, "sh", f"{max(1, math.floor(seconds))}", f"{every:g}")
    pairs = [(check.expect or "", shlex.join(_bounded(check))) for check in chain]
    result = execute(container, (*loop, *(part for pair in pairs for part in pair)), user=user)
    header = _CHAIN_HEADER.match(result.output)
    if header is None or int(header.group(1)) >= len(chain):  # the loop did not run
        return 0, result
    return int(header.group(1)), Result(result.exit_code, result.output[header.end() :])


def telling_line(output: str, exit_code: int) -> str:
    """The line of a failed check's output that says most about why."""
    lines = [line.strip() for line in output.splitlines() if WORDY.search(line)]
    for line in reversed(lines):
        if TELLING.search(line):
            return line[:200]
    return lines[-1][:200] if lines else f"exit {exit_code}, no output"


def ready_timeout(backend: Backend, override: str = "") -> float:
    """The declared ready.timeout, or `override` (Settings.ready_timeout,
    $DASK_GATEWAY_CI_READY_TIMEOUT: slow machines, tests).

    Raises UserError when the override is not a number of seconds > 0.
    """
    value = override.strip()
    if not value:
        return backend.ready_timeout
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise UserError(f"{READY_TIMEOUT_VARIABLE}={value}: expected a number of seconds > 0")
    return seconds


def wait_ready(container: Container, backend: Backend, timeout: float) -> float:
    """Poll the declared checks until all have passed, at most `timeout` seconds
    (ready_timeout): _poll_ready.

    Raises StepFailed when the time is up or the container dies. A container
    that exits between a look at its state and the next exec (sge's, run
    under another host name, stops at once) is reported as exited, with its
    last line, not as the exec the engine refused.
    """
    try:
        return _poll_ready(container, backend, timeout)
    except StepFailed:
        with contextlib.suppress(APIError):  # removed meanwhile: the exec's error says it
            ensure_running(container, backend.name)
        raise


def _poll_ready(container: Container, backend: Backend, timeout: float) -> float:
    """Poll the declared checks until all have passed, at most `timeout` seconds.

    The checks are steps in the order the services come up, so a poll starts
    at the first that has not passed yet: a check that passed is not run again
    (one pass of them all costs a poll interval), and the container is ready
    the moment the last one passes.

    Raises StepFailed when the time is up or the container dies.
    """
    started = time.monotonic()
    deadline = started + timeout
    pending = "(no check run yet)"
    last_report = started
    delay = FIRST_POLL
    checks = backend.ready_checks
    passed = 0  # how many checks, from the first, have passed
    while True:
        ensure_running(container, backend.name)
        while passed < len(checks):
            now = time.monotonic()
            # Coming up: wait inside the container, polled often, in whole
            # seconds that end before the deadline (a pass that the loop
            # completed after it would count: the timeout would not hold),
            # the next checks of one user in one exec.
            wait = math.floor(min(backend.ready_typical - (now - started), deadline - now))
            if wait >= 1:
                before, result = run_checks_until(
                    container, checks[passed:], min(wait, REPORT_EVERY), INSIDE_POLL
                )
                passed += before
            else:
                result = run_check(container, checks[passed])
            check = checks[passed]
            if not check.matches(result.exit_code, result.output):
                pending = f"{check.name}: {telling_line(result.output, result.exit_code)}"
                break
            passed += 1
        else:
            elapsed = time.monotonic() - started
            log.info(f"{backend.name} is ready after {elapsed:.1f}s")
            return elapsed
        now = time.monotonic()
        if now > deadline:
            raise StepFailed(
                f"{backend.name} not ready after {timeout:.0f}s; last failing check: {pending}"
            )
        if now - last_report >= REPORT_EVERY:
            log.info(f"waiting for {backend.name} ({now - started:.0f}s): {pending}")
            last_report = now
        time.sleep(delay)
        if now - started > backend.ready_typical:
            delay = min(LAST_POLL, delay * BACKOFF)


def wait_ready_or_show_logs(container: Container, backend: Backend, timeout: float) -> None:
    """wait_ready; when it fails, the container's logs (print_logs) before the error."""
    try:
        wait_ready(container, backend, timeout)
    except StepFailed:
        print_logs(container, backend)
        raise


def run_smoke(container: Container, backend: Backend) -> None:
    for check in backend.smoke:
        result = run_check(container, check)
        if not check.matches(result.exit_code, result.output):
            log.write(result.output)
            raise StepFailed(
                f"smoke check '{check.name}' failed (exit {result.exit_code}"
                + (f", output did not match {check.expect!r}" if result.exit_code == 0 else "")
                + ")"
            )
        log.info(f"ok: {check.name}")


def _log_paths(container: Container, pattern: str) -> list[str]:
    listing = execute(container, ["sh", "-c", f"ls -1d {pattern} 2>/dev/null || true"])
    return [line for line in listing.output.splitlines() if line.strip()]


def print_logs(container: Container, backend: Backend, job_logs: Sequence[str] = ()) -> None:
    """The container's state and output, the services' status, the scheduler's
    record of its jobs, each declared log file, then the jobs' own output
    (`job_logs`), each under its own heading."""
    container.reload()
    with log.group(f"{backend.name}: container state"):
        log.write(f"status={container.status} exit_code={container.exit_code}\n")
        log.write(container.logs(tail=200))
    if container.status != "running":
        log.info(f"{backend.name} is not running: only the container output is available")
        return
    for command in (backend.log_status, *backend.log_jobs):
        if command:
            with log.group(f"{backend.name}: {shlex.join(command)}"):
                log.write(execute(container, command).output)
    _print_files(container, backend.name, backend.log_files)
    _print_files(container, f"{backend.name} job", job_logs)


def _print_files(container: Container, label: str, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        paths = _log_paths(container, pattern)
        if not paths:
            log.info(f"{label}: no log at {pattern}")
        for path in paths:
            with log.group(f"{label}: {path}"):
                execute(container, ["tail", "-n", "500", path], stream=True)


def remove(container: Container) -> None:
    """Remove it, running or not; gone already is fine."""
    with contextlib.suppress(NotFound):
        container.remove()


def stop(container: Container, timeout: float) -> None:
    """SIGTERM (services shut down cleanly), at most `timeout` seconds, then remove."""
    with contextlib.suppress(APIError):  # NotFound included
        if is_running(container):
            container.stop(timeout=int(timeout))
    remove(container)


def throwaway_name(backend: Backend) -> str:
    return f"{backend.container_name}-verify-{uuid.uuid4().hex[:8]}"


def copy_tree(container: Container, source: Path, destination: str) -> None:
    """Copy a folder from the repository into the container, readable by all."""
    archive = folder_archive(
        source, keep_executable=False, skip=lambda path: "__pycache__" in path.parts
    )
    execute(container, ["mkdir", "-p", destination])
    if not container.put_archive(destination, archive.getvalue()):
        raise StepFailed(f"cannot copy {source} into the container")


def read_file(container: Container, path: str) -> bytes | None:
    """A file's content from the container, or None when it is not there."""
    try:
        data = container.get_archive(path)
    except NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.next()
        handle = archive.extractfile(member) if member is not None else None
        return handle.read() if handle is not None else None


def mounted_source(container: Container) -> str | None:
    """The host folder mounted at /working, if any."""
    return container.mounts.get(SOURCE_MOUNT)


def consumer_of(container: Container) -> str | None:
    """The consumer recorded at start, if any (containers of older starts have none)."""
    return container.labels.get(CONSUMER_LABEL)


def granted(container: Container, asked: tuple[str, ...]) -> set[str]:
    """Which of `asked` the container's PID 1 has."""
    return set(asked) - set(_not_granted(container, list(asked)))


def require_running(client: Client, backend: Backend) -> Container:
    """The backend's running container. Raises UserError naming `start` when there is none."""
    container = find(client, backend.container_name)
    if container is None or container.status != "running":
        raise UserError(
            f"no running {backend.name} container ({backend.container_name}); "
            f"run `nox -s start -- {backend.name}` first"
        )
    return container
