"""The one place that connects to the Docker engine, and the one boundary for its errors."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

from . import log
from .errors import EngineUnavailable, UserError, first_line

START_HINT = (
    "start it (Debian: `apt-get install -y docker.io && dockerd &`, "
    "or `sudo systemctl start docker`) or point DOCKER_HOST at a running engine"
)

# What an engine error usually means, and what fixes it. First match wins.
FIXES = (
    (
        r"port is already allocated|address already in use",
        "a host port is taken: free it, or move ours with --ports +N or turn them off with "
        "--ports none (or DASK_GATEWAY_CI_PORTS)",
    ),
    (
        r"apply caps|invalid CapAdd|capabilit",
        "this engine cannot grant a capability the container asks for (see run.capabilities "
        "in the backend.toml)",
    ),
    (r"no such image|image not known", "build it first: `nox -s build -- BACKEND`"),
    (r"target stage .* could not be found|failed to reach build target", "see --target"),
    (r"no space left on device", "free disk space, e.g. `docker system prune`"),
    (
        r"conflict.*(container name|is already in use)|name .* is already in use",
        "a container of that name exists: `nox -s stop -- BACKEND` removes it",
    ),
    (r"timed out|timeout", "the engine did not answer in time; is it overloaded?"),
    (
        r"connection (aborted|refused|reset)|broken pipe|remote end closed",
        f"the Docker engine stopped answering; {START_HINT}",
    ),
)


def connect(timeout: int = 600):
    """A docker client whose engine answered a ping, or EngineUnavailable."""
    import docker
    from docker.errors import DockerException

    # nox logs at DEBUG; the HTTP chatter of every API call is noise.
    for noisy in ("urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as error:
        raise EngineUnavailable(
            f"Docker engine not reachable at {where} ({first_line(error)}); {START_HINT}"
        ) from None
    return client


# Image stores, which differ in what users see: IDs, sizes, build cache.
CLASSIC, CONTAINERD, PODMAN = "classic", "containerd", "podman"


def image_store(client) -> str:
    """CLASSIC (Docker's graph drivers), CONTAINERD (Docker's containerd image
    store, the default of fresh Docker 29 installs) or PODMAN."""
    components = client.version().get("Components") or []
    if any("podman" in str(c.get("Name", "")).lower() for c in components):
        return PODMAN
    status = dict(tuple(pair) for pair in client.info().get("DriverStatus") or [] if len(pair) == 2)
    return CONTAINERD if "containerd.snapshotter" in status.get("driver-type", "") else CLASSIC


def image_id(client, reference: str) -> str | None:
    """The local ID of `reference` (a tag or an ID), or None when it is not here."""
    from docker.errors import NotFound  # Podman's 404 is not always an ImageNotFound

    try:
        return client.images.get(reference).id
    except NotFound:
        return None


def engine_id(client) -> str:
    """The engine's own ID: Docker's daemon ID; for Podman, whose ID is new at every
    `info`, its host name and version."""
    info = client.info()
    if image_store(client) == PODMAN or not info.get("ID"):
        return f"podman-{info.get('Name', '')}-{info.get('ServerVersion', '')}"
    return str(info["ID"])


class LazyClient:
    """A docker client that connects on first use, so that every check of the
    user's input that needs no engine runs (and can fail) before one is asked."""

    def __init__(self, timeout: int = 600):
        self._timeout = timeout
        self._client = None

    def __getattr__(self, name: str):
        if self._client is None:
            self._client = connect(self._timeout)
        return getattr(self._client, name)


def explain(error: BaseException) -> str:
    """One line: what the engine said, then the fix it usually needs."""
    text = first_line(error)
    for pattern, fix in FIXES:
        if re.search(pattern, text, re.I):
            return f"{text}; {fix}"
    return text


@contextlib.contextmanager
def engine_errors(doing: str, backend: str | None = None) -> Iterator[None]:
    """Turn any Docker SDK or transport error raised while `doing` into one UserError line.

    `backend` fills in the commands the fix names (`nox -s stop -- slurm`).
    """
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    try:
        yield
    except (DockerException, RequestException) as error:
        said = explain(error).replace("BACKEND", backend or "BACKEND")
        raise UserError(log.censor(f"{doing} failed: {said}")) from None
