"""Print how much a session costs on top of nox itself, and slurm's time to ready.

    python benchmarks/session_overhead.py [--repeat N] [--ready]

Figures, not assertions: the target is session overhead near nox's own
(~0.12 s for `nox --version`), since Docker-only sessions create no
virtualenv. `--ready` also starts and stops the slurm container (needs the
image: `nox -s build-slurm`) and prints the time until it accepted a job.
"""

from __future__ import annotations

import argparse
import re

from common import median, nox


def median_of(repeat: int, *args: str) -> float:
    return median([nox(*args)[0] for _ in range(repeat)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ready", action="store_true")
    args = parser.parse_args()

    rows = [
        ("nox --version (nox alone)", median_of(args.repeat, "--version")),
        ("nox -l (list every session)", median_of(args.repeat, "-l")),
        ("nox -s stop-slurm (no container)", median_of(args.repeat, "-s", "stop-slurm")),
        ("nox -s test -- nosuch (arg error)", nox("-s", "test", "--", "nosuch", check=False)[0]),
    ]
    if args.ready:
        nox("-s", "stop-slurm")
        elapsed, output = nox("-s", "start-slurm")
        ready = re.search(r"is ready after ([\d.]+)s", output)
        rows.append(("nox -s start-slurm (to ready)", elapsed))
        if ready:
            rows.append(("  of which waiting for ready (s, as reported)", float(ready.group(1))))
        nox("-s", "stop-slurm")

    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  seconds (median of {args.repeat})")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.3f}")
    overhead = rows[2][1] - rows[0][1]
    print(f"{'session overhead over nox alone':<{width}}  {overhead:7.3f}")


if __name__ == "__main__":
    main()
