"""Faults, round two (docs/failures.md): signals, races, secrets in every session.

Each as a user or a CI system meets it: the real sessions on the real
engine, stopped with real signals, raced by a second process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import containers
from scripts.backends import load_all
from scripts.engine import Container
from scripts.labels import STARTED_LABEL
from tests.conftest import TEST_LABEL, _ours, wait_for
from tests.nox_runner import (
    ROOT,
    STOP_SIGNALS,
    Run,
    aborted_line,
    fake_checkout,
    nox,
    start_nox,
)

SLURM = load_all()["slurm"]
SECRET = "pw-0f1e2d3c4b5a"

pytestmark = pytest.mark.docker


def one_line_failure(run: Run) -> str:
    assert run.returncode != 0, run.output
    assert "Traceback" not in run.output, run.output
    return aborted_line(run)


def running_named(engine, prefix: str):
    """A running container named PREFIX..., made after this call (not one still going away)."""
    before = {c.id for c in engine.containers.list(all=True, filters={"name": prefix})}

    def look():
        for container in engine.containers.list(filters={"name": prefix}):
            if (
                container.name.startswith(prefix)
                and container.status == "running"
                and container.id not in before
            ):
                return container
        return None

    return look


def stopped_by(process: subprocess.Popen, number: int) -> Run:
    process.send_signal(number)
    output, _ = process.communicate(timeout=120)
    print(output[-4000:])
    return Run(process.returncode, output)


@pytest.mark.parametrize(
    ("number", "said"),
    list(STOP_SIGNALS.values()),
    ids=list(STOP_SIGNALS),
)
def test_a_signal_during_start_removes_the_half_started_container(engine, env, clean, number, said):
    new_container = running_named(engine, SLURM.container_name)
    process = start_nox("-s", "start-slurm", env=env)
    # Its container runs (slurm takes about a second more to be ready): stop nox now.
    wait_for(new_container, "the container to run")
    run = stopped_by(process, number)
    line = one_line_failure(run)
    # While it waits for ready, or (when the signal beats the engine's answer
    # to "start") still inside the create-and-start call: removed either way.
    assert (
        f"{said}: removed the half-started {SLURM.container_name}" in line
        or f"{said}: {SLURM.container_name} was not started; nothing of it is left" in line
    ), line
    assert SLURM.container_name not in {c.name for c in engine.containers.list(all=True)}


def test_sigterm_during_verify_removes_its_throwaway_container(engine, env, built):
    prefix = f"{SLURM.container_name}-verify-"
    new_container = running_named(engine, prefix)
    process = start_nox("-s", "verify-slurm", env=env)
    wait_for(new_container, "verify's container to run")
    run = stopped_by(process, signal.SIGTERM)
    line = one_line_failure(run)
    assert "verify slurm: terminated (SIGTERM)" in line
    left = [c.name for c in engine.containers.list(all=True) if c.name.startswith(prefix)]
    assert not left


def test_a_failed_start_removes_its_container_unless_kept(engine, env, clean):
    slow = {**env, "DASK_GATEWAY_CI_READY_TIMEOUT": "0.001"}
    run = nox("-s", "start-slurm", env=slow)
    line = one_line_failure(run)
    assert "slurm not ready after 0s" in line
    assert f"{SLURM.container_name} was removed (--keep keeps it)" in line
    assert SLURM.container_name not in {c.name for c in engine.containers.list(all=True)}

    kept = nox("-s", "start-slurm", "--", "--keep", env=slow)
    line = one_line_failure(kept)
    assert f"kept {SLURM.container_name} for inspection (--keep)" in line
    assert "nox -s print-logs -- slurm`, then `nox -s stop -- slurm`" in line
    assert engine.containers.get(SLURM.container_name)  # there, as said


def test_two_starts_at_once_both_end_with_the_one_container(engine, env, clean):
    first = start_nox("-s", "start-slurm", env=env)
    second = start_nox("-s", "start-slurm", env=env)
    runs = [Run(p.wait(timeout=300), p.stdout.read()) for p in (first, second)]
    for run in runs:
        print(run.output[-2000:])
        assert run.returncode == 0, run.output
        assert "BACKEND" not in run.output
    said = "\n".join(run.output for run in runs)
    assert "already running" in said or "another start of slurm created" in said
    assert [c.name for c in engine.containers.list(all=True)].count(SLURM.container_name) == 1


def test_start_names_and_replaces_what_an_interrupted_start_left(engine, env, clean):
    """As after an engine restart: a container of ours with the name, exited."""
    image = engine.images.get(f"ghcr.io/dask-gateway-ci-itest/{SLURM.image}:latest").id
    left = engine.containers.run(
        image,
        ["sh", "-c", "echo the last words of the old one; exit 3"],
        name=SLURM.container_name,
        entrypoint=[],
        detach=True,
        labels={STARTED_LABEL: "slurm"},
    )
    assert left.wait(timeout=60)["StatusCode"] == 3
    run = nox("-s", "start-slurm", env=env)
    assert run.returncode == 0, run.output
    assert f"{SLURM.container_name} is there but exited (exit code 3)" in run.output
    assert "the last words of the old one" in run.output
    assert engine.containers.get(SLURM.container_name).id != left.id


def test_forwarded_secrets_are_masked_in_every_later_session(engine, env, clean, tmp_path):
    # GOPROXY is forwarded like PIP_INDEX_URL, and pip does not read it.
    proxy = f"https://ci-user:{SECRET}@goproxy.invalid/"
    checkout = fake_checkout(
        tmp_path / "dask-gateway",
        "test_slurm_backend.py",
        "import os\n\ndef test_prints_the_proxy():\n    print('proxy is', os.environ['GOPROXY'])\n",
    )
    started = nox(
        "-s", "start-slurm", "--", "--source", str(checkout), env={**env, "GOPROXY": proxy}
    )
    assert started.returncode == 0, started.output
    # Later sessions run without the variable: they read it from the container.
    installed = nox("-s", "install-slurm", env=env)
    tested = nox("-s", "test-slurm", "--", "-s", env=env)
    logs = nox("-s", "print-logs-slurm", env=env)
    assert installed.returncode == 0 and tested.returncode == 0, tested.output
    for run in (started, installed, tested, logs):
        assert SECRET not in run.output
    assert "proxy is https://********@goproxy.invalid/" in tested.output


def test_a_relative_source_is_taken_from_where_nox_was_run(engine, env, clean, tmp_path):
    fake_checkout(tmp_path / "checkout", "test_slurm_backend.py", "def test_x():\n    pass\n")
    noxfile = str(ROOT / "noxfile.py")
    missing = subprocess.run(
        [sys.executable, "-m", "nox", "-f", noxfile, "-s", "start-slurm", "--", "--source", "nope"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0
    assert f"--source nope: not a directory (looked at {tmp_path / 'nope'})" in missing.stderr
    found = subprocess.run(
        [
            sys.executable,
            "-m",
            "nox",
            "-f",
            noxfile,
            "-s",
            "start-slurm",
            "--",
            "--source",
            "checkout",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    mounted = containers.mounted_source(Container(engine.containers.get(SLURM.container_name)))
    assert mounted == str(tmp_path / "checkout")


def test_the_leftover_guard_counts_only_what_is_ours(engine, built):
    image = engine.images.get("debian:trixie-slim").id
    theirs = engine.containers.create(image, ["true"], entrypoint=[])
    mine = engine.containers.create(image, ["true"], entrypoint=[], labels={TEST_LABEL: "x"})
    try:
        theirs.reload()
        mine.reload()
        assert not _ours(theirs)
        assert _ours(mine)
    finally:
        theirs.remove(force=True)
        mine.remove(force=True)


def test_no_engine_fails_the_suite_unless_the_engine_free_part_is_asked_for(env):
    nowhere = {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    one = "tests/test_sessions.py::test_build_and_verify_base_from_a_clean_state_then_from_cache"
    failed = subprocess.run([*command, one], cwd=ROOT, env=nowhere, capture_output=True, text=True)
    assert failed.returncode != 0
    assert "nox -s tests -- -m 'not docker'" in failed.stdout
    free = subprocess.run(
        [*command, "-m", "not docker", "tests/test_sessions.py"],
        cwd=ROOT,
        env=nowhere,
        capture_output=True,
        text=True,
    )
    assert free.returncode == 0, free.stdout[-3000:]
    assert "passed" in free.stdout and "deselected" in free.stdout


def test_no_uv_line_on_a_machine_without_uv(env):
    run = nox("-s", "stop-slurm", env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert "uv binary not found" not in run.output


def test_every_row_here_is_in_the_failure_table():
    table = (Path(__file__).parents[1] / "docs" / "failures.md").read_text()
    for name in (
        "test_a_signal_during_start_removes_the_half_started_container",
        "test_sigterm_during_verify_removes_its_throwaway_container",
        "test_a_failed_start_removes_its_container_unless_kept",
        "test_two_starts_at_once_both_end_with_the_one_container",
        "test_start_names_and_replaces_what_an_interrupted_start_left",
        "test_forwarded_secrets_are_masked_in_every_later_session",
        "test_a_relative_source_is_taken_from_where_nox_was_run",
        "test_no_engine_fails_the_suite_unless_the_engine_free_part_is_asked_for",
    ):
        assert f"`{name}`" in table, name
