"""The slurm image and its start -> install -> test -> print-logs -> stop cycle.

Runs on the real engine. The container name is the declared one
(dask-gateway-ci-slurm): a running one is stopped first.
"""

from __future__ import annotations

import time

import pytest

from scripts.backends import load_all
from tests.conftest import PORT_OFFSET, PUBLISHED_PORTS
from tests.nox_runner import aborted_line, fake_checkout, nox, our_containers, start_nox

pytestmark = pytest.mark.docker
SLURM = load_all()["slurm"]


@pytest.fixture
def no_container(engine, env):
    nox("-s", "stop", "--", "slurm", env=env)
    yield
    nox("-s", "stop", "--", "slurm", env=env)


def container_names(engine) -> set[str]:
    return our_containers(engine)


def test_verify_slurm_runs_a_job_and_cleans_up(engine, env, built):
    before = container_names(engine)
    run = nox("-s", "verify-slurm", env=env)
    assert run.returncode == 0, run.output
    assert "ok: batch job as alice, submitted as dask-gateway does" in run.output
    assert container_names(engine) == before


def test_full_cycle_with_conformance_tests(engine, env, built, no_container):
    start = nox("-s", "start", "--", "slurm", "--ports", PUBLISHED_PORTS, env=env)
    assert start.returncode == 0, start.output
    container = engine.containers.get(SLURM.container_name)
    assert container.attrs["Config"]["Hostname"] == "slurm"
    ports = container.attrs["HostConfig"]["PortBindings"]
    assert {p: [(b["HostIp"], b["HostPort"]) for b in ports[p]] for p in ports} == {
        f"{p}/tcp": [("127.0.0.1", str(p + PORT_OFFSET))] for p in (8000, 8786, 8088)
    }

    again = nox("-s", "start-slurm", env=env)
    assert again.returncode == 0
    assert "already running" in again.output

    install = nox("-s", "install-slurm", env=env)
    assert install.returncode == 0, install.output
    assert "Successfully installed" in install.output or "already satisfied" in install.output

    test = nox("-s", "test", "--", "slurm", env=env)
    assert test.returncode == 0, test.output
    assert "test_several_small_jobs_run_at_once_and_scancel_stops_them PASSED" in test.output
    assert "test_sudo_survives_an_empty_environment PASSED" in test.output

    failing = nox("-s", "test", "--", "slurm", "-k", "no_test_matches_this", env=env)
    assert failing.returncode != 0
    assert "exited with code 5" in aborted_line(failing)

    logs = nox("-s", "print-logs", "--", "slurm", env=env)
    assert logs.returncode == 0
    for heading in ("supervisorctl status", "/var/log/supervisor/slurmctld.log", "slurmd.log"):
        assert any(heading in line for line in logs.lines if line.startswith("==>")), heading
    assert "RUNNING" in logs.output

    stop = nox("-s", "stop-slurm", env=env)
    assert stop.returncode == 0
    assert SLURM.container_name not in container_names(engine)
    stop_again = nox("-s", "stop-slurm", env=env)
    assert stop_again.returncode == 0
    assert "nothing to stop" in stop_again.output


def test_test_without_a_container_says_to_start_it(env, built, no_container):
    run = nox("-s", "test-slurm", env=env)
    assert run.returncode != 0
    assert "run `nox -s start -- slurm` first" in aborted_line(run)
    assert "Traceback" not in run.output


def test_source_checkout_is_mounted_and_used(engine, env, built, no_container, tmp_path):
    source = fake_checkout(
        tmp_path / "dask-gateway",
        "test_slurm_backend.py",
        "import os, getpass\n"
        "def test_runs_as_dask_in_working():\n"
        "    assert getpass.getuser() == 'dask'\n"
        "    assert os.getcwd() == '/working'\n"
        "    assert os.environ['TEST_DASK_GATEWAY_SLURM'] == 'true'\n",
    )
    env = {**env, "DASK_GATEWAY_SOURCE": str(source)}
    assert nox("-s", "start-slurm", env=env).returncode == 0
    install = nox("-s", "install-slurm", env=env)
    assert install.returncode == 0, install.output
    assert "root@/working$ pip install -r tests/requirements.txt" in install.output
    test = nox("-s", "test-slurm", "--", "-x", env=env)
    assert test.returncode == 0, test.output
    assert "dask@/working$ pytest -v tests/test_slurm_backend.py -x" in test.output
    assert "test_runs_as_dask_in_working PASSED" in test.output


def test_killed_container_during_test_is_a_clear_failure_and_stop_cleans_up(
    engine, env, built, no_container
):
    assert nox("-s", "start-slurm", env=env).returncode == 0
    assert nox("-s", "install-slurm", env=env).returncode == 0
    running = start_nox("-s", "test-slurm", env=env)
    seen = []
    deadline = time.monotonic() + 300
    for line in running.stdout:  # kill it once the tests are under way
        seen.append(line)
        if " PASSED" in line or time.monotonic() > deadline:
            break
    engine.containers.get(SLURM.container_name).kill()
    rest, _ = running.communicate(timeout=300)
    output = "".join(seen) + rest
    print(output[-4000:])
    assert running.returncode != 0
    assert "Traceback" not in output
    assert "the slurm container stopped during test" in output

    # Starting again shows the dead container's last output, then replaces it.
    restart = nox("-s", "start-slurm", env=env)
    assert restart.returncode == 0, restart.output
    assert "is there but exited (exit code 137), left by an earlier start" in restart.output
    assert engine.containers.get(SLURM.container_name).status == "running"

    stop = nox("-s", "stop-slurm", env=env)
    assert stop.returncode == 0
    assert SLURM.container_name not in container_names(engine)


def test_test_before_install_says_to_install(env, built, no_container):
    assert nox("-s", "start-slurm", env=env).returncode == 0
    run = nox("-s", "test-slurm", env=env)
    assert run.returncode != 0
    assert "run `nox -s install -- slurm` first" in aborted_line(run)
