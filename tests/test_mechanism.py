"""Unit tests of the helpers: naming, labels, argument parsing, trust, streams."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from scripts import backends, config, containers, engine, images, log, steps, trust
from scripts.errors import EngineUnavailable, StepFailed, UserError

ALL = backends.load_all()


# -- session arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "posargs", "fixed", "names", "rest"),
    [
        ("build", ["hadoop", "pbs"], None, ["hadoop", "pbs"], []),
        ("build", ["slurm", "--no-cache"], None, ["slurm"], ["--no-cache"]),
        ("test", ["slurm", "-k", "jobs"], None, ["slurm"], ["-k", "jobs"]),
        ("test", ["slurm", "tests/x.py"], None, ["slurm"], ["tests/x.py"]),
        ("test", ["-k", "jobs"], "slurm", ["slurm"], ["-k", "jobs"]),
        ("start", ["--source", "/src"], "slurm", ["slurm"], ["--source", "/src"]),
    ],
)
def test_split_posargs(step, posargs, fixed, names, rest):
    assert steps.split_posargs(step, posargs, fixed) == (names, rest)


def test_unknown_backend_names_the_choices():
    with pytest.raises(UserError) as error:
        backends.select(ALL, ["nosuch"], "test")
    assert str(error.value) == "unknown backend 'nosuch'; choose from: hadoop, pbs, slurm"


def test_step_that_does_not_apply():
    with pytest.raises(UserError) as error:
        backends.select(ALL, ["base"], "start")
    assert "'start' does not apply to 'base'" in str(error.value)
    assert "choose from: hadoop, pbs, slurm" in str(error.value)


def test_missing_backend_says_how():
    with pytest.raises(UserError, match=r"nox -s verify -- <base\|hadoop\|pbs\|slurm>"):
        backends.select(ALL, [], "verify")


def test_bad_option_is_one_line_not_a_usage_dump():
    with pytest.raises(UserError) as error:
        steps.option_parser("build").parse_args(["--frobnicate"])
    assert "\n" not in str(error.value)
    assert "--frobnicate" in str(error.value)


def test_build_arg_needs_key_value():
    with pytest.raises(UserError, match="KEY=VALUE"):
        steps._key_value("NOEQUALS")
    assert steps._key_value("A=b=c") == ("A", "b=c")


def test_source_must_be_a_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("DASK_GATEWAY_SOURCE", raising=False)
    assert steps._source_dir(None) is None
    with pytest.raises(UserError, match="not a directory"):
        steps._source_dir(str(tmp_path / "missing"))
    monkeypatch.setenv("DASK_GATEWAY_SOURCE", str(tmp_path))
    assert steps._source_dir(None) == tmp_path.resolve()


def test_every_step_has_a_function_and_each_backend_its_steps():
    assert set(steps.STEP_FUNCTIONS) == set(backends.STEPS)
    assert ALL["base"].steps() == backends.IMAGE_STEPS
    for name in ("hadoop", "pbs", "slurm"):
        assert ALL[name].steps() == backends.STEPS


# -- naming and labels -------------------------------------------------------------


def test_default_image_names():
    settings = config.load_settings(environ={})
    assert settings.reference(ALL["slurm"]) == "ghcr.io/dask/dask-gateway-ci-slurm:latest"


def test_registry_and_owner_from_environment():
    settings = config.load_settings(
        environ={
            "DASK_GATEWAY_CI_REGISTRY": "registry.example:5000",
            "DASK_GATEWAY_CI_OWNER": "My-Fork",
        }
    )
    assert settings.reference(ALL["pbs"], "2026-11-25") == (
        "registry.example:5000/my-fork/dask-gateway-ci-pbs:2026-11-25"
    )


def test_registry_and_owner_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dask-gateway-ci]\nregistry = "quay.io"\nowner = "someone"\n'
    )
    settings = config.load_settings(root=tmp_path, environ={})
    assert settings.repository(ALL["base"]) == "quay.io/someone/dask-gateway-ci-base"


@pytest.mark.parametrize(
    ("remote", "url"),
    [
        ("git@github.com:dask/dask-gateway-ci.git", "https://github.com/dask/dask-gateway-ci"),
        ("https://x-access-token:SECRET@github.com/o/r.git", "https://github.com/o/r"),
    ],
)
def test_remote_urls_become_https_without_credentials(remote, url):
    assert config.https_url(remote) == url


def test_oci_labels():
    prov = config.Provenance(
        revision="0123456789abcdef0123456789abcdef01234567",
        committed=datetime(2026, 11, 25, 8, 30, tzinfo=UTC),
        source="https://github.com/dask/dask-gateway-ci",
    )
    labels = config.oci_labels(ALL["slurm"], prov)
    prefix = "org.opencontainers.image"
    assert labels[f"{prefix}.source"] == prov.source
    assert labels[f"{prefix}.revision"] == prov.revision
    assert labels[f"{prefix}.created"] == "2026-11-25T08:30:00Z"
    assert labels[f"{prefix}.version"] == "2026.11.25+g0123456789ab"
    assert labels[f"{prefix}.url"] == f"{prov.source}/tree/{prov.revision}/ci/slurm"


def test_provenance_is_the_last_commit_of_the_image_folders(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "Dockerfile").write_text("FROM x\n")
    git("add", ".")
    git("commit", "-qm", "image")
    first = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / "README").write_text("elsewhere\n")
    git("add", ".")
    git("commit", "-qm", "elsewhere")
    settings = config.Settings()
    prov = config.provenance(settings, [tmp_path / "image"], root=tmp_path)
    # A commit outside the image does not change its labels, so not its ID.
    assert prov.revision == first
    assert prov.source == settings.source


# -- trust forwarding --------------------------------------------------------------


def test_host_ca_bundle_and_proxies_are_forwarded(tmp_path):
    bundle = tmp_path / "corporate-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    volumes, env = trust.forwarded(
        {
            "SSL_CERT_FILE": str(bundle),
            "HTTPS_PROXY": "http://proxy.example:3128",
            "NO_PROXY": "localhost",
            "PIP_INDEX_URL": "https://mirror.example/simple",
            "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple",
            "UNRELATED": "x",
        }
    )
    assert volumes == {str(bundle.resolve()): {"bind": trust.CONTAINER_CA_BUNDLE, "mode": "ro"}}
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE"):
        assert env[name] == trust.CONTAINER_CA_BUNDLE
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"
    assert env["PIP_INDEX_URL"] == "https://mirror.example/simple"
    assert "PIP_EXTRA_INDEX_URL" not in env  # a host-only file: index
    assert "UNRELATED" not in env


def test_ca_bundle_can_be_chosen_or_disabled(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    assert trust.host_ca_bundle({"DASK_GATEWAY_CI_CA_BUNDLE": str(bundle)}) == bundle
    volumes, env = trust.forwarded({"DASK_GATEWAY_CI_CA_BUNDLE": ""})
    assert volumes == {}
    assert "PIP_CERT" not in env


# -- build stream ------------------------------------------------------------------


def test_build_stream_reports_the_failing_step(capsys):
    stream = images.BuildStream()
    for entry in [
        {"stream": "Step 1/3 : FROM base\n"},
        {"stream": " ---> Using cache\n"},
        {"stream": "Step 2/3 : RUN false\n"},
        {"stream": " ---> Running in abc\n"},
        {
            "error": "The command '/bin/sh -c false' returned a non-zero code: 1",
            "errorDetail": {"code": 1, "message": "..."},
        },
    ]:
        stream.feed(entry)
    assert stream.step == "Step 2/3 : RUN false"
    assert stream.error.endswith("non-zero code: 1")
    assert stream.cached_steps == 1
    assert "Step 2/3 : RUN false" in capsys.readouterr().out


def test_build_stream_records_the_image_id():
    stream = images.BuildStream()
    stream.feed({"aux": {"ID": "sha256:feed"}})
    stream.feed({"stream": "Successfully built feed\n"})
    assert stream.image_id == "sha256:feed"
    assert stream.error is None


class _FakeAPI:
    def __init__(self, entries):
        self.entries = entries
        self.kwargs = None

    def build(self, **kwargs):
        self.kwargs = kwargs
        return iter(self.entries)


class _FakeClient:
    def __init__(self, entries):
        self.api = _FakeAPI(entries)


def test_failed_build_is_one_line_naming_the_step():
    client = _FakeClient(
        [
            {"stream": "Step 4/9 : RUN apt-get install nosuchpackage\n"},
            {
                "error": "The command '/bin/sh -c apt-get install nosuchpackage' returned a "
                "non-zero code: 100"
            },
        ]
    )
    with pytest.raises(StepFailed) as error:
        images.build_one(client, config.Settings(), ALL["slurm"], parent_id="sha256:base")
    message = str(error.value)
    assert "\n" not in message
    assert "failed at Step 4/9 : RUN apt-get install nosuchpackage" in message
    assert message.endswith("It returned a non-zero code: 100")


def test_build_passes_the_parent_by_id_and_never_pulls():
    client = _FakeClient([{"aux": {"ID": "sha256:child"}}])
    image = images.build_one(
        client,
        config.Settings(),
        ALL["slurm"],
        parent_id="sha256:parent",
        build_args={"EXTRA": "1"},
    )
    assert image == "sha256:child"
    kwargs = client.api.kwargs
    assert kwargs["buildargs"]["BASE_IMAGE"] == "sha256:parent"
    assert kwargs["buildargs"]["EXTRA"] == "1"
    assert kwargs["pull"] is False
    assert kwargs["tag"] == "ghcr.io/dask/dask-gateway-ci-slurm:latest"
    assert kwargs["labels"]["org.opencontainers.image.title"] == "dask-gateway-ci-slurm"
    assert Path(kwargs["path"]) == ALL["slurm"].folder


# -- engine, logs --------------------------------------------------------------------


def test_unreachable_engine_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(EngineUnavailable) as error:
        engine.connect(timeout=5)
    message = str(error.value)
    assert "\n" not in message
    assert "unix:///nonexistent/docker.sock" in message
    assert "dockerd" in message


def test_secrets_are_censored(capsys):
    log.add_secret("hunter2-token")
    log.info("login with hunter2-token failed")
    log.write("echo hunter2-token\n")
    captured = capsys.readouterr()
    assert "hunter2-token" not in captured.err + captured.out
    assert log.CENSORED in captured.err


def test_checks_match_exit_code_and_output():
    check = backends.Check(name="x", command=("true",), expect=r"^is UP$")
    assert check.matches(0, "Slurmctld(primary) at slurm\nis UP\n")
    assert not check.matches(1, "is UP")
    assert not check.matches(0, "is DOWN")


def test_throwaway_names_are_unique():
    assert containers.throwaway_name(ALL["slurm"]) != containers.throwaway_name(ALL["slurm"])


def test_failed_build_quotes_the_steps_last_output_line():
    client = _FakeClient(
        [
            {"stream": "Step 7/26 : RUN fetch-verified ...\n"},
            {"stream": " ---> Running in 32f26e2d5811\n"},
            {"stream": "\x1b[91m+ fetch-verified https://x/h.tar.gz\n\x1b[0m"},
            {
                "stream": "\x1b[91mfetch-verified: cannot download https://x/h.tar.gz: "
                "no such host (set build arg HADOOP_URL to a reachable mirror)\n\x1b[0m"
            },
            {"stream": "Removing intermediate container 32f26e2d5811\n"},
            {"error": "The command '/bin/sh -c fetch-verified' returned a non-zero code: 1"},
        ]
    )
    with pytest.raises(StepFailed) as error:
        images.build_one(client, config.Settings(), ALL["hadoop"], parent_id="sha256:base")
    assert str(error.value).endswith(
        "; last output: fetch-verified: cannot download https://x/h.tar.gz: no such host "
        "(set build arg HADOOP_URL to a reachable mirror)"
    )


def test_host_mirror_from_deb822_and_one_line_sources(tmp_path):
    from scripts.debian import FALLBACK_MIRROR, host_mirror

    listing = tmp_path / "sources.list.d"
    listing.mkdir()
    (listing / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert host_mirror((listing,)) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert host_mirror((tmp_path / "absent", one_line)) == "http://other.example/debian"
    assert host_mirror((tmp_path / "absent",)) == FALLBACK_MIRROR
