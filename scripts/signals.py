"""SIGTERM and SIGHUP handled like Ctrl-C, so every step cleans up the same way.

CI systems cancel with SIGTERM (GitHub Actions: SIGINT, then SIGTERM, then
SIGKILL), as do `timeout` and a closed terminal (SIGHUP). Python's default
for those ends the process on the spot, leaving a half-started container.
Inside `interruptible()`, they raise Terminated, a KeyboardInterrupt, so the
code that removes what Ctrl-C would leave runs for them too.

SIGINT is set to raise KeyboardInterrupt as well, even where the process
inherited it ignored: a shell without job control starts its `cmd &`
background jobs with SIGINT ignored (POSIX), which is how CI scripts run
steps side by side, and Python then leaves it ignored, so Ctrl-C or
`kill -INT` would do nothing at all.

    with interruptible():
        start_the_container()      # SIGTERM here: removed, then one line
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

HANDLED = (signal.SIGTERM, signal.SIGHUP)
INTERRUPT = signal.SIGINT


class Terminated(KeyboardInterrupt):
    """A SIGTERM or SIGHUP, raised where the main thread was."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.signal_name = signal.Signals(number).name


def _raise(number: int, _frame) -> None:
    raise Terminated(number)


def describe(interrupt: KeyboardInterrupt) -> str:
    """How the run was stopped, for its closing line."""
    if isinstance(interrupt, Terminated):
        return f"terminated ({interrupt.signal_name})"
    return "interrupted"


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated and SIGINT raises
    KeyboardInterrupt, whatever the process inherited (main thread only)."""
    previous = {}
    try:
        for number in HANDLED:
            previous[number] = signal.signal(number, _raise)
        previous[INTERRUPT] = signal.signal(INTERRUPT, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
