"""IMAGE-CONTRACT.md, "All images": checked inside the container as dask."""

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def test_tests_run_as_dask():
    assert pwd.getpwuid(os.getuid()).pw_name == "dask"


def test_python_environment_is_opt_python_with_pip():
    assert shutil.which("python") == "/opt/python/bin/python"
    assert shutil.which("pip") == "/opt/python/bin/pip"
    assert run("python", "-m", "pip", "--version").returncode == 0


def test_opt_python_on_path_for_every_user_and_login_shells():
    for user in ("dask", "alice", "bob"):
        shell = pwd.getpwnam(user).pw_shell
        login = run("env", "-i", shell, "-lc", "command -v python")
        assert login.stdout.strip() == "/opt/python/bin/python", (user, login)


def test_sudo_keeps_path():
    # dask's only sudo right is the launcher; `sudo -l` shows the policy that
    # applies, including whether secure_path would replace PATH.
    listing = run("sudo", "-n", "-l")
    assert listing.returncode == 0, listing.stderr
    assert "!secure_path" in listing.stdout or "secure_path=" not in listing.stdout
    assert not re.search(r"env_delete[^,\n]*PATH", listing.stdout)


def test_go_toolchain_on_path_compiles():
    assert shutil.which("go"), "go not on PATH"
    source = Path(os.environ.get("TMPDIR", "/tmp")) / f"conformance-go-{os.getpid()}"
    source.mkdir()
    (source / "go.mod").write_text("module example.com/hello\n\ngo 1.18\n")
    (source / "main.go").write_text(
        'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello from go") }\n'
    )
    env = {**os.environ, "GOCACHE": str(source / ".cache"), "GOPATH": str(source / ".gopath")}
    built = run("go", "run", ".", cwd=source, env=env)
    shutil.rmtree(source, ignore_errors=True)
    assert built.stdout.strip() == "hello from go", built.stderr


def test_git_sudo_tini_present():
    for tool in ("git", "sudo", "tini"):
        assert shutil.which(tool), f"{tool} not on PATH"


def test_users_with_home_directories():
    for user in ("dask", "alice", "bob"):
        entry = pwd.getpwnam(user)
        assert Path(entry.pw_dir).is_dir(), user
        assert Path(entry.pw_dir).stat().st_uid == entry.pw_uid, user


def test_group_dask_users_holds_alice_and_bob():
    members = set(grp.getgrnam("dask_users").gr_mem)
    assert {"alice", "bob"} <= members
    assert "dask" not in members


def test_sudo_survives_an_empty_environment():
    # dask-gateway's jobqueue backends start sudo with env={}.
    listing = run("env", "-i", "/usr/bin/sudo", "-n", "-l")
    assert listing.returncode == 0, (listing.returncode, listing.stderr)


def test_dask_scheduler_and_worker_names_exist_in_opt_python():
    for name in ("dask-scheduler", "dask-worker"):
        path = Path("/opt/python/bin") / name
        assert path.exists() and os.access(path, os.X_OK), path
        if Path("/opt/python/bin/dask").exists():
            assert run(str(path), "--help").returncode == 0, name


def test_a_stale_openssl_error_does_not_break_a_healthy_tls_read():
    """CPython gh-148594: a healthy TLS read with another connection's error left in
    OpenSSL's queue says "want read" (ci/base/patches/ssl-clear-error-queue.patch)."""
    probe = run(sys.executable, "/usr/local/lib/dask-gateway-ci/ssl-error-queue-probe")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "ok, a healthy read says 'want read'" in probe.stdout
