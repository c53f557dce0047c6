"""push and tag-dated, against the real engine and a real local registry with auth."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from scripts import log, publish, state
from scripts import registry as registry_ops
from scripts.backends import Backend
from scripts.credentials import credentials
from scripts.distribution import RegistryAPI
from scripts.errors import StepFailed, UserError
from scripts.images import untag
from scripts.settings import load_settings
from scripts.steps import STEPS
from tests.nox_runner import ROOT, nox
from tests.registry import DenyingLookups, LocalRegistry, docker_client

IMAGE = "dask-gateway-ci-publishtest"
NAME = f"publishtest/{IMAGE}"  # repository path inside the registry
DAY = "2026-11-25"
USER = "publishtest"
CREDENTIAL_VARIABLES = (
    "DASK_GATEWAY_CI_REGISTRY_TOKEN",
    "DASK_GATEWAY_CI_REGISTRY_USER",
    "GHCR_TOKEN",
    "GHCR_USER",
    "GITHUB_TOKEN",
    "GITHUB_ACTOR",
    "GITHUB_ACTIONS",
)
PUSHED = re.compile(r"^pushed (?P<ref>\S+): (?P<digest>sha256:[0-9a-f]{64}) ", re.M)


# -- unit tests: no engine -----------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_generic_token_works_for_any_registry_and_is_censored(clean_env):
    token = f"publishtest-{uuid.uuid4().hex}"
    environ = {"DASK_GATEWAY_CI_REGISTRY_TOKEN": token, "DASK_GATEWAY_CI_REGISTRY_USER": "me"}
    creds = credentials("registry.example", environ)
    assert (creds.username, creds.source) == ("me", "DASK_GATEWAY_CI_REGISTRY_TOKEN")
    assert creds.auth_config() == {"username": "me", "password": token}
    assert token not in repr(creds)
    assert log.censor(f"x {token} y") == f"x {log.CENSORED} y"


def test_ghcr_variables_are_used_for_ghcr_only():
    token = f"publishtest-{uuid.uuid4().hex}"
    environ = {"GHCR_TOKEN": token, "GITHUB_ACTOR": "octocat"}
    assert credentials("ghcr.io", environ).username == "octocat"
    assert credentials("ghcr.io", {**environ, "GHCR_USER": "bot"}).username == "bot"
    assert credentials("127.0.0.1:5000", environ) is None  # never sent elsewhere
    github = {"GITHUB_TOKEN": token, "GITHUB_ACTOR": "octocat"}
    assert credentials("ghcr.io", github) is None  # outside GitHub Actions
    in_actions = credentials("ghcr.io", {**github, "GITHUB_ACTIONS": "true"})
    assert in_actions.source == "GITHUB_TOKEN"


def test_token_without_user_is_one_line_without_the_token():
    token = f"publishtest-{uuid.uuid4().hex}"
    with pytest.raises(UserError) as raised:
        credentials("r.example", {"DASK_GATEWAY_CI_REGISTRY_TOKEN": token})
    message = str(raised.value)
    assert "DASK_GATEWAY_CI_REGISTRY_USER" in message and "\n" not in message
    assert token not in message
    assert log.censor(token) == log.CENSORED


def test_dated_tag_spelling():
    assert publish.dated_tag(DAY, "") == DAY
    assert publish.dated_tag(DAY, "1") == f"{DAY}.1"
    assert publish.dated_tag(DAY, ".2") == f"{DAY}.2"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", publish.publication_day(None))
    for suffix in ("a b", "-x"):
        with pytest.raises(UserError):
            publish.dated_tag(DAY, suffix)
    for day in ("2026-13-01", "25.11.2026"):
        with pytest.raises(UserError, match="expected a date as YYYY-MM-DD"):
            publish.publication_day(day)


def test_a_date_more_than_a_day_ahead_needs_force_date():
    from datetime import date

    today = date(2026, 11, 25)
    assert publish.publication_day("2026-11-26", today=today) == "2026-11-26"  # time zones
    assert publish.publication_day("2020-01-01", today=today) == "2020-01-01"
    with pytest.raises(UserError) as raised:
        publish.publication_day("2099-01-01", today=today)
    assert "more than a day after today (2026-11-25, UTC)" in str(raised.value)
    assert "--force-date" in str(raised.value)
    assert publish.publication_day("2099-01-01", force=True, today=today) == "2099-01-01"


def test_push_refuses_dated_tags(tmp_path):
    backend = Backend(name="publishtest", folder=tmp_path, description="d", image=IMAGE)
    with pytest.raises(UserError, match="tag-dated-publishtest"):
        # refused before the engine is used
        publish.push_image(object(), load_settings(), backend, tags=[f"{DAY}.1"])


def test_retry_policy_from_environment():
    assert registry_ops.retry_policy(load_settings(environ={})) == (3, 1.0)
    environ = {registry_ops.RETRIES_VARIABLE: "1", registry_ops.BACKOFF_VARIABLE: "0.01"}
    assert registry_ops.retry_policy(load_settings(environ=environ)) == (1, 0.01)
    with pytest.raises(UserError):
        registry_ops.retry_policy(load_settings(environ={registry_ops.RETRIES_VARIABLE: "many"}))


def test_push_stream_reads_error_and_final_digest():
    stream = registry_ops.PushStream()
    stream.feed({"status": "Pushed", "progressDetail": {}, "id": "abc"})
    stream.feed({"progressDetail": {}, "aux": {"Tag": "latest", "Digest": "sha256:1", "Size": 9}})
    assert (stream.digest, stream.manifest_size, stream.error) == ("sha256:1", 9, None)
    # The containerd image store and Podman send no aux record: the status line has it.
    digest = "sha256:" + "7" * 64
    status_only = registry_ops.PushStream()
    status_only.feed({"status": "Pushed", "progressDetail": {}, "id": "abc"})
    status_only.feed({"status": f"latest: digest: {digest} size: 1234"})
    assert (status_only.digest, status_only.manifest_size) == (digest, 1234)
    failed = registry_ops.PushStream()
    failed.feed({"errorDetail": {"message": "denied: no"}, "error": "denied: no"})
    assert failed.error == "denied: no"


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ('Get "http://r/v2/": dial tcp r:5000: connect: connection refused', "Transient"),
        ("dial tcp: lookup r on 10.0.0.1:53: no such host", "Transient"),
        ("received unexpected HTTP status: 503 Service Unavailable", "Transient"),
        ("net/http: TLS handshake timeout", "Transient"),
        ("toomanyrequests: retry-after: 1s, allowed: 44000/minute", "Transient"),
        ("no basic auth credentials", "Unauthorized"),
        ("denied: requested access to the resource is denied", "Unauthorized"),
        ("unauthorized: authentication required", "Unauthorized"),
        ("manifest invalid: manifest invalid", "StepFailed"),
    ],
)
def test_push_errors_are_classified(message, kind):
    assert type(registry_ops.classify(message)).__name__ == kind


class _FlakyAPI:
    """A push that fails `failures` times as if the registry were down, then succeeds."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    def push(self, repository, tag, stream, decode, auth_config):
        self.calls += 1
        if self.calls <= self.failures:
            return iter([{"error": "dial tcp 127.0.0.1:1: connect: connection refused"}])
        aux = {"Tag": tag, "Digest": "sha256:" + "0" * 64, "Size": 500}
        return iter([{"status": "Pushed", "id": "abc"}, {"aux": aux}])


class _FakeClient:
    def __init__(self, api):
        self.api = api


def test_push_stream_errors_are_retried_with_backoff_then_reported(monkeypatch):
    monkeypatch.setenv(registry_ops.RETRIES_VARIABLE, "2")
    monkeypatch.setenv(registry_ops.BACKOFF_VARIABLE, "0")
    api = _FlakyAPI(failures=2)
    stream = registry_ops.push_tag(
        _FakeClient(api), "127.0.0.1:1/o/i", "latest", None, load_settings()
    )
    assert (api.calls, stream.digest) == (3, "sha256:" + "0" * 64)
    api = _FlakyAPI(failures=5)
    with pytest.raises(StepFailed, match="still failing after 3 attempts"):
        registry_ops.push_tag(_FakeClient(api), "127.0.0.1:1/o/i", "latest", None, load_settings())
    assert api.calls == 3


def test_options_for_publishing():
    push, _ = STEPS["push"].parse(["--dry-run", "--tag", "a", "--tag", "b"])
    assert (push.dry_run, push.allow_unverified, push.tags) == (True, False, ["a", "b"])
    dated, _ = STEPS["tag-dated"].parse(["--suffix", "auto", "--date", DAY, "--force-date"])
    assert (dated.suffix, dated.date, dated.force_date) == ("auto", DAY, True)


# -- against the engine and a local registry ----------------------------------------


@pytest.fixture(scope="module")
def engine_ok():
    docker_client()  # fails (CI=true) or skips the module's docker tests


@pytest.fixture
def registry(tmp_path):
    token = f"publishtest-token-{uuid.uuid4().hex}"
    server = LocalRegistry(tmp_path / "registry", USER, token).start()
    yield server
    server.stop()


@pytest.fixture
def env(clean_env, registry, tmp_path):
    """Point the project at the local registry; no credentials unless a test adds them."""
    monkeypatch = clean_env
    monkeypatch.setenv("DASK_GATEWAY_CI_REGISTRY", registry.address)
    monkeypatch.setenv("DASK_GATEWAY_CI_OWNER", "publishtest")
    monkeypatch.setenv("DASK_GATEWAY_CI_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # no stored logins
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv(registry_ops.RETRIES_VARIABLE, "2")
    monkeypatch.setenv(registry_ops.BACKOFF_VARIABLE, "0.05")
    return monkeypatch


@pytest.fixture
def login(env, registry):
    env.setenv("DASK_GATEWAY_CI_REGISTRY_USER", registry.user)
    env.setenv("DASK_GATEWAY_CI_REGISTRY_TOKEN", registry.token)


@pytest.fixture
def client(engine_ok, env):
    client = docker_client()  # after env: reads DOCKER_CONFIG now
    yield client
    client.close()


@pytest.fixture
def backend(tmp_path):
    return Backend(name="publishtest", folder=tmp_path, description="publish test", image=IMAGE)


@pytest.fixture
def build(client, tmp_path):
    """build(content) -> image ID tagged <registry>/publishtest/<IMAGE>:latest.

    FROM scratch with one small file: no base image, no network, unique content.
    Every image built is removed afterwards with all its tags.
    """
    made: list[str] = []
    reference = f"{os.environ['DASK_GATEWAY_CI_REGISTRY']}/{NAME}:latest"

    def build(content: str) -> str:
        context = tmp_path / f"context-{len(made)}"
        context.mkdir()
        (context / "Dockerfile").write_text("FROM scratch\nCOPY x /x\n")
        (context / "x").write_text(f"{content} {uuid.uuid4().hex}\n")
        image, _ = client.images.build(
            path=str(context), tag=reference, pull=False, rm=True, forcerm=True
        )
        made.append(image.id)
        return image.id

    yield build
    for image_id in made:
        untag(client, image_id)


def _push(client, backend, **options) -> None:
    publish.push_image(client, load_settings(), backend, **options)


def _dated(client, backend, **options) -> None:
    publish.tag_dated(client, load_settings(), [backend], **{"day": DAY, **options})


def _verified(image_id: str) -> str:
    state.record_verified(load_settings(), image_id, "publishtest", 1.0)
    return image_id


def _pushed_digest(output: str) -> str:
    found = PUSHED.findall(output)
    assert len(found) == 1, output
    return found[0][1]


docker = pytest.mark.docker


@docker
def test_push_without_credentials_fails_with_one_line(client, backend, build, registry, capfd):
    _verified(build("no credentials"))
    with pytest.raises(UserError) as raised:
        _push(client, backend)
    message = str(raised.value)
    assert "\n" not in message
    assert "DASK_GATEWAY_CI_REGISTRY_TOKEN" in message and "docker login" in message
    assert registry.repositories() == []


@docker
def test_push_then_already_present_then_extra_tag(
    client, backend, build, registry, login, capfd, tmp_path
):
    image = _verified(build("push"))
    _push(client, backend)
    out, err = capfd.readouterr()
    digest = _pushed_digest(err)
    assert registry.manifest_digest(NAME, "latest") == digest
    assert f"{registry.address}/{NAME}:latest" in err

    _push(client, backend)
    out2, err2 = capfd.readouterr()
    assert "already has this image" in err2 and not PUSHED.search(err2)
    assert registry.manifest_digest(NAME, "latest") == digest

    _push(client, backend, tags=["publishtest-extra"])
    out3, err3 = capfd.readouterr()
    assert registry.manifest_digest(NAME, "publishtest-extra") == _pushed_digest(err3) == digest
    assert client.images.get(f"{registry.address}/{NAME}:publishtest-extra").id == image

    rows = (tmp_path / "summary.md").read_text()
    assert "| pushed |" in rows and "| already present |" in rows and digest in rows
    everything = out + err + out2 + err2 + out3 + err3 + rows
    assert registry.token not in everything


@docker
def test_unverified_image_is_refused_unless_allowed(client, backend, build, registry, login, capfd):
    build("unverified")
    with pytest.raises(UserError) as raised:
        _push(client, backend)
    assert "verify-publishtest" in str(raised.value) and "--allow-unverified" in str(raised.value)
    assert registry.repositories() == []

    _push(client, backend, allow_unverified=True)
    _, err = capfd.readouterr()
    assert "warning:" in err and "--allow-unverified" in err
    assert registry.manifest_digest(NAME, "latest") == _pushed_digest(err)


@docker
def test_tag_dated_twice_the_same_day_is_a_no_op(client, backend, build, registry, login, capfd):
    image = _verified(build("dated"))
    _dated(client, backend)
    _, err = capfd.readouterr()
    digest = _pushed_digest(err)
    assert registry.manifest_digest(NAME, DAY) == digest
    assert registry.manifest_digest(NAME, "latest") is None  # tag-dated pushes only its tag
    assert client.images.get(f"{registry.address}/{NAME}:{DAY}").id == image

    _dated(client, backend)
    _, err = capfd.readouterr()
    assert "already has this image" in err and not PUSHED.search(err)
    assert registry.manifest_digest(NAME, DAY) == digest


@docker
def test_tag_dated_refuses_other_content_and_suffix_publishes_it(
    client, backend, build, registry, login, capfd
):
    first_image = _verified(build("first"))
    _dated(client, backend)
    first = registry.manifest_digest(NAME, DAY)
    _verified(build("second"))  # now :latest here is other content
    with pytest.raises(UserError) as raised:
        _dated(client, backend)
    message = str(raised.value)
    assert "\n" not in message and "never replaced" in message
    assert f"other content (image {first_image[:19]} here, {first})" in message
    assert f"--suffix 1 to publish this image as {DAY}.1" in message
    assert registry.manifest_digest(NAME, DAY) == first

    capfd.readouterr()
    _dated(client, backend, suffix="1")
    _, err = capfd.readouterr()
    second = registry.manifest_digest(NAME, f"{DAY}.1")
    assert second == _pushed_digest(err) != first
    assert registry.manifest_digest(NAME, DAY) == first


@docker
def test_dry_run_touches_nothing(client, backend, build, registry, login, capfd):
    image = _verified(build("dry run"))
    tags_before = sorted(client.images.get(image).tags)
    requests_before = registry.requests_seen()

    _push(client, backend, dry_run=True, tags=["extra"])
    _dated(client, backend, dry_run=True, suffix="3")
    _, err = capfd.readouterr()

    assert f"would push image {image} (verified" in err
    assert f"as {registry.address}/{NAME}:latest, replacing" in err
    assert f"as {registry.address}/{NAME}:extra, replacing" in err
    assert f"as {registry.address}/{NAME}:{DAY}.3, never replacing" in err
    assert registry.requests_seen() == requests_before  # the registry was not contacted
    assert sorted(client.images.get(image).tags) == tags_before
    assert registry.repositories() == []
    assert registry.token not in err


@docker
def test_rejected_token_is_one_line_and_never_printed(client, backend, build, registry, env, capfd):
    wrong = f"publishtest-wrong-{uuid.uuid4().hex}"
    env.setenv("DASK_GATEWAY_CI_REGISTRY_USER", registry.user)
    env.setenv("DASK_GATEWAY_CI_REGISTRY_TOKEN", wrong)
    _verified(build("wrong token"))
    with pytest.raises(UserError) as raised:
        _push(client, backend)
    message = str(raised.value)
    out, err = capfd.readouterr()
    assert "\n" not in message and "DASK_GATEWAY_CI_REGISTRY_TOKEN" in message
    assert wrong not in message + out + err


@docker
def test_registry_gone_fails_after_bounded_retries(client, backend, build, registry, login, capfd):
    _verified(build("gone"))
    registry.stop()
    started = time.monotonic()
    with pytest.raises(StepFailed) as raised:
        _push(client, backend)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert "still failing after 3 attempts" in message and "\n" not in message
    assert elapsed < 20
    _, err = capfd.readouterr()
    assert "retry 1/2" in err and "retry 2/2" in err
    assert registry.token not in message + err


@docker
def test_missing_image_names_the_build_session(client, backend, registry, login):
    with pytest.raises(UserError, match=r"run `nox -s build-publishtest`"):
        _push(client, backend)


@docker
def test_nox_push_dry_run_end_to_end(client, build, registry, login, tmp_path):
    """`nox -s push-base -- --dry-run` on a stand-in image tagged as the base backend's."""
    # The fixtures put the registry, owner and state dir in os.environ.
    environment = {**os.environ, "GITHUB_STEP_SUMMARY": ""}
    image = _verified(build("nox"))
    base = f"{registry.address}/publishtest/dask-gateway-ci-base:latest"
    client.api.tag(image, base.rsplit(":", 1)[0], tag="latest")
    result = nox("-s", "push-base", "--", "--dry-run", env=environment)
    output = result.output
    assert result.returncode == 0, output
    assert f"dry run: would push image {image} (verified" in output and f"as {base}," in output
    assert registry.token not in output
    assert registry.repositories() == []

    client.api.remove_image(base)  # then: the one-line "build it first" error
    result = nox("-s", "push-base", "--", "--dry-run", env=environment)
    output = result.output
    assert result.returncode != 0
    assert "run `nox -s build-base`" in output and "Traceback" not in output


@docker
def test_suffix_auto_takes_the_next_free_dated_tag(client, backend, build, registry, login, capfd):
    """What CI does: a second images run on the same day publishes DAY.1, then DAY.2."""
    _verified(build("morning"))
    _dated(client, backend, suffix="auto")
    first = registry.manifest_digest(NAME, DAY)
    _verified(build("noon"))
    _dated(client, backend, suffix="auto")
    _, err = capfd.readouterr()
    assert f"{registry.address}/{NAME}:{DAY} holds another image" in err
    second = registry.manifest_digest(NAME, f"{DAY}.1")
    assert second == _pushed_digest(err.split("holds another image")[1]) != first
    _dated(client, backend, suffix="auto")  # the same image again: nothing to push
    _, err = capfd.readouterr()
    assert "already has this image" in err and not PUSHED.search(err)
    assert registry.manifest_digest(NAME, f"{DAY}.2") is None
    assert registry.manifest_digest(NAME, DAY) == first


@docker
def test_a_denied_lookup_lets_latest_be_pushed_but_no_dated_tag(
    client, backend, build, registry, login, capfd
):
    """ghcr.io denies look-ups of a package the token cannot read yet.

    :latest may be pushed over what it cannot see (a warning says so); a
    dated tag that cannot be proven free is never written. The containerd
    image store asks for the tag's manifest itself before it pushes (its
    pusher accepts only 200 or 404 there), so on that store the push fails,
    in one line naming the 403.
    """
    from scripts.engine import CONTAINERD, image_store

    image = _verified(build("denied lookup"))
    containerd = image_store(client) == CONTAINERD
    with DenyingLookups(registry) as proxy:
        os.environ["DASK_GATEWAY_CI_REGISTRY"] = proxy.address
        reference = f"{proxy.address}/{NAME}:latest"
        client.api.tag(image, reference.rsplit(":", 1)[0], tag="latest")
        try:
            if containerd:
                with pytest.raises(UserError) as refused:
                    _push(client, backend)
            else:
                _push(client, backend)
            _, pushed = capfd.readouterr()
            with pytest.raises(UserError) as raised:
                _dated(client, backend, suffix="auto")
        finally:
            os.environ["DASK_GATEWAY_CI_REGISTRY"] = registry.address
            client.api.remove_image(reference)
            with contextlib.suppress(Exception):
                client.api.remove_image(f"{proxy.address}/{NAME}:{DAY}")
    assert proxy.denied >= 2
    assert f"cannot read what {reference} holds; replacing it" in pushed
    if containerd:
        said = str(refused.value)
        assert "403" in said and "\n" not in said and registry.token not in said
        assert registry.manifest_digest(NAME, "latest") is None
    else:
        assert registry.manifest_digest(NAME, "latest") == _pushed_digest(pushed)
    message = str(raised.value)
    assert f"cannot tell whether {proxy.address}/{NAME}:{DAY} is free" in message
    assert "DENIED" in message and "\n" not in message
    assert registry.manifest_digest(NAME, DAY) is None


# -- reuse of published images in pull requests, and images carried between jobs ----------


def _tiny_project(root: Path, client) -> Path:
    """This checkout's tooling with a ci/ of two tiny backends, in a git repository of its own.

    `tiny` is built FROM a local scratch image, `leaf` FROM `tiny`: the same
    mechanism as base and slurm, with images small enough to push in a second.
    """
    import shutil
    import subprocess

    project = root / "project"
    project.mkdir()
    for name in ("noxfile.py", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "scripts", project / "scripts", ignore=shutil.ignore_patterns("__pycache__")
    )
    seed = root / "seed"
    seed.mkdir()
    (seed / "Dockerfile").write_text("FROM scratch\nCOPY seed /seed\n")
    (seed / "seed").write_text(uuid.uuid4().hex)
    client.images.build(path=str(seed), tag=f"{SEED}:1", rm=True)
    for name, parent in (("tiny", None), ("leaf", "tiny")):
        folder = project / "ci" / name
        (folder / "files" / "etc").mkdir(parents=True)
        (folder / "files" / "etc" / f"{name}.conf").write_text(f"{name}\n")
        (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY files/ /\n")
        origin = f'parent = "{parent}"' if parent else f'from = "{SEED}:1"'
        (folder / "backend.toml").write_text(
            f'description = "{name}"\nimage = "publishtest-{name}"\nkind = "image"\n{origin}\n'
        )
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "tiny"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *command],
            cwd=project,
            check=True,
        )
    return project


SEED = "dask-gateway-ci-publishtest-seed"


def _nox_in(project: Path, *args: str):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "nox", *args],
        cwd=project,
        env={**os.environ, "NOX_SCRIPT_MODE": "none", "GITHUB_STEP_SUMMARY": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    print(f"$ nox {' '.join(args)} -> {done.returncode}\n{done.stdout[-4000:]}")
    return done


def _git(project: Path, *args: str) -> str:
    import subprocess

    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=project,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _commit(project: Path, path: str, text: str) -> str:
    (project / path).write_text(text)
    _git(project, "commit", "-qam", f"edit {path}")
    return _git(project, "rev-parse", "HEAD")


@pytest.fixture
def tiny(client, registry, login, tmp_path):
    """A tiny project (see _tiny_project) publishing to the test registry; cleaned up after."""
    project = _tiny_project(tmp_path, client)
    repository = f"{registry.address}/publishtest"
    yield project, repository
    # Every image of the two (tagged, or untagged by a later build), children first.
    for title in ("publishtest-leaf", "publishtest-tiny"):
        label = f"org.opencontainers.image.title={title}"
        for image in client.images.list(filters={"label": label}):
            untag(client, image.id)
    untag(client, f"{SEED}:1")


@docker
def test_a_pull_request_pulls_only_current_images_of_ours(client, registry, tiny):
    project, repository = tiny
    leaf, small = f"{repository}/publishtest-leaf:latest", f"{repository}/publishtest-tiny:latest"
    assert _nox_in(project, "-s", "build-leaf").returncode == 0
    published = {ref: client.images.get(ref).id for ref in (small, leaf)}
    pushed = _nox_in(project, "-s", "push", "--", "tiny", "leaf", "--allow-unverified")
    assert pushed.returncode == 0
    for reference in published:
        client.images.remove(reference)

    # Unchanged: the leaf alone is pulled; it holds its parent's layers already.
    unchanged = _nox_in(project, "-s", "build-leaf", "--", "--pull-if-current")
    assert unchanged.returncode == 0
    assert f"pulled the published {leaf}" in unchanged.stdout
    assert f"pulled the published {small}" not in unchanged.stdout
    assert client.images.get(leaf).id == published[leaf]
    assert "Step 1/" not in unchanged.stdout  # nothing was built
    client.images.remove(leaf)

    # A change to the leaf's folder, not committed yet: its parent pulled, the leaf built.
    (project / "ci" / "leaf" / "files" / "etc" / "leaf.conf").write_text("changed\n")
    changed = _nox_in(project, "-s", "build-leaf", "--", "--pull-if-current")
    assert changed.returncode == 0
    assert "its ci/ folders changed since; building it" in changed.stdout
    assert f"pulled the published {small}" in changed.stdout
    assert f"built {leaf}" in changed.stdout
    assert client.images.get(leaf).id != published[leaf]


@docker
def test_a_published_image_not_ours_or_not_in_this_history_is_built(client, registry, tiny):
    project, repository = tiny
    small = f"{repository}/publishtest-tiny:latest"
    # Someone else's image under our name (upstream's hand-built images, say).
    client.api.tag(f"{SEED}:1", small.rsplit(":", 1)[0], tag="latest")
    assert _nox_in(project, "-s", "push-tiny", "--", "--allow-unverified").returncode == 0
    client.images.remove(small)
    foreign = _nox_in(project, "-s", "build-tiny", "--", "--pull-if-current")
    assert foreign.returncode == 0
    assert f"{small} is not an image of this project" in foreign.stdout
    assert f"built {small}" in foreign.stdout

    # Ours, but from a history this clone does not have (a force-push, another fork).
    assert _nox_in(project, "-s", "push-tiny", "--", "--allow-unverified").returncode == 0
    _git(project, "checkout", "-q", "--orphan", "rewritten")
    _git(project, "commit", "-qm", "rewritten history")
    _git(project, "branch", "-D", "master" if "master" in _git(project, "branch") else "main")
    _git(project, "reflog", "expire", "--expire=now", "--all")
    _git(project, "gc", "-q", "--prune=now")
    client.images.remove(small)
    rewritten = _nox_in(project, "-s", "build-tiny", "--", "--pull-if-current")
    assert rewritten.returncode == 0
    assert "which this clone does not have; building it" in rewritten.stdout


@docker
def test_latest_only_moves_forward(client, registry, tiny):
    """Re-running an old images run must not move :latest back to its older build."""
    project, repository = tiny
    small = f"{repository}/publishtest-tiny:latest"
    old = _git(project, "rev-parse", "HEAD")
    new = _commit(project, "ci/tiny/files/etc/tiny.conf", "newer\n")
    assert _nox_in(project, "-s", "build-tiny").returncode == 0
    assert _nox_in(project, "-s", "push-tiny", "--", "--allow-unverified").returncode == 0
    newest = registry.manifest_digest("publishtest/publishtest-tiny", "latest")

    _git(project, "checkout", "-q", old)
    assert _nox_in(project, "-s", "build-tiny").returncode == 0
    back = _nox_in(project, "-s", "push-tiny", "--", "--allow-unverified")
    assert back.returncode != 0
    assert f"{small} holds a newer build (revision {new[:12]}; this image is of {old[:12]})" in (
        back.stdout
    )
    assert "only moves forward, nothing was pushed" in back.stdout
    assert registry.manifest_digest("publishtest/publishtest-tiny", "latest") == newest

    _git(project, "checkout", "-q", new)
    forward = _commit(project, "ci/tiny/files/etc/tiny.conf", "newest\n")
    assert _nox_in(project, "-s", "build-tiny").returncode == 0
    onward = _nox_in(project, "-s", "push-tiny", "--", "--allow-unverified")
    assert onward.returncode == 0, onward.stdout
    labels = client.images.get(small).labels
    assert labels["org.opencontainers.image.revision"] == forward
    assert registry.manifest_digest("publishtest/publishtest-tiny", "latest") != newest


@docker
def test_one_dated_tag_names_one_consistent_set(client, registry, tiny):
    """A same-day rerun where only one image had that day's tag moves the whole set to .1."""
    project, repository = tiny
    assert _nox_in(project, "-s", "build-leaf").returncode == 0
    first = _nox_in(project, "-s", "tag-dated", "--", "tiny", "--date", DAY, "--allow-unverified")
    assert first.returncode == 0
    _commit(project, "ci/tiny/files/etc/tiny.conf", "second run\n")
    assert _nox_in(project, "-s", "build-leaf").returncode == 0
    both = _nox_in(
        project,
        "-s",
        "tag-dated",
        "--",
        "tiny",
        "leaf",
        "--date",
        DAY,
        "--suffix",
        "auto",
        "--allow-unverified",
    )
    assert both.returncode == 0, both.stdout
    assert f"dated tag of this run: {DAY}.1 (tiny, leaf)" in both.stdout
    api = RegistryAPI(registry.address, credentials(registry.address, os.environ))
    for name in ("tiny", "leaf"):
        found = api.lookup(f"publishtest/publishtest-{name}", f"{DAY}.1")
        local = client.images.get(f"{repository}/publishtest-{name}:latest")
        # This image: its ID (config or manifest digest, by engine) or what it was pushed as.
        mine = {local.id, *(d.partition("@")[2] for d in local.attrs["RepoDigests"] or [])}
        assert found.holds_any(mine), name
    # leaf's DAY was free, but DAY is not a set with tiny's: it stays unused.
    assert registry.manifest_digest("publishtest/publishtest-leaf", DAY) is None


@docker
def test_publishing_leaves_out_a_failed_non_blocking_image(client, registry, tiny, tmp_path):
    """images.yaml's publish job: a folder of archives; a missing advisory one is a warning."""
    project, _ = tiny
    leaf_toml = project / "ci" / "leaf" / "backend.toml"
    leaf_toml.write_text(leaf_toml.read_text() + "blocking = false\n")
    archives = tmp_path / "archives"
    archives.mkdir()
    built = _nox_in(project, "-s", "build-tiny", "--", "--save", str(archives / "tiny.tar"))
    assert built.returncode == 0
    pushed = _nox_in(
        project, "-s", "push", "--", "tiny", "leaf", "--load", str(archives), "--allow-unverified"
    )
    assert pushed.returncode == 0, pushed.stdout
    assert "leaf is not published: no" in pushed.stdout
    assert registry.manifest_digest("publishtest/publishtest-tiny", "latest")
    assert registry.manifest_digest("publishtest/publishtest-leaf", "latest") is None

    leaf_toml.write_text(leaf_toml.read_text().replace("blocking = false\n", ""))
    refused = _nox_in(
        project, "-s", "push", "--", "tiny", "leaf", "--load", str(archives), "--allow-unverified"
    )
    assert refused.returncode != 0
    assert f"--load {archives}: no leaf.tar there for leaf" in refused.stdout


@docker
def test_push_loads_the_image_another_job_built_and_verified(client, registry, login, tmp_path):
    """images.yaml: a job builds, verifies and saves; the publish job loads and pushes."""
    project = _tiny_project(tmp_path, client)
    reference = f"{registry.address}/publishtest/publishtest-tiny:latest"
    archive = tmp_path / "tiny.tar"
    try:
        built = _nox_in(project, "-s", "build-tiny", "--", "--save", str(archive))
        assert built.returncode == 0
        image = client.images.get(reference).id
        state.record_verified(
            load_settings(), image, "tiny", 1.0
        )  # as the verifying job's state dir carries it
        client.images.remove(reference)
        pushed = _nox_in(project, "-s", "push-tiny", "--", "--load", str(archive))
        assert pushed.returncode == 0
        assert f"loaded {reference} from {archive}" in pushed.stdout
        assert registry.manifest_digest("publishtest/publishtest-tiny", "latest")
        wrong = _nox_in(project, "-s", "push-leaf", "--", "--load", str(archive))
        assert wrong.returncode != 0
        assert f"holds {reference}, not" in wrong.stdout
    finally:
        with contextlib.suppress(Exception):
            client.images.remove(reference, force=True)
        with contextlib.suppress(Exception):
            client.images.remove(f"{SEED}:1", force=True)
