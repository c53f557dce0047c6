"""A small Dockerfile reader: instructions, stages and ARG defaults.

Enough for what the tooling asks of a Dockerfile (which stages exist, what
an ARG defaults to); not a parser of the whole syntax.
"""

from __future__ import annotations

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
