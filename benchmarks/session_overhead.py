"""Print how much a session costs on top of nox itself, and slurm's time to ready.

    python benchmarks/session_overhead.py [--repeat N] [--ready]

Figures, not assertions: the target is session overhead near nox's own
(~0.12 s for `nox --version`), since Docker-only sessions create no
virtualenv. `--ready` also starts and stops the slurm container (needs the
image: `nox -s build-slurm`) and prints the time until it accepted a job.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(*args: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nox", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"nox {' '.join(args)} failed:\n{done.stdout}")
    return elapsed, done.stdout


def median_of(repeat: int, *args: str, env: dict[str, str]) -> float:
    return statistics.median(timed(*args, env=env)[0] for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ready", action="store_true")
    args = parser.parse_args()
    env = {**os.environ, "NOX_SCRIPT_MODE": "none"}

    rows = [
        ("nox --version (nox alone)", median_of(args.repeat, "--version", env=env)),
        ("nox -l (list every session)", median_of(args.repeat, "-l", env=env)),
        ("nox -s stop-slurm (no container)", median_of(args.repeat, "-s", "stop-slurm", env=env)),
        ("nox -s test -- nosuch (arg error)", 0.0),
    ]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "nox", "-s", "test", "--", "nosuch"],
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    rows[-1] = (rows[-1][0], time.perf_counter() - started)
    if args.ready:
        timed("-s", "stop-slurm", env=env)
        elapsed, output = timed("-s", "start-slurm", env=env)
        ready = re.search(r"is ready after (\d+)s", output)
        rows.append(("nox -s start-slurm (to ready)", elapsed))
        if ready:
            rows.append(("  of which waiting for ready (s, as reported)", float(ready.group(1))))
        timed("-s", "stop-slurm", env=env)

    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  seconds (median of {args.repeat})")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.3f}")
    overhead = rows[2][1] - rows[0][1]
    print(f"{'session overhead over nox alone':<{width}}  {overhead:7.3f}")


if __name__ == "__main__":
    main()
