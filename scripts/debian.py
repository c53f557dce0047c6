"""Create the Debian base image locally: debootstrap + docker import (or load).

For machines that cannot pull from a registry (air-gapped, or this CI),
for the engine's architecture or another one (arm64 on an amd64 host,
run under qemu-user-static).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

from . import log
from .engine import Client, get_image, image_id, import_image, load_images
from .errors import StepFailed, UserError
from .platforms import VARIANT, Platform

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


# The Linux kernel's (and qemu's) names of the architectures Debian calls amd64/arm64.
KERNEL_NAME = {"amd64": "x86_64", "arm64": "aarch64"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_architecture() -> str:
    """The host's architecture in Debian's words (amd64, arm64)."""
    machine = os.uname().machine
    return {kernel: debian for debian, kernel in KERNEL_NAME.items()}.get(machine, machine)


def check_emulation(architecture: str, binfmt: Path = BINFMT) -> None:
    """Programs of `architecture` run here: natively, or through qemu-user-static
    registered with binfmt_misc with the F flag (the interpreter is opened at
    registration, so it also runs inside a chroot or a container) and the C
    flag (set-user-ID programs get their credentials: sudo, which the images'
    checks and dask-gateway's tests run, refuses to work without it).

    Raises UserError naming the packages and the commands otherwise.
    """
    if architecture == host_architecture():
        return
    qemu = f"qemu-{KERNEL_NAME.get(architecture, architecture)}"
    fix = (
        "`apt-get install -y qemu-user-static binfmt-support` (as root; where "
        f"{binfmt} is empty: `mount -t binfmt_misc binfmt_misc {binfmt}`, then "
        f"`update-binfmts --enable {qemu}`)"
    )
    try:
        entry = (binfmt / qemu).read_text()
    except OSError:
        raise UserError(
            f"{architecture} programs cannot run on this {host_architecture()} host: "
            f"no {qemu} in {binfmt}; install emulation with {fix}"
        ) from None
    found = re.search(r"^flags:\s*(\S*)", entry, re.M)
    flags = found.group(1) if found else ""
    if not entry.startswith("enabled") or "F" not in flags:
        raise UserError(
            f"{binfmt / qemu} is not enabled with the F flag (fix binary), which chroots "
            f"and containers need; {fix}"
        )
    if "C" not in flags:
        raise UserError(
            f"{binfmt / qemu} is registered without the C flag (credentials): sudo in "
            f"{architecture} containers would refuse to run; register it again with flags "
            "FC as the README's Architectures section shows (Debian's package leaves C out)"
        )


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


def image_archive(rootfs: Path, archive: Path, reference: str, platform: Platform) -> None:
    """Write a `docker save` archive of one layer (the rootfs tar) whose config
    records `platform`: `docker load` then gives the image that architecture on
    every engine (Docker 20.10's import records its own one, whatever --platform says).
    """
    digest = hashlib.sha256()
    with rootfs.open("rb") as layer:
        for chunk in iter(lambda: layer.read(1 << 20), b""):
            digest.update(chunk)
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    config = {
        "architecture": platform.architecture,
        "os": "linux",
        # As Debian's official images: a PATH, and bash when nothing else is run.
        "config": {"Env": [ENV_PATH], "Cmd": ["bash"]},
        "created": now,
        "history": [{"created": now, "created_by": f"dask-gateway-ci bootstrap {reference}"}],
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
    }
    if platform.architecture in VARIANT:
        config["variant"] = VARIANT[platform.architecture]
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": ["layer/layer.tar"]}]
    with tarfile.open(archive, "w") as out:
        for name, data in (
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        out.add(str(rootfs), arcname="layer/layer.tar")


def bootstrap(
    client: Client,
    *,
    reference: str,
    suite: str | None = None,
    mirror: str | None = None,
    force: bool = False,
    platform: Platform | None = None,
) -> str:
    """Create `reference` with debootstrap for `platform` (default: the host's) and load it.

    Raises UserError when the reference is not Debian's, debootstrap or root
    is missing, or the platform's programs cannot run here; StepFailed when
    debootstrap fails or the engine records another architecture.
    """
    platform = platform or Platform(host_architecture())
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
    check_emulation(platform.architecture)
    mirror = mirror or host_mirror()
    foreign = platform.architecture != host_architecture()
    with tempfile.TemporaryDirectory(prefix="dask-gateway-ci-rootfs-") as workdir:
        rootfs = Path(workdir) / "rootfs"
        log.info(
            f"debootstrap --variant=minbase --arch={platform.architecture} {suite} from "
            f"{mirror} ({'about 3 min under emulation' if foreign else 'about 30 s'})"
        )
        result = subprocess.run(
            [
                tool,
                "--variant=minbase",
                f"--arch={platform.architecture}",
                suite,
                str(rootfs),
                mirror,
            ],
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
        if not foreign:
            log.info(f"importing {reference}")
            import_image(client, str(tarball), reference)
        else:
            # `docker import` records the engine's own architecture on Docker
            # 20.10, whatever --platform says: load an archive that names it.
            shutil.rmtree(rootfs)  # half the disk space, before the archive is written
            archive = Path(workdir) / "image.tar"
            image_archive(tarball, archive, reference, platform)
            log.info(f"loading {reference} ({platform})")
            with archive.open("rb") as data:
                load_images(client, data)
    created = image_id(client, reference)
    if created is None:
        raise StepFailed(f"docker {'load' if foreign else 'import'} did not create {reference}")
    recorded = get_image(client, created).architecture
    if recorded != platform.architecture:
        raise StepFailed(
            f"the engine recorded {reference} as {recorded}, not {platform.architecture}"
        )
    log.info(f"created {reference} ({created[:19]}, {platform})")
    return created
