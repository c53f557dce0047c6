"""Test helpers: a real, throwaway Docker registry with basic auth, and the engine check.

The registry is Debian's `docker-registry` (distribution 2.x) serving plain
HTTP on 127.0.0.1, which Docker treats as an allowed insecure registry, with
htpasswd auth (`htpasswd` from apache2-utils). Its storage lives in a pytest
tmp_path, so nothing outlives the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
REGISTRY_BINARY = "docker-registry"
ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]*\] "[A-Z]+ /', re.M)


def unavailable(reason: str) -> None:
    """Fail when CI=true (a CI that silently skips proves nothing), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def docker_client():
    """A client of the engine this machine runs, or fail/skip as `unavailable` says."""
    from scripts.engine import connect
    from scripts.errors import EngineUnavailable

    try:
        return connect(timeout=120)
    except EngineUnavailable as error:
        unavailable(str(error))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1:<free port>, one user with a token."""

    def __init__(self, root: Path, user: str, token: str):
        self.root = root
        self.user = user
        self.token = token
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalRegistry:
        for tool in (REGISTRY_BINARY, "htpasswd"):
            if shutil.which(tool) is None:
                unavailable(f"{tool} not installed (apt-get install docker-registry apache2-utils)")
        self.root.mkdir(parents=True, exist_ok=True)
        htpasswd = self.root / "htpasswd"
        entry = subprocess.run(
            ["htpasswd", "-Bbn", self.user, self.token],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        htpasswd.write_text(entry)
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.address}\n  secret: publishtest-{self.port}\n"
            f"auth:\n  htpasswd:\n    realm: publishtest\n    path: {htpasswd}\n"
        )
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._status("/v2/", auth=False) == 401:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"registry did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- the registry's HTTP API, as a client other than Docker sees it -----------

    def _request(self, path: str, *, auth: bool = True, accept: str | None = None):
        request = urllib.request.Request(f"http://{self.address}{path}")
        if auth:
            pair = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        if accept:
            request.add_header("Accept", accept)
        # Never through a proxy: the registry is on loopback.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return opener.open(request, timeout=10)

    def _status(self, path: str, auth: bool = True) -> int | None:
        try:
            with self._request(path, auth=auth) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def manifest_digest(self, name: str, tag: str) -> str | None:
        """Docker-Content-Digest of name:tag (schema 2), or None when there is no such tag."""
        try:
            with self._request(f"/v2/{name}/manifests/{tag}", accept=MANIFEST_V2) as response:
                return response.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def repositories(self) -> list[str]:
        with self._request("/v2/_catalog") as response:
            return json.load(response).get("repositories") or []

    def requests_seen(self) -> int:
        """HTTP requests the registry has logged so far (its access log lines)."""
        if not self.log_path.exists():
            return 0
        return len(ACCESS_LINE.findall(self.log_path.read_text()))


class DenyingLookups:
    """A proxy in front of a LocalRegistry that refuses manifest look-ups, as ghcr.io does.

    ghcr.io answers `denied` to a token that may push a package but not read
    it yet (every package before its first push). Pushes pass through; a
    GET/HEAD of /v2/<name>/manifests/<ref> gets 403 DENIED. Docker treats
    127.0.0.1:<port> as an allowed insecure registry, like the real one.
    """

    MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")
    HOP_BY_HOP = frozenset({"connection", "transfer-encoding", "keep-alive", "content-length"})

    def __init__(self, upstream: LocalRegistry):
        import http.server
        import threading

        self.upstream = upstream
        self.denied = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet test output
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _relay(self) -> None:
                import http.client

                body = self._body()
                if self.command in ("GET", "HEAD") and proxy.MANIFEST.match(
                    self.path.split("?")[0]
                ):
                    proxy.denied += 1
                    answer = (
                        b'{"errors":[{"code":"DENIED","message":'
                        b'"requested access to the resource is denied"}]}'
                    )
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    if self.command == "GET":
                        self.wfile.write(answer)
                    return
                connection = http.client.HTTPConnection(proxy.upstream.address, timeout=60)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP_BY_HOP
                }
                headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in proxy.HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DenyingLookups:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def engine_grants(engine, image: str, capability: str) -> bool:
    """Whether this engine can start a container of `image` with `capability` added."""
    from docker.errors import APIError

    container = engine.containers.create(image, ["true"], cap_add=[capability], entrypoint=[])
    try:
        container.start()
    except APIError:
        return False
    finally:
        container.remove(force=True)
    return True
