"""Look-ups asked of the registry itself: absent only when it says so, bearer tokens, retries.

A scripted HTTP server on loopback plays the registry, so every answer a
real registry (or a proxy in front of one) can give is tried, not only those
Debian's docker-registry gives.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator

import pytest

from scripts import distribution, log
from scripts import registry as registry_ops
from scripts.credentials import Credentials
from scripts.distribution import ABSENT, PRESENT, UNKNOWN, RegistryAPI
from scripts.errors import StepFailed
from scripts.settings import load_settings

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "sha256:" + "c" * 64
CHILD = "sha256:" + "d" * 64


def _error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


Answer = tuple[int, dict[str, str], bytes]


@contextlib.contextmanager
def scripted(answer: Callable[[http.server.BaseHTTPRequestHandler], Answer]) -> Iterator[list]:
    """A registry on 127.0.0.1 whose every GET is answered by `answer(request)`."""
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization", "")))
            status, headers, body = answer(self)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        seen.insert(0, f"127.0.0.1:{server.server_address[1]}")  # type: ignore[arg-type]
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def _api(seen: list, creds: Credentials | None = None) -> RegistryAPI:
    return RegistryAPI(seen[0], creds)


def test_only_the_registrys_own_unknown_codes_mean_absent():
    answers = {
        "/v2/o/i/manifests/gone": (404, {}, _error("MANIFEST_UNKNOWN", "manifest unknown")),
        "/v2/o/new/manifests/x": (404, {}, _error("NAME_UNKNOWN", "repository name not known")),
        # A 404 that is not the registry's (a proxy's page, a wrong path): unknown.
        "/v2/o/i/manifests/plain404": (404, {}, b"404 page not found"),
        "/v2/o/i/manifests/denied": (403, {}, _error("DENIED", "requested access is denied")),
    }
    with scripted(lambda r: answers[r.path]) as seen:
        api = _api(seen)
        assert api.lookup("o/i", "gone").state == ABSENT
        assert api.lookup("o/new", "x").state == ABSENT
        plain = api.lookup("o/i", "plain404")
        assert (plain.state, plain.reason) == (UNKNOWN, "HTTP 404")
        denied = api.lookup("o/i", "denied")
        assert denied.state == UNKNOWN and "DENIED" in denied.reason


def test_a_present_tag_names_every_digest_an_engine_may_call_the_image():
    manifest = json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": CONFIG}}).encode()
    index = json.dumps(
        {
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": CHILD, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": "sha256:" + "e" * 64, "platform": {"os": "unknown"}},
            ],
        }
    ).encode()
    answers = {
        "/v2/o/i/manifests/latest": (200, {"Docker-Content-Digest": "sha256:" + "a" * 64}, index),
        f"/v2/o/i/manifests/{CHILD}": (200, {"Docker-Content-Digest": CHILD}, manifest),
    }
    with scripted(lambda r: answers[r.path]) as seen:
        found = _api(seen).lookup("o/i", "latest")
    assert found.state == PRESENT and found.digest == "sha256:" + "a" * 64
    # The index (containerd store IDs), the platform manifest, the config (classic IDs);
    # the attestation entry (platform unknown) is not an image.
    assert found.identities == {"sha256:" + "a" * 64, CHILD, CONFIG}
    assert found.holds_any({CONFIG}) and not found.holds_any({"sha256:" + "f" * 64})


def test_bearer_challenge_gets_a_token_with_the_credentials_and_hides_it():
    token = "registry-token-0123456789"
    creds = Credentials(username="me", token="secret-password-xyz", source="TEST")

    def answer(request) -> Answer:
        if request.path.startswith("/token"):
            assert "scope=repository%3Ao%2Fi%3Apull" in request.path
            assert request.headers["Authorization"].startswith("Basic ")
            return 200, {}, json.dumps({"token": token}).encode()
        if request.headers.get("Authorization") != f"Bearer {token}":
            realm = f"http://{request.headers['Host']}/token"
            challenge = f'Bearer realm="{realm}",service="test",scope="repository:o/i:pull"'
            return 401, {"WWW-Authenticate": challenge}, _error("UNAUTHORIZED", "auth")
        return 404, {}, _error("MANIFEST_UNKNOWN", "manifest unknown")

    with scripted(answer) as seen:
        assert _api(seen, creds).lookup("o/i", "x").state == ABSENT
    assert [path.split("?")[0] for path, _ in seen[1:]] == [
        "/v2/o/i/manifests/x",
        "/token",
        "/v2/o/i/manifests/x",
    ]
    assert log.censor(f"got {token}") == f"got {log.CENSORED}"


def test_refused_credentials_are_one_line_naming_what_to_set(monkeypatch):
    creds = Credentials(username="me", token="wrong-password-123", source="TEST_TOKEN")

    def answer(request) -> Answer:
        return 401, {"WWW-Authenticate": 'Basic realm="r"'}, _error("UNAUTHORIZED", "no")

    with scripted(answer) as seen:
        api = _api(seen, creds)
        with pytest.raises(registry_ops.Unauthorized):
            registry_ops.lookup(api, "o/i", "x", load_settings())
        with pytest.raises(Exception) as raised:
            registry_ops.authorized(
                seen[0], creds, registry_ops.lookup, api, "o/i", "x", load_settings()
            )
    message = str(raised.value)
    assert "refused the credentials from TEST_TOKEN" in message and "\n" not in message


def test_busy_registries_are_asked_again_then_reported(monkeypatch):
    monkeypatch.setenv(registry_ops.RETRIES_VARIABLE, "2")
    monkeypatch.setenv(registry_ops.BACKOFF_VARIABLE, "0")
    calls = []

    def answer(request) -> Answer:
        calls.append(request.path)
        if len(calls) <= 2:
            return 429, {}, _error("TOOMANYREQUESTS", "slow down")
        return 404, {}, _error("MANIFEST_UNKNOWN", "manifest unknown")

    with scripted(answer) as seen:
        assert registry_ops.lookup(_api(seen), "o/i", "x", load_settings()).state == ABSENT
        assert len(calls) == 3
        calls.clear()
        calls.extend(["x"] * 10)  # from now on always 404: fine; make it always 503
    with scripted(lambda r: (503, {}, b"")) as seen, pytest.raises(StepFailed) as raised:
        registry_ops.lookup(_api(seen), "o/i", "x", load_settings())
    assert "still failing after 3 attempts" in str(raised.value)


def test_loopback_registries_may_speak_plain_http_and_bypass_proxies(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would refuse every connection
    assert distribution.is_loopback("127.0.0.1:5000") and distribution.is_loopback("localhost")
    assert not distribution.is_loopback("ghcr.io") and not distribution.is_loopback("10.0.0.1:5000")
    with scripted(lambda r: (404, {}, _error("MANIFEST_UNKNOWN", "x"))) as seen:
        assert _api(seen).lookup("o/i", "x").state == ABSENT
    assert RegistryAPI("ghcr.io", None).schemes == ("https",)


def test_labels_of_a_published_image_come_from_its_config():
    config = {"config": {"Labels": {"io.github.dask-gateway-ci.backend": "slurm"}}}
    manifest = json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": CONFIG}}).encode()
    answers = {
        "/v2/o/i/manifests/latest": (200, {"Docker-Content-Digest": CHILD}, manifest),
        f"/v2/o/i/blobs/{CONFIG}": (200, {}, json.dumps(config).encode()),
    }
    with scripted(lambda r: answers.get(r.path, (404, {}, b""))) as seen:
        api = _api(seen)
        assert api.labels("o/i", "latest") == {"io.github.dask-gateway-ci.backend": "slurm"}
        assert api.labels("o/i", "other") is None
