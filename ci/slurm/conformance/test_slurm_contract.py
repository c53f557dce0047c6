"""IMAGE-CONTRACT.md, "slurm": checked inside the container as dask.

Jobs are submitted the way dask-gateway submits them: dask runs the jobqueue
launcher as the requesting user through sudo, and the launcher runs sbatch.
The launcher comes from dask-gateway-server (`nox -s install -- slurm`).
"""

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

LAUNCHER = "/opt/python/bin/dask-gateway-jobqueue-launcher"
TOOLS = ("sbatch", "squeue", "scancel", "sacct", "sinfo", "scontrol")
SERVICES = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def launch(
    user: str, command: list[str], stdin: str | None = None, env: dict | None = None
) -> dict:
    """Run `command` as `user` through sudo and the jobqueue launcher."""
    request = {
        "action": "start",
        "cmd": command,
        "env": {"PATH": os.environ["PATH"], **(env or {})},
    }
    if stdin is not None:
        request["stdin"] = stdin
    done = run("sudo", "-n", "-u", user, LAUNCHER, input=json.dumps(request))
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"], reply
    return reply


def submit(user: str, script: str, *options: str) -> str:
    # As dask-gateway does: name the exported variables with --export.
    env = {"CONFORMANCE_USER": user}
    reply = launch(
        user,
        [
            "/usr/local/bin/sbatch",
            "--parsable",
            "-c",
            "1",
            "--mem=256M",
            "--export=CONFORMANCE_USER",
            *options,
        ],
        stdin=f"#!/bin/bash\n{script}\n",
        env=env,
    )
    assert reply["returncode"] == 0, reply["stderr"]
    return reply["stdout"].strip().split(";")[0]


def job_state(job_id: str) -> str:
    return run("/usr/local/bin/squeue", "-h", "-j", job_id, "-o", "%t").stdout.strip()


def accounting(job_id: str, deadline: float = 60) -> list[str]:
    end = time.monotonic() + deadline
    while True:
        record = run(
            "/usr/local/bin/sacct",
            "-n",
            "-P",
            "-X",
            "-a",
            "-j",
            job_id,
            "-o",
            "JobID,User,State,ExitCode",
        ).stdout.strip()
        if re.search(r"\|(COMPLETED|FAILED|CANCELLED)", record) or time.monotonic() > end:
            return record.split("|")
        time.sleep(1)


def wait_until(predicate, deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module", autouse=True)
def launcher_installed():
    if not Path(LAUNCHER).exists():
        pytest.fail(f"{LAUNCHER} missing: run `nox -s install -- slurm` first")


def test_hostname_is_slurm():
    assert socket.gethostname() == "slurm"


def test_environment_announces_slurm():
    assert os.environ.get("TEST_DASK_GATEWAY_SLURM") == "true"


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_on_path_and_in_usr_local_bin(tool):
    assert shutil.which(tool), f"{tool} not on PATH"
    path = Path("/usr/local/bin") / tool
    assert path.exists() and os.access(path, os.X_OK), path
    assert run(str(path), "--version").stdout.startswith("slurm")


def test_services_run_under_one_supervisor():
    processes = {}
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
    for service in SERVICES:
        assert service in parents, f"{service} not running"
        assert parents[service] in supervisors, f"{service} not started by supervisord"


def test_accounting_is_stored_by_slurmdbd():
    config = run("/usr/local/bin/scontrol", "show", "config").stdout
    assert re.search(r"AccountingStorageType\s*=\s*accounting_storage/slurmdbd", config)
    clusters = run("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster").stdout
    assert "linux" in clusters.split()


def test_mariadb_takes_only_socket_connections_without_tls():
    # As slurmdbd connects (slurmdbd.conf's test-only credentials). With TLS
    # on, MariaDB 11.4+ makes a new certificate at every start, which cost a
    # different 0.2-1.0 s each time (60-slurm-accounting.cnf).
    query = "SELECT @@skip_networking, @@have_ssl"
    done = run("mariadb", "-u", "slurm", "-pslurm", "-N", "-B", "-e", query)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "DISABLED"]


def test_dask_may_run_the_launcher_as_dask_users_without_password():
    listing = run("sudo", "-n", "-l").stdout
    assert re.search(rf"\(%dask_users\)\s+NOPASSWD:\s+{LAUNCHER}", listing), listing


def test_dask_may_not_run_other_commands_as_alice():
    assert run("sudo", "-n", "-u", "alice", "/usr/bin/id").returncode != 0


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_batch_job_as_user_runs_and_is_accounted(user):
    # The launcher passes only the environment it is given: no $HOME.
    job = submit(
        user,
        f'echo "ran as $(whoami) for $CONFORMANCE_USER on $(hostname)"'
        f' > "/home/{user}/conformance-$SLURM_JOB_ID"',
    )
    record = accounting(job)
    assert record[1:] == [user, "COMPLETED", "0:0"], record
    output = Path(f"/home/{user}/conformance-{job}")
    reply = launch(user, ["cat", str(output)])
    assert reply["stdout"].strip() == f"ran as {user} for {user} on slurm"
    launch(user, ["rm", "-f", str(output)])


def test_several_small_jobs_run_at_once_and_scancel_stops_them():
    jobs = [submit(user, "sleep 120") for user in ("alice", "bob", "alice", "bob")]
    try:
        wait_until(lambda: all(job_state(j) == "R" for j in jobs), 60, "4 jobs running at once")
    finally:
        for job, user in zip(jobs, ("alice", "bob", "alice", "bob"), strict=True):
            launch(user, ["/usr/local/bin/scancel", job])
    wait_until(lambda: not any(job_state(j) in ("R", "PD") for j in jobs), 60, "jobs cancelled")
    assert accounting(jobs[0])[2].startswith("CANCELLED")


def test_opt_python_on_path_inside_jobs_under_sudo():
    job = submit("alice", 'command -v python > "/home/alice/conformance-python-$SLURM_JOB_ID"')
    assert accounting(job)[2] == "COMPLETED"
    path = f"/home/alice/conformance-python-{job}"
    assert launch("alice", ["cat", path])["stdout"].strip() == "/opt/python/bin/python"
    launch("alice", ["rm", "-f", path])


def slurmd_pid() -> int:
    return int(Path("/run/slurm/slurmd.pid").read_text())


def test_export_names_job_gets_the_login_environment_and_slurmd_survives():
    # IMAGE-CONTRACT.md, drop-in: slurm starts with no added capability and
    # runs dask-gateway's jobs, submitted with --export=NAMES. slurmd adds
    # the user's login environment to such jobs (`su - alice`, whose live
    # output the image's smoke check compares as root), without the
    # CAP_SYS_ADMIN it used to need: it died loading it before.
    before = slurmd_pid()
    job = submit("alice", 'env -0 > "/home/alice/conformance-env-$SLURM_JOB_ID"')
    assert accounting(job)[2:] == ["COMPLETED", "0:0"]
    path = f"/home/alice/conformance-env-{job}"
    dump = launch("alice", ["cat", path])["stdout"]
    launch("alice", ["rm", "-f", path])
    env = dict(entry.split("=", 1) for entry in dump.split("\0") if "=" in entry)
    account = pwd.getpwnam("alice")
    login = {
        "HOME": account.pw_dir,
        "SHELL": account.pw_shell,
        "USER": "alice",
        "LOGNAME": "alice",
        "MAIL": "/var/mail/alice",
    }
    assert {name: env.get(name) for name in login} == login
    assert env["PATH"].split(":")[:2] == ["/opt/python/bin", "/usr/local/bin"], env["PATH"]
    # The named variable arrives with the value it had at submission.
    assert env["CONFORMANCE_USER"] == "alice"
    assert env["SLURM_JOB_ID"] == job
    assert slurmd_pid() == before and Path(f"/proc/{before}").exists(), "slurmd restarted"


# dask-jobqueue's -E slurm suite (consumers/dask-jobqueue.toml) relies on these.


def test_ip_shows_eth0_for_labelled_addresses():
    # Its interface test needs `ip addr add ... label eth0:NAME` (with
    # CAP_NET_ADMIN, a consumer's setup); here, only that iproute2 is in the
    # image and eth0 is there (without eth0 the test skips itself).
    done = run("ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert done.returncode == 0, done.stderr
    assert " inet " in done.stdout


def test_four_tasks_run_in_one_srun():
    # test_slurm_runner: `srun --mpi=none -n 4`, skipped below 4 CPUs in `sinfo -o %C`.
    total = run("sinfo", "-h", "-o", "%C").stdout.strip().split("/")[-1]
    assert int(total) >= 4
    done = run("srun", "--mpi=none", "-n", "4", "-t", "1", "--mem-per-cpu=64", "hostname")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [socket.gethostname()] * 4


def test_two_jobs_of_two_cores_and_2_gib_run_at_once():
    # Its adaptive and scale tests: two jobs of cores=2, memory="2GiB" at once.
    jobs = [submit("alice", "sleep 120", "-c", "2", "--mem=2G") for _ in range(2)]
    try:
        wait_until(lambda: all(job_state(j) == "R" for j in jobs), 60, "2 jobs of 2 GiB running")
    finally:
        for job in jobs:
            launch("alice", ["/usr/local/bin/scancel", job])
