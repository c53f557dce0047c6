"""Publishing: push verified images, and give them dated tags that never move.

One flow for both steps. Each "slot" is a list of candidate tags; the first
candidate that is absent from the registry (or already holds this image) is
used. `push` has one slot per tag (`latest` and every --tag), and replaces
what a moving tag held. `tag-dated` has one slot, `YYYY-MM-DD[.suffix]`,
which is never replaced: with `--suffix auto` the candidates are the day and
then `.1`, `.2`, ...; otherwise a clash is refused, naming the next free
suffix.

Only an image ID that passed `verify` on this machine is published
(--allow-unverified skips that on purpose). Credentials come from the
environment (see credentials.py) or else from the Docker config.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from . import log, state, summary
from .backends import Backend
from .credentials import credentials, describe
from .errors import UserError
from .images import require_image
from .registry import (
    UNKNOWN,
    authorized,
    local_digests,
    local_holder,
    push_tag,
    remote_digest,
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


def _gate(backend: Backend, image: str, reference: str, allow_unverified: bool) -> str:
    """The verify gate: say how the image was checked, or refuse it."""
    record = state.verification(image)
    if record is not None:
        return f"verified {record.get('verified_at', '')}".strip()
    if allow_unverified:
        log.warn(
            f"{reference} ({image[:19]}) has not passed verify on this machine; "
            "publishing it anyway because of --allow-unverified"
        )
        return "NOT verified (--allow-unverified)"
    raise UserError(
        f"{reference} ({image[:19]}) has not passed verify on this machine; run "
        f"`nox -s verify-{backend.name}` first, or pass --allow-unverified to publish it anyway"
    )


def _publish(
    client,
    settings: Settings,
    backend: Backend,
    *,
    slots: list[list[str]],
    replace: bool,
    dry_run: bool,
    allow_unverified: bool,
) -> None:
    repository = settings.repository(backend)
    image = require_image(client, settings, backend)
    gate = _gate(backend, image, settings.reference(backend), allow_unverified)
    creds = credentials(settings.registry)
    size = client.api.inspect_image(image).get("Size")
    mine = local_digests(client, image, repository)

    for candidates in slots:
        first = f"{repository}:{candidates[0]}"
        if dry_run:
            more = (
                f" (or the next free of {len(candidates) - 1} suffixes)" if candidates[1:] else ""
            )
            policy = "replacing what it holds" if replace else "never replacing another image"
            log.info(
                f"dry run: would push image {image} ({gate}) as {first}{more}, {policy}, "
                f"with {describe(creds)}"
            )
            summary.record_image(first, tags=candidates[:1], size=size, result="dry run")
            continue
        for tag in candidates:
            reference = f"{repository}:{tag}"
            remote = authorized(settings.registry, creds, remote_digest, client, reference, creds)
            if remote in mine:
                log.info(f"{reference} already has this image ({remote}); nothing to push")
                summary.record_image(
                    reference, tags=[tag], digest=remote, size=size, result="already present"
                )
                break
            if remote is None or remote == UNKNOWN or replace:
                client.api.tag(image, repository, tag=tag)
                with log.group(f"push {reference} ({image[:19]})"):
                    stream = authorized(
                        settings.registry, creds, push_tag, client, repository, tag, creds
                    )
                mine.add(stream.digest)
                log.info(
                    f"pushed {reference}: {stream.digest} (manifest {stream.manifest_size} B; "
                    f"image {summary.human_size(size)} unpacked)"
                )
                summary.record_image(
                    reference, tags=[tag], digest=stream.digest, size=size, result="pushed"
                )
                break
            log.info(f"{reference} holds another image ({remote})")
        else:
            _refuse_clash(client, repository, candidates, creds)


def _refuse_clash(client, repository: str, candidates: list[str], creds) -> None:
    """Every candidate holds another image: say whose and what to do."""
    if len(candidates) > 1:
        raise UserError(
            f"{repository}:{candidates[0]} and its suffixes up to .{len(candidates) - 1} all "
            "hold other images; pass --date for another day"
        )
    tag = candidates[0]
    reference = f"{repository}:{tag}"
    remote = remote_digest(client, reference, creds)
    day, _, suffix = tag.partition(".")
    start = int(suffix) + 1 if suffix.isdigit() else 1
    proposal = next(
        (
            str(n)
            for n in range(start, start + 20)
            if remote_digest(client, f"{repository}:{day}.{n}", creds) is None
        ),
        AUTO,
    )
    holder = local_holder(client, repository, remote) if remote != UNKNOWN else None
    what = f"image {holder[:19]} here" if holder else "an image not pushed from this machine"
    raise UserError(
        f"{reference} already exists with other content ({what}, {remote}); dated tags "
        f"are never replaced: pass --suffix {proposal} to publish this image as "
        f"{day}.{proposal}, or --suffix {AUTO} for the next free one"
    )


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


def dated_candidates(day: str | None, suffix: str, *, force_date: bool = False) -> list[str]:
    """The dated tags to try, in order: one, or with --suffix auto the day and .1, .2, ..."""
    chosen_day = publication_day(day, force=force_date)
    if suffix == AUTO:
        return [chosen_day, *(f"{chosen_day}.{n}" for n in range(1, MAX_AUTO_SUFFIX + 1))]
    return [dated_tag(chosen_day, suffix)]


def push_image(
    client,
    settings: Settings,
    backend: Backend,
    *,
    tags: list[str] | tuple[str, ...] = (),
    dry_run: bool = False,
    allow_unverified: bool = False,
) -> None:
    """Push :latest and every extra tag of a verified image, skipping what is there."""
    _publish(
        client,
        settings,
        backend,
        slots=[[tag] for tag in push_tags(backend, tags)],
        replace=True,
        dry_run=dry_run,
        allow_unverified=allow_unverified,
    )


def tag_dated_image(
    client,
    settings: Settings,
    backend: Backend,
    *,
    day: str | None = None,
    suffix: str = "",
    force_date: bool = False,
    dry_run: bool = False,
    allow_unverified: bool = False,
) -> None:
    """Tag the verified image `YYYY-MM-DD[.suffix]` and push that tag, never replacing one."""
    _publish(
        client,
        settings,
        backend,
        slots=[dated_candidates(day, suffix, force_date=force_date)],
        replace=False,
        dry_run=dry_run,
        allow_unverified=allow_unverified,
    )
