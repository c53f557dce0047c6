"""What a pytest run executed, from its JUnit XML report (`--junitxml`).

A backend's suite that skipped every test (a missing import, an unset
TEST_DASK_GATEWAY_* variable) exits 0 and tested nothing; the report is how
`test` tells that apart from a pass.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

COLLECTION_SKIP = re.compile(r"Skipped: (.*?)['\"]?\)?$", re.S)


@dataclass
class ModuleRun:
    executed: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def dotted(module_path: str) -> str:
    """tests/test_yarn_backend.py -> tests.test_yarn_backend (pytest's classname)."""
    return module_path.removesuffix(".py").replace("/", ".")


def _reason(skipped: ET.Element) -> str:
    message = skipped.get("message") or ""
    if message == "collection skipped":  # a module-level skip: the reason is in the text
        match = COLLECTION_SKIP.search(skipped.text or "")
        message = match.group(1) if match else message
    return message.removeprefix("Skipped: ").strip()


def per_module(report: str, modules: tuple[str, ...]) -> dict[str, ModuleRun]:
    """For each module path: how many of its tests ran, how many were skipped, and why."""
    runs = {module: ModuleRun() for module in modules}
    for case in ET.fromstring(report).iter("testcase"):
        # A module skipped at collection is a case named after the module.
        owner = case.get("classname") or case.get("name") or ""
        for module, run in runs.items():
            name = dotted(module)
            if owner != name and not owner.startswith(name + "."):
                continue
            skipped = case.find("skipped")
            if skipped is None:
                run.executed += 1
            else:
                run.skipped += 1
                reason = _reason(skipped)
                if reason and reason not in run.reasons:
                    run.reasons.append(reason)
    return runs


def idle_modules(report: str, modules: tuple[str, ...]) -> list[str]:
    """One line for each module that executed no test, with the skip reasons."""
    lines = []
    for module, run in per_module(report, modules).items():
        if run.executed:
            continue
        if run.skipped:
            why = "; ".join(run.reasons) or "no reason given"
            lines.append(f"{module} ran no test ({run.skipped} skipped: {why})")
        else:
            lines.append(f"{module} ran no test (none collected)")
    return lines
