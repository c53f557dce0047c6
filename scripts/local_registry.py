"""A registry on this machine: Debian's `docker-registry` with htpasswd auth on loopback.

For the tests of publishing and for local runs of the workflows (it stands
in for ghcr.io). Distribution 2.x serves plain HTTP on 127.0.0.1, which
Docker treats as an allowed insecure registry (Podman: see .ci/podman.sh).
Its storage is the folder it is given, so it can outlive one run.

    registry = LocalRegistry(Path("/tmp/reg"), "me", "a-token").start()
    registry.manifest_digest("dask/dask-gateway-ci-slurm", "latest")
    registry.stop()
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import UserError

# Docker schema 2 and OCI: an engine with the containerd image store pushes OCI
# manifests, which the registry serves only to a client that accepts them.
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    )
)
REGISTRY_BINARY = "docker-registry"
ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]*\] "[A-Z]+ /', re.M)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1:<free port>, one user with a token."""

    def __init__(self, root: Path, user: str, token: str, port: int | None = None):
        self.root = root
        self.user = user
        self.token = token
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = root / "registry.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalRegistry:
        for tool in (REGISTRY_BINARY, "htpasswd"):
            if shutil.which(tool) is None:
                raise UserError(
                    f"{tool} not found; install it with "
                    "`apt-get install -y docker-registry apache2-utils`"
                )
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
        said = self.log_path.read_text()[-2000:].strip().splitlines() or ["no output"]
        raise UserError(f"{REGISTRY_BINARY} did not start on {self.address}: {said[-1]}")

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
        """Docker-Content-Digest of name:tag, or None when there is no such tag."""
        found = self.manifest(name, tag)
        return found[0] if found else None

    def manifest(self, name: str, tag: str) -> tuple[str, dict] | None:
        """(digest, manifest) of name:tag, or None when there is no such tag."""
        try:
            with self._request(f"/v2/{name}/manifests/{tag}", accept=MANIFEST_TYPES) as response:
                return response.headers["Docker-Content-Digest"], json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def labels(self, name: str, tag: str) -> dict[str, str]:
        """The image config's labels of name:tag (a single-platform manifest)."""
        found = self.manifest(name, tag)
        if found is None:
            return {}
        with self._request(f"/v2/{name}/blobs/{found[1]['config']['digest']}") as response:
            return (json.load(response).get("config") or {}).get("Labels") or {}

    def tags(self, name: str) -> list[str]:
        try:
            with self._request(f"/v2/{name}/tags/list") as response:
                return sorted(json.load(response).get("tags") or [])
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return []
            raise

    def repositories(self) -> list[str]:
        with self._request("/v2/_catalog") as response:
            return json.load(response).get("repositories") or []

    def requests_seen(self) -> int:
        """HTTP requests the registry has logged so far (its access log lines)."""
        if not self.log_path.exists():
            return 0
        return len(ACCESS_LINE.findall(self.log_path.read_text()))
