"""How big the images are, and how much each adds over the image it is built on.

    python benchmarks/sizes.py

Reads the local images (`nox -t build` first). Sizes are unpacked sizes on
every image store (the containerd store's `Size` is the compressed content;
see scripts/images.py image_sizes). Targets (issue 12), added over the
parent: base <= 450 MB (over Debian), slurm <= 450 MB, pbs <= 400 MB; sge and
htcondor <= 150 MB (issues 31, 32).
"""

from __future__ import annotations

from common import table

from scripts.backends import load_all
from scripts.engine import connect, image_store
from scripts.images import image_sizes
from scripts.settings import load_settings

TARGET_MB = {"base": 450, "slurm": 450, "pbs": 400, "sge": 150, "htcondor": 150}


def main() -> None:
    client = connect()
    settings = load_settings()
    declared = load_all()
    sizes: dict[str, int] = {}
    rows = []
    for name, backend in declared.items():
        reference = backend.base_image if backend.parent is None else None
        found = client.images.list(name=settings.reference(backend))
        if not found:
            rows.append((name, "-", "-", "-", TARGET_MB.get(name), "not built here"))
            continue
        image = found[0]
        sizes[name] = image_sizes(client, image.id).unpacked or 0
        if backend.parent is None:
            parent = image_sizes(client, client.images.get(reference).id).unpacked
            parent_name = reference
        else:
            parent = sizes.get(backend.parent)
            parent_name = backend.parent
        added = (sizes[name] - parent) / 1e6 if parent is not None else None
        target = TARGET_MB.get(name)
        verdict = "" if added is None or target is None else ("ok" if added <= target else "over")
        rows.append((name, sizes[name] / 1e6, parent_name, added, target, verdict))
    table(
        f"Image sizes (MB unpacked; {image_store(client)} image store)",
        ("image", "size MB", "built on", "added MB", "target added MB", ""),
        rows,
    )


if __name__ == "__main__":
    main()
