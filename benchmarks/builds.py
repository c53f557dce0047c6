"""How long builds take: cold, unchanged, and after a configuration edit.

    python benchmarks/builds.py [--cold] [--edit FILE] [--build-arg K=V]... [BACKEND]
    python benchmarks/builds.py pbs --edit ci/base/files/etc/sudoers.d/preserve-path \
        --build-arg OPENPBS_URL=http://127.0.0.1:18999/openpbs-23.06.06.tar.gz

- unchanged: `nox -s build-<backend>` again with nothing changed (all cache).
- config edit: the same, in a copy of the checkout where one configuration
  file (--edit, default the slurm.conf people edit) got one more comment
  line: only the layers after that file's COPY may rebuild.
- cold (--cold): `--no-cache`, every layer of the backend and its parents.

Targets (issue 12): unchanged <= 1 s; a config edit rebuilds only the layers after it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, nox, table

CACHED = re.compile(r"^built \S+: \S+ \((\d+)/(\d+) steps from cache\)", re.M)


def in_copy(backend: str, edit: str, options: list[str]) -> tuple[float, str]:
    """Build in a copy of the checkout with one comment added to a config file."""
    with tempfile.TemporaryDirectory(prefix="bench-build-") as folder:
        copy = Path(folder) / "checkout"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".nox", "__pycache__"))
        config = copy / edit
        config.write_text(config.read_text() + "\n# benchmark edit\n")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "nox", "-s", f"build-{backend}", "--", *options],
            cwd=copy,
            env={**os.environ, "NOX_SCRIPT_MODE": "none"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(done.stdout[-3000:])
        return elapsed, f"{config.relative_to(copy)}: " + steps(done.stdout)


def steps(output: str) -> str:
    found = CACHED.findall(output)
    return ", ".join(f"{cached}/{total} from cache" for cached, total in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--edit", default="ci/slurm/files/etc/slurm/slurm.conf")
    parser.add_argument(
        "--build-arg", action="append", default=[], help="passed to build (pbs: OPENPBS_URL)"
    )
    parser.add_argument("backend", nargs="?", default="slurm")
    args = parser.parse_args()
    # --network host: a download served on the host's loopback is reachable.
    options = ["--network", "host", *(f"--build-arg={item}" for item in args.build_arg)]
    rows = []
    if args.cold:
        seconds, output = nox("-s", f"build-{args.backend}", "--", "--no-cache", *options)
        rows.append((f"cold (--no-cache), base + {args.backend}", seconds, steps(output)))
    nox("-s", f"build-{args.backend}", "--", *options)  # make sure the cache is warm
    seconds, output = nox("-s", f"build-{args.backend}", "--", *options)
    rows.append(("unchanged rebuild", seconds, steps(output)))
    seconds, note = in_copy(args.backend, args.edit, options)
    rows.append(("config edit rebuild", seconds, note))
    table("Build times (seconds, wall clock)", ("measured", "seconds", "layers"), rows)


if __name__ == "__main__":
    main()
