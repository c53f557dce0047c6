"""Our stand-ins for the GitHub actions the workflows use, for local runs with act.

`nox -s workflows` maps each pinned `uses:` to the action.yml beside this file
(act's --local-repository) when the real one cannot run here: GitHub is
unreachable, or (artifacts) act's artifact server does not speak the real
action's protocol. Each action.yml calls one command of this file, with its
inputs in the environment (INPUT_*, as act passes them):

    checkout           clone a local copy of another repository (the own
                       repository act copies itself)
    setup-python       a virtual environment on the host's Python
    upload-artifact    zip a path and upload it to act's artifact server
    download-artifact  download one artifact, or all matching a pattern

Python's standard library only: this runs on whatever Python the host has.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

SERVICE = "twirp/github.actions.results.api.v1.ArtifactService"
BLOCK = 8 * 1024 * 1024
REPOSITORIES_VARIABLE = "DASK_GATEWAY_CI_STAND_IN_REPOSITORIES"


class Failed(Exception):
    """What the action reports as its error (one line), failing the step."""


def say(message: str) -> None:
    print(message, flush=True)


def inputs(name: str, default: str = "") -> str:
    return os.environ.get(f"INPUT_{name.upper()}", "").strip() or default


def output(name: str, value: str) -> None:
    with open(os.environ["GITHUB_OUTPUT"], "a") as handle:
        handle.write(f"{name}={value}\n")


# -- checkout -------------------------------------------------------------------------------


def checkout() -> None:
    """Clone <repositories>/<owner>/<name> at `ref` into the workspace's `path`."""
    repository = inputs("repository", os.environ.get("GITHUB_REPOSITORY", ""))
    ref = inputs("ref")
    workspace = Path(os.environ["GITHUB_WORKSPACE"])
    destination = (workspace / inputs("path", ".")).resolve()
    folder = os.environ.get(REPOSITORIES_VARIABLE, "")
    source = Path(folder) / repository
    if not folder or not ((source / ".git").exists() or (source / "HEAD").exists()):
        raise Failed(
            f"no local copy of {repository} for the checkout stand-in: give "
            "`nox -s workflows` a git clone of it (--dask-gateway DIR for dask/dask-gateway, "
            "--dask-jobqueue DIR for dask/dask-jobqueue)"
        )
    if destination.exists() and any(destination.iterdir()):
        shutil.rmtree(destination)
    git = ["git", "-c", "advice.detachedHead=false"]
    subprocess.run(
        [*git, "clone", "--quiet", "--no-checkout", str(source), str(destination)], check=True
    )
    target = ref or "HEAD"
    done = subprocess.run(
        [*git, "-C", str(destination), "checkout", "--quiet", "--detach", target],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise Failed(f"{repository} has no ref {target!r} in {source}: {done.stderr.strip()}")
    head = subprocess.run(
        ["git", "-C", str(destination), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    say(
        f"stand-in for actions/checkout: {repository} at {target} ({head[:12]}) from {source} "
        f"into {destination} (full history; fetch-depth is not applied)"
    )


# -- setup-python ------------------------------------------------------------------------


def setup_python() -> None:
    """A venv on the host's Python (with its packages), first on PATH for later steps."""
    asked = inputs("python-version", "(any)")
    home = Path(os.environ["RUNNER_TEMP"]) / "stand-in-python"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(home)], check=True)
    with open(os.environ["GITHUB_PATH"], "a") as handle:
        handle.write(f"{home / 'bin'}\n")
    version = ".".join(map(str, sys.version_info[:3]))
    output("python-version", version)
    say(
        f"stand-in for actions/setup-python: asked for {asked}, using the host's Python "
        f"{version} ({sys.executable}) in a venv at {home}"
    )


# -- artifacts: act's artifact server (the v4 "results" twirp API) ---------------------------


def _ids() -> dict[str, str]:
    """Run and job IDs, from the runtime token's scope (Actions.Results:<run>:<job>)."""
    token = os.environ.get("ACTIONS_RUNTIME_TOKEN", "")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as error:
        raise Failed(
            f"no usable ACTIONS_RUNTIME_TOKEN (is act's artifact server on?): {error}"
        ) from None
    for scope in str(claims.get("scp", "")).split():
        parts = scope.split(":")
        if parts[0] == "Actions.Results" and len(parts) == 3:
            return {"workflow_run_backend_id": parts[1], "workflow_job_run_backend_id": parts[2]}
    raise Failed("the runtime token names no Actions.Results scope")


def _call(method: str, body: dict) -> dict:
    base = os.environ.get("ACTIONS_RESULTS_URL", "").rstrip("/")
    if not base:
        raise Failed("ACTIONS_RESULTS_URL is not set: run act with --artifact-server-path")
    request = urllib.request.Request(
        f"{base}/{SERVICE}/{method}",
        data=json.dumps({**_ids(), **body}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {os.environ['ACTIONS_RUNTIME_TOKEN']}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError) as error:
        raise Failed(f"artifact server: {method} failed: {error}") from None


def _put(url: str, data: bytes) -> None:
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        if response.status not in (200, 201):
            raise Failed(f"artifact server: upload answered {response.status}")


def _files(path: Path, hidden: bool) -> list[tuple[Path, str]]:
    if path.is_file():
        return [(path, path.name)]
    found = []
    for item in sorted(path.rglob("*")):
        relative = item.relative_to(path)
        if item.is_file() and (hidden or not any(p.startswith(".") for p in relative.parts)):
            found.append((item, str(relative)))
    return found


def upload_artifact() -> None:
    name = inputs("name", "artifact")
    path = Path(os.path.expanduser(inputs("path")))
    level = int(inputs("compression-level", "6"))
    files = _files(path, inputs("include-hidden-files", "false") == "true") if path.exists() else []
    if not files:
        policy = inputs("if-no-files-found", "warn")
        if policy == "error":
            raise Failed(
                f"No files were found with the provided path: {path}. No artifacts "
                "will be uploaded."
            )
        say(f"no files at {path}; nothing uploaded ({policy})")
        return
    with tempfile.TemporaryFile() as archive:
        method = zipfile.ZIP_STORED if level == 0 else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(archive, "w", method, compresslevel=level or None) as zipped:
            for source, arcname in files:
                zipped.write(source, arcname)
        size = archive.tell()
        archive.seek(0)
        digest = hashlib.sha256()
        url = _call("CreateArtifact", {"name": name, "version": 4}).get("signedUploadUrl")
        if not url:
            raise Failed(f"artifact server: CreateArtifact gave no upload URL for {name}")
        number = 0
        while chunk := archive.read(BLOCK):
            digest.update(chunk)
            block = base64.b64encode(f"{number:08d}".encode()).decode()
            _put(f"{url}&comp=block&blockid={block}", chunk)
            number += 1
        _put(f"{url}&comp=blocklist", b"")
    answer = _call(
        "FinalizeArtifact",
        {"name": name, "size": str(size), "hash": f"sha256:{digest.hexdigest()}"},
    )
    output("artifact-id", str(answer.get("artifactId", "")))
    output("artifact-digest", digest.hexdigest())
    say(
        f"stand-in for actions/upload-artifact: {name}: {len(files)} files, {size} bytes "
        f"(zip, level {level}) to act's artifact server"
    )


def download_artifact() -> None:
    name, pattern = inputs("name"), inputs("pattern")
    destination = Path(os.path.expanduser(inputs("path", os.environ["GITHUB_WORKSPACE"])))
    merge = inputs("merge-multiple", "false") == "true"
    listed = _call("ListArtifacts", {"name_filter": name} if name else {}).get("artifacts") or []
    names = sorted({a["name"] for a in listed})
    if name:
        if name not in names:
            raise Failed(f"Artifact not found for name: {name}")
        chosen = [(name, destination)]
    else:
        matched = [n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern)]
        chosen = [(n, destination if merge else destination / n) for n in matched]
    for artifact, into in chosen:
        url = _call("GetSignedArtifactURL", {"name": artifact}).get("signedUrl")
        if not url:
            raise Failed(f"artifact server: no download URL for {artifact}")
        with tempfile.TemporaryFile() as archive:
            with urllib.request.urlopen(url, timeout=600) as response:
                shutil.copyfileobj(response, archive, BLOCK)
            archive.seek(0)
            into.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(into)
        say(f"stand-in for actions/download-artifact: {artifact} into {into}")
    output("download-path", str(destination))
    if not chosen:
        say(f"stand-in for actions/download-artifact: no artifact matches {pattern or '*'}")


COMMANDS = {
    "checkout": checkout,
    "setup-python": setup_python,
    "upload-artifact": upload_artifact,
    "download-artifact": download_artifact,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(f"usage: {argv[0]} {{{','.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[1]]()
    except Failed as error:
        print(f"::error::{error}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
