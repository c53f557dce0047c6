"""The second consumer for real: dask-jobqueue 0.9.0's -E slurm, -E pbs, -E sge and
-E htcondor suites, unmodified, through `nox -s cycle -- BACKEND --source DIR` on the
images built here, with no reruns; and its jobs' own logs through `print-logs`.

CI reaches PyPI, not GitHub: the release sdist (hash-pinned) ships the
tests, and the three files of the tag it leaves out (conftest.py, the TLS
test's ca.pem and key.pem) are kept in tests/upstream/dask-jobqueue-0.9.0/,
checked by their git blob IDs (its README). About 45 s per suite on an idle
engine (start, pip install, the suite, stop); the job-log tests run one
upstream test each.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from scripts import consumers
from scripts.backends import load_all
from tests.conftest import wait_for
from tests.nox_runner import ROOT, nox
from tests.registry import engine_grants

pytestmark = pytest.mark.docker
ALL = load_all()
SLURM = ALL["slurm"]
RELEASE = "dask-jobqueue==0.9.0"
# PyPI's SHA-256 of dask_jobqueue-0.9.0.tar.gz: pip checks it before unpacking.
SDIST_SHA256 = "494ef64b7bb3848c7d72ed334c288030caca6a09dca54cfaa3f395f4ba7f5c47"
INTERFACE_TEST = (
    "dask_jobqueue/tests/test_slurm.py::test_different_interfaces_on_scheduler_and_workers"
)
# What the sdist leaves out (MANIFEST.in), from the tag: here -> in the checkout, git blob.
LEFT_OUT = {
    "conftest.py.upstream": ("conftest.py", "330ea1523f38b47b8a2a88fd48e49f33b6a42b9e"),
    "ca.pem": ("dask_jobqueue/tests/ca.pem", "46c112dd8b3b48296c4b7553ad44dc3216d40881"),
    "key.pem": ("dask_jobqueue/tests/key.pem", "9c23d8d05bab7f6ae52d2d394f231b9459b876f8"),
}
UPSTREAM = ROOT / "tests" / "upstream" / "dask-jobqueue-0.9.0"
SUMMARY = re.compile(r"^=+ (?P<counts>.*\d+ passed.*) in [\d.]+s", re.M)


@pytest.fixture
def no_container(env):
    nox("-s", "stop", "--", "slurm", env=env)
    yield
    nox("-s", "stop", "--", "slurm", env=env)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The release's checkout, downloaded and unpacked once for the module's tests."""
    return release_sdist(tmp_path_factory.mktemp("dask-jobqueue"))


def release_sdist(folder: Path) -> Path:
    """dask-jobqueue 0.9.0's sdist, downloaded with its hash checked, unpacked."""
    requirement = folder / "requirement.txt"
    requirement.write_text(f"{RELEASE} --hash=sha256:{SDIST_SHA256}\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--require-hashes", "-r", str(requirement), "-d", str(folder)],
        check=True,
    )  # fmt: skip
    with tarfile.open(folder / "dask_jobqueue-0.9.0.tar.gz") as archive:
        archive.extractall(folder, filter="data")
    source = folder / "dask_jobqueue-0.9.0"
    source.chmod(0o755)
    for stored, (path, blob) in LEFT_OUT.items():
        content = (UPSTREAM / stored).read_bytes()
        assert git_blob(content) == blob, f"{stored} is not the tag's {path}"
        assert not (source / path).exists()  # the sdist does leave it out
        shutil.copyfile(UPSTREAM / stored, source / path)
    return source


def git_blob(content: bytes) -> str:
    """The git blob ID of `content` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def counts(output: str) -> dict[str, int]:
    """pytest's last line, e.g. '11 passed, 269 skipped, 1 xpassed, 1 rerun'."""
    (line,) = SUMMARY.findall(output)[-1:]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", line)}


def test_dask_jobqueue_release_slurm_suite_passes_through_cycle(
    engine, env, built, no_container, release
):
    source = release
    declared = consumers.load_all(load_all())
    assert consumers.choose(declared, source, None, "--source").name == "dask-jobqueue"

    run = nox("-s", "cycle", "--", "slurm", "--source", str(source), env=env)
    assert run.returncode == 0, run.output[-6000:]
    assert "root@/root$ pytest /working/dask_jobqueue -v -E slurm" in run.output
    found = counts(run.output)
    print(f"dask-jobqueue 0.9.0 -E slurm: {found}")
    assert not {"failed", "error", "errors", "rerun"} & set(found)
    # Its slurm tests, the job and core tests with SLURMCluster: a dozen.
    assert found["passed"] >= 9
    assert "test_slurm.py::test_basic PASSED" in run.output
    use = consumers.load_all(load_all())["dask-jobqueue"].uses["slurm"]
    for item in use.not_run:  # test_slurm_runner: named as not run, never passed
        assert f"not run: {item.test} ({item.why})" in run.output
        assert f"{item.test.partition('::')[2]} PASSED" not in run.output

    if engine_grants(engine, slurm_image(engine, env), "NET_ADMIN"):
        assert "test_different_interfaces_on_scheduler_and_workers PASSED" in run.output
        assert f"not run: {INTERFACE_TEST}" not in run.output
    else:
        assert f"not run: {INTERFACE_TEST} (NET_ADMIN not granted" in run.output
        assert "test_different_interfaces_on_scheduler_and_workers PASSED" not in run.output
    assert SLURM.container_name not in {c.name for c in engine.containers.list(all=True)}


def slurm_image(engine, env) -> str:
    from scripts.settings import load_settings

    return engine.images.get(load_settings(environ=env).reference(SLURM)).id


# The suites as upstream's ci/<scheduler>.sh runs them, with no reruns: as
# whom, from where, and tests that must pass (upstream's own).
NO_RERUNS = {
    "pbs": ("pbsuser@/home/pbsuser", ("test_pbs.py::test_basic", "test_pbs.py::test_scale_grouped",
            "test_jobqueue_core.py::test_security[PBSCluster]"), 14),
    "sge": ("root@/root", ("test_sge.py::test_basic", "test_sge.py::test_complex_cancel_command",
                           "test_jobqueue_core.py::test_security[SGECluster]"), 9),
    "htcondor": ("submituser@/home/submituser", ("test_job.py::test_job[HTCondorCluster]",
                 "test_job.py::test_cluster[HTCondorCluster]",
                 "test_jobqueue_core.py::test_security[HTCondorCluster]"), 5),
}  # fmt: skip


@pytest.mark.parametrize("backend", sorted(NO_RERUNS))
def test_dask_jobqueue_release_suite_passes_through_cycle_without_reruns(
    engine, env, backend_image, backend, release
):
    where, must_pass, at_least = NO_RERUNS[backend]
    backend_image(backend)
    nox("-s", "stop", "--", backend, env=env)
    source = release
    run = nox("-s", "cycle", "--", backend, "--source", str(source), env=env)
    assert run.returncode == 0, run.output[-6000:]
    assert f"{where}$ pytest /working/dask_jobqueue -v -E {backend}" in run.output
    found = counts(run.output)
    print(f"dask-jobqueue 0.9.0 -E {backend}: {found}")
    assert not {"failed", "error", "errors", "rerun"} & set(found)
    assert found["passed"] >= at_least
    for test in must_pass:
        assert f"{test} PASSED" in run.output
    use = consumers.load_all(load_all())["dask-jobqueue"].uses[backend]
    for item in use.not_run:  # named as not run, never passed
        assert f"not run: {item.test} ({item.why})" in run.output
        assert f"{item.test.partition('::')[2]} PASSED" not in run.output
    assert ALL[backend].container_name not in {c.name for c in engine.containers.list(all=True)}


JOB_LOGGED = sorted(
    name for name, use in consumers.load_all(ALL)["dask-jobqueue"].uses.items() if use.job_logs
)


@pytest.mark.parametrize("backend", JOB_LOGGED)
def test_print_logs_shows_the_output_of_the_suites_own_jobs(
    engine, env, backend_image, backend, release
):
    """One upstream test (its cluster's workers are batch jobs), then print-logs: each
    job's own output, under its own heading, and the scheduler's record of the jobs."""
    backend_image(backend)
    nox("-s", "stop", "--", backend, env=env)
    source = release
    try:
        started = nox("-s", "start", "--", backend, "--source", str(source), env=env)
        assert started.returncode == 0, started.output[-3000:]
        installed = nox("-s", "install", "--", backend, env=env)
        assert installed.returncode == 0, installed.output[-3000:]
        # test_job.py::test_cluster[<its cluster>] (two jobs, one removed, awaited), then
        # test_<backend>.py::test_basic (must_run wants a test of that module). As the
        # suite orders them: test_pbs.py::test_basic failed once here when it ran first
        # in a new container (it asserts the cluster forgot its jobs as soon as the
        # scheduler has no workers); after test_job.py, 0 of 20 suite runs.
        only = f"(test_job.py and test_cluster) or (test_{backend}.py and test_basic and not scale)"
        run = nox("-s", "test", "--", backend, "-k", only, env=env)
        assert run.returncode == 0, run.output[-3000:]
        assert counts(run.output)["passed"] == 2
        # The scheduler records a job as it ends, which can be seconds after the
        # test deleted it (qdel): wait for that record, then show the logs.
        container = engine.containers.get(ALL[backend].container_name)
        finished = ALL[backend].log_jobs[-1]
        wait_for(
            lambda: b"dask-worker" in container.exec_run(list(finished)).output,
            f"the test's jobs in {shlex.join(finished)}",
            timeout=60,
        )
        shown = nox("-s", "print-logs", "--", backend, env=env)
        assert shown.returncode == 0, shown.output[-3000:]
        shown_sections = sections(shown.output)
        assert any(title.startswith(f"{backend} job: /") for title in shown_sections), shown.output
        # the scheduler's record of the jobs (sacct, qstat -x, qacct), the test's among them
        records = [shown_sections[f"{backend}: {shlex.join(c)}"] for c in ALL[backend].log_jobs]
        assert any("dask-worker" in record for record in records), shown.output[-3000:]
        # what dask's worker said in its job: where it listened, whom it joined
        assert re.search(r"distributed\.worker - INFO - +Start worker at: +tcp://", shown.output)
        assert re.search(r"distributed\.worker - INFO - +Registered to: +tcp://", shown.output)
    finally:
        nox("-s", "stop", "--", backend, env=env)


def sections(output: str) -> dict[str, str]:
    """print-logs' output by heading: {'slurm: supervisorctl status': 'its text', ...}."""
    parts = re.split(r"^(?:==> |::group::)(.+)$", output, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2], strict=True)}
