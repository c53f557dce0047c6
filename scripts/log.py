"""Progress on stderr, GitHub log groups, and censoring of secrets."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_secrets: set[str] = set()
CENSORED = "********"
# Shorter values would be found inside ordinary words and garble every
# message; they are never printed by this tool in the first place.
MIN_SECRET_LENGTH = 4


def add_secret(value: str | None) -> None:
    """Never print `value` again, whatever message carries it."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _secrets.add(value)


def censor(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, CENSORED)
    return text


def info(message: str) -> None:
    print(censor(message), file=sys.stderr, flush=True)


def warn(message: str) -> None:
    prefix = "::warning::" if in_github_actions() else "warning: "
    info(prefix + message)


def write(text: str) -> None:
    """Pass through output of a build or a command, as it arrives."""
    sys.stdout.write(censor(text))
    sys.stdout.flush()


def in_github_actions() -> bool:
    # From os.environ: printing happens everywhere (the noxfile, workflows,
    # before a session's settings are read), and no run sets it differently.
    return os.environ.get("GITHUB_ACTIONS") == "true"


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    """Fold a long phase: a ::group:: in GitHub Actions, a heading elsewhere."""
    if in_github_actions():
        print(f"::group::{censor(title)}", flush=True)
        try:
            yield
        finally:
            print("::endgroup::", flush=True)
    else:
        info(f"==> {title}")
        yield
