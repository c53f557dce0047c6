"""Consumer declarations (consumers/*.toml): parsing, recognising a checkout,
what is left out where a wanted capability is not granted. No Docker."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from scripts import backends, consumers, steps
from scripts.errors import DeclarationError, StepFailed, UserError
from scripts.project import ROOT

BACKENDS = backends.load_all()
DECLARED = consumers.load_all(BACKENDS)
INTERFACE = "test_different_interfaces_on_scheduler_and_workers"
GOOD = 'description = "d"\ndetect = ["pkg/__init__.py"]\n[backends.slurm]\ntest = [["pytest"]]\n'


def checkout(folder: Path, *paths: str) -> Path:
    for relative in paths:
        target = folder / relative
        if relative.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("")
    return folder


def test_both_consumers_are_declared_for_the_backends_they_test():
    assert set(DECLARED) >= {"dask-gateway", "dask-jobqueue"}
    assert set(DECLARED["dask-gateway"].uses) == {"slurm", "pbs", "hadoop"}
    assert set(DECLARED["dask-jobqueue"].uses) == {"slurm", "pbs", "sge", "htcondor"}


def test_dask_jobqueue_runs_its_suites_as_upstream_ci_does():
    slurm, pbs, sge = (DECLARED["dask-jobqueue"].uses[name] for name in ("slurm", "pbs", "sge"))
    # ci/slurm.sh and ci/sge.sh: as root, from root's home; ci/pbs.sh: as pbsuser.
    assert (slurm.user, pbs.user, sge.user) == ("root", "pbsuser", "root")
    assert (slurm.workdir, pbs.workdir, sge.workdir) == ("/root", "/home/pbsuser", "/root")
    for use, env in ((slurm, "slurm"), (pbs, "pbs"), (sge, "sge")):
        (command,) = use.test
        assert command[:2] == ("pytest", "/working/dask_jobqueue")
        assert command[command.index("-E") + 1] == env
        # upstream's xfail_env marks are what decide: never --runxfail
        assert "--runxfail" not in command
        assert use.environment["CI_SHARED_SPACE"] == "/shared_space"
        assert ("install", "-d", "-m", "1777", "/shared_space") in use.setup
        assert use.must_run == (f"dask_jobqueue/tests/test_{env}.py",)
    assert any("useradd" in " ".join(c) and "pbsuser" in " ".join(c) for c in pbs.setup)


def test_no_dask_jobqueue_suite_is_rerun():
    """A test that fails once fails: no --reruns, and nothing installed to rerun."""
    for name, use in DECLARED["dask-jobqueue"].uses.items():
        for command in use.test:
            assert not any(part.startswith("--reruns") for part in command), name
        assert not any("pytest-rerunfailures" in command for command in use.install), name


def test_slurm_runner_is_left_out_for_its_documented_upstream_race():
    slurm = DECLARED["dask-jobqueue"].uses["slurm"]
    (item,) = [n for n in slurm.not_run if n.test.endswith("::test_slurm_runner")]
    assert item.test == "dask_jobqueue/tests/test_slurm.py::test_slurm_runner"
    assert "docs/upstream.md" in item.why
    written = (ROOT / "docs" / "upstream.md").read_text()
    # the write-up names the test and carries the reproduction that could go upstream
    assert "test_slurm_runner" in written and "srun --mpi=none -n 4" in written


def test_the_jobs_own_logs_are_declared_where_the_jobs_write_them():
    uses = DECLARED["dask-jobqueue"].uses
    assert uses["slurm"].job_logs == (f"{uses['slurm'].workdir}/slurm-*.out",)
    assert f"{uses['pbs'].workdir}/*.[oe][0-9]*" in uses["pbs"].job_logs
    assert uses["sge"].job_logs == (f"{uses['sge'].workdir}/*.o[0-9]*",)
    assert uses["htcondor"].job_logs == ()  # its jobs keep no output (no log_directory)


def test_the_interface_test_is_left_out_only_without_net_admin():
    slurm = DECLARED["dask-jobqueue"].uses["slurm"]
    assert slurm.wanted_capabilities == ("NET_ADMIN",)
    (want,) = slurm.wants
    assert "eth0:scheduler" in want.setup[0][-1] and "eth0:worker" in want.setup[0][-1]
    everywhere = [(item.test, item.why) for item in slurm.not_run]
    assert consumers.deselected(slurm, set()) == everywhere
    left_out = consumers.deselected(slurm, {"NET_ADMIN"})
    assert left_out == [
        *everywhere,
        (
            "dask_jobqueue/tests/test_slurm.py::test_different_interfaces_on_scheduler_and_workers",
            f"NET_ADMIN not granted: {want.why}",
        ),
    ]


def test_a_test_that_cannot_pass_as_written_is_left_out_everywhere_with_its_reason():
    """htcondor: the tests that cannot pass on any HTCondor pool as upstream wrote them."""
    htcondor = DECLARED["dask-jobqueue"].uses["htcondor"]
    left_out = consumers.deselected(htcondor, set())
    reasons = dict(left_out)
    assert set(reasons) == {
        "dask_jobqueue/tests/test_htcondor.py::test_basic",
        "dask_jobqueue/tests/test_htcondor.py::test_extra_args_broken_cancel",
        "dask_jobqueue/tests/test_jobqueue_core.py::test_security_temporary[HTCondorCluster]",
    }
    for test, why in reasons.items():
        assert why.endswith(": fails as written"), test
        assert ("Job._call" in why) == ("test_htcondor.py" in test), test
    assert consumers.deselected(DECLARED["dask-jobqueue"].uses["sge"], set()) == []


def test_a_checkout_is_recognised_by_its_files(tmp_path):
    gateway = checkout(tmp_path / "gw", "tests/", "dask-gateway/")
    jobqueue = checkout(tmp_path / "jq", "dask_jobqueue/__init__.py", "conftest.py")
    assert consumers.choose(DECLARED, gateway, None, "--source").name == "dask-gateway"
    assert consumers.choose(DECLARED, jobqueue, None, "--source").name == "dask-jobqueue"
    # --consumer decides, whatever the files say
    assert consumers.choose(DECLARED, gateway, "dask-jobqueue", "--source").name == "dask-jobqueue"


def test_an_unknown_checkout_names_what_each_consumer_looks_for(tmp_path):
    with pytest.raises(UserError) as raised:
        consumers.choose(DECLARED, tmp_path, None, "--source")
    message = str(raised.value)
    assert "no tests/ folder in" in message and "(dask-gateway)" in message
    assert "no dask_jobqueue/__init__.py" in message and "--consumer NAME" in message


def test_a_checkout_of_two_consumers_asks_for_one(tmp_path):
    both = checkout(tmp_path, "tests/", "dask_jobqueue/__init__.py", "conftest.py")
    with pytest.raises(UserError, match="dask-gateway and of dask-jobqueue; choose one"):
        consumers.choose(DECLARED, both, None, "--source")


def test_an_unknown_consumer_name_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="--consumer nosuch: no such consumer; choose from: "):
        consumers.choose(DECLARED, tmp_path, "nosuch", "--source")


def test_a_backend_the_consumer_does_not_declare_is_one_line():
    with pytest.raises(UserError, match="dask-jobqueue declares no tests for hadoop"):
        DECLARED["dask-jobqueue"].use(BACKENDS["hadoop"])


def test_consumer_needs_a_source(tmp_path):
    ctx = SimpleNamespace(options=SimpleNamespace(consumer="dask-jobqueue", source=None))
    with pytest.raises(UserError, match="give --source DIR too"):
        steps._consumer(ctx, None)
    ctx.options.consumer = None
    assert steps._consumer(ctx, None) is None


def test_a_third_consumer_is_one_more_file(tmp_path):
    (tmp_path / "other.toml").write_text(GOOD)
    found = consumers.load_all(BACKENDS, tmp_path)
    assert list(found) == ["other"]
    use = found["other"].use(BACKENDS["slurm"])
    assert (use.user, use.workdir, use.test) == ("dask", "/working", (("pytest",),))


BAD = {
    "unknown-key": (GOOD + "colour = 1\n", "unknown key 'colour'"),
    "no-test": (GOOD.replace('test = [["pytest"]]', 'install = [["pip"]]'), "'test'"),
    "image-only-backend": (GOOD.replace("backends.slurm", "backends.base"), "backends.base: not a"),
    "unknown-backend": (GOOD.replace("backends.slurm", "backends.nosuch"), "choose from: "),
    "want-without-why": (
        GOOD + '[[backends.slurm.wants]]\ncapability = "NET_ADMIN"\n',
        "'why' is required in a want",
    ),
    "capability-typo": (
        GOOD + '[[backends.slurm.wants]]\ncapability = "net admin"\nwhy = "x"\n',
        "is not a capability name",
    ),
    "detect-outside": (GOOD.replace("pkg/__init__.py", "../x"), "not a path inside a checkout"),
    "empty-user": (GOOD + 'user = ""\n', "user: expected a non-empty string"),
    "command-not-a-list": (GOOD.replace('[["pytest"]]', '"pytest"'), "test: expected a list"),
    "job-log-relative": (GOOD + 'job_logs = ["slurm-*.out"]\n', "job_logs: 'slurm-*.out' is not"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_malformed_declaration_names_the_file_and_key(tmp_path, case):
    text, expected = BAD[case]
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(DeclarationError) as raised:
        consumers.load_all(BACKENDS, tmp_path)
    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_without_net_admin_the_interface_test_is_deselected_and_named(
    monkeypatch, capsys, tmp_path
):
    """The `test` step where the engine dropped NET_ADMIN: deselected, said, not passed."""
    source = checkout(tmp_path, "dask_jobqueue/__init__.py", "conftest.py")
    container = SimpleNamespace(name="dask-gateway-ci-slurm")
    ran = []
    monkeypatch.setattr(steps.containers, "require_running", lambda client, backend: container)
    monkeypatch.setattr(steps.containers, "mounted_source", lambda c: str(source))
    monkeypatch.setattr(steps.containers, "consumer_of", lambda c: "dask-jobqueue")
    monkeypatch.setattr(steps.containers, "granted", lambda c, asked: set())
    monkeypatch.setattr(
        steps.commands, "run_tests", lambda c, backend, use, command: ran.append(command)
    )
    ctx = SimpleNamespace(client=None, backends=BACKENDS, extra=["-x"])
    steps.test(ctx, BACKENDS["slurm"])
    (command,) = ran
    interface = "dask_jobqueue/tests/test_slurm.py::" + INTERFACE
    assert f"--deselect={interface}" in command
    assert command[-1] == "-x"  # the user's arguments last
    said = capsys.readouterr()
    assert f"not run: {interface} (NET_ADMIN not granted" in said.out + said.err

    ran.clear()
    monkeypatch.setattr(steps.containers, "granted", lambda c, asked: set(asked))
    steps.test(ctx, BACKENDS["slurm"])
    not_run = {f"--deselect={n.test}" for n in DECLARED["dask-jobqueue"].uses["slurm"].not_run}
    assert {part for part in ran[0] if part.startswith("--deselect")} == not_run


def test_a_failed_suite_says_where_its_jobs_logs_are(monkeypatch, capsys, tmp_path):
    source = checkout(tmp_path, "dask_jobqueue/__init__.py", "conftest.py")
    container = SimpleNamespace(name="dask-gateway-ci-slurm")
    monkeypatch.setattr(steps.containers, "require_running", lambda client, backend: container)
    monkeypatch.setattr(steps.containers, "mounted_source", lambda c: str(source))
    monkeypatch.setattr(steps.containers, "consumer_of", lambda c: "dask-jobqueue")
    monkeypatch.setattr(steps.containers, "granted", lambda c, asked: set(asked))

    def failing(c, backend, use, command):
        raise StepFailed("test failed: pytest ... exited 1")

    monkeypatch.setattr(steps.commands, "run_tests", failing)
    ctx = SimpleNamespace(client=None, backends=BACKENDS, extra=[])
    with pytest.raises(StepFailed):
        steps.test(ctx, BACKENDS["slurm"])
    said = capsys.readouterr()
    text = said.out + said.err
    assert "its jobs' own logs stay in dask-gateway-ci-slurm (/root/slurm-*.out): " in text
    assert "`nox -s print-logs -- slurm` shows them" in text
