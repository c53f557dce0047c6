"""Where this checkout is: the one place that knows the repository layout."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI_DIR = ROOT / "ci"
WORKFLOW_DIR = ROOT / ".github" / "workflows"
STAND_INS = ROOT / ".github" / "stand-ins"  # our actions for local runs (scripts/workflows.py)
