"""Release archives from a folder on this machine, offered to the builds that download them.

    nox -s build-pbs -- --sources ../shared/sources
    DASK_GATEWAY_CI_SOURCES=/srv/sources nox -s build -- pbs hadoop

A backend declares each file its build downloads (`[[build.downloads]]` in
backend.toml: the build args of the file's URL and checksum, whose values
are the Dockerfile's ARG defaults). When the folder holds a file of that
name (`file`, else the last part of the URL), it is checked here against the
declared checksum, then served to that one build, with the URL build arg
pointing at it; fetch-verified in the build checks it again. A file that is
not there is downloaded from its URL, as without a folder. The output says
which, for each file.

Nothing is copied and the folder is only read: the files are served over
HTTP by this process, for the length of the build, on the address at which
the build's containers reach this machine. On Docker's default bridge that
is the bridge's gateway, an address of this machine. Podman's builds run in
this machine's own network, where the gateway of Podman's network exists only
once a container has used it; when the gateway is not an address here, the
files are served on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from . import log
from .backends import Backend, Download
from .dockerfile import all_arg_defaults, expand
from .engine import Client, bridge_network
from .errors import DeclarationError, UserError
from .settings import SOURCES_VARIABLE
from .summary import human_size

LOOPBACK = "127.0.0.1"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Wanted:
    """A declared download as one build sees it: its URL, checksum and file name."""

    download: Download
    url: str
    checksum: str  # hex digest, lower case
    file: str


@dataclass(frozen=True)
class Offer:
    """A file of the sources folder that matched its declared checksum."""

    url_arg: str
    path: Path
    size: int


def folder_of(option: str | None, configured: str, invoked_from: Path) -> Path | None:
    """--sources, else `configured` ($DASK_GATEWAY_CI_SOURCES), taken from where
    the user ran nox; None when neither is set. Raises UserError when it is
    not a folder.
    """
    value = option or configured
    if not value:
        return None
    where = "--sources" if option else SOURCES_VARIABLE
    path = (invoked_from / Path(value).expanduser()).resolve()
    if not path.is_dir():
        looked = f" (looked at {path})" if str(path) != value else ""
        raise UserError(
            f"{where} {value}: not a folder{looked}; a folder of release archives is "
            "expected, named as the builds download them"
        )
    return path


def wanted(backend: Backend, build_args: Mapping[str, str], architecture: str) -> list[Wanted]:
    """What `backend`'s build for `architecture` downloads, with `build_args` applied.

    Raises DeclarationError when a declared build arg has no default in the
    Dockerfile, or the file name cannot be told.
    """
    values = all_arg_defaults(backend.dockerfile, build_args)
    where = f"{backend.folder / 'backend.toml'}: build.downloads"
    found = []
    for download in backend.downloads:
        if download.architecture and download.architecture != architecture:
            continue
        for arg in (download.url, download.checksum):
            if not values.get(arg):
                raise DeclarationError(
                    f"{where}: {arg} is not an ARG with a default in {backend.dockerfile}"
                )
        url = values[download.url]
        file = expand(download.file, values) or unquote(urlsplit(url).path.rpartition("/")[2])
        if not file or "${" in file or "/" in file:
            raise DeclarationError(
                f"{where}: cannot tell the file name of {download.url} ({url!r}); give 'file'"
            )
        found.append(
            Wanted(download, url, "".join(values[download.checksum].split()).lower(), file)
        )
    return found


def digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, read in chunks."""
    hashed = hashlib.new(algorithm)
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            hashed.update(chunk)
    return hashed.hexdigest()


def offers(
    backend: Backend, build_args: Mapping[str, str], architecture: str, folder: Path
) -> tuple[Offer, ...]:
    """The files of `folder` that `backend`'s build will take instead of downloading them.

    Says for each declared download where the build gets it. A URL set with
    --build-arg is left as it is. Raises UserError, naming the file and both
    checksums, for a file that does not match.
    """
    found = []
    for item in wanted(backend, build_args, architecture):
        url_arg, file = item.download.url, item.file
        if url_arg in build_args:
            log.info(f"{backend.name}: {url_arg} is set (--build-arg): {file} comes from there")
            continue
        path = folder / file
        if not path.is_file():
            log.info(f"{backend.name}: {file} is not in {folder}; the build downloads {item.url}")
            continue
        size = path.stat().st_size
        algorithm = item.download.algorithm
        actual = digest(path, algorithm)
        if actual != item.checksum:
            raise UserError(
                f"{path} is not the file {backend.dockerfile} declares ({item.download.checksum}): "
                f"expected {algorithm}:{item.checksum}, got {algorithm}:{actual}; replace it "
                "with the release archive, or remove it to download it"
            )
        log.info(
            f"{backend.name}: {file} from {folder} ({human_size(size)}, {algorithm} as "
            f"declared), instead of {item.url}"
        )
        found.append(Offer(url_arg, path, size))
    return tuple(found)


def chain_offers(
    chain: list[Backend], build_args: Mapping[str, str], architecture: str, folder: Path
) -> dict[str, tuple[Offer, ...]]:
    """The offers of each build of `chain` (parents first; the last one's with
    `build_args`, the others' with their declared ones), by backend name.
    Checked before any of them is built; raises UserError as `offers` does."""
    return {
        item.name: offers(
            item,
            {**item.build_args, **(build_args if item is chain[-1] else {})},
            architecture,
            folder,
        )
        for item in chain
        if item.downloads
    }


def reachable_address(client: Client) -> str:
    """The address of this machine that the engine's build containers reach.

    The default bridge's gateway when it is an address here, else loopback
    (builds that run in this machine's network, as Podman's do).
    """
    network = bridge_network(client)
    if network is not None and _is_local(network[1]):
        return network[1]
    return LOOPBACK


def _is_local(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], files: Mapping[str, Path]):
        self.files = dict(files)
        self.sent: Counter[str] = Counter()
        super().__init__(address, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the offered files by name; nothing else."""

    server: _Server

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        name = unquote(self.path.lstrip("/"))
        path = self.server.files.get(name)
        if path is None:
            self.send_error(404)
            return
        with path.open("rb") as file:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            if body:
                with contextlib.suppress(ConnectionError):
                    shutil.copyfileobj(file, self.wfile, CHUNK)
                    self.server.sent[name] += 1

    def log_message(self, format: str, *args: object) -> None:
        pass  # what was sent is said once, after the build


@contextlib.contextmanager
def served(client: Client, offered: tuple[Offer, ...]) -> Iterator[dict[str, str]]:
    """Serve `offered` while the block runs; yields the build args that point at them.

    The server is gone when the block ends, however it ends. Raises OSError
    when no port can be had.
    """
    if not offered:
        yield {}
        return
    address = reachable_address(client)
    server = _Server((address, 0), {offer.path.name: offer.path for offer in offered})
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    base = f"http://{address}:{server.server_address[1]}"
    try:
        yield {offer.url_arg: f"{base}/{quote(offer.path.name)}" for offer in offered}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    for offer in offered:
        name = offer.path.name
        if server.sent[name]:
            size = human_size(offer.size)
            log.info(f"sent {name} ({size}) from {offer.path.parent} to the build")
        else:
            log.info(f"the build did not fetch {name} (its download step came from the cache)")
