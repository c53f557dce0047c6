"""Create the Debian base image locally: debootstrap + docker import.

For machines that cannot pull from a registry (air-gapped, or this CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from . import log
from .engine import image_id
from .errors import StepFailed, UserError

FALLBACK_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))

# What makes Debian's official `-slim` images slim (debuerreotype's
# --slimify and its docker-* apt settings), so that a bootstrapped
# debian:trixie-slim behaves like the pulled one: no docs, man pages or
# locales are installed, and apt keeps no .deb files or caches in a layer.
SLIM_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/groff/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
)
SLIM_INCLUDES = ("/usr/share/doc/*/copyright",)  # licences stay
APT_CLEAN = (
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
    '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
    '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
)
APT_SETTINGS = {
    "docker-clean": APT_CLEAN,
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}


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


def _excluded(path: str) -> bool:
    return any(fnmatch(path, p) for p in SLIM_EXCLUDES) and not any(
        fnmatch(path, p) for p in SLIM_INCLUDES
    )


def slim(rootfs: Path) -> None:
    """Make a debootstrapped tree what Debian's -slim images are (see SLIM_EXCLUDES)."""
    dpkg_config = rootfs / "etc/dpkg/dpkg.cfg.d"
    dpkg_config.mkdir(parents=True, exist_ok=True)
    (dpkg_config / "docker").write_text(
        "".join(f"path-exclude {p}\n" for p in SLIM_EXCLUDES)
        + "".join(f"path-include {p}\n" for p in SLIM_INCLUDES)
    )
    apt_config = rootfs / "etc/apt/apt.conf.d"
    apt_config.mkdir(parents=True, exist_ok=True)
    for name, text in APT_SETTINGS.items():
        (apt_config / name).write_text(text)
    # What debootstrap installed before the excludes existed goes as dpkg
    # would have left it (fnmatch without FNM_PATHNAME: * spans folders).
    for top in sorted({Path(p).parent for p in SLIM_EXCLUDES}):
        # Deepest first, so a folder is empty once its files are gone.
        for path in sorted((rootfs / top.relative_to("/")).rglob("*"), reverse=True):
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            elif _excluded("/" + str(path.relative_to(rootfs))):
                path.unlink()
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
        (rootfs / cache / "partial").mkdir(parents=True)
    for leftover in (rootfs / "var/cache/apt").glob("*.bin"):
        leftover.unlink()


def suite_of(reference: str) -> str | None:
    """debian:trixie-slim -> trixie; None for an image that is not Debian's."""
    repository, _, tag = reference.rpartition(":")
    if repository.rsplit("/", 1)[-1] != "debian" or not tag:
        return None
    return tag.split("-", 1)[0]


def can_bootstrap(reference: str) -> bool:
    return (
        suite_of(reference) is not None
        and shutil.which("debootstrap") is not None
        and os.geteuid() == 0
    )


def bootstrap(
    client,
    *,
    reference: str,
    suite: str | None = None,
    mirror: str | None = None,
    force: bool = False,
) -> str:
    existing = image_id(client, reference)
    if existing and not force:
        log.info(f"{reference} already exists ({existing[:19]}); --force to recreate")
        return existing
    suite = suite or suite_of(reference)
    if suite is None:
        raise UserError(f"{reference} is not a Debian image; give the release with --suite")
    tool = shutil.which("debootstrap")
    if tool is None:
        raise UserError("debootstrap not found; install it with `apt-get install -y debootstrap`")
    if os.geteuid() != 0:
        raise UserError("debootstrap needs root: run it as root (e.g. with sudo)")
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
        slim(rootfs)
        tarball = Path(workdir) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
        log.info(f"importing {reference}")
        # The whole reference as the repository: Podman ignores a separate tag.
        client.api.import_image_from_file(str(tarball), repository=reference)
    created = image_id(client, reference)
    if created is None:
        raise StepFailed(f"docker import did not create {reference}")
    log.info(f"created {reference} ({created[:19]})")
    return created
