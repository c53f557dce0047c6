"""IMAGE-CONTRACT.md, section "pbs (OpenPBS)": one test per line.

Run inside the container as user ``dask`` with the standard library and
pytest only. Every command has a deadline, and every job these tests submit
is deleted at the end, finished or not.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

PBS_BIN = Path("/opt/pbs/bin")
LAUNCHER = Path("/opt/python/bin/dask-gateway-jobqueue-launcher")
HOSTNAME = "pbs"
DAEMONS = ("pbs_server.bin", "pbs_sched", "pbs_comm", "pbs_mom")
CAP_SYS_RESOURCE = 24  # bit number, from linux/capability.h
COMMAND_TIMEOUT = 30  # seconds for any one command
JOB_TIMEOUT = 120  # seconds for a job to reach state F
# Small jobs, so that several fit on the one node at the same time.
RESOURCES = "select=1:ncpus=1:mem=64mb"

T = TypeVar("T")
SUBMITTED: list[str] = []


def run(
    *argv: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT}s")
    except OSError as error:
        pytest.fail(f"cannot run {argv[0]}: {error}")
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def pbs(command: str, *args: str, check: bool = True) -> str:
    return run(str(PBS_BIN / command), *args, check=check).stdout


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Call probe every second until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def processes() -> dict[str, Path]:
    """Running processes by name (comm), each with its /proc directory."""
    found = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):  # the process may have exited
            found[comm.read_text().strip()] = comm.parent
    return found


def qsub_argv(name: str, script: str) -> list[str]:
    """qsub as dask-gateway's PBS backend calls it: output joined, then removed."""
    return [
        str(PBS_BIN / "qsub"),
        *("-N", name, "-j", "oe", "-R", "oe", "-l", RESOURCES),
        *("--", "/bin/sh", "-c", script),
    ]


def submit(name: str, script: str) -> str:
    job_id = run(*qsub_argv(name, script)).stdout.strip()
    assert job_id, "qsub printed no job id"
    SUBMITTED.append(job_id)
    return job_id


def job_attributes(job_id: str) -> dict[str, str]:
    """`qstat -x -f JOBID` as a dict; values wrapped onto tab lines are joined."""
    attributes: dict[str, str] = {}
    key = None
    for line in pbs("qstat", "-x", "-f", job_id).splitlines():
        if line.startswith("\t") and key is not None:
            attributes[key] += line.strip()
        elif line.startswith("    ") and " = " in line:
            key, _, value = line.strip().partition(" = ")
            attributes[key] = value
    return attributes


def job_state(job_id: str) -> str:
    """The state column of `qstat -x JOBID`, as dask-gateway's
    PBSBackend.parse_job_states reads it: two header lines, then one row per
    job with the state in column 5."""
    return pbs("qstat", "-x", job_id).splitlines()[2].split()[4]


def wait_finished(job_id: str) -> dict[str, str]:
    def finished() -> dict[str, str] | None:
        attributes = job_attributes(job_id)
        return attributes if attributes.get("job_state") == "F" else None

    return wait_for(f"job {job_id} to finish", finished, JOB_TIMEOUT)


@pytest.fixture(scope="module", autouse=True)
def delete_submitted_jobs():
    yield
    if SUBMITTED:
        # Finished jobs make qdel complain; that is fine here.
        run(str(PBS_BIN / "qdel"), *SUBMITTED, check=False)


def test_hostname_is_pbs():
    assert socket.gethostname() == HOSTNAME


def test_environment_enables_pbs_tests():
    assert os.environ.get("TEST_DASK_GATEWAY_PBS") == "true"


@pytest.mark.parametrize("name", ["qsub", "qstat", "qdel"])
def test_client_command_in_opt_pbs_bin_and_on_path(name):
    path = PBS_BIN / name
    assert path.is_file() and os.access(path, os.X_OK)
    assert shutil.which(name) == str(path)


def test_qstat_x_reports_a_finished_job():
    history = pbs("qmgr", "-c", "list server job_history_enable")
    assert re.search(r"job_history_enable = True", history)

    job_id = submit("conformance-history", "exit 0")
    assert wait_finished(job_id).get("Exit_status") == "0"

    # Parsed as dask-gateway's PBSBackend.parse_job_states does.
    assert job_state(job_id) == "F"


def test_dask_is_a_pbs_operator():
    operators = pbs("qmgr", "-c", "list server operators")
    assert re.search(r"operators = .*\bdask@\*", operators), operators


def test_server_scheduler_comm_and_mom_run_on_this_host():
    missing = set(DAEMONS) - set(processes())
    assert not missing, f"not running: {missing}"

    assert re.search(rf"server_host = {HOSTNAME}\b", pbs("qstat", "-B", "-f"))
    node = pbs("pbsnodes", HOSTNAME)
    assert re.search(rf"Mom = {HOSTNAME}\b", node), node
    assert re.search(r"state = (free|job-busy)", node), node


def test_sudoers_let_dask_launch_as_dask_users():
    # dask's own rule is what dask can list; that members of dask_users may
    # run sudo as dask is checked as root by backend.toml's smoke checks.
    rules = run("sudo", "-n", "-l").stdout
    launcher_rule = f"(%dask_users) NOPASSWD: {LAUNCHER}"
    assert launcher_rule in rules, rules
    assert {"alice", "bob"} <= set(grp.getgrnam("dask_users").gr_mem)


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_job_as_dask_user_through_sudo(user):
    if not LAUNCHER.exists():
        pytest.skip(f"{LAUNCHER} appears once dask-gateway-server is installed")
    # The launcher's protocol: a JSON request on stdin, a JSON reply on stdout.
    request = {
        "action": "start",
        "cmd": qsub_argv(f"conformance-{user}", 'test "$(id -un)" = ' + user),
        "env": {},
    }
    proc = run("sudo", "-nHu", user, str(LAUNCHER), input=json.dumps(request))
    reply = json.loads(proc.stdout)
    assert reply.get("ok") and reply.get("returncode") == 0, reply
    job_id = reply["stdout"].strip()
    SUBMITTED.append(job_id)

    # The job checks its own user: exit status 0 means it ran as `user`.
    # (qstat shows the execution user, euser, to managers only; dask is an
    # operator.)
    attributes = wait_finished(job_id)
    assert attributes["Job_Owner"].partition("@")[0] == user
    assert attributes.get("Exit_status") == "0", attributes


def test_several_jobs_run_at_once():
    jobs = [submit(f"conformance-many-{i}", "sleep 120") for i in range(3)]

    def all_running() -> bool:
        return all(job_attributes(job).get("job_state") == "R" for job in jobs)

    try:
        wait_for("three jobs to run at the same time", all_running, JOB_TIMEOUT)
    finally:
        run(str(PBS_BIN / "qdel"), *jobs, check=False)
    for job in jobs:
        wait_finished(job)


# dask-gateway's PBS test gives a stopped cluster 30 polls of `qstat -x`,
# 0.25 s apart, to leave R, Q and H (tests/test_pbs_backend.py).
DELETED_WITHIN = 7.5
# Seconds a job must have run before the mom may call a task whose
# processes are gone exited.
ORPHAN_GRACE = 10
# As a dask scheduler under qdel: the job's shell dies at SIGTERM, and its
# child, shutting down, outlives it by half a second.
SLOW_TO_STOP = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))
pathlib.Path(sys.argv[1]).touch()
time.sleep(600)
"""


def test_a_deleted_job_leaves_r_within_dask_gateways_wait(tmp_path):
    # The mom notices an orphan's end only when it next samples its jobs
    # (mom_priv/config: $min/max_check_poll; by default that took 5-6 s),
    # and only in a job at least 10 s old (src/resmom/linux/mom_mach.c:
    # 580-598; younger, it waits for the SIGKILL after kill_delay, 10 s).
    # dask-gateway deletes its scheduler's job after about 20 s.
    ready = tmp_path / "handler-installed"
    script = f"true\n/opt/python/bin/python -c {shlex.quote(SLOW_TO_STOP)} {ready}"
    job_id = submit("conformance-slow-stop", script)
    wait_for("the job's process to start", ready.exists, JOB_TIMEOUT)
    started = time.mktime(time.strptime(job_attributes(job_id)["stime"], "%a %b %d %H:%M:%S %Y"))
    wait_for("the job to be 11 s old", lambda: time.time() - started >= ORPHAN_GRACE + 1, 30)

    pbs("qdel", job_id)
    deleted = time.monotonic()
    while (state := job_state(job_id)) in ("R", "Q", "H"):
        waited = time.monotonic() - deleted
        assert waited < DELETED_WITHIN, f"{job_id} still {state} {waited:.1f}s after qdel"
        time.sleep(0.25)


def test_sys_resource_raises_the_mom_limits_where_granted():
    # The capability is optional: where the engine grants it, pbs_init.d's
    # limits.pbs_mom lifts the mom's locked-memory limit, which the jobs
    # inherit; elsewhere every other test here shows that PBS runs without it.
    status = Path("/proc/self/status").read_text()
    bounding = next(
        int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapBnd:")
    )
    if not bounding & (1 << CAP_SYS_RESOURCE):
        pytest.skip("the engine did not grant CAP_SYS_RESOURCE")
    limits = (processes()["pbs_mom"] / "limits").read_text()
    assert re.search(r"^Max locked memory\s+unlimited\s+unlimited", limits, re.M), limits
