"""Publishing: push verified images; moving tags only move forward, dated tags never move.

`push` publishes `latest` (and every --tag) of each image. A moving tag is
replaced only by a build of the same or a later revision: the
`org.opencontainers.image.revision` label of what it holds must be an
ancestor of ours, so re-running an old workflow never moves `latest` back.

`tag-dated` publishes `YYYY-MM-DD[.N]`, which is never replaced. The tag is
chosen once for every image of the run (`dated_tag_for`): with `--suffix
auto` the first of the day, `.1`, `.2`, ... that is free (or already holds
the same image) for *all* of them, so one dated tag names one consistent set.
A tag the registry would not show us is not free: we refuse rather than risk
replacing it.

Several architectures (`--platform linux/amd64 --platform linux/arm64`):
each image is pushed under its architecture's tag (`latest-arm64`,
`2026-11-27-arm64`), then the tag itself as one index of them (index.py),
only once every architecture passed the verify gate; the index's amd64
entry is what a plain amd64 `docker pull` gets. Without --platform, the one
local image is the tag, and it must be amd64: an arm64 image alone under
`latest` would break every amd64 pull.

Only an image ID that passed `verify` on this machine is published
(--allow-unverified skips that on purpose), for each architecture. Credentials come from the
environment (see credentials.py) or else from the Docker config; look-ups go
to the registry's own API (distribution.py), pushes through the engine.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from . import index, log, provenance, state, summary
from .backends import Backend
from .credentials import Credentials, credentials, describe
from .distribution import ABSENT, PRESENT, UNKNOWN, Lookup, RegistryAPI
from .engine import get_image, tag_image
from .errors import UserError
from .images import image_labels, image_sizes, local_reference, require_image
from .labels import BACKEND_LABEL, REVISION_LABEL
from .platforms import PLAIN, Platform
from .registry import (
    api_host,
    authorized,
    labels,
    local_holder,
    local_identities,
    lookup,
    push_tag,
)
from .settings import LATEST, Settings

TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATED = re.compile(r"^\d{4}-\d{2}-\d{2}(\..*)?$")
AUTO = "auto"
MAX_AUTO_SUFFIX = 99


def check_tag(tag: str, what: str) -> str:
    if not TAG.match(tag):
        raise UserError(
            f"{what} {tag!r} is not a valid image tag (letters, digits, _ . -, "
            "at most 128, not starting with . or -)"
        )
    return tag


def publication_day(day: str | None, *, force: bool = False, today: date | None = None) -> str:
    """`day` (YYYY-MM-DD) or today in UTC; more than a day ahead needs `force`."""
    today = today or datetime.now(UTC).date()
    if not day:
        return today.isoformat()
    try:
        if not DATE.match(day):
            raise ValueError
        chosen = date.fromisoformat(day)
    except ValueError:
        raise UserError(f"--date {day!r}: expected a date as YYYY-MM-DD") from None
    if chosen > today + timedelta(days=1) and not force:
        raise UserError(
            f"--date {day} is more than a day after today ({today}, UTC): a dated tag is "
            "permanent; pass --force-date if that is really meant"
        )
    return day


def dated_tag(day: str, suffix: str) -> str:
    """`YYYY-MM-DD`, or `YYYY-MM-DD.<suffix>`."""
    suffix = suffix.removeprefix(".")
    if not suffix:
        return day
    if not SUFFIX.match(suffix):
        raise UserError(
            f"--suffix {suffix!r}: use letters, digits, _ . - (e.g. --suffix 1 gives {day}.1), "
            f"or --suffix {AUTO} for the next free one"
        )
    return check_tag(f"{day}.{suffix}", "dated tag")


def dated_candidates(day: str | None, suffix: str, *, force_date: bool = False) -> list[str]:
    """The dated tags to try, in order: one, or with --suffix auto the day and .1, .2, ..."""
    chosen_day = publication_day(day, force=force_date)
    if suffix == AUTO:
        return [chosen_day, *(f"{chosen_day}.{n}" for n in range(1, MAX_AUTO_SUFFIX + 1))]
    return [dated_tag(chosen_day, suffix)]


def push_tags(backend: Backend, tags: list[str] | tuple[str, ...]) -> list[str]:
    """`latest` and every extra tag, checked: no dated tag goes through push."""
    chosen = list(dict.fromkeys([LATEST, *tags]))
    for tag in chosen:
        check_tag(tag, "--tag")
        if DATED.match(tag):
            raise UserError(
                f"--tag {tag} looks like a dated tag; use `nox -s tag-dated-{backend.name}`, "
                "which never replaces a published one"
            )
    return chosen


class Target:
    """One image to publish: where it goes, what it is here, how to ask the registry."""

    def __init__(
        self, client, settings: Settings, backend: Backend, platform: Platform | None = None
    ):
        self.client = client
        self.settings = settings
        self.backend = backend
        self.platform = platform
        self.repository = settings.repository(backend)
        self.name = f"{settings.owner}/{backend.image}"  # the path inside the registry
        self.creds: Credentials | None = credentials(settings.registry, settings.credentials)
        self.api = RegistryAPI(api_host(settings.registry), self.creds)
        self.local = local_reference(settings, backend, platform)
        self.image = require_image(client, settings, backend, platform)
        self.identities = local_identities(client, self.image, self.repository)
        self.architecture = get_image(client, self.image).architecture
        if platform is not None and self.architecture != platform.architecture:
            raise UserError(
                f"{self.local} ({self.image[:19]}) is an {self.architecture} image, not "
                f"{platform.architecture}; build it with `nox -s build-{backend.name} -- "
                f"--platform {platform}`"
            )

    def reference(self, tag: str) -> str:
        return f"{self.repository}:{tag}"

    def arch_tag(self, tag: str) -> str:
        """Where this architecture's image goes when `tag` is an index: `latest-arm64`."""
        return f"{tag}-{self.platform.architecture}" if self.platform else tag

    def lookup(self, tag: str) -> Lookup:
        return authorized(
            self.settings.registry, self.creds, lookup, self.api, self.name, tag, self.settings
        )

    def remote_labels(self, tag: str) -> dict[str, str] | None:
        return authorized(
            self.settings.registry, self.creds, labels, self.api, self.name, tag, self.settings
        )


def targets_of(
    client, settings: Settings, backend: Backend, platforms: list[Platform] | tuple = ()
) -> list[Target]:
    """One Target per architecture (--platform), or the one plain local image.

    Raises UserError for a plain image that is not amd64 (see the docstring).
    """
    if platforms:
        return [Target(client, settings, backend, p) for p in dict.fromkeys(platforms)]
    target = Target(client, settings, backend)
    if target.architecture not in ("", PLAIN):
        raise UserError(
            f"{target.local} is an {target.architecture} image: alone under a published tag it "
            f"would replace the {PLAIN} image every {PLAIN} pull gets; publish an index of "
            f"both with --platform linux/{PLAIN} --platform linux/{target.architecture}"
        )
    return [target]


def _gate(target: Target, allow_unverified: bool) -> str:
    """The verify gate: say how the image was checked, or refuse it."""
    record = state.verification(target.settings, target.image)
    reference = target.local
    if record is not None:
        return f"verified {record.get('verified_at', '')}".strip()
    if allow_unverified:
        log.warn(
            f"{reference} ({target.image[:19]}) has not passed verify on this machine; "
            "publishing it anyway because of --allow-unverified"
        )
        return "NOT verified (--allow-unverified)"
    how = f" -- --platform {target.platform}" if target.platform else ""
    raise UserError(
        f"{reference} ({target.image[:19]}) has not passed verify on this machine; run "
        f"`nox -s verify-{target.backend.name}{how}` first, or pass --allow-unverified to "
        "publish it anyway"
    )


def _only_forward(target: Target, tag: str) -> None:
    """Refuse to move a moving tag back to an older build (see the module's docstring)."""
    reference = target.reference(tag)
    theirs = target.remote_labels(tag)
    if theirs is None:
        log.warn(f"cannot read what {reference} holds; replacing it")
        return
    if theirs.get(BACKEND_LABEL) != target.backend.name:
        log.info(f"{reference} holds an image not built by this project; replacing it")
        return
    their_revision = theirs.get(REVISION_LABEL)
    our_revision = image_labels(target.client, target.image).get(REVISION_LABEL)
    relation = provenance.order(their_revision, our_revision)
    if relation in (provenance.SAME, provenance.OLDER):
        return
    if relation == provenance.UNRELATED:
        log.warn(
            f"{reference} holds a build of revision {their_revision}, which cannot be compared "
            f"with ours ({our_revision}) in this clone; replacing it"
        )
        return
    newer = "a newer build" if relation == provenance.NEWER else "a build of another line"
    raise UserError(
        f"{reference} holds {newer} (revision {str(their_revision)[:12]}; this image is of "
        f"{str(our_revision)[:12]}): {tag} only moves forward, nothing was pushed; publish "
        "from an up-to-date checkout of the branch"
    )


def _push(target: Target, tag: str, gate: str, result: str = "pushed") -> str:
    reference = target.reference(tag)
    client = target.client
    tag_image(client, target.image, target.repository, tag=tag)
    with log.group(f"push {reference} ({target.image[:19]})"):
        stream = authorized(
            target.settings.registry,
            target.creds,
            push_tag,
            client,
            target.repository,
            tag,
            target.creds,
            target.settings,
        )
    target.identities.add(stream.digest)
    sizes = image_sizes(client, target.image)
    log.info(
        f"pushed {reference}: {stream.digest} ({gate}; manifest {stream.manifest_size} B; "
        f"image {sizes.describe()})"
    )
    summary.record_image(
        reference,
        tags=[tag],
        digest=stream.digest,
        size=sizes.unpacked,
        result=result,
        settings=target.settings,
    )
    return stream.digest


def _dry_run(target: Target, tag: str, gate: str, policy: str) -> None:
    reference = target.reference(tag)
    log.info(
        f"dry run: would push image {target.image} ({gate}) as {reference}, {policy}, "
        f"with {describe(target.creds)}"
    )
    summary.record_image(
        reference,
        tags=[tag],
        size=image_sizes(target.client, target.image).unpacked,
        result="dry run",
        settings=target.settings,
    )


def _already(target: Target, tag: str, found: Lookup) -> None:
    reference = target.reference(tag)
    log.info(f"{reference} already has this image ({found.digest}); nothing to push")
    summary.record_image(
        reference,
        tags=[tag],
        digest=found.digest,
        size=image_sizes(target.client, target.image).unpacked,
        result="already present",
        settings=target.settings,
    )


def push_image(
    client,
    settings: Settings,
    backend: Backend,
    *,
    tags: list[str] | tuple[str, ...] = (),
    dry_run: bool = False,
    allow_unverified: bool = False,
    platforms: list[Platform] | tuple = (),
) -> None:
    """Push :latest and every extra tag of a verified image, skipping what is there.

    With `platforms`, each tag is an index of those architectures' images.

    Raises UserError (unverified, refused credentials, a tag holding a newer
    build) and StepFailed (the registry still failing after retries).
    """
    chosen = push_tags(backend, tags)
    targets = targets_of(client, settings, backend, platforms)
    # Every architecture passes the gate before anything is pushed.
    gates = [_gate(target, allow_unverified) for target in targets]
    for tag in chosen:
        if dry_run:
            for target, gate in zip(targets, gates, strict=True):
                _dry_run(target, target.arch_tag(tag), gate, "replacing an older build it holds")
            if platforms:
                _dry_run_index(targets, tag)
            continue
        first = _amd64_first(targets)
        found = first.lookup(tag)
        if all(found.holds_any(target.identities) for target in targets):
            _already(first, tag, found)
            continue
        if found.state != ABSENT:
            _only_forward(first, tag)
        if not platforms:
            _push(first, tag, gate=gates[0])
            continue
        digests = [
            _push_architecture(target, target.arch_tag(tag), gate, moving=True)
            for target, gate in zip(targets, gates, strict=True)
        ]
        _push_index(targets, tag, digests)


def _amd64_first(targets: list[Target]) -> Target:
    """The target whose labels the registry reports for an index (its amd64 entry)."""
    return next((t for t in targets if t.architecture == PLAIN), targets[0])


def _push_architecture(target: Target, tag: str, gate: str, *, moving: bool) -> str:
    """One architecture's image under its own tag; the manifest digest it has there.

    A dated architecture tag (not `moving`) holding another image is refused."""
    found = target.lookup(tag)
    if found.holds_any(target.identities):
        _already(target, tag, found)
        return str(found.digest)
    if found.state == PRESENT and not moving:
        _refuse_clash(target, tag, found)
    return _push(target, tag, gate)


def _push_index(targets: list[Target], tag: str, digests: list[str]) -> None:
    first = targets[0]
    reference = first.reference(tag)
    pushed = authorized(
        first.settings.registry,
        first.creds,
        index.push_index,
        first.repository,
        tag,
        digests,
        first.creds,
        first.settings,
    )
    architectures = ", ".join(t.architecture for t in targets)
    log.info(f"pushed {reference}: {pushed} (index of {architectures})")
    summary.record_image(
        reference,
        tags=[tag],
        digest=pushed,
        result=f"index ({architectures})",
        settings=first.settings,
    )


def _dry_run_index(targets: list[Target], tag: str) -> None:
    reference = targets[0].reference(tag)
    entries = ", ".join(t.reference(t.arch_tag(tag)) for t in targets)
    log.info(f"dry run: would push {reference} as an index of {entries}")


def dated_tag_for(
    client,
    settings: Settings,
    backends: list[Backend],
    candidates: list[str],
    *,
    platforms: list[Platform] | tuple = (),
) -> str:
    """The one dated tag every image of `backends` is published as (see the docstring):
    the first of `candidates` (from dated_candidates) free for all of them.

    Raises UserError when the tag (or, with auto, every candidate) holds
    another image, or when the registry would not say what a tag holds.
    """
    targets = [t for backend in backends for t in targets_of(client, settings, backend, platforms)]
    clashes: list[tuple[Target, str, Lookup]] = []
    for tag in candidates:
        clash = None
        for target in targets:
            found = target.lookup(tag)
            if found.state == UNKNOWN:
                raise UserError(
                    f"cannot tell whether {target.reference(tag)} is free (the registry "
                    f"answered {found.reason}); dated tags are never replaced, so nothing was "
                    "pushed: check that the credentials may read the package"
                )
            if found.state == PRESENT and not found.holds_any(target.identities):
                clash = (target, tag, found)
                log.info(f"{target.reference(tag)} holds another image ({found.digest})")
                break
        if clash is None:
            return tag
        clashes.append(clash)
    if len(candidates) > 1:
        raise UserError(
            f"{candidates[0]} and its suffixes up to .{len(candidates) - 1} all hold other "
            "images for at least one of them; pass --date for another day"
        )
    _refuse_clash(*clashes[0])
    raise AssertionError("unreachable")  # pragma: no cover


def _refuse_clash(target: Target, tag: str, found: Lookup) -> None:
    """The one chosen dated tag holds another image: say whose and what to do."""
    day, _, suffix = tag.partition(".")
    start = int(suffix) + 1 if suffix.isdigit() else 1
    proposal = next(
        (str(n) for n in range(start, start + 20) if target.lookup(f"{day}.{n}").state == ABSENT),
        AUTO,
    )
    holder = local_holder(target.client, target.repository, found)
    what = f"image {holder[:19]} here" if holder else "an image not pushed from this machine"
    raise UserError(
        f"{target.reference(tag)} already exists with other content ({what}, {found.digest}); "
        f"dated tags are never replaced: pass --suffix {proposal} to publish this image as "
        f"{day}.{proposal}, or --suffix {AUTO} for the next free one"
    )


def tag_dated_image(
    client,
    settings: Settings,
    backend: Backend,
    *,
    tag: str,
    dry_run: bool = False,
    allow_unverified: bool = False,
    platforms: list[Platform] | tuple = (),
) -> None:
    """Push the verified image as the dated `tag` (from dated_tag_for), never replacing one.

    With `platforms`, the tag is an index of those architectures' images,
    each pushed first under its own dated tag (`DATE-arm64`, never replaced
    either). Raises UserError (unverified, refused credentials, the tag
    holding other content or unreadable) and StepFailed (the registry still
    failing).
    """
    targets = targets_of(client, settings, backend, platforms)
    gates = [_gate(t, allow_unverified) for t in targets]
    target, gate = targets[0], gates[0]
    if dry_run:
        for each, each_gate in zip(targets, gates, strict=True):
            _dry_run(each, each.arch_tag(tag), each_gate, "never replacing another image")
        if platforms:
            _dry_run_index(targets, tag)
        return
    target = _amd64_first(targets)
    found = target.lookup(tag)
    if all(found.holds_any(t.identities) for t in targets):
        _already(target, tag, found)
        return
    if found.state == UNKNOWN:
        raise UserError(
            f"cannot tell whether {target.reference(tag)} is free (the registry answered "
            f"{found.reason}); dated tags are never replaced, so nothing was pushed"
        )
    if found.state == PRESENT:
        _refuse_clash(target, tag, found)
    if not platforms:
        _push(target, tag, gate)
        return
    digests = [
        _push_architecture(each, each.arch_tag(tag), each_gate, moving=False)
        for each, each_gate in zip(targets, gates, strict=True)
    ]
    _push_index(targets, tag, digests)


def tag_dated(
    client,
    settings: Settings,
    backends: list[Backend],
    *,
    day: str | None = None,
    suffix: str = "",
    force_date: bool = False,
    dry_run: bool = False,
    allow_unverified: bool = False,
    platforms: list[Platform] | tuple = (),
) -> str:
    """Choose one dated tag for `backends` and publish each as it; returns the tag."""
    candidates = dated_candidates(day, suffix, force_date=force_date)
    if dry_run:
        tag = candidates[0]
        if suffix == AUTO:
            log.info(f"dry run: {AUTO} would take {tag} or the next suffix free for every image")
    else:
        tag = dated_tag_for(client, settings, backends, candidates, platforms=platforms)
    for backend in backends:
        tag_dated_image(
            client,
            settings,
            backend,
            tag=tag,
            dry_run=dry_run,
            allow_unverified=allow_unverified,
            platforms=platforms,
        )
    return tag
