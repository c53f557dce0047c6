"""The GitHub workflows call only sessions that exist, and follow the house rules.

The workflows are read as text (PyYAML is not a dependency). The parsing
relies on the layout the files use: two-space indentation, jobs under
`jobs:`, steps as `- ` items under `steps:`, one `nox -s` call per line.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from scripts import steps as steps_registry
from scripts.backends import load_all

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.y*ml"))
STEPS = tuple(steps_registry.STEPS)
SERVICES = tuple(name for name, b in load_all().items() if b.runs_services)

NOX_CALL = re.compile(r"\bnox\s+-s\s+(?P<rest>[^\n]*)")
# Where the session names of one call end: pass-through args, or the next command.
CALL_END = re.compile(r"\s(?:--|&&|\|\||;|\|)(?:\s|$)")
MATRIX_PLACEHOLDER = re.compile(r"\$\{\{\s*matrix\.(\w+)\s*\}\}")
ENV_FROM_MATRIX = re.compile(r"^\s*(\w+):\s*\$\{\{\s*matrix\.(\w+)\s*\}\}\s*$", re.M)
SHELL_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# A word of a command line; `${{ ... }}` counts as one, spaces and all.
TOKEN = re.compile(r"(?:\$\{\{.*?\}\}|\S)+")
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def _matrix_values(text: str) -> dict[str, list[str]]:
    """`key: [a, b]` entries under every `matrix:` of the file."""
    values: dict[str, list[str]] = {}
    for match in re.finditer(r"^(\s*)matrix:\s*\n((?:\1\s+\w+:\s*\[[^\]]*\]\s*\n)+)", text, re.M):
        for key, items in re.findall(r"(\w+):\s*\[([^\]]*)\]", match.group(2)):
            found = [item.strip().strip("\"'") for item in items.split(",") if item.strip()]
            values.setdefault(key, []).extend(v for v in found if v not in values.get(key, []))
    return values


def _expand(name: str, text: str) -> list[str]:
    """Every session name `name` stands for, its matrix placeholders filled in."""
    matrix = _matrix_values(text)
    env = dict(ENV_FROM_MATRIX.findall(text))
    keys: list[str] = []

    def placeholder(key: str) -> str:
        if key not in matrix:
            raise AssertionError(f"{name!r} uses matrix.{key}, which no matrix defines")
        keys.append(key)
        return "{" + str(len(keys) - 1) + "}"

    def variable(match: re.Match) -> str:
        var = match.group(1) or match.group(2)
        if var not in env:
            raise AssertionError(f"{name!r} uses ${var}, which is not set from the matrix")
        return placeholder(env[var])

    template = MATRIX_PLACEHOLDER.sub(lambda m: placeholder(m.group(1)), name)
    template = SHELL_VARIABLE.sub(variable, template)
    return [template.format(*combo) for combo in itertools.product(*(matrix[k] for k in keys))]


def nox_calls(text: str, workflow: str | None = None) -> list[str]:
    """The session names of every `nox -s` call in `text`, matrix expansions included.

    `workflow` is the whole file when `text` is a part of it (its matrix and env).
    """
    names: list[str] = []
    for line in _code_lines(text):
        for match in NOX_CALL.finditer(line):
            sessions = CALL_END.split(match["rest"], maxsplit=1)[0]
            for token in TOKEN.findall(sessions):
                names.extend(_expand(token.strip("\"'"), workflow or text))
    return names


def jobs(text: str) -> dict[str, str]:
    """Each job's text, by job id."""
    match = re.search(r"^jobs:\s*\n((?:[ \t].*\n|\s*\n)*)", text, re.M)
    assert match, "no jobs: section"
    parts = re.split(r"^  ([\w-]+):\s*$", match.group(1), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def steps(job: str) -> list[str]:
    match = re.search(r"^    steps:\s*\n(.*)", job, re.M | re.S)
    assert match, "job without steps"
    return re.split(r"^      - ", match.group(1), flags=re.M)[1:]


def all_steps() -> list[tuple[str, str, Path]]:
    return [
        (f"{path.name}:{job_id}[{index}]", step, path)
        for path in WORKFLOWS
        for job_id, job in jobs(path.read_text()).items()
        for index, step in enumerate(steps(job))
    ]


@cache
def session_names() -> frozenset[str]:
    # `--json` lists only the selected sessions; `-k True` selects every one.
    result = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "--json", "-k", "True"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return frozenset(entry["session"] for entry in json.loads(result.stdout))


def _called() -> list[tuple[str, str]]:
    return sorted({(path.name, name) for path in WORKFLOWS for name in nox_calls(path.read_text())})


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"images.yaml", "test.yaml"}


@pytest.mark.parametrize(("workflow", "name"), _called(), ids=lambda v: v)
def test_called_session_exists(workflow, name):
    if name in session_names():
        return
    step, _, backend = name.rpartition("-")
    if step in STEPS and not (ROOT / "ci" / backend / "backend.toml").exists():
        pytest.skip(f"{workflow} calls {name}, but backend {backend!r} is not declared yet")
    pytest.fail(f"{workflow} calls `nox -s {name}`, which `nox -l` does not list")


def test_images_workflow_calls():
    called = {name for wf, name in _called() if wf == "images.yaml"}
    expected = {"build-base", "verify-base", "push-base", "tag-dated-base"}
    for backend in SERVICES:
        expected |= {f"{step}-{backend}" for step in ("build", "verify", "push", "tag-dated")}
    assert expected <= called
    text = (WORKFLOW_DIR / "images.yaml").read_text()
    # The base travels as a file: saved and loaded by the build sessions.
    assert re.search(r"nox -s build-base -- --save \S+base\.tar", text)
    assert re.search(r'nox -s "build-\$\{BACKEND\}" -- --load-parent \S+base\.tar', text)
    runs = [line for line in text.splitlines() if line.strip().startswith(("run:", "- run:"))]
    assert not [line for line in runs if "docker save" in line or "docker load" in line]


def test_test_workflow_calls():
    called = {name for wf, name in _called() if wf == "test.yaml"}
    expected = {"tests", "lint"}
    for backend in SERVICES:
        steps = ("build", "start", "install", "test", "print-logs", "stop")
        expected |= {f"{step}-{backend}" for step in steps}
    assert expected <= called


def test_call_parsing():
    text = (
        "    strategy:\n      matrix:\n        backend: [a, b]\n"
        "    env:\n      BACKEND: ${{ matrix.backend }}\n"
        "      - run: nox -s build-base verify-base\n"
        '      - run: nox -s "start-${BACKEND}" -- --source x\n'
        "      - run: nox -s stop-${{ matrix.backend }} && echo nox\n"
        "      # nox -s not-a-call (a comment)\n"
    )
    assert nox_calls(text) == [
        "build-base",
        "verify-base",
        "start-a",
        "start-b",
        "stop-a",
        "stop-b",
    ]
    with pytest.raises(AssertionError, match="UNSET"):
        nox_calls("run: nox -s build-${UNSET}\n")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_has_a_timeout(path):
    found = jobs(path.read_text())
    assert found
    for job_id, job in found.items():
        assert re.search(r"^    timeout-minutes:\s*\d+\s*$", job, re.M), f"{job_id}: no timeout"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_has_concurrency_and_least_privilege(path):
    text = path.read_text()
    assert re.search(r"^concurrency:\s*\n\s+group:\s*\S+", text, re.M)
    assert re.search(r"^permissions:\s*(\{\}|\n\s+contents:\s*read)", text, re.M)
    assert "pull_request_target" not in text
    for job_id, job in jobs(text).items():
        assert re.search(r"^    permissions:", job, re.M), f"{job_id}: no permissions"
        pushes = any(
            n.startswith(("push", "tag-dated"))
            for step in steps(job)
            for n in nox_calls(step, text)
        )
        assert ("packages: write" in job) == pushes, f"{job_id}: packages: write iff it pushes"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_pinned_to_a_commit(path):
    uses = re.findall(r"^\s*(?:- )?uses:\s*(\S+)(.*)$", path.read_text(), re.M)
    assert uses
    for action, comment in uses:
        assert PINNED.match(action), f"{action} is not pinned to a full commit SHA"
        assert re.match(r"\s+#\s*v\d", comment), f"{action}: no version comment"


@pytest.mark.parametrize(
    ("where", "step", "path"), all_steps(), ids=[where for where, _, _ in all_steps()]
)
def test_step_rules(where, step, path):
    names = nox_calls(step, path.read_text())
    if "actions/checkout@" in step:
        assert re.search(r"persist-credentials:\s*false", step), f"{where}: checkout persists"
    if any(n.startswith(("print-logs", "stop")) for n in names):
        assert re.search(r"^\s+if:\s*always\(\)\s*$", step, re.M), f"{where}: needs always()"
    if any(n.startswith(("push", "tag-dated")) for n in names):
        assert re.search(r"^\s+if:.*refs/heads/main", step, re.M), f"{where}: main only"
        assert "GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}" in step
    run = re.search(r"^\s*run:(.*(?:\n\s{10,}.*)*)", step, re.M)
    if run:
        assert "${{" not in run.group(1), f"{where}: template expansion in run:"
