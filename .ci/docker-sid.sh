#!/usr/bin/env bash
# Docker 28 from Debian sid, beside the distribution's engine (never touched).
#
#   bash .ci/docker-sid.sh install    # fetch + unpack sid's docker.io, docker-cli, containerd
#   bash .ci/docker-sid.sh start  [--store containerd|classic]       # default containerd;
#                                     # last stdout line: DOCKER_HOST=unix:///run/dask-gateway-ci/docker-<store>.sock
#   bash .ci/docker-sid.sh stop   [--store containerd|classic|all]  # data dirs are kept
#   bash .ci/docker-sid.sh status [--store containerd|classic|all]
#
# Packages come from sid through a private apt tree (own sources list, lists,
# cache and status under $STATE/apt-sid; the host's apt configuration is not
# read or changed) and are unpacked with dpkg-deb -x under $PREFIX; nothing
# is installed with dpkg. sid's runc needs a newer glibc, so the engine runs
# the host's /usr/sbin/runc (Debian 12's runc package).
#
# Each store gets its own containerd, dockerd, data root, exec root, socket,
# bridge and address pools, so both can run at once and beside the default
# engine. dockerd runs with --iptables=false: at start-up dockerd flushes and
# deletes the DOCKER, DOCKER-ISOLATION-STAGE-1/2 (and, in 28, DOCKER-FORWARD,
# DOCKER-BRIDGE, DOCKER-CT) chains whatever engine filled them, which would
# wipe the default engine's rules. Instead this script adds its own chains
# (DGCI-<STORE> in filter and nat) that forward and masquerade the store's
# subnets, and removes them on stop. Published ports still work through
# docker-proxy (userland proxy), which is what a loopback binding uses.
# Bridges: dgci-cd 10.209.1.0/24, dgci-cl 10.209.2.0/24. sid's CLI: /opt/dask-gateway-ci/docker-sid/usr/bin/docker.
#
# Environment: DOCKER_SID_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

PREFIX=/opt/dask-gateway-ci/docker-sid
STATE=/var/lib/dask-gateway-ci
RUNDIR=/run/dask-gateway-ci
LOGDIR=/var/log/dask-gateway-ci
APTROOT=$STATE/apt-sid
MIRROR=${DOCKER_SID_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
HOST_RUNC=/usr/sbin/runc
PACKAGES=(docker.io docker-cli containerd)
WAIT_SECONDS=90

say() { printf 'docker-sid: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

need_root() { ((EUID == 0)) || die "run as root"; }

# --- install ----------------------------------------------------------------

apt_sid() { APT_CONFIG=$APTROOT/apt.conf apt-get -q "$@"; }
apt_cache_sid() { APT_CONFIG=$APTROOT/apt.conf apt-cache "$@"; }

write_apt_tree() {
    local arch
    arch=$(dpkg --print-architecture)
    mkdir -p "$APTROOT"/{etc/apt.conf.d,etc/preferences.d,etc/sources.list.d,etc/trusted.gpg.d} \
        "$APTROOT"/lists/partial "$APTROOT"/cache/archives/partial "$APTROOT"/debs "$APTROOT"/log
    touch "$APTROOT/status"
    cat >"$APTROOT/apt.conf" <<EOF
// Private apt tree for Debian sid (written by docker-sid.sh); APT_CONFIG points here,
// so the host's /etc/apt is not read.
Dir "$APTROOT/";
Dir::Etc "etc/";
Dir::Etc::sourcelist "sources.list";
Dir::Etc::sourceparts "sources.list.d";
Dir::State "$APTROOT/";
Dir::State::lists "lists/";
Dir::State::status "$APTROOT/status";
Dir::Cache "cache/";
Dir::Log "log/";
APT::Architecture "$arch";
APT::Architectures { "$arch"; };
Acquire::Languages "none";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
// As on the host (frozen mirrors): do not reject an old Release file.
Acquire::Check-Valid-Until "false";
EOF
    printf 'deb [signed-by=%s] %s sid main\n' "$KEYRING" "$MIRROR" >"$APTROOT/etc/sources.list"
}

candidate() { # package -> sid version
    local out
    out=$(apt_cache_sid show --no-all-versions "$1" 2>/dev/null) || return 0
    awk '/^Version:/ {print $2; exit}' <<<"$out"
}

installed_versions() { cat "$PREFIX/.versions" 2>/dev/null || true; }

cmd_install() {
    need_root
    [[ -r $KEYRING ]] || die "$KEYRING missing: apt-get install debian-archive-keyring"
    command -v dpkg-deb >/dev/null || die "dpkg-deb missing"
    write_apt_tree
    say "apt-get update (sid, private tree $APTROOT)"
    # --error-on=any: an unreachable mirror is a failed update, not an empty
    # package list (which then read "sid has no docker.io").
    apt_sid update --error-on=any >"$LOGDIR/apt-sid-update.log" 2>&1 || {
        cat "$LOGDIR/apt-sid-update.log" >&2
        die "apt-get update for sid failed (keyring? mirror $MIRROR?)"
    }
    local pkg version want=""
    for pkg in "${PACKAGES[@]}"; do
        version=$(candidate "$pkg")
        [[ -n $version ]] || die "sid's package lists (mirror $MIRROR) have no $pkg"
        want+="$pkg=$version "
    done
    want=${want% }
    if [[ $(installed_versions) == "$want" && -x $PREFIX/usr/sbin/dockerd ]]; then
        say "already installed: $want"
        return 0
    fi
    say "downloading $want"
    local debs=$APTROOT/debs
    rm -f "$debs"/*.deb
    # shellcheck disable=SC2086 # $want is a list of pkg=version words
    (cd "$debs" && apt_sid download $want) >"$LOGDIR/apt-sid-download.log" 2>&1 || {
        cat "$LOGDIR/apt-sid-download.log" >&2
        die "apt-get download failed"
    }
    local tmp=$PREFIX.new deb
    rm -rf "$tmp"
    mkdir -p "$tmp"
    for deb in "$debs"/*.deb; do
        say "unpacking $(basename "$deb")"
        dpkg-deb -x "$deb" "$tmp"
    done
    # sid's runc is not fetched: the engine uses the host's.
    printf '%s\n' "$want" >"$tmp/.versions"
    rm -rf "$PREFIX.old"
    [[ -e $PREFIX ]] && mv "$PREFIX" "$PREFIX.old"
    mv "$tmp" "$PREFIX"
    rm -rf "$PREFIX.old"
    say "installed $want in $PREFIX"
}

# --- per-store layout -------------------------------------------------------

STORE=containerd
set_store() {
    case $1 in
    containerd)
        SHORT="cd"
        SUBNET=10.209.1.0/24
        GATEWAY=10.209.1.1/24
        ;;
    classic)
        SHORT="cl"
        SUBNET=10.209.2.0/24
        GATEWAY=10.209.2.1/24
        ;;
    *) die "--store: containerd or classic, not '$1'" ;;
    esac
    STORE=$1
    BRIDGE=dgci-$SHORT
    CHAIN=DGCI-${STORE^^}
    CTD_ROOT=$STATE/containerd-$STORE
    CTD_RUN=$RUNDIR/containerd-$STORE
    CTD_SOCK=$CTD_RUN/containerd.sock
    CTD_PID=$RUNDIR/containerd-$STORE.pid
    CTD_CONFIG=$STATE/containerd-$STORE.toml
    CTD_LOG=$LOGDIR/containerd-$STORE.log
    DATA_ROOT=$STATE/docker-$STORE
    EXEC_ROOT=$RUNDIR/docker-$STORE
    SOCK=$RUNDIR/docker-$STORE.sock
    PIDFILE=$RUNDIR/docker-$STORE.pid
    DAEMON_JSON=$STATE/docker-$STORE.json
    LOG=$LOGDIR/dockerd-$STORE.log
}

# The sid binaries first; no runc among them, so "runc" is the host's.
sid_path() { printf '%s' "$PREFIX/usr/sbin:$PREFIX/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; }

docker_cli() {
    local cli=$PREFIX/usr/bin/docker
    [[ -x $cli ]] || cli=docker
    "$cli" -H "unix://$SOCK" "$@"
}

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

engine_answers() { docker_cli version >/dev/null 2>&1; }

# poll CONDITION... until true, or until the process in PIDFILE dies, or timeout.
wait_for() {
    local what=$1 pidfile=$2 log=$3
    shift 3
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$@"; do
        if [[ -n $pidfile ]] && ! alive "$pidfile"; then
            tail -n 30 "$log" >&2 || true
            die "$what exited; log: $log"
        fi
        ((SECONDS < deadline)) || {
            tail -n 30 "$log" >&2 || true
            die "$what did not answer in ${WAIT_SECONDS}s; log: $log"
        }
        sleep 0.2
    done
}

containerd_answers() { [[ -S $CTD_SOCK ]] && "$PREFIX/usr/bin/ctr" --address "$CTD_SOCK" version >/dev/null 2>&1; }

write_configs() {
    mkdir -p "$CTD_ROOT" "$CTD_RUN" "$DATA_ROOT" "$EXEC_ROOT" "$LOGDIR"
    cat >"$CTD_CONFIG" <<EOF
# containerd for the Docker 28 ($STORE store) engine (written by docker-sid.sh)
version = 3
root = "$CTD_ROOT"
state = "$CTD_RUN/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]

[grpc]
  address = "$CTD_SOCK"

[ttrpc]
  address = "$CTD_SOCK.ttrpc"

[debug]
  address = "$CTD_RUN/debug.sock"
EOF
    # No "default-address-pools": with it set, dockerd deletes the interface
    # named docker0 at start-up (the default engine's bridge!) whenever its own
    # stale "bridge" network is cleared (moby v28.5.1 daemon/daemon_unix.go
    # 887-895, removeDefaultBridgeInterface). Nothing here makes user networks.
    local snapshotter=false cgroup_parent=""
    [[ $STORE == containerd ]] && snapshotter=true
    # Its containers' cgroups apart from the default engine's /docker (cgroupfs
    # driver; under systemd the driver wants a slice, so leave the default).
    [[ -d /run/systemd/system ]] || cgroup_parent="\"cgroup-parent\": \"/dask-gateway-ci-$STORE\","
    cat >"$DAEMON_JSON" <<EOF
{
  "features": {"containerd-snapshotter": $snapshotter},
  "runtimes": {"host-runc": {"path": "$HOST_RUNC"}},
  "default-runtime": "host-runc",
  "bridge": "$BRIDGE",
  "iptables": false,
  "ip6tables": false,
  $cgroup_parent
  "userland-proxy-path": "$PREFIX/usr/sbin/docker-proxy"
}
EOF
}

setup_bridge() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add name "$BRIDGE" type bridge
    fi
    ip addr replace "$GATEWAY" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

setup_nat() {
    sysctl -q -w net.ipv4.ip_forward=1
    local table
    for table in filter nat; do
        iptables -t "$table" -N "$CHAIN" 2>/dev/null || iptables -t "$table" -F "$CHAIN"
    done
    iptables -t filter -A "$CHAIN" -s "$SUBNET" -j ACCEPT
    iptables -t filter -A "$CHAIN" -d "$SUBNET" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    iptables -t nat -A "$CHAIN" -s "$SUBNET" ! -d "$SUBNET" -j MASQUERADE
    iptables -t filter -C FORWARD -j "$CHAIN" 2>/dev/null || iptables -t filter -I FORWARD 1 -j "$CHAIN"
    iptables -t nat -C POSTROUTING -j "$CHAIN" 2>/dev/null || iptables -t nat -I POSTROUTING 1 -j "$CHAIN"
}

teardown_nat() {
    local table
    for table in filter nat; do
        local parent=FORWARD
        [[ $table == nat ]] && parent=POSTROUTING
        while iptables -t "$table" -D "$parent" -j "$CHAIN" 2>/dev/null; do :; done
        iptables -t "$table" -F "$CHAIN" 2>/dev/null || true
        iptables -t "$table" -X "$CHAIN" 2>/dev/null || true
    done
}

start_containerd() {
    if alive "$CTD_PID" && containerd_answers; then
        return 0
    fi
    if alive "$CTD_PID"; then
        wait_for "containerd ($STORE)" "$CTD_PID" "$CTD_LOG" containerd_answers
        return 0
    fi
    rm -f "$CTD_PID" "$CTD_SOCK" "$CTD_SOCK.ttrpc"
    say "starting containerd ($STORE) on $CTD_SOCK"
    PATH=$(sid_path) nohup setsid "$PREFIX/usr/bin/containerd" --config "$CTD_CONFIG" \
        </dev/null >>"$CTD_LOG" 2>&1 &
    echo $! >"$CTD_PID"
    wait_for "containerd ($STORE)" "$CTD_PID" "$CTD_LOG" containerd_answers
}

cmd_start() {
    need_root
    mkdir -p "$RUNDIR" "$LOGDIR"
    [[ -x $PREFIX/usr/sbin/dockerd ]] || cmd_install
    [[ -x $HOST_RUNC ]] || die "$HOST_RUNC missing: apt-get install runc"
    local tool
    for tool in ip iptables sysctl; do
        command -v "$tool" >/dev/null || die "$tool missing (apt-get install iproute2 iptables procps)"
    done
    if alive "$PIDFILE"; then
        wait_for "dockerd ($STORE)" "$PIDFILE" "$LOG" engine_answers
        echo "DOCKER_HOST=unix://$SOCK"
        return 0
    fi
    write_configs
    setup_bridge
    setup_nat
    start_containerd
    rm -f "$PIDFILE"
    say "starting dockerd ($STORE store) on $SOCK"
    PATH=$(sid_path) nohup setsid "$PREFIX/usr/sbin/dockerd" \
        --config-file "$DAEMON_JSON" \
        --host "unix://$SOCK" \
        --data-root "$DATA_ROOT" \
        --exec-root "$EXEC_ROOT" \
        --pidfile "$PIDFILE" \
        --containerd "$CTD_SOCK" \
        </dev/null >>"$LOG" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + WAIT_SECONDS))
    until [[ -s $PIDFILE ]]; do # dockerd writes it early; until then watch $pid
        kill -0 "$pid" 2>/dev/null || {
            tail -n 30 "$LOG" >&2
            die "dockerd ($STORE) exited; log: $LOG"
        }
        ((SECONDS < deadline)) || die "dockerd ($STORE) wrote no pidfile; log: $LOG"
        sleep 0.2
    done
    wait_for "dockerd ($STORE)" "$PIDFILE" "$LOG" engine_answers
    say "ready: $(docker_cli version --format '{{.Server.Version}}') ($STORE store)"
    echo "DOCKER_HOST=unix://$SOCK"
}

stop_pid() { # name pidfile: TERM, wait, KILL as a last resort
    local name=$1 pidfile=$2 pid
    alive "$pidfile" || {
        rm -f "$pidfile"
        return 0
    }
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + WAIT_SECONDS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$name did not stop in ${WAIT_SECONDS}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

cmd_stop() {
    need_root
    stop_pid "dockerd ($STORE)" "$PIDFILE"
    stop_pid "containerd ($STORE)" "$CTD_PID"
    rm -f "$SOCK"
    teardown_nat
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE"
    fi
    say "stopped ($STORE store; data kept in $DATA_ROOT)"
}

cmd_status() {
    if alive "$PIDFILE" && engine_answers; then
        say "$STORE: running, $(docker_cli version --format '{{.Server.Version}}')"
        echo "DOCKER_HOST=unix://$SOCK"
    else
        say "$STORE: not running"
        return 1
    fi
}

main() {
    local cmd=${1:-}
    [[ -n $cmd ]] || die "usage: $0 install | start|stop|status [--store containerd|classic]"
    shift
    local stores=(containerd)
    while (($#)); do
        case $1 in
        --store)
            (($# >= 2)) || die "--store needs a value"
            stores=("$2")
            shift 2
            ;;
        --store=*)
            stores=("${1#--store=}")
            shift
            ;;
        *) die "unknown argument: $1" ;;
        esac
    done
    if [[ ${stores[0]} == all && $cmd != start ]]; then
        stores=(containerd classic)
    fi
    mkdir -p "$LOGDIR"
    case $cmd in
    install) cmd_install ;;
    start | stop | status)
        local store rc=0
        for store in "${stores[@]}"; do
            set_store "$store"
            "cmd_$cmd" || rc=$?
        done
        return "$rc"
        ;;
    *) die "unknown command: $cmd" ;;
    esac
}

main "$@"
