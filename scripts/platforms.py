"""Which architecture an image is for, and what it is called locally.

The published tags (`:latest`, `:YYYY-MM-DD[.N]`) are multi-architecture
indexes; locally, one tag names one image, so each architecture has its
own: amd64 keeps the plain tag (what upstream has always pulled, and what
every amd64 job saves, loads and publishes), any other architecture adds
`-<arch>` (`:latest-arm64`). The external Debian image of another
architecture is Docker's official per-architecture repository of it
(`arm64v8/debian:trixie-slim`), pullable or bootstrapped under that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import ARCHITECTURES
from .engine import Client, get_image
from .engine import architecture as engine_architecture
from .errors import UserError

# The architecture whose local tags carry no suffix.
PLAIN = "amd64"
# Docker's official-images per-architecture repositories (docker-library's
# "architectures other than amd64"), and the OCI variant engines record.
OFFICIAL_PREFIX = {"amd64": "amd64", "arm64": "arm64v8"}
VARIANT = {"arm64": "v8"}
# Debian's name of an architecture (debootstrap --arch) is Go's for these two;
# the declarations name them too (backends.ARCHITECTURES).
SUPPORTED = ARCHITECTURES


@dataclass(frozen=True)
class Platform:
    """linux/<architecture>: the one OS these images are for."""

    architecture: str

    def __str__(self) -> str:
        return f"linux/{self.architecture}"

    @property
    def suffix(self) -> str:
        """What local tags of this architecture end with: '' or '-arm64'."""
        return "" if self.architecture == PLAIN else f"-{self.architecture}"

    def tag(self, tag: str) -> str:
        return tag + self.suffix

    def external(self, reference: str) -> str:
        """The local name of an external image (debian:trixie-slim) for this architecture."""
        if self.architecture == PLAIN:
            return reference
        prefix = OFFICIAL_PREFIX[self.architecture]
        if "/" in reference.split(":", 1)[0]:
            # Not an official-library image: keep the name, tag it per architecture.
            repository, _, tag = reference.rpartition(":")
            return f"{repository}:{self.tag(tag or 'latest')}"
        return f"{prefix}/{reference}"


def parse(value: str, where: str = "--platform") -> Platform:
    """`linux/arm64`, `linux/arm64/v8` or `arm64` as a Platform.

    Raises UserError naming the supported ones for anything else.
    """
    parts = value.strip().lower().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    os_name, architecture = parts[0], parts[1] if len(parts) > 1 else ""
    architecture = {"x86_64": "amd64", "aarch64": "arm64"}.get(architecture, architecture)
    variant = parts[2] if len(parts) > 2 else VARIANT.get(architecture)
    if (
        os_name != "linux"
        or architecture not in SUPPORTED
        or variant != VARIANT.get(architecture)
        or len(parts) > 3
    ):
        choices = ", ".join(f"linux/{a}" for a in SUPPORTED)
        raise UserError(f"{where} {value}: not a platform these images are built for; {choices}")
    return Platform(architecture)


def native(client: Client) -> Platform:
    """The engine's own platform (what it runs without emulation)."""
    architecture = engine_architecture(client) or PLAIN
    try:
        return parse(architecture, "the engine's architecture")
    except UserError:
        return Platform(architecture)


def chosen(client: Client, value: str | None) -> Platform:
    """--platform, or the engine's own platform when it is not given."""
    return parse(value) if value else native(client)


def recorded(client: Client, image: str) -> Platform | None:
    """The platform the engine recorded for a local image (its config's architecture)."""
    architecture = get_image(client, image).architecture
    return Platform(architecture) if architecture else None
