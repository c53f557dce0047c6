"""IMAGE-CONTRACT.md: every requirement names a check, and every named check exists."""

from __future__ import annotations

import re

import pytest

from scripts.backends import load_all
from tests.nox_runner import ROOT

CONTRACT = ROOT / "IMAGE-CONTRACT.md"
ALL = load_all()
CONFORMANCE = re.compile(r"`(\w+)::(test_\w+)`")
PROJECT_TEST = re.compile(r"`(tests/\w+\.py)::(test_\w+)`")
DECLARED = re.compile(r"`(ready|smoke) (\w+): ([^`]+)`")


def requirements() -> list[str]:
    """Each bullet under the contract's sections, continuation lines joined."""
    items: list[str] = []
    text = CONTRACT.read_text()
    for line in text[text.index("\n## ") :].splitlines():
        if line.startswith("- "):
            items.append(line[2:])
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def defined_tests(path) -> set[str]:
    return set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))


def test_every_requirement_names_a_check():
    found = requirements()
    assert len(found) >= 50
    for item in found:
        assert "—" in item, f"names no check: {item[:80]}"
        checks = item.rsplit("—", 1)[1]
        named = (
            CONFORMANCE.findall(checks) + PROJECT_TEST.findall(checks) + DECLARED.findall(checks)
        )
        assert named, f"names no check: {item[:80]}"


@pytest.mark.parametrize(
    ("backend", "test"), sorted(set(CONFORMANCE.findall(CONTRACT.read_text())))
)
def test_named_conformance_test_exists(backend, test):
    tests = set()
    for path in ALL[backend].conformance_dir.glob("test_*.py"):
        tests |= defined_tests(path)
    assert test in tests


@pytest.mark.parametrize(("path", "test"), sorted(set(PROJECT_TEST.findall(CONTRACT.read_text()))))
def test_named_project_test_exists(path, test):
    assert test in defined_tests(ROOT / path)


@pytest.mark.parametrize(
    ("kind", "backend", "name"), sorted(set(DECLARED.findall(CONTRACT.read_text())))
)
def test_named_declared_check_exists(kind, backend, name):
    checks = ALL[backend].ready_checks if kind == "ready" else ALL[backend].smoke
    assert name in {check.name for check in checks}


def test_every_service_backend_has_a_section():
    text = CONTRACT.read_text()
    for name, backend in ALL.items():
        if backend.runs_services:
            assert re.search(rf"^## {name}\b", text, re.M), name
    assert "## Drop-in for upstream's scripts" in text
