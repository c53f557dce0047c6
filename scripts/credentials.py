"""Registry credentials from the environment, censored from every message."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import log
from .errors import UserError


@dataclass(frozen=True)
class Credentials:
    username: str
    token: str = field(repr=False)
    source: str  # the variable the token came from, for messages

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.token}


def credentials(registry: str, environ: Mapping[str, str]) -> Credentials | None:
    """A token from the environment, or None: then the Docker config's login is used.

    `environ`: the credential variables that are set (Settings.credentials).

    DASK_GATEWAY_CI_REGISTRY_TOKEN + DASK_GATEWAY_CI_REGISTRY_USER work for any
    registry. For ghcr.io only (never sent elsewhere): GHCR_TOKEN with GHCR_USER
    or GITHUB_ACTOR, then, in GitHub Actions, GITHUB_TOKEN with GITHUB_ACTOR.
    """
    choices = [("DASK_GATEWAY_CI_REGISTRY_TOKEN", ("DASK_GATEWAY_CI_REGISTRY_USER",))]
    if registry == "ghcr.io":
        choices.append(("GHCR_TOKEN", ("GHCR_USER", "GITHUB_ACTOR")))
        if environ.get("GITHUB_ACTIONS") == "true":
            choices.append(("GITHUB_TOKEN", ("GITHUB_ACTOR",)))
    for token_variable, user_variables in choices:
        token = environ.get(token_variable, "")
        if not token:
            continue
        log.add_secret(token)  # before anything else can print it
        username = next((environ[v] for v in user_variables if environ.get(v)), "")
        if not username:
            raise UserError(
                f"{token_variable} is set but {' or '.join(user_variables)} is not; "
                "set it to the user name the token belongs to"
            )
        # The same token as it travels in a basic-auth header.
        log.add_secret(base64.b64encode(f"{username}:{token}".encode()).decode())
        return Credentials(username=username, token=token, source=token_variable)
    return None


def credential_hint(registry: str) -> str:
    hint = "set DASK_GATEWAY_CI_REGISTRY_USER and DASK_GATEWAY_CI_REGISTRY_TOKEN"
    if registry == "ghcr.io":
        hint += (
            " (or GHCR_TOKEN with GHCR_USER, or in GitHub Actions GITHUB_TOKEN with "
            "`permissions: packages: write`)"
        )
    return f"{hint}, or run `docker login {registry}`"


def describe(creds: Credentials | None) -> str:
    if creds is None:
        return "credentials from the Docker config, if any"
    return f"credentials from {creds.source} (user {creds.username})"
