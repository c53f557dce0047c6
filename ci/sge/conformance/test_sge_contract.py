"""IMAGE-CONTRACT.md, "sge": checked inside the container as dask.

Jobs are submitted with qsub as dask-jobqueue's SGECluster submits them: a
job script on stdin or in a file, `-cwd -j y`, one slot each.
"""

import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

TOOLS = ("qsub", "qstat", "qdel", "qacct", "qhost", "qconf")
DAEMONS = ("sge_qmaster", "sge_execd")


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def submit(script: str, *options: str, sync: bool = False) -> str:
    """qsub a bash script from stdin; its job number (after it ended, with sync)."""
    done = run(
        "qsub", "-terse", "-cwd", "-j", "y", "-o", "/dev/null", *options,
        *(("-sync", "y") if sync else ()),
        input=f"#!/bin/bash\n{script}\n",
        cwd=Path.home(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[0]


def state(job: str) -> str:
    """The job's state letters in qstat ("" once it has left the queue)."""
    for line in run("qstat", "-u", "*").stdout.splitlines()[2:]:
        fields = line.split()
        if fields and fields[0] == job:
            return fields[4]
    return ""


def wait_for(predicate, seconds: float, what: str):
    end = time.monotonic() + seconds
    while not (found := predicate()):
        assert time.monotonic() < end, f"not within {seconds}s: {what}"
        time.sleep(0.1)
    return found


def conf(*command: str) -> dict[str, str]:
    """qconf's answer as key -> value (continuation lines joined)."""
    text = run("qconf", *command).stdout.replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            found[key] = value.strip()
    return found


def test_hostname_is_sge():
    assert socket.gethostname() == "sge"
    assert Path("/var/lib/gridengine/default/common/act_qmaster").read_text().strip() == "sge"


@pytest.mark.parametrize("tool", TOOLS)
def test_client_command_on_path(tool):
    assert shutil.which(tool), tool


def test_qmaster_and_execd_run_under_one_supervisor():
    processes = {}  # pid -> (name, parent pid), from /proc: dask may not ask supervisorctl
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        processes[status.parent.name] = (fields["Name"].strip(), fields["PPid"].strip())
    supervisors = {pid for pid, (name, _) in processes.items() if name.startswith("supervisord")}
    assert len(supervisors) == 1, processes
    parents = {name: ppid for name, ppid in processes.values()}
    for daemon in DAEMONS:
        assert parents.get(daemon) in supervisors, (daemon, processes)
    assert re.search(r"^sge\s+lx-\w+\s+\d", run("qhost", "-h", "sge").stdout, re.M)


def test_a_job_runs_as_its_user_and_is_accounted_at_once():
    job = submit("echo ran", sync=True)
    accounted = run("qacct", "-j", job).stdout
    assert re.search(r"^owner\s+dask\s*$", accounted, re.M), accounted
    assert re.search(r"^exit_status\s+0\s*$", accounted, re.M), accounted


def test_root_may_submit_min_uid_and_min_gid_are_0():
    global_conf = conf("-sconf", "global")
    assert (global_conf["min_uid"], global_conf["min_gid"]) == ("0", "0")


def test_accounting_is_flushed_at_once():
    assert "accounting_flush_time=00:00:00" in conf("-sconf", "global")["reporting_params"]


def test_queue_has_8_slots_and_no_load_threshold():
    queue = conf("-sq", "all.q")
    assert queue["slots"] == "8"
    assert queue["load_thresholds"] == "NONE"
    assert queue["hostlist"] == "@allhosts"
    assert conf("-shgrp", "@allhosts")["hostlist"] == "sge"


def test_scheduler_runs_every_second_and_when_a_job_comes_or_goes():
    scheduler = conf("-ssconf")
    assert scheduler["schedule_interval"] == "0:0:1"
    # Without these a job waits for the next run: 1 s more for each job.
    assert (scheduler["flush_submit_sec"], scheduler["flush_finish_sec"]) == ("1", "1")


def test_a_job_script_runs_under_its_own_shebang(tmp_path):
    script = Path.home() / "shebang-job.py"
    script.write_text("#!/opt/python/bin/python\nimport sys\nprint(sys.executable)\n")
    script.chmod(0o755)
    out = Path.home() / "shebang-job.out"
    try:
        done = run("qsub", "-sync", "y", "-cwd", "-j", "y", "-o", str(out), str(script))
        assert done.returncode == 0, done.stdout + done.stderr
        assert out.read_text().strip() == "/opt/python/bin/python"
    finally:
        script.unlink()
        out.unlink(missing_ok=True)


def test_two_jobs_run_at_once():
    marks = Path.home() / "overlap"
    marks.mkdir(exist_ok=True)
    script = f"touch {marks}/$JOB_ID.started; for _ in $(seq 200); do [ $(ls {marks} | wc -l) -ge 2 ] && exit 0; sleep 0.1; done; exit 1"  # noqa: E501
    ended: dict[str, str] = {}

    def one(name: str) -> None:
        ended[name] = run(
            "qsub", "-sync", "y", "-cwd", "-j", "y", "-o", "/dev/null", "-b", "n",
            input=f"#!/bin/bash\n{script}\n", cwd=Path.home(),
        ).stdout  # fmt: skip

    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        shutil.rmtree(marks)
    assert all("exited with exit code 0" in out for out in ended.values()), ended


def test_qdel_ends_a_running_job_within_seconds():
    job = submit("sleep 300")
    wait_for(lambda: state(job) == "r", 30, f"job {job} running")
    deleted = time.monotonic()
    assert run("qdel", job).returncode == 0
    wait_for(lambda: state(job) == "", 10, f"job {job} gone after qdel")
    print(f"job {job} left the queue {time.monotonic() - deleted:.1f}s after qdel")
