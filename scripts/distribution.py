"""What a registry holds, asked of the registry itself (the OCI distribution API).

Look-ups do not go through the engine: engines answer them differently
(Podman's compat API says a plain 404 for any failure, Docker's for a token
that may not read), and "never replace a dated tag" needs a look-up that
tells *absent* from *cannot see*. Only a registry's own `MANIFEST_UNKNOWN` or
`NAME_UNKNOWN` answer means absent; anything else that is not a manifest is
UNKNOWN, with the registry's words kept as the reason.

    >>> api = RegistryAPI("ghcr.io", credentials=None)
    >>> found = api.lookup("dask/dask-gateway-ci-slurm", "latest")
    >>> found.state, found.digest                                # doctest: +SKIP
    ('present', 'sha256:...')

Authentication follows the registry's challenge: HTTP basic (htpasswd
registries) or a bearer token from the realm it names (ghcr.io, Docker Hub),
with the same credentials a push uses. Loopback registries may speak plain
HTTP, as the engine allows them to.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field

from . import log
from .credentials import Credentials
from .errors import first_line

PRESENT, ABSENT, UNKNOWN = "present", "absent", "unknown"
ABSENT_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = frozenset(MANIFEST_TYPES[:2])
CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT = 30


class Transient(Exception):
    """The registry did not answer, or asked to be asked again (429, 5xx)."""


class Refused(Exception):
    """The registry refused these credentials (401 after authenticating)."""


@dataclass(frozen=True)
class Lookup:
    """What a tag holds: PRESENT with its digests, ABSENT, or UNKNOWN with the reason."""

    state: str
    digest: str | None = None
    # Every digest that names this image: the manifest's, each platform
    # manifest's and each config's (engines report one or the other as the ID).
    identities: frozenset[str] = field(default_factory=frozenset)
    reason: str = ""

    def holds_any(self, digests: set[str] | frozenset[str]) -> bool:
        return self.state == PRESENT and bool(self.identities & set(digests))


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_codes(body: bytes) -> list[str]:
    """The `errors[].code` of a registry's JSON error body (empty when it is not one)."""
    try:
        errors = json.loads(body or b"{}").get("errors") or []
    except (ValueError, AttributeError):
        return []
    return [str(e.get("code", "")) for e in errors if isinstance(e, dict)]


def error_text(status: int, body: bytes) -> str:
    try:
        errors = json.loads(body or b"{}").get("errors") or []
        said = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        said = ""
    return f"HTTP {status}" + (f" ({said})" if said else "")


class RegistryAPI:
    """A small client of one registry's /v2/ API: manifests and config blobs, read only."""

    def __init__(self, registry: str, credentials: Credentials | None):
        import requests

        self.registry = registry
        self.credentials = credentials
        self.session = requests.Session()
        # A proxy has no business between us and a registry on this machine.
        self.session.trust_env = not is_loopback(registry)
        self.schemes = ("https", "http") if is_loopback(registry) else ("https",)
        self._authorization: dict[str, str] = {}

    # -- HTTP ----------------------------------------------------------------------

    def _get(self, name: str, path: str, accept: tuple[str, ...] = ()):
        """GET /v2/<name>/<path>, authenticating when challenged; the response."""
        import requests

        headers = {"Accept": ", ".join(accept)} if accept else {}
        last: Exception | None = None
        for scheme in self.schemes:
            url = f"{scheme}://{self.registry}/v2/{name}/{path}"
            try:
                response = self._send(url, name, headers)
            except requests.exceptions.SSLError as error:
                last = error  # a loopback registry speaking plain HTTP: try that
                continue
            except requests.exceptions.RequestException as error:
                raise Transient(f"{self.registry} did not answer ({first_line(error)})") from None
            if response.status_code == 429 or response.status_code >= 500:
                raise Transient(f"{self.registry} answered {response.status_code}")
            return response
        raise Transient(f"{self.registry} did not answer ({first_line(last)})")

    def _send(self, url: str, name: str, headers: dict[str, str]):
        scope = f"repository:{name}:pull"
        cached = self._authorization.get(scope)
        response = self.session.get(
            url,
            headers={**headers, **({"Authorization": cached} if cached else {})},
            timeout=TIMEOUT,
        )
        if response.status_code != 401:
            return response
        # Challenged (first contact, or a cached token expired): answer it once.
        authorization = self._authorize(response.headers.get("WWW-Authenticate", ""), scope)
        if authorization is None:
            return response
        self._authorization[scope] = authorization
        response = self.session.get(
            url, headers={**headers, "Authorization": authorization}, timeout=TIMEOUT
        )
        if response.status_code == 401 and self.credentials is not None:
            raise Refused(f"{self.registry} refused the credentials (HTTP 401)")
        return response

    def _authorize(self, challenge: str, scope: str) -> str | None:
        """The Authorization header that answers the registry's challenge, or None."""
        import base64

        scheme, _, rest = challenge.partition(" ")
        basic = None
        if self.credentials is not None:
            pair = f"{self.credentials.username}:{self.credentials.token}"
            basic = "Basic " + base64.b64encode(pair.encode()).decode()
        if scheme.lower() == "basic":
            return basic
        if scheme.lower() != "bearer":
            return None
        parameters = dict(CHALLENGE_PARAMETER.findall(rest))
        realm = parameters.get("realm")
        if not realm:
            return None
        query = {"service": parameters.get("service", ""), "scope": scope}
        response = self.session.get(
            realm,
            params=query,
            headers={"Authorization": basic} if basic else {},
            timeout=TIMEOUT,
        )
        if response.status_code == 401 and basic is not None:
            raise Refused(f"{self.registry} refused the credentials (token: HTTP 401)")
        if response.status_code != 200:
            return None
        answer = response.json()
        token = answer.get("token") or answer.get("access_token")
        if token:
            log.add_secret(token)
        return f"Bearer {token}" if token else None

    # -- what a tag holds ------------------------------------------------------------

    def manifest(self, name: str, reference: str) -> tuple[int, str | None, dict, bytes]:
        """(status, digest, parsed manifest, raw body) of name:reference."""
        response = self._get(name, f"manifests/{reference}", MANIFEST_TYPES)
        body = response.content
        if response.status_code != 200:
            return response.status_code, None, {}, body
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        return 200, digest, parsed, body

    def lookup(self, name: str, tag: str) -> Lookup:
        """What `name:tag` holds (see Lookup). Raises Transient and Refused."""
        status, digest, manifest, body = self.manifest(name, tag)
        if status == 404 and ABSENT_CODES & set(error_codes(body)):
            return Lookup(ABSENT)
        if status != 200 or digest is None:
            return Lookup(UNKNOWN, reason=error_text(status, body))
        identities = {digest}
        for child in self._platform_manifests(name, manifest):
            identities.add(child.get("digest", ""))
            _, child_digest, child_manifest, _ = self.manifest(name, child["digest"])
            identities |= {child_digest or "", _config_digest(child_manifest)}
        identities.add(_config_digest(manifest))
        identities.discard("")
        return Lookup(PRESENT, digest=digest, identities=frozenset(identities))

    def labels(self, name: str, tag: str) -> dict[str, str] | None:
        """The image config's labels of name:tag (its linux/amd64 image for an index), or None."""
        status, _, manifest, _ = self.manifest(name, tag)
        if status != 200:
            return None
        children = self._platform_manifests(name, manifest)
        if children:
            preferred = next(
                (c for c in children if (c.get("platform") or {}).get("architecture") == "amd64"),
                children[0],
            )
            status, _, manifest, _ = self.manifest(name, preferred["digest"])
            if status != 200:
                return None
        config = _config_digest(manifest)
        if not config:
            return None
        response = self._get(name, f"blobs/{config}")
        if response.status_code != 200:
            return None
        try:
            return (response.json().get("config") or {}).get("Labels") or {}
        except ValueError:
            return None

    @staticmethod
    def _platform_manifests(name: str, manifest: dict) -> list[dict]:
        if manifest.get("mediaType") not in INDEX_TYPES and "manifests" not in manifest:
            return []
        # Attestation manifests (BuildKit's) name platform unknown/unknown.
        return [
            m
            for m in manifest.get("manifests") or []
            if (m.get("platform") or {}).get("os") != "unknown" and m.get("digest")
        ]


def _config_digest(manifest: dict) -> str:
    return str((manifest.get("config") or {}).get("digest") or "")
