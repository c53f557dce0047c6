"""The nox sessions on a real Docker engine: listing, errors, base image."""

from __future__ import annotations

import re

import pytest

from scripts import backends
from scripts.backends import IMAGE, load_all
from scripts.cli import PROJECT
from scripts.images import untag
from scripts.labels import LABEL_PREFIX
from scripts.settings import load_settings
from scripts.steps import STEPS
from tests.nox_runner import TEST_OWNER, nox, nox_env, our_containers

ALL = load_all()
BACKENDS = tuple(ALL)
SERVICES = tuple(name for name, backend in ALL.items() if backend.runs_services)
IMAGE_STEPS = tuple(name for name, step in STEPS.items() if step.scope == IMAGE)
CONTAINER_STEPS = tuple(n for n, step in STEPS.items() if step.scope == backends.SERVICES)
PROJECT_STEPS = tuple(name for name, step in STEPS.items() if step.scope == PROJECT)


@pytest.fixture
def env(tmp_path):
    return nox_env(tmp_path / "state")


def listed_sessions(env) -> dict[str, str]:
    run = nox("-l", env=env)
    assert run.returncode == 0
    sessions = {}
    for line in run.lines:
        match = re.match(r"^[-*] (\S+)(?: \[[^]]*\])? -> (.+)$", line)
        if match:
            sessions[match.group(1)] = match.group(2)
    return sessions


def test_every_step_and_backend_is_listed_with_a_description(env):
    sessions = listed_sessions(env)
    expected = {f"{s}-{b}" for s in IMAGE_STEPS for b in BACKENDS}
    expected |= {f"{s}-{b}" for s in CONTAINER_STEPS for b in SERVICES}
    assert len(expected) == len(IMAGE_STEPS) * len(BACKENDS) + len(CONTAINER_STEPS) * len(SERVICES)
    assert expected <= set(sessions)
    assert {*IMAGE_STEPS, *CONTAINER_STEPS, *PROJECT_STEPS} <= set(sessions)
    assert not {f"{s}-base" for s in CONTAINER_STEPS} & set(sessions)
    # A project step takes no backend: it has no backend's session.
    assert not {f"{s}-{b}" for s in PROJECT_STEPS for b in BACKENDS} & set(sessions)
    assert all(description.strip() for description in sessions.values())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["-s", "test", "--", "nosuch"],
            f"unknown backend 'nosuch'; choose from: {', '.join(SERVICES)}",
        ),
        (["-s", "build", "--", "nosuch"], f"unknown backend 'nosuch'; choose from: {BACKENDS[0]}"),
        (["-s", "start", "--", "base"], "'start' does not apply to 'base'; choose from: "),
        (["-s", "verify"], f"'verify' needs a backend: nox -s verify -- <{'|'.join(BACKENDS)}>"),
        (["-s", "build-base", "--", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_user_mistakes_are_one_line_without_traceback(engine, env, args, expected):
    before = our_containers(engine)
    run = nox(*args, env=env)
    assert run.returncode != 0
    assert "Traceback" not in run.output
    errors = [line for line in run.lines if "aborted:" in line]
    assert len(errors) == 1, run.output
    assert expected in errors[0]
    assert our_containers(engine) == before


def test_unreachable_engine_is_one_line_saying_how_to_start_it(env):
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    run = nox("-s", "verify-base", env=env)
    assert run.returncode != 0
    assert "Traceback" not in run.output
    (line,) = [line for line in run.lines if "aborted:" in line]
    assert "Docker engine not reachable at unix:///nonexistent/docker.sock" in line
    assert "dockerd" in line


@pytest.mark.docker
def test_build_and_verify_base_from_a_clean_state_then_from_cache(engine, env):
    settings = load_settings(environ=env)
    base = ALL["base"]
    reference = settings.reference(base)
    assert TEST_OWNER in reference
    # Untag, keeping the build cache (children built on it keep its layers too):
    # the session must create it, from cache.
    untag(engine, reference)
    assert not engine.images.list(name=reference)

    first = nox("-s", "build-base", "verify-base", env=env)
    assert first.returncode == 0, first.output
    assert f"verified {reference}" in first.output
    image = engine.images.get(reference)
    labels = image.labels
    for key in ("source", "revision", "created", "version", "url"):
        assert labels.get(f"{LABEL_PREFIX}.{key}"), key
    assert labels[f"{LABEL_PREFIX}.url"].endswith("/ci/base")

    second = nox("-s", "build-base", env=env)
    assert second.returncode == 0
    assert engine.images.get(reference).id == image.id
    (summary,) = [line for line in second.lines if line.startswith(f"built {reference}")]
    cached, total = map(int, re.search(r"\((\d+)/(\d+) steps from cache\)", summary).groups())
    # Every step but FROM/ARG lines (which the builder does not cache-report) hit.
    assert cached >= total - 3, summary


@pytest.mark.docker
def test_build_tag_builds_every_image_parents_first(env):
    run = nox("-l", "-t", "build", env=env)
    order = [line.split()[1] for line in run.lines if line.startswith("* ")]
    assert order[0] == "build-base"
    assert set(order) == {f"build-{b}" for b in BACKENDS}


@pytest.mark.docker
def test_base_travels_as_a_file_between_jobs(engine, env, tmp_path):
    archive = tmp_path / "base.tar"
    saved = nox("-s", "build-base", "--", "--save", str(archive), env=env)
    assert saved.returncode == 0, saved.output
    assert archive.stat().st_size > 0
    built = nox("-s", "build-slurm", "--", "--load-parent", str(archive), env=env)
    assert built.returncode == 0, built.output
    assert "loaded " in built.output
    assert "using local " in built.output
    assert "build ghcr.io" not in built.output.split("using local")[0]  # base not rebuilt

    missing = nox("-s", "build-slurm", "--", "--load-parent", str(tmp_path / "no.tar"), env=env)
    assert missing.returncode != 0
    assert "cannot read image archive" in missing.output
