"""Run backend containers: start, wait until ready, exec, logs, stop."""

from __future__ import annotations

import contextlib
import io
import shlex
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import log, trust
from .backends import Backend, Check
from .config import BACKEND_LABEL
from .errors import StepFailed, UserError

SOURCE_MOUNT = "/working"
CONFORMANCE_DIR = "/opt/dask-gateway-ci/conformance"
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Result:
    exit_code: int
    output: str


def find(client, name: str):
    """The container called `name`, running or not, or None."""
    from docker.errors import NotFound

    try:
        return client.containers.get(name)
    except NotFound:
        return None


def run_detached(client, backend: Backend, image: str, *, name: str, source: Path | None = None):
    volumes, environment = trust.forwarded()
    if source is not None:
        volumes[str(source)] = {"bind": SOURCE_MOUNT, "mode": "rw"}
    environment.update(backend.environment)
    return client.containers.run(
        image,
        command=list(backend.command) if backend.command else None,
        name=name,
        hostname=backend.hostname,
        detach=True,
        # Only this machine may reach the test services.
        ports={f"{port}/tcp": ("127.0.0.1", port) for port in backend.ports},
        cap_add=list(backend.cap_add) or None,
        environment=environment,
        volumes=volumes,
        labels={BACKEND_LABEL: backend.name},
    )


def is_running(container, *, settle: bool = False) -> bool:
    """Whether the container runs; `settle` gives a killed one a moment to show it."""
    for _ in range(10 if settle else 1):
        container.reload()
        if container.status != "running":
            return False
        if settle:
            time.sleep(0.5)
    return True


def ensure_running(container, what: str) -> None:
    if not is_running(container):
        code = container.attrs.get("State", {}).get("ExitCode")
        raise StepFailed(f"the {what} container is {container.status} (exit code {code})")


def execute(
    container,
    command: tuple[str, ...] | list[str],
    *,
    user: str = "root",
    workdir: str | None = None,
    environment: dict[str, str] | None = None,
    stream: bool = False,
) -> Result:
    """Run a command in the container; stream its output or capture it."""
    from docker.errors import APIError

    api = container.client.api
    try:
        exec_id = api.exec_create(
            container.id, list(command), user=user, workdir=workdir, environment=environment
        )["Id"]
        chunks = api.exec_start(exec_id, stream=True)
        captured: list[str] = []
        for chunk in chunks:
            text = chunk.decode(errors="replace")
            if stream:
                log.write(text)
            else:
                captured.append(text)
        exit_code = api.exec_inspect(exec_id).get("ExitCode")
    except APIError as error:
        raise StepFailed(
            f"cannot run {shlex.join(command)}: {error.explanation or error}"
        ) from None
    if exit_code is None:  # the container went away under the command
        ensure_running(container, container.name)
        exit_code = -1
    return Result(exit_code, "".join(captured))


def run_check(container, check: Check) -> Result:
    # coreutils' timeout bounds every check, so a hung command cannot hang us.
    bounded = ("timeout", "-k", "5", f"{check.timeout:.0f}", *check.command)
    return execute(container, bounded, user=check.user)


def wait_ready(container, backend: Backend, *, timeout: float | None = None) -> float:
    """Poll the declared checks until all pass; fail fast if the container dies."""
    deadline = time.monotonic() + (timeout or backend.ready_timeout)
    started = time.monotonic()
    pending = "(no check run yet)"
    last_report = 0.0
    while True:
        ensure_running(container, backend.name)
        for check in backend.ready_checks:
            result = run_check(container, check)
            if not check.matches(result.exit_code, result.output):
                lines = result.output.strip().splitlines()
                pending = (
                    f"{check.name}: {lines[-1][:200] if lines else f'exit {result.exit_code}'}"
                )
                break
        else:
            elapsed = time.monotonic() - started
            log.info(f"{backend.name} is ready after {elapsed:.0f}s")
            return elapsed
        now = time.monotonic()
        if now > deadline:
            raise StepFailed(
                f"{backend.name} not ready after {timeout or backend.ready_timeout:.0f}s; "
                f"last failing check: {pending}"
            )
        if now - last_report >= 10:
            log.info(f"waiting for {backend.name} ({now - started:.0f}s): {pending}")
            last_report = now
        time.sleep(POLL_SECONDS)


def run_smoke(container, backend: Backend) -> None:
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


def _log_paths(container, pattern: str) -> list[str]:
    listing = execute(container, ["sh", "-c", f"ls -1d {pattern} 2>/dev/null || true"])
    return [line for line in listing.output.splitlines() if line.strip()]


def print_logs(container, backend: Backend) -> None:
    """Status, then each declared log file, each under its own heading."""
    container.reload()
    running = container.status == "running"
    with log.group(f"{backend.name}: container state"):
        state = container.attrs.get("State", {})
        log.write(f"status={state.get('Status')} exit_code={state.get('ExitCode')}\n")
        log.write(container.logs(tail=200).decode(errors="replace"))
    if not running:
        log.info(f"{backend.name} is not running: only the container output is available")
        return
    if backend.log_status:
        with log.group(f"{backend.name}: {shlex.join(backend.log_status)}"):
            log.write(execute(container, backend.log_status).output)
    for pattern in backend.log_files:
        paths = _log_paths(container, pattern)
        if not paths:
            log.info(f"{backend.name}: no log at {pattern}")
        for path in paths:
            with log.group(f"{backend.name}: {path}"):
                execute(container, ["tail", "-n", "500", path], stream=True)


def remove(container) -> None:
    from docker.errors import NotFound

    with contextlib.suppress(NotFound):
        container.remove(force=True, v=True)


def throwaway_name(backend: Backend) -> str:
    return f"{backend.container_name}-verify-{uuid.uuid4().hex[:8]}"


def copy_tree(container, source: Path, destination: str) -> None:
    """Copy a folder from the repository into the container, readable by all."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(source)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                archive.addfile(info)
            else:
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
    execute(container, ["mkdir", "-p", destination])
    if not container.put_archive(destination, buffer.getvalue()):
        raise StepFailed(f"cannot copy {source} into the container")


def has_source(container) -> bool:
    return any(m.get("Destination") == SOURCE_MOUNT for m in container.attrs.get("Mounts", []))


def require_running(client, backend: Backend):
    container = find(client, backend.container_name)
    if container is None or container.status != "running":
        raise UserError(
            f"no running {backend.name} container ({backend.container_name}); "
            f"run `nox -s start -- {backend.name}` first"
        )
    return container
