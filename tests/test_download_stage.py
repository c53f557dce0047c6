"""The `download` stages of ci/hadoop and ci/pbs, built through nox on the real engine.

Small fake release tarballs, shaped like the real ones, are served on
127.0.0.1 and the stage is built with `--target download --network host` and
the URL/checksum build args pointing at them. Nothing here needs the
internet: the default URLs are only used to check that an unreachable one
fails fast with a line naming the URL and the build arg that overrides it.

Versions, URLs and checksums come from the Dockerfiles' ARG defaults, their
only source.
"""

from __future__ import annotations

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

from scripts.dockerfile import all_arg_defaults
from tests.http_server import serve
from tests.nox_runner import Run, aborted_line, nox, nox_env
from tests.registry import free_port, unavailable

# Builds here leave untagged images on purpose (target stages, failed downloads).
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("untagged_builds_removed")]

CI = Path(__file__).resolve().parents[1] / "ci"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the classic builder colours RUN's stderr
BUILT = re.compile(r"^built \S+ \(target download\): sha256:([0-9a-f]{12})", re.M)


def arg_defaults(backend: str, ci: Path = CI) -> dict[str, str]:
    """Each ARG's default in ci/<backend>/Dockerfile (any stage), ${X} expanded."""
    return all_arg_defaults(ci / backend / "Dockerfile")


@dataclass(frozen=True)
class Fetch:
    """One fetch-verified download of a stage: build args <name>_URL and <name>_SHA*."""

    name: str  # HADOOP: args HADOOP_URL, HADOOP_SHA512 (HADOOP_AARCH64_* on aarch64)
    algorithm: str
    per_arch: bool  # a build per architecture, chosen by `dpkg --print-architecture`
    top: str  # the release's top folder, stripped by the stage's tar
    files: dict[str, tuple[int, bytes]]  # path under `top` -> (mode, content)
    required: str  # a file the stage tests for after unpacking

    def url_arg(self, machine: str) -> str:
        return f"{self._prefix(machine)}_URL"

    def checksum_arg(self, machine: str) -> str:
        return f"{self._prefix(machine)}_{self.algorithm.upper()}"

    def _prefix(self, machine: str) -> str:
        return f"{self.name}_AARCH64" if self.per_arch and machine == "aarch64" else self.name


@dataclass(frozen=True)
class Download:
    backend: str
    fetches: tuple[Fetch, ...]  # in the stage's order
    check: str  # shell run in the built download stage; must print "ok"


def _hadoop() -> Download:
    version = arg_defaults("hadoop")["HADOOP_VERSION"]
    jar = f"share/hadoop/yarn/hadoop-yarn-applications-distributedshell-{version}.jar"
    hadoop = Fetch(
        name="HADOOP",
        algorithm="sha512",
        per_arch=True,
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
    )
    java = Fetch(
        name="TEMURIN",
        algorithm="sha256",
        per_arch=True,
        top="jdk-17-jre",
        files={
            "bin/java": (0o775, b"#!/bin/sh\necho 'openjdk version \"17\"' >&2\n"),
            "lib/modules": (0o664, b"fake modules"),
        },
        required="bin/java",
    )
    return Download(
        backend="hadoop",
        fetches=(hadoop, java),
        # Unpacked at /opt/{hadoop,java}-unpacked, docs and tools dropped,
        # nothing group/other-writable, owned by root (not the tarball's uid).
        check=(
            "set -e; d=/opt/hadoop-unpacked; j=/opt/java-unpacked; "
            f"test -x $d/bin/container-executor; test -f $d/{jar}; test -x $j/bin/java; "
            "test ! -e $d/share/doc; test ! -e $d/share/hadoop/tools; "
            'test -z "$(find $d $j -perm /022)"; test -z "$(find $d $j ! -user root)"; '
            "test ! -e /tmp/hadoop.tar.gz; test ! -e /tmp/java.tar.gz; echo ok"
        ),
    )


def _pbs() -> Download:
    version = arg_defaults("pbs")["OPENPBS_VERSION"]
    openpbs = Fetch(
        name="OPENPBS",
        algorithm="sha512",
        per_arch=False,
        # GitHub's archive of tag vX names its folder openpbs-X.
        top=f"openpbs-{version}",
        files={
            "autogen.sh": (0o755, b"#!/bin/sh\nexit 0\n"),
            "configure.ac": (0o644, b"AC_INIT([openpbs])\n"),
            "src/cmds/qsub.c": (0o644, b"int main(void) { return 0; }\n"),
        },
        required="autogen.sh",
    )
    return Download(
        backend="pbs",
        fetches=(openpbs,),
        check=(
            "set -e; d=/usr/src/openpbs; test -x $d/autogen.sh; test -f $d/src/cmds/qsub.c; "
            "test ! -e /tmp/openpbs.tar.gz; echo ok"
        ),
    )


DOWNLOADS = {d.backend: d for d in (_hadoop(), _pbs())}
FETCHES = [(d.backend, i) for d in DOWNLOADS.values() for i in range(len(d.fetches))]
FETCH_IDS = [f"{b}-{DOWNLOADS[b].fetches[i].name.lower()}" for b, i in FETCHES]


def make_tarball(path: Path, fetch: Fetch, *, without: str | None = None) -> None:
    """A .tar.gz like the release (one top folder, directories first)."""
    with tarfile.open(path, "w:gz") as archive:
        directories = {fetch.top}
        for name in fetch.files:
            parts = name.split("/")[:-1]
            directories.update("/".join([fetch.top, *parts[:i]]) for i in range(1, len(parts) + 1))
        for directory in sorted(directories):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o775  # group-writable, as some release tarballs are
            info.uid, info.gid = 1234, 1234
            archive.addfile(info)
        for name, (mode, content) in sorted(fetch.files.items()):
            if name == without:
                continue
            info = tarfile.TarInfo(f"{fetch.top}/{name}")
            info.size = len(content)
            info.mode = mode
            info.uid, info.gid = 1234, 1234
            archive.addfile(info, io.BytesIO(content))


@dataclass(frozen=True)
class Served:
    base_url: str
    digests: dict[str, dict[str, str]]  # file name -> algorithm -> hex digest

    def good(self, fetch: Fetch) -> tuple[str, str]:
        """URL and checksum of `fetch`'s stand-in tarball."""
        return self.url_digest(f"{fetch.name.lower()}.tar.gz", fetch)

    def broken(self, fetch: Fetch) -> tuple[str, str]:
        """URL and checksum of a stand-in without `fetch.required`."""
        return self.url_digest(f"{fetch.name.lower()}-incomplete.tar.gz", fetch)

    def url_digest(self, file: str, fetch: Fetch) -> tuple[str, str]:
        return f"{self.base_url}/{file}", self.digests[file][fetch.algorithm]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("www")
    for download in DOWNLOADS.values():
        for fetch in download.fetches:
            make_tarball(root / f"{fetch.name.lower()}.tar.gz", fetch)
            incomplete = root / f"{fetch.name.lower()}-incomplete.tar.gz"
            make_tarball(incomplete, fetch, without=fetch.required)
    digests = {
        path.name: {a: hashlib.new(a, path.read_bytes()).hexdigest() for a in ("sha256", "sha512")}
        for path in root.iterdir()
    }
    with serve(root) as base_url:
        yield Served(base_url, digests)


@pytest.fixture(scope="module")
def machine(engine) -> str:
    """The engine's architecture as `uname -m` says it: x86_64, aarch64, ..."""
    return engine.info()["Architecture"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return nox_env(tmp_path_factory.mktemp("state"))


def run_in(engine, image: str, script: str) -> str:
    """Run `script` in a throwaway container of `image` (no network); its output."""
    container = engine.containers.create(
        image,
        ["bash", "-c", script],
        network_mode="none",
        labels={"io.github.dask-gateway-ci.test": "download-stage"},
    )
    try:
        container.start()
        status = container.wait(timeout=120)
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status.get("StatusCode") == 0, output
    return output.strip()


def build_args(
    download: Download, served: Served, machine: str, **override: tuple[str, str]
) -> dict[str, str]:
    """Build args that point every fetch at its stand-in; `override` by fetch name."""
    args = {}
    for fetch in download.fetches:
        url, digest = override.get(fetch.name) or served.good(fetch)
        args[fetch.url_arg(machine)] = url
        args[fetch.checksum_arg(machine)] = digest
    return args


def build_download(env, download: Download, args: dict[str, str]) -> Run:
    options = ["--target", "download", "--network", "host"]
    for key, value in args.items():
        options += ["--build-arg", f"{key}={value}"]
    return nox("-s", "build", "--", download.backend, *options, env=env, timeout=900)


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


def test_arg_defaults_reader_expands_references(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nARG V=1.2\nFROM ${BASE_IMAGE} AS download\nARG V\n"
        "ARG U=https://h/v${V}/x-${V}.tgz\nARG W=${U}.sha\nARG Z=${NOPE}\n"
    )
    assert arg_defaults("x", tmp_path) == {
        "V": "1.2",
        "U": "https://h/v1.2/x-1.2.tgz",
        "W": "https://h/v1.2/x-1.2.tgz.sha",
        "Z": "${NOPE}",
    }


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_right_checksums_build_the_download_stage(engine, env, served, machine, name):
    download = DOWNLOADS[name]
    run = build_download(env, download, build_args(download, served, machine))
    assert run.returncode == 0, run.output[-3000:]
    for fetch in download.fetches:
        assert lines_with(run, f"fetch-verified: {fetch.algorithm} OK")
    match = BUILT.search(run.output)
    assert match, run.output[-3000:]
    image = match.group(1)
    assert run_in(engine, image, download.check).splitlines()[-1] == "ok"


@pytest.mark.parametrize(("name", "index"), FETCHES, ids=FETCH_IDS)
def test_wrong_checksum_fails_at_that_download(engine, env, served, machine, name, index):
    download = DOWNLOADS[name]
    fetch = download.fetches[index]
    url, _ = served.good(fetch)
    wrong = hashlib.new(fetch.algorithm, b"not the release").hexdigest()
    run = build_download(
        env, download, build_args(download, served, machine, **{fetch.name: (url, wrong)})
    )
    assert run.returncode != 0
    mismatch = lines_with(run, "fetch-verified: checksum mismatch", url)
    assert len(mismatch) == 1, run.output[-3000:]
    assert f"expected {fetch.algorithm}:{wrong}" in mismatch[0]
    abort = aborted_line(run)
    assert_names_the_download_step(abort, download)
    assert "(target download)" in abort
    assert "last output: fetch-verified: checksum mismatch" in abort
    assert not BUILT.search(run.output)


@pytest.mark.parametrize(("name", "index"), FETCHES, ids=FETCH_IDS)
def test_verified_tarball_without_the_expected_file_fails(
    engine, env, served, machine, name, index
):
    """The stage checks what it unpacked, not only the checksum."""
    download = DOWNLOADS[name]
    fetch = download.fetches[index]
    run = build_download(
        env, download, build_args(download, served, machine, **{fetch.name: served.broken(fetch)})
    )
    assert run.returncode != 0
    assert lines_with(run, f"fetch-verified: {fetch.algorithm} OK")
    assert_names_the_download_step(aborted_line(run), download)


@pytest.mark.parametrize(("name", "index"), FETCHES, ids=FETCH_IDS)
def test_unreachable_override_fails_fast_naming_the_build_arg(
    engine, env, served, machine, name, index
):
    download = DOWNLOADS[name]
    fetch = download.fetches[index]
    url = f"http://127.0.0.1:{free_port()}/{fetch.name.lower()}.tar.gz"
    _, digest = served.good(fetch)
    started = time.monotonic()
    run = build_download(
        env, download, build_args(download, served, machine, **{fetch.name: (url, digest)})
    )
    seconds = time.monotonic() - started
    print(f"{name}: unreachable {fetch.url_arg(machine)} failed after {seconds:.1f}s")
    assert run.returncode != 0
    hits = lines_with(run, f"cannot download {url}", f"set build arg {fetch.url_arg(machine)}")
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
def test_default_url_unreachable_fails_fast(engine, env, machine, name):
    """`nox -s build-<backend>` offline: one line naming the URL and its build arg."""
    download = DOWNLOADS[name]
    first = download.fetches[0]
    url = arg_defaults(name)[first.url_arg(machine)]
    assert url.startswith("https://") and "${" not in url, url
    if _resolves(urlsplit(url).hostname):
        pytest.skip(f"{url} may be reachable here: this checks the offline failure")
    started = time.monotonic()
    run = nox("-s", f"build-{name}", env=env, timeout=900)
    seconds = time.monotonic() - started
    print(f"nox -s build-{name} failed after {seconds:.1f}s (base from cache included)")
    assert run.returncode != 0
    if "failed to create endpoint" in run.output:  # RUN cannot join the default bridge
        unavailable(f"the engine cannot attach build containers to its bridge: {run.lines[-1]}")
    hits = lines_with(run, f"cannot download {url}", f"set build arg {first.url_arg(machine)}")
    assert len(hits) == 1, run.output[-3000:]
    assert ANSI.sub("", hits[0]).startswith("fetch-verified: "), hits[0]
    abort = aborted_line(run)
    assert f"build-{name} aborted" in abort
    assert_names_the_download_step(abort, download)
    assert f"{url}" in abort and f"set build arg {first.url_arg(machine)}" in abort
    assert seconds < 300, f"took {seconds:.0f}s: the download should fail fast"
