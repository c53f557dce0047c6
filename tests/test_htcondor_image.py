"""The htcondor image, verified, and when something is wrong (IMAGE-CONTRACT.md,
"htcondor"): a stopped schedd, a pool with no free slot. Each ends in one line
that says what to do, and leaves nothing behind.

dask-jobqueue's suite runs in it in tests/test_jobqueue_consumer.py.
"""

from __future__ import annotations

import re

import pytest

from scripts.backends import load_all
from scripts.settings import READY_TIMEOUT_VARIABLE
from tests.nox_runner import aborted_line, nox
from tests.registry import exec_ok

pytestmark = pytest.mark.docker
HTCONDOR = load_all()["htcondor"]
CPUS = 4  # the partitionable slot's (ci/htcondor/files/etc/condor/config.d/)


@pytest.fixture(scope="module")
def image(backend_image) -> str:
    return backend_image("htcondor")


@pytest.fixture
def started(image, started_backend):
    return started_backend("htcondor")


def test_verify_passes(env, image):
    run = nox("-s", "verify-htcondor", env=env)
    assert run.returncode == 0, run.output[-3000:]
    assert re.search(r"^htcondor is ready after \d+\.\ds$", run.output, re.M)
    for check in HTCONDOR.smoke:
        assert f"ok: {check.name}" in run.output


def test_a_stopped_schedd_is_one_line_naming_the_fix(env, started):
    exec_ok(started, "condor_off -daemon schedd")
    gone = "for _ in $(seq 100); do pgrep -x condor_schedd || exit 0; sleep 0.1; done; exit 1"
    exec_ok(started, gone)
    run = nox("-s", "start-htcondor", env={**env, READY_TIMEOUT_VARIABLE: "10"})
    assert run.returncode != 0
    line = aborted_line(run)
    assert "htcondor not ready after 10s; last failing check: a job runs: condor_schedd is" in line
    assert "start it with condor_on -daemon schedd (as root)" in line


def test_a_full_pool_is_one_line_naming_the_fix(env, started):
    submit = (
        "cd && printf '%s\\n' 'executable = /bin/sleep' 'arguments = 600' 'request_cpus = 1' "
        f"'request_memory = 64' 'queue {CPUS}' > fill.sub && condor_submit fill.sub"
    )
    exec_ok(started, submit, "alice")
    running = (
        "for _ in $(seq 300); do "
        f'[ "$(condor_q -allusers -run -af Owner | wc -l)" -eq {CPUS} ] && exit 0; sleep 0.1; '
        "done; exit 1"
    )
    exec_ok(started, running)
    run = nox("-s", "start-htcondor", env={**env, READY_TIMEOUT_VARIABLE: "25"})
    assert run.returncode != 0
    line = aborted_line(run)
    assert f"no free slot: the pool's CPUs and memory are taken (jobs: {CPUS} of alice)" in line
    assert "remove them with condor_rm, or wait for them to end" in line
    # The readiness job that found no slot was removed again: only alice's remain.
    owners = exec_ok(started, "condor_q -allusers -af Owner | sort | uniq -c").split()
    assert owners == [str(CPUS), "alice"], owners
