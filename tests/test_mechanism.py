"""Unit tests of the helpers: naming, labels, argument parsing, trust, streams."""

from __future__ import annotations

import re
import tarfile
from datetime import UTC, datetime

import pytest

from scripts import (
    backends,
    capabilities,
    cli,
    containers,
    engine,
    images,
    log,
    ports,
    provenance,
    pytest_report,
    settings,
    steps,
    trust,
)
from scripts.errors import EngineUnavailable, StepFailed, UserError

ALL = backends.load_all()
SERVICES = [name for name, backend in ALL.items() if backend.runs_services]


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
    assert cli.split_posargs(steps.STEPS[step], posargs, fixed) == (names, rest)


def test_bad_option_is_one_line_not_a_usage_dump():
    with pytest.raises(UserError) as error:
        steps.STEPS["build"].parse(["--frobnicate"])
    assert "\n" not in str(error.value)
    assert "--frobnicate" in str(error.value)


def test_options_are_not_abbreviated():
    """`--so` is not taken for --source: abbreviations would swallow pytest's options."""
    options, extra = steps.STEPS["cycle"].parse(["--so", "x", "-k", "jobs"])
    assert options.source is None
    assert extra == ["--so", "x", "-k", "jobs"]


def test_cycle_keeps_its_options_and_passes_the_rest_to_pytest():
    options, extra = steps.STEPS["cycle"].parse(["--source", "/src", "-x", "--ports", "none"])
    assert (options.source, options.ports) == ("/src", "none")
    assert extra == ["-x"]


def test_build_arg_needs_key_value():
    with pytest.raises(UserError, match="KEY=VALUE"):
        steps._key_value("NOEQUALS")
    assert steps._key_value("A=b=c") == ("A", "b=c")


def test_source_must_be_a_directory_taken_from_where_nox_ran(tmp_path):
    here = tmp_path / "elsewhere"
    assert steps._source_dir(None, "", here) is None
    with pytest.raises(UserError, match="not a directory"):
        steps._source_dir(str(tmp_path / "missing"), "", here)
    # Any folder: which consumer's checkout it is, is consumers.choose's question.
    assert steps._source_dir(str(tmp_path), "", here) == tmp_path.resolve()
    (tmp_path / "tests").mkdir()
    configured = settings.load_settings(environ={"DASK_GATEWAY_SOURCE": str(tmp_path)}).checkout
    assert steps._source_dir(None, configured, here) == tmp_path.resolve()
    # Relative: from where nox was run, not from the noxfile's folder.
    assert steps._source_dir("..", "", tmp_path / "tests") == tmp_path.resolve()


def test_step_registry_is_the_one_table():
    """Each step: a function, a one-line description, a scope; the README's steps first."""
    documented = ["build", "verify", "push", "tag-dated", "start", "install", "test"]
    documented += ["print-logs", "stop", "cycle"]
    assert list(steps.STEPS)[: len(documented)] == documented
    # Every session that is not the project's own (lint, tests, workflows) is a step.
    assert list(steps.STEPS)[len(documented) :] == ["bootstrap-debian", "plan"]
    for step in steps.STEPS.values():
        assert step.scope in (backends.IMAGE, backends.SERVICES, cli.PROJECT)
        takes = step.scope != cli.PROJECT
        assert "\n" not in step.describe("slurm")
        assert step.describe(None).endswith("BACKEND...") == takes
    image_steps = {s.name for s in steps.STEPS.values() if s.scope == backends.IMAGE}
    assert {"build", "verify", "push", "tag-dated"} <= image_steps
    assert ALL["base"].kind == backends.IMAGE and not ALL["base"].runs_services


# -- naming and labels -------------------------------------------------------------


def test_default_image_names():
    chosen = settings.load_settings(environ={})
    assert chosen.reference(ALL["slurm"]) == "ghcr.io/dask/dask-gateway-ci-slurm:latest"


def test_registry_and_owner_from_environment():
    chosen = settings.load_settings(
        environ={
            "DASK_GATEWAY_CI_REGISTRY": "registry.example:5000",
            "DASK_GATEWAY_CI_OWNER": "My-Fork",
        }
    )
    assert chosen.reference(ALL["pbs"], "2026-11-25") == (
        "registry.example:5000/my-fork/dask-gateway-ci-pbs:2026-11-25"
    )


def test_registry_and_owner_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.dask-gateway-ci]\nregistry = "quay.io"\nowner = "someone"\n'
    )
    chosen = settings.load_settings(root=tmp_path, environ={})
    assert chosen.repository(ALL["base"]) == "quay.io/someone/dask-gateway-ci-base"


def test_the_run_settings_carry_each_variable_as_given_and_credentials_unprinted():
    given = {
        "DASK_GATEWAY_CI_BACKENDS": "slurm",
        "DASK_GATEWAY_CI_ARCHITECTURES": "amd64",
        "DASK_GATEWAY_CI_PUSH_RETRIES": "many",  # checked where used, not here
        "DASK_GATEWAY_CI_PUSH_BACKOFF": "0.5",
        "DASK_GATEWAY_CI_DOCKER_CLI": "/opt/docker",
        "DOCKER_CONFIG": "/home/u/.docker-other",
        "DASK_GATEWAY_CI_STATE_DIR": "/var/state",
        "XDG_STATE_HOME": "/home/u/.state",
        "GITHUB_STEP_SUMMARY": "/tmp/summary.md",
        "DASK_GATEWAY_CI_REGISTRY_TOKEN": "settings-test-token",
        "UNRELATED": "x",
    }
    chosen = settings.load_settings(environ=given)
    assert (chosen.selection, chosen.architectures) == ("slurm", "amd64")
    assert (chosen.push_retries, chosen.push_backoff) == ("many", "0.5")
    assert (chosen.docker_cli, chosen.docker_config) == ("/opt/docker", "/home/u/.docker-other")
    assert (chosen.state_dir, chosen.xdg_state_home) == ("/var/state", "/home/u/.state")
    assert chosen.step_summary == "/tmp/summary.md"
    assert chosen.credentials == {"DASK_GATEWAY_CI_REGISTRY_TOKEN": "settings-test-token"}
    assert "settings-test-token" not in repr(chosen)
    unset = settings.load_settings(environ={})
    assert (unset.selection, unset.state_dir, unset.step_summary, unset.credentials) == (
        "",
        "",
        "",
        {},
    )


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        (
            "DASK_GATEWAY_CI_REGISTRY",
            "https://ghcr.io",
            "give the registry host only, e.g. 'ghcr.io'",
        ),
        ("DASK_GATEWAY_CI_REGISTRY", "ghcr.io/dask", "is not a registry host"),
        ("DASK_GATEWAY_CI_OWNER", "my fork", "is not a valid image owner"),
        ("DASK_GATEWAY_CI_OWNER", "-fork", "is not a valid image owner"),
        ("DASK_GATEWAY_CI_OWNER", "a..b", "is not a valid image owner"),
    ],
)
def test_bad_registry_or_owner_is_one_line_naming_the_variable(variable, value, complaint):
    with pytest.raises(UserError) as error:
        settings.load_settings(environ={variable: value})
    message = str(error.value)
    assert message.startswith(f"{variable} {value!r}") and complaint in message


@pytest.mark.parametrize(
    ("remote", "url"),
    [
        ("git@github.com:dask/dask-gateway-ci.git", "https://github.com/dask/dask-gateway-ci"),
        ("https://x-access-token:SECRET@github.com/o/r.git", "https://github.com/o/r"),
    ],
)
def test_remote_urls_become_https_without_credentials(remote, url):
    assert provenance.https_url(remote) == url


def test_oci_labels():
    prov = provenance.Provenance(
        revision="0123456789abcdef0123456789abcdef01234567",
        committed=datetime(2026, 11, 25, 8, 30, tzinfo=UTC),
        source="https://github.com/dask/dask-gateway-ci",
    )
    labels = provenance.oci_labels(ALL["slurm"], prov)
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
    source = settings.Settings().source
    prov = provenance.provenance(source, [tmp_path / "image"], root=tmp_path)
    # A commit outside the image does not change its labels, so not its ID.
    assert prov.revision == first
    assert prov.source == source


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
        images.build_one(client, settings.Settings(), ALL["slurm"], parent_id="sha256:base")
    message = str(error.value)
    assert "\n" not in message
    assert "failed at Step 4/9 : RUN apt-get install nosuchpackage" in message
    assert message.endswith("It returned a non-zero code: 100")


def test_build_passes_the_parent_by_id_and_never_pulls():
    client = _FakeClient([{"aux": {"ID": "sha256:child"}}])
    image = images.build_one(
        client,
        settings.Settings(),
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
    assert "labels" not in kwargs  # in the Dockerfile: one sorted instruction
    assert kwargs["custom_context"] is True
    with tarfile.open(fileobj=kwargs["fileobj"]) as archive:
        names = archive.getnames()
        dockerfile = archive.extractfile("Dockerfile").read().decode()
    assert "Dockerfile" in names and "files/etc/slurm/slurm.conf" in names
    last = dockerfile.rstrip().splitlines()[-1]
    assert last.startswith('LABEL "io.github.dask-gateway-ci.backend"="slurm" ')
    assert '"org.opencontainers.image.title"="dask-gateway-ci-slurm"' in last
    keys = re.findall(r'"([^"]+)"=', last)
    assert keys == sorted(keys) and len(keys) == 8


def test_the_family_root_is_passed_only_where_declared():
    """pbs compiles OpenPBS FROM the Debian image (DEBIAN_IMAGE), not FROM base."""
    for name, passed in (("pbs", True), ("slurm", False)):
        client = _FakeClient([{"aux": {"ID": "sha256:child"}}])
        images.build_one(
            client, settings.Settings(), ALL[name], parent_id="sha256:base", root_id="sha256:deb"
        )
        args = client.api.kwargs["buildargs"]
        assert ("DEBIAN_IMAGE" in args) == passed, name
        assert args.get("DEBIAN_IMAGE", "sha256:deb") == "sha256:deb"
    with pytest.raises(UserError, match="--build-arg DEBIAN_IMAGE is set by the build itself"):
        images.check_build_options(
            ALL["pbs"], build_args={"DEBIAN_IMAGE": "x"}, target=None, save=None
        )


def test_build_context_takes_the_umask_out(tmp_path):
    """A checkout made under umask 002 gives the same context as one under 022."""
    (tmp_path / "files" / "etc").mkdir(parents=True)
    (tmp_path / "files" / "etc" / "x.conf").write_text("x")
    (tmp_path / "files" / "run").write_text("#!/bin/sh\n")
    (tmp_path / "files").chmod(0o775)
    (tmp_path / "files" / "etc").chmod(0o2775)
    (tmp_path / "files" / "etc" / "x.conf").chmod(0o664)
    (tmp_path / "files" / "run").chmod(0o775)
    with tarfile.open(fileobj=images.context_archive(tmp_path)) as archive:
        modes = {m.name: (m.mode, m.uid, m.gid) for m in archive.getmembers()}
    assert modes == {
        ".": (0o755, 0, 0),
        "files": (0o755, 0, 0),
        "files/etc": (0o755, 0, 0),
        "files/etc/x.conf": (0o644, 0, 0),
        "files/run": (0o755, 0, 0),
    }


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
        images.build_one(client, settings.Settings(), ALL["hadoop"], parent_id="sha256:base")
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


# -- failures as one line, found before the engine is asked --------------------------


def test_missing_ca_bundle_file_names_the_variable(tmp_path):
    missing = tmp_path / "nope.pem"
    with pytest.raises(UserError) as error:
        trust.forwarded({trust.BUNDLE_VARIABLE: str(missing)})
    assert str(error.value).startswith(f"{trust.BUNDLE_VARIABLE}={missing}: no such file")


def test_credentials_in_a_forwarded_index_url_are_masked(capsys):
    secret = "s3cr3t-index-password"
    _, env = trust.forwarded({"PIP_INDEX_URL": f"https://me:{secret}@pypi.example/simple"})
    assert env["PIP_INDEX_URL"].endswith("@pypi.example/simple")  # forwarded as is
    log.info(f"pip index {env['PIP_INDEX_URL']}")
    assert secret not in capsys.readouterr().err


def test_a_one_character_secret_does_not_garble_messages(capsys):
    log.add_secret("a")
    log.info("a message with many a letters")
    assert capsys.readouterr().err.strip() == "a message with many a letters"


@pytest.mark.parametrize(
    ("spec", "planned"),
    [
        (None, {8000: 8000, 8786: 8786}),
        ("", {8000: 8000, 8786: 8786}),
        ("none", {}),
        ("+10000", {8000: 18000, 8786: 18786}),
    ],
)
def test_port_plan(spec, planned):
    assert ports.plan((8000, 8786), spec) == planned


def test_port_plan_from_environment_and_bad_specs():
    configured = settings.load_settings(environ={ports.PORTS_VARIABLE: "none"}).ports
    assert ports.plan((8000,), None, configured) == {}
    assert ports.plan((8000,), "+1", configured) == {8000: 8001}  # the option wins
    for bad in ("8000:9000", "+x", "-5", "+70000"):
        with pytest.raises(UserError):
            ports.plan((8000,), bad)


def test_a_port_held_by_another_process_is_named(monkeypatch):
    import socket

    monkeypatch.delenv("DOCKER_HOST", raising=False)

    class NoContainers:
        class containers:  # the shape of docker's client
            @staticmethod
            def list():
                return []

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert ports.holder(NoContainers, port).startswith("another process")
        with pytest.raises(UserError) as error:
            ports.check_free(NoContainers, {8000: port}, "--ports")
    message = str(error.value)
    assert f"host port {port} (for 8000) is taken by another process" in message
    assert "--ports +10000" in message and "--ports none" in message
    assert ports.holder(NoContainers, port) is None  # released


@pytest.mark.parametrize(
    ("output", "line"),
    [
        ("Slurmctld(primary) at slurm is DOWN\n*****************************\n", "is DOWN"),
        ("***\n---\n", "exit 1, no output"),
        ("starting\nConnection refused by host\nretrying soon\n", "Connection refused"),
        ("first words\nlast words\n", "last words"),
    ],
)
def test_readiness_reports_the_telling_line(output, line):
    assert line in containers.telling_line(output, 1)


def test_pytest_report_counts_executed_tests_per_module():
    report = """<testsuites><testsuite>
      <testcase classname="" name="tests.test_yarn_backend">
        <skipped message="collection skipped">('/w/tests/test_yarn_backend.py', 3,
        "Skipped: could not import 'skein': No module named 'skein'")</skipped></testcase>
      <testcase classname="tests.test_auth" name="test_kerberos">
        <skipped message="TEST_DASK_GATEWAY_YARN not set"/></testcase>
      <testcase classname="tests.test_slurm_backend" name="test_slurm_backend"/>
      <testcase classname="tests.test_slurm_backend.TestX" name="test_y"/>
    </testsuite></testsuites>"""
    runs = pytest_report.per_module(report, ("tests/test_slurm_backend.py",))
    assert runs["tests/test_slurm_backend.py"].executed == 2
    assert pytest_report.idle_modules(
        report, ("tests/test_yarn_backend.py", "tests/test_auth.py", "tests/test_pbs_backend.py")
    ) == [
        "tests/test_yarn_backend.py ran no test (1 skipped: could not import 'skein': "
        "No module named 'skein')",
        "tests/test_auth.py ran no test (1 skipped: TEST_DASK_GATEWAY_YARN not set)",
        "tests/test_pbs_backend.py ran no test (none collected)",
    ]


def test_build_options_are_checked_before_building(tmp_path):
    slurm = ALL["slurm"]
    with pytest.raises(UserError, match="has no such stage"):
        images.check_build_options(slurm, build_args={}, target="nosuchstage", save=None)
    with pytest.raises(UserError, match="cannot write there"):
        images.check_build_options(slurm, build_args={}, target=None, save="/nonexistent/x.tar")
    with pytest.raises(UserError, match="BASE_IMAGE is set by the build itself"):
        images.check_build_options(slurm, build_args={"BASE_IMAGE": "x"}, target=None, save=None)
    images.check_build_options(slurm, build_args={}, target=None, save=str(tmp_path / "x.tar"))


def test_debian_suite_of_reference():
    from scripts.debian import suite_of

    assert suite_of("debian:trixie-slim") == "trixie"
    assert suite_of("docker.io/library/debian:forky") == "forky"
    assert suite_of("ubuntu:24.04") is None


def test_slim_drops_what_debian_slim_images_exclude(tmp_path):
    from scripts.debian import slim

    for path in (
        "usr/share/doc/bash/copyright",
        "usr/share/doc/bash/README.gz",
        "usr/share/man/man1/ls.1.gz",
        "usr/share/locale/de/LC_MESSAGES/x.mo",
        "var/cache/apt/archives/x.deb",
        "var/cache/apt/pkgcache.bin",
        "usr/bin/ls",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    slim(tmp_path)
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert "usr/share/doc/bash/copyright" in left and "usr/bin/ls" in left
    assert not {p for p in left if p.startswith(("usr/share/man/", "usr/share/locale/"))}
    assert "usr/share/doc/bash/README.gz" not in left
    assert not (tmp_path / "var/cache/apt/pkgcache.bin").exists()
    assert "path-exclude /usr/share/man/*" in (tmp_path / "etc/dpkg/dpkg.cfg.d/docker").read_text()
    assert "docker-clean" in {p.name for p in (tmp_path / "etc/apt/apt.conf.d").iterdir()}


def test_refused_capabilities_are_remembered_per_engine_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_GATEWAY_CI_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(capabilities, "engine_key", lambda client: client)
    capabilities.remember("docker-20", ["SYS_RESOURCE"])
    capabilities.remember("docker-28", ["SYS_RESOURCE", "NET_ADMIN"])
    capabilities.remember("docker-20", ["NET_ADMIN"])
    # Using one engine does not make the other one's refusals forgotten.
    assert capabilities.remembered("docker-20") == {"SYS_RESOURCE", "NET_ADMIN"}
    assert capabilities.remembered("docker-28") == {"SYS_RESOURCE", "NET_ADMIN"}
    assert capabilities.remembered("restarted-docker-20") == set()
    for n in range(capabilities.REMEMBERED_ENGINES):
        capabilities.remember(f"engine-{n}", ["SYS_RESOURCE"])
    assert capabilities.remembered("docker-20") == set()  # the oldest went
    assert capabilities.remembered(f"engine-{n}") == {"SYS_RESOURCE"}
