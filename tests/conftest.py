"""Shared fixtures: the real Docker engine (a failure, not a skip, when CI=true)."""

from __future__ import annotations

import pytest

from tests.registry import docker_client


@pytest.fixture(scope="session")
def engine():
    """A docker client of the engine on this machine."""
    return docker_client()


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
