"""A folder of the repository as a tar for the engine: owned by root, umask taken out.

Two things are sent this way: a build context (images.context_archive) and
the conformance tests copied into a container (containers.copy_tree).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path


def folder_archive(
    folder: Path,
    *,
    include_folder: bool = False,
    keep_executable: bool = True,
    skip: Callable[[Path], bool] = lambda path: False,
    replace: Callable[[str, Path], bytes | None] = lambda name, path: None,
) -> io.BytesIO:
    """`folder`'s files and folders, paths relative to it, sorted, rewound to the start.

    Owner root, folders 755, files 644, or 755 when executable and
    `keep_executable`: a checkout made under umask 002 gives the same archive
    as one made under 022. `include_folder` adds the folder itself (as ".");
    `skip` leaves paths out; `replace(name, path)` may give a file's content
    instead of what is on disk.
    """
    buffer = io.BytesIO()
    paths = [path for path in sorted(folder.rglob("*")) if not skip(path)]
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in [folder, *paths] if include_folder else paths:
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(folder)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isdir() or (keep_executable and info.isfile() and info.mode & 0o111):
                info.mode = 0o755
            elif info.isfile():
                info.mode = 0o644
            data = replace(info.name, path) if info.isfile() else None
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            elif info.isfile():
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
            else:
                archive.addfile(info)
    buffer.seek(0)
    return buffer
