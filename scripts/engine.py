"""The one place that connects to the Docker engine."""

from __future__ import annotations

import logging
import os

from .errors import EngineUnavailable

START_HINT = (
    "start it (Debian: `apt-get install -y docker.io && dockerd &`, "
    "or `sudo systemctl start docker`) or point DOCKER_HOST at a running engine"
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
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise EngineUnavailable(
            f"Docker engine not reachable at {where} ({reason}); {START_HINT}"
        ) from None
    return client
