"""IMAGE-CONTRACT.md, section "hadoop": one test per line of the contract.

Runs inside the container as ``dask``, with the standard library and pytest
only. Anything that depends on a daemon is retried until a deadline, so the
tests pass on a container that is still settling, and fail with the last
output when it never does.
"""

import grp
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sysconfig
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HOST = "master.example.com"
REALM = "EXAMPLE.COM"
KEYTAB = Path("/home/dask/dask.keytab")
PASSWORD = "testpass"
CONF_DIR = Path(os.environ.get("HADOOP_CONF_DIR", "/opt/hadoop/etc/hadoop"))
YARN_HOME = Path(os.environ.get("HADOOP_YARN_HOME", "/opt/hadoop"))
# A distributed-shell application: JVM start-up, submission, AM and one
# container. Generous, because CI machines are small.
APP_TIMEOUT = 300


def run(cmd, *, env=None, stdin=None, timeout=120):
    """Run cmd; return (exit code, stdout and stderr together)."""
    proc = subprocess.run(
        cmd,
        env=env,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout


def eventually(check, timeout=180, interval=3):
    """Call check() until it stops raising AssertionError or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def hadoop_conf(name):
    """The properties set in $HADOOP_CONF_DIR/<name>, as a dict."""
    root = ET.parse(CONF_DIR / name).getroot()
    return {
        prop.findtext("name").strip(): (prop.findtext("value") or "").strip()
        for prop in root.iter("property")
    }


def kinit(ccache, principal, keytab=None):
    """Log principal in, into its own credential cache; return the env to use."""
    env = dict(os.environ, KRB5CCNAME=f"FILE:{ccache}")
    if keytab:
        cmd, stdin = ["kinit", "-kt", str(keytab), principal], None
    else:
        cmd, stdin = ["kinit", principal], PASSWORD + "\n"

    def check():
        code, out = run(cmd, env=env, stdin=stdin)
        assert code == 0, out

    eventually(check, timeout=120)
    return env


@pytest.fixture(scope="module")
def dask_env(tmp_path_factory):
    """Environment with a ticket for dask, from its keytab."""
    return kinit(tmp_path_factory.mktemp("krb") / "dask", "dask", KEYTAB)


def wait_for_running_node(env):
    def check():
        code, out = run(["yarn", "node", "-list"], env=env)
        assert code == 0 and re.search(r"(?m)^\s*\S+:\d+\s+RUNNING\b", out), out

    eventually(check, timeout=240, interval=5)


def distributed_shell(env, *args):
    """Run one distributed-shell application; return the client's output."""
    jar = next(
        jar
        for jar in sorted(
            (YARN_HOME / "share/hadoop/yarn").glob(
                "hadoop-yarn-applications-distributedshell-*.jar"
            )
        )
        if not jar.name.endswith("-tests.jar")
    )
    cmd = ["yarn", "jar", str(jar), "-jar", str(jar)]
    cmd += ["-num_containers", "1", "-master_memory", "256"]
    cmd += ["-container_memory", "64", "-timeout", str(APP_TIMEOUT * 1000)]
    code, out = run([*cmd, *args], env=env, timeout=APP_TIMEOUT + 60)
    assert code == 0 and "distributedFinalState=SUCCEEDED" in out, out
    return out


# -- Hostname `master.example.com`. -------------------------------------------


def test_hostname_is_master_example_com():
    assert socket.gethostname() == HOST
    assert socket.gethostbyname(HOST)


# -- Environment `TEST_DASK_GATEWAY_YARN=true`. -------------------------------


def test_yarn_tests_are_switched_on():
    assert os.environ.get("TEST_DASK_GATEWAY_YARN") == "true"


# -- Kerberos realm `EXAMPLE.COM` with a KDC and kadmin in the container. -----


def test_default_realm_is_example_com():
    text = Path("/etc/krb5.conf").read_text()
    assert re.search(r"(?m)^\s*default_realm\s*=\s*EXAMPLE\.COM\s*$", text)


def test_kdc_issues_tickets(dask_env):
    code, out = run(["klist"], env=dask_env)
    assert code == 0, out
    assert f"Default principal: dask@{REALM}" in out
    assert f"krbtgt/{REALM}@{REALM}" in out


def test_kadmind_answers():
    for port in (88, 749):  # KDC, kadmind
        with socket.create_connection((HOST, port), timeout=10):
            pass
    # Any principal may read its own entry through kadmind.
    cmd = ["kadmin", "-k", "-t", str(KEYTAB), "-p", "dask", "-q", "getprinc dask"]

    def check():
        code, out = run(cmd)
        assert code == 0 and f"Principal: dask@{REALM}" in out, out

    eventually(check, timeout=60)


# -- Principals dask, alice, bob (password testpass) and HTTP/<host>. ---------


@pytest.mark.parametrize("user", ["dask", "alice", "bob"])
def test_user_logs_in_with_password(user, tmp_path):
    env = kinit(tmp_path / user, user)
    code, out = run(["klist"], env=env)
    assert code == 0 and f"Default principal: {user}@{REALM}" in out, out


def test_http_principal_exists(tmp_path):
    env = kinit(tmp_path / "http", f"HTTP/{HOST}", KEYTAB)
    code, out = run(["klist"], env=env)
    assert code == 0 and f"Default principal: HTTP/{HOST}@{REALM}" in out, out


# -- Keytab /home/dask/dask.keytab (owner dask, mode 440) with dask and HTTP. -


def test_dask_keytab_owner_mode_and_principals():
    st = KEYTAB.stat()
    assert pwd.getpwuid(st.st_uid).pw_name == "dask"
    assert stat.S_IMODE(st.st_mode) == 0o440
    code, out = run(["klist", "-kt", str(KEYTAB)])
    assert code == 0, out
    assert re.search(rf"\sdask@{REALM}\s", out), out
    assert re.search(rf"\sHTTP/{HOST}@{REALM}\s", out), out


# -- HDFS namenode and datanode, YARN resourcemanager and nodemanager, -------
# -- secured with Kerberos. ----------------------------------------------------


def test_hadoop_security_is_kerberos(tmp_path):
    core = hadoop_conf("core-site.xml")
    assert core["hadoop.security.authentication"] == "kerberos"
    # Without a ticket the namenode turns a client away.
    env = dict(os.environ, KRB5CCNAME=f"FILE:{tmp_path / 'no-ticket'}")
    code, out = run(["hdfs", "dfs", "-ls", "/"], env=env, timeout=180)
    assert code != 0, out


def test_hdfs_reads_and_writes(dask_env):
    """A write goes through the namenode and the datanode."""
    path = f"/user/dask/conformance-{uuid.uuid4().hex}"
    payload = "written by the hadoop conformance test\n"

    def put():
        code, out = run(["hdfs", "dfs", "-put", "-", path], env=dask_env, stdin=payload)
        assert code == 0, out

    eventually(put, timeout=240, interval=5)
    try:
        code, out = run(["hdfs", "dfs", "-cat", path], env=dask_env)
        assert code == 0 and payload in out, out
    finally:
        run(["hdfs", "dfs", "-rm", "-skipTrash", path], env=dask_env)


def test_hdfs_home_directories(dask_env):
    users = ["dask", "alice", "bob"]
    cmd = ["hdfs", "dfs", "-stat", "%n %u"] + [f"/user/{u}" for u in users]

    def check():
        code, out = run(cmd, env=dask_env)
        assert code == 0, out
        for user in users:
            assert re.search(rf"(?m)^{user} {user}$", out), out

    eventually(check, timeout=240, interval=5)


def test_yarn_has_a_running_node(dask_env):
    wait_for_running_node(dask_env)


def test_resourcemanager_web_ui_answers():
    url = f"http://{HOST}:8088/ws/v1/cluster/info"

    def check():
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                info = json.load(response)["clusterInfo"]
        except OSError as error:
            raise AssertionError(f"{url}: {error}") from error
        assert info["state"] == "STARTED", info

    eventually(check, timeout=120)


# -- LinuxContainerExecutor, so containers run as the submitting user. -------


def test_linux_container_executor_is_configured():
    yarn = hadoop_conf("yarn-site.xml")
    assert yarn["yarn.nodemanager.container-executor.class"].endswith(".LinuxContainerExecutor")
    group = yarn["yarn.nodemanager.linux-container-executor.group"]
    executor = Path(
        yarn.get(
            "yarn.nodemanager.linux-container-executor.path",
            YARN_HOME / "bin/container-executor",
        )
    )
    # Setuid root, group = the nodemanager's group, nothing for others.
    st = executor.stat()
    assert st.st_uid == 0
    assert grp.getgrgid(st.st_gid).gr_name == group
    assert stat.S_IMODE(st.st_mode) == 0o6050
    # Its cfg (../etc/hadoop next to it) names the same group; it and every
    # directory above it are root-owned and not group/other-writable.
    cfg = (executor.parent / "../etc/hadoop/container-executor.cfg").resolve()
    settings = dict(
        line.split("=", 1)
        for line in cfg.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    assert settings["yarn.nodemanager.linux-container-executor.group"] == group
    for path in [cfg, *cfg.parents]:
        st = path.stat()
        assert st.st_uid == 0, f"{path} is not owned by root"
        assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), f"{path} is writable"


@pytest.mark.parametrize("user", ["dask", "alice"])
def test_container_runs_as_submitting_user(user, dask_env, tmp_path):
    """dask submits with its keytab, alice with her password."""
    env = dask_env if user == "dask" else kinit(tmp_path / user, user)
    wait_for_running_node(env)
    marker = Path(f"/tmp/hadoop-ci-conformance-{user}-{uuid.uuid4().hex}")
    distributed_shell(env, "-shell_command", "touch", "-shell_args", str(marker))
    assert marker.exists(), f"the container did not create {marker}"
    assert pwd.getpwuid(marker.stat().st_uid).pw_name == user


# -- alice and bob in groups hadoop and yarn. ---------------------------------


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_user_in_hadoop_and_yarn_groups(user):
    gid = pwd.getpwnam(user).pw_gid
    groups = {grp.getgrgid(g).gr_name for g in os.getgrouplist(user, gid)}
    assert {"hadoop", "yarn"} <= groups


# -- skein installed and importable on the image's Python (setuptools for ------
# -- distutils on 3.12+), able to submit a real application as dask with ------
# -- that keytab; HADOOP_* variables set. -------------------------------------


@pytest.mark.parametrize(
    "name",
    ["HADOOP_CONF_DIR", "HADOOP_COMMON_HOME", "HADOOP_HDFS_HOME", "HADOOP_YARN_HOME"],
)
def test_hadoop_variable_is_set(name):
    assert os.environ.get(name), f"{name} is not set"
    assert Path(os.environ[name]).is_dir()


def test_skein_imports_and_makes_credentials():
    """skein 0.8.2 imports distutils, which only setuptools provides on 3.12+."""
    import skein

    assert skein.Security.new_credentials().cert_bytes


def test_skein_prerequisites():
    """What skein's driver needs: Java, Hadoop's classpath, and dask allowed to
    submit on behalf of other users (dask-gateway's YARN backend does)."""
    java = Path(os.environ["JAVA_HOME"], "bin/java")
    code, out = run([str(java), "-version"])
    major = re.search(r'version "(\d+)', out)
    assert code == 0 and major and int(major.group(1)) >= 17, out
    # skein's driver runs on `yarn classpath --glob`.
    code, out = run(["yarn", "classpath", "--glob"])
    assert code == 0 and "hadoop-yarn-client" in out, out
    core = hadoop_conf("core-site.xml")
    assert core.get("hadoop.proxyuser.dask.hosts") == "*"
    assert "*" in (
        core.get("hadoop.proxyuser.dask.users", ""),
        core.get("hadoop.proxyuser.dask.groups", ""),
    )


def test_skein_submits_as_dask(dask_env):
    """A real application, submitted with the keytab; its container checks
    that it runs as dask, so a wrong executor makes it fail."""
    import skein

    wait_for_running_node(dask_env)
    spec = skein.ApplicationSpec(
        name="hadoop-conformance",
        services={
            "check": skein.Service(
                resources=skein.Resources(memory="128 MiB", vcores=1),
                script='test "$(id -un)" = dask',
            )
        },
    )
    with skein.Client(principal="dask", keytab=str(KEYTAB)) as client:
        app_id = client.submit(spec)

        def finished():
            report = client.application_report(app_id)
            assert str(report.state) in ("FINISHED", "FAILED", "KILLED"), report
            return report

        try:
            report = eventually(finished, timeout=APP_TIMEOUT, interval=5)
        except AssertionError:
            client.kill_application(app_id)
            raise
    assert str(report.final_status) == "SUCCEEDED", report
    assert report.user == "dask"


# -- pykerberos installable (Kerberos dev headers present). -------------------


def test_pykerberos_can_be_built():
    assert Path("/usr/include/gssapi/gssapi.h").is_file()
    code, out = run(["krb5-config", "--libs", "gssapi"])
    assert code == 0 and "-lgssapi_krb5" in out, out
    assert shutil.which("gcc"), "no C compiler"
    include = Path(sysconfig.get_paths()["include"])
    assert (include / "Python.h").is_file(), f"no Python.h in {include}"
