"""IMAGE-CONTRACT.md, "htcondor": checked inside the container as dask.

Jobs are submitted as dask-jobqueue's HTCondorCluster submits them: a submit
description with RequestCpus, RequestMemory and RequestDisk, `/bin/sh -c`
as the executable, one job per condor_submit.
"""

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

TOOLS = ("condor_submit", "condor_q", "condor_rm", "condor_status", "condor_history")
DAEMONS = ("condor_master", "condor_collector", "condor_negotiator", "condor_schedd")


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def config(name: str) -> str:
    return run("condor_config_val", name).stdout.strip()


def submit(folder: Path, script: str, **request: str) -> str:
    """condor_submit a /bin/sh script; its cluster id. Its log is folder/job.log."""
    lines = {
        "executable": "/bin/sh",
        "arguments": f"\"-c '{script}'\"",
        "log": str(folder / "job.log"),
        "output": str(folder / "job.out"),
        "request_cpus": "1",
        "request_memory": "500",
        "request_disk": "102400",
        **request,
    }
    description = "".join(f"{key} = {value}\n" for key, value in lines.items()) + "queue\n"
    done = run("condor_submit", "-terse", input=description, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split(".")[0]


def wait_for(predicate, seconds: float, what: str):
    end = time.monotonic() + seconds
    while not (found := predicate()):
        assert time.monotonic() < end, f"not within {seconds}s: {what}"
        time.sleep(0.1)
    return found


def job_status(job: str) -> str:
    """JobStatus in the queue (1 idle, 2 running), or "" once it has left it."""
    return run("condor_q", job, "-af", "JobStatus").stdout.strip()


@pytest.fixture
def folder(tmp_path_factory) -> Path:
    """A folder of dask's own: the job's log and output (HTCondor writes them as dask)."""
    return Path(tmp_path_factory.mktemp("job"))


def test_hostname_is_htcondor():
    assert socket.gethostname() == "htcondor"


@pytest.mark.parametrize("tool", TOOLS)
def test_client_command_on_path(tool):
    assert shutil.which(tool), tool


def processes() -> dict[str, tuple[str, str]]:
    """pid -> (command line, parent pid), from /proc (`comm` keeps 15 characters)."""
    found = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            argv = (status.parent / "cmdline").read_bytes().decode().split("\0")
            ppid = re.search(r"^PPid:\s+(\d+)", status.read_text(), re.M).group(1)
        except (OSError, AttributeError):
            continue
        found[status.parent.name] = (" ".join(argv).strip(), ppid)
    return found


def test_the_pool_runs_under_condor_master_under_supervisor():
    table = processes()
    by_name = {Path(cmd.split()[0]).name: (pid, ppid) for pid, (cmd, ppid) in table.items() if cmd}
    master_pid, master_parent = by_name["condor_master"]
    assert "supervisord" in table[master_parent][0], table[master_parent]
    for daemon in DAEMONS[1:]:
        assert by_name[daemon][1] == master_pid, (daemon, by_name.get(daemon))
    slots = run("condor_status", "-af", "Name").stdout.split()
    assert "slot1@htcondor" in slots, slots


def test_one_partitionable_slot_of_4_cpus_and_4_gib():
    slot = run("condor_status", "slot1@htcondor", "-af", "PartitionableSlot", "TotalSlotCpus",
               "TotalSlotMemory").stdout.split()  # fmt: skip
    assert slot == ["true", "4", "4096"], slot


def test_every_cycle_runs_every_second():
    for name in ("NEGOTIATOR_INTERVAL", "SCHEDD_INTERVAL", "UPDATE_INTERVAL"):
        assert config(name) == "1", name


def log_time(log: str, line: str) -> float:
    """When LOG (in /var/log/condor) first says LINE: its D_SUB_SECOND time, as a timestamp."""
    for entry in Path("/var/log/condor", log).read_text().splitlines():
        if line in entry:
            stamp = " ".join(entry.split()[:2])
            return time.mktime(time.strptime(stamp[:17], "%m/%d/%y %H:%M:%S")) + float(stamp[17:])
    raise AssertionError(f"{log} never says {line!r}")


def test_the_negotiator_starts_after_the_startds_first_ad():
    # Started together, its first cycles run a moment before the slot is
    # known, and the first job waits a cycle more for its match.
    advertised = log_time("StartLog", "Initial update sent to collector")
    started = log_time("NegotiatorLog", "condor_negotiator (CONDOR_NEGOTIATOR) STARTING UP")
    assert started >= advertised, (advertised, started)


def test_no_kernel_tuning_and_no_cgroup():
    assert config("ENABLE_KERNEL_TUNING") == "False"
    assert config("BASE_CGROUP") == ""


def test_a_job_runs_as_its_user_and_is_in_the_history(folder):
    job = submit(folder, "whoami")
    done = run("condor_wait", "-wait", "60", str(folder / "job.log"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (folder / "job.out").read_text().strip() == "dask"
    record = wait_for(
        lambda: run("condor_history", job, "-limit", "1", "-af", "Owner", "ExitCode").stdout,
        10,
        f"job {job} in condor_history",
    )
    assert record.split() == ["dask", "0"], record


def test_two_jobs_of_dask_jobqueues_size_run_at_once(folder):
    """1 CPU and 500 MiB each, as its test_basic asks, at the same time."""
    jobs = []
    for name in ("a", "b"):
        (folder / name).mkdir()
        jobs.append(submit(folder / name, "sleep 60"))
    try:
        wait_for(lambda: all(job_status(j) == "2" for j in jobs), 30, f"jobs {jobs} running")
    finally:
        run("condor_rm", *jobs)


def test_condor_rm_ends_every_process_of_a_job_at_once(folder):
    """The job's shell dies at SIGTERM; the process it started must go with it."""
    job = submit(folder, "sleep 300 & wait")
    child = wait_for(lambda: run("pgrep", "-u", "dask", "-x", "sleep").stdout.split(), 30, "sleep")
    assert run("condor_rm", job).returncode == 0
    removed = time.monotonic()
    wait_for(lambda: not Path(f"/proc/{child[0]}").exists(), 10, f"pid {child[0]} gone")
    print(f"the job's sleep went {time.monotonic() - removed:.2f}s after condor_rm")
    assert re.fullmatch(r"[34]?", job_status(job)), job_status(job)
