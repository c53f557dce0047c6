"""The GitHub workflows as written: sessions that exist, pins, permissions, gates.

These read the YAML; what the workflows *do* is checked by running them
(tests/test_workflow_runs.py, through nektos/act). Read with PyYAML (YAML
1.1 reads the `on:` key as True). `nox -s` calls are found in `run:` blocks;
a `${VAR}` set from a matrix stands for every value of that matrix, and a
matrix made by the plan job stands for what `nox -s plan` prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from scripts.backends import load_all

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.y*ml"))
ALL = load_all()
IMAGES = list(ALL)
SERVICES = [name for name, backend in ALL.items() if backend.runs_services]
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
NOX_CALL = re.compile(r"\bnox\s+-s\s+(?P<rest>[^\n;&|>]*)")
PLAN = 'nox -s plan >> "$GITHUB_OUTPUT"'


@cache
def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOW_DIR / name).read_text())
    data["on"] = data.pop(True, data.get("on"))
    return data


def jobs(name: str) -> dict[str, dict]:
    return load(name)["jobs"]


def runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


@cache
def planned() -> dict[str, list[str]]:
    """What the plan jobs print, from the same `nox -s plan` (every backend)."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_GATEWAY_CI_BACKENDS"}
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "NOX_SCRIPT_MODE": "none"},
    )
    assert done.returncode == 0, done.stderr
    pairs = dict(line.split("=", 1) for line in done.stdout.splitlines())
    return {key: json.loads(value) for key, value in pairs.items() if key != "date"}


@cache
def session_names() -> frozenset[str]:
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "--json", "-k", "True"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return frozenset(entry["session"] for entry in json.loads(done.stdout))


def matrix_values(job: dict) -> dict[str, list[str]]:
    matrix = job.get("strategy", {}).get("matrix", {})
    values = {}
    for key, value in matrix.items():
        if value == "${{ fromJSON(needs.plan.outputs.backends) }}":
            values[key] = planned()["backends"]
        elif value == "${{ fromJSON(needs.plan.outputs.images) }}":
            values[key] = planned()["images"]
        elif value == "${{ fromJSON(needs.plan.outputs.architectures) }}":
            values[key] = planned()["architectures"]
        else:
            values[key] = list(value)
    return values


def nox_calls(job: dict) -> list[tuple[str, list[str]]]:
    """(session, arguments) of every nox call in the job, matrix variables expanded."""
    from_matrix = {
        var: m.group(1)
        for var, value in job.get("env", {}).items()
        if (m := re.fullmatch(r"\$\{\{ matrix\.(\w+) \}\}", str(value)))
    }
    values = matrix_values(job)
    calls = []
    for text in runs(job):
        for match in NOX_CALL.finditer(text):
            words = shlex.split(match["rest"])
            sessions = words[: words.index("--")] if "--" in words else words
            arguments = words[len(sessions) + 1 :]
            for session in sessions:
                names = [session]
                for var, key in from_matrix.items():
                    if f"${{{var}}}" in session:
                        names = [n.replace(f"${{{var}}}", v) for n in names for v in values[key]]
                calls.extend((name, arguments) for name in names)
    return calls


def all_calls() -> list[tuple[str, str, str]]:
    return sorted(
        {
            (path.name, job_id, session)
            for path in WORKFLOWS
            for job_id, job in jobs(path.name).items()
            for session, _ in nox_calls(job)
        }
    )


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"images.yaml", "test.yaml"}


@pytest.mark.parametrize(("workflow", "job", "session"), all_calls(), ids=lambda v: str(v))
def test_called_session_exists(workflow, job, session):
    assert session in session_names(), f"{workflow}:{job} calls `nox -s {session}`"


def test_matrices_are_the_declared_backends():
    """The plan jobs print the backends nox makes sessions for, i.e. the declarations."""
    assert planned()["backends"] == SERVICES
    assert planned()["images"] == IMAGES
    assert planned()["advisory"] == [n for n, b in ALL.items() if not b.blocking]
    for name in ("images.yaml", "test.yaml"):
        assert runs(jobs(name)["plan"])[-1] == PLAN
        backend = jobs(name)["backend"]
        assert backend["strategy"]["matrix"]["backend"] == (
            "${{ fromJSON(needs.plan.outputs.backends) }}"
        )
        # Whether a backend blocks is its declaration's, not the workflow's.
        assert backend["continue-on-error"] == (
            "${{ contains(fromJSON(needs.plan.outputs.advisory), matrix.backend) }}"
        )


# -- images.yaml ------------------------------------------------------------------------


def test_images_date_is_computed_once_and_one_dated_tag_names_the_set():
    images = jobs("images.yaml")
    publish = images["publish"]
    assert publish["env"]["DATE"] == "${{ needs.plan.outputs.date }}"
    assert "strategy" not in publish  # one job: one dated tag for every image
    dated = [args for session, args in nox_calls(publish) if session == "tag-dated"]
    assert len(dated) == 1
    assert dated[0][0] == "${PLAN_IMAGES}"
    assert dated[0][dated[0].index("--date") + 1] == "${DATE}"
    assert dated[0][dated[0].index("--suffix") + 1] == "auto"
    assert publish["env"]["PLAN_IMAGES"] == "${{ join(fromJSON(needs.plan.outputs.images), ' ') }}"


def test_nothing_is_published_before_every_image_ran_its_tests():
    images = jobs("images.yaml")
    assert set(images["publish"]["needs"]) == {"plan", "base", "backend"}
    for job_id, job in images.items():
        pushes = [s for s, _ in nox_calls(job) if s.startswith(("push", "tag-dated"))]
        assert bool(pushes) == (job_id == "publish"), job_id
    backend = dict(nox_calls(images["backend"]))
    for name in SERVICES:
        assert f"build-{name}" in backend and f"verify-{name}" in backend
        assert backend[f"cycle-{name}"][:3] == ["--platform", "${PLATFORM}", "--source"]
    assert {"build-base", "verify-base"} <= {s for s, _ in nox_calls(images["base"])}
    assert [s for s, _ in nox_calls(images["publish"])] == ["push", "tag-dated"]


ARM_RUNNER = "${{ matrix.arch == 'arm64' && 'ubuntu-24.04-arm' || 'ubuntu-24.04' }}"


@pytest.mark.parametrize(
    ("workflow", "job_id"),
    [("images.yaml", "base"), ("images.yaml", "backend"), ("test.yaml", "backend")],
)
def test_every_architecture_runs_natively_with_the_same_steps(workflow, job_id):
    """One leg per planned architecture, arm64 on GitHub's arm runner; every nox call
    of the leg is for its platform, so the arm64 image is verified and tested as amd64's."""
    assert planned()["architectures"] == ["amd64", "arm64"]
    job = jobs(workflow)[job_id]
    assert job["strategy"]["matrix"]["arch"] == (
        "${{ fromJSON(needs.plan.outputs.architectures) }}"
    )
    assert job["runs-on"] == ARM_RUNNER
    assert job["env"]["PLATFORM"] == "linux/${{ matrix.arch }}"
    calls = nox_calls(job)
    assert calls
    for session, args in calls:
        assert args[:2] == ["--platform", "${PLATFORM}"], (session, args)
    # Each architecture's archive and artifact has a name of its own.
    for step in job["steps"]:
        if "upload-artifact" in step.get("uses", ""):
            assert step["with"]["name"].endswith("${{ env.SUFFIX }}")


def test_the_index_is_published_only_after_every_architecture():
    images = jobs("images.yaml")
    # needs: the base and backend jobs, i.e. every leg of their matrices.
    assert {"base", "backend"} <= set(images["publish"]["needs"])
    assert images["publish"]["env"]["PLATFORM_OPTIONS"] == (
        "${{ join(fromJSON(needs.plan.outputs.platform_options), ' ') }}"
    )
    assert planned()["platform_options"] == [
        "--platform=linux/amd64",
        "--platform=linux/arm64",
    ]
    for job_id in ("base", "backend"):
        assert images[job_id]["strategy"]["fail-fast"] is False  # every leg reports


def test_images_check_out_full_history_for_labels_and_the_forward_only_latest():
    for job_id in ("base", "backend", "publish"):
        checkout = jobs("images.yaml")[job_id]["steps"][0]
        assert checkout["uses"].startswith("actions/checkout@")
        assert checkout["with"]["fetch-depth"] == 0, job_id


def test_base_is_saved_before_anything_is_pushed_and_images_travel_as_files():
    images = jobs("images.yaml")
    folder = "${RUNNER_TEMP}/dask-gateway-ci/images"
    base_steps = images["base"]["steps"]
    assert any("upload-artifact" in step.get("uses", "") for step in base_steps)
    # The folder --save writes into exists before the build.
    make = next(i for i, t in enumerate(runs(images["base"])) if f'mkdir -p "{folder}"' in t)
    build = next(i for i, t in enumerate(runs(images["base"])) if "build-base" in t)
    assert make < build
    assert dict(nox_calls(images["base"]))["build-base"] == [
        "--platform",
        "${PLATFORM}",
        "--save",
        f"{folder}/base${{SUFFIX}}.tar",
    ]
    for name, args in nox_calls(images["backend"]):
        if name.startswith("build-"):
            assert args[:4] == [
                "--platform",
                "${PLATFORM}",
                "--load-parent",
                "${images}/base${SUFFIX}.tar",
            ]
    for name, args in nox_calls(images["publish"]):
        assert args[1:4] == ["${PLATFORM_OPTIONS}", "--load", folder], name
    download = next(
        s for s in images["publish"]["steps"] if "download-artifact" in s.get("uses", "")
    )
    assert download["with"] == {
        "pattern": "image-*",
        "merge-multiple": True,
        "path": "${{ runner.temp }}/dask-gateway-ci/",
    }
    for job in images.values():
        for text in runs(job):
            assert "docker save" not in text and "docker load" not in text


def test_artifacts_outlive_the_rerun_window():
    for job in jobs("images.yaml").values():
        for step in job["steps"]:
            if "upload-artifact" in step.get("uses", ""):
                assert step["with"]["retention-days"] >= 30


def test_the_images_workflow_runs_when_anything_it_reads_changes():
    paths = load("images.yaml")["on"]["push"]["paths"]
    for needed in ("ci/**", "scripts/**", "noxfile.py", "pyproject.toml", "constraints.txt"):
        assert needed in paths


def test_dask_gateway_is_pinned():
    for name in ("images.yaml", "test.yaml"):
        assert re.fullmatch(r"\d{4}\.\d+\.\d+", load(name)["env"]["DASK_GATEWAY_REF"])
    checkout = [
        step
        for step in jobs("images.yaml")["backend"]["steps"]
        if step.get("with", {}).get("repository") == "dask/dask-gateway"
    ]
    assert checkout[0]["with"]["ref"] == "${{ env.DASK_GATEWAY_REF }}"


# -- test.yaml --------------------------------------------------------------------------


def test_pull_requests_pull_current_images_of_their_own_owner():
    test = load("test.yaml")
    assert test["on"]["pull_request"] is None  # every pull request: no paths-ignore
    assert any(s.get("cron") for s in test["on"]["schedule"])
    assert test["env"]["DASK_GATEWAY_CI_OWNER"] == "${{ github.repository_owner }}"
    backend = test["jobs"]["backend"]
    assert backend["permissions"] == {"contents": "read", "packages": "read"}
    calls = dict(nox_calls(backend))
    for name in SERVICES:
        assert calls[f"build-{name}"] == ["--platform", "${PLATFORM}", "--pull-if-current"]
        assert calls[f"cycle-{name}"][:3] == ["--platform", "${PLATFORM}", "--source"]
    checkout = [
        step
        for step in backend["steps"]
        if step.get("with", {}).get("repository") == "dask/dask-gateway"
    ]
    # The weekly run tries dask-gateway's main; everything else its pinned release.
    assert checkout[0]["with"]["ref"] == (
        "${{ github.event_name == 'schedule' && 'main' || env.DASK_GATEWAY_REF }}"
    )
    assert backend["steps"][0]["with"]["fetch-depth"] == 0  # to compare with the labels


def test_logs_come_from_cycle_only_when_a_container_exists():
    for path in WORKFLOWS:
        for job in jobs(path.name).values():
            sessions = [s for s, _ in nox_calls(job)]
            assert not [s for s in sessions if s.startswith(("print-logs", "start-", "stop-"))]


# -- rules for every workflow -------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_tools_are_pinned_and_installed_once_per_job(path):
    workflow = load(path.name)
    assert workflow["env"]["NOX_SCRIPT_MODE"] == "none"
    for job_id, job in workflow["jobs"].items():
        installs = [text for text in runs(job) if "pip install" in text]
        assert len(installs) == 1, job_id
        assert "-c constraints.txt" in installs[0], job_id
        first_nox = next(i for i, text in enumerate(runs(job)) if re.search(r"\bnox -[sl]", text))
        assert runs(job).index(installs[0]) < first_nox, job_id


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_has_a_timeout_and_least_privilege(path):
    workflow = load(path.name)
    assert workflow["permissions"] == {}
    assert "pull_request_target" not in workflow["on"]
    assert workflow["concurrency"]["group"]
    for job_id, job in workflow["jobs"].items():
        assert isinstance(job["timeout-minutes"], int), job_id
        assert job["permissions"].get("contents") == "read", job_id
        pushes = any(s.startswith(("push", "tag-dated")) for s, _ in nox_calls(job))
        assert (job["permissions"].get("packages") == "write") == pushes, job_id


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_pinned_to_a_commit(path):
    uses = re.findall(r"^\s*(?:- )?uses:\s*(\S+)(.*)$", path.read_text(), re.M)
    assert uses
    for action, comment in uses:
        assert PINNED.match(action), f"{action} is not pinned to a full commit SHA"
        assert re.match(r"\s+#\s*v\d", comment), f"{action}: no version comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_step_rules(path):
    for job_id, job in jobs(path.name).items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, job_id
            text = step.get("run", "")
            assert "${{" not in text, f"{job_id}: template expansion in run:"
            if re.search(r"nox -s \"?(push|tag-dated)\b", text):
                assert "refs/heads/main" in step["if"], job_id
                assert step["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
