"""Shared fixtures: the real Docker engine (a failure, not a skip, when CI=true)."""

from __future__ import annotations

import pytest

from tests.registry import docker_client


@pytest.fixture(scope="session")
def engine():
    """A docker client of the engine on this machine."""
    return docker_client()
