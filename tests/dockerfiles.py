"""What the tests read from the Dockerfiles beyond what the tooling does: ENV
values. Built on scripts.dockerfile's reader (which also gives ARG defaults).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from scripts.dockerfile import instructions


def env_values(dockerfile: Path) -> dict[str, str]:
    """Every ENV KEY=VALUE of the Dockerfile (a later one wins)."""
    found: dict[str, str] = {}
    for instruction in instructions(dockerfile):
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.value):
                key, sep, value = word.partition("=")
                if sep:
                    found[key] = value
    return found
