"""How fast a started container accepts work: our `start` against the floor and upstream.

    python benchmarks/ready.py [--rounds N] [BACKEND...]      (default: slurm pbs)

For each backend whose image is here (`nox -s build-<backend>`), per round:

- floor: `docker run`, then the declared readiness checks (the last of
  which runs a job) every 0.05 s, with no nox and no back-off: the
  services' own time to ready. (Submitting a job blindly is no floor: an
  `srun` sent before slurmctld listens waits out its own retries.)
- start: `nox -s start -- <backend>` until it returns (nox, our readiness
  checks and their polling included), then one job, which must run at once.
- lag: `start` again, watched from outside: the declared checks run every
  0.05 s in its container as soon as it exists; the lag is from the end of
  the first run in which they all passed to `start` returning. This is the
  wait our polling adds, free of the 0.5-1 s by which the services' own
  start differs between containers (which the ratios above include).
- upstream: the method of upstream dask-gateway's start.sh, reimplemented:
  `docker run`, then `docker logs` every 1 s until its signal (slurm: five
  "entered RUNNING state" lines; pbs: "Entering sleep", then its 3 s sleep),
  then one job with no waiting: "no job" counts rounds where it was not ready.
  Only for dask-gateway's backends (slurm, pbs).

Prints one table: measured, runs, median seconds with the spread (min-max),
the median ratio to the floor and the largest ratio of one round (its start
against its own floor). Targets (issue 20): slurm start median <= 1.2x its
floor and no round above 1.5x; pbs start <= 3.5 s and <= 1.3x its floor;
sge and htcondor start <= 3 s (issues 31, 32).
"""

from __future__ import annotations

import argparse
import math
import re
import threading
import time

from common import median, nox, table

from scripts import containers
from scripts.backends import load_all
from scripts.engine import connect
from scripts.errors import StepFailed
from scripts.settings import load_settings

# A job that must run now, per backend, and who submits it (PBS refuses root's jobs).
JOB = {
    "slurm": ("root", ["srun", "--immediate=5", "-n1", "-t1", "true"]),
    "pbs": ("dask", ["timeout", "30", "/opt/pbs/bin/qsub", "-W", "block=true", "--", "/bin/true"]),
    "sge": ("root", ["timeout", "30", "qsub", "-sync", "y", "-b", "y", "-j", "y", "-o", "/dev/null",
                     "/bin/true"]),
    "htcondor": ("dask", ["htcondor-run-job", "30"]),
}  # fmt: skip
# Upstream's start.sh readiness: a pattern in `docker logs`, how many times, extra sleep.
# (dask-jobqueue's SGE and HTCondor clusters are several containers: nothing to
# compare one container with; those rows are left out.)
UPSTREAM = {
    "slurm": (r"entered RUNNING state", 5, 0.0),
    "pbs": (r"Entering sleep", 1, 3.0),
}
FAST_POLL = 0.05
TIMEOUT = 240


def job_runs(container, backend: str) -> bool:
    user, command = JOB[backend]
    return containers.execute(container, command, user=user).exit_code == 0


def passes(container, check) -> bool:
    result = containers.run_check(container, check)
    return check.matches(result.exit_code, result.output)


def run_container(client, backend, name: str):
    image = client.images.get(load_settings().reference(backend)).id
    return containers.start(
        client, backend, image, name=name, forwarded=load_settings().forwarded, ports={}
    )


def floor(client, backend) -> float:
    started = time.monotonic()
    container = run_container(client, backend, f"bench-floor-{backend.name}")
    try:
        while time.monotonic() - started < TIMEOUT:
            if all(passes(container, check) for check in backend.ready_checks):
                return time.monotonic() - started
            time.sleep(FAST_POLL)
        raise SystemExit(f"{backend.name}: no job ran within {TIMEOUT}s")
    finally:
        containers.remove(container)


def ours(client, backend) -> tuple[float, bool]:
    env = {"DASK_GATEWAY_CI_PORTS": "none"}
    nox("-s", f"stop-{backend.name}", env=env)
    seconds, _ = nox("-s", f"start-{backend.name}", env=env)
    container = containers.find(client, backend.container_name)
    ran = container is not None and job_runs(container, backend.name)
    nox("-s", f"stop-{backend.name}", env=env)
    return seconds, ran


def lag(client, backend) -> float:
    """Seconds from the declared checks first passing (seen from outside) to `start` returning."""
    env = {"DASK_GATEWAY_CI_PORTS": "none"}
    nox("-s", f"stop-{backend.name}", env=env)
    passed_at: list[float] = []
    returned = threading.Event()

    def watch() -> None:
        while not returned.is_set():
            container = containers.find(client, backend.container_name)
            try:
                if container is not None and all(
                    passes(container, check) for check in backend.ready_checks
                ):
                    passed_at.append(time.monotonic())
                    return
            except StepFailed:  # created, not yet running: nothing to exec in yet
                pass
            time.sleep(FAST_POLL)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        nox("-s", f"start-{backend.name}", env=env)  # exits with its output on failure
        returned_at = time.monotonic()
    finally:
        returned.set()
        watcher.join()
        nox("-s", f"stop-{backend.name}", env=env)
    if not passed_at:
        return float("nan")  # start returned before the checks were seen to pass
    return returned_at - passed_at[0]


def upstream(client, backend) -> tuple[float, bool]:
    pattern, count, extra_sleep = UPSTREAM[backend.name]
    started = time.monotonic()
    container = run_container(client, backend, f"bench-upstream-{backend.name}")
    try:
        while time.monotonic() - started < TIMEOUT:
            logs = container.logs()
            if len(re.findall(pattern, logs)) >= count:
                break
            time.sleep(1)
        time.sleep(extra_sleep)
        seconds = time.monotonic() - started
        return seconds, job_runs(container, backend.name)
    finally:
        containers.remove(container)


def row(what: str, values: list[float], floors: list[float], note: str) -> tuple:
    """A table row: runs, median, spread, median ratio to the floor, the worst round's."""
    worst = max(value / floor_ for value, floor_ in zip(values, floors, strict=True))
    spread = f"{min(values):.2f}-{max(values):.2f}"
    return (what, len(values), median(values), spread, median(values) / median(floors), worst, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("backends", nargs="*", default=["slurm", "pbs"])
    args = parser.parse_args()
    client = connect()
    declared = load_all()
    rows, lag_rows = [], []
    for name in args.backends:
        backend = declared[name]
        if not client.images.list(name=load_settings().reference(backend)):
            print(f"{name}: no image here, skipped (nox -s build-{name})")
            continue
        floors, starts, upstreams, lags = [], [], [], []
        started_ok = upstream_ok = 0
        for round_number in range(args.rounds):
            floors.append(floor(client, backend))
            seconds, ran = ours(client, backend)
            starts.append(seconds)
            started_ok += ran
            if name in UPSTREAM:
                seconds, ran = upstream(client, backend)
                upstreams.append(seconds)
                upstream_ok += ran
            lags.append(lag(client, backend))
            print(
                f"{name} round {round_number + 1}: floor {floors[-1]:.2f}s, "
                f"start {starts[-1]:.2f}s, "
                + (f"upstream {upstreams[-1]:.2f}s, " if upstreams else "")
                + f"lag {lags[-1]:.2f}s",
                flush=True,
            )

        rows += [
            row(f"{name}: floor (docker run -> a job ran)", floors, floors, ""),
            row(
                f"{name}: nox -s start (-> returned)",
                starts,
                floors,
                f"a job ran right after in {started_ok}/{args.rounds}",
            ),
        ]
        if upstreams:
            rows.append(
                row(
                    f"{name}: upstream's log method",
                    upstreams,
                    floors,
                    f"no job yet in {args.rounds - upstream_ok}/{args.rounds}",
                )
            )
        seen = [value for value in lags if not math.isnan(value)]
        lag_rows.append(
            (
                f"{name}: start returned after the checks passed",
                len(seen),
                median(seen),
                f"{min(seen):.2f}-{max(seen):.2f}" if seen else "-",
                f"returned before they were seen to pass in {len(lags) - len(seen)}/{len(lags)}",
            )
        )
    table(
        "Start to ready (seconds)",
        ("measured", "runs", "median s", "min-max s", "ratio to floor", "worst round", "note"),
        rows,
    )
    table("Lag of start (seconds)", ("measured", "runs", "median s", "min-max s", "note"), lag_rows)


if __name__ == "__main__":
    main()
