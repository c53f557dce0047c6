"""Several architectures: --platform, the arm64 Debian image, and the published index.

The engine tests make their arm64 and amd64 images the way bootstrap-debian
does (debian.image_archive, then `docker load`), from a one-file rootfs: no
emulation is needed, and every engine records the architecture written in
the image's config. The index goes to a real local registry with auth,
through the Docker CLI's `docker manifest` (index.py).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest

from scripts import debian, index, plan, platforms, publish, state
from scripts.backends import Backend
from scripts.errors import UserError
from scripts.images import local_reference, untag
from scripts.platforms import Platform
from scripts.settings import load_settings
from tests.test_publish import (  # the same registry, credentials and settings
    IMAGE,
    clean_env,  # noqa: F401 - fixtures
    client,  # noqa: F401
    engine_ok,  # noqa: F401
    env,  # noqa: F401
    login,  # noqa: F401
    registry,  # noqa: F401
)

NAME = f"publishtest/{IMAGE}"
AMD64, ARM64 = Platform("amd64"), Platform("arm64")
BOTH = (AMD64, ARM64)

# -- no engine ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "architecture"),
    [
        ("linux/arm64", "arm64"),
        ("linux/arm64/v8", "arm64"),
        ("arm64", "arm64"),
        ("aarch64", "arm64"),
        ("linux/amd64", "amd64"),
        ("x86_64", "amd64"),
    ],
)
def test_platform_spellings(given, architecture):
    assert platforms.parse(given).architecture == architecture


@pytest.mark.parametrize("given", ["linux/riscv64", "windows/amd64", "linux/arm64/v7", "arm"])
def test_unsupported_platforms_are_one_line_naming_the_choices(given):
    with pytest.raises(UserError) as raised:
        platforms.parse(given)
    assert str(raised.value) == (
        f"--platform {given}: not a platform these images are built for; linux/amd64, linux/arm64"
    )


def test_local_names_per_architecture():
    settings = load_settings()
    backend = Backend(name="slurm", folder=Path("."), description="d", image="img")
    assert local_reference(settings, backend, None).endswith("/img:latest")
    assert local_reference(settings, backend, AMD64).endswith("/img:latest")
    assert local_reference(settings, backend, ARM64).endswith("/img:latest-arm64")
    assert ARM64.external("debian:trixie-slim") == "arm64v8/debian:trixie-slim"
    assert AMD64.external("debian:trixie-slim") == "debian:trixie-slim"
    assert ARM64.external("registry.example/me/debian:trixie") == (
        "registry.example/me/debian:trixie-arm64"
    )


def _binfmt(folder: Path, text: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (folder / f"qemu-{debian.KERNEL_NAME['arm64']}").write_text(text)
    return folder


def test_emulation_is_checked_before_debootstrap(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "host_architecture", lambda: "amd64")
    enabled = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {}\n"
    debian.check_emulation("amd64", _binfmt(tmp_path / "none", None))  # native: no qemu
    debian.check_emulation("arm64", _binfmt(tmp_path / "ok", enabled.format("POCF")))
    with pytest.raises(UserError) as raised:
        debian.check_emulation("arm64", _binfmt(tmp_path / "missing", None))
    assert "no qemu-aarch64 in" in str(raised.value)
    assert "apt-get install -y qemu-user-static binfmt-support" in str(raised.value)
    # Without F the interpreter is looked up inside the chroot or container: not there.
    for text in (enabled.format("P"), "disabled\n" + enabled.format("F")[8:]):
        with pytest.raises(UserError, match="not enabled with the F flag"):
            debian.check_emulation("arm64", _binfmt(tmp_path / uuid.uuid4().hex, text))
    # Debian's own registration (PF): sudo would not get root in the containers.
    with pytest.raises(UserError, match="without the C flag"):
        debian.check_emulation("arm64", _binfmt(tmp_path / "debian", enabled.format("PF")))


def _given(architectures: str | None = None):
    """The settings of a run with DASK_GATEWAY_CI_ARCHITECTURES as given (None: unset)."""
    given = {} if architectures is None else {plan.ARCHITECTURES_VARIABLE: architectures}
    return load_settings(environ=given)


def test_plan_architectures_and_what_publish_passes():
    assert plan.architectures(_given()) == ["amd64", "arm64"]
    assert plan.architectures(_given("amd64")) == ["amd64"]
    assert plan.architectures(_given("arm64, amd64")) == [
        "amd64",
        "arm64",
    ]
    with pytest.raises(UserError, match="amd64 cannot be left out"):
        plan.architectures(_given("arm64"))
    with pytest.raises(UserError, match="unknown architecture 'ppc64el'"):
        plan.architectures(_given("amd64,ppc64el"))
    both = plan.plan({}, {}, _given())
    assert json.loads(both["platform_options"]) == [
        "--platform=linux/amd64",
        "--platform=linux/arm64",
    ]
    only = plan.plan({}, {}, _given("amd64"))
    assert json.loads(only["platform_options"]) == []  # the tags stay the image itself


def test_the_docker_cli_needs_its_manifest_command(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Usage: docker [OPTIONS] COMMAND'\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(UserError, match="has no `docker manifest` command"):
        index.docker_cli(load_settings(environ={index.CLI_VARIABLE: str(fake)}))


# -- against the engine and a local registry --------------------------------------------


def _rootfs(folder: Path, content: str) -> Path:
    """A one-file layer: unique content, nothing to run."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "x"
    data.write_text(f"{content} {uuid.uuid4().hex}\n")
    layer = folder / "layer.tar"
    with tarfile.open(layer, "w") as archive:
        archive.add(str(data), arcname="x")
    return layer


@pytest.fixture
def backend(tmp_path):
    return Backend(name="publishtest", folder=tmp_path, description="publish test", image=IMAGE)


@pytest.fixture
def made(client, backend, tmp_path):  # noqa: F811 - the fixture imported above
    """made(platform, content, verified=True) -> image ID under its local name."""
    ids: list[str] = []

    def make(platform: Platform, content: str, verified: bool = True) -> str:
        folder = tmp_path / f"image-{len(ids)}"
        reference = local_reference(load_settings(), backend, platform)
        archive = folder / "image.tar"
        debian.image_archive(_rootfs(folder, content), archive, reference, platform)
        with archive.open("rb") as data:
            client.images.load(data)
        image = client.images.get(reference).id
        ids.append(image)
        if verified:
            state.record_verified(load_settings(), image, backend.name, 1.0)
        return image

    yield make
    for image in ids:
        untag(client, image)


needs_cli = pytest.mark.skipif(
    shutil.which("docker") is None, reason="the Docker CLI (docker manifest) is not installed"
)


@pytest.mark.docker
def test_a_loaded_bootstrap_archive_has_the_architecture_asked_for(client, made):  # noqa: F811
    for platform in BOTH:
        image = made(platform, "arch")
        inspected = client.api.inspect_image(image)
        assert inspected["Architecture"] == platform.architecture
        assert inspected["Config"]["Cmd"] == ["bash"]


def _index(server, tag: str) -> dict[str, str]:
    """architecture -> manifest digest of the index `tag`."""
    found = server.manifest(NAME, tag)
    assert found is not None, tag
    manifest = found[1]
    assert "manifests" in manifest, manifest
    return {m["platform"]["architecture"]: m["digest"] for m in manifest["manifests"]}


@pytest.mark.docker
@needs_cli
def test_latest_is_an_index_and_an_amd64_pull_gets_the_amd64_image(
    client,  # noqa: F811
    backend,
    made,
    registry,  # noqa: F811
    login,  # noqa: F811
    capfd,
):
    amd64, arm64 = made(AMD64, "amd64"), made(ARM64, "arm64")
    amd64_layers = client.api.inspect_image(amd64)["RootFS"]["Layers"]
    publish.push_image(client, load_settings(), backend, platforms=BOTH)
    entries = _index(registry, "latest")
    assert set(entries) == {"amd64", "arm64"}
    assert entries["amd64"] == registry.manifest_digest(NAME, "latest-amd64")
    assert entries["arm64"] == registry.manifest_digest(NAME, "latest-arm64")
    assert "(index of amd64, arm64)" in capfd.readouterr().err

    # What an amd64 machine gets from a plain `docker pull ...:latest`.
    reference = f"{registry.address}/{NAME}:latest"
    untag(client, amd64)
    untag(client, arm64)
    pulled = client.images.pull(reference, auth_config=login_config(registry))
    try:
        inspected = client.api.inspect_image(pulled.id)
        assert inspected["Architecture"] == "amd64"
        assert inspected["RootFS"]["Layers"] == amd64_layers
    finally:
        untag(client, reference)


def login_config(server) -> dict[str, str]:
    return {"username": server.user, "password": server.token}


@pytest.mark.docker
@needs_cli
def test_the_index_waits_for_every_architecture_to_pass_verify(
    client,  # noqa: F811
    backend,
    made,
    registry,  # noqa: F811
    login,  # noqa: F811
):
    made(AMD64, "amd64")
    made(ARM64, "arm64", verified=False)
    with pytest.raises(UserError) as raised:
        publish.push_image(client, load_settings(), backend, platforms=BOTH)
    assert ":latest-arm64" in str(raised.value)
    assert "verify-publishtest -- --platform linux/arm64" in str(raised.value)
    assert registry.tags(NAME) == []  # not even the amd64 image went


@pytest.mark.docker
def test_an_arm64_image_alone_is_never_published_as_the_tag(
    client,  # noqa: F811
    backend,
    made,
    registry,  # noqa: F811
    login,  # noqa: F811
):
    # A plain local tag that is arm64 (built on an arm64 machine without --platform).
    image = made(ARM64, "arm64")
    settings = load_settings()
    client.api.tag(image, settings.repository(backend), tag="latest")
    with pytest.raises(UserError, match="--platform linux/amd64 --platform linux/arm64"):
        publish.push_image(client, settings, backend)
    assert registry.tags(NAME) == []


@pytest.mark.docker
@needs_cli
def test_dated_index_is_one_set_and_never_replaced(
    client,  # noqa: F811
    backend,
    made,
    registry,  # noqa: F811
    login,  # noqa: F811
    capfd,
):
    day = "2026-11-27"
    made(AMD64, "amd64")
    made(ARM64, "arm64")
    settings = load_settings()
    assert publish.tag_dated(client, settings, [backend], day=day, platforms=BOTH) == day
    first = _index(registry, day)
    assert sorted(registry.tags(NAME)) == sorted([day, f"{day}-amd64", f"{day}-arm64"])
    # The same images again: nothing to do.
    capfd.readouterr()
    assert publish.tag_dated(client, settings, [backend], day=day, platforms=BOTH) == day
    assert "already has this image" in capfd.readouterr().err
    # A new arm64 build: the day's index holds other content, auto takes .1.
    made(ARM64, "arm64 again")
    tag = publish.tag_dated(client, settings, [backend], day=day, suffix="auto", platforms=BOTH)
    assert tag == f"{day}.1"
    assert _index(registry, day) == first
    second = _index(registry, tag)
    assert second["amd64"] == first["amd64"] and second["arm64"] != first["arm64"]
