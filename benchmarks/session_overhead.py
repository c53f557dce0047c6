"""Print how much a session costs on top of nox itself, and slurm's time to ready.

    python benchmarks/session_overhead.py [--repeat N] [--ready]      (N default 10)

Figures, not assertions: the target is session overhead near nox's own
(~0.12 s for `nox --version`), since Docker-only sessions create no
virtualenv. `--ready` also starts and stops the slurm container (needs the
image: `nox -s build-slurm`) and prints the time until it accepted a job.
"""

from __future__ import annotations

import argparse
import re

from common import median, nox


def timings(repeat: int, *args: str, check: bool = True) -> list[float]:
    return [nox(*args, check=check)[0] for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--ready", action="store_true")
    args = parser.parse_args()

    measured = {
        "nox --version (nox alone)": timings(args.repeat, "--version"),
        "nox -l (list every session)": timings(args.repeat, "-l"),
        "nox -s stop-slurm (no container)": timings(args.repeat, "-s", "stop-slurm"),
        "nox -s test -- nosuch (arg error)": timings(
            args.repeat, "-s", "test", "--", "nosuch", check=False
        ),
    }
    rows = [
        (name, median(values), f"{min(values):.3f}-{max(values):.3f}")
        for name, values in measured.items()
    ]
    overhead = rows[2][1] - rows[0][1]
    rows.append(("session overhead over nox alone", overhead, "(difference of medians)"))
    if args.ready:
        nox("-s", "stop-slurm")
        elapsed, output = nox("-s", "start-slurm")
        ready = re.search(r"is ready after ([\d.]+)s", output)
        rows.append(("nox -s start-slurm (to ready)", elapsed, "one run"))
        if ready:
            rows.append(("  of which waiting for ready (as reported)", float(ready.group(1)), ""))
        nox("-s", "stop-slurm")

    width = max(len(name) for name, *_ in rows)
    print(f"{'what':<{width}}  median s (of {args.repeat})  min-max s")
    for name, seconds, spread in rows:
        print(f"{name:<{width}}  {seconds:7.3f}               {spread}")


if __name__ == "__main__":
    main()
