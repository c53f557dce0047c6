"""Commands in a running container, as the steps run them: install and test commands
streamed, their failures as one line, a test module that ran nothing found in
pytest's JUnit report.
"""

from __future__ import annotations

import shlex
import uuid

from . import containers, log, signals
from .backends import Backend
from .consumers import Use
from .errors import StepFailed, UserError
from .pytest_report import idle_modules


def run_in(container, backend, command, *, user, workdir, step, environment=None) -> int:
    log.info(f"[{backend.name}] {user}@{workdir}$ {shlex.join(command)}")
    try:
        result = containers.execute(
            container, command, user=user, workdir=workdir, environment=environment, stream=True
        )
    except KeyboardInterrupt as interrupt:
        raise UserError(
            f"{signals.describe(interrupt)}: stopped `{shlex.join(command)}` in the "
            f"{backend.name} container"
        ) from None
    if result.exit_code == 0:
        return 0
    # Killed by a signal? The engine may need a moment to report the container gone.
    if not containers.is_running(container, settle=result.exit_code < 0 or result.exit_code > 128):
        raise StepFailed(
            f"the {backend.name} container stopped during {step} (exit code "
            f"{container.exit_code}); see `nox -s print-logs -- {backend.name}`, "
            f"clean up with `nox -s stop -- {backend.name}`"
        )
    raise StepFailed(f"{step} failed: `{shlex.join(command)}` exited with code {result.exit_code}")


def run_tests(container, backend: Backend, use: Use, command: tuple[str, ...]) -> None:
    """A consumer's tests; with `must_run`, a module that executed no test is a failure."""
    environment = use.environment or None
    if not use.must_run:
        run_in(
            container,
            backend,
            command,
            user=use.user,
            workdir=use.workdir,
            step="test",
            environment=environment,
        )
        return
    report = f"/tmp/dask-gateway-ci-junit-{uuid.uuid4().hex[:12]}.xml"
    try:
        run_in(
            container,
            backend,
            (*command, f"--junitxml={report}"),
            user=use.user,
            workdir=use.workdir,
            step="test",
            environment=environment,
        )
        failure = None
    except StepFailed as error:
        failure = error
    text = containers.read_file(container, report)
    containers.execute(container, ["rm", "-f", report])
    idle = idle_modules(text.decode(errors="replace"), use.must_run) if text else []
    if idle:
        raise StepFailed(
            f"test tested nothing of {backend.name}: {'; '.join(idle)}"
            + (f" ({failure})" if failure else "")
        )
    if failure is not None:
        raise failure
