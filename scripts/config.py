"""Where images are published and what they are labelled with.

Registry and owner come from [tool.dask-gateway-ci] in pyproject.toml and
can be overridden without editing code:

    DASK_GATEWAY_CI_REGISTRY=ghcr.io DASK_GATEWAY_CI_OWNER=my-fork nox -s push-slurm
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from packaging.version import Version

from .backends import ROOT, Backend

LABEL_PREFIX = "org.opencontainers.image"
BACKEND_LABEL = "io.github.dask-gateway-ci.backend"


@dataclass(frozen=True)
class Settings:
    registry: str = "ghcr.io"
    owner: str = "dask"
    source: str = "https://github.com/dask/dask-gateway-ci"

    def repository(self, backend: Backend) -> str:
        return f"{self.registry}/{self.owner}/{backend.image}"

    def reference(self, backend: Backend, tag: str = "latest") -> str:
        return f"{self.repository(backend)}:{tag}"


def load_settings(root: Path = ROOT, environ: dict[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    table: dict = {}
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("dask-gateway-ci", {})
    defaults = Settings()
    return Settings(
        registry=environ.get("DASK_GATEWAY_CI_REGISTRY")
        or table.get("registry", defaults.registry),
        owner=(environ.get("DASK_GATEWAY_CI_OWNER") or table.get("owner", defaults.owner)).lower(),
        source=table.get("source", defaults.source),
    )


def state_dir(environ: dict[str, str] | None = None) -> Path:
    """Where this machine remembers which image IDs passed verify."""
    environ = os.environ if environ is None else environ
    if environ.get("DASK_GATEWAY_CI_STATE_DIR"):
        return Path(environ["DASK_GATEWAY_CI_STATE_DIR"])
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dask-gateway-ci"


def _git(*args: str, root: Path = ROOT) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def https_url(remote: str) -> str:
    """git@github.com:o/r.git or https://token@github.com/o/r.git -> https://github.com/o/r"""
    remote = re.sub(r"^git@([^:]+):", r"https://\1/", remote.strip())
    remote = re.sub(r"^(https?://)[^/@]+@", r"\1", remote)
    return remote.removesuffix(".git")


@dataclass(frozen=True)
class Provenance:
    revision: str
    committed: datetime
    source: str


def provenance(
    settings: Settings, paths: list[Path] | None = None, root: Path = ROOT
) -> Provenance:
    """The last commit that touched `paths` (the image's folders), and its time.

    Not HEAD and not "now": a commit elsewhere in the repository (or a
    rebuild) then gives the same labels, the same image ID and so a cache hit
    for this image and every image built on it; verify stays valid too.
    """
    scope = ["--", *(str(p) for p in paths)] if paths else []
    stamp = _git("log", "-1", "--format=%H %ct", *scope, root=root)
    if stamp:
        revision, seconds = stamp.split()
        committed = datetime.fromtimestamp(int(seconds), UTC)
    else:
        revision, committed = "unknown", datetime(1970, 1, 1, tzinfo=UTC)
    remote = _git("config", "--get", "remote.origin.url", root=root)
    source = https_url(remote) if remote and "://" in https_url(remote) else settings.source
    return Provenance(revision=revision, committed=committed, source=source)


def image_version(prov: Provenance) -> str:
    """A PEP 440 version: commit date, with the short revision as local part."""
    local = f"+g{prov.revision[:12]}" if prov.revision != "unknown" else ""
    return str(Version(f"{prov.committed:%Y.%m.%d}{local}"))


def oci_labels(backend: Backend, prov: Provenance) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}.source": prov.source,
        f"{LABEL_PREFIX}.revision": prov.revision,
        f"{LABEL_PREFIX}.created": prov.committed.strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{LABEL_PREFIX}.version": image_version(prov),
        f"{LABEL_PREFIX}.url": f"{prov.source}/tree/{prov.revision}/ci/{backend.name}",
        f"{LABEL_PREFIX}.title": backend.image,
        f"{LABEL_PREFIX}.description": backend.description,
        BACKEND_LABEL: backend.name,
    }
