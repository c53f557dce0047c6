"""The workflows, run as GitHub runs them: through act, on this engine (nox -s workflows).

A copy of this checkout gets a history of its own (origin: github.com/dask/
dask-gateway-ci), a registry on loopback stands in for ghcr.io and a small
git repository for dask/dask-gateway (tag DASK_GATEWAY_REF, one slurm test
that runs a job). Only base and slurm are built (DASK_GATEWAY_CI_BACKENDS):
pbs and hadoop need downloads this machine cannot make. Only the amd64 legs
run (--architectures amd64): the arm64 ones would build under emulation
here, many minutes each (README, "Architectures"); their jobs are the same
steps with `--platform linux/arm64`, checked as written in test_workflows.py.

- images.yaml: a push to main; a second push the same day that changes
  ci/base; then the first run again (GitHub's "Re-run all jobs").
- test.yaml: a pull request that changes ci/slurm, one that changes no
  image, the first push of a repository, a push after a force-push.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from scripts.images import untag
from scripts.local_registry import LocalRegistry
from scripts.workflows import StepResult, job_results, read_log
from tests.nox_runner import ROOT, Run, nox, nox_env
from tests.registry import docker_client

pytestmark = [pytest.mark.docker, pytest.mark.workflows]

NO_COMMIT = "0" * 40
IMAGES = ("base", "slurm")
OWNER = "dask"
DASK_GATEWAY_REF = yaml.safe_load((ROOT / ".github/workflows/images.yaml").read_text())["env"][
    "DASK_GATEWAY_REF"
]
SLURM_TEST = """
import subprocess


def test_a_job_runs_as_the_user_who_submits_it():
    done = subprocess.run(["srun", "-n1", "whoami"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "dask"
"""


def git(repository: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com"}
    env.update(GIT_COMMITTER_NAME="ci", GIT_COMMITTER_EMAIL="ci@example.com")
    if date:  # fixed dates: the same tree gives the same commits, labels and cache
        env.update(GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date)
    done = subprocess.run(
        ["git", *args], cwd=repository, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(repository: Path, path: str, line: str, date: str) -> str:
    target = repository / path
    target.write_text(target.read_text() + line)
    git(repository, "commit", "-qam", f"edit {path}", date=date)
    return git(repository, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """This checkout's files (committed or not, ignored ones left out), committed once: A."""
    root = tmp_path_factory.mktemp("workflows") / "dask-gateway-ci"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    git(root, "init", "-q", "-b", "main")
    git(root, "remote", "add", "origin", "https://github.com/dask/dask-gateway-ci.git")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "A: this checkout", date="2026-01-05T10:00:00Z")
    return root


@pytest.fixture(scope="module")
def dask_gateway(tmp_path_factory) -> Path:
    """A stand-in for dask/dask-gateway at DASK_GATEWAY_REF: one slurm test that runs a job."""
    root = tmp_path_factory.mktemp("dask-gateway")
    (root / "tests").mkdir()
    (root / "tests" / "requirements.txt").write_text("pytest\n")
    (root / "tests" / "test_slurm_backend.py").write_text(SLURM_TEST)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "stand-in", date="2026-01-01T00:00:00Z")
    git(root, "tag", DASK_GATEWAY_REF)
    return root


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The registry standing in for ghcr.io, for every run of the module; then nothing left."""
    engine = docker_client()
    server = LocalRegistry(
        tmp_path_factory.mktemp("registry"), "workflows", uuid.uuid4().hex
    ).start()
    yield server
    server.stop()
    for image in engine.images.list(name=f"{server.address}/{OWNER}/*"):
        for tag in image.tags:
            untag(engine, tag)


class Runner:
    def __init__(self, project: Path, dask_gateway: Path, registry: LocalRegistry, logs: Path):
        self.project = project
        self.dask_gateway = dask_gateway
        self.registry = registry
        self.logs = logs
        self.count = 0
        self.env = nox_env(
            logs / "state",
            DASK_GATEWAY_CI_REGISTRY_USER=registry.user,
            DASK_GATEWAY_CI_REGISTRY_TOKEN=registry.token,
        )

    def __call__(self, workflow: str, *args: str) -> tuple[Run, list[StepResult]]:
        self.count += 1
        log = self.logs / f"{self.count}-{workflow}.jsonl"
        run = nox(
            "-s",
            "workflows",
            "--",
            workflow,
            "--repository",
            str(self.project),
            "--dask-gateway",
            str(self.dask_gateway),
            "--registry",
            self.registry.address,
            "--backends",
            "slurm",
            "--architectures",
            "amd64",
            "--offline",
            "--log",
            str(log),
            *args,
            env=self.env,
            timeout=1500,
        )
        return run, read_log(log) if log.exists() else []

    def digests(self, tag: str) -> dict[str, str | None]:
        return {
            name: self.registry.manifest_digest(f"{OWNER}/dask-gateway-ci-{name}", tag)
            for name in IMAGES
        }

    def tags(self) -> dict[str, list[str]]:
        return {name: self.registry.tags(f"{OWNER}/dask-gateway-ci-{name}") for name in IMAGES}


@pytest.fixture(scope="module")
def act(project, dask_gateway, registry, tmp_path_factory) -> Runner:
    return Runner(project, dask_gateway, registry, tmp_path_factory.mktemp("act-logs"))


def output_of(results: list[StepResult], job: str, step: str) -> str:
    found = [r for r in results if r.job.startswith(job) and r.step == step]
    assert found, f"no step {step!r} in job {job}: {[(r.job, r.step) for r in results]}"
    return "\n".join(found[-1].output)


def when(result: StepResult) -> datetime:
    return datetime.fromisoformat(result.time.replace("Z", "+00:00"))


def finished(results: list[StepResult], job: str, step: str) -> datetime:
    found = [r for r in results if r.job.startswith(job) and r.step == step]
    assert found and found[-1].result == "success", (job, step)
    return when(found[-1])


def config_layers(registry: LocalRegistry, name: str, tag: str) -> list[str]:
    found = registry.manifest(f"{OWNER}/dask-gateway-ci-{name}", tag)
    assert found is not None, (name, tag)
    return [layer["digest"] for layer in found[1]["layers"]]


def test_images_two_pushes_a_day_then_a_rerun_of_the_first(act, project):
    today = datetime.now(UTC).date().isoformat()
    first_commit = git(project, "rev-parse", "HEAD")

    # 1. The first push of the repository.
    run, results = act("images", "--before", NO_COMMIT)
    assert run.returncode == 0, run.output[-4000:]
    assert job_results(results) == {
        "plan": "success",
        "base (amd64)": "success",
        "backend (amd64, slurm)": "success",
        "publish": "success",
    }
    for line in ("[plan] Plan: ok", "[publish] Push latest: ok", "jobs:"):
        assert line in run.output
    # Which actions ran: offline, each pinned one is ours, and the output says why.
    workflow = (project / ".github/workflows/images.yaml").read_text()
    for action, ref in set(re.findall(r"uses: (actions/[\w-]+)@([0-9a-f]{12})", workflow)):
        assert re.search(rf"{action}@{ref}: our stand-in \(.+\)", run.output), action
    assert "1 passed" in output_of(results, "backend", "dask-gateway's slurm tests")
    # Nothing of publish ran before dask-gateway's tests had passed.
    tested = finished(results, "backend", "dask-gateway's slurm tests")
    publishing = [when(r) for r in results if r.job == "publish"]
    assert publishing and min(publishing) >= tested
    first = act.digests("latest")
    assert act.tags() == {name: sorted([today, "latest"]) for name in IMAGES}
    assert act.digests(today) == first
    labels = act.registry.labels(f"{OWNER}/dask-gateway-ci-base", today)
    assert labels["org.opencontainers.image.revision"] == first_commit

    # 2. A second push the same day that changes ci/base: DATE.1 names the new set.
    second_commit = commit(
        project, "ci/base/Dockerfile", "# a change to base\n", "2026-01-05T11:00:00Z"
    )
    run, results = act("images")
    assert run.returncode == 0, run.output[-4000:]
    assert f"dated tag of this run: {today}.1 (base, slurm)" in output_of(
        results, "publish", "Tag with the run's date"
    )
    second = act.digests("latest")
    assert act.tags() == {name: sorted([today, f"{today}.1", "latest"]) for name in IMAGES}
    assert act.digests(f"{today}.1") == second and act.digests(today) == first
    assert all(second[name] != first[name] for name in IMAGES)
    for name in IMAGES:
        labels = act.registry.labels(f"{OWNER}/dask-gateway-ci-{name}", f"{today}.1")
        assert labels["org.opencontainers.image.revision"] == second_commit, name
    # One set: slurm:DATE.1 is built on base:DATE.1.
    base_layers = config_layers(act.registry, "base", f"{today}.1")
    assert config_layers(act.registry, "slurm", f"{today}.1")[: len(base_layers)] == base_layers

    # 3. GitHub's "Re-run all jobs" of the first run: :latest must not move back.
    git(project, "checkout", "-q", first_commit)
    try:
        run, results = act("images", "--before", NO_COMMIT)
    finally:
        git(project, "checkout", "-q", "main")
    assert run.returncode != 0
    said = output_of(results, "publish", "Push latest")
    assert "holds a newer build" in said and "only moves forward" in said, said
    assert job_results(results)["publish"] == "failure"
    assert act.digests("latest") == second
    assert act.tags() == {name: sorted([today, f"{today}.1", "latest"]) for name in IMAGES}


def test_test_workflow_on_pull_requests_and_odd_pushes(act, project):
    if not act.digests("latest")["slurm"]:
        pytest.fail("needs the images published by the images workflow test before it")
    main = git(project, "rev-parse", "main")

    def pull_request(branch: str, path: str, line: str, date: str):
        """test.yaml as a pull request of one commit on main, `path` changed."""
        git(project, "checkout", "-q", "-b", branch, "main")
        commit(project, path, line, date)
        try:
            run, results = act(
                "test", "--event", "pull_request", "--base", "main", "--job", "backend"
            )
        finally:
            git(project, "checkout", "-q", "main")
        assert run.returncode == 0, run.output[-4000:]
        return output_of(results, "backend", "Pull slurm where it is current, else build it")

    # A pull request that changes ci/slurm: base pulled (current), slurm built.
    registry = act.registry.address
    pulled = pull_request(
        "slurm-change", "ci/slurm/Dockerfile", "# a change to slurm\n", "2026-01-06T10:00:00Z"
    )
    assert f"pulled the published {registry}/{OWNER}/dask-gateway-ci-base:latest" in pulled
    assert f"built {registry}/{OWNER}/dask-gateway-ci-slurm:latest" in pulled

    # A pull request that changes no image: only the backend's image is pulled.
    pulled = pull_request("docs-change", "README.md", "\nDocs.\n", "2026-01-06T11:00:00Z")
    assert f"pulled the published {registry}/{OWNER}/dask-gateway-ci-slurm:latest" in pulled
    assert "dask-gateway-ci-base:latest" not in pulled and "Step 1/" not in pulled

    # The first push of a repository (before = 000...), and a push after a
    # force-push (before = a commit this clone never had): nothing to compare.
    for before in (NO_COMMIT, "1234567" * 5 + "89abc"):
        run, results = act("test", "--event", "push", "--before", before, "--job", "backend")
        assert run.returncode == 0, (before, run.output[-4000:])
        assert job_results(results) == {"plan": "success", "backend (amd64, slurm)": "success"}
    assert git(project, "rev-parse", "main") == main


def test_an_unknown_workflow_is_one_line(act):
    run = nox("-s", "workflows", "--", "nosuch", env=act.env)
    assert run.returncode != 0 and "Traceback" not in run.output
    assert "no workflow 'nosuch'; choose from: images, test" in run.output
