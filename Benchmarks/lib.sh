# shellcheck shell=bash disable=SC2034,SC2153
# (SC2034, SC2153: the scripts use what is set here, OUT_DIR for one, and set
# what is used here: NGINX, WRK, THREADS, ...)
#
# Benchmarks/lib.sh: what Benchmarks/run and Benchmarks/jobs share.
# Sourced (never run) after `set -euo pipefail`, once the script has set
# BENCH_DIR, KEEP_TMP and READY_TIMEOUT. Every process the scripts start goes
# through start(), so cleanup() (the scripts' EXIT trap) can stop it.

REPO_DIR=$(dirname "$BENCH_DIR")
OUT_DIR=$BENCH_DIR/out
BENCH_NAME=Benchmarks/${0##*/}  # for messages: Benchmarks/run, Benchmarks/jobs

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# positive_integers VAR...: die unless each variable holds a positive integer.
positive_integers() {
    local var
    for var in "$@"; do
        [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, got '${!var}'"
    done
}

# --- cleanup: every process this script starts is recorded here -----------

WORK=
WRK_PID=
PIDS=()
declare -A PID_OF=()
declare -A URL_OF=()  # server name -> its URL
POLICY_RC_ADDED=0
COATCHECK_BUILT=0  # 1 once this script built the binary from this tree

# True while the process exists and is not a zombie waiting to be reaped.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # drop "pid (comm) ": comm may contain spaces
    [[ ${stat%% *} != Z ]]
}

# terminate PID...: TERM each process group, wait up to 5 s, then KILL.
terminate() {
    local pid any _
    # Each server runs in its own session (setsid), so its process group id
    # is its pid: signalling the group also reaches nginx's workers.
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in {1..50}; do
        any=0
        for pid in "$@"; do alive "$pid" && any=1; done
        ((any)) || break
        sleep 0.1
    done
    for pid in "$@"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$?
    set +e
    [[ -n $WRK_PID ]] && kill -TERM "$WRK_PID" 2>/dev/null
    ((${#PIDS[@]})) && terminate "${PIDS[@]}"
    wait 2>/dev/null
    if ((POLICY_RC_ADDED)); then as_root rm -f /usr/sbin/policy-rc.d; fi
    if [[ -n $WORK && -d $WORK ]]; then
        if ((rc != 0)); then
            local f
            for f in "$WORK"/*.log; do
                [[ -s $f ]] || continue
                printf -- '--- last lines of %s\n' "${f##*/}" >&2
                tail -n 15 "$f" >&2
            done
        fi
        if ((KEEP_TMP)); then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}

# --- tools -------------------------------------------------------------------

as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

# Debian packages whose status is not "install ok installed".
missing_packages() {
    local pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] ||
            printf '%s\n' "$pkg"
    done
}

# install_tools PACKAGE...: apt-get install the missing ones, plus what
# building coatcheck needs unless SKIP_COATCHECK=1 or COATCHECK_BIN is set.
install_tools() {
    local wanted=("$@")
    if ! ((${SKIP_COATCHECK:-0})) && [[ -z $COATCHECK_BIN ]]; then
        # What `swift build` links against (DESIGN.md, Dependencies).
        wanted+=(libevent-dev libhttp-parser-dev libsqlite3-dev libhiredis-dev libssl-dev)
    fi
    local missing
    mapfile -t missing < <(missing_packages "${wanted[@]}")
    ((${#missing[@]})) || return 0

    log "installing ${missing[*]}"
    # The nginx and haproxy packages start their system service on install;
    # a policy-rc.d that says "no" keeps port 80 free and no stray daemon
    # competing for the CPUs (the usual trick in container builds).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=1
    fi
    # apt's chatter to stderr: stdout is for the table.
    as_root apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    if ((POLICY_RC_ADDED)); then
        as_root rm -f /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=0
    fi
}

# /usr/sbin is not on every user's PATH.
find_tool() {
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } ||
        die "$1 not found after installing it"
}

build_coatcheck() {
    if [[ -n $COATCHECK_BIN ]]; then
        [[ -x $COATCHECK_BIN ]] || die "COATCHECK_BIN=$COATCHECK_BIN is not an executable"
        return
    fi
    command -v swift >/dev/null || die "swift not found: install a Swift 6.1 toolchain, or set COATCHECK_BIN"
    log "building coatcheck (release)"
    (cd "$REPO_DIR" && flock /tmp/swift-build.lock swift build -c release --static-swift-stdlib) >&2
    COATCHECK_BIN="$(cd "$REPO_DIR" && swift build -c release --static-swift-stdlib --show-bin-path)/coatcheck"
    [[ -x $COATCHECK_BIN ]] || die "the build did not produce $COATCHECK_BIN"
    COATCHECK_BUILT=1
}

# The coatcheck column's name in a report.
coatcheck_label() {
    if ((COATCHECK_BUILT)); then
        echo "coatcheck $(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo '(no commit)')"
    else
        echo "coatcheck (COATCHECK_BIN)"
    fi
}

nginx_label() { echo "nginx $("$NGINX" -v 2>&1 | sed 's|.*/||')"; }

wrk_label() {
    "$WRK" -v 2>&1 | awk 'NR == 1 { sub(/.*\//, "", $2); sub(/-.*/, "", $2); print "wrk " $2 }'
}

# --- ports, configs, processes -----------------------------------------------

USED_PORTS=" "

# A connect() that succeeds means something listens there.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# free_port VAR: a free 127.0.0.1 port into VAR. Ports are picked below the
# kernel's ephemeral range, so no outgoing connection (wrk's, the proxies')
# can be holding one when a server binds it.
free_port() {
    local low=32768 p _
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    ((low > 11000)) || low=32768
    for _ in {1..200}; do
        p=$((10000 + RANDOM % (low - 10000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        port_in_use "$p" && continue
        USED_PORTS+="$p "
        printf -v "$1" '%s' "$p"
        return
    done
    die "no free port found"
}

# render TEMPLATE OUTPUT PROXY_PORT [ADMIN_PORT [NAME=VALUE...]]: fill the
# @NAME@ placeholders (@DIR@, @THREADS@, @BACKEND_PORT@, @PROXY_PORT@,
# @ADMIN_PORT@, and any NAME given).
render() {
    local template=$BENCH_DIR/$1 output=$WORK/$2 kv
    local extra=()
    for kv in "${@:5}"; do
        extra+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed -e "s|@DIR@|$WORK|g" \
        -e "s|@THREADS@|$THREADS|g" \
        -e "s|@BACKEND_PORT@|${BACKEND_PORT:-}|g" \
        -e "s|@PROXY_PORT@|${3:-}|g" \
        -e "s|@ADMIN_PORT@|${4:-}|g" \
        "${extra[@]}" \
        "$template" >"$output"
    if grep -n '@[A-Z_]*@' "$output" >&2; then
        die "unfilled placeholder in $1"
    fi
}

# start NAME COMMAND...: run COMMAND in its own session, in $WORK, logging
# to $WORK/NAME.log. `exec` keeps $! the server's own pid.
start() {
    local name=$1
    shift
    (cd "$WORK" && exec setsid "$@") >"$WORK/$name.log" 2>&1 </dev/null &
    PIDS+=("$!")
    PID_OF[$name]=$!
}

# stop_server NAME: end a server started with start() before the script ends.
stop_server() {
    local pid=${PID_OF[$1]} p keep=()
    terminate "$pid"
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Milliseconds since the epoch, without forking date(1).
now_ms() {
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
}

# wait_ready NAME URL [BODY]: poll until URL answers 2xx (with BODY, if
# given), for READY_TIMEOUT seconds at most.
wait_ready() {
    local name=$1 url=$2 body=${3-} got=
    local deadline=$(($(now_ms) + READY_TIMEOUT * 1000))
    while :; do
        if got=$(curl -fsS --max-time 1 "$url" 2>/dev/null); then
            [[ -z $body || $got == "$body" ]] && return 0
        fi
        alive "${PID_OF[$name]}" || die "$name exited during start-up"
        (($(now_ms) < deadline)) || die "$name did not answer $url within ${READY_TIMEOUT}s${got:+ (last body: $got)}"
        sleep 0.1
    done
}

# The fast backend: nginx, 1 worker, `return 200 "ok"`, on BACKEND_PORT.
start_backend() {
    free_port BACKEND_PORT
    mkdir -p "$WORK/nginx-backend-tmp"
    render nginx-backend.conf.in nginx-backend.conf
    local args=(-p "$WORK/" -e "$WORK/nginx-backend.error.log" -c "$WORK/nginx-backend.conf")
    "$NGINX" -t -q "${args[@]}" || die "nginx rejected nginx-backend.conf"
    start backend "$NGINX" "${args[@]}"
    wait_ready backend "http://127.0.0.1:$BACKEND_PORT/" ok
    URL_OF[backend]=http://127.0.0.1:$BACKEND_PORT/
}

# --- measuring ---------------------------------------------------------------

# parse_wrk FILE: "requests/s p50_us p99_us non2xx socket_errors".
parse_wrk() {
    awk '
        # wrk prints times as 812.00us, 1.20ms, 1.02s or 2.00m.
        function usec(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return v * 1000
            if (v ~ /s$/)  return v * 1000000
            if (v ~ /m$/)  return v * 60000000
            return -1
        }
        $1 == "50%"            { p50 = usec($2) }
        $1 == "99%"            { p99 = usec($2) }
        $1 == "Requests/sec:"  { rps = $2 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/       { gsub(/,/, ""); errors = $4 + $6 + $8 + $10 }
        END {
            if (rps == "" || p50 == "" || p99 == "") exit 1
            printf "%s %s %s %d %d\n", rps, p50, p99, non2xx, errors
        }' "$1"
}

# wrk_once URL SECONDS OUTPUT [WRK_OPTION... [-- SCRIPT_ARG...]]: wrk
# -tWRK_THREADS -cCONNECTIONS --latency, plus the options (e.g. -s SCRIPT)
# and the script's arguments. In the background plus `wait`, because bash
# runs a signal trap only after a foreground command ends: this way Ctrl-C
# or a TERM cleans up at once, not after the wrk run.
wrk_once() {
    local url=$1 seconds=$2 output=$3 options=()
    shift 3
    while (($#)) && [[ $1 != -- ]]; do
        options+=("$1")
        shift
    done
    # wrk takes the URL first, then `--` and the script's arguments.
    "$WRK" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency "${options[@]}" "$url" "$@" >"$output" &
    WRK_PID=$!
    wait "$WRK_PID"
    WRK_PID=
}

# median: of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B: A/B with 3 decimals.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'
}

# verdict VALUE OP LIMIT: MET or MISSED.
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == ">=") ? (v >= t) : (v <= t)
        print ok ? "MET" : "MISSED"
    }'
}
