#!/usr/bin/env bash
# Rootful Podman's Docker-compatible API on a socket of this project's own,
# for running the nox sessions (docker-py) against Podman instead of Docker:
#
#   bash .ci/podman.sh install   # apt-get install podman (Debian 12: 4.3.1)
#   eval "$(bash .ci/podman.sh start | tail -n 1)"; export DOCKER_HOST
#   nox -s build-slurm ...       # docker-py now talks to Podman
#   bash .ci/podman.sh stop
#
# start is idempotent: a service already answering on the socket is reused.
# Its last line of standard output is always DOCKER_HOST=unix://<socket>.
#
# Nothing global is edited: what Podman needs on this host is given on its
# command line, or in files under /etc/dask-gateway-ci/ that only this
# service reads (CONTAINERS_CONF, CONTAINERS_REGISTRIES_CONF). Another
# engine (Docker on /var/run/docker.sock) is left alone.
set -euo pipefail

RUN_DIR=/run/dask-gateway-ci
SOCKET="$RUN_DIR/podman.sock"
PID_FILE="$RUN_DIR/podman.pid"
LOG_DIR=/var/log/dask-gateway-ci
LOG_FILE="$LOG_DIR/podman.log"
CONF_DIR=/etc/dask-gateway-ci
CONTAINERS_CONF_FILE="$CONF_DIR/containers.conf"
REGISTRIES_CONF_FILE="$CONF_DIR/registries.conf"
START_TIMEOUT=${DASK_GATEWAY_CI_PODMAN_TIMEOUT:-60}

# Per-invocation options, instead of edits to /etc/containers:
# - cgroupfs: there is no systemd here to ask for cgroups (the default,
#   "systemd", fails without a systemd bus).
# - file events: the journald backend needs systemd-journald, absent here.
# - runc: Debian's runc 1.1.5 (the one Docker uses too) runs containers on
#   this cgroup v1 host; podman would pick crun first if it were installed.
PODMAN_OPTIONS=(--cgroup-manager=cgroupfs --events-backend=file --runtime=runc)

say() { printf 'podman.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $0 install|start|stop|status
  install  apt-get install podman (and runc, curl, iptables) if missing
  start    start 'podman system service' on $SOCKET (log: $LOG_FILE);
           prints DOCKER_HOST=unix://$SOCKET as its last line
  stop     stop the service this script started
  status   exit 0 when the service answers on the socket
EOF
    exit 2
}

answers() {
    [[ -S $SOCKET ]] && curl -sf --max-time 2 --unix-socket "$SOCKET" http://d/_ping >/dev/null
}

service_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    # The PID must still be our podman, not a reused number.
    grep -qa "system" "/proc/$pid/cmdline" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

install() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v curl >/dev/null || missing+=(curl)
    # The CNI bridge plugin masquerades and publishes ports with iptables
    # (only suggested by podman; Docker's hosts have it already).
    command -v iptables >/dev/null || missing+=(iptables)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -q >&2
        # No recommends: rootful needs neither uidmap, slirp4netns nor
        # fuse-overlayfs, and buildah is built into podman. The bridge
        # network comes from containernetworking-plugins (a dependency).
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >&2
    fi
    podman --version >&2
}

has_cap_sys_resource() {
    local eff
    eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
    # CAP_SYS_RESOURCE is capability 24.
    (((16#$eff >> 24) & 1))
}

write_if_changed() { # path, content: rewrite only when it differs
    local path=$1 content=$2
    if [[ ! -f $path ]] || [[ "$(<"$path")" != "$content" ]]; then
        printf '%s\n' "$content" >"$path.tmp"
        mv "$path.tmp" "$path"
        say "wrote $path"
    fi
}

configure() {
    local nofile nproc ulimits=""
    mkdir -p "$CONF_DIR"
    if ! has_cap_sys_resource; then
        # Without CAP_SYS_RESOURCE root cannot raise a hard rlimit. Rootful
        # podman asks runc for nofile=nproc=1048576 by default, and podman
        # itself lowers its own RLIMIT_NPROC to 32768 at start, so every
        # container (and every RUN step of a build) fails with "error
        # setting rlimits for ready process: error setting rlimit type 7
        # [then 6]: operation not permitted". The host's hard limits (as
        # Docker's containers inherit them) are what can be granted.
        nofile=$(ulimit -Hn)
        nproc=$(ulimit -Hu)
        [[ $nofile == unlimited || $nofile -gt 1048576 ]] && nofile=1048576
        [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
        ulimits="
# This host's root lacks CAP_SYS_RESOURCE: podman's defaults (1048576)
# cannot be set, so containers get the hard limits podman itself has.
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
    fi
    # CONTAINERS_CONF makes podman read this file instead of
    # /usr/share/containers/containers.conf and /etc/containers/containers.conf.
    write_if_changed "$CONTAINERS_CONF_FILE" "# Written by .ci/podman.sh; read only by the podman service it starts.
[containers]
# Docker's default capability set (Debian's containers.conf drops
# AUDIT_WRITE, MKNOD and NET_RAW), so images behave as they do under Docker.
default_capabilities = [
  \"AUDIT_WRITE\", \"CHOWN\", \"DAC_OVERRIDE\", \"FOWNER\", \"FSETID\", \"KILL\",
  \"MKNOD\", \"NET_BIND_SERVICE\", \"NET_RAW\", \"SETFCAP\", \"SETGID\",
  \"SETPCAP\", \"SETUID\", \"SYS_CHROOT\",
]$ulimits"
    # CONTAINERS_REGISTRIES_CONF makes podman read this file instead of
    # /etc/containers/registries.conf (and its .d folder).
    write_if_changed "$REGISTRIES_CONF_FILE" "# Written by .ci/podman.sh; read only by the podman service it starts.
# Docker talks plain HTTP to registries on 127.0.0.0/8 by itself; podman
# only to those declared insecure. The test registries listen on loopback
# at a free port: a location without a port also matches host:<any port>
# in containers/image (podman 4.3).
[[registry]]
location = \"127.0.0.1\"
insecure = true

[[registry]]
location = \"localhost\"
insecure = true"
}

start() {
    local pid deadline
    command -v podman >/dev/null || die "podman not installed: run '$0 install' first"
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    configure
    if answers; then
        say "already answering on $SOCKET"
    else
        if pid=$(service_pid); then
            say "podman service $pid does not answer; stopping it"
            stop_service
        fi
        rm -f "$SOCKET"
        say "starting podman system service on $SOCKET (log: $LOG_FILE)"
        CONTAINERS_CONF="$CONTAINERS_CONF_FILE" \
            CONTAINERS_REGISTRIES_CONF="$REGISTRIES_CONF_FILE" \
            setsid podman "${PODMAN_OPTIONS[@]}" system service --time=0 "unix://$SOCKET" \
            >>"$LOG_FILE" 2>&1 </dev/null &
        pid=$!
        printf '%s\n' "$pid" >"$PID_FILE"
        deadline=$((SECONDS + START_TIMEOUT))
        until answers; do
            if ! kill -0 "$pid" 2>/dev/null; then
                tail -n 20 "$LOG_FILE" >&2 || true
                die "podman system service exited; see $LOG_FILE"
            fi
            ((SECONDS < deadline)) || die "no answer on $SOCKET after ${START_TIMEOUT}s"
            # Polls the socket; the service answers within a second.
            sleep 0.1
        done
        say "podman service $pid answers on $SOCKET"
    fi
    printf 'DOCKER_HOST=unix://%s\n' "$SOCKET"
}

stop_service() {
    local pid
    pid=$(service_pid) || {
        rm -f "$PID_FILE"
        return 0
    }
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "podman service $pid did not stop in 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE" "$SOCKET"
}

stop() {
    if service_pid >/dev/null; then
        stop_service
        say "stopped"
    elif answers; then
        die "something answers on $SOCKET that this script did not start; left alone"
    else
        rm -f "$PID_FILE"
        say "not running"
    fi
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) answers ;;
    *) usage ;;
esac
