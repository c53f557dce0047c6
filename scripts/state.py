"""What this machine remembers: the image IDs that passed verify."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from .config import state_dir


def _path() -> Path:
    return state_dir() / "verified.json"


def _load() -> dict[str, dict]:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}


def record_verified(image_id: str, backend: str, seconds: float) -> None:
    entries = _load()
    entries[image_id] = {
        "backend": backend,
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: an interrupted run never leaves a half-written file.
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(entries, indent=2, sort_keys=True))
    temporary.replace(path)


def verification(image_id: str) -> dict | None:
    return _load().get(image_id)
