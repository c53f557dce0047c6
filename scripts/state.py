"""What this machine remembers: the image IDs that passed verify."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from .errors import UserError
from .settings import STATE_VARIABLE, XDG_STATE_VARIABLE, Settings


def state_dir(settings: Settings | None = None) -> Path:
    """$DASK_GATEWAY_CI_STATE_DIR, else $XDG_STATE_HOME/dask-gateway-ci (the run's settings).

    Without settings, from os.environ: for capabilities' cache of refusals,
    kept where containers start, which no run's settings reach (benchmarks and
    tests start containers too).
    """
    if settings is None:
        settings = Settings(
            state_dir=os.environ.get(STATE_VARIABLE, ""),
            xdg_state_home=os.environ.get(XDG_STATE_VARIABLE, ""),
        )
    if settings.state_dir:
        return Path(settings.state_dir)
    base = settings.xdg_state_home or str(Path.home() / ".local" / "state")
    return Path(base) / "dask-gateway-ci"


def _folder(settings: Settings) -> Path:
    return state_dir(settings) / "verified"


def _record_path(settings: Settings, image_id: str) -> Path:
    return _folder(settings) / (image_id.replace(":", "-") + ".json")


def _load_legacy(settings: Settings) -> dict[str, dict]:
    """Records of the single-file layout (before one file per image), still honoured."""
    try:
        return json.loads((state_dir(settings) / "verified.json").read_text())
    except (OSError, ValueError):
        return {}


def _unwritable(path: Path, reason: str) -> UserError:
    return UserError(
        f"cannot record verified images in {path} ({reason}); "
        f"point {STATE_VARIABLE} at a writable directory"
    )


def check_writable(settings: Settings) -> None:
    """Fail before a long verify rather than after it."""
    folder = state_dir(settings)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise _unwritable(folder, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise _unwritable(folder, f"{existing} is not writable")


def record_verified(settings: Settings, image_id: str, backend: str, seconds: float) -> None:
    """Remember `image_id` as verified: one file per image, so that the state
    folders of several jobs merge into one without losing a record."""
    entry = {
        "image": image_id,
        "backend": backend,
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }
    path = _record_path(settings, image_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: an interrupted run never leaves a half-written file.
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entry, indent=2, sort_keys=True))
        temporary.replace(path)
    except OSError as error:
        raise _unwritable(path.parent, error.strerror) from None


def verification(settings: Settings, image_id: str) -> dict | None:
    try:
        return json.loads(_record_path(settings, image_id).read_text())
    except (OSError, ValueError):
        return _load_legacy(settings).get(image_id)
