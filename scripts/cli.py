"""The step registry and the command line: one Step per verb, its options, the run loop.

    @step("stop", "Stop and remove the {backend} container", scope=SERVICES)
    def stop(ctx: Context, backend: Backend) -> None: ...

The noxfile makes one session per step and backend (`stop-slurm`) and one
per step (`stop -- slurm`) from STEPS; `run` parses what follows `--`,
selects the backends and calls the step for each, turning engine errors,
interrupts (Ctrl-C, SIGTERM, SIGHUP) and OS errors into one UserError line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import signals
from .backends import Backend, load_all, select
from .engine import Client, LazyClient, engine_errors
from .errors import UserError
from .settings import Settings, load_settings


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is a UserError (one line, no usage, no SystemExit)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


@dataclass
class Context:
    """What one session run knows: the declarations, settings, options, engine."""

    backends: dict[str, Backend]
    settings: Settings
    options: argparse.Namespace
    extra: list[str] = field(default_factory=list)
    built: dict[str, str] = field(default_factory=dict)
    client: Client = field(default_factory=LazyClient)
    dated_tag: str = ""  # tag-dated: the one tag of this run, chosen in its prepare
    invoked_from: Path = field(default_factory=Path.cwd)


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    settings: dict


def option(*flags: str, **settings) -> Option:
    return Option(flags, settings)


# A step's scope beside backends.IMAGE (every backend) and SERVICES (backends
# that run services): PROJECT steps take no backend (bootstrap-debian, plan).
PROJECT = "project"


@dataclass(frozen=True)
class Step:
    name: str
    summary: str  # "{backend}" stands for the backend's name
    scope: str  # IMAGE, SERVICES or PROJECT
    function: Callable[[Context, Backend], None]
    options: tuple[Option, ...] = ()
    # Arguments it does not know go to the backend's test command (pytest).
    passthrough: bool = False
    # Runs once before the backends, with all of them: may narrow the selection.
    prepare: Callable[[Context, list[Backend]], list[Backend]] | None = None

    def describe(self, backend: str | None) -> str:
        if backend is not None:
            return self.summary.format(backend=backend) + "."
        if self.scope == PROJECT:
            return self.summary + "."
        return self.summary.format(backend="BACKEND") + f"; nox -s {self.name} -- BACKEND..."

    def parser(self) -> argparse.ArgumentParser:
        parser = OneLineParser(prog=f"nox -s {self.name} --", add_help=False, allow_abbrev=False)
        for item in self.options:
            parser.add_argument(*item.flags, **item.settings)
        return parser

    def parse(self, args: list[str]) -> tuple[argparse.Namespace, list[str]]:
        if self.passthrough:
            return self.parser().parse_known_args(args)
        return self.parser().parse_args(args), []


STEPS: dict[str, Step] = {}


def step(
    name: str,
    summary: str,
    *,
    scope: str,
    options=(),
    passthrough: bool = False,
    prepare: Callable[[Context, list[Backend]], list[Backend]] | None = None,
):
    """Register the decorated function as the step `name` (listing order = definition order)."""

    def register(function: Callable[[Context, Backend], None]):
        STEPS[name] = Step(name, summary, scope, function, tuple(options), passthrough, prepare)
        return function

    return register


def split_posargs(step: Step, posargs: list[str], fixed: str | None) -> tuple[list[str], list[str]]:
    """Backend names first, then the step's own options (and pytest's, where it passes them)."""
    if fixed is not None:
        return [fixed], list(posargs)
    if step.scope == PROJECT:
        return [], list(posargs)
    names: list[str] = []
    rest = list(posargs)
    while rest and not rest[0].startswith("-"):
        names.append(rest.pop(0))
        if step.passthrough:  # what follows the backend may be pytest's
            break
    return names, rest


def run(
    name: str, posargs: list[str], fixed: str | None = None, invoked_from: Path | None = None
) -> None:
    """Entry point of every step session.

    `invoked_from` is where the user ran nox (nox changes into the noxfile's
    folder first): relative paths in options are taken from there.
    """
    step_ = STEPS[name]
    backends = load_all()
    names, rest = split_posargs(step_, posargs, fixed)
    selected = [] if step_.scope == PROJECT else select(backends, names, name, step_.scope)
    options, extra = step_.parse(rest)
    ctx = Context(
        backends=backends,
        settings=load_settings(),
        options=options,
        extra=extra,
        invoked_from=invoked_from or Path.cwd(),
    )
    with signals.interruptible():
        if step_.scope == PROJECT:
            _guarded(name, None, lambda: step_.function(ctx, None))
            return
        if step_.prepare is not None:
            selected = _guarded(name, None, lambda: step_.prepare(ctx, selected))
        for backend in selected:
            _guarded(name, backend, lambda b=backend: step_.function(ctx, b))


def _guarded(name: str, backend: Backend | None, call: Callable):
    """Run one part of a step: engine errors, interrupts and OS errors as one line."""
    doing = f"{name} {backend.name}" if backend else name
    try:
        with engine_errors(doing, backend.name if backend else None):
            return call()
    except KeyboardInterrupt as interrupt:
        raise UserError(f"{doing}: {signals.describe(interrupt)}") from None
    except OSError as error:
        raise UserError(f"{doing}: {error}") from None
