"""ci/hadoop: what issue 13 asked of its declarations and Dockerfile, and its
`configured` stage built through nox from a checkout made with umask 002.

With the classic builder, `COPY files/ /` gives directories that already
exist in the image (/opt, /opt/hadoop, /opt/hadoop/etc) the modes of the
checkout's; under umask 002 that is 775. container-executor refuses a cfg
with a group-writable directory above it, so the Dockerfile puts the modes
right in the step that runs `container-executor --checksetup`.

The real Hadoop and Java cannot be downloaded here, so, as in
test_download_stage, stand-in tarballs are served on 127.0.0.1. The stand-in
container-executor is a shell script that makes the checks `--checksetup`
makes (Hadoop's main.c, assert_valid_setup): the cfg and every directory
above it root-owned and not group/other-writable, the cfg's group known, the
binary root-owned, in that group, setuid, nothing for others. A second
build, with the Dockerfile's fix taken out, shows the stand-in failing the
way the real binary did.

Not checked here (see ci/hadoop/README.md): the real binary (its ldd, its
own reading of the cfg) and everything after `configured` (skein from PyPI,
the realm, HDFS format), which needs the real downloads, and PyPI from
inside a build.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import backends, consumers
from scripts.dockerfile import instructions, stages
from scripts.images import untag
from tests.http_server import serve
from tests.nox_runner import Run, nox_env
from tests.test_download_stage import Fetch, arg_defaults, make_tarball, run_in

# Builds here leave untagged images on purpose (target stages, failed downloads).
pytestmark = pytest.mark.usefixtures("untagged_builds_removed")


ROOT = Path(__file__).resolve().parents[1]
HADOOP = ROOT / "ci" / "hadoop"
DECLARED = backends.load_all()["hadoop"]
# dask-gateway's commands in it (consumers/dask-gateway.toml).
GATEWAY = consumers.load_all(backends.load_all())["dask-gateway"].uses["hadoop"]
CFG = "/opt/hadoop/etc/hadoop/container-executor.cfg"
# What nox needs to build, copied from this checkout.
TREE = ("noxfile.py", "pyproject.toml", "scripts", "ci")
OWNER = "dask-gateway-ci-itest-umask002"
BUILT = re.compile(r"^built \S+ \(target configured\): sha256:([0-9a-f]{12})", re.M)
# The Dockerfile's fix; the negative control takes this line out.
FIX = 'do chmod go-w "$dir"'

STAND_IN_EXECUTOR = b"""#!/bin/sh
# Stand-in for `container-executor --checksetup` (tests/test_hadoop_image.py).
set -eu
fail() { echo "$*" >&2; exit 24; }
[ "${1:-}" = --checksetup ] || fail "stand-in container-executor: --checksetup only"
self=$(readlink -f "$0")
cfg=$(readlink -f "$(dirname "$self")/../etc/hadoop/container-executor.cfg")
path=$cfg
while [ "$path" != / ]; do
    owner=$(stat -c %u "$path")
    [ "$owner" = 0 ] || fail "File $path must be owned by root, but is owned by $owner"
    if [ -n "$(find "$path" -maxdepth 0 -perm /022)" ]; then
        fail "File $path must not be world or group writable, but is $(stat -c %a "$path")"
    fi
    path=$(dirname "$path")
done
group=$(sed -n 's/^yarn.nodemanager.linux-container-executor.group=//p' "$cfg")
getent group "$group" >/dev/null || fail "Can't get group information for $group"
[ "$(stat -c %u "$self")" = 0 ] || fail "The container-executor binary should be owned by root"
[ "$(stat -c %G "$self")" = "$group" ] || fail "The configured nodemanager group differs"
[ -z "$(find "$self" -maxdepth 0 -perm /007)" ] || fail "no read/write/execute for others"
[ -n "$(find "$self" -maxdepth 0 -perm -4000)" ] || fail "should be set setuid"
echo "stand-in container-executor: --checksetup passed for $cfg"
"""


def _fetches() -> tuple[Fetch, Fetch]:
    version = arg_defaults("hadoop")["HADOOP_VERSION"]
    jar = f"share/hadoop/yarn/hadoop-yarn-applications-distributedshell-{version}.jar"
    hadoop = Fetch(
        name="HADOOP",
        algorithm="sha512",
        per_arch=True,
        top=f"hadoop-{version}",
        files={
            "bin/container-executor": (0o6775, STAND_IN_EXECUTOR),
            "bin/test-container-executor": (0o755, b"#!/bin/sh\n"),
            jar: (0o664, b"PK stand-in jar"),
            "etc/hadoop/hadoop-env.sh": (0o666, b"# stand-in\n"),
            "etc/hadoop/log4j.properties": (0o664, b"# stand-in\n"),
        },
        required=jar,
    )
    java = Fetch(
        name="TEMURIN",
        algorithm="sha256",
        per_arch=True,
        top="jdk-17-jre",
        files={"bin/java": (0o775, b"#!/bin/sh\nexit 1\n")},
        required="bin/java",
    )
    return hadoop, java


def umask_002_copy(source: Path, dest: Path) -> None:
    """`source` as git checks it out under umask 002: directories 775, files 664 or 775."""
    dest.mkdir()
    dest.chmod(0o775)
    for entry in sorted(source.iterdir()):
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            umask_002_copy(entry, dest / entry.name)
        else:
            shutil.copyfile(entry, dest / entry.name)
            executable = entry.stat().st_mode & stat.S_IXUSR
            (dest / entry.name).chmod(0o775 if executable else 0o664)


def checkout(dest: Path, *, without_fix: bool = False) -> Path:
    """The files nox builds from, with ci/hadoop as a umask-002 checkout."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        skip = {"__pycache__", "hadoop"} if Path(folder) == ROOT / "ci" else {"__pycache__"}
        return [name for name in names if name in skip]

    dest.mkdir()
    for name in TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    umask_002_copy(ROOT / "ci" / "hadoop", dest / "ci" / "hadoop")
    assert stat.S_IMODE((dest / "ci/hadoop/files/opt/hadoop/etc").stat().st_mode) == 0o775
    if without_fix:
        dockerfile = dest / "ci" / "hadoop" / "Dockerfile"
        lines = dockerfile.read_text().splitlines(keepends=True)
        fix = [line for line in lines if FIX in line]
        assert len(fix) == 1, f"expected one line with {FIX!r} in the Dockerfile: {fix}"
        dockerfile.write_text("".join(line for line in lines if FIX not in line))
    return dest


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, engine) -> Iterator[dict[str, str]]:
    """Build args that point the downloads at stand-in tarballs served on 127.0.0.1."""
    machine = engine.info()["Architecture"]
    root = tmp_path_factory.mktemp("www")
    with serve(root) as base_url:
        args = {}
        for fetch in _fetches():
            file = root / f"{fetch.name.lower()}.tar.gz"
            make_tarball(file, fetch)
            args[fetch.url_arg(machine)] = f"{base_url}/{file.name}"
            args[fetch.checksum_arg(machine)] = hashlib.new(
                fetch.algorithm, file.read_bytes()
            ).hexdigest()
        yield args


@pytest.fixture(scope="module")
def env(tmp_path_factory, engine) -> Iterator[dict[str, str]]:
    env = nox_env(tmp_path_factory.mktemp("state"))
    # The copy's base image has other labels (no git history): not the tests' tag.
    env.update(DASK_GATEWAY_CI_REGISTRY="ghcr.io", DASK_GATEWAY_CI_OWNER=OWNER)
    yield env
    untag(engine, f"ghcr.io/{OWNER}/dask-gateway-ci-base:latest")


def build_configured(tree: Path, env: dict[str, str], stand_ins: dict[str, str]) -> Run:
    """`nox -s build -- hadoop --target configured` in `tree`, with the stand-ins."""
    options = ["--target", "configured", "--network", "host"]
    for key, value in stand_ins.items():
        options += ["--build-arg", f"{key}={value}"]
    done = subprocess.run(
        [sys.executable, "-m", "nox", "-s", "build", "--", "hadoop", *options],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    print(f"$ nox -s build -- hadoop {' '.join(options)}  -> {done.returncode}")
    print(done.stdout[-6000:])
    return Run(done.returncode, done.stdout)


@pytest.mark.docker
def test_umask_002_checkout_builds_with_container_executor_setup_right(
    engine, env, stand_ins, tmp_path
):
    run = build_configured(checkout(tmp_path / "checkout"), env, stand_ins)
    assert run.returncode == 0, run.output[-3000:]
    assert f"stand-in container-executor: --checksetup passed for {CFG}" in run.output
    match = BUILT.search(run.output)
    assert match, run.output[-3000:]
    parents = [CFG, *(str(p) for p in Path(CFG).parents if str(p) != "/")]
    listing = run_in(engine, match.group(1), f"stat -c '%u %a %n' {' '.join(parents)}")
    modes = {line.split()[2]: line.split()[:2] for line in listing.splitlines()}
    assert sorted(modes) == sorted(parents), listing
    for path, (owner, mode) in modes.items():
        assert owner == "0", f"{path} is owned by uid {owner}"
        assert not int(mode, 8) & 0o022, f"{path} is {mode}: group/other-writable"
    scripts = run_in(engine, match.group(1), "stat -c '%a' /usr/local/bin/hadoop-ci-run")
    assert scripts == "755"


@pytest.mark.docker
def test_without_the_fix_the_check_fails_as_the_real_one_did(engine, env, stand_ins, tmp_path):
    """The negative control: the same checkout, without the Dockerfile's fix.

    Through nox it still builds: the tool sends a build context with the
    umask taken out (scripts/images.py, context_archive). A plain `docker
    build` of the same folder sends the checkout's modes, and without the fix
    the check fails the way the real binary did: the fix is for such builds.
    """
    tree = checkout(tmp_path / "checkout", without_fix=True)
    run = build_configured(tree, env, stand_ins)
    assert run.returncode == 0, run.output[-3000:]
    match = BUILT.search(run.output)
    assert match, run.output[-3000:]

    base = engine.images.get(f"ghcr.io/{OWNER}/dask-gateway-ci-base:latest").id
    output = []
    for entry in engine.api.build(
        path=str(tree / "ci" / "hadoop"),
        buildargs={**stand_ins, "BASE_IMAGE": base},
        target="configured",
        network_mode="host",
        rm=True,
        forcerm=True,
        decode=True,
    ):
        output.append(str(entry.get("stream") or entry.get("error") or ""))
    text = "".join(output)
    assert "File /opt/hadoop/etc must not be world or group writable, but is 775" in text, text
    assert "returned a non-zero code" in text


def test_checkout_copy_has_git_modes(tmp_path):
    """The copy is what `git clone` gives under umask 002, the premise of the tests above."""
    tree = checkout(tmp_path / "checkout")
    hadoop = tree / "ci" / "hadoop"
    for path in [hadoop, *hadoop.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        source = ROOT / "ci" / "hadoop" / path.relative_to(hadoop)
        if path.is_dir() or os.access(source, os.X_OK):
            assert mode == 0o775, path
        else:
            assert mode == 0o664, path
    assert (tree / "ci" / "base" / "Dockerfile").read_bytes() == (
        ROOT / "ci" / "base" / "Dockerfile"
    ).read_bytes()


# -- the declarations and the Dockerfile (no engine needed) ------------------------


def _runs(stage: str) -> list[str]:
    return [i.value for i in stages(HADOOP / "Dockerfile")[stage] if i.keyword == "RUN"]


def test_conformance_suite_imports_skein_plainly():
    for path in DECLARED.conformance_dir.glob("test_*.py"):
        assert "importorskip" not in path.read_text(), path
    text = (DECLARED.conformance_dir / "test_hadoop_contract.py").read_text()
    assert "\n    import skein\n" in text


def test_skein_application_is_a_smoke_check_as_dask():
    (check,) = [c for c in DECLARED.smoke if "skein.Client(" in shlex.join(c.command)]
    assert check.user == "dask"
    script = check.command[-1]
    assert 'principal="dask"' in script and 'keytab="/home/dask/dask.keytab"' in script
    assert "importorskip" not in script
    assert check.matches(0, "application_1_0001 state=FINISHED final_status=SUCCEEDED user=dask")
    assert not check.matches(0, "application_1_0001 state=FINISHED final_status=FAILED user=dask")


def test_install_adds_the_yarn_extra_and_fails_without_skein():
    source = [list(c) for c in GATEWAY.install]
    extra = source.index(["pip", "install", "dask-gateway-server[yarn]", "setuptools"])
    assert source.index(["pip", "install", "-r", "tests/requirements.txt"]) < extra
    assert source[extra + 1] == ["python", "-c", "import skein"]


def test_yarn_tests_must_run():
    assert "tests/test_yarn_backend.py" in GATEWAY.must_run


def test_skein_is_in_the_image_pinned_and_imported_in_the_same_step():
    (run,) = [r for r in _runs("#3") if "skein==" in r]
    for pin in ("skein==", "setuptools==", "protobuf==3.20."):
        assert pin in run, pin  # protobuf<3.21: dask-gateway-server's [yarn] extra
    assert run.index("pip install") < run.index("import skein")


def test_container_executor_modes_are_fixed_in_the_checksetup_step():
    (run,) = [r for r in _runs("configured") if "--checksetup" in r]
    assert run.index(FIX) < run.index("--checksetup")


def test_downloads_are_per_architecture_and_others_are_refused():
    defaults = arg_defaults("hadoop")
    for name, algorithm in (("HADOOP", "SHA512"), ("TEMURIN", "SHA256")):
        for prefix in (name, f"{name}_AARCH64"):
            assert defaults[f"{prefix}_URL"].startswith("https://"), prefix
            digits = 128 if algorithm == "SHA512" else 64
            assert re.fullmatch(f"[0-9a-f]{{{digits}}}", defaults[f"{prefix}_{algorithm}"])
    assert "aarch64" in defaults["HADOOP_AARCH64_URL"]
    assert "aarch64" in defaults["TEMURIN_AARCH64_URL"]
    first = _runs("download")[0]
    assert 'case "$arch" in' in first and "amd64)" in first and "arm64)" in first
    assert re.search(r"\*\) echo [^;]*>&2; exit 1 ;;", first)


def test_yarn_container_logs_are_printed():
    root = ET.parse(HADOOP / "files/opt/hadoop/etc/hadoop/yarn-site.xml").getroot()
    props = {p.findtext("name"): p.findtext("value") for p in root.iter("property")}
    log_dir = props["yarn.nodemanager.log-dirs"]
    assert f"{log_dir}/application_*/container_*/*" in DECLARED.log_files
    # Aggregation to HDFS deletes them from there, after this delay.
    assert int(props["yarn.nodemanager.delete.debug-delay-sec"]) >= 600


def test_java_is_17_as_hadoop_requires_of_its_daemons():
    env = [i.value for i in instructions(HADOOP / "Dockerfile") if i.keyword == "ENV"]
    assert any("JAVA_HOME=/opt/java" in e for e in env)
    assert "temurin17-binaries" in arg_defaults("hadoop")["TEMURIN_URL"]
    assert "openjdk-21" not in (HADOOP / "Dockerfile").read_text()
