"""Each image driven the way upstream dask-gateway's own CI scripts drive it.

Upstream's continuous_integration/docker/<backend>/{start,install,test,
print_logs}.sh pull ghcr.io/dask/dask-gateway-ci-<backend>:latest and use
it with nothing of ours: a plain `docker run` with their flags, their
readiness signal in `docker logs`, `mamba install` and `pip install` as root
in /working, the tests as `dask`, and fixed log paths. This module does the
same in its own code, with our conformance suite standing in for
dask-gateway's tests (the checkout at /working holds them and a
tests/requirements.txt, as a dask-gateway checkout would).

Differences, and why: host ports are published on free ports rather than on
8000/8786/8088 (they are shared by everything on this machine); the host's
CA bundle is mounted, as on any network that intercepts TLS; pbs gets
--cap-add=SYS_RESOURCE only where the engine can grant it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts import trust
from scripts.backends import load_all
from scripts.settings import SOURCES_VARIABLE, load_settings
from tests.nox_runner import TEST_OWNER, nox, nox_env
from tests.registry import engine_grants, free_port, unavailable

pytestmark = pytest.mark.docker
ALL = load_all()


@dataclass(frozen=True)
class Upstream:
    """What upstream's scripts of one backend do (dask-gateway 2026.3.0)."""

    backend: str
    flags: tuple[str, ...]  # beyond --name, -h, -v, -p
    signal: str  # awaited in `docker logs`, every second, for 30 s
    count: int  # how many times
    mamba: tuple[str, ...]  # _install.sh's mamba line
    logs: tuple[str, ...]  # what _print_logs.sh reads


UPSTREAM = {
    "slurm": Upstream(
        "slurm",
        flags=(),
        signal="entered RUNNING state",
        count=5,
        mamba=("mamba", "install", "-c", "conda-forge", "contourpy", "pandas", "greenlet"),
        logs=(
            "/var/log/supervisord.log",
            "/var/log/supervisor/slurmdbd.log",
            "/var/log/supervisor/slurmctld.log",
        ),
    ),
    "pbs": Upstream(
        "pbs",
        flags=("SYS_RESOURCE",),
        signal="Entering sleep",
        count=1,
        mamba=("mamba", "install", "-c", "conda-forge", "contourpy", "pandas", "greenlet"),
        logs=(),  # its print_logs.sh is `docker logs pbs`
    ),
}


def checkout(folder: Path, backend: str) -> Path:
    """A stand-in dask-gateway checkout: our conformance tests and their requirements."""
    tests = folder / "tests"
    tests.mkdir(parents=True)
    (tests / "requirements.txt").write_text("pytest\ndask-gateway-server\n")
    for owner in ("base", backend):
        for test in ALL[owner].conformance_dir.glob("test_*.py"):
            shutil.copy(test, tests / test.name)
    # Checked out by someone else: dask only reads it, as in upstream's CI.
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def image_for(engine, backend: str) -> str:
    """slurm: built here by nox. pbs: the image built beside the tests (.ci/run builds it
    once for every engine), else built here from the sources folder when one is set."""
    if backend != "slurm":
        for owner in (TEST_OWNER, load_settings(environ={}).owner):
            reference = f"ghcr.io/{owner}/dask-gateway-ci-{backend}:latest"
            if engine.images.list(name=reference):
                return reference
    extra = {}
    if backend != "slurm":
        folder = os.environ.get(SOURCES_VARIABLE)
        if not folder:
            unavailable(
                f"no {backend} image here, and no {SOURCES_VARIABLE}: its source cannot be "
                f"downloaded on this machine (set {SOURCES_VARIABLE} to a folder that holds it, "
                f"or build it with `nox -s build-{backend} -- --sources DIR` first)"
            )
        extra[SOURCES_VARIABLE] = folder
    run = nox("-s", f"build-{backend}", env=nox_env(Path("/tmp") / "dropin-state", **extra))
    assert run.returncode == 0, run.output[-3000:]
    return f"ghcr.io/{TEST_OWNER}/dask-gateway-ci-{backend}:latest"


def exec_(container, command, *, user="root", workdir="/working") -> str:
    result = container.exec_run(command, user=user, workdir=workdir)
    output = result.output.decode(errors="replace")
    print(f"$ {' '.join(command)}  -> {result.exit_code}\n{output[-3000:]}")
    assert result.exit_code == 0, f"{command} exited {result.exit_code}"
    return output


@pytest.mark.parametrize("backend", sorted(UPSTREAM))
def test_image_works_with_upstreams_scripts(engine, backend, tmp_path):
    way = UPSTREAM[backend]
    declared = ALL[backend]
    image = image_for(engine, backend)
    source = checkout(tmp_path / "dask-gateway", backend)
    volumes, environment = trust.forwarded(load_settings().forwarded)
    volumes[str(source)] = {"bind": "/working", "mode": "rw"}
    caps = [cap for cap in way.flags if engine_grants(engine, image, cap)]
    print(f"capabilities added: {caps or 'none'} (upstream asks for {list(way.flags) or 'none'})")
    container = engine.containers.run(
        image,
        detach=True,
        remove=False,
        name=f"dropin-{backend}-{uuid.uuid4().hex[:8]}",
        hostname=declared.hostname,
        volumes=volumes,
        environment=environment,
        ports={f"{port}/tcp": ("127.0.0.1", free_port()) for port in declared.ports},
        cap_add=caps or None,
    )
    try:
        # start.sh: its signal in `docker logs`, checked every second for 30 s.
        started = time.monotonic()
        while True:
            logs = container.logs().decode(errors="replace")
            if len(re.findall(re.escape(way.signal), logs)) >= way.count:
                break
            container.reload()
            assert container.status == "running", logs[-3000:]
            assert time.monotonic() - started < 30, f"no {way.signal!r} x{way.count}:\n{logs}"
            time.sleep(1)
        print(f"{backend}: upstream's signal after {time.monotonic() - started:.1f}s")

        # install.sh -> _install.sh, as root in /working.
        exec_(container, ["pip", "install", "pip==26.*"])
        installed = exec_(container, list(way.mamba))
        assert "Successfully installed" in installed or "already satisfied" in installed
        exec_(container, ["pip", "install", "-r", "tests/requirements.txt"])

        # test.sh -> _test.sh, as dask in /working.
        report = exec_(
            container,
            ["python", "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests"],
            user="dask",
        )
        assert re.search(r"\d+ passed", report) and " failed" not in report

        # print_logs.sh: every path it reads is there.
        exec_(container, ["supervisorctl", "status"])
        for path in way.logs:
            exec_(container, ["test", "-r", path])
        assert container.logs()  # pbs's print_logs.sh is `docker logs pbs`
    finally:
        container.remove(force=True)
