"""The backend declarations against IMAGE-CONTRACT.md, and the declaration parser itself.

No Docker: this reads ci/*/backend.toml through scripts.backends and the
Dockerfiles as text.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from scripts import backends, consumers
from scripts.dockerfile import all_arg_defaults, arg_defaults, instructions, stage_names, stages
from scripts.errors import DeclarationError, UserError
from tests.dockerfiles import env_values

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "ci"
ALL = backends.load_all()
# dask-gateway's install and test commands per backend (consumers/dask-gateway.toml).
GATEWAY = consumers.load_all(ALL)["dask-gateway"].uses
# Every backend that runs services, from the declarations; the contract below
# must cover each of them.
SERVICES = tuple(name for name, backend in ALL.items() if backend.runs_services)
# The backends dask-gateway's tests run in (consumers/dask-gateway.toml); the
# others are for dask-jobqueue only.
FOR_GATEWAY = tuple(name for name in SERVICES if name in GATEWAY)

# IMAGE-CONTRACT.md, per backend.
CONTRACT = {
    "slurm": {
        "hostname": "slurm",
        "env": "TEST_DASK_GATEWAY_SLURM",
        "install": [["pip", "install", "-r", "tests/requirements.txt"]],
        "test": "pytest -v tests/test_slurm_backend.py",
    },
    "pbs": {
        "hostname": "pbs",
        "env": "TEST_DASK_GATEWAY_PBS",
        "install": [["pip", "install", "-r", "tests/requirements.txt"]],
        "test": "pytest -v tests/test_pbs_backend.py",
    },
    "hadoop": {
        "hostname": "master.example.com",
        "env": "TEST_DASK_GATEWAY_YARN",
        "install": [
            ["pip", "install", "-r", "tests/requirements.txt"],
            ["pip", "install", "pykerberos"],
        ],
        "test": "pytest -v tests/test_yarn_backend.py tests/test_auth.py -k 'yarn or kerberos'",
    },
    "sge": {"hostname": "sge"},
    "htcondor": {"hostname": "htcondor"},
}

# The downloads: (version arg, URL arg, checksum arg) per backend with one.
DOWNLOADS = {
    "hadoop": ("HADOOP_VERSION", "HADOOP_URL", "HADOOP_SHA512"),
    "pbs": ("OPENPBS_VERSION", "OPENPBS_URL", "OPENPBS_SHA512"),
}


def test_dockerfile_reader_joins_continuations_and_drops_comments(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "ARG A=1\n"
        "FROM x AS one\n"
        "# a comment\n"
        "ENV B=2 \\\n"
        "    # comment inside\n"
        '    C="three words"\n'
        "FROM one\n"
        "RUN true\n"
    )
    found = stages(path)
    assert list(found) == ["", "one", "#2"]
    assert arg_defaults(found[""]) == {"A": "1"}
    assert env_values(path) == {"B": "2", "C": "three words"}
    assert found["#2"][1].keyword == "RUN"
    assert stage_names(path) == ["one"]
    assert [i.keyword for i in instructions(path)] == ["ARG", "FROM", "ENV", "FROM", "RUN"]


# -- the real declarations against the contract --------------------------------------


def test_every_service_backend_is_in_the_contract():
    assert set(SERVICES) == set(CONTRACT)
    assert ALL["base"].kind == backends.IMAGE


@pytest.mark.parametrize("name", SERVICES)
def test_hostname(name):
    assert ALL[name].hostname == CONTRACT[name]["hostname"]


@pytest.mark.parametrize("name", SERVICES)
def test_ports_are_exactly_the_contracts(name):
    """dask-gateway's (its server, scheduler and proxy); dask-jobqueue's tests need none."""
    assert ALL[name].ports == ((8000, 8786, 8088) if name in FOR_GATEWAY else ())


def test_pbs_wants_sys_resource_but_does_not_need_it():
    """PBS raises its limits with it where granted; every test passes without it."""
    assert ALL["pbs"].wanted_capabilities == ("SYS_RESOURCE",)
    assert "SYS_RESOURCE" not in ALL["pbs"].needed_capabilities


@pytest.mark.parametrize("name", SERVICES)
def test_parent_is_base(name):
    assert ALL[name].parent == "base"
    assert [b.name for b in backends.ancestors(ALL, name)] == ["base"]


@pytest.mark.parametrize("name", FOR_GATEWAY)
def test_install_from_source(name):
    declared = [list(command) for command in GATEWAY[name].install]
    expected = CONTRACT[name]["install"]
    assert declared[0] == ["pip", "install", "-r", "tests/requirements.txt"]
    assert declared[: len(expected)] == expected


def test_hadoop_installs_pykerberos():
    assert ("pip", "install", "pykerberos") in GATEWAY["hadoop"].install


@pytest.mark.parametrize("name", SERVICES)
def test_conformance_install_has_pytest(name):
    """Without a source checkout, `test` runs the conformance tests with pytest."""
    assert any("pytest" in command for command in ALL[name].install_conformance)


@pytest.mark.parametrize("name", FOR_GATEWAY)
def test_test_commands_are_the_contracts(name):
    assert [list(c) for c in GATEWAY[name].test] == [shlex.split(CONTRACT[name]["test"])]
    assert GATEWAY[name].user == "dask"


def test_hadoop_test_selects_yarn_or_kerberos_as_one_argument():
    (command,) = GATEWAY["hadoop"].test
    assert command[-2:] == ("-k", "yarn or kerberos")


def _checks_text(checks) -> list[str]:
    return [shlex.join(check.command) for check in checks]


@pytest.mark.parametrize("name", SERVICES)
def test_ready_checks_are_declared_and_valid(name):
    backend = ALL[name]
    assert backend.ready_checks, f"{name} declares no readiness check"
    assert backend.ready_timeout > 0
    names = [check.name for check in backend.ready_checks]
    assert len(names) == len(set(names)), f"duplicate check names: {names}"
    for check in backend.ready_checks:
        assert check.timeout > 0


def test_slurm_ready_means_controller_up_and_a_job_runs():
    checks = ALL["slurm"].ready_checks
    ping = [c for c in checks if c.command[:2] == ("scontrol", "ping")]
    assert ping, _checks_text(checks)
    assert ping[0].expect and re.search(ping[0].expect, "Slurmctld(primary) at slurm is UP")
    assert not re.search(ping[0].expect, "Slurmctld(primary) at slurm is DOWN")
    assert any(c.command[0] in ("srun", "sbatch") for c in checks), _checks_text(checks)


def test_slurm_ready_waits_for_the_node_to_register_before_its_job():
    # A job sent while the node is UNKNOWN is queued until slurmctld's next
    # scheduling pass (seconds): the registration check comes first.
    checks = ALL["slurm"].ready_checks
    commands = [c.command[0] for c in checks]
    registered = [c for c in checks if c.command[0] == "sinfo"]
    assert registered, _checks_text(checks)
    assert commands.index("sinfo") < commands.index("srun"), _checks_text(checks)
    check = registered[0]
    for state in ("idle", "mixed", "allocated"):
        assert check.matches(0, f"{state}\n"), state
    for state in ("unknown", "idle*", "down*", "unknown*", "drained"):
        assert not check.matches(0, f"{state}\n"), state
    (job,) = [c for c in checks if c.command[0] == "srun"]
    # Allocated at once or failed (and polled again), never left queued.
    assert "--immediate" in job.command, job.command


def test_pbs_ready_means_the_server_answers_qstat_b():
    checks = ALL["pbs"].ready_checks
    qstat = [c for c in checks if c.command[0].endswith("qstat") and "-B" in c.command]
    assert qstat, _checks_text(checks)
    assert qstat[0].expect
    answer = (
        "Server             Max   Tot   Que   Run   Hld   Wat   Trn   Ext Status\n"
        "---------------- ----- ----- ----- ----- ----- ----- ----- ----- -----------\n"
        "pbs                  0     0     0     0     0     0     0     0 Active\n"
    )
    assert qstat[0].matches(0, answer)
    assert not qstat[0].matches(1, answer)


def test_hadoop_ready_means_a_running_yarn_node():
    checks = ALL["hadoop"].ready_checks
    nodes = [c for c in checks if "yarn node -list" in shlex.join(c.command)]
    assert nodes, _checks_text(checks)
    check = nodes[0]
    assert check.expect and "RUNNING" in check.expect
    listing = (
        "Total Nodes:1\n"
        "         Node-Id\t     Node-State\tNode-Http-Address\tNumber-of-Running-Containers\n"
        "master.example.com:45454\t        RUNNING\tmaster.example.com:8042\t0\n"
    )
    assert check.matches(0, listing)
    assert not check.matches(0, listing.replace("RUNNING", "UNHEALTHY"))
    assert not check.matches(0, "Total Nodes:0\n")


@pytest.mark.parametrize("name", SERVICES)
def test_smoke_checks_exist(name):
    assert ALL[name].smoke, f"{name} declares no smoke check"


@pytest.mark.parametrize(("name", "submit"), [("slurm", "sbatch"), ("pbs", "qsub")])
def test_smoke_submits_a_job_as_alice(name, submit):
    as_alice = [c for c in ALL[name].smoke if c.user == "alice"]
    assert any(submit in shlex.join(c.command) for c in as_alice), [
        (c.user, c.name) for c in ALL[name].smoke
    ]
    for check in as_alice:
        assert check.expect and "alice" in check.expect


@pytest.mark.parametrize("name", SERVICES)
def test_logs_are_declared(name):
    backend = ALL[name]
    assert backend.log_status, f"{name}: logs.status is missing"
    assert backend.log_files, f"{name}: logs.files is empty"
    for path in backend.log_files:
        assert path.startswith("/"), path


@pytest.mark.parametrize("name", ["slurm", "pbs", "sge", "htcondor"])
def test_print_logs_shows_the_schedulers_record_of_its_jobs(name):
    """A job that hung or failed is in the scheduler's record after it left the queue."""
    commands = [command[0].rpartition("/")[2] for command in ALL[name].log_jobs]
    finished = {"slurm": "sacct", "pbs": "qstat", "sge": "qacct", "htcondor": "condor_history"}
    assert finished[name] in commands


@pytest.mark.parametrize("name", FOR_GATEWAY)
def test_dockerfile_sets_the_contract_environment(name):
    env = env_values(CI / name / "Dockerfile")
    assert env.get(CONTRACT[name]["env"]) == "true", sorted(env)


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_builds_from_the_base_image_argument(name):
    """Every stage starts from the parent (BASE_IMAGE), the family's external image
    (DEBIAN_IMAGE, defaulting to the parent), or another stage; the image from BASE_IMAGE."""
    found = stages(CI / name / "Dockerfile")
    defaults = arg_defaults(found[""])
    assert "BASE_IMAGE" in defaults
    if "DEBIAN_IMAGE" in defaults:  # never a registry's image, whatever the tooling passes
        assert defaults["DEBIAN_IMAGE"] == "${BASE_IMAGE}"
    local = set(found) - {""}
    for stage, items in found.items():
        if stage:
            image = items[0].value.split()[0]
            assert image in ("${BASE_IMAGE}", "${DEBIAN_IMAGE}") or image in local, (stage, image)
    last = list(found.values())[-1][0].value.split()[0]
    assert last == "${BASE_IMAGE}" or last in local


@pytest.mark.parametrize("name", SERVICES)
def test_image_ends_with_start_services(name):
    """supervisord, woken at once (ci/base/files/usr/local/bin/start-services), or a
    script of the image that checks something first and then execs it."""
    last_cmd = [i for i in instructions(CI / name / "Dockerfile") if i.keyword == "CMD"][-1]
    (program,) = json.loads(last_cmd.value)
    if program != "start-services":
        (script,) = (CI / name / "files").glob(f"usr/local/*bin/{program}")
        assert script.read_text().rstrip().splitlines()[-1] == 'exec start-services "$@"'


@pytest.mark.parametrize("name", [*SERVICES, "base"])
def test_conformance_tests_exist(name):
    folder = ALL[name].conformance_dir
    assert folder.is_dir()
    assert sorted(folder.glob("test_*.py")), f"no test_*.py in {folder}"


def test_base_builds_from_its_declared_external_image():
    """Every Dockerfile, base included, builds FROM the BASE_IMAGE the tooling passes."""
    found = stages(CI / "base" / "Dockerfile")
    assert arg_defaults(found[""]) == {"BASE_IMAGE": None}  # no default: nothing is pulled
    # Every stage (ssl: the fixed _ssl module; then the image) from it.
    assert [items[0].value.split()[0] for name, items in found.items() if name] == [
        "${BASE_IMAGE}",
        "${BASE_IMAGE}",
    ]
    assert ALL["base"].parent is None
    assert ALL["base"].base_image == "debian:trixie-slim"
    assert [name for name, b in ALL.items() if b.parent is None] == ["base"]


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_dockerfile_defaults_its_parent_to_a_registry_image(name):
    assert arg_defaults(stages(CI / name / "Dockerfile")[""]).get("BASE_IMAGE") is None


# -- downloads: build args and the `download` stage -----------------------------------


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_download_args_have_non_empty_defaults(name):
    defaults = all_arg_defaults(CI / name / "Dockerfile")
    version, url, checksum = DOWNLOADS[name]
    assert defaults.get(version), defaults
    assert defaults.get(url, "").startswith("https://"), defaults.get(url)
    assert "${" not in defaults[url]
    assert defaults[version] in defaults[url]
    assert re.fullmatch(r"[0-9a-f]{128}", defaults.get(checksum, "")), "not a SHA-512"


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_build_arg_has_one_source(name):
    """A default lives in the Dockerfile's ARG or in backend.toml, never in both."""
    in_dockerfile = all_arg_defaults(CI / name / "Dockerfile")
    assert not set(ALL[name].build_args) & set(in_dockerfile), sorted(in_dockerfile)


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_download_stage_declares_and_uses_its_args(name):
    found = stages(CI / name / "Dockerfile")
    assert "download" in found, f"{name}: no stage named download"
    stage = found["download"]
    assert stage[0].value.split()[0] == "${BASE_IMAGE}"
    declared = arg_defaults(stage)
    runs = " ".join(i.value for i in stage if i.keyword == "RUN")
    version, url, checksum = DOWNLOADS[name]
    # An ARG before the first FROM is not visible in a stage until declared there.
    for arg in (version, url, checksum):
        assert arg in declared, f"{name}: ARG {arg} is not declared in the download stage"
    for arg in set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", runs)):
        assert arg in declared, f"{name}: download stage uses ${arg}, not declared there"
    assert f'fetch-verified "${url}" "sha512:${checksum}"' in runs
    assert f"--url-arg {url}" in runs


# fetch-verified "$URL_ARG" "ALGO:$CHECKSUM_ARG" DEST --url-arg URL_ARG, as the Dockerfiles call it.
FETCH = re.compile(r'fetch-verified "\$(\w+)" "(sha256|sha512):\$(\w+)" \S+ --url-arg (\w+)')


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_download_of_the_dockerfile_is_declared(name):
    """What `build --sources` offers is what the build fetches: no call undeclared, none extra."""
    runs = " ".join(i.value for i in instructions(CI / name / "Dockerfile") if i.keyword == "RUN")
    calls = FETCH.findall(runs)
    assert len(calls) == runs.count("fetch-verified "), f"{name}: a call not written as FETCH"
    assert all(url == url_arg for url, _, _, url_arg in calls), calls
    fetched = {(url, algorithm, checksum) for url, algorithm, checksum, _ in calls}
    declared = {(d.url, d.algorithm, d.checksum) for d in ALL[name].downloads}
    assert fetched == declared


@pytest.mark.parametrize("name", sorted(DOWNLOADS))
def test_download_stage_is_first_so_a_bad_url_fails_before_anything_else(name):
    named = [stage for stage in stages(CI / name / "Dockerfile") if stage]
    assert named[0] == "download"


# -- the parser: malformed declarations ----------------------------------------------

CHILD = 'description = "base"\nimage = "img-base"\nkind = "image"\n'
GOOD_BASE = CHILD + 'from = "debian:trixie-slim"\n'


def write_backend(ci: Path, name: str, text: str) -> Path:
    folder = ci / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "backend.toml"
    path.write_text(text)
    return path


def load_error(ci: Path) -> str:
    with pytest.raises(DeclarationError) as error:
        backends.load_all(ci)
    message = str(error.value)
    assert "\n" not in message
    return message


CHECK = '[[ready.checks]]\nname = "x"\n'
MALFORMED = {
    "no-description": ('image = "img"\nfrom = "d"\n', "'description' (a string) is required"),
    "no-image": ('description = "d"\nfrom = "d"\n', "'image' (a string) is required"),
    "description-not-a-string": (
        "description = 3\nimage = 'img'\n",
        "description: expected a string, got 3",
    ),
    "no-parent-or-from": ('description = "d"\nimage = "i"\n', "either 'parent'"),
    "bad-kind": (
        'description = "d"\nimage = "i"\nfrom = "x"\nkind = "vm"\n',
        "kind: expected 'image' or 'services'",
    ),
    "bad-regex": (
        GOOD_BASE + CHECK + 'command = ["true"]\nexpect = "(unclosed"\n',
        "ready.checks[0].expect: not a valid regex",
    ),
    "unknown-check-key": (
        GOOD_BASE + '[[smoke]]\nname = "x"\ncommand = ["true"]\nbogus = 1\n',
        "smoke[0]: unknown key 'bogus'; known keys: name, command, user, expect, timeout",
    ),
    "unknown-top-key": (GOOD_BASE + "colour = 'red'\n", "unknown key 'colour'"),
    "check-without-command": (GOOD_BASE + CHECK, "'command' is required in a check"),
    "command-not-a-list": (
        GOOD_BASE + CHECK + 'command = "true"\n',
        "ready.checks[0].command: expected a list of strings, got 'true'",
    ),
    "build-arg-not-a-string": (
        GOOD_BASE + "[build.args]\nVERSION = 3\n",
        "build.args.VERSION: expected a string, got 3",
    ),
    "download-without-checksum": (
        GOOD_BASE + '[[build.downloads]]\nurl = "X_URL"\n',
        "build.downloads[0]: 'checksum' (a build arg's name) is required",
    ),
    "download-checksum-without-algorithm": (
        GOOD_BASE + '[[build.downloads]]\nurl = "X_URL"\nchecksum = "X_MD5"\n',
        "build.downloads[0].checksum: 'X_MD5' is not a build arg named like NAME_SHA256",
    ),
    "download-file-with-a-folder": (
        GOOD_BASE + '[[build.downloads]]\nurl = "X_URL"\nchecksum = "X_SHA256"\nfile = "a/b"\n',
        "build.downloads[0].file: 'a/b' is not a file name",
    ),
    "download-architecture-typo": (
        GOOD_BASE
        + '[[build.downloads]]\nurl = "X_URL"\nchecksum = "X_SHA256"\narchitecture = "x86"\n',
        "build.downloads[0].architecture: 'x86'; choose from: amd64, arm64",
    ),
    "install-not-a-list": (
        GOOD_BASE + '[install]\nconformance = "pytest"\n',
        "install.conformance: expected a list of commands, each a list of strings",
    ),
    "source-commands-moved": (
        GOOD_BASE + '[test]\nsource = [["pytest"]]\n',
        "unknown key 'test'",
    ),
    "empty-command": (
        GOOD_BASE + "[install]\nconformance = [[]]\n",
        "expected a non-empty command",
    ),
    "empty-log-status": (GOOD_BASE + "[logs]\nstatus = []\n", "expected a non-empty command"),
    "ports-not-numbers": (
        GOOD_BASE + '[run]\nports = ["http"]\n',
        "run.ports[0]: expected a whole number, got 'http'",
    ),
    "port-out-of-range": (GOOD_BASE + "[run]\nports = [70000]\n", "70000 is not a port number"),
    "timeout-as-text": (
        GOOD_BASE + '[ready]\ntimeout = "3 minutes"\n',
        "ready.timeout: expected a number, got '3 minutes'",
    ),
    "run-not-a-table": (GOOD_BASE + "run = 5\n", "run: expected a table, got 5"),
    "capability-typo": (
        GOOD_BASE + '[run.capabilities]\nneeded = ["sys admin"]\n',
        "'sys admin' is not a capability name",
    ),
    "services-without-test": (
        'description = "d"\nimage = "i"\nfrom = "x"\nkind = "services"\n',
        "needs at least one [[ready.checks]]",
    ),
    "invalid-toml": ("description = \n", "not valid TOML"),
}


@pytest.mark.parametrize(("text", "complaint"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_backend_toml_names_the_file(tmp_path, text, complaint):
    path = write_backend(tmp_path, "broken", text)
    message = load_error(tmp_path)
    assert str(path) in message
    assert complaint.lower() in message.lower()


def test_unknown_parent_names_the_file_and_the_parent(tmp_path):
    write_backend(tmp_path, "base", GOOD_BASE)
    path = write_backend(tmp_path, "child", CHILD + 'parent = "nosuch"\n')
    message = load_error(tmp_path)
    assert str(path) in message
    assert "parent 'nosuch' is not a backend" in message


@pytest.mark.parametrize(
    ("parents", "cycle"),
    [
        ({"a": "b", "b": "a"}, "a -> b -> a"),
        ({"a": "a"}, "a -> a"),
        ({"a": "b", "b": "c", "c": "b"}, "b -> c -> b"),
    ],
)
def test_parent_cycle(tmp_path, parents, cycle):
    write_backend(tmp_path, "base", GOOD_BASE)
    for name, parent in parents.items():
        write_backend(tmp_path, name, CHILD + f'parent = "{parent}"\n')
    message = load_error(tmp_path)
    assert message.startswith("parent cycle: ")
    assert cycle in message


def test_load_all_orders_parents_before_children(tmp_path):
    # Names sort against the hierarchy, so alphabetical order would be wrong.
    write_backend(tmp_path, "zroot", GOOD_BASE)
    write_backend(tmp_path, "mid", CHILD + 'parent = "zroot"\n')
    write_backend(tmp_path, "aleaf", CHILD + 'parent = "mid"\n')
    write_backend(tmp_path, "bleaf", CHILD + 'parent = "zroot"\n')
    order = list(backends.load_all(tmp_path))
    assert sorted(order) == ["aleaf", "bleaf", "mid", "zroot"]
    assert order[0] == "zroot"
    assert order.index("mid") < order.index("aleaf")
    loaded = backends.load_all(tmp_path)
    assert [b.name for b in backends.ancestors(loaded, "aleaf")] == ["zroot", "mid"]


def test_real_backends_load_parents_first():
    order = list(ALL)
    assert order[0] == "base"
    for name, backend in ALL.items():
        if backend.parent is not None:
            assert order.index(backend.parent) < order.index(name)


def test_defaults_of_a_minimal_declaration(tmp_path):
    write_backend(tmp_path, "mini", GOOD_BASE)
    mini = backends.load_all(tmp_path)["mini"]
    assert mini.hostname == "mini"
    assert mini.container_name == "img-base"
    assert mini.ready_timeout == 180.0
    assert not mini.runs_services
    assert mini.base_image == "debian:trixie-slim"
    assert (mini.needed_capabilities, mini.wanted_capabilities) == ((), ())
    assert mini.stop_timeout == 10.0


def test_check_defaults_and_matching(tmp_path):
    write_backend(
        tmp_path,
        "c",
        GOOD_BASE + '[[ready.checks]]\nname = "x"\ncommand = ["true"]\nexpect = "^ok$"\n',
    )
    (check,) = backends.load_all(tmp_path)["c"].ready_checks
    assert check.user == "root"
    assert check.timeout == 60.0
    assert check.matches(0, "first\nok\n")  # multi-line: ^ and $ match at line ends
    assert not check.matches(1, "ok")
    assert not check.matches(0, "not ok")


# -- select --------------------------------------------------------------------------


def test_select_unknown_backend():
    with pytest.raises(UserError) as error:
        backends.select(ALL, ["nosuch"], "build", backends.IMAGE)
    assert str(error.value) == f"unknown backend 'nosuch'; choose from: {', '.join(ALL)}"


def test_select_step_that_does_not_apply():
    with pytest.raises(UserError) as error:
        backends.select(ALL, ["base"], "start", backends.SERVICES)
    assert str(error.value) == (
        f"'start' does not apply to 'base'; choose from: {', '.join(SERVICES)}"
    )


def test_select_without_names():
    with pytest.raises(UserError) as error:
        backends.select(ALL, [], "start", backends.SERVICES)
    assert str(error.value) == (f"'start' needs a backend: nox -s start -- <{'|'.join(SERVICES)}>")


def test_select_keeps_order_and_drops_repeats():
    chosen = backends.select(ALL, ["slurm", "pbs", "slurm"], "build", backends.IMAGE)
    assert [b.name for b in chosen] == ["slurm", "pbs"]
