"""Host ports for a started container: which ones, and who holds them if taken.

Host ports are shared by every engine and process on the machine. The tests
run inside the container and need none; the ports are for a person who
wants to look at the services. So they can be moved or turned off per run:

    nox -s start -- slurm --ports +10000      # 18000, 18786, 18088
    DASK_GATEWAY_CI_PORTS=none nox -s start -- slurm
"""

from __future__ import annotations

import errno
import re
import socket

from .engine import Client, list_containers
from .errors import UserError
from .labels import STARTED_LABEL
from .settings import PORTS_VARIABLE

LOOPBACK = "127.0.0.1"
SPEC = re.compile(r"^(?:none|\+\d{1,5})$")


def plan(declared: tuple[int, ...], option: str | None, configured: str = "") -> dict[int, int]:
    """Container port -> host port for this run (--ports, else `configured`: Settings.ports,
    $DASK_GATEWAY_CI_PORTS).

    Raises UserError for a spec other than none or +N, or a port above 65535.
    """
    spec = option if option is not None else configured
    where = "--ports" if option is not None else PORTS_VARIABLE
    spec = spec.strip()
    if not spec:
        return {port: port for port in declared}
    if not SPEC.match(spec):
        raise UserError(f"{where} {spec!r}: use none (no host ports) or +N (declared port + N)")
    if spec == "none":
        return {}
    offset = int(spec[1:])
    moved = {port: port + offset for port in declared}
    too_high = [host for host in moved.values() if host > 65535]
    if too_high:
        raise UserError(f"{where} {spec}: host port {too_high[0]} is above 65535")
    return moved


def _engine_is_local(docker_host: str) -> bool:
    return not docker_host or docker_host.startswith("unix://")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError as error:
            return error.errno != errno.EADDRINUSE
    return True


def holder(client: Client, port: int, docker_host: str = "") -> str | None:
    """Who holds host port `port`: a container of this engine, another process, or None.

    `docker_host` (Settings.docker_host): another process is looked for only
    when the engine is on this machine.
    """
    for container in list_containers(client):
        if port in container.host_ports:
            backend = container.labels.get(STARTED_LABEL)
            owner = f" (our {backend} container)" if backend else ""
            return f"container {container.name}{owner}"
    if _engine_is_local(docker_host) and not _bindable(port):
        return "another process on this machine (or another Docker engine)"
    return None


def check_free(
    client: Client, planned: dict[int, int], option_hint: str, docker_host: str = ""
) -> None:
    """Raises UserError naming the holder and the fix when a planned host port is taken."""
    for container_port, host_port in planned.items():
        taken_by = holder(client, host_port, docker_host)
        if taken_by is None:
            continue
        raise UserError(
            f"host port {host_port} (for {container_port}) is taken by {taken_by}; free it, or "
            f"move ours with {option_hint} +10000, or turn them off with {option_hint} none "
            f"(or set {PORTS_VARIABLE}): the tests run inside the container and need no host port"
        )
