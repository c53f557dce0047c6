"""Talking to a registry: look-ups through its own API (distribution.py), pushes
through the engine.

Transient failures (unreachable, rate-limited, 5xx) are retried with a
doubling backoff; a refusal of credentials is one line naming what to set.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from . import distribution, log
from .credentials import Credentials, credential_hint, describe
from .distribution import Lookup, RegistryAPI
from .engine import APIError, Client, TransportError, get_image, list_images, push
from .errors import StepFailed, UserError, first_line
from .settings import BACKOFF_VARIABLE, RETRIES_VARIABLE, Settings

T = TypeVar("T")

DEFAULT_RETRIES = 3  # after the first attempt: waits of 1, 2, 4 s
DEFAULT_BACKOFF = 1.0

AUTH_ERROR = re.compile(
    r"unauthori[sz]ed|denied|no basic auth credentials|authentication required|forbidden",
    re.I,
)
TRANSIENT_ERROR = re.compile(
    r"connection refused|connection reset|no such host|timeout|timed out|network is unreachable"
    r"|no route to host|deadline exceeded|\bEOF\b|TLS handshake|too many requests"
    r"|toomanyrequests|rate limit|status:? (5\d\d|429)"
    r"|\b5\d\d (internal server error|bad gateway|service unavailable|gateway time-?out)",
    re.I,
)


PUSHED_STATUS = re.compile(r"\bdigest: (?P<digest>sha256:[0-9a-f]{64})(?: size: (?P<size>\d+))?")


class Transient(Exception):
    pass


class Unauthorized(Exception):
    pass


def retry_policy(settings: Settings) -> tuple[int, float]:
    """(retries after the first attempt, first delay in seconds; it doubles)."""
    try:
        retries = int(settings.push_retries or DEFAULT_RETRIES)
        backoff = float(settings.push_backoff or DEFAULT_BACKOFF)
    except ValueError:
        retries, backoff = -1, -1.0
    if retries < 0 or backoff < 0:
        raise UserError(
            f"{RETRIES_VARIABLE} must be a whole number >= 0 and {BACKOFF_VARIABLE} "
            "a number of seconds >= 0"
        )
    return retries, backoff


def classify(message: str) -> Exception:
    message = log.censor(message)
    if TRANSIENT_ERROR.search(message):
        return Transient(message)
    if AUTH_ERROR.search(message):
        return Unauthorized(message)
    return StepFailed(message)


def with_retries(registry: str, attempt: Callable[[], T], settings: Settings) -> T:
    retries, backoff = retry_policy(settings)
    for number in range(retries + 1):
        try:
            return attempt()
        except Transient as error:
            last = str(error)
            if number == retries:
                break
            delay = backoff * 2**number
            log.info(
                f"{log.censor(last)}; registry {registry} did not answer, "
                f"retry {number + 1}/{retries} in {delay:g}s"
            )
            time.sleep(delay)
    raise StepFailed(
        log.censor(
            f"{last}; registry {registry} still failing after {retries + 1} attempts: "
            "check DASK_GATEWAY_CI_REGISTRY and the network, then run it again"
        )
    )


def authorized(registry: str, creds: Credentials | None, call: Callable[..., T], *args) -> T:
    """Run a registry call; a refusal becomes one line naming what to set."""
    try:
        return call(*args)
    except Unauthorized as error:
        if creds is None:
            message = f"{error}; {registry} needs credentials: {credential_hint(registry)}"
        else:
            message = (
                f"{error}; {registry} refused the {describe(creds)}: check that the token "
                f"is valid and may push there, or {credential_hint(registry)}"
            )
        raise UserError(log.censor(message)) from None


def _engine_failed(what: str, error: Exception) -> StepFailed:
    reason = first_line(error)
    return StepFailed(log.censor(f"{what}: the Docker engine stopped answering ({reason})"))


def registry_of(reference: str) -> str:
    first = reference.split("/", 1)[0]
    return first if "/" in reference and ("." in first or ":" in first) else "docker.io"


def api_host(registry: str) -> str:
    """Where a registry's /v2/ API answers (Docker Hub's is not at docker.io)."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


def _ask(api: RegistryAPI, what: str, call: Callable[[], T], settings: Settings) -> T:
    """A question to the registry's API, retried while the registry is unwell.

    Raises Unauthorized (the credentials were refused) and StepFailed (still
    failing after the retries).
    """

    def attempt() -> T:
        try:
            return call()
        except distribution.Transient as error:
            raise Transient(log.censor(f"could not {what}: {error}")) from None
        except distribution.Refused as error:
            raise Unauthorized(log.censor(str(error))) from None

    return with_retries(api.registry, attempt, settings)


def lookup(api: RegistryAPI, name: str, tag: str, settings: Settings) -> Lookup:
    """What `name:tag` holds on `api`'s registry (see _ask for what it raises)."""
    return _ask(api, f"look up {name}:{tag}", lambda: api.lookup(name, tag), settings)


def labels(api: RegistryAPI, name: str, tag: str, settings: Settings) -> dict[str, str] | None:
    """The labels of the image `name:tag` holds, or None when they cannot be read."""
    return _ask(api, f"read {name}:{tag}", lambda: api.labels(name, tag), settings)


@dataclass
class PushStream:
    """Follows a push's JSON stream: layer results, the final digest, or an error."""

    error: str | None = None
    digest: str | None = None
    manifest_size: int | None = None

    def feed(self, entry: dict) -> None:
        if "error" in entry or "errorDetail" in entry:
            detail = entry.get("errorDetail") or {}
            self.error = first_line(entry.get("error") or detail.get("message") or "unknown error")
            return
        aux = entry.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            self.digest = aux["Digest"]
            self.manifest_size = aux.get("Size")
            return
        status = str(entry.get("status") or "")
        # Without an aux record (the containerd image store, Podman), the digest
        # is only in the last status line: "<tag>: digest: sha256:... size: N".
        said = PUSHED_STATUS.search(status)
        if said and self.digest is None:
            self.digest = said["digest"]
            self.manifest_size = int(said["size"]) if said["size"] else None
            return
        layer = entry.get("id")
        if layer and (
            status in ("Pushed", "Layer already exists") or status.startswith("Mounted from")
        ):
            log.info(f"  {layer}: {status}")
        elif status.startswith("The push refers to"):
            log.info(status)


def push_tag(
    client: Client, repository: str, tag: str, creds: Credentials | None, settings: Settings
) -> PushStream:
    """Push repository:tag, retried while the registry's failure is transient.

    Raises StepFailed (the push failed, or the engine stopped answering) or
    UserError (refused credentials).
    """
    reference = f"{repository}:{tag}"
    auth = creds.auth_config() if creds else None

    def attempt() -> PushStream:
        stream = PushStream()
        try:
            for entry in push(client, repository, tag, auth):
                stream.feed(entry)
        except APIError as error:
            stream.error = first_line(error)
        except TransportError as error:
            raise _engine_failed(f"push of {reference}", error) from None
        if stream.error is not None:
            raise classify(f"push of {reference} failed: {stream.error}")
        if stream.digest is None:
            raise StepFailed(f"push of {reference} ended without a digest")
        return stream

    return with_retries(registry_of(reference), attempt, settings)


def _normal(repository: str) -> str:
    return repository.removeprefix("docker.io/").removeprefix("library/")


def local_identities(client: Client, image: str, repository: str) -> set[str]:
    """Every digest that names this local image: its ID, and what it was pushed as.

    The ID is the config digest on the classic store and the manifest digest
    on the containerd store; RepoDigests are the manifests pushed or pulled.
    """
    found = {image}
    for entry in get_image(client, image).repo_digests:
        name, _, digest = entry.partition("@")
        if _normal(name) == _normal(repository):
            found.add(digest)
    return found


def local_holder(client: Client, repository: str, remote: Lookup) -> str | None:
    """The local image that is what `remote` holds, if any."""
    for image in list_images(client, name=repository):
        if remote.holds_any(local_identities(client, image.id, repository)):
            return image.id
    return None
