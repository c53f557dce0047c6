"""A consumer's suite, whole cycles in a row: does it pass every time, and how steadily?

    python benchmarks/runs_in_a_row.py BACKEND --source DIR [--runs 10] [--logs DIR]

Each run is `nox -s cycle -- BACKEND --source DIR` (start, install, the
suite, stop), one after another on an otherwise idle engine, nothing
retried. One line per run as it ends: exit status, seconds, the load
average, pytest's last line. Then one table row: runs passed, the counts of
the last run, reruns and timeouts over all runs, the median seconds with
the spread, and the slowest run against the median. `--logs DIR` keeps each
run's whole output as DIR/<backend>-<n>.log.

Target (issue 34): every run passes, with no rerun and no timeout, and no
run above 1.5x the median.

Example, dask-jobqueue 0.9.0's sdist unpacked in /tmp/djq:

    python benchmarks/runs_in_a_row.py pbs --source /tmp/djq/dask_jobqueue-0.9.0
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from common import median, nox, table

SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed|error).*) in [\d.]+s", re.M)
COUNT = re.compile(r"(\d+) (\w+)")
TIMEOUT = "Failed: Timeout"  # pytest-timeout's failure


def counts(output: str) -> dict[str, int]:
    """pytest's last summary line as numbers: '9 passed, 1 rerun' -> {'passed': 9, 'rerun': 1}.

    >>> counts("== 9 passed, 272 skipped, 1 rerun in 31.20s ==")
    {'passed': 9, 'skipped': 272, 'rerun': 1}
    """
    lines = SUMMARY.findall(output)
    return {word: int(n) for n, word in COUNT.findall(lines[-1])} if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend")
    parser.add_argument("--source", required=True, type=Path, help="the consumer's checkout")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--logs", type=Path, help="keep each run's output here")
    args = parser.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    seconds, passed, reruns, timeouts, last = [], 0, 0, 0, {}
    for n in range(1, args.runs + 1):
        elapsed, output = nox(
            "-s", "cycle", "--", args.backend, "--source", str(args.source.resolve()), check=False
        )
        if args.logs:
            (args.logs / f"{args.backend}-{n}.log").write_text(output)
        found = counts(output)
        ok = "nox > Session cycle was successful" in output and found.get("passed", 0) > 0
        passed += ok
        reruns += found.get("rerun", 0)
        timeouts += output.count(TIMEOUT)
        seconds.append(elapsed)
        last = found or last
        summary = SUMMARY.findall(output)
        print(
            f"{args.backend} run {n}: {'passed' if ok else 'FAILED'}, {elapsed:.0f} s, "
            f"load {os.getloadavg()[0]:.2f}: {summary[-1] if summary else 'no pytest summary'}",
            flush=True,
        )
    middle = median(seconds)
    table(
        f"{args.backend}, {args.source.name}: {args.runs} cycles in a row",
        ("runs passed", "last run", "reruns", "timeouts", "median s (min-max)", "slowest/median"),
        [
            (
                f"{passed}/{args.runs}",
                ", ".join(f"{v} {k}" for k, v in last.items()),
                reruns,
                timeouts,
                f"{middle:.1f} ({min(seconds):.1f}-{max(seconds):.1f})",
                max(seconds) / middle,
            )
        ],
    )


if __name__ == "__main__":
    main()
