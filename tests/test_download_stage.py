"""The `download` stages of ci/hadoop and ci/pbs, built through nox on the real engine.

A small fake release tarball, shaped like the real one, is served on
127.0.0.1 and the stage is built with `--target download --network host` and
the URL/checksum build args pointing at it. Nothing here needs the internet:
the default URLs are only used to check that an unreachable one fails fast
with a line naming the URL and the build arg that overrides it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scripts import backends
from tests.http_server import serve
from tests.nox_runner import Run, aborted_line, nox, nox_env
from tests.registry import free_port, unavailable

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
ALL = backends.load_all()
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the classic builder colours RUN's stderr
BUILT = re.compile(r"^built \S+ \(target download\): sha256:([0-9a-f]{12})", re.M)


@dataclass(frozen=True)
class Download:
    backend: str
    version_arg: str
    url_arg: str
    checksum_arg: str
    top: str  # the release's top folder, stripped by the stage's tar
    files: dict[str, tuple[int, bytes]]  # path under `top` -> (mode, content)
    required: str  # a file the stage tests for after unpacking
    check: str  # shell run in the built download stage; must print "ok"

    @property
    def version(self) -> str:
        return ALL[self.backend].build_args[self.version_arg]

    def default_url(self) -> str:
        """The URL the build uses without overrides: backend.toml, else the Dockerfile's ARG."""
        args = dict(ALL[self.backend].build_args)
        if self.url_arg not in args:
            text = (ALL[self.backend].folder / "Dockerfile").read_text()
            match = re.search(rf"^ARG {self.url_arg}=(\S+)$", text, re.M)
            assert match, f"no default for {self.url_arg} in the Dockerfile"
            args[self.url_arg] = match.group(1)
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], args[self.url_arg])


def _hadoop() -> Download:
    version = ALL["hadoop"].build_args["HADOOP_VERSION"]
    jar = f"share/hadoop/yarn/hadoop-yarn-applications-distributedshell-{version}.jar"
    return Download(
        backend="hadoop",
        version_arg="HADOOP_VERSION",
        url_arg="HADOOP_URL",
        checksum_arg="HADOOP_SHA512",
        top=f"hadoop-{version}",
        files={
            "bin/container-executor": (0o6775, b"#!/bin/sh\n"),
            "bin/hadoop": (0o775, b"#!/bin/sh\necho fake hadoop\n"),
            jar: (0o664, b"PK fake jar"),
            "share/doc/index.html": (0o644, b"docs"),
            "share/hadoop/tools/lib/aws-sdk.jar": (0o644, b"big"),
            "etc/hadoop/core-site.xml": (0o666, b"<configuration/>\n"),
        },
        required=jar,
        # Unpacked at /opt/hadoop-unpacked, docs and tools dropped, nothing
        # group/other-writable, owned by root (not by the tarball's uid).
        check=(
            "set -e; d=/opt/hadoop-unpacked; test -x $d/bin/container-executor; "
            f"test -f $d/{jar}; test ! -e $d/share/doc; test ! -e $d/share/hadoop/tools; "
            'test -z "$(find $d -perm /022)"; test -z "$(find $d ! -user root)"; '
            "test ! -e /tmp/hadoop.tar.gz; echo ok"
        ),
    )


def _pbs() -> Download:
    version = ALL["pbs"].build_args["OPENPBS_VERSION"]
    return Download(
        backend="pbs",
        version_arg="OPENPBS_VERSION",
        url_arg="OPENPBS_URL",
        checksum_arg="OPENPBS_SHA512",
        # GitHub's archive of tag vX names its folder openpbs-X.
        top=f"openpbs-{version}",
        files={
            "autogen.sh": (0o755, b"#!/bin/sh\nexit 0\n"),
            "configure.ac": (0o644, b"AC_INIT([openpbs])\n"),
            "src/cmds/qsub.c": (0o644, b"int main(void) { return 0; }\n"),
        },
        required="autogen.sh",
        check=(
            "set -e; d=/usr/src/openpbs; test -x $d/autogen.sh; test -f $d/src/cmds/qsub.c; "
            "test ! -e /tmp/openpbs.tar.gz; echo ok"
        ),
    )


DOWNLOADS = {d.backend: d for d in (_hadoop(), _pbs())}


def make_tarball(path: Path, download: Download, *, without: str | None = None) -> str:
    """A .tar.gz like the release (one top folder, directories first); its SHA-512."""
    with tarfile.open(path, "w:gz") as archive:
        directories = {download.top}
        for name in download.files:
            parts = name.split("/")[:-1]
            directories.update(
                "/".join([download.top, *parts[:i]]) for i in range(1, len(parts) + 1)
            )
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o775  # group-writable, as some release tarballs are
            info.uid, info.gid = 1234, 1234
            archive.addfile(info)
        for name, (mode, content) in sorted(download.files.items()):
            if name == without:
                continue
            info = tarfile.TarInfo(f"{download.top}/{name}")
            info.size = len(content)
            info.mode = mode
            info.uid, info.gid = 1234, 1234
            archive.addfile(info, io.BytesIO(content))
    return hashlib.sha512(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Served:
    base_url: str
    digests: dict[str, str]  # file name -> SHA-512


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("www")
    digests = {}
    for download in DOWNLOADS.values():
        good = f"{download.top}.tar.gz"
        digests[good] = make_tarball(root / good, download)
        broken = f"{download.top}-without-{Path(download.required).name}.tar.gz"
        digests[broken] = make_tarball(root / broken, download, without=download.required)
    with serve(root) as base_url:
        yield Served(base_url, digests)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return nox_env(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def built_images(engine) -> Iterator[list[str]]:
    """Download-stage images this module built; removed at the end (they are untagged)."""
    from docker.errors import APIError

    images: list[str] = []
    yield images
    for image in images:
        with contextlib.suppress(APIError):
            engine.images.remove(image)


def run_in(engine, image: str, script: str) -> str:
    """Run `script` in a throwaway container of `image` (no network); its output."""
    container = engine.containers.create(image, ["bash", "-c", script], network_mode="none")
    try:
        container.start()
        status = container.wait(timeout=120)
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status.get("StatusCode") == 0, output
    return output.strip()


def build_download(env, download: Download, url: str, digest: str) -> Run:
    return nox(
        "-s",
        "build",
        "--",
        download.backend,
        "--target",
        "download",
        "--network",
        "host",
        "--build-arg",
        f"{download.url_arg}={url}",
        "--build-arg",
        f"{download.checksum_arg}={digest}",
        env=env,
        timeout=900,
    )


def lines_with(run: Run, *needles: str) -> list[str]:
    """Lines of the build output with all needles (nox's own abort line quotes them again)."""
    return [
        line
        for line in run.lines
        if all(n in line for n in needles) and not line.startswith("nox > ")
    ]


def assert_names_the_download_step(line: str, download: Download) -> None:
    assert f"dask-gateway-ci-{download.backend}" in line, line
    assert "failed at Step " in line, line
    assert "fetch-verified" in line or "RUN " in line, line


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_right_checksum_builds_the_download_stage(engine, env, served, built_images, name):
    download = DOWNLOADS[name]
    file = f"{download.top}.tar.gz"
    run = build_download(env, download, f"{served.base_url}/{file}", served.digests[file])
    assert run.returncode == 0, run.output[-3000:]
    assert lines_with(run, "fetch-verified: sha512 OK")
    match = BUILT.search(run.output)
    assert match, run.output[-3000:]
    image = match.group(1)
    built_images.append(image)
    assert run_in(engine, image, download.check).splitlines()[-1] == "ok"


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_wrong_checksum_fails_at_the_download_step(engine, env, served, name):
    download = DOWNLOADS[name]
    file = f"{download.top}.tar.gz"
    url = f"{served.base_url}/{file}"
    wrong = hashlib.sha512(b"not the release").hexdigest()
    run = build_download(env, download, url, wrong)
    assert run.returncode != 0
    mismatch = lines_with(run, "fetch-verified: checksum mismatch", url)
    assert len(mismatch) == 1, run.output[-3000:]
    assert f"expected sha512:{wrong}" in mismatch[0]
    abort = aborted_line(run)
    assert_names_the_download_step(abort, download)
    assert "(target download)" in abort
    assert "last output: fetch-verified: checksum mismatch" in abort
    assert not BUILT.search(run.output)


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_verified_tarball_without_the_expected_file_fails(engine, env, served, name):
    """The stage checks what it unpacked, not only the checksum."""
    download = DOWNLOADS[name]
    file = f"{download.top}-without-{Path(download.required).name}.tar.gz"
    run = build_download(env, download, f"{served.base_url}/{file}", served.digests[file])
    assert run.returncode != 0
    assert lines_with(run, "fetch-verified: sha512 OK")
    assert_names_the_download_step(aborted_line(run), download)


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_unreachable_override_fails_fast_naming_the_build_arg(engine, env, served, name):
    download = DOWNLOADS[name]
    url = f"http://127.0.0.1:{free_port()}/{download.top}.tar.gz"
    started = time.monotonic()
    run = build_download(env, download, url, served.digests[f"{download.top}.tar.gz"])
    seconds = time.monotonic() - started
    print(f"{name}: unreachable override failed after {seconds:.1f}s")
    assert run.returncode != 0
    hits = lines_with(run, f"cannot download {url}", f"set build arg {download.url_arg}")
    assert len(hits) == 1, run.output[-3000:]
    assert_names_the_download_step(aborted_line(run), download)
    assert seconds < 300


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_default_url_unreachable_fails_fast(engine, env, name):
    """`nox -s build-<backend>` offline: one line naming the URL and its build arg."""
    download = DOWNLOADS[name]
    url = download.default_url()
    if _resolves(urlsplit(url).hostname):
        pytest.skip(f"{url} may be reachable here: this checks the offline failure")
    started = time.monotonic()
    run = nox("-s", f"build-{name}", env=env, timeout=900)
    seconds = time.monotonic() - started
    print(f"nox -s build-{name} failed after {seconds:.1f}s (base from cache included)")
    assert run.returncode != 0
    if "failed to create endpoint" in run.output:  # RUN cannot join the default bridge
        unavailable(f"the engine cannot attach build containers to its bridge: {run.lines[-1]}")
    hits = lines_with(run, f"cannot download {url}", f"set build arg {download.url_arg}")
    assert len(hits) == 1, run.output[-3000:]
    assert ANSI.sub("", hits[0]).startswith("fetch-verified: "), hits[0]
    abort = aborted_line(run)
    assert f"build-{name} aborted" in abort
    assert_names_the_download_step(abort, download)
    assert f"{url}" in abort and f"set build arg {download.url_arg}" in abort
    assert seconds < 300, f"took {seconds:.0f}s: the download should fail fast"
