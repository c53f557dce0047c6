"""Run the project's own nox sessions the way a maintainer does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Integration tests publish under their own owner, so they never retag a
# maintainer's images; the layers are shared, so the builds hit the cache.
TEST_OWNER = "dask-gateway-ci-itest"


# The signals a user or a CI system stops a run with, and the words its
# closing line uses for each (scripts/signals.describe).
STOP_SIGNALS = {
    "SIGINT": (signal.SIGINT, "interrupted"),
    "SIGTERM": (signal.SIGTERM, "terminated (SIGTERM)"),
    "SIGHUP": (signal.SIGHUP, "terminated (SIGHUP)"),
}


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()


def nox_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GITHUB_ACTIONS", None)
    # A build takes from a sources folder only where its test asks (test_sources,
    # test_upstream_dropin): elsewhere the declared URLs are what is tested.
    env.pop("DASK_GATEWAY_CI_SOURCES", None)
    env.update(
        DASK_GATEWAY_CI_OWNER=TEST_OWNER,
        DASK_GATEWAY_CI_STATE_DIR=str(state_dir),
        NOX_SCRIPT_MODE="none",
        **extra,
    )
    return env


def start_nox(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """`nox ARGS...` in the background, stdout and stderr together, read as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "nox", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def fake_checkout(folder: Path, test_module: str, body: str) -> Path:
    """A stand-in dask-gateway checkout: tests/requirements.txt and one test module."""
    (folder / "tests").mkdir(parents=True)
    (folder / "tests" / "requirements.txt").write_text("pytest\n")
    (folder / "tests" / test_module).write_text(body)
    folder.chmod(0o777)
    return folder


def nox(*args: str, env: dict[str, str], timeout: float = 1800) -> Run:
    """`nox ARGS...`, stdout and stderr together, echoed for the test log."""
    process = start_nox(*args, env=env)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    print(f"$ nox {' '.join(args)}  -> {process.returncode}\n{output[-6000:]}")
    return Run(process.returncode, output)


def aborted_line(run: Run) -> str:
    """nox's one line for a session that stopped with a user-facing error."""
    hits = [line for line in run.lines if " aborted: " in line or " failed: " in line]
    assert hits, run.output
    return hits[-1]


def our_containers(engine) -> set[str]:
    """Names of every container this project's sessions started, in any state."""
    from scripts.labels import STARTED_LABEL

    return {c.name for c in engine.containers.list(all=True, filters={"label": STARTED_LABEL})}
