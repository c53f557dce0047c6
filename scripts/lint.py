"""The linters of the `lint` session, over every file kind the project has."""

from __future__ import annotations

from .project import CI_DIR, ROOT, STAND_INS, WORKFLOW_DIR


def shell_scripts() -> list[str]:
    """Every tracked-looking shell script: .ci/run and .ci/*.sh, ci/'s *.sh and shebangs."""
    found = {ROOT / ".ci" / "run", *(ROOT / ".ci").glob("*.sh")}
    for path in CI_DIR.rglob("*"):
        if not path.is_file() or "conformance" in path.parts:
            continue
        if path.suffix == ".sh":
            found.add(path)
            continue
        try:
            first = path.open("rb").readline()
        except OSError:
            continue
        if first.startswith(b"#!") and (b"sh" in first.split(b"/")[-1]):
            found.add(path)
    return sorted(str(p.relative_to(ROOT)) for p in found if p.exists())


def run_linters(session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    dockerfiles = sorted(str(p.relative_to(ROOT)) for p in CI_DIR.glob("*/Dockerfile"))
    session.run("hadolint", *dockerfiles)
    session.run("shellcheck", *shell_scripts())
    workflows = sorted(str(p.relative_to(ROOT)) for p in WORKFLOW_DIR.glob("*.y*ml"))
    actions = sorted(str(p.relative_to(ROOT)) for p in STAND_INS.glob("*/action.yml"))
    if workflows:
        session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
    if actions:
        session.run("check-jsonschema", "--builtin-schema", "vendor.github-actions", *actions)
    if workflows or actions:
        session.run("zizmor", "--offline", *workflows, *actions)
