"""signals.interruptible: every stop signal reaches the cleanup, whatever was inherited.

A shell without job control starts `cmd &` with SIGINT ignored (POSIX), and
Python keeps an inherited SIG_IGN. CI scripts run steps that way, so each
case starts its child with SIGINT ignored, as such a shell would.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.nox_runner import ROOT, STOP_SIGNALS

CHILD = """
import sys, time
from scripts import signals
with signals.interruptible():
    try:
        print("inside", flush=True)
        time.sleep(60)
        print("not stopped")
    except KeyboardInterrupt as interrupt:
        print(signals.describe(interrupt))
        sys.exit(3)
"""


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(("number", "said"), list(STOP_SIGNALS.values()), ids=list(STOP_SIGNALS))
def test_a_stop_signal_raises_inside_even_when_sigint_was_inherited_ignored(number, said):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigint,
    )
    try:
        # The child says so once its handlers are in place (not a timed guess).
        assert child.stdout.readline() == "inside\n"
        child.send_signal(number)
        rest, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert rest.strip() == said
    assert child.returncode == 3
