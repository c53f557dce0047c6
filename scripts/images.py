"""Build images parent-first, with streamed output and OCI labels.

Nothing is pulled by a build: every backend is built FROM the exact local
image ID of its parent, and the root backend FROM the local ID of its
declared external image (pulled or bootstrapped once, beforehand).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import debian, log, sources
from .backends import Backend, ancestors
from .distribution import RegistryAPI
from .dockerfile import declared_args, parse, stage_names, stages_of
from .engine import (
    CONTAINERD,
    APIError,
    Client,
    DockerError,
    EngineError,
    NotFound,
    get_image,
    image_id,
    image_store,
    inspect_image,
    list_images,
    load_images,
    pull_image,
    remove_image,
    save_image,
    tag_image,
)
from .engine import build as engine_build
from .errors import StepFailed, UserError, first_line
from .labels import BACKEND_LABEL, REVISION_LABEL
from .platforms import PLAIN, Platform, native
from .provenance import changed_since, has_commit, oci_labels, provenance
from .settings import LATEST, Settings
from .summary import human_size
from .tarballs import folder_archive

# The classic builder says "Step 3/19 : RUN ...", Podman (buildah) "STEP 3/19: RUN ...",
# in a multi-stage build "[2/4] STEP 3/7: RUN ..." (stage 2 of 4);
# a cached step is " ---> Using cache" there, "--> Using cache <id>" here.
STEP_LINE = re.compile(r"^(?:Step \d+/\d+ : |(?:\[\d+/\d+\] )?STEP \d+/\d+: ).*")
CACHED_LINE = re.compile(r"^\s*-{2,3}> Using cache\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BUILDER_CHATTER = re.compile(
    r"^\s*(-{2,3}> |Removing intermediate container|COMMIT |Successfully (built|tagged) |\+ )"
)
PARENT_ARG = "BASE_IMAGE"
# The local ID of the external image the family starts from (ci/base's `from`),
# for a Dockerfile that declares it: a stage that needs nothing of the parent
# (pbs compiles OpenPBS) builds FROM it, so a change to the parent does not
# rebuild that stage.
ROOT_ARG = "DEBIAN_IMAGE"
SET_BY_THE_BUILD = (PARENT_ARG, ROOT_ARG)


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
                elif CACHED_LINE.match(line):
                    self.cached_steps += 1
                self.tail = [*self.tail, line][-20:]
        aux = entry.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            self.image_id = aux["ID"]
        if "status" in entry:  # pulls of a FROM image; should not happen
            log.info(f"{entry['status']} {entry.get('progress', '')}".strip())


def local_reference(settings: Settings, backend: Backend, platform: Platform | None) -> str:
    """The local tag of `backend`'s image for `platform` (see platforms.py)."""
    return settings.reference(backend, (platform or Platform(PLAIN)).tag(LATEST))


def require_image(
    client: Client, settings: Settings, backend: Backend, platform: Platform | None = None
) -> str:
    """The local ID of `backend`'s image for `platform`.

    Raises UserError naming the build command when it is not here.
    """
    reference = local_reference(settings, backend, platform)
    found = image_id(client, reference)
    if found is None:
        how = f" -- --platform {platform}" if platform and platform.suffix else ""
        raise UserError(
            f"image {reference} not found locally; run `nox -s build-{backend.name}{how}`"
        )
    return found


def check_platform(client: Client, image: str, reference: str, platform: Platform | None) -> None:
    """The engine recorded `image` as `platform`'s architecture.

    Raises StepFailed otherwise (an engine that builds or imports for its own
    architecture whatever it was asked would publish a mislabelled image).
    """
    if platform is None:
        return
    recorded = get_image(client, image).architecture
    if recorded != platform.architecture:
        raise StepFailed(
            f"{reference} ({image[:19]}) is an {recorded} image, not {platform.architecture}; "
            f"this engine did not build for {platform}"
        )


def external_image(client: Client, backend: Backend, platform: Platform | None = None) -> str:
    """Local ID of the image the root backend builds FROM: here, pulled, or bootstrapped.

    For another architecture than amd64 it is the per-architecture name
    (platforms.Platform.external). Raises UserError when it can be neither
    pulled nor bootstrapped.
    """
    reference = (platform or Platform(PLAIN)).external(backend.base_image)
    found = image_id(client, reference)
    if found is not None:
        check_platform(client, found, reference, platform)
        return found
    log.info(f"{reference} is not here; pulling it (once: builds never pull)")
    try:
        pulled = pull_image(client, reference, platform=str(platform) if platform else None).id
        check_platform(client, pulled, reference, platform)
        return pulled
    except APIError as error:
        reason = first_line(error)
    arch = f" --arch {platform.architecture}" if platform and platform.suffix else ""
    if debian.can_bootstrap(reference):
        log.info(
            f"cannot pull {reference} ({reason}); creating it locally with debootstrap "
            f"instead, as `nox -s bootstrap-debian{' --' + arch if arch else ''}` does"
        )
        return debian.bootstrap(client, reference=reference, platform=platform)
    raise UserError(
        f"{reference} is not here and cannot be pulled ({reason}); create it with "
        f"`nox -s bootstrap-debian{' --' + arch if arch else ''}` (needs debootstrap, as "
        "root), or `docker load` it"
    )


def label_instruction(labels: dict[str, str]) -> str:
    """One LABEL instruction, keys sorted, values quoted (`$` kept literal)."""
    pairs = (
        f"{json.dumps(key)}={json.dumps(value).replace('$', chr(92) + '$')}"
        for key, value in sorted(labels.items())
    )
    return "LABEL " + " ".join(pairs) + "\n"


def with_labels(dockerfile: str, labels: dict[str, str], target: str | None = None) -> str:
    """The Dockerfile with one LABEL instruction at the end of the built stage.

    Written into the Dockerfile rather than passed as the build's `labels`:
    Podman turns those into one LABEL step each, in a different order per
    build, so an unchanged folder would give a new image ID and miss the
    cache of every image built on it. One sorted instruction is stable on
    every engine.
    """
    lines = dockerfile.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    end = len(lines)
    if target is not None:
        # Before the FROM of the stage after the target, if any.
        starts = [items[0].line for items in stages_of(parse(dockerfile)).values() if items]
        target_start = stages_of(parse(dockerfile))[target][0].line
        later = [line for line in starts if line > target_start]
        if later:
            end = min(later) - 1
    return "".join([*lines[:end], label_instruction(labels), *lines[end:]])


def context_archive(
    folder: Path, labels: dict[str, str] | None = None, target: str | None = None
) -> io.BytesIO:
    """The build context as a tar, with the checkout's umask taken out.

    Owner root, directories 755, files 755 when executable and 644 when not:
    a checkout made under umask 002 (git then makes group-writable folders,
    and the classic builder's COPY gives them to /etc, /opt, ...) builds the
    same image, with the same cache keys, as one made under umask 022.
    With `labels`, the Dockerfile carries them (see with_labels).
    """

    def labelled(name: str, path: Path) -> bytes | None:
        if labels and name == "Dockerfile":
            return with_labels(path.read_text(), labels, target).encode()
        return None

    return folder_archive(folder, include_folder=True, replace=labelled)


def run_build(client: Client, context: io.BytesIO, **options) -> BuildStream:
    """One build of a context (context_archive) on the engine, never pulling; its stream.

    Intermediate containers are removed, failed or not. `options` are the
    engine's: tag, buildargs, target, network_mode, nocache.
    """
    stream = BuildStream()
    for entry in engine_build(
        client,
        fileobj=context,
        custom_context=True,
        pull=False,
        rm=True,
        forcerm=True,
        decode=True,
        **options,
    ):
        stream.feed(entry)
    return stream


def build_one(
    client: Client,
    settings: Settings,
    backend: Backend,
    *,
    parent_id: str,
    parent_folders: tuple = (),
    build_args: dict[str, str] | None = None,
    target: str | None = None,
    network_mode: str | None = None,
    nocache: bool = False,
    root_id: str | None = None,
    platform: Platform | None = None,
    offered: tuple[sources.Offer, ...] = (),
) -> str:
    """Build one image from ci/<backend>/ on `parent_id` and return its ID.

    `root_id` is passed as ROOT_ARG when the Dockerfile declares it.
    `offered` files of a sources folder are served to this build (sources.py). With
    `platform`, the engine builds for it (RUN steps of another architecture
    run under the host's binfmt_misc emulation) and the image is tagged with
    its local name (local_reference). Raises StepFailed when the build fails
    or gives another architecture.
    """
    # The exact local images, by ID: a registry is never asked for them.
    args = {**backend.build_args, **(build_args or {}), PARENT_ARG: parent_id}
    if root_id is not None and ROOT_ARG in declared_args(backend.dockerfile):
        args[ROOT_ARG] = root_id
    reference = local_reference(settings, backend, platform)
    what = f"{reference}" + (f" (target {target})" if target else "")
    with log.group(f"build {what}"):
        labels = oci_labels(backend, provenance(settings.source, [backend.folder, *parent_folders]))
        before = {image.id for image in list_images(client)} if offered else set()
        with sources.served(client, offered) as urls:
            stream = run_build(
                client,
                context_archive(backend.folder, labels, target),
                tag=reference if target is None else None,
                buildargs={**args, **urls},
                target=target,
                network_mode=network_mode,
                nocache=nocache,
                **({"platform": str(platform)} if platform else {}),
            )
    if stream.error is not None:
        # The step line already shows the command; do not repeat it.
        error = re.sub(r"The command '.*' returned", "It returned", stream.error, flags=re.S)
        step = stream.step if len(stream.step) <= 100 else stream.step[:97] + "..."
        said = stream.last_words()
        tail = f"; last output: {said}" if said else ""
        raise StepFailed(f"build of {what} failed at {step}: {error}{tail}")
    if stream.image_id is None:
        raise StepFailed(f"build of {what} ended without an image ID")
    check_platform(client, stream.image_id, what, platform)
    if offered:
        _remove_left_stages(client, before, stream.image_id)
    log.info(
        f"built {what}: {stream.image_id[:19]} "
        f"({stream.cached_steps}/{stream.steps} steps from cache)"
    )
    return stream.image_id


def _remove_left_stages(client: Client, before: set[str], result: str) -> None:
    """Remove what the classic builder leaves of a build's other stages.

    A served file's URL names a new port at every build, so the stage that
    downloads it is built anew each time, and the classic builder keeps that
    stage's image, untagged and used by nothing (BuildKit keeps none). These
    are the images this build made with our labels that no tag and no other
    image holds; removing one removes its untagged steps too.
    """
    images = list_images(client)
    parents = {image.parent for image in images}
    for image in images:
        left = image.id not in before and not image.repo_tags and image.id not in parents
        if left and image.id != result and BACKEND_LABEL in image.labels:
            with contextlib.suppress(APIError):  # in use, or gone: it is not the build's to fail
                remove_image(client, image.id, force=False)


def check_build_options(
    backend: Backend, *, build_args: dict[str, str], target: str | None, save: str | None
) -> None:
    """What can be wrong with a build's options, found before minutes of building."""
    for name in SET_BY_THE_BUILD:
        if name in build_args:
            raise UserError(
                f"--build-arg {name} is set by the build itself (a local image ID: the "
                f"parent's, or that of the family's external image); to build on another "
                f"image change 'from' or 'parent' in {backend.folder / 'backend.toml'}"
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


def image_labels(client: Client, image: str) -> dict[str, str]:
    """The labels of a local image (its config's, as the engine reports them)."""
    return get_image(client, image).labels


@dataclass(frozen=True)
class Sizes:
    """An image's size on disk once unpacked, and as its layers travel (compressed)."""

    unpacked: int | None
    compressed: int | None = None

    def describe(self) -> str:
        parts = [f"{human_size(self.unpacked)} unpacked"] if self.unpacked else []
        if self.compressed:
            parts.append(f"{human_size(self.compressed)} compressed")
        return ", ".join(parts) or "size unknown"


def image_sizes(client: Client, image: str) -> Sizes:
    """Sizes of a local image, named for what they are on this engine's image store.

    The classic store's `Size` is the unpacked size. The containerd store's
    is the compressed content; its unpacked size is per platform manifest
    (`?manifests=1`, API 1.48+), which older engines ignore.
    """
    found = get_image(client, image, manifests=True)
    if not found.platform_sizes:
        return Sizes(unpacked=found.size)
    return Sizes(unpacked=sum(found.platform_sizes) or None, compressed=found.size)


def published_if_current(
    client: Client,
    settings: Settings,
    backend: Backend,
    folders: tuple[Path, ...],
    platform: Platform | None = None,
) -> str | None:
    """The published image of `backend`, pulled, when it is current; else None, saying why.

    Current: it carries this project's backend label and was built from a
    revision this clone has, and `folders` (the image's and its parents')
    have not changed since that revision, committed or not. Pulled by
    digest, so what was checked is what arrives; with `platform`, that
    architecture's image of the published index, tagged with its local name.
    """
    from .credentials import credentials
    from .distribution import PRESENT
    from .registry import Unauthorized, api_host, labels, lookup

    reference = local_reference(settings, backend, platform)
    creds = credentials(settings.registry, settings.credentials)
    api = RegistryAPI(api_host(settings.registry), creds)
    name = f"{settings.owner}/{backend.image}"
    try:
        found = lookup(api, name, LATEST, settings)
        published = labels(api, name, found.digest, settings) if found.state == PRESENT else None
    except (Unauthorized, StepFailed) as error:
        log.info(f"cannot look up {reference} ({error}); building it")
        return None
    if found.state != PRESENT:
        log.info(f"{reference}: not published ({found.reason or found.state}); building it")
        return None
    if published is None or published.get(BACKEND_LABEL) != backend.name:
        log.info(f"{reference} is not an image of this project (no {BACKEND_LABEL}); building it")
        return None
    revision = published.get(REVISION_LABEL, "")
    if not has_commit(revision):
        log.info(
            f"{reference} was built from revision {revision or '(none)'}, which this clone "
            "does not have; building it"
        )
        return None
    if changed_since(revision, list(folders)):
        log.info(
            f"{reference} was built from {revision[:12]}; its ci/ folders changed since; "
            "building it"
        )
        return None
    repository = settings.repository(backend)
    try:
        image = pull_image(
            client,
            f"{repository}@{found.digest}",
            auth_config=creds.auth_config() if creds else None,
            **({"platform": str(platform)} if platform else {}),
        )
    except DockerError as error:  # the engine's answer; a dropped connection still fails
        log.info(f"cannot pull {reference} ({first_line(error)}); building it instead")
        return None
    if platform is not None and platform.architecture != image.architecture:
        log.info(f"{reference}: the published image has no {platform} entry; building it")
        return None
    tag_image(client, image.id, repository, tag=reference.rpartition(":")[2])
    log.info(
        f"pulled the published {reference} ({found.digest[:19]}), current: built from "
        f"{revision[:12]}, its ci/ folders unchanged since"
    )
    return image.id


def build_with_parents(
    client: Client,
    settings: Settings,
    backends: dict[str, Backend],
    backend: Backend,
    *,
    built: dict[str, str],
    build_parents: bool = True,
    reuse_published: bool = False,
    platform: Platform | None = None,
    sources_folder: Path | None = None,
    **options,
) -> str:
    """Build `backend` on the parent image this run just built or has locally.

    `built` remembers IDs within one run, so `nox -t build` builds base once.
    `platform` (None: the engine's default, named as amd64) applies to the
    parents too; an image of another architecture is never reused for it.
    With `reuse_published`, a published image that is current for this
    checkout (see published_if_current) is pulled instead of built: the
    image itself when it is, else its nearest current parents, so a pull
    request builds only what it changes and pulls each layer once.
    With `sources_folder`, each build takes the files it downloads from there
    when they are there; they are checked before anything is built.
    """
    chain = [*ancestors(backends, backend.name), backend]
    folders = tuple(item.folder for item in chain)
    offered = (
        sources.chain_offers(
            chain,
            options.get("build_args") or {},
            (platform or native(client)).architecture,
            sources_folder,
        )
        if sources_folder is not None
        else {}
    )
    if reuse_published and backend.name not in built:
        pulled = published_if_current(client, settings, backend, folders, platform)
        if pulled is not None:
            built[backend.name] = pulled
            return pulled
    parent_id: str | None = None
    for index, item in enumerate(chain):
        mine = item is backend
        if item.name in built and not mine:
            parent_id = built[item.name]
            continue
        if reuse_published and not mine:
            pulled = published_if_current(client, settings, item, folders[: index + 1], platform)
            if pulled is not None:
                parent_id = built[item.name] = pulled
                continue
        if not (mine or build_parents):
            parent_id = require_image(client, settings, item, platform)
            check_platform(client, parent_id, local_reference(settings, item, platform), platform)
            log.info(f"using local {local_reference(settings, item, platform)} ({parent_id[:19]})")
            continue
        # How to build (network, cache) applies to parents; what to build does not.
        how = (
            options
            if mine
            else {k: options[k] for k in ("network_mode", "nocache") if k in options}
        )
        root = chain[0]
        parent_id = build_one(
            client,
            settings,
            item,
            parent_id=parent_id or external_image(client, item, platform),
            parent_folders=folders[:index],
            platform=platform,
            offered=offered.get(item.name, ()),
            root_id=(
                external_image(client, root, platform)
                if item is not root and ROOT_ARG in declared_args(item.dockerfile)
                else None
            ),
            **how,
        )
        if not (mine and options.get("target")):
            built[item.name] = parent_id
    return parent_id


def untag(client: Client, reference: str) -> None:
    """Remove a tag (or an image by ID): the image goes once nothing names it, and so do
    the build parents no other image was built on. The build cache of other images stays.

    The classic store and Podman prune that way themselves. The containerd
    image store does not track which images a build's intermediates are
    parents of, so its pruning deletes parents others were built on (their
    next build starts cold); there the parents are walked here, by the
    `Parent` the classic builder records, and removed only while no other
    image has them as parent and no tag names them.
    """
    if image_store(client) != CONTAINERD:
        with contextlib.suppress(NotFound):
            remove_image(client, reference)
        return
    removed = inspect_image(client, reference)
    if removed is None:
        return
    try:
        remove_image(client, reference, noprune=True)
    except NotFound:
        return
    if image_id(client, removed.id) is not None:
        return  # another tag still names it: its parents are in use
    everything = list_images(client)
    children = Counter(i.parent for i in everything)
    tagged = {i.id for i in everything if i.repo_tags}
    parent = removed.parent
    while parent and not children[parent] and parent not in tagged:
        try:
            found = inspect_image(client, parent)
            if found is None:
                return
            grandparent = found.parent
            remove_image(client, parent, force=False, noprune=True)
        except NotFound:
            return
        children[grandparent] -= 1
        parent = grandparent


def save_archive(client: Client, reference: str, path: str) -> None:
    """`docker save` one tagged image to a tar file (for another machine or job)."""
    saved, chunks = save_image(client, reference)
    try:
        with open(path, "wb") as archive:
            for chunk in chunks:
                archive.write(chunk)
    except OSError as error:
        raise UserError(f"cannot write image archive {path}: {error.strerror}") from None
    log.info(f"saved {reference} ({saved[:19]}) to {path}")


def load_archive(client: Client, path: str, expected: str) -> None:
    """`docker load` a tar written by save_archive; it must restore `expected`.

    Raises UserError when the file cannot be read, is no image archive, or
    restores another tag.
    """
    try:
        archive = open(path, "rb")  # noqa: SIM115 - closed below, errors apart from the engine's
    except OSError as error:
        raise UserError(f"cannot read image archive {path}: {error.strerror}") from None
    try:
        with archive:
            tags = load_images(client, archive)
    except EngineError as error:
        # Docker says what is wrong; Podman drops the connection on garbage.
        raise UserError(
            f"{path} is not an image archive (docker load: {first_line(error)}); "
            "write one with `nox -s build -- BACKEND --save FILE`"
        ) from None
    if expected not in tags:
        raise UserError(
            f"{path} holds {', '.join(tags) or 'no tagged image'}, not {expected}; "
            "write it with `--save` from the same owner and registry settings"
        )
    log.info(f"loaded {', '.join(tags)} from {path}")
