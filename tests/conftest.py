"""Shared fixtures: the real Docker engine (a failure, not a skip, when CI=true)."""

from __future__ import annotations

import pytest

from tests.nox_runner import nox, nox_env
from tests.registry import docker_client

# Host ports are shared by everything on the machine: tests that start
# containers publish theirs at the declared port + PORT_OFFSET.
PORT_OFFSET = 20000


@pytest.fixture(scope="session")
def engine():
    """A docker client of the engine on this machine."""
    return docker_client()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """nox's environment for a module: its own state dir, moved host ports."""
    return nox_env(tmp_path_factory.mktemp("state"), DASK_GATEWAY_CI_PORTS=f"+{PORT_OFFSET}")


@pytest.fixture(scope="module")
def built(engine, env):
    """The slurm image, built (from cache, mostly) by nox."""
    run = nox("-s", "build-slurm", env=env)
    assert run.returncode == 0, run.output[-3000:]
    return run


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """No test leaves a container behind, in any state (docs/failures.md's promise)."""
    from scripts.engine import connect
    from scripts.errors import EngineUnavailable

    try:
        client = connect(timeout=60)
    except EngineUnavailable:
        yield
        return
    before = {c.id for c in client.containers.list(all=True)}
    yield
    left = [c.name for c in client.containers.list(all=True) if c.id not in before]
    assert not left, f"the tests left containers behind: {left}"
