"""Forward the host's TLS trust and proxy settings into containers.

Behind a TLS-intercepting proxy (corporate networks, this CI's network), pip
inside a container fails certificate verification unless it trusts the same
CA as the host. We mount the host's CA bundle read-only and point the usual
variables at it, rather than ever disabling verification.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from . import log
from .errors import UserError
from .settings import BUNDLE_VARIABLE, CA_BUNDLE_VARIABLES, FORWARDED_VARIABLES

CONTAINER_CA_BUNDLE = "/etc/dask-gateway-ci/host-ca-bundle.crt"
DEFAULT_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def host_ca_bundle(environ: Mapping[str, str]) -> Path | None:
    """DASK_GATEWAY_CI_CA_BUNDLE (empty: none), else what the host already trusts.

    Raises UserError when DASK_GATEWAY_CI_CA_BUNDLE names no file.
    """
    if BUNDLE_VARIABLE in environ:
        chosen = environ[BUNDLE_VARIABLE]
        if not chosen:
            return None
        if not Path(chosen).is_file():
            # Docker would create an empty directory at a missing host path.
            raise UserError(
                f"{BUNDLE_VARIABLE}={chosen}: no such file; point it at a PEM bundle, "
                f"or set {BUNDLE_VARIABLE}= (empty) to forward no CA"
            )
        return Path(chosen).resolve()
    candidates = [environ.get(name, "") for name in CA_BUNDLE_VARIABLES[:4]]
    for candidate in [*candidates, *DEFAULT_BUNDLES]:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _hide_credentials(value: str) -> None:
    """A URL's password (and user:password) never shows in our output."""
    for part in value.split():
        try:
            parsed = urlsplit(part)
            password = parsed.password
        except ValueError:
            continue
        if password:
            log.add_secret(password)
            log.add_secret(f"{parsed.username}:{password}")


def hide_forwarded(environment: list[str] | None) -> None:
    """Mask what a container's forwarded variables carry (its `Config.Env`).

    The process that started the container masked them; every later session
    (install, test, print-logs) reads them back from the container itself.
    """
    for item in environment or []:
        name, _, value = item.partition("=")
        if name in FORWARDED_VARIABLES:
            _hide_credentials(value)


def forwarded(environ: Mapping[str, str]) -> tuple[dict, dict[str, str]]:
    """(docker volumes, environment) that carry the host's trust into a container.

    `environ`: the trust and proxy variables (Settings.forwarded). Raises
    UserError when DASK_GATEWAY_CI_CA_BUNDLE names no file.
    """
    volumes: dict = {}
    env: dict[str, str] = {}
    bundle = host_ca_bundle(environ)
    if bundle is not None:
        volumes[str(bundle)] = {"bind": CONTAINER_CA_BUNDLE, "mode": "ro"}
        env.update(dict.fromkeys(CA_BUNDLE_VARIABLES, CONTAINER_CA_BUNDLE))
    for name in FORWARDED_VARIABLES:
        value = environ.get(name)
        # A file: index exists on the host only; inside it would break pip.
        if value and "file:" not in value:
            _hide_credentials(value)
            env[name] = value
    return volumes, env
