"""What the benchmark scripts share: the checkout on sys.path, nox runs, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def nox(*args: str, env: dict[str, str] | None = None, check: bool = True) -> tuple[float, str]:
    """Seconds `nox ARGS` took, and its output."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nox", *args],
        cwd=ROOT,
        env={**os.environ, "NOX_SCRIPT_MODE": "none", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if check and done.returncode != 0:
        sys.exit(f"nox {' '.join(args)} failed:\n{done.stdout[-3000:]}")
    return elapsed, done.stdout


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    """A Markdown table on stdout, numbers with 2 decimals."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")
    sys.stdout.flush()
