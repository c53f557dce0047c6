"""What one workflow run builds, tests and publishes, for a job's $GITHUB_OUTPUT.

    $ nox -s plan
    date=2026-11-27
    images=["base","hadoop","pbs","slurm"]
    backends=["hadoop","pbs","slurm"]
    advisory=["hadoop"]

`images` are built and published (parents first), `backends` run
dask-gateway's tests, `advisory` are the backends whose failure holds back
nothing (`blocking = false`). The date is taken once, so a run that crosses
midnight UTC gives every image the same dated tag. DASK_GATEWAY_CI_BACKENDS
(names separated by commas or spaces) narrows a run to those backends and
their parents, e.g. for a local run of a workflow.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime

from .backends import Backend, ancestors
from .errors import UserError

SELECTION_VARIABLE = "DASK_GATEWAY_CI_BACKENDS"


def selected(backends: dict[str, Backend], environ: dict[str, str] | None = None) -> list[str]:
    """The image names of this run, parents first (every declared one by default)."""
    environ = os.environ if environ is None else environ
    names = [n for n in re.split(r"[,\s]+", environ.get(SELECTION_VARIABLE, "")) if n]
    if not names:
        return list(backends)
    unknown = [n for n in names if n not in backends]
    if unknown:
        raise UserError(
            f"{SELECTION_VARIABLE}: unknown backend '{unknown[0]}'; choose from: "
            f"{', '.join(backends)}"
        )
    wanted = {a.name for n in names for a in ancestors(backends, n)} | set(names)
    return [name for name in backends if name in wanted]


def plan(backends: dict[str, Backend], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The outputs of a plan job: each value one line (JSON lists for matrices)."""
    images = selected(backends, environ)
    services = [n for n in images if backends[n].runs_services]
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "images": json.dumps(images, separators=(",", ":")),
        "backends": json.dumps(services, separators=(",", ":")),
        "advisory": json.dumps(
            [n for n in images if not backends[n].blocking], separators=(",", ":")
        ),
    }


def render(outputs: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in outputs.items())
