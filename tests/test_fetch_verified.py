"""ci/base/files/usr/local/bin/fetch-verified, run with this Python against a local server.

No Docker: the script is plain Python, and the images run the same file. Every
failure must be one line on stderr naming the URL (and, with --url-arg, the
build arg that overrides it), and nothing unverified may stay on disk.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_server import serve
from tests.registry import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ci" / "base" / "files" / "usr" / "local" / "bin" / "fetch-verified"
PAYLOAD = b"dask-gateway-ci fetch-verified test payload\n" * 1000


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, Path]]:
    """(URL of a served file, a destination path that does not exist yet)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "release.tar.gz").write_bytes(PAYLOAD)
    with serve(root) as base:
        yield f"{base}/release.tar.gz", tmp_path / "out" / "release.tar.gz"


def fetch(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    print(f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done


def failure_line(done: subprocess.CompletedProcess) -> str:
    """The one line that explains the failure: the last one, and no traceback."""
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines, "no message on stderr"
    assert lines[-1].startswith("fetch-verified: ")
    return lines[-1]


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


# -- success -----------------------------------------------------------------


def test_right_sha512_writes_the_file(served):
    url, dest = served
    dest.parent.mkdir()
    done = fetch(url, f"sha512:{sha512(PAYLOAD)}", str(dest), "--url-arg", "HADOOP_URL")
    assert done.returncode == 0
    assert dest.read_bytes() == PAYLOAD
    assert done.stdout == ""
    assert f"sha512 OK, {len(PAYLOAD)} bytes -> {dest}" in done.stderr


def test_right_sha256_writes_the_file(served):
    url, dest = served
    dest.parent.mkdir()
    done = fetch(url, f"sha256:{hashlib.sha256(PAYLOAD).hexdigest()}", str(dest))
    assert done.returncode == 0
    assert dest.read_bytes() == PAYLOAD


def test_apache_style_digest_spelling_is_accepted(served):
    """Apache's .sha512 files print the digest upper case, in blocks."""
    url, dest = served
    dest.parent.mkdir()
    digest = sha512(PAYLOAD).upper()
    grouped = " ".join(digest[i : i + 8] for i in range(0, len(digest), 8))
    done = fetch(url, f"SHA512:{grouped}", str(dest))
    assert done.returncode == 0
    assert dest.read_bytes() == PAYLOAD


# -- checksum mismatch ---------------------------------------------------------


def test_wrong_checksum_fails_with_one_line_and_removes_the_file(served):
    url, dest = served
    dest.parent.mkdir()
    wrong = sha512(b"something else")
    done = fetch(url, f"sha512:{wrong}", str(dest), "--url-arg", "HADOOP_URL")
    line = failure_line(done)
    assert "checksum mismatch" in line
    assert url in line
    assert f"expected sha512:{wrong}" in line
    assert f"got sha512:{sha512(PAYLOAD)}" in line
    assert [x for x in done.stderr.splitlines() if "checksum mismatch" in x] == [line]
    assert not dest.exists(), "an unverified download was left behind"


def test_wrong_sha256_also_removes_the_file(served):
    url, dest = served
    dest.parent.mkdir()
    done = fetch(url, f"sha256:{'0' * 64}", str(dest))
    assert "checksum mismatch" in failure_line(done)
    assert not dest.exists()


def test_checksum_of_the_wrong_length_is_a_mismatch_not_a_pass(served):
    url, dest = served
    dest.parent.mkdir()
    done = fetch(url, f"sha512:{sha512(PAYLOAD)[:64]}", str(dest))
    assert "checksum mismatch" in failure_line(done)
    assert not dest.exists()


# -- unreachable ---------------------------------------------------------------


def test_unreachable_url_names_the_url_and_the_build_arg(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/x"
    dest = tmp_path / "x"
    done = fetch(url, f"sha512:{'0' * 128}", str(dest), "--url-arg", "HADOOP_URL", "--timeout", "5")
    line = failure_line(done)
    assert f"cannot download {url}" in line
    assert "set build arg HADOOP_URL" in line
    assert len([x for x in done.stderr.splitlines() if url in x]) == 2  # "downloading", failure
    assert not dest.exists()


def test_unreachable_url_without_url_arg_has_no_hint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/x"
    done = fetch(url, f"sha512:{'0' * 128}", str(tmp_path / "x"), "--timeout", "5")
    line = failure_line(done)
    assert url in line
    assert "build arg" not in line


def test_http_error_names_the_url_and_leaves_no_file(served):
    url, dest = served
    dest.parent.mkdir()
    missing = url.replace("release.tar.gz", "missing.tar.gz")
    done = fetch(missing, f"sha512:{sha512(PAYLOAD)}", str(dest), "--url-arg", "OPENPBS_URL")
    line = failure_line(done)
    assert f"cannot download {missing}" in line
    assert "not found" in line.lower()
    assert "set build arg OPENPBS_URL" in line
    assert not dest.exists()


def test_unwritable_destination_is_one_line(served):
    url, dest = served  # dest's folder does not exist
    done = fetch(url, f"sha512:{sha512(PAYLOAD)}", str(dest), "--url-arg", "HADOOP_URL")
    line = failure_line(done)
    assert url in line
    assert "set build arg HADOOP_URL" in line


# -- malformed checksum ----------------------------------------------------------


@pytest.mark.parametrize(
    "checksum",
    [
        "nocolon",  # no algorithm
        "sha512:",  # no digest
        "sha999:abcdef",  # no such algorithm
        "",  # nothing
    ],
)
def test_malformed_checksum_is_one_clear_line_before_any_download(served, checksum):
    url, dest = served
    dest.parent.mkdir()
    done = fetch(url, checksum, str(dest))
    line = failure_line(done)
    assert "checksum must look like sha256:HEX or sha512:HEX" in line
    assert repr(checksum) in line
    assert "downloading" not in done.stderr, "it downloaded before checking its arguments"
    assert not dest.exists()
