"""Linux capabilities a container asks for: did the engine refuse them, did it grant them.

Engines refuse a capability they cannot grant in different places and words:
Docker 20.10 when the container starts (`unable to apply caps: operation not
permitted`), Docker 28 when it is created (`invalid CapAdd: capability not
supported by your kernel or not available in the current environment`), and
Podman not at all: it starts the container without it. So a refusal is
recognised by what any of them says about capabilities, and what was granted
is read where it cannot be mistaken, in the container's own PID 1:

    >>> missing({"SYS_RESOURCE", "NET_ADMIN"}, "CapEff:\\t00000000a80435fb\\n")
    ['SYS_RESOURCE']
"""

from __future__ import annotations

import re

# An engine's refusal, whichever call it comes from and however it is worded.
REFUSED = re.compile(r"\bcaps\b|capabilit|CapAdd", re.I)
EFFECTIVE = re.compile(r"^CapEff:\s*([0-9a-fA-F]+)\s*$", re.M)

# capability(7) numbers, from linux/capability.h.
NUMBERS = {
    name: number
    for number, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}


def refused(message: str) -> bool:
    """Whether an engine's error message is a refusal of a capability."""
    return REFUSED.search(message) is not None


def missing(asked: set[str] | list[str] | tuple[str, ...], status: str) -> list[str]:
    """Of `asked`, those absent from the effective set in /proc/<pid>/status text.

    Names the table does not know are not reported (they cannot be checked).
    """
    found = EFFECTIVE.search(status)
    if found is None:
        return []
    effective = int(found.group(1), 16)
    return sorted(
        name for name in asked if name in NUMBERS and not effective & (1 << NUMBERS[name])
    )


# -- what an engine refused, remembered ----------------------------------------------------

REMEMBERED_ENGINES = 16  # the most recently refusing engines kept, oldest dropped


def engine_key(client) -> str:
    """This engine as it runs now: its ID, and for a local socket when it was (re)made.

    A restarted engine recreates its socket, so it is asked again; so is any
    other engine (another DOCKER_HOST, another ID).
    """
    import os

    from .engine import engine_id

    key = engine_id(client)
    # The socket docker-py connected to (engine.connect: from_env reads DOCKER_HOST).
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        try:
            made = os.stat(host.removeprefix("unix://"))
            key += f"@{made.st_ino}.{int(made.st_ctime)}"
        except OSError:
            pass
    return key


def _memory_path():
    from .state import state_dir

    # From os.environ: containers.start, where this cache is used, has no Settings.
    return state_dir() / "refused-capabilities.json"


def remembered(client) -> set[str]:
    """Capabilities this engine, as it runs now, refused before."""
    import json

    try:
        known = json.loads(_memory_path().read_text())
    except (OSError, ValueError):
        return set()
    return set(known.get(engine_key(client), []))


def remember(client, refused_now: list[str]) -> None:
    """Remember refused capabilities for this engine (best effort: a cache, not a record)."""
    import json
    import os

    path = _memory_path()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    key = engine_key(client)
    refused = sorted(set(known.pop(key, [])) | set(refused_now))
    # Engines used side by side (DOCKER_HOST switched, several suites at once)
    # each keep theirs; a restarted engine has a new key, so the oldest go.
    known = dict(list(known.items())[-(REMEMBERED_ENGINES - 1) :]) | {key: refused}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, indent=2))
        temporary.replace(path)
    except OSError:
        pass
