"""What differs between engines and image stores, handled the same way on each.

Run on every engine CI has (Docker 20.10, Docker 28 with the containerd image
store, rootful Podman; see .ci/run): the store is recognised, sizes are
named for what they are, removing one image keeps the build cache of images
built alike, an unchanged rebuild is the same image, and a push's digest is
read from whichever form the engine's stream has.
"""

from __future__ import annotations

import os
import uuid

import pytest

from scripts import engine as engine_module
from scripts.images import BuildStream, context_archive, image_sizes, run_build, untag
from scripts.registry import PushStream

pytestmark = pytest.mark.docker

# .ci/run says which store each run is for, so a run on the wrong engine fails.
EXPECTED_STORE_VARIABLE = "DASK_GATEWAY_CI_EXPECT_STORE"


class Tiny:
    """Tiny images FROM scratch, built through our build context; all removed after."""

    def __init__(self, engine, root):
        self.engine = engine
        self.root = root
        self.tags: list[str] = []
        self.images: list[str] = []

    def context(self, dockerfile: str, files: dict[str, bytes] | None = None):
        folder = self.root / f"context-{len(self.tags)}"
        folder.mkdir()
        (folder / "Dockerfile").write_text(dockerfile)
        for name, data in (files or {}).items():
            (folder / name).write_bytes(data)
        tag = f"dask-gateway-ci-enginetest/{uuid.uuid4().hex[:8]}:1"
        self.tags.append(tag)
        return folder, tag

    def build(self, folder, tag: str, labels: dict[str, str] | None = None) -> BuildStream:
        stream = run_build(self.engine, context_archive(folder, labels), tag=tag)
        assert stream.error is None and stream.image_id, stream.error
        self.images.append(stream.image_id)
        return stream

    def remove(self) -> None:
        for reference in [*self.tags, *reversed(self.images)]:
            untag(self.engine, reference)


@pytest.fixture
def tiny(engine, tmp_path):
    made = Tiny(engine, tmp_path)
    yield made
    made.remove()


def test_the_image_store_is_recognised(engine):
    store = engine_module.image_store(engine)
    assert store in (engine_module.CLASSIC, engine_module.CONTAINERD, engine_module.PODMAN)
    expected = os.environ.get(EXPECTED_STORE_VARIABLE)
    if expected:
        assert store == expected


def test_sizes_are_named_for_what_they_are(engine, tiny):
    # 4 MB that do not compress, and 4 MB of zeros that do.
    folder, tag = tiny.context(
        "FROM scratch\nCOPY noise zeros /\n",
        {"noise": os.urandom(4_000_000), "zeros": bytes(4_000_000)},
    )
    image = tiny.build(folder, tag).image_id
    sizes = image_sizes(engine, image)
    assert sizes.unpacked is not None and sizes.unpacked >= 8_000_000
    if engine_module.image_store(engine) == engine_module.CONTAINERD:
        # Its `Size` is the compressed content: the zeros are nearly gone.
        assert sizes.compressed is not None and 4_000_000 <= sizes.compressed < 6_000_000
        assert "unpacked" in sizes.describe() and "compressed" in sizes.describe()
    else:
        assert sizes.compressed is None
        assert sizes.describe().endswith("unpacked")


def test_removing_an_image_keeps_the_cache_of_an_image_built_alike(engine, tiny):
    """The containerd store forgets build parents: untag must not take them along."""
    marker = uuid.uuid4().hex
    shared = f"FROM scratch\nCOPY shared /shared\nENV MARKER={marker}\n"
    folder_a, tag_a = tiny.context(shared + "COPY a /a\n", {"shared": b"shared\n", "a": b"a\n"})
    folder_b, tag_b = tiny.context(shared + "COPY b /b\n", {"shared": b"shared\n", "b": b"b\n"})
    tiny.build(folder_a, tag_a)
    tiny.build(folder_b, tag_b)
    untag(engine, tag_a)
    (folder_b / "b").write_text("b, changed\n")
    again = tiny.build(folder_b, tag_b)
    # COPY shared and ENV come from cache; the changed COPY does not.
    assert again.cached_steps >= 2, again.tail


def test_an_unchanged_rebuild_is_the_same_image(engine, tiny):
    """Labels in one sorted instruction: Podman's one-step-per-label, in random order, would
    give every rebuild a new ID and miss the cache of every image built on it."""
    folder, tag = tiny.context("FROM scratch\nCOPY x /x\n", {"x": uuid.uuid4().bytes})
    labels = {f"org.example.label-{n}": f"value {n} $HOME" for n in range(8)}
    first = tiny.build(folder, tag, labels)
    second = tiny.build(folder, tag, labels)
    assert second.image_id == first.image_id
    assert second.cached_steps == second.steps - 1  # all but FROM
    seen = (engine.api.inspect_image(first.image_id).get("Config") or {}).get("Labels") or {}
    assert {k: seen.get(k) for k in labels} == labels  # `$HOME` stays literal


def test_push_digest_from_either_stream_form():
    digest = "sha256:" + "5" * 64
    classic = PushStream()
    for entry in (
        {"status": f"latest: digest: {digest} size: 524"},
        {"progressDetail": {}, "aux": {"Tag": "latest", "Digest": digest, "Size": 524}},
    ):
        classic.feed(entry)
    containerd = PushStream()  # the containerd store and Podman: no aux record
    containerd.feed({"status": "The push refers to repository [r/o/i:latest]"})
    containerd.feed({"status": f"latest: digest: {digest} size: 532"})
    assert (classic.digest, classic.manifest_size) == (digest, 524)
    assert (containerd.digest, containerd.manifest_size) == (digest, 532)


def test_build_output_of_either_builder_is_followed():
    docker, podman = BuildStream(), BuildStream()
    for line in ("Step 1/3 : FROM x\n", "Step 2/3 : RUN y\n", " ---> Using cache\n"):
        docker.feed({"stream": line})
    for line in ("STEP 1/3: FROM x\n", "STEP 2/3: RUN y\n", "--> Using cache 0123abc\n"):
        podman.feed({"stream": line})
    assert (docker.steps, docker.cached_steps, docker.step) == (2, 1, "Step 2/3 : RUN y")
    assert (podman.steps, podman.cached_steps, podman.step) == (2, 1, "STEP 2/3: RUN y")
    staged = BuildStream()  # a multi-stage build: each line names its stage
    for line in ("[1/2] STEP 1/2: FROM x", "--> Using cache 0123abc", "[2/2] STEP 1/1: RUN z"):
        staged.feed({"stream": line + "\n"})
    assert (staged.steps, staged.cached_steps, staged.step) == (2, 1, "[2/2] STEP 1/1: RUN z")
