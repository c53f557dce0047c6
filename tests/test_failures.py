"""docs/failures.md, row by row: one line, a non-zero exit, no traceback, nothing left.

Rows that need no engine are checked in test_mechanism.py, test_declarations.py
and test_publish.py; the table names the test of each row, and the first test
here checks that every named test exists.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from docker.errors import NotFound

from scripts import containers
from scripts.backends import Backend, load_all
from scripts.engine import Container
from tests.conftest import PORT_OFFSET, PUBLISHED_PORTS, TEST_LABEL
from tests.nox_runner import (
    ROOT,
    Run,
    aborted_line,
    fake_checkout,
    nox,
    nox_env,
    start_nox,
)
from tests.registry import engine_grants, free_port

SLURM = load_all()["slurm"]
BASE = load_all()["base"]
TABLE = ROOT / "docs" / "failures.md"


def table_rows() -> list[tuple[str, str]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3].startswith("`test_"):
            rows.append((cells[0], cells[3].strip("`")))
    return rows


def test_every_row_of_the_failure_table_names_a_test_that_exists():
    rows = table_rows()
    assert len(rows) >= 25
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    missing = [(row, name) for row, name in rows if name not in defined]
    assert not missing


def one_line_failure(run: Run) -> str:
    assert run.returncode != 0, run.output
    assert "Traceback" not in run.output, run.output
    return aborted_line(run)


# -- no engine needed: refused before anything is asked of Docker ----------------------


@pytest.fixture
def offline_env(tmp_path):
    """An engine address that answers nothing: the rows must fail before using it."""
    return nox_env(tmp_path / "state", DOCKER_HOST="unix:///nonexistent/docker.sock")


@pytest.mark.parametrize(
    ("extra", "args", "expected"),
    [
        (
            {"DASK_GATEWAY_CI_OWNER": "my fork"},
            ["-s", "push-base", "--", "--dry-run"],
            "DASK_GATEWAY_CI_OWNER 'my fork' is not a valid image owner",
        ),
        (
            {"DASK_GATEWAY_CI_OWNER": "-fork"},
            ["-s", "build-base"],
            "DASK_GATEWAY_CI_OWNER '-fork' is not a valid image owner",
        ),
        (
            {"DASK_GATEWAY_CI_REGISTRY": "https://ghcr.io"},
            ["-s", "verify-base"],
            "DASK_GATEWAY_CI_REGISTRY 'https://ghcr.io': give the registry host only",
        ),
        (
            {},
            ["-s", "tag-dated-base", "--", "--date", "2099-01-01"],
            "--date 2099-01-01 is more than a day after today",
        ),
        (
            {},
            ["-s", "build-slurm", "--", "--target", "nosuchstage"],
            "--target nosuchstage: ",
        ),
        ({}, ["-s", "build-slurm", "--", "--save", "/nonexistent/x.tar"], "cannot write there"),
        (
            {"DASK_GATEWAY_CI_READY_TIMEOUT": "soon"},
            ["-s", "verify-base"],
            "DASK_GATEWAY_CI_READY_TIMEOUT=soon: expected a number of seconds > 0",
        ),
    ],
)
def test_bad_owner_or_registry_is_one_line_before_the_engine(offline_env, extra, args, expected):
    run = nox(*args, env={**offline_env, **extra})
    line = one_line_failure(run)
    assert expected in line
    assert "Docker engine not reachable" not in run.output  # refused before connecting


def test_a_checkout_no_consumer_declares_is_one_line_before_the_engine(offline_env, tmp_path):
    both = tmp_path / "both"
    (both / "tests").mkdir(parents=True)
    (both / "dask_jobqueue").mkdir()
    (both / "dask_jobqueue" / "__init__.py").write_text("")
    (both / "conftest.py").write_text("")
    jobqueue = tmp_path / "jobqueue"
    (jobqueue / "dask_jobqueue").mkdir(parents=True)
    (jobqueue / "dask_jobqueue" / "__init__.py").write_text("")
    (jobqueue / "conftest.py").write_text("")
    for args, expected in (
        (["--source", str(tmp_path / "jobqueue" / "dask_jobqueue")], "no tests/ folder in"),
        (["--source", str(both)], "looks like a checkout of dask-gateway and of dask-jobqueue"),
        (["--source", str(both), "--consumer", "nosuch"], "--consumer nosuch: no such consumer"),
        (["--consumer", "dask-jobqueue"], "--consumer names whose checkout --source is"),
    ):
        run = nox("-s", "cycle-slurm", "--", *args, env=offline_env)
        assert expected in one_line_failure(run), args
        assert "Docker engine not reachable" not in run.output
    run = nox("-s", "start-hadoop", "--", "--source", str(jobqueue), env=offline_env)
    assert "dask-jobqueue declares no tests for hadoop" in one_line_failure(run)


# -- against the engine ---------------------------------------------------------------


def base_image(engine, env) -> str:
    from scripts.settings import load_settings

    reference = load_settings(environ=env).reference(BASE)
    return engine.images.get(reference).id


@pytest.mark.docker
def test_bad_build_options_fail_before_building(engine, env, built, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not an image archive")
    for args, expected in (
        (["--target", "nosuchstage"], "has no such stage; stages: "),
        (["--save", "/nonexistent/x.tar"], "--save /nonexistent/x.tar: cannot write there"),
        (["--load-parent", str(garbage)], f"{garbage} is not an image archive (docker load:"),
        (["--sources", str(tmp_path / "nope")], f"--sources {tmp_path / 'nope'}: not a folder"),
    ):
        run = nox("-s", "build-slurm", "--", *args, env=env)
        assert expected in one_line_failure(run), args
        assert "Step 1/" not in run.output  # nothing was built


@pytest.mark.docker
def test_state_dir_that_is_a_file_fails_before_verifying(engine, env, built, tmp_path):
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("")
    before = {c.name for c in engine.containers.list(all=True)}
    run = nox("-s", "verify-base", env={**env, "DASK_GATEWAY_CI_STATE_DIR": str(not_a_dir)})
    line = one_line_failure(run)
    assert f"cannot record verified images in {not_a_dir}" in line
    assert "point DASK_GATEWAY_CI_STATE_DIR at a writable directory" in line
    assert "verify ghcr.io" not in run.output  # refused before a container ran
    assert not {c.name for c in engine.containers.list(all=True)} - before


@pytest.mark.docker
def test_missing_ca_bundle_is_one_line_and_starts_nothing(engine, env, clean, tmp_path):
    missing = tmp_path / "corporate-ca.pem"
    run = nox("-s", "start-slurm", env={**env, "DASK_GATEWAY_CI_CA_BUNDLE": str(missing)})
    line = one_line_failure(run)
    assert f"DASK_GATEWAY_CI_CA_BUNDLE={missing}: no such file" in line
    assert not missing.exists()  # Docker did not create a folder there


@pytest.mark.docker
def test_start_names_the_container_holding_a_host_port(engine, env, clean):
    name = f"port-holder-{free_port()}"
    try:
        # In the try: a failed bind leaves a Created container to remove.
        holder = engine.containers.run(
            base_image(engine, env),
            ["sleep", "300"],
            detach=True,
            name=name,
            ports={"80/tcp": ("127.0.0.1", 8786 + PORT_OFFSET)},
            labels={TEST_LABEL: "port-holder"},
        )
        run = nox("-s", "start-slurm", env={**env, "DASK_GATEWAY_CI_PORTS": PUBLISHED_PORTS})
        line = one_line_failure(run)
        assert (
            f"host port {8786 + PORT_OFFSET} (for 8786) is taken by container {holder.name}" in line
        )
        assert "--ports +10000" in line and "--ports none" in line
        assert SLURM.container_name not in {c.name for c in engine.containers.list(all=True)}
    finally:
        with contextlib.suppress(NotFound):
            engine.containers.get(name).remove(force=True)


@pytest.mark.docker
def test_start_names_another_process_holding_a_host_port(engine, env, clean):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 8088 + PORT_OFFSET))
        held.listen()
        run = nox("-s", "start-slurm", env={**env, "DASK_GATEWAY_CI_PORTS": PUBLISHED_PORTS})
    line = one_line_failure(run)
    assert f"host port {8088 + PORT_OFFSET} (for 8088) is taken by another process" in line


@pytest.mark.docker
def test_verify_runs_while_a_started_container_holds_the_ports(engine, env, clean):
    assert nox("-s", "start-slurm", env=env).returncode == 0
    run = nox("-s", "verify-slurm", env=env)
    assert run.returncode == 0, run.output[-3000:]
    assert "verified " in run.output


@pytest.mark.docker
def test_start_with_another_source_says_which_is_mounted(engine, env, clean, tmp_path):
    first, second, bare = tmp_path / "a", tmp_path / "b", tmp_path / "bare"
    for checkout in (first, second):
        (checkout / "tests").mkdir(parents=True)
    bare.mkdir()
    run = nox("-s", "start-slurm", "--", "--source", str(bare), env=env)
    assert "no tests/ folder in" in one_line_failure(run)
    assert SLURM.container_name not in {c.name for c in engine.containers.list(all=True)}

    assert nox("-s", "start-slurm", "--", "--source", str(first), env=env).returncode == 0
    run = nox("-s", "start-slurm", "--", "--source", str(second), env=env)
    line = one_line_failure(run)
    assert f"is running with {first} at /working, not {second}" in line
    assert "nox -s stop -- slurm" in line
    again = nox("-s", "start-slurm", "--", "--source", str(first), env=env)
    assert again.returncode == 0 and f"already running with {first}" in again.output


def started_with_checkout(env: dict, tmp_path: Path, test_module: str) -> dict:
    """slurm started and installed with a stand-in checkout; nox's env for it."""
    source = fake_checkout(tmp_path / "dask-gateway", "test_slurm_backend.py", test_module)
    env = {**env, "DASK_GATEWAY_SOURCE": str(source)}
    assert nox("-s", "start-slurm", env=env).returncode == 0
    assert nox("-s", "install-slurm", env=env).returncode == 0
    return env


def _run_until(args: list[str], env: dict, marker: str, timeout: float = 300):
    """Start `nox ARGS`, read its output until `marker`; returns (process, output so far)."""
    process = start_nox(*args, env=env)
    seen = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return process, "".join(seen)


def _interrupt(process, seen: str) -> Run:
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    output = seen + rest
    print(output[-4000:])
    return Run(process.returncode, output)


@pytest.mark.docker
def test_ctrl_c_during_test_stops_pytest_in_the_container(engine, env, clean, tmp_path):
    env = started_with_checkout(
        env,
        tmp_path,
        "import time\n\ndef test_takes_long():\n    print('started', flush=True)\n"
        "    time.sleep(600)\n",
    )
    process, seen = _run_until(["-s", "test-slurm", "--", "-s"], env, "started")
    run = _interrupt(process, seen)
    line = one_line_failure(run)
    assert "interrupted: stopped `pytest -v tests/test_slurm_backend.py" in line
    container = engine.containers.get(SLURM.container_name)
    left = container.exec_run(["pgrep", "-f", "pytest"]).output.decode().split()
    assert not left, f"pytest still running in the container: {left}"


@pytest.mark.docker
def test_start_on_an_unhealthy_running_container_prints_its_logs(engine, env, clean):
    assert nox("-s", "start-slurm", env=env).returncode == 0
    container = engine.containers.get(SLURM.container_name)
    assert container.exec_run(["supervisorctl", "stop", "slurmctld"]).exit_code == 0
    run = nox("-s", "start-slurm", env={**env, "DASK_GATEWAY_CI_READY_TIMEOUT": "5"})
    line = one_line_failure(run)
    assert "slurm not ready after 5s; last failing check: " in line
    assert "***" not in line
    assert "==> slurm: container state" in run.output  # the logs came first
    assert "supervisorctl status" in run.output


@pytest.mark.docker
def test_a_suite_that_skipped_everything_fails(engine, env, clean, tmp_path):
    env = started_with_checkout(
        env,
        tmp_path,
        "import pytest\n\npytest.importorskip('no_such_module_here')\n\n"
        "def test_never_runs():\n    pass\n",
    )
    source = Path(env["DASK_GATEWAY_SOURCE"])
    line = one_line_failure(nox("-s", "test-slurm", env=env))
    assert (
        "test tested nothing of slurm: tests/test_slurm_backend.py ran no test (1 skipped:" in line
    )
    assert "no_such_module_here" in line
    # The same suite with a test that runs is a pass.
    (source / "tests" / "test_slurm_backend.py").write_text("def test_runs():\n    pass\n")
    assert nox("-s", "test-slurm", env=env).returncode == 0


def _tiny_backend(name: str, **fields) -> Backend:
    return Backend(
        name=name,
        folder=ROOT / "ci" / "base",
        description="test",
        image="dask-gateway-ci-base",
        kind="image",
        hostname=name,
        command=("sleep", "300"),
        **fields,
    )


@pytest.mark.docker
def test_a_needed_capability_the_engine_refuses_is_one_line(
    engine, env, built, monkeypatch, tmp_path
):
    from scripts.errors import UserError

    monkeypatch.setenv("DASK_GATEWAY_CI_STATE_DIR", str(tmp_path / "state"))
    image = base_image(engine, env)
    backend = _tiny_backend("needs-cap", needed_capabilities=("SYS_RESOURCE",))
    name = f"needs-cap-{int(time.time())}"
    if engine_grants(engine, image, "SYS_RESOURCE"):  # then it must simply be granted
        container = containers.start(engine, backend, image, name=name, forwarded={})
        try:
            added = engine.containers.get(container.id).attrs["HostConfig"]["CapAdd"]
            assert "SYS_RESOURCE" in str(added)
        finally:
            containers.remove(container)
        return
    with pytest.raises(UserError) as raised:
        containers.start(engine, backend, image, name=name, forwarded={})
    assert "this engine cannot grant SYS_RESOURCE, which needs-cap needs" in str(raised.value)
    assert name not in {c.name for c in engine.containers.list(all=True)}


@pytest.mark.docker
def test_a_wanted_capability_the_engine_refuses_is_a_notice(
    engine, env, built, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("DASK_GATEWAY_CI_STATE_DIR", str(tmp_path / "state"))
    image = base_image(engine, env)
    backend = _tiny_backend("wants-cap", wanted_capabilities=("SYS_RESOURCE",))
    granted = engine_grants(engine, image, "SYS_RESOURCE")
    for round_ in ("first", "second"):
        container = containers.start(
            engine, backend, image, name=f"wants-cap-{free_port()}", forwarded={}
        )
        try:
            container.reload()
            assert container.status == "running"
            added = engine.containers.get(container.id).attrs["HostConfig"]["CapAdd"] or []
            said = capsys.readouterr().err
            notice = "cannot grant SYS_RESOURCE (wanted by wants-cap, not needed" in said
            assert (("SYS_RESOURCE" in added or "CAP_SYS_RESOURCE" in added), notice) == (
                granted,
                not granted,
            )
            # Remembered for this engine: the second start does not ask again.
            assert ("refused before" in said) == (round_ == "second" and not granted)
        finally:
            containers.remove(container)


@pytest.mark.docker
def test_stop_sends_sigterm_first(engine, env, built, tmp_path):
    """The container's PID 1 sees TERM (services shut down) before it is removed."""
    image = base_image(engine, env)
    marker = tmp_path / "out"
    marker.mkdir()
    container = engine.containers.run(
        image,
        [
            "sh",
            "-c",
            "trap 'echo term > /out/got; exit 0' TERM; touch /out/trapped; "
            "while :; do sleep 0.1; done",
        ],
        detach=True,
        name=f"stop-test-{free_port()}",
        volumes={str(marker): {"bind": "/out", "mode": "rw"}},
        labels={TEST_LABEL: "stop-test"},
        entrypoint=[],
    )
    deadline = time.monotonic() + 60
    while not (marker / "trapped").exists():  # the trap is set: now TERM is seen
        assert time.monotonic() < deadline, container.logs()
        time.sleep(0.05)
    started = time.monotonic()
    containers.stop(Container(container), timeout=20)
    assert time.monotonic() - started < 15  # it ended on TERM, not on the timeout's KILL
    assert (marker / "got").read_text().strip() == "term"
    assert container.name not in {c.name for c in engine.containers.list(all=True)}


def test_the_table_has_the_rows_of_the_issue():
    ids = {row for row, _ in table_rows()}
    assert {
        "port-held-by-container",
        "capability-needed",
        "declaration-types",
        "owner-invalid",
        "registry-url",
        "build-target",
        "build-save",
        "build-load-parent",
        "state-dir",
        "ca-bundle",
        "future-date",
        "source-switch",
        "interrupt-start",
        "interrupt-test",
        "readiness-line",
        "unhealthy-running",
        "index-credentials",
        "short-token",
        "suite-tested-nothing",
        "stop-graceful",
    } <= ids
    assert Path(TABLE).read_text().count("\n|") >= len(ids)
