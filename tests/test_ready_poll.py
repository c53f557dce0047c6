"""containers.wait_ready: which checks each poll runs, and the loop that polls
inside the container (no engine: the checks are faked, the loop runs in this
machine's sh)."""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from dataclasses import replace

import pytest

from scripts import containers
from scripts.backends import load_all
from scripts.containers import Result
from scripts.errors import StepFailed

SLURM = load_all()["slurm"]


@pytest.mark.parametrize("typical", [10.0, 0.0], ids=["polled-inside", "polled-from-outside"])
def test_a_poll_resumes_at_the_first_check_not_yet_passed(monkeypatch, typical):
    checks = SLURM.ready_checks
    assert len(checks) >= 3
    second = checks[1].name
    failures_left = {second: 3}  # the second check fails on its first three polls
    ran: list[tuple[str, str]] = []

    def attempt(how, check):
        ran.append((how, check.name))
        if failures_left.get(check.name, 0) > 0:
            failures_left[check.name] -= 1
            return Result(1, "not yet")
        return Result(0, "is UP\nidle\nlinux\n")  # matches every slurm check's expect

    def inside(_container, chain, *_timing):
        # As the loop: the checks in turn, stopping at the first that fails.
        for index, check in enumerate(chain):
            result = attempt("inside", check)
            if result.exit_code != 0 or index == len(chain) - 1:
                return index, result
        raise AssertionError("unreachable")

    monkeypatch.setattr(containers, "run_check", lambda _c, check: attempt("outside", check))
    monkeypatch.setattr(containers, "run_checks_until", inside)
    monkeypatch.setattr(containers, "ensure_running", lambda *_: None)
    monkeypatch.setattr(containers.time, "sleep", lambda _: None)
    backend = replace(SLURM, ready_typical=typical)

    containers.wait_ready(object(), backend, timeout=60)

    names = [check.name for check in checks]
    # The first check passed once and was not run again; the second was polled
    # until it passed; each later one ran once, in order.
    assert [name for _, name in ran] == [names[0], second, second, second, second, *names[2:]]
    assert {how for how, _ in ran} == {"inside" if typical else "outside"}


def chain_loop(seconds: str, every: str, *checks: tuple[str, str]) -> subprocess.CompletedProcess:
    """The in-container loop, run in this machine's sh: (pattern, shell command) pairs."""
    pairs = [part for check in checks for part in check]
    return subprocess.run(
        ["sh", "-c", containers._CHAIN_LOOP, "sh", seconds, every, *pairs],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_loop_returns_as_soon_as_the_command_succeeds(tmp_path):
    flag = tmp_path / "up"
    probe = f"test -e {flag} && echo is UP || {{ echo is DOWN; exit 1; }}"
    threading.Timer(0.5, flag.touch).start()
    began = time.monotonic()
    done = chain_loop("20", "0.05", ("", probe))
    took = time.monotonic() - began
    assert done.returncode == 0, done
    assert done.stdout == "check 0\nis UP\n"
    assert took < 10, took  # far before its 20 s: it ended when the command passed


def test_the_loop_gives_up_after_its_seconds_with_the_last_output():
    done = chain_loop("1", "0.05", ("", "echo still down; exit 3"))
    assert done.returncode == 3
    assert done.stdout == "check 0\nstill down\n"


def test_the_loop_waits_for_the_expected_output_not_only_exit_0(tmp_path):
    # sinfo exits 0 while the node is still "unknown": only "idle" ends the wait.
    flag = tmp_path / "registered"
    state = f"test -e {flag} && echo idle || echo unknown"
    threading.Timer(0.5, flag.touch).start()
    done = chain_loop("20", "0.05", ("^(idle|mixed|allocated)$", state))
    assert (done.returncode, done.stdout) == (0, "check 0\nidle\n")


def test_the_loop_matches_across_lines_as_check_matches_does():
    check = replace(SLURM.ready_checks[0], expect=r"(?s)^dask dask$.*^bob bob$")
    output = "dask dask\nalice alice\nbob bob\n"
    assert check.matches(0, output)
    began = time.monotonic()
    done = chain_loop("5", "0.05", (check.expect, f"printf {shlex.quote(output)}"))
    assert time.monotonic() - began < 4  # matched at once, not given up after 5 s
    assert done.returncode == 0
    assert check.matches(done.returncode, done.stdout.removeprefix("check 0\n"))


def test_a_pattern_grep_cannot_read_leaves_the_decision_to_python():
    # grep says 2 (not 1): the loop ends at once instead of waiting out its seconds.
    began = time.monotonic()
    done = chain_loop("20", "0.05", ("(?:", "echo anything"), ("", "echo never run"))
    assert done.returncode == 0
    assert done.stdout == "check 0\nanything\n"
    assert time.monotonic() - began < 10


def test_the_loop_goes_on_to_the_next_check_once_one_passes(tmp_path):
    # The second check is polled until it passes, the third then runs: one exec.
    flag = tmp_path / "registered"
    threading.Timer(0.5, flag.touch).start()
    done = chain_loop(
        "20",
        "0.05",
        ("UP", "echo is UP"),
        ("^idle$", f"test -e {flag} && echo idle || echo unknown"),
        ("", "echo ran"),
    )
    assert (done.returncode, done.stdout) == (0, "check 2\nran\n")


def test_the_loop_names_the_check_it_gave_up_on():
    done = chain_loop("1", "0.05", ("", "true"), ("^idle$", "echo unknown"), ("", "echo x"))
    assert (done.returncode, done.stdout) == (0, "check 1\nunknown\n")


def test_a_chain_reports_how_many_passed_and_the_next_ones_result(monkeypatch):
    checks = SLURM.ready_checks[:3]
    sent = []

    def execute(_container, command, user):
        sent.append((command, user))
        return Result(7, "check 1\nUnable to contact slurm controller\n")

    monkeypatch.setattr(containers, "execute", execute)
    before, result = containers.run_checks_until(object(), checks, 5.5, 0.05)
    assert (before, result) == (1, Result(7, "Unable to contact slurm controller\n"))
    ((command, user),) = sent
    assert user == checks[0].user
    # seconds (whole), interval, then a pattern and a shell command per check
    assert command[4:6] == ("5", "0.05")
    assert command[6:] == tuple(
        part
        for check in checks
        for part in (check.expect or "", shlex.join(containers._bounded(check)))
    )


def test_checks_of_another_user_go_in_their_own_exec(monkeypatch):
    first, second, third = SLURM.ready_checks[:3]
    chain = [first, replace(second, user="dask"), third]
    users = []

    def execute(_container, command, user):
        # after sh -c LOOP sh SECONDS EVERY: a pattern and a command per check
        count = len(command[6:]) // 2
        users.append([user] * count)
        return Result(0, f"check {count - 1}\nis UP\nidle\nlinux\n")

    monkeypatch.setattr(containers, "execute", execute)
    monkeypatch.setattr(containers, "ensure_running", lambda *_: None)
    backend = replace(SLURM, ready_checks=tuple(chain))
    containers.wait_ready(object(), backend, timeout=60)
    assert users == [["root"], ["dask"], ["root"]]


def test_no_in_container_wait_runs_past_the_ready_timeout(monkeypatch):
    # A loop in whole seconds would outlast a timeout under a second: a check
    # that passed inside it would make a start "ready" after its deadline.
    looped = []
    monkeypatch.setattr(containers, "run_check", lambda *_: Result(1, "is DOWN"))
    monkeypatch.setattr(containers, "run_checks_until", lambda *a: looped.append(a))
    monkeypatch.setattr(containers, "ensure_running", lambda *_: None)
    with pytest.raises(StepFailed, match="not ready after"):
        containers.wait_ready(object(), SLURM, timeout=0.001)
    assert looped == []
