"""Test helpers: the engine check, a registry that denies look-ups, capability probes.

The registry itself is scripts/local_registry.py (also used by `nox -s
workflows`); a test keeps its storage in a pytest tmp_path, so nothing
outlives the test.
"""

from __future__ import annotations

import re

import pytest

from scripts.local_registry import LocalRegistry, free_port

__all__ = [
    "DenyingLookups",
    "LocalRegistry",
    "docker_client",
    "engine_grants",
    "exec_ok",
    "free_port",
]


def unavailable(reason: str) -> None:
    """Fail: a suite that skips what it cannot run says "passed" about what never ran.

    The tests that need no engine are one option away:
    `nox -s tests -- -m "not docker"` (README, "Tests and benchmarks").
    """
    pytest.fail(
        f"{reason}; for the tests that need no engine: nox -s tests -- -m 'not docker'",
        pytrace=False,
    )


def docker_client():
    """A client of the engine this machine runs, or a failure naming the engine-free subset."""
    from scripts.engine import connect
    from scripts.errors import EngineUnavailable

    try:
        return connect(timeout=120)
    except EngineUnavailable as error:
        unavailable(str(error))


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
            # A TLS hello is garbage to us; answer it with an HTTP status line (not
            # HTTP/0.9's bare page), as real registries do: the containerd image
            # store falls back from HTTPS to HTTP only on such an answer.
            default_request_version = "HTTP/1.0"

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
    """Whether this engine can start a container of `image` with `capability` in effect.

    Refused at create (Docker 23+), at start (20.10), or dropped without a
    word (Podman): all three are "no". Nothing is left behind either way.
    """
    from docker.errors import APIError

    from scripts import capabilities

    container = None
    try:
        container = engine.containers.create(
            image,
            ["cat", "/proc/self/status"],
            cap_add=[capability],
            entrypoint=[],
            labels={"io.github.dask-gateway-ci.test": "capability-probe"},
        )
        container.start()
        container.wait(timeout=60)
        status = container.logs().decode(errors="replace")
    except APIError as error:
        if capabilities.refused(str(error)):
            return False
        raise
    finally:
        if container is not None:
            container.remove(force=True)
    return not capabilities.missing([capability], status)


def exec_ok(container, command: str, user: str = "root") -> str:
    """`bash -c COMMAND` in the container; its output, asserting exit 0."""
    result = container.exec_run(["bash", "-c", command], user=user)
    output = result.output.decode(errors="replace")
    assert result.exit_code == 0, output
    return output
