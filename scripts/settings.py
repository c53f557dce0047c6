"""What a run is set to: read once per session (cli.run) and passed down.

Every environment variable the tool reads is named here. Where images are
published (registry, owner) comes from [tool.dask-gateway-ci] in
pyproject.toml and can be overridden without editing code:

    DASK_GATEWAY_CI_REGISTRY=ghcr.io DASK_GATEWAY_CI_OWNER=my-fork nox -s push-slurm

Both are checked here, before anything talks to the engine, so a typo is one
line naming where the value came from. The run's other settings (ready
timeout, host ports, the checkout, the sources folder, what is forwarded into containers, a
plan's backends and architectures, push retries, the Docker CLI and config,
the state folder, the job summary, registry credentials) are read here too,
as given, and checked by the step that uses them (containers.ready_timeout,
ports.plan, trust.forwarded, steps, plan, registry.retry_policy,
index.docker_cli, credentials): a bad value fails only the steps that need
it, with the message naming the variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .backends import Backend
from .errors import UserError
from .project import ROOT

# The tag that always names the newest verified image of a backend.
LATEST = "latest"

# -- every environment variable the tool reads ----------------------------------
# Read into Settings by load_settings:
REGISTRY_VARIABLE = "DASK_GATEWAY_CI_REGISTRY"  # where images are published
OWNER_VARIABLE = "DASK_GATEWAY_CI_OWNER"
READY_TIMEOUT_VARIABLE = "DASK_GATEWAY_CI_READY_TIMEOUT"  # overrides ready.timeout
PORTS_VARIABLE = "DASK_GATEWAY_CI_PORTS"  # none, or +N: the services' host ports
SOURCE_VARIABLE = "DASK_GATEWAY_SOURCE"  # the checkout start and cycle mount
SOURCES_VARIABLE = "DASK_GATEWAY_CI_SOURCES"  # build's folder of release archives
# Which engine: docker-py reads it to connect; engine.connect names it in its
# message, capabilities.engine_key keys what an engine refused by it.
DOCKER_HOST_VARIABLE = "DOCKER_HOST"
# The host's trust and proxies, forwarded into containers (trust.py):
BUNDLE_VARIABLE = "DASK_GATEWAY_CI_CA_BUNDLE"  # the CA bundle to mount; empty: none
CA_BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
)
FORWARDED_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "GOPROXY",
)
SELECTION_VARIABLE = "DASK_GATEWAY_CI_BACKENDS"  # plan.selected
ARCHITECTURES_VARIABLE = "DASK_GATEWAY_CI_ARCHITECTURES"  # plan.architectures
CLI_VARIABLE = "DASK_GATEWAY_CI_DOCKER_CLI"  # index.docker_cli
# The user's Docker config (its logins), copied for `docker manifest` by
# index.py; docker-py reads it itself for the engine's pushes.
DOCKER_CONFIG_VARIABLE = "DOCKER_CONFIG"
RETRIES_VARIABLE = "DASK_GATEWAY_CI_PUSH_RETRIES"  # registry.retry_policy
BACKOFF_VARIABLE = "DASK_GATEWAY_CI_PUSH_BACKOFF"  # registry.retry_policy
# state.state_dir: $DASK_GATEWAY_CI_STATE_DIR, else $XDG_STATE_HOME/dask-gateway-ci
STATE_VARIABLE = "DASK_GATEWAY_CI_STATE_DIR"
XDG_STATE_VARIABLE = "XDG_STATE_HOME"
STEP_SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"  # summary.record_image: the job summary
# Registry credentials (credentials.py says which registry each is for):
CREDENTIAL_VARIABLES = (
    "DASK_GATEWAY_CI_REGISTRY_TOKEN",
    "DASK_GATEWAY_CI_REGISTRY_USER",
    "GHCR_TOKEN",
    "GHCR_USER",
    "GITHUB_ACTOR",
    "GITHUB_TOKEN",
    "GITHUB_ACTIONS",
)
# Still read from os.environ where they are used, each for a reason given there:
# log.in_github_actions (GITHUB_ACTIONS: printing happens before and outside
# sessions), engine.connect and capabilities.engine_key (DOCKER_HOST, as
# docker-py's from_env reads it), capabilities' cache of refusals (the state
# folder: containers.start has no Settings), workflows (`nox -s workflows` is
# no step session: act gets the environment; --registry's user and token).

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
    source: str = "https://github.com/dask/dask-gateway-ci"  # this project, for OCI labels
    # As given (empty: not set); checked where used.
    ready_timeout: str = ""
    ports: str = ""
    checkout: str = ""
    sources: str = ""  # a folder of release archives for the builds (sources.py)
    docker_host: str = ""
    selection: str = ""  # the backends of a plan
    architectures: str = ""  # the architectures of a plan
    push_retries: str = ""  # how often a registry is asked again
    push_backoff: str = ""  # the first wait before asking again
    docker_cli: str = ""  # the Docker CLI for `docker manifest`
    docker_config: str = ""  # the user's Docker config folder
    state_dir: str = ""  # where verified images are recorded (state.state_dir)
    xdg_state_home: str = ""
    step_summary: str = ""  # the GitHub job summary file; empty: not in a workflow
    # The trust and proxy variables that are set (see trust.forwarded).
    forwarded: Mapping[str, str] = field(default_factory=dict)
    # The registry credential variables that are set (see credentials.credentials).
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

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


def load_settings(root: Path = ROOT, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of this run, from pyproject.toml and `environ` (default: os.environ).

    Raises UserError for a bad registry or owner, naming where it came from.
    """
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

    registry, registry_from = pick(REGISTRY_VARIABLE, "registry", defaults.registry)
    owner, owner_from = pick(OWNER_VARIABLE, "owner", defaults.owner)
    source = table.get("source", defaults.source)
    trust = (BUNDLE_VARIABLE, *CA_BUNDLE_VARIABLES, *FORWARDED_VARIABLES)
    return Settings(
        registry=check_registry(registry.strip(), registry_from),
        # GitHub owners are case-insensitive, image names are lower case.
        owner=check_owner(owner.strip().lower(), owner_from),
        source=source,
        ready_timeout=environ.get(READY_TIMEOUT_VARIABLE, ""),
        ports=environ.get(PORTS_VARIABLE, ""),
        checkout=environ.get(SOURCE_VARIABLE, ""),
        sources=environ.get(SOURCES_VARIABLE, ""),
        docker_host=environ.get(DOCKER_HOST_VARIABLE, ""),
        selection=environ.get(SELECTION_VARIABLE, ""),
        architectures=environ.get(ARCHITECTURES_VARIABLE, ""),
        push_retries=environ.get(RETRIES_VARIABLE, ""),
        push_backoff=environ.get(BACKOFF_VARIABLE, ""),
        docker_cli=environ.get(CLI_VARIABLE, ""),
        docker_config=environ.get(DOCKER_CONFIG_VARIABLE, ""),
        state_dir=environ.get(STATE_VARIABLE, ""),
        xdg_state_home=environ.get(XDG_STATE_VARIABLE, ""),
        step_summary=environ.get(STEP_SUMMARY_VARIABLE, ""),
        forwarded={name: environ[name] for name in trust if name in environ},
        credentials={name: environ[name] for name in CREDENTIAL_VARIABLES if name in environ},
    )
