"""Where images are published: registry, owner and the moving tag.

Registry and owner come from [tool.dask-gateway-ci] in pyproject.toml and
can be overridden without editing code:

    DASK_GATEWAY_CI_REGISTRY=ghcr.io DASK_GATEWAY_CI_OWNER=my-fork nox -s push-slurm

Both are checked here, before anything talks to the engine, so a typo is one
line naming where the value came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .backends import Backend
from .errors import UserError
from .project import ROOT

# The tag that always names the newest verified image of a backend.
LATEST = "latest"

# distribution/reference: a host (name or IPv4, optional port), then path
# components of lower-case letters and digits joined by ".", "_", "__" or "-".
REGISTRY = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?$"
)
PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass(frozen=True)
class Settings:
    registry: str = "ghcr.io"
    owner: str = "dask"
    source: str = "https://github.com/dask/dask-gateway-ci"

    def repository(self, backend: Backend) -> str:
        return f"{self.registry}/{self.owner}/{backend.image}"

    def reference(self, backend: Backend, tag: str = LATEST) -> str:
        return f"{self.repository(backend)}:{tag}"


def check_registry(value: str, where: str) -> str:
    if "://" in value:
        bare = value.split("://", 1)[1].rstrip("/")
        raise UserError(f"{where} {value!r}: give the registry host only, e.g. {bare!r}")
    if not REGISTRY.match(value):
        raise UserError(
            f"{where} {value!r} is not a registry host (like ghcr.io or localhost:5000)"
        )
    return value


def check_owner(value: str, where: str) -> str:
    parts = value.split("/")
    if not value or not all(PATH_COMPONENT.match(part) for part in parts):
        raise UserError(
            f"{where} {value!r} is not a valid image owner: lower-case letters, digits and "
            "single '.', '_' or '-' between them (a GitHub user or organisation name)"
        )
    return value


def load_settings(root: Path = ROOT, environ: dict[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    table: dict = {}
    pyproject = root / "pyproject.toml"
    if pyproject.exists():
        table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("dask-gateway-ci", {})
    defaults = Settings()

    def pick(variable: str, key: str, default: str) -> tuple[str, str]:
        if environ.get(variable):
            return environ[variable], variable
        value = table.get(key, default)
        if not isinstance(value, str):
            raise UserError(f"{pyproject} [tool.dask-gateway-ci] {key}: expected a string")
        return value, f"{pyproject.name} [tool.dask-gateway-ci] {key}"

    registry, registry_from = pick("DASK_GATEWAY_CI_REGISTRY", "registry", defaults.registry)
    owner, owner_from = pick("DASK_GATEWAY_CI_OWNER", "owner", defaults.owner)
    source = table.get("source", defaults.source)
    return Settings(
        registry=check_registry(registry.strip(), registry_from),
        # GitHub owners are case-insensitive, image names are lower case.
        owner=check_owner(owner.strip().lower(), owner_from),
        source=source,
    )
