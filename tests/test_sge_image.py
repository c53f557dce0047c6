"""The sge image when something is wrong (IMAGE-CONTRACT.md, "sge"): another host
name, a stopped qmaster, a queue with no free slot. Each ends in one line that
says what to do, and leaves nothing behind.

The image is built by nox (mostly from cache) and verified; dask-jobqueue's
suite runs in it in tests/test_jobqueue_consumer.py.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from scripts import containers
from scripts.backends import load_all
from scripts.errors import StepFailed
from scripts.settings import READY_TIMEOUT_VARIABLE
from tests.nox_runner import aborted_line, nox
from tests.registry import exec_ok

pytestmark = pytest.mark.docker
SGE = load_all()["sge"]
SLOTS = 8  # all.q's (ci/sge/files/usr/local/sbin/sge-configure)


@pytest.fixture(scope="module")
def image(backend_image) -> str:
    return backend_image("sge")


@pytest.fixture
def started(started_backend):
    return started_backend("sge")


def test_verify_passes(env, image):
    run = nox("-s", "verify-sge", env=env)
    assert run.returncode == 0, run.output[-3000:]
    assert re.search(r"^sge is ready after \d+\.\ds$", run.output, re.M)
    for check in SGE.smoke:
        assert f"ok: {check.name}" in run.output


def test_another_hostname_is_one_line_naming_the_fix(engine, image):
    """A declaration whose [run] hostname is not the image's: the container says so and stops."""
    elsewhere = replace(SGE, hostname="grid")
    container = containers.start(
        engine, elsewhere, image, name=containers.throwaway_name(elsewhere), forwarded={}, ports={}
    )
    try:
        with pytest.raises(StepFailed) as raised:
            containers.wait_ready(container, elsewhere, 30)
    finally:
        containers.remove(container)
    message = str(raised.value)
    assert "\n" not in message
    # the engine's word for it: "exited" (Docker), "stopped" (Podman)
    assert re.search(r"container is (exited|stopped) \(exit code 1\)", message), message
    assert "host name is 'grid'" in message
    assert "run it with hostname sge ([run] hostname in ci/sge/backend.toml" in message


def test_a_stopped_qmaster_is_one_line_naming_the_fix(engine, env, started):
    exec_ok(started, "supervisorctl stop sge_qmaster")
    run = nox("-s", "start-sge", env={**env, READY_TIMEOUT_VARIABLE: "10"})
    assert run.returncode != 0
    line = aborted_line(run)
    assert "sge not ready after 10s; last failing check: a job runs: sge_qmaster is not" in line
    assert (
        "start it with supervisorctl start sge_qmaster; why it stopped: nox -s print-logs -- sge"
        in line
    )


def test_a_full_queue_is_one_line_naming_the_fix(engine, env, started):
    submit = f"cd && for _ in $(seq {SLOTS}); do qsub -b y -o /dev/null -j y sleep 600; done"
    exec_ok(started, submit, "alice")
    holding = f"for _ in $(seq 300); do [ $(qstat -u alice -s r | tail -n +3 | wc -l) -eq {SLOTS} ] && exit 0; sleep 0.1; done; exit 1"  # noqa: E501
    exec_ok(started, holding)
    run = nox("-s", "start-sge", env={**env, READY_TIMEOUT_VARIABLE: "25"})
    assert run.returncode != 0
    line = aborted_line(run)
    assert f"no free slot: all {SLOTS} slots of all.q are taken (jobs: {SLOTS} of alice)" in line
    assert "delete them with qdel, or wait for them to end" in line
    # The readiness job that found no slot was deleted again: only alice's remain.
    owners = exec_ok(
        started, "qstat -u '*' | tail -n +3 | awk '{ print $4 }' | sort | uniq -c"
    ).split()
    assert owners == [str(SLOTS), "alice"], owners
