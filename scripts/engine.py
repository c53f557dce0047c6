"""The one place that talks to the Docker engine through docker-py, and the one
boundary for its errors.

No other module imports docker-py or reads its raw `attrs`: containers and
images are seen through `Container` and `Image`, which carry the few fields
this project reads, and docker-py's and requests' exceptions are translated
here (`translated`), keeping their text, into this module's own:

    EngineError
    +-- DockerError          docker-py's own (DockerException)
    |   +-- APIError         the engine answered with an error status
    |       +-- NotFound     no such container or image
    +-- TransportError       the HTTP exchange failed (requests)
        +-- Disconnected     the engine dropped or refused the connection
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from . import log
from .errors import EngineUnavailable, UserError, first_line

if TYPE_CHECKING:
    from docker import DockerClient

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
    # docker-py's from_env reads DOCKER_HOST (and its TLS variables) itself; the
    # message names what it read, whoever calls (sessions, workflows, benchmarks).
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


def image_id(client: Client, reference: str) -> str | None:
    """The local ID of `reference` (a tag or an ID), or None when it is not here."""
    image = inspect_image(client, reference)
    return image.id if image is not None else None


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


# What every function here takes: a connected docker-py client, or a
# LazyClient standing in for one (docker-py is imported only when connecting).
Client: TypeAlias = "DockerClient | LazyClient"


def explain(error: BaseException) -> str:
    """One line: what the engine said, then the fix it usually needs."""
    text = first_line(error)
    for pattern, fix in FIXES:
        if re.search(pattern, text, re.I):
            return f"{text}; {fix}"
    return text


@contextlib.contextmanager
def engine_errors(doing: str, backend: str | None = None) -> Iterator[None]:
    """Turn any engine or transport error raised while `doing` into one UserError line.

    `backend` fills in the commands the fix names (`nox -s stop -- slurm`).
    """
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    try:
        yield
    except (EngineError, DockerException, RequestException) as error:
        said = explain(error).replace("BACKEND", backend or "BACKEND")
        raise UserError(log.censor(f"{doing} failed: {said}")) from None


# -- errors ----------------------------------------------------------------------


class EngineError(Exception):
    """The engine, or the way to it, failed; the text is what docker-py said."""

    def __init__(self, text: str, explanation: Any = None, status_code: int | None = None):
        super().__init__(text)
        self.explanation = explanation  # the engine's own words, when it answered
        self.status_code = status_code


class DockerError(EngineError):
    """docker-py's own errors (docker.errors.DockerException)."""


class APIError(DockerError):
    """The engine answered with an error status."""


class NotFound(APIError):
    """No such container or image (Podman's 404 included, ImageNotFound or not)."""


class TransportError(EngineError):
    """The HTTP exchange with the engine failed (requests' RequestException)."""


class Disconnected(TransportError):
    """The engine dropped or refused the connection (it stopped or restarted)."""


def _translation(error: BaseException) -> EngineError | None:
    from docker.errors import APIError as DockerAPIError
    from docker.errors import DockerException
    from docker.errors import NotFound as DockerNotFound
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import RequestException

    kinds: tuple[tuple[type, type[EngineError]], ...] = (
        (DockerNotFound, NotFound),
        (DockerAPIError, APIError),
        (DockerException, DockerError),
        (RequestsConnectionError, Disconnected),
        (RequestException, TransportError),
    )
    for theirs, ours in kinds:
        if isinstance(error, theirs):
            return ours(
                str(error),
                explanation=getattr(error, "explanation", None),
                status_code=getattr(error, "status_code", None),
            )
    return None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """docker-py's and requests' exceptions raised inside, as this module's (same text)."""
    try:
        yield
    except EngineError:
        raise
    except Exception as error:
        ours = _translation(error)
        if ours is None:
            raise
        raise ours from error


def _streamed(produce: Callable[[], Iterator]) -> Iterator:
    """The items of a streamed answer, its errors translated as they come."""
    with translated():
        yield from produce()


# -- containers ------------------------------------------------------------------


class Container:
    """A container as this project sees it: the fields it reads, the actions it takes."""

    def __init__(self, raw):
        self._raw = raw  # docker-py's Container

    def __repr__(self) -> str:
        return f"Container({self.name!r})"

    @property
    def id(self) -> str:
        return self._raw.id

    @property
    def name(self) -> str:
        return self._raw.name

    @property
    def status(self) -> str:
        """created, running, exited, ... as of the last look (reload)."""
        return self._raw.status

    @property
    def labels(self) -> dict[str, str]:
        return self._raw.labels or {}

    @property
    def exit_code(self) -> int | None:
        return (self._raw.attrs.get("State") or {}).get("ExitCode")

    @property
    def environment(self) -> list[str]:
        """Its environment as KEY=VALUE lines."""
        return (self._raw.attrs.get("Config") or {}).get("Env") or []

    @property
    def mounts(self) -> dict[str, str]:
        """Where in the container -> what is mounted there (a host path, a volume)."""
        return {
            str(m.get("Destination")): str(m.get("Source"))
            for m in self._raw.attrs.get("Mounts") or []
        }

    @property
    def host_ports(self) -> set[int]:
        """The host ports it publishes (or asked for: a created one holds none yet)."""
        found = set()
        bindings = (self._raw.attrs.get("HostConfig") or {}).get("PortBindings") or {}
        for entries in bindings.values():
            for binding in entries or []:
                if str(binding.get("HostPort", "")).isdigit():
                    found.add(int(binding["HostPort"]))
        return found

    def reload(self) -> None:
        with translated():
            self._raw.reload()

    def start(self) -> None:
        with translated():
            self._raw.start()

    def stop(self, timeout: int) -> None:
        with translated():
            self._raw.stop(timeout=timeout)

    def remove(self) -> None:
        """Remove it with its anonymous volumes, running or not. Raises NotFound."""
        with translated():
            self._raw.remove(force=True, v=True)

    def logs(self, tail: int | None = None) -> str:
        """Its output: the last `tail` lines, or all of it."""
        with translated():
            return self._raw.logs(tail="all" if tail is None else tail).decode(errors="replace")

    def put_archive(self, path: str, data: bytes) -> bool:
        with translated():
            return self._raw.put_archive(path, data)

    def get_archive(self, path: str) -> bytes:
        """A tar of `path` in the container. Raises NotFound when it is not there."""
        with translated():
            chunks, _ = self._raw.get_archive(path)
            return b"".join(chunks)

    def exec_create(
        self,
        argv: list[str],
        *,
        user: str = "root",
        workdir: str | None = None,
        environment: dict[str, str] | None = None,
    ) -> str:
        """A prepared exec of `argv`; its ID. Raises APIError."""
        with translated():
            api = self._raw.client.api
            return api.exec_create(
                self.id, argv, user=user, workdir=workdir, environment=environment
            )["Id"]

    def exec_output(self, exec_id: str) -> Iterator[bytes]:
        """Start a prepared exec; its output as it comes."""
        return _streamed(lambda: self._raw.client.api.exec_start(exec_id, stream=True))

    def exec_exit_code(self, exec_id: str) -> int | None:
        """A finished exec's exit code; None when the container went away under it."""
        with translated():
            return self._raw.client.api.exec_inspect(exec_id).get("ExitCode")


def get_container(client: Client, name: str) -> Container | None:
    """The container called `name` (or with that ID), running or not, or None."""
    try:
        with translated():
            return Container(client.containers.get(name))
    except NotFound:
        return None


def list_containers(client: Client) -> list[Container]:
    """The running containers."""
    with translated():
        return [Container(raw) for raw in client.containers.list()]


def create_container(client: Client, image: str, **options) -> Container:
    """A created (not started) container; `options` are docker-py's. Raises APIError."""
    with translated():
        return Container(client.containers.create(image, **options))


# -- images ----------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A local image as this project reads it (the engine's inspect, or its listing)."""

    id: str
    architecture: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    parent: str = ""  # the classic builder's parent (a build step's image)
    created: str = ""
    # The store's `Size`: unpacked on the classic store, the compressed content
    # on the containerd store.
    size: int | None = None
    # The unpacked size of each available platform image (containerd store,
    # API 1.48+; empty elsewhere).
    platform_sizes: tuple[int, ...] = ()


def _image(data: dict) -> Image:
    manifests = [
        m
        for m in data.get("Manifests") or []
        if m.get("Kind", "image") == "image" and m.get("Available", True)
    ]
    return Image(
        id=data.get("Id") or "",
        architecture=data.get("Architecture") or "",
        labels=(data.get("Config") or {}).get("Labels") or data.get("Labels") or {},
        repo_tags=tuple(t for t in data.get("RepoTags") or [] if t != "<none>:<none>"),
        repo_digests=tuple(data.get("RepoDigests") or []),
        parent=data.get("Parent") or data.get("ParentId") or "",
        created=str(data.get("Created") or ""),
        size=data.get("Size"),
        platform_sizes=tuple(
            ((m.get("ImageData") or {}).get("Size") or {}).get("Unpacked") or 0 for m in manifests
        ),
    )


def get_image(client: Client, reference: str, *, manifests: bool = False) -> Image:
    """The local image `reference` (a tag or an ID) names. Raises NotFound.

    `manifests` asks for the per-platform sizes (`?manifests=1`, API 1.48+;
    older engines ignore it).
    """
    with translated():
        api = client.api
        if manifests:
            url = api._url("/images/{0}/json", reference)
            return _image(api._result(api._get(url, params={"manifests": 1}), True))
        return _image(api.inspect_image(reference))


def inspect_image(client: Client, reference: str) -> Image | None:
    """The local image `reference` (a tag or an ID) names, or None when it is not here."""
    try:
        return get_image(client, reference)
    except NotFound:  # Podman's 404 is not always an ImageNotFound
        return None


def list_images(client: Client, *, name: str | None = None) -> list[Image]:
    """Local images: all of them, build steps included, or the tagged ones of repository `name`."""
    with translated():
        if name is not None:
            return [_image(raw.attrs) for raw in client.images.list(name=name)]
        return [_image(data) for data in client.api.images(all=True)]


def remove_image(
    client: Client, reference: str, *, force: bool = True, noprune: bool = False
) -> None:
    """Remove a tag, or an image by ID; `noprune` leaves its parents. Raises NotFound."""
    with translated():
        client.api.remove_image(reference, force=force, noprune=noprune)


def tag_image(client: Client, image: str, repository: str, tag: str) -> None:
    with translated():
        client.api.tag(image, repository, tag=tag)


def pull_image(client: Client, reference: str, **options) -> Image:
    """Pull `reference` (a tag or repository@digest); `options`: platform, auth_config."""
    with translated():
        return _image(client.images.pull(reference, **options).attrs)


def build(client: Client, **options) -> Iterator[dict]:
    """A classic-builder build; its decoded JSON stream. `options` are docker-py's."""
    return _streamed(lambda: client.api.build(**options))


def push(client: Client, repository: str, tag: str, auth_config: dict | None) -> Iterator[dict]:
    """A push of repository:tag; its decoded JSON stream."""
    return _streamed(
        lambda: client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=auth_config
        )
    )


def import_image(client: Client, tarball: str, reference: str) -> None:
    """`docker import` a root filesystem tar as `reference`."""
    with translated():
        # The whole reference as the repository: Podman ignores a separate tag.
        client.api.import_image_from_file(tarball, repository=reference)


def load_images(client: Client, archive: IO[bytes]) -> list[str]:
    """`docker load` an archive; the tags it restored."""
    with translated():
        return [tag for image in client.images.load(archive) for tag in image.tags]


def save_image(client: Client, reference: str) -> tuple[str, Iterator[bytes]]:
    """`docker save` one tagged image: its ID, and the archive as it comes."""
    with translated():
        raw = client.images.get(reference)
    return raw.id, _streamed(lambda: raw.save(named=reference))


def bridge_network(client: Client) -> tuple[str, str] | None:
    """The default bridge network's subnet and gateway address, or None when the
    engine has no such network.

    Docker names it "bridge" (20.10 leaves the gateway out of the answer: it
    is the subnet's first address); Podman's compatible API answers for
    "bridge" with its own default network. Raises EngineError.
    """
    try:
        with translated():
            network = client.api.inspect_network("bridge")
    except NotFound:
        return None
    for config in (network.get("IPAM") or {}).get("Config") or []:
        subnet = config.get("Subnet") or ""
        if subnet and ":" not in subnet:  # IPv4
            gateway = config.get("Gateway") or str(next(ipaddress.ip_network(subnet).hosts()))
            return subnet, gateway
    return None


def architecture(client: Client) -> str:
    """The engine's own architecture as it names it (amd64, arm64, ...), or ""."""
    with translated():
        return str(client.version().get("Arch") or "")
