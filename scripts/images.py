"""Build images parent-first, with streamed output and OCI labels.

Nothing is pulled by a build: every backend is built FROM the exact local
image ID of its parent, and the root backend FROM the local ID of its
declared external image (pulled or bootstrapped once, beforehand).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from . import log
from .backends import Backend, ancestors
from .dockerfile import stage_names
from .engine import first_line
from .errors import StepFailed, UserError
from .provenance import changed_since, oci_labels, provenance
from .settings import Settings

STEP_LINE = re.compile(r"^Step \d+/\d+ : .*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BUILDER_CHATTER = re.compile(r"^\s*(---> |Removing intermediate container|\+ )")
PARENT_ARG = "BASE_IMAGE"


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
                    self.tail = []  # last words are the failing step's own
                elif line.strip() == "---> Using cache":
                    self.cached_steps += 1
                self.tail = [*self.tail, line][-20:]
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


def external_image(client, backend: Backend) -> str:
    """Local ID of the image the root backend builds FROM: here, pulled, or bootstrapped."""
    from docker.errors import APIError

    from . import debian

    reference = backend.base_image
    found = image_id(client, reference)
    if found is not None:
        return found
    log.info(f"{reference} is not here; pulling it (once: builds never pull)")
    try:
        return client.images.pull(reference).id
    except APIError as error:
        reason = first_line(error)
    if debian.can_bootstrap(reference):
        log.info(
            f"cannot pull {reference} ({reason}); creating it locally with debootstrap "
            "instead, as `nox -s bootstrap-debian` does"
        )
        return debian.bootstrap(client, reference=reference)
    raise UserError(
        f"{reference} is not here and cannot be pulled ({reason}); create it with "
        "`nox -s bootstrap-debian` (needs debootstrap, as root), or `docker load` it"
    )


def context_archive(folder: Path) -> io.BytesIO:
    """The build context as a tar, with the checkout's umask taken out.

    Owner root, directories 755, files 755 when executable and 644 when not:
    a checkout made under umask 002 (git then makes group-writable folders,
    and the classic builder's COPY gives them to /etc, /opt, ...) builds the
    same image, with the same cache keys, as one made under umask 022.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in [folder, *sorted(folder.rglob("*"))]:
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(folder)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isdir() or (info.isfile() and info.mode & 0o111):
                info.mode = 0o755
            elif info.isfile():
                info.mode = 0o644
            if info.isfile():
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
    buffer.seek(0)
    return buffer


def build_one(
    client,
    settings: Settings,
    backend: Backend,
    *,
    parent_id: str,
    parent_folders: tuple = (),
    build_args: dict[str, str] | None = None,
    target: str | None = None,
    network_mode: str | None = None,
    nocache: bool = False,
) -> str:
    """Build one image from ci/<backend>/ on `parent_id` and return its ID."""
    # The exact local image, by ID: a registry is never asked for it.
    args = {**backend.build_args, **(build_args or {}), PARENT_ARG: parent_id}
    reference = settings.reference(backend)
    what = f"{reference}" + (f" (target {target})" if target else "")
    stream = BuildStream()
    with log.group(f"build {what}"):
        entries = client.api.build(
            fileobj=context_archive(backend.folder),
            custom_context=True,
            tag=reference if target is None else None,
            buildargs=args,
            labels=oci_labels(
                backend, provenance(settings.source, [backend.folder, *parent_folders])
            ),
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


def check_build_options(
    backend: Backend, *, build_args: dict[str, str], target: str | None, save: str | None
) -> None:
    """What can be wrong with a build's options, found before minutes of building."""
    if PARENT_ARG in build_args:
        raise UserError(
            f"--build-arg {PARENT_ARG} is set by the build itself (the parent's local image "
            f"ID); to build on another image change 'from' or 'parent' in "
            f"{backend.folder / 'backend.toml'}"
        )
    if target is not None:
        names = stage_names(backend.dockerfile)
        if target not in names:
            raise UserError(
                f"--target {target}: {backend.dockerfile} has no such stage; stages: "
                f"{', '.join(names) or '(none named)'}"
            )
    if save is not None:
        folder = Path(save).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(
                f"--save {save}: cannot write there ({folder} is not a writable folder)"
            )


def pull_published(client, settings: Settings, backend: Backend) -> str | None:
    """The published image of `backend`, pulled; None (with a notice) when it cannot be."""
    from docker.errors import DockerException

    from .credentials import credentials

    reference = settings.reference(backend)
    creds = credentials(settings.registry)
    try:
        image = client.images.pull(reference, auth_config=creds.auth_config() if creds else None)
    except DockerException as error:
        log.info(f"cannot pull {reference} ({first_line(error)}); building it instead")
        return None
    log.info(f"pulled the published {reference} ({image.id[:19]})")
    return image.id


def build_with_parents(
    client,
    settings: Settings,
    backends: dict[str, Backend],
    backend: Backend,
    *,
    built: dict[str, str],
    build_parents: bool = True,
    reuse_since: str | None = None,
    **options,
) -> str:
    """Build `backend` on the parent image this run just built or has locally.

    `built` remembers IDs within one run, so `nox -t build` builds base once.
    With `reuse_since` (a git revision), an image whose folders, its parents'
    included, have not changed since that revision is pulled as published
    instead of built: a pull request builds only what it changes.
    """
    parent_id: str | None = None
    folders: tuple = ()
    chain = [*ancestors(backends, backend.name), backend]
    for item in chain:
        folders = (*folders, item.folder)
        mine = item is backend
        if item.name in built and not mine:
            parent_id = built[item.name]
            continue
        if reuse_since and not changed_since(reuse_since, list(folders)):
            log.info(f"{item.name}: ci/ folders unchanged since {reuse_since}")
            pulled = pull_published(client, settings, item)
            if pulled is not None:
                parent_id = built[item.name] = pulled
                continue
        if not (mine or build_parents):
            parent_id = require_image(client, settings, item)
            log.info(f"using local {settings.reference(item)} ({parent_id[:19]})")
            continue
        # How to build (network, cache) applies to parents; what to build does not.
        how = (
            options
            if mine
            else {k: options[k] for k in ("network_mode", "nocache") if k in options}
        )
        parent_id = build_one(
            client,
            settings,
            item,
            parent_id=parent_id or external_image(client, item),
            parent_folders=folders[:-1],
            **how,
        )
        if not (mine and options.get("target")):
            built[item.name] = parent_id
    return parent_id


def save_archive(client, reference: str, path: str) -> None:
    """`docker save` one tagged image to a tar file (for another machine or job)."""
    image = client.images.get(reference)
    try:
        with open(path, "wb") as archive:
            for chunk in image.save(named=reference):
                archive.write(chunk)
    except OSError as error:
        raise UserError(f"cannot write image archive {path}: {error.strerror}") from None
    log.info(f"saved {reference} ({image.id[:19]}) to {path}")


def load_archive(client, path: str, expected: str) -> None:
    """`docker load` a tar written by save_archive; it must restore `expected`."""
    from docker.errors import DockerException

    try:
        with open(path, "rb") as archive:
            loaded = client.images.load(archive)
    except OSError as error:
        raise UserError(f"cannot read image archive {path}: {error.strerror}") from None
    except DockerException as error:
        raise UserError(
            f"{path} is not an image archive (docker load: {first_line(error)}); "
            "write one with `nox -s build -- BACKEND --save FILE`"
        ) from None
    tags = [tag for image in loaded for tag in image.tags]
    if expected not in tags:
        raise UserError(
            f"{path} holds {', '.join(tags) or 'no tagged image'}, not {expected}; "
            "write it with `--save` from the same owner and registry settings"
        )
    log.info(f"loaded {', '.join(tags)} from {path}")
