"""Build images parent-first, with streamed output and OCI labels."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import log
from .backends import Backend, ancestors
from .config import Settings, oci_labels, provenance
from .errors import StepFailed, UserError

STEP_LINE = re.compile(r"^Step \d+/\d+ : .*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BUILDER_CHATTER = re.compile(r"^\s*(---> |Removing intermediate container|\+ )")


@dataclass
class BuildStream:
    """Follows a classic-builder JSON stream: progress, current step, result."""

    step: str = "(before the first step)"
    image_id: str | None = None
    error: str | None = None
    cached_steps: int = 0
    steps: int = 0
    tail: list[str] = field(default_factory=list)

    def last_words(self) -> str | None:
        """The failing step's last line of its own output (not the builder's, not set -x)."""
        for line in reversed(self.tail):
            line = ANSI.sub("", line).strip()
            if line and not BUILDER_CHATTER.match(line) and not STEP_LINE.match(line):
                return line[:300]
        return None

    def feed(self, entry: dict) -> None:
        if "error" in entry or "errorDetail" in entry:
            detail = entry.get("errorDetail") or {}
            self.error = (entry.get("error") or detail.get("message") or "unknown error").strip()
            return
        text = entry.get("stream")
        if text:
            log.write(text)
            for line in text.splitlines():
                if STEP_LINE.match(line):
                    self.step = line
                    self.steps += 1
                elif line.strip() == "---> Using cache":
                    self.cached_steps += 1
            self.tail = (self.tail + text.splitlines())[-20:]
        aux = entry.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            self.image_id = aux["ID"]
        if "status" in entry:  # pulls of a FROM image; should not happen
            log.info(f"{entry['status']} {entry.get('progress', '')}".strip())


def image_id(client, reference: str) -> str | None:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(reference).id
    except ImageNotFound:
        return None


def require_image(client, settings: Settings, backend: Backend) -> str:
    reference = settings.reference(backend)
    found = image_id(client, reference)
    if found is None:
        raise UserError(f"image {reference} not found locally; run `nox -s build-{backend.name}`")
    return found


def build_one(
    client,
    settings: Settings,
    backend: Backend,
    *,
    parent_id: str | None,
    parent_folders: tuple = (),
    build_args: dict[str, str] | None = None,
    target: str | None = None,
    network_mode: str | None = None,
    nocache: bool = False,
    tag: bool = True,
) -> str:
    """Build one image from ci/<backend>/ and return its ID."""
    args = {**backend.build_args, **(build_args or {})}
    if parent_id is not None:
        # The exact local image, by ID: a registry is never asked for it.
        args["BASE_IMAGE"] = parent_id
    reference = settings.reference(backend)
    what = f"{reference}" + (f" (target {target})" if target else "")
    stream = BuildStream()
    with log.group(f"build {what}"):
        entries = client.api.build(
            path=str(backend.folder),
            tag=reference if tag and target is None else None,
            buildargs=args,
            labels=oci_labels(backend, provenance(settings, [backend.folder, *parent_folders])),
            target=target,
            network_mode=network_mode,
            nocache=nocache,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for entry in entries:
            stream.feed(entry)
    if stream.error is not None:
        # The step line already shows the command; do not repeat it.
        error = re.sub(r"The command '.*' returned", "It returned", stream.error, flags=re.S)
        step = stream.step if len(stream.step) <= 100 else stream.step[:97] + "..."
        said = stream.last_words()
        tail = f"; last output: {said}" if said else ""
        raise StepFailed(f"build of {what} failed at {step}: {error}{tail}")
    if stream.image_id is None:
        raise StepFailed(f"build of {what} ended without an image ID")
    log.info(
        f"built {what}: {stream.image_id[:19]} "
        f"({stream.cached_steps}/{stream.steps} steps from cache)"
    )
    return stream.image_id


def build_with_parents(
    client,
    settings: Settings,
    backends: dict[str, Backend],
    backend: Backend,
    *,
    built: dict[str, str],
    build_parents: bool = True,
    **options,
) -> str:
    """Build `backend` on the parent image this run just built or has locally.

    `built` remembers IDs within one run, so `nox -t build` builds base once.
    """
    parent_id = None
    folders: tuple = ()
    for ancestor in ancestors(backends, backend.name):
        if ancestor.name in built:
            parent_id = built[ancestor.name]
        elif build_parents:
            # How to build (network, cache) applies to parents; what to build does not.
            parent_id = build_one(
                client,
                settings,
                ancestor,
                parent_id=parent_id,
                parent_folders=folders,
                network_mode=options.get("network_mode"),
                nocache=options.get("nocache", False),
            )
            built[ancestor.name] = parent_id
        else:
            parent_id = require_image(client, settings, ancestor)
            log.info(f"using local {settings.reference(ancestor)} ({parent_id[:19]})")
        folders = (*folders, ancestor.folder)
    image = build_one(
        client, settings, backend, parent_id=parent_id, parent_folders=folders, **options
    )
    if options.get("target") is None:
        built[backend.name] = image
    return image


def save_archive(client, reference: str, path: str) -> None:
    """`docker save` one tagged image to a tar file (for another machine or job)."""
    image = client.images.get(reference)
    with open(path, "wb") as archive:
        for chunk in image.save(named=reference):
            archive.write(chunk)
    log.info(f"saved {reference} ({image.id[:19]}) to {path}")


def load_archive(client, path: str) -> list[str]:
    """`docker load` a tar written by save_archive; returns the tags it restored."""
    from docker.errors import APIError

    try:
        with open(path, "rb") as archive:
            loaded = client.images.load(archive)
    except OSError as error:
        raise UserError(f"cannot read image archive {path}: {error.strerror}") from None
    except APIError as error:
        raise StepFailed(f"docker load of {path} failed: {error.explanation or error}") from None
    tags = [tag for image in loaded for tag in image.tags]
    log.info(f"loaded {', '.join(tags) or 'an untagged image'} from {path}")
    return tags
