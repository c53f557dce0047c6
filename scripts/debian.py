"""Create the Debian base image locally: debootstrap + docker import.

For machines that cannot pull from a registry (air-gapped, or this CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import log
from .errors import StepFailed, UserError
from .images import image_id

FALLBACK_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


def host_mirror(sources=APT_SOURCES) -> str:
    """The first Debian archive URI the host's apt already uses."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(source.glob("*.sources")) + sorted(source.glob("*.list"))
        elif source.is_file():
            files.append(source)
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"^\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if match and "security" not in match.group(1) and "/debian" in match.group(1):
                return match.group(1)
    return FALLBACK_MIRROR


def bootstrap(client, *, suite: str, reference: str, mirror: str | None, force: bool) -> str:
    existing = image_id(client, reference)
    if existing and not force:
        log.info(f"{reference} already exists ({existing[:19]}); --force to recreate")
        return existing
    tool = shutil.which("debootstrap")
    if tool is None:
        raise UserError("debootstrap not found; install it with `apt-get install -y debootstrap`")
    mirror = mirror or host_mirror()
    with tempfile.TemporaryDirectory(prefix="dask-gateway-ci-rootfs-") as workdir:
        rootfs = Path(workdir) / "rootfs"
        log.info(f"debootstrap --variant=minbase {suite} from {mirror} (about 30 s)")
        result = subprocess.run(
            [tool, "--variant=minbase", suite, str(rootfs), mirror],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if result.returncode != 0:
            log.write(result.stdout[-4000:])
            raise StepFailed(
                f"debootstrap of {suite} from {mirror} failed (exit {result.returncode})"
            )
        # Host-specific leftovers do not belong in an image.
        for leftover in ("etc/hostname", "etc/resolv.conf"):
            (rootfs / leftover).unlink(missing_ok=True)
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        tarball = Path(workdir) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        repository, _, tag = reference.rpartition(":")
        log.info(f"importing {reference}")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
    created = image_id(client, reference)
    if created is None:
        raise StepFailed(f"docker import did not create {reference}")
    log.info(f"created {reference} ({created[:19]})")
    return created
