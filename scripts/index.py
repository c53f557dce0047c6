"""A multi-architecture index (manifest list) pushed with the Docker CLI's `docker manifest`.

Why the CLI, when everything else goes through docker-py: neither the
Engine API nor docker-py can create or push a manifest list (docker-py has
no manifest-list API), and `docker manifest create/push` is the
well-kept tool that ships with every Docker CLI since 20.10 (GitHub's
runners, Debian's docker.io, Docker Desktop), without BuildKit or
`buildx`. It talks to the registry itself, not to the engine, so it works
whatever image store the engine has.

    push_index("ghcr.io/dask/dask-gateway-ci-slurm", "latest",
               ["sha256:<amd64 manifest>", "sha256:<arm64 manifest>"], creds, settings)

Each entry is a manifest already pushed to the same repository (by the
engine, under an architecture tag); `docker manifest create` reads each
one's config to record its platform in the index.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import log
from .credentials import Credentials
from .distribution import is_loopback
from .errors import StepFailed, UserError
from .registry import classify, registry_of, with_retries
from .settings import CLI_VARIABLE, Settings

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def docker_cli(settings: Settings) -> str:
    """The Docker CLI: $DASK_GATEWAY_CI_DOCKER_CLI, else `docker` on PATH.

    Raises UserError when there is none, or it has no `manifest` command.
    """
    given = settings.docker_cli
    found = given if given and Path(given).is_file() else shutil.which("docker")
    if found is None:
        raise UserError(
            "publishing several architectures needs the Docker CLI (`docker manifest`), and "
            f"there is no `docker` on PATH; install it (Debian: docker.io) or set {CLI_VARIABLE}"
        )
    probe = subprocess.run(
        [found, "manifest", "--help"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0 or "create" not in probe.stdout:
        raise UserError(
            f"{found} has no `docker manifest` command (Docker CLI 20.10 or later has it); "
            f"install a newer one or set {CLI_VARIABLE}"
        )
    return found


def _config_folder(
    folder: Path, registry: str, creds: Credentials | None, settings: Settings
) -> None:
    """A Docker config of its own for this push: the token from the environment
    when there is one, else the user's own config (its logins and helpers).
    Of its own also because `docker manifest create` keeps what it made there."""
    if creds is not None:
        auth = base64.b64encode(f"{creds.username}:{creds.token}".encode()).decode()
        config = {"auths": {registry: {"auth": auth}}}
        path = folder / "config.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(config))
        return
    home = Path(settings.docker_config or Path.home() / ".docker")
    if (home / "config.json").is_file():
        shutil.copy2(home / "config.json", folder / "config.json")


def push_index(
    repository: str,
    tag: str,
    digests: list[str],
    creds: Credentials | None,
    settings: Settings,
) -> str:
    """Create `repository:tag` as an index of `digests` and push it; its digest.

    Raises UserError (no usable CLI), registry.Unauthorized (credentials
    refused; publish.py's `authorized` says what to set) and StepFailed (the
    registry still failing after retries, or the CLI failing otherwise).
    """
    cli = docker_cli(settings)
    registry = registry_of(repository)
    reference = f"{repository}:{tag}"
    # Plain HTTP is for loopback registries only, as the engine allows it.
    insecure = ["--insecure"] if is_loopback(registry) else []
    with tempfile.TemporaryDirectory(prefix="dask-gateway-ci-docker-config-") as folder:
        _config_folder(Path(folder), registry, creds, settings)

        def cli_run(*args: str) -> str:
            done = subprocess.run(
                [cli, "--config", folder, "manifest", *args],
                capture_output=True,
                text=True,
                check=False,
            )
            said = " ".join((done.stdout + " " + done.stderr).split())
            if done.returncode != 0:
                raise classify(f"docker manifest {args[0]} {reference} failed: {said}")
            return done.stdout

        def attempt() -> str:
            cli_run(
                "create",
                "--amend",
                *insecure,
                reference,
                *(f"{repository}@{digest}" for digest in digests),
            )
            return cli_run("push", *insecure, reference)

        with log.group(f"push index {reference} ({len(digests)} images)"):
            pushed = with_retries(registry, attempt, settings)
    found = DIGEST.findall(pushed)
    if not found:
        raise StepFailed(f"docker manifest push {reference} printed no digest: {pushed.strip()}")
    return found[-1]
