"""Publishing: push verified images, and give them dated tags that never move.

`push` uploads `<registry>/<owner>/<image>:latest` (plus any --tag) unless the
registry already serves this image's digest under that tag. `tag-dated` adds
`YYYY-MM-DD` (UTC) or `YYYY-MM-DD.<suffix>` and pushes it; a dated tag that
exists with other content is refused, never replaced.

Both publish only an image ID that passed `verify` on this machine
(--allow-unverified skips that on purpose) and take credentials from the
environment (see `credentials`) or else from the Docker config.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TypeVar

from . import log, state, summary
from .backends import Backend
from .errors import StepFailed, UserError
from .images import require_image

T = TypeVar("T")

RETRIES_VARIABLE = "DASK_GATEWAY_CI_PUSH_RETRIES"
BACKOFF_VARIABLE = "DASK_GATEWAY_CI_PUSH_BACKOFF"
DEFAULT_RETRIES = 3  # after the first attempt: waits of 1, 2, 4 s
DEFAULT_BACKOFF = 1.0

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATED = re.compile(r"^\d{4}-\d{2}-\d{2}(\..*)?$")

AUTH_ERROR = re.compile(
    r"unauthori[sz]ed|denied|no basic auth credentials|authentication required|forbidden",
    re.I,
)
ABSENT_ERROR = re.compile(r"manifest unknown|name unknown|not found", re.I)
UNREACHABLE_ERROR = re.compile(
    r"connection refused|connection reset|no such host|timeout|timed out|network is unreachable"
    r"|no route to host|deadline exceeded|\bEOF\b|TLS handshake|too many requests"
    r"|status:? (5\d\d|429)"
    r"|\b5\d\d (internal server error|bad gateway|service unavailable|gateway time-?out)",
    re.I,
)


# -- credentials -----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    token: str = field(repr=False)
    source: str  # the variable the token came from, for messages

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.token}


def _hide(username: str, token: str) -> None:
    log.add_secret(token)
    # The same token as it travels in a basic-auth header.
    log.add_secret(base64.b64encode(f"{username}:{token}".encode()).decode())


def credentials(registry: str, environ: dict[str, str] | None = None) -> Credentials | None:
    """A token from the environment, or None: then the Docker config's login is used.

    DASK_GATEWAY_CI_REGISTRY_TOKEN + DASK_GATEWAY_CI_REGISTRY_USER work for any
    registry. For ghcr.io only (never sent elsewhere): GHCR_TOKEN with GHCR_USER
    or GITHUB_ACTOR, then, in GitHub Actions, GITHUB_TOKEN with GITHUB_ACTOR.
    """
    environ = os.environ if environ is None else environ
    choices = [("DASK_GATEWAY_CI_REGISTRY_TOKEN", ("DASK_GATEWAY_CI_REGISTRY_USER",))]
    if registry == "ghcr.io":
        choices.append(("GHCR_TOKEN", ("GHCR_USER", "GITHUB_ACTOR")))
        if environ.get("GITHUB_ACTIONS") == "true":
            choices.append(("GITHUB_TOKEN", ("GITHUB_ACTOR",)))
    for token_variable, user_variables in choices:
        token = environ.get(token_variable, "")
        if not token:
            continue
        log.add_secret(token)  # before anything else can print it
        username = next((environ[v] for v in user_variables if environ.get(v)), "")
        if not username:
            raise UserError(
                f"{token_variable} is set but {' or '.join(user_variables)} is not; "
                "set it to the user name the token belongs to"
            )
        _hide(username, token)
        return Credentials(username=username, token=token, source=token_variable)
    return None


def credential_hint(registry: str) -> str:
    hint = "set DASK_GATEWAY_CI_REGISTRY_USER and DASK_GATEWAY_CI_REGISTRY_TOKEN"
    if registry == "ghcr.io":
        hint += (
            " (or GHCR_TOKEN with GHCR_USER, or in GitHub Actions GITHUB_TOKEN with "
            "`permissions: packages: write`)"
        )
    return f"{hint}, or run `docker login {registry}`"


def _describe(creds: Credentials | None) -> str:
    if creds is None:
        return "credentials from the Docker config, if any"
    return f"credentials from {creds.source} (user {creds.username})"


# -- retries and errors ----------------------------------------------------------


class _Unreachable(Exception):
    pass


class _Unauthorized(Exception):
    pass


def retry_policy(environ: dict[str, str] | None = None) -> tuple[int, float]:
    """(retries after the first attempt, first delay in seconds; it doubles)."""
    environ = os.environ if environ is None else environ
    try:
        retries = int(environ.get(RETRIES_VARIABLE) or DEFAULT_RETRIES)
        backoff = float(environ.get(BACKOFF_VARIABLE) or DEFAULT_BACKOFF)
    except ValueError:
        retries, backoff = -1, -1.0
    if retries < 0 or backoff < 0:
        raise UserError(
            f"{RETRIES_VARIABLE} must be a whole number >= 0 and {BACKOFF_VARIABLE} "
            "a number of seconds >= 0"
        )
    return retries, backoff


def _classify(message: str) -> Exception:
    message = log.censor(message)
    if AUTH_ERROR.search(message):
        return _Unauthorized(message)
    if UNREACHABLE_ERROR.search(message):
        return _Unreachable(message)
    return StepFailed(message)


def _with_retries(registry: str, attempt: Callable[[], T]) -> T:
    retries, backoff = retry_policy()
    for number in range(retries + 1):
        try:
            return attempt()
        except _Unreachable as error:
            last = str(error)
            if number == retries:
                break
            delay = backoff * 2**number
            log.info(
                f"{log.censor(last)}; registry {registry} not reachable, "
                f"retry {number + 1}/{retries} in {delay:g}s"
            )
            time.sleep(delay)
    raise StepFailed(
        log.censor(
            f"{last}; registry {registry} still unreachable after {retries + 1} attempts: "
            "check DASK_GATEWAY_CI_REGISTRY and the network, then run it again"
        )
    )


def _authorized(registry: str, creds: Credentials | None, call: Callable[..., T], *args) -> T:
    """Run a registry call; a refusal becomes one line naming what to set."""
    try:
        return call(*args)
    except _Unauthorized as error:
        if creds is None:
            message = f"{error}; {registry} needs credentials: {credential_hint(registry)}"
        else:
            message = (
                f"{error}; {registry} refused the {_describe(creds)}: check that the token "
                f"is valid and may push there, or {credential_hint(registry)}"
            )
        raise UserError(log.censor(message)) from None


def _engine_failed(what: str, error: Exception) -> StepFailed:
    reason = _one_line(error) or type(error).__name__
    return StepFailed(log.censor(f"{what}: the Docker engine stopped answering ({reason})"))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# -- registry operations -----------------------------------------------------------


def remote_digest(client, reference: str, creds: Credentials | None) -> str | None:
    """The manifest digest the registry serves for `reference`, None if it has none."""
    from docker.errors import APIError, NotFound
    from requests.exceptions import RequestException

    auth = creds.auth_config() if creds else None

    def attempt() -> str | None:
        try:
            data = client.api.inspect_distribution(reference, auth_config=auth)
        except NotFound:
            return None
        except APIError as error:
            text = _one_line(error.explanation or error)
            if ABSENT_ERROR.search(text) and not AUTH_ERROR.search(text):
                return None
            raise _classify(f"could not look up {reference}: {text}") from None
        except RequestException as error:
            raise _engine_failed(f"look-up of {reference}", error) from None
        return (data.get("Descriptor") or {}).get("digest")

    return _with_retries(_registry_of(reference), attempt)


@dataclass
class PushStream:
    """Follows a push's JSON stream: layer results, the final digest, or an error."""

    error: str | None = None
    digest: str | None = None
    manifest_size: int | None = None

    def feed(self, entry: dict) -> None:
        if "error" in entry or "errorDetail" in entry:
            detail = entry.get("errorDetail") or {}
            self.error = _one_line(entry.get("error") or detail.get("message") or "unknown error")
            return
        aux = entry.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            self.digest = aux["Digest"]
            self.manifest_size = aux.get("Size")
            return
        status = str(entry.get("status") or "")
        layer = entry.get("id")
        if layer and (
            status in ("Pushed", "Layer already exists") or status.startswith("Mounted from")
        ):
            log.info(f"  {layer}: {status}")
        elif status.startswith("The push refers to"):
            log.info(status)


def push_tag(client, repository: str, tag: str, creds: Credentials | None) -> PushStream:
    from docker.errors import APIError
    from requests.exceptions import RequestException

    reference = f"{repository}:{tag}"
    auth = creds.auth_config() if creds else None

    def attempt() -> PushStream:
        stream = PushStream()
        try:
            entries = client.api.push(
                repository, tag=tag, stream=True, decode=True, auth_config=auth
            )
            for entry in entries:
                stream.feed(entry)
        except APIError as error:
            stream.error = _one_line(error.explanation or error)
        except RequestException as error:
            raise _engine_failed(f"push of {reference}", error) from None
        if stream.error is not None:
            raise _classify(f"push of {reference} failed: {stream.error}")
        if stream.digest is None:
            raise StepFailed(f"push of {reference} ended without a digest")
        return stream

    return _with_retries(_registry_of(reference), attempt)


def _registry_of(reference: str) -> str:
    first = reference.split("/", 1)[0]
    return first if "/" in reference and ("." in first or ":" in first) else "docker.io"


def _normal(repository: str) -> str:
    return repository.removeprefix("docker.io/").removeprefix("library/")


def local_digests(client, image: str, repository: str) -> set[str]:
    """Digests this image was pushed or pulled with, for `repository`."""
    found = set()
    for entry in client.api.inspect_image(image).get("RepoDigests") or []:
        name, _, digest = entry.partition("@")
        if _normal(name) == _normal(repository):
            found.add(digest)
    return found


def _local_holder(client, repository: str, digest: str) -> str | None:
    """The local image that was pushed or pulled as repository@digest, if any."""
    for image in client.images.list(name=repository):
        if digest in local_digests(client, image.id, repository):
            return image.id
    return None


# -- the steps ---------------------------------------------------------------------


def _option(ctx, name: str, default):
    return getattr(ctx.options, name, default)


def _gate(ctx, backend: Backend, image: str, reference: str) -> str:
    """The verify gate: say how the image was checked, or refuse it."""
    record = state.verification(image)
    if record is not None:
        return f"verified {record.get('verified_at', '')}".strip()
    if _option(ctx, "allow_unverified", False):
        prefix = "::warning::" if log.in_github_actions() else "warning: "
        log.info(
            f"{prefix}{reference} ({image[:19]}) has not passed verify on this machine; "
            "publishing it anyway because of --allow-unverified"
        )
        return "NOT verified (--allow-unverified)"
    raise UserError(
        f"{reference} ({image[:19]}) has not passed verify on this machine; run "
        f"`nox -s verify-{backend.name}` first, or pass --allow-unverified to publish it anyway"
    )


def _check_tag(tag: str, what: str) -> str:
    if not TAG.match(tag):
        raise UserError(
            f"{what} {tag!r} is not a valid image tag (letters, digits, _ . -, "
            "at most 128, not starting with . or -)"
        )
    return tag


def _image_size(client, image: str) -> int | None:
    return client.api.inspect_image(image).get("Size")


def _report_pushed(reference: str, stream: PushStream, size: int | None) -> None:
    log.info(
        f"pushed {reference}: {stream.digest} "
        f"(manifest {stream.manifest_size} B; image {summary.human_size(size)} unpacked)"
    )


def push_image(ctx, backend: Backend) -> None:
    """Push :latest and every --tag of a verified image, skipping what is there."""
    client, settings = ctx.client, ctx.settings
    repository = settings.repository(backend)
    tags = list(dict.fromkeys(["latest", *_option(ctx, "tags", [])]))
    for tag in tags:
        _check_tag(tag, "--tag")
        if DATED.match(tag):
            raise UserError(
                f"--tag {tag} looks like a dated tag; use `nox -s tag-dated-{backend.name}`, "
                "which never replaces a published one"
            )
    image = require_image(client, settings, backend)
    gate = _gate(ctx, backend, image, settings.reference(backend))
    creds = credentials(settings.registry)
    size = _image_size(client, image)

    if _option(ctx, "dry_run", False):
        for tag in tags:
            log.info(
                f"dry run: would push {repository}:{tag} (image {image}, {gate}) "
                f"with {_describe(creds)}"
            )
        summary.record_image(settings.reference(backend), tags=tags, size=size, result="dry run")
        return

    for tag in tags:
        reference = f"{repository}:{tag}"
        remote = _authorized(settings.registry, creds, remote_digest, client, reference, creds)
        if remote is not None and remote in local_digests(client, image, repository):
            log.info(f"{reference} already has this image ({remote}); nothing to push")
            summary.record_image(
                reference, tags=[tag], digest=remote, size=size, result="already present"
            )
            continue
        if tag != "latest":
            client.api.tag(image, repository, tag=tag)
        with log.group(f"push {reference} ({image[:19]})"):
            stream = _authorized(settings.registry, creds, push_tag, client, repository, tag, creds)
        _report_pushed(reference, stream, size)
        summary.record_image(
            reference, tags=[tag], digest=stream.digest, size=size, result="pushed"
        )


def dated_tag(day: str | None, suffix: str) -> str:
    """`YYYY-MM-DD` (today, UTC, unless `day`), or `YYYY-MM-DD.<suffix>`."""
    if day:
        try:
            if not DATE.match(day):
                raise ValueError
            date.fromisoformat(day)
        except ValueError:
            raise UserError(f"--date {day!r}: expected a date as YYYY-MM-DD") from None
    else:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
    suffix = suffix.removeprefix(".")
    if not suffix:
        return day
    if not SUFFIX.match(suffix):
        raise UserError(
            f"--suffix {suffix!r}: use letters, digits, _ . - (e.g. --suffix 1 gives {day}.1)"
        )
    return _check_tag(f"{day}.{suffix}", "dated tag")


def _next_suffix(client, repository: str, day: str, suffix: str, creds) -> str:
    """The first numbered suffix after `suffix` that the registry does not have yet."""
    start = int(suffix) + 1 if suffix.isdigit() else 1
    for number in range(start, start + 20):
        try:
            if remote_digest(client, f"{repository}:{day}.{number}", creds) is None:
                return str(number)
        except Exception:  # only a suggestion: never fail because of it
            break
    return str(start)


def tag_dated_image(ctx, backend: Backend) -> None:
    """Tag the verified image `YYYY-MM-DD[.suffix]` and push that tag, never replacing one."""
    client, settings = ctx.client, ctx.settings
    repository = settings.repository(backend)
    suffix = str(_option(ctx, "suffix", "") or "").removeprefix(".")
    tag = dated_tag(_option(ctx, "date", None), suffix)
    reference = f"{repository}:{tag}"
    image = require_image(client, settings, backend)
    gate = _gate(ctx, backend, image, settings.reference(backend))
    creds = credentials(settings.registry)
    size = _image_size(client, image)

    if _option(ctx, "dry_run", False):
        log.info(
            f"dry run: would tag image {image} ({gate}) as {reference} and push it with "
            f"{_describe(creds)}, unless the registry already has {tag} "
            "(same image: nothing to do; other content: refused)"
        )
        summary.record_image(reference, tags=[tag], size=size, result="dry run")
        return

    remote = _authorized(settings.registry, creds, remote_digest, client, reference, creds)
    if remote is not None:
        if remote in local_digests(client, image, repository):
            log.info(f"{reference} already has this image ({remote}); nothing to do")
            summary.record_image(
                reference, tags=[tag], digest=remote, size=size, result="already present"
            )
            return
        day = tag.split(".", 1)[0]
        proposal = _next_suffix(client, repository, day, suffix, creds)
        holder = _local_holder(client, repository, remote)
        what = f"image {holder[:19]} here" if holder else "an image not pushed from this machine"
        raise UserError(
            f"{reference} already exists with other content ({what}, {remote}); dated tags "
            f"are never replaced: pass --suffix {proposal} to publish this image as "
            f"{day}.{proposal}"
        )
    client.api.tag(image, repository, tag=tag)
    with log.group(f"push {reference} ({image[:19]})"):
        stream = _authorized(settings.registry, creds, push_tag, client, repository, tag, creds)
    _report_pushed(reference, stream, size)
    summary.record_image(reference, tags=[tag], digest=stream.digest, size=size, result="pushed")
