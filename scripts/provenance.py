"""Where an image comes from: the commit that last touched its folders, as OCI labels."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from packaging.version import Version

from .backends import Backend
from .errors import UserError
from .labels import BACKEND_LABEL, LABEL_PREFIX
from .project import ROOT


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
    default_source: str, paths: list[Path] | None = None, root: Path = ROOT
) -> Provenance:
    """The last commit that touched `paths` (the image's folders), and its time.

    Not HEAD and not "now": a commit elsewhere in the repository (or a
    rebuild) then gives the same labels, the same image ID and so a cache hit
    for this image and every image built on it; verify stays valid too. This
    needs the history: a shallow clone would name HEAD for every image.
    """
    scope = ["--", *(str(p) for p in paths)] if paths else []
    stamp = _git("log", "-1", "--format=%H %ct", *scope, root=root)
    if stamp:
        revision, seconds = stamp.split()
        committed = datetime.fromtimestamp(int(seconds), UTC)
    else:
        revision, committed = "unknown", datetime(1970, 1, 1, tzinfo=UTC)
    remote = _git("config", "--get", "remote.origin.url", root=root)
    source = https_url(remote) if remote and "://" in https_url(remote) else default_source
    return Provenance(revision=revision, committed=committed, source=source)


def changed_since(revision: str, paths: list[Path], root: Path = ROOT) -> bool:
    """Whether anything under `paths` differs from `revision`: commits, edits, new files."""
    scope = ["--", *(str(p) for p in paths)]
    try:
        diff = subprocess.run(
            ["git", "diff", "--quiet", revision, *scope], cwd=root, capture_output=True, timeout=30
        )
        untracked = _git("ls-files", "--others", "--exclude-standard", *scope, root=root)
    except (OSError, subprocess.SubprocessError):
        diff = None
    if diff is None or diff.returncode not in (0, 1):
        raise UserError(
            f"cannot compare with git revision {revision!r} here (a full clone with that "
            "revision is needed; in GitHub Actions check out with fetch-depth: 0)"
        )
    return diff.returncode == 1 or bool(untracked)


def has_commit(revision: str, root: Path = ROOT) -> bool:
    """Whether this clone has `revision` as a commit (a shallow or older clone may not)."""
    if not revision or revision == "unknown" or revision.startswith("-"):
        return False
    found = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", root=root)
    return found is not None


# How the revision of a published image relates to ours (see `order`).
SAME, OLDER, NEWER, DIVERGED, UNRELATED = "same", "older", "newer", "diverged", "unrelated"


def order(theirs: str | None, ours: str | None, root: Path = ROOT) -> str:
    """Where `theirs` stands to `ours` in this clone's history.

    SAME; OLDER (an ancestor of ours); NEWER (ours is its ancestor); DIVERGED
    (neither); UNRELATED when either is missing, "unknown" or not in this clone.
    """
    if not theirs or not ours or not (has_commit(theirs, root) and has_commit(ours, root)):
        return UNRELATED
    if _git("rev-parse", theirs, root=root) == _git("rev-parse", ours, root=root):
        return SAME
    if _is_ancestor(theirs, ours, root):
        return OLDER
    if _is_ancestor(ours, theirs, root):
        return NEWER
    return DIVERGED


def _is_ancestor(older: str, newer: str, root: Path) -> bool:
    try:
        done = subprocess.run(
            ["git", "merge-base", "--is-ancestor", older, newer],
            cwd=root,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


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
