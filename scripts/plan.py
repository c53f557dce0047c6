"""What one workflow run builds, tests and publishes, for a job's $GITHUB_OUTPUT.

    $ nox -s plan
    date=2026-11-27
    images=["base","hadoop","pbs","sge","slurm"]
    backends=["hadoop","pbs","sge","slurm"]
    advisory=["hadoop"]
    architectures=["amd64","arm64"]
    platform_options=["--platform=linux/amd64","--platform=linux/arm64"]
    dask_gateway=["hadoop","pbs","slurm"]
    dask_jobqueue=["pbs","sge","slurm"]

`images` are built and published (parents first), `backends` are those that
run services (a job each), `advisory` are the backends whose failure holds
back nothing (`blocking = false`). Then, per consumer (consumers/*.toml, its
name with `_` for `-`), the backends of this run whose tests it declares:
the workflows run a consumer's tests only where it has some. `architectures`
are the legs of each image job (amd64 on ubuntu-24.04, arm64 on
ubuntu-24.04-arm), and `platform_options` what publish passes to push and tag-dated: an index of
every architecture, or nothing when amd64 is the only one (the tags then
hold the amd64 image itself, as they always have). The date is taken once,
so a run that crosses midnight UTC gives every image the same dated tag.
DASK_GATEWAY_CI_BACKENDS (names separated by commas or spaces) narrows a
run to those backends and their parents, DASK_GATEWAY_CI_ARCHITECTURES to
those architectures (amd64 always stays: upstream pulls it), e.g. for a
local run of a workflow.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from .backends import Backend, ancestors
from .consumers import Consumer
from .errors import UserError
from .platforms import PLAIN, SUPPORTED
from .settings import ARCHITECTURES_VARIABLE, SELECTION_VARIABLE, Settings


def selected(backends: dict[str, Backend], settings: Settings) -> list[str]:
    """The image names of this run, parents first (every declared one by default)."""
    names = [n for n in re.split(r"[,\s]+", settings.selection) if n]
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


def architectures(settings: Settings) -> list[str]:
    """The architectures of this run (every supported one by default), amd64 first."""
    names = [n for n in re.split(r"[,\s]+", settings.architectures) if n]
    unknown = [n for n in names if n not in SUPPORTED]
    if unknown:
        raise UserError(
            f"{ARCHITECTURES_VARIABLE}: unknown architecture '{unknown[0]}'; choose from: "
            f"{', '.join(SUPPORTED)}"
        )
    if names and PLAIN not in names:
        raise UserError(
            f"{ARCHITECTURES_VARIABLE}: {PLAIN} cannot be left out (the published tags' "
            f"{PLAIN} image is what upstream pulls)"
        )
    return [a for a in SUPPORTED if not names or a in names]


def plan(
    backends: dict[str, Backend], consumers: dict[str, Consumer], settings: Settings
) -> dict[str, str]:
    """The outputs of a plan job: each value one line (JSON lists for matrices)."""
    images = selected(backends, settings)
    legs = architectures(settings)
    services = [n for n in images if backends[n].runs_services]
    tested_by = {
        consumer.name.replace("-", "_"): json.dumps(
            [n for n in services if n in consumer.uses], separators=(",", ":")
        )
        for consumer in consumers.values()
    }
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "images": json.dumps(images, separators=(",", ":")),
        "backends": json.dumps(services, separators=(",", ":")),
        "advisory": json.dumps(
            [n for n in images if not backends[n].blocking], separators=(",", ":")
        ),
        "architectures": json.dumps(legs, separators=(",", ":")),
        "platform_options": json.dumps(
            [f"--platform=linux/{a}" for a in legs] if len(legs) > 1 else [],
            separators=(",", ":"),
        ),
        **tested_by,
    }


def render(outputs: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in outputs.items())
