"""Shared fixtures: the real Docker engine (a failure, not a skip, when CI=true), and guards."""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.nox_runner import nox, nox_env
from tests.registry import docker_client

# Host ports are shared by everything on the machine. The suite publishes the
# declared ports moved as DASK_GATEWAY_CI_PORTS says (+N, as for any session),
# or by DEFAULT_OFFSET when it is not set; `none` publishes none, except in
# the tests of port handling, which need some.
DEFAULT_OFFSET = 20000


def _suite_ports(environ=os.environ) -> tuple[str, int]:
    spec = environ.get("DASK_GATEWAY_CI_PORTS", "").strip()
    if re.fullmatch(r"\+\d+", spec):
        return spec, int(spec[1:])
    return (spec or f"+{DEFAULT_OFFSET}"), DEFAULT_OFFSET


SUITE_PORTS, PORT_OFFSET = _suite_ports()
# What the tests of port handling publish at (SUITE_PORTS when it moves ports).
PUBLISHED_PORTS = f"+{PORT_OFFSET}"
# Containers that tests make themselves (not through a session) carry this.
TEST_LABEL = "io.github.dask-gateway-ci.test"


# Tests that use these need an engine: marked `docker` whatever their module says,
# so that `-m "not docker"` is exactly the engine-free part of the suite.
ENGINE_FIXTURES = frozenset({"engine", "built", "client", "engine_ok", "act", "tiny"})


def pytest_collection_modifyitems(items):
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(autouse=True)
def secrets_of_this_test_only():
    """What a test masks (tokens, forwarded passwords) is not masked in the next one."""
    from scripts import log

    before = set(log._secrets)
    yield
    log._secrets.intersection_update(before)


@pytest.fixture(scope="session")
def engine():
    """A docker client of the engine on this machine."""
    return docker_client()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """nox's environment for a module: its own state dir, the suite's host ports."""
    return nox_env(tmp_path_factory.mktemp("state"), DASK_GATEWAY_CI_PORTS=SUITE_PORTS)


@pytest.fixture(scope="module")
def built(engine, env):
    """The slurm image, built (from cache, mostly) by nox."""
    run = nox("-s", "build-slurm", env=env)
    assert run.returncode == 0, run.output[-3000:]
    return run


@pytest.fixture
def clean(engine, env, built):
    """No slurm container before; after `stop`, nothing else of ours is left (the promise)."""
    from tests.nox_runner import our_containers

    nox("-s", "stop-slurm", env=env)
    before = our_containers(engine)
    yield
    nox("-s", "stop-slurm", env=env)
    left = our_containers(engine) - before
    assert not left, f"left behind: {left}"


def _ours(container) -> bool:
    """Made by this project: a session (its label), from our images, or by a test."""
    from scripts.labels import BACKEND_LABEL, STARTED_LABEL

    labels = container.labels or {}
    return any(key in labels for key in (STARTED_LABEL, BACKEND_LABEL, TEST_LABEL))


@pytest.fixture(scope="session")
def _guard_client():
    from scripts.engine import connect
    from scripts.errors import EngineUnavailable

    try:
        return connect(timeout=60)
    except EngineUnavailable:
        return None


@pytest.fixture(autouse=True)
def nothing_left_behind(request, _guard_client):
    """No test leaves a container of ours behind, in any state (docs/failures.md's promise).

    Only containers of this project count (sessions' and tests' labels, our
    images'): someone else's database container does not fail the suite.
    """
    client = _guard_client
    if client is None:
        yield
        return
    before = {c.id for c in client.containers.list(all=True, sparse=True)}
    yield
    left = [c.name for c in client.containers.list(all=True) if c.id not in before and _ours(c)]
    assert not left, f"{request.node.nodeid} left containers behind: {left}"


def _dangling_made_since(client, since: float, before: set[str]) -> list[str]:
    """Untagged images made (built, not loaded or pulled) since `since` that were not before."""
    from datetime import datetime

    found = []
    for image in client.images.list(filters={"dangling": True}):
        # "2026-11-27T17:44:12.123456789Z" (Docker), with an offset (Podman): to the second.
        stamp = re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", str(image.attrs.get("Created", "")))
        made = datetime.fromisoformat(stamp.group(0) + "+00:00").timestamp() if stamp else since
        if image.id in before or made < since - 1:
            continue
        title = (image.labels or {}).get("org.opencontainers.image.title", "no title")
        found.append(f"{image.id[:19]} ({title})")
    return found


@pytest.fixture
def untagged_builds_removed(_guard_client):
    """For tests whose builds leave untagged images on purpose (a `--target` stage,
    the steps before a build made to fail): those the test made are removed after."""
    from scripts.images import untag

    engine = _guard_client
    if engine is None:
        yield
        return
    before = {i.id for i in engine.images.list(filters={"dangling": True})}
    yield
    for _ in range(3):  # removing a child can leave its parent dangling in turn
        for image in engine.images.list(filters={"dangling": True}):
            if image.id not in before:
                untag(engine, image.id)


@pytest.fixture(autouse=True)
def no_image_left_behind(request, _guard_client):
    """No test leaves an image it built untagged (dangling); build cache may stay."""
    client = _guard_client
    if client is None:
        yield
        return
    started = time.time()
    before = {i.id for i in client.images.list(filters={"dangling": True})}
    yield
    left = _dangling_made_since(client, started, before)
    assert not left, f"{request.node.nodeid} left untagged images behind: {left}"


@pytest.fixture(scope="module")
def backend_image(engine, env):
    """build(NAME): `nox -s build-NAME` (mostly from cache), once per module; its local ID.

    A backend whose build downloads and compiles (pbs) is taken from the project's
    own image when the engine has it: `.ci/run` builds that once, from this checkout,
    and loads it into every engine, where a build of our own would compile it again
    without cache (10 minutes on Docker 28). Else it is built, from
    DASK_GATEWAY_CI_SOURCES when that is set: the image is what is tested here, not
    the download (tests/test_sources.py tests that).
    """
    from scripts.backends import load_all
    from scripts.settings import SOURCES_VARIABLE, load_settings

    declared, built = load_all(), {}
    sources = os.environ.get(SOURCES_VARIABLE)

    def build(name: str) -> str:
        if name not in built:
            backend = declared[name]
            reference = load_settings(environ=env).reference(backend)
            project = load_settings(environ={}).reference(backend)
            if backend.downloads and engine.images.list(name=project):
                repository, _, tag = reference.rpartition(":")
                engine.images.get(project).tag(repository, tag)
            else:
                given = {SOURCES_VARIABLE: sources} if sources and backend.downloads else {}
                run = nox("-s", f"build-{name}", env={**env, **given})
                assert run.returncode == 0, run.output[-3000:]
            built[name] = engine.images.get(reference).id
        return built[name]

    return build


@pytest.fixture
def started_backend(engine, env):
    """start(NAME): `nox -s start-NAME` from scratch; its container. Stopped after the test."""
    from scripts.backends import load_all

    declared, started = load_all(), []

    def start(name: str):
        nox("-s", f"stop-{name}", env=env)
        started.append(name)
        run = nox("-s", f"start-{name}", env=env)
        assert run.returncode == 0, run.output[-3000:]
        return engine.containers.get(declared[name].container_name)

    yield start
    for name in started:
        nox("-s", f"stop-{name}", env=env)


def wait_for(condition, what: str, timeout: float = 120.0, every: float = 0.05):
    """Poll `condition` until it is true (an observable state, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
