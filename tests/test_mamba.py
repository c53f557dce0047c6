"""The `mamba` compatibility command of the base image (ci/base/files/usr/local/bin/mamba).

Upstream dask-gateway's _install.sh runs `mamba install -c conda-forge NAME...`
as root; the images have no conda, so the command installs the names from
PyPI with pip, says so, and refuses anything else in one line.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys

import pytest

from scripts import trust
from tests.nox_runner import ROOT, nox, nox_env

SCRIPT = ROOT / "ci" / "base" / "files" / "usr" / "local" / "bin" / "mamba"


def load_mamba():
    loader = importlib.machinery.SourceFileLoader("mamba_command", str(SCRIPT))
    spec = importlib.util.spec_from_loader("mamba_command", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "names", "channels"),
    [
        (["install", "-c", "conda-forge", "contourpy", "pandas", "greenlet"],
         ["contourpy", "pandas", "greenlet"], ["conda-forge"]),
        (["install", "-y", "pykerberos"], ["pykerberos"], []),
        (["install", "--yes", "--channel=conda-forge", "-c", "defaults", "a.b-c_d"],
         ["a.b-c_d"], ["conda-forge", "defaults"]),
    ],
)  # fmt: skip
def test_mamba_reads_upstreams_command_lines(args, names, channels):
    assert load_mamba().parse(args) == (names, channels)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "only `mamba install` is supported, not `mamba`"),
        (["update", "conda"], "only `mamba install` is supported, not `mamba update conda`"),
        (["install"], "no package named"),
        (["install", "-c"], "-c needs a channel name"),
        (["install", "pandas=2.1"], "only plain package names are supported"),
        (["install", "--file", "x.txt"], "option --file is not supported"),
    ],
)
def test_mamba_refuses_anything_else(args, says):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("mamba: ") and says in line
    assert "use pip" in line


@pytest.mark.docker
def test_mamba_installs_with_pip_and_says_so(engine, tmp_path):
    """For real, in the base image, as root: the names land in /opt/python."""
    run = nox("-s", "build-base", env=nox_env(tmp_path / "state"))
    assert run.returncode == 0, run.output[-3000:]
    from scripts.backends import load_all
    from scripts.settings import load_settings

    reference = load_settings(environ=nox_env(tmp_path)).reference(load_all()["base"])
    volumes, environment = trust.forwarded(load_settings().forwarded)
    output = engine.containers.run(
        reference,
        [
            "sh",
            "-c",
            "mamba install -c conda-forge six && python -c 'import six; print(six.__file__)'",
        ],
        volumes=volumes,
        environment=environment,
        remove=True,
        stderr=True,
    ).decode()
    assert (
        "mamba: no conda in this image; installing six from PyPI into /opt/python with pip "
        "instead (channel conda-forge ignored)"
    ) in output
    assert "/opt/python/lib/python3" in output.splitlines()[-1]
