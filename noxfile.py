# /// script
# dependencies = ["nox>=2025.2.9", "docker>=7.1", "packaging>=24"]
# ///
"""dask-gateway-ci: build, check and run the backend test images.

One session per step and backend (`nox -s build-slurm`), and one per step
that takes backends after `--` (`nox -s build -- slurm pbs`). `nox -l`
lists them. Running `nox` with only nox installed works: the script block
above makes nox create an environment with docker and packaging first.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripts.backends import IMAGE, load_all
from scripts.cli import PROJECT, run
from scripts.errors import UserError
from scripts.steps import STEPS

nox.needs_version = ">=2025.2.9"


class _NoUvNotice(logging.Filter):
    """nox looks for uv before every session and says "uv binary not found."
    when it is not installed (nox/virtualenv.py, uv_version). No session here
    uses uv: on a machine without it, that line only suggests something is
    missing, so it is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "uv binary not found."


logging.getLogger("nox").addFilter(_NoUvNotice())
# Sessions that only drive Docker need no virtualenv of their own.
nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

try:
    BACKENDS = load_all()
except UserError as error:  # a malformed ci/*/backend.toml: one line, no traceback
    sys.exit(f"noxfile: {error}")


def _step_session(step, backend: str | None):
    def session(session: nox.Session) -> None:
        try:
            run(
                step.name,
                list(session.posargs),
                fixed=backend,
                invoked_from=Path(session.invoked_from),
            )
        except UserError as error:
            session.error(str(error))

    session.__doc__ = step.describe(backend)
    return session


# One session per step and backend (build-slurm), and one per step that takes
# backends after -- (build -- slurm pbs) or none (bootstrap-debian, plan); the
# step registry is the table.
for _step in STEPS.values():
    for _backend in BACKENDS.values() if _step.scope != PROJECT else ():
        if _step.scope == IMAGE or _backend.runs_services:
            nox.session(
                _step_session(_step, _backend.name),
                name=f"{_step.name}-{_backend.name}",
                python=False,
                tags=[_step.name, _backend.name],
                default=False,
            )
    nox.session(_step_session(_step, None), name=_step.name, python=False, default=False)

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install_group(session: nox.Session, group: str) -> None:
    """The project's dependencies and one group, at the versions CI uses."""
    session.install(
        "-c",
        "constraints.txt",
        *PYPROJECT["project"]["dependencies"],
        *nox.project.dependency_groups(PYPROJECT, group),
    )


@nox.session(venv_backend="venv")
def lint(session: nox.Session) -> None:
    """Lint Python (ruff), Dockerfiles (hadolint), shell (shellcheck), workflows."""
    _install_group(session, "lint")
    from scripts.lint import run_linters

    run_linters(session)


@nox.session(venv_backend="venv", default=False)
def workflows(session: nox.Session) -> None:
    """Run a GitHub workflow here with act: jobs on this host, a local registry for ghcr.io.

    nox -s workflows -- images|test [--event push|pull_request|schedule|workflow_dispatch]
    [--before REV] [--base REV] [--backends NAMES] [--dask-gateway DIR] [--dask-jobqueue DIR]
    [--registry HOST:PORT] [--registry-dir DIR] [--job ID] [--run-id N] [--log FILE]
    [--repository DIR] [--offline]
    """
    from scripts.workflows import parse_options, run

    try:
        options = parse_options(session.posargs, Path(session.invoked_from))
        _install_group(session, "workflows")
        options.act = str(Path(session.bin) / "act")
        run(options)
    except UserError as error:
        session.error(str(error))


@nox.session(venv_backend="venv")
def tests(session: nox.Session) -> None:
    """Run this project's test suite (unit + integration on the Docker engine)."""
    _install_group(session, "test")
    session.run("pytest", *session.posargs)
