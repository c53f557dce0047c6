"""A GitHub job summary table: one row per image and step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

HEADER = (
    "| image | tags | digest | size | verify time | result |\n"
    "| --- | --- | --- | --- | --- | --- |\n"
)


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def _cell(value: object) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def record_image(
    name: str,
    *,
    tags: list[str] | tuple[str, ...] = (),
    digest: str | None = None,
    size: int | None = None,
    verify_seconds: float | None = None,
    result: str,
    settings: Settings,
) -> bool:
    """Append a row to $GITHUB_STEP_SUMMARY (Settings.step_summary); False outside a workflow."""
    target = settings.step_summary
    if not target:
        return False
    path = Path(target)
    needs_header = not path.exists() or HEADER.splitlines()[0] not in path.read_text()
    seconds = f"{verify_seconds:.0f} s" if verify_seconds is not None else ""
    row = [name, ", ".join(tags), digest or "", human_size(size), seconds, result]
    with path.open("a") as summary:
        if needs_header:
            summary.write("\n" + HEADER)
        summary.write("| " + " | ".join(_cell(v) for v in row) + " |\n")
    return True
