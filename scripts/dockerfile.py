"""A small Dockerfile reader: instructions, stages and ARG defaults.

Enough for what the tooling asks of a Dockerfile (which stages exist, what
an ARG defaults to); not a parser of the whole syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def instructions(dockerfile: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    return parse(dockerfile.read_text())


def parse(text: str) -> list[Instruction]:
    """A Dockerfile's text as instructions (see `instructions`)."""
    result: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments, also those inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        text = " ".join(part.strip() for part in pending if part.strip())
        pending = []
        keyword, _, value = text.partition(" ")
        result.append(Instruction(keyword.upper(), value.strip(), start))
    return result


def stages(dockerfile: Path) -> dict[str, list[Instruction]]:
    """Instructions per stage, by stage name ("" for the global ARGs, "#N" unnamed)."""
    return stages_of(instructions(dockerfile))


def stages_of(items: list[Instruction]) -> dict[str, list[Instruction]]:
    """Instructions per stage (see `stages`)."""
    result: dict[str, list[Instruction]] = {"": []}
    current = ""
    for instruction in items:
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            if len(words) == 3 and words[1].lower() == "as":
                current = words[2]
            else:
                current = f"#{len(result)}"
            result[current] = []
        result[current].append(instruction)
    return result


def stage_names(dockerfile: Path) -> list[str]:
    return [name for name in stages(dockerfile) if name and not name.startswith("#")]


def arg_defaults(items: list[Instruction]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for instruction in items:
        if instruction.keyword == "ARG":
            name, sep, default = instruction.value.partition("=")
            found[name] = default if sep else None
    return found


def declared_args(dockerfile: Path) -> set[str]:
    """Every ARG name the Dockerfile declares, in any stage."""
    return {name for items in stages(dockerfile).values() for name in arg_defaults(items)}


def all_arg_defaults(
    dockerfile: Path, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every ARG with a default, from any stage, with ${OTHER} references expanded.

    The first default in the file wins: a stage that declares the ARG again
    without one (to see it) gets the global default, as in a build.
    `overrides` (a build's --build-arg values) replace defaults before the
    expansion, as they do in a build. An unknown ${X} stays as it is.

        ARG V=1.2
        ARG U=https://h/x-${V}.tgz    ->  {"V": "1.2", "U": "https://h/x-1.2.tgz"}
    """
    found: dict[str, str] = {}
    for items in stages(dockerfile).values():
        for name, default in arg_defaults(items).items():
            if default:
                found.setdefault(name, default)
    found.update(overrides or {})
    return {name: expand(value, found, frozenset({name})) for name, value in found.items()}


def expand(text: str, values: Mapping[str, str], seen: frozenset[str] = frozenset()) -> str:
    """`text` with each ${NAME} of `values` replaced, recursively; others kept.

    >>> expand("x-${V}.tgz", {"V": "1.2"})
    'x-1.2.tgz'
    """

    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in values or name in seen:
            return match.group(0)
        return expand(values[name], values, seen | {name})

    return re.sub(r"\$\{(\w+)\}", one, text)
