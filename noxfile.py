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

import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripts.backends import STEPS, load_all
from scripts.errors import UserError

nox.needs_version = ">=2025.2.9"
# Sessions that only drive Docker need no virtualenv of their own.
nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

STEP_HELP = {
    "build": "Build the {b} image, parents first",
    "verify": "Check the {b} image against the contract in a throwaway container",
    "push": "Push the {b} image (verified images only; --dry-run)",
    "tag-dated": "Tag the {b} image with today's UTC date and push it (--dry-run)",
    "start": "Start the {b} container, wait until ready (--source DIR)",
    "install": "Install test requirements in the running {b} container, as root",
    "test": "Run tests in the running {b} container as dask (extra args to pytest)",
    "print-logs": "Print service status and logs of the {b} container",
    "stop": "Stop and remove the {b} container",
}

try:
    BACKENDS = load_all()
except UserError as error:  # a malformed ci/*/backend.toml: one line, no traceback
    sys.exit(f"noxfile: {error}")


def _step_session(step: str, backend: str | None):
    def session(session: nox.Session) -> None:
        from scripts.steps import run

        try:
            run(step, list(session.posargs), fixed=backend)
        except UserError as error:
            session.error(str(error))

    if backend:
        session.__doc__ = STEP_HELP[step].format(b=backend) + "."
    else:
        session.__doc__ = STEP_HELP[step].format(b="BACKEND") + f"; nox -s {step} -- BACKEND..."
    return session


for _step in STEPS:
    for _backend in BACKENDS.values():
        if _step in _backend.steps():
            nox.session(
                _step_session(_step, _backend.name),
                name=f"{_step}-{_backend.name}",
                python=False,
                tags=[_step, _backend.name],
                default=False,
            )
    nox.session(_step_session(_step, None), name=_step, python=False, default=False)


@nox.session(name="bootstrap-debian", python=False, default=False)
def bootstrap_debian(session: nox.Session) -> None:
    """Create debian:trixie-slim locally with debootstrap (no registry needed).

    Options after --: --suite SUITE, --image REF, --mirror URL, --force.
    """
    from scripts.debian import bootstrap
    from scripts.engine import connect
    from scripts.steps import OneLineParser

    parser = OneLineParser(prog="nox -s bootstrap-debian --")
    parser.add_argument("--suite", default="trixie")
    parser.add_argument("--image", default="debian:trixie-slim")
    parser.add_argument("--mirror", help="Debian archive URL (default: the host's apt source)")
    parser.add_argument("--force", action="store_true")
    try:
        args = parser.parse_args(session.posargs)
        bootstrap(
            connect(), suite=args.suite, reference=args.image, mirror=args.mirror, force=args.force
        )
    except UserError as error:
        session.error(str(error))


PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install_group(session: nox.Session, group: str) -> None:
    session.install(
        *PYPROJECT["project"]["dependencies"],
        *nox.project.dependency_groups(PYPROJECT, group),
    )


@nox.session(venv_backend="venv")
def lint(session: nox.Session) -> None:
    """Lint Python (ruff), Dockerfiles (hadolint), shell (shellcheck), workflows."""
    _install_group(session, "lint")
    from scripts.lint import run_linters

    run_linters(session)


@nox.session(venv_backend="venv")
def tests(session: nox.Session) -> None:
    """Run this project's test suite (unit + integration on the Docker engine)."""
    _install_group(session, "test")
    session.run("pytest", *session.posargs)
