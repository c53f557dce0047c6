"""A folder of release archives for the builds (scripts/sources.py), and `build --sources`.

The unit tests read the real declarations (ci/pbs, ci/hadoop) and serve a
tmp folder on loopback. The engine tests build pbs's `download` stage
through nox with a stand-in archive under the declared file name (its
checksum given as a build arg, as a maintainer testing a new release would),
so nothing here needs the internet or the real OpenPBS source.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scripts import sources
from scripts.backends import Backend, Download, load_all
from scripts.dockerfile import all_arg_defaults
from scripts.errors import DeclarationError, UserError
from scripts.platforms import SUPPORTED
from tests.nox_runner import aborted_line, nox, our_containers

ALL = load_all()
PBS = ALL["pbs"]
PBS_ARGS = all_arg_defaults(PBS.dockerfile)
PBS_FILE = f"openpbs-{PBS_ARGS['OPENPBS_VERSION']}.tar.gz"
# fetch-verified's line in the build, and the URL it was given.
DOWNLOADING = re.compile(r"fetch-verified: downloading (http://([\d.]+):(\d+)/(\S+))")


def stand_in(path: Path) -> str:
    """A small archive shaped like OpenPBS's (what the download stage checks); its SHA-512."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, mode, content in (
            ("openpbs-x/autogen.sh", 0o755, b"#!/bin/sh\n"),
            ("openpbs-x/configure.ac", 0o644, b"AC_INIT([openpbs])\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            archive.addfile(info, io.BytesIO(content))
    path.write_bytes(buffer.getvalue())
    return hashlib.sha512(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Each entry's size, mtime and mode: what a write of any kind would change."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in [folder, *folder.rglob("*")]
    }


def refused(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) != 0


# -- the declarations, as a build sees them ------------------------------------------


def test_pbs_wants_its_tag_archive_under_githubs_file_name():
    (item,) = sources.wanted(PBS, {}, "amd64")
    assert item.url == PBS_ARGS["OPENPBS_URL"]
    assert item.checksum == PBS_ARGS["OPENPBS_SHA512"]
    assert item.file == PBS_FILE
    assert item.download.algorithm == "sha512"


def test_a_version_given_as_build_arg_names_another_file_and_url():
    (item,) = sources.wanted(PBS, {"OPENPBS_VERSION": "99.1"}, "amd64")
    assert item.file == "openpbs-99.1.tar.gz"
    assert "v99.1" in item.url


@pytest.mark.parametrize("architecture", SUPPORTED)
def test_hadoop_wants_its_own_architectures_files_named_by_their_urls(architecture):
    found = sources.wanted(ALL["hadoop"], {}, architecture)
    suffix = "_AARCH64" if architecture == "arm64" else ""
    assert [w.download.url for w in found] == [f"HADOOP{suffix}_URL", f"TEMURIN{suffix}_URL"]
    for item in found:
        assert item.url.endswith("/" + item.file), item
        assert "%" not in item.file and item.file.endswith(".tar.gz")


def test_a_declared_arg_the_dockerfile_lacks_names_the_declaration(tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG X_URL=https://h/x.tgz\n"
    )
    broken = Backend("x", tmp_path, "", "x", downloads=(Download("X_URL", "X_SHA256"),))
    with pytest.raises(DeclarationError, match=r"backend.toml: build.downloads: X_SHA256 is not"):
        sources.wanted(broken, {}, "amd64")


# -- what the folder offers ----------------------------------------------------------


def test_a_matching_file_is_offered(tmp_path):
    checksum = stand_in(tmp_path / PBS_FILE)
    (offer,) = sources.offers(PBS, {"OPENPBS_SHA512": checksum}, "amd64", tmp_path)
    assert (offer.url_arg, offer.path) == ("OPENPBS_URL", tmp_path / PBS_FILE)


def test_a_wrong_file_is_one_line_with_the_file_and_both_checksums(tmp_path):
    actual = stand_in(tmp_path / PBS_FILE)
    with pytest.raises(UserError) as raised:
        sources.offers(PBS, {}, "amd64", tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert str(tmp_path / PBS_FILE) in message
    assert f"expected sha512:{PBS_ARGS['OPENPBS_SHA512']}" in message
    assert f"got sha512:{actual}" in message


def test_an_absent_file_is_downloaded_from_its_url_and_said_so(tmp_path, capsys):
    assert sources.offers(PBS, {}, "amd64", tmp_path) == ()
    said = capsys.readouterr()
    assert f"{PBS_FILE} is not in {tmp_path}; the build downloads {PBS_ARGS['OPENPBS_URL']}" in (
        said.out + said.err
    )


def test_a_url_given_as_build_arg_is_not_replaced(tmp_path):
    checksum = stand_in(tmp_path / PBS_FILE)
    args = {"OPENPBS_URL": "https://mirror.example/x.tar.gz", "OPENPBS_SHA512": checksum}
    assert sources.offers(PBS, args, "amd64", tmp_path) == ()


def test_the_folder_must_be_a_folder(tmp_path):
    with pytest.raises(UserError, match=r"^--sources nope: not a folder \(looked at "):
        sources.folder_of("nope", "", tmp_path)
    with pytest.raises(UserError, match=r"^DASK_GATEWAY_CI_SOURCES x: not a folder"):
        sources.folder_of(None, "x", tmp_path)
    assert sources.folder_of(None, "", tmp_path) is None
    assert sources.folder_of(".", "ignored", tmp_path) == tmp_path


# -- serving -------------------------------------------------------------------------


def test_served_files_go_away_with_the_block_and_the_folder_is_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "reachable_address", lambda client: sources.LOOPBACK)
    (tmp_path / "other.txt").write_text("not offered")
    checksum = stand_in(tmp_path / PBS_FILE)
    (offer,) = sources.offers(PBS, {"OPENPBS_SHA512": checksum}, "amd64", tmp_path)
    before = snapshot(tmp_path)
    with sources.served(None, (offer,)) as args:
        url = args["OPENPBS_URL"]
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert hashlib.sha512(answer.read()).hexdigest() == checksum
        base = url.rpartition("/")[0]
        for name in ("other.txt", "", f"../{tmp_path.name}/{PBS_FILE}"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"{base}/{name}", timeout=10)
    port = int(url.split(":")[2].split("/")[0])
    assert refused(port), f"port {port} still answers after the build"
    assert snapshot(tmp_path) == before


# -- through nox, on the engine ------------------------------------------------------


def build_download(env, *options: str):
    return nox("-s", "build", "--", "pbs", "--target", "download", *options, env=env, timeout=900)


@pytest.mark.usefixtures("untagged_builds_removed")
def test_build_takes_the_file_from_the_folder_and_leaves_nothing(engine, env, tmp_path):
    folder = tmp_path / "sources"
    folder.mkdir()
    checksum = stand_in(folder / PBS_FILE)
    before, containers = snapshot(folder), our_containers(engine)
    run = build_download(env, "--sources", str(folder), "--build-arg", f"OPENPBS_SHA512={checksum}")
    assert run.returncode == 0, run.output[-3000:]
    assert f"pbs: {PBS_FILE} from {folder} (" in run.output
    fetched = DOWNLOADING.search(run.output)
    assert fetched and fetched.group(4) == PBS_FILE, run.output[-3000:]
    assert "fetch-verified: sha512 OK" in run.output
    assert f"sent {PBS_FILE} (" in run.output
    host, port = fetched.group(2), int(fetched.group(3))
    assert refused(port, host), f"{host}:{port} still answers after the build"
    assert snapshot(folder) == before
    assert our_containers(engine) == containers


def test_build_refuses_a_wrong_file_in_one_line_before_building(engine, env, tmp_path):
    folder = tmp_path / "corrupted"
    folder.mkdir()
    actual = stand_in(folder / PBS_FILE)
    run = nox("-s", "build-pbs", "--", "--sources", str(folder), env=env, timeout=900)
    assert run.returncode != 0
    line = aborted_line(run)
    assert str(folder / PBS_FILE) in line
    assert f"expected sha512:{PBS_ARGS['OPENPBS_SHA512']}, got sha512:{actual}" in line
    assert "==> build" not in run.output, "it built before checking the folder"


@pytest.mark.usefixtures("untagged_builds_removed")
def test_build_falls_back_to_the_url_for_an_absent_file(engine, env, tmp_path):
    """Here the URL is unreachable, so the build then fails; where it is not, it downloads."""
    folder = tmp_path / "empty"
    folder.mkdir()
    run = build_download(env, "--sources", str(folder))
    url = PBS_ARGS["OPENPBS_URL"]
    assert f"{PBS_FILE} is not in {folder}; the build downloads {url}" in run.output
    assert f"fetch-verified: downloading {url}" in run.output, run.output[-3000:]
