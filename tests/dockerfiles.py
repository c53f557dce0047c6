"""What the tests read from the Dockerfiles beyond what the tooling does: ARG
defaults as a build sees them, ENV values. Built on scripts.dockerfile's reader.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from scripts.dockerfile import arg_defaults, instructions, stages


def all_arg_defaults(dockerfile: Path) -> dict[str, str]:
    """Every ARG with a default, from any stage, with ${OTHER} references expanded.

    The first default in the file wins: a stage that declares the ARG again
    without one (to see it) gets the global default, as in a build. An
    unknown ${X} stays as it is.
    """
    found: dict[str, str] = {}
    for items in stages(dockerfile).values():
        for name, default in arg_defaults(items).items():
            if default:
                found.setdefault(name, default)

    def expand(value: str, seen: frozenset[str] = frozenset()) -> str:
        def one(match: re.Match) -> str:
            name = match.group(1)
            if name not in found or name in seen:
                return match.group(0)
            return expand(found[name], seen | {name})

        return re.sub(r"\$\{(\w+)\}", one, value)

    return {name: expand(value, frozenset({name})) for name, value in found.items()}


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
