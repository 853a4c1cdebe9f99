#!/usr/bin/env bash
# Builds the serving image (container/Dockerfile) on this machine's own Docker engine, as root (`make image`).
#
#   scripts/image.sh [build]     engine + base + image (the default; idempotent, quick when nothing changed)
#   scripts/image.sh engine      install docker.io and start dockerd unless an engine already answers
#   scripts/image.sh base        make the local stand-in of the Dockerfile's base image unless it exists
#   scripts/image.sh stop-engine stop the dockerd this script started (by its recorded pid), nothing else
#
# No registry can be reached here, so nothing is pulled:
# - the engine is Debian's docker.io (dockerd 20.10 and /usr/bin/docker with a built-in BuildKit). Another docker
#   client (28.x, without buildx) may come first on PATH and fails BuildKit builds, so /usr/bin/docker is always
#   called by its path. dockerd runs with --bridge=none --iptables=false --ip-masq=false: builds and containers use
#   `--network host`, so their traffic stays on loopback and no private-range address is ever made;
# - the base, `public.ecr.aws/debian/debian:bookworm-slim` (ECR Public's copy of Docker's official Debian image) is
#   made with `debootstrap --variant=minbase` from the Debian mirror apt uses here, trimmed like Debian's slim
#   images (which are made the same way) and `docker import`ed under that exact name: BuildKit then takes it from
#   the engine's own store and the Dockerfile builds unchanged;
# - pip inside the build needs the CA bundle that PIP_CERT names here (TLS is inspected): it is passed as the
#   BuildKit secret `pip-cert`, which the Dockerfile uses only when present (CodeBuild builds without it).
#
# The build context mirrors what the CDK asset sends (stacks/endpoint.py): only container/ and handler/ (plus the
# folder DEFAULT_TOKENIZER names, if set, passed as the build argument of that name), without Python bytecode.
#
# Environment: MME_IMAGE (tag, default mme-serving:local), DEFAULT_TOKENIZER (a folder under the repository root),
# MME_DEBIAN_MIRROR (default: the mirror of apt's bookworm source), MME_DOCKER_STATE (default /var/lib/mme-docker:
# dockerd.pid records the engine this script started, dockerd.log is its log).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
DEBOOTSTRAP=/usr/sbin/debootstrap
IMAGE="${MME_IMAGE:-mme-serving:local}"
BASE_IMAGE=public.ecr.aws/debian/debian:bookworm-slim
SUITE=bookworm
STATE="${MME_DOCKER_STATE:-/var/lib/mme-docker}"
PID_FILE="$STATE/dockerd.pid"
LOG_FILE="$STATE/dockerd.log"
# The PATH Docker's official images declare; `docker import` declares none.
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DOCKER_BUILDKIT=1

say() { echo "image.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "run as root (it installs packages, starts dockerd and runs debootstrap)"
}

install_tools() {
    local missing=()
    [ -x "$DOCKER" ] && [ -x "$DOCKERD" ] || missing+=(docker.io)
    [ -x "$DEBOOTSTRAP" ] || missing+=(debootstrap)
    [ "${#missing[@]}" = 0 ] && return
    need_root
    say "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

engine_answers() {
    timeout 10 "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# The pid recorded by this script, if that process is still a dockerd (else the record is stale).
recorded_engine_pid() {
    local pid
    [ -f "$PID_FILE" ] || return 1
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$DOCKERD" ] || return 1
    echo "$pid"
}

start_engine() {
    install_tools
    if engine_answers; then
        say "engine: Docker $("$DOCKER" version --format '{{.Server.Version}}') already answers"
        return
    fi
    need_root
    mkdir -p "$STATE"
    if pid="$(recorded_engine_pid)"; then
        die "the dockerd this script started (pid $pid) runs but does not answer; see $LOG_FILE, stop it with '$0 stop-engine'"
    fi
    rm -f "$PID_FILE"
    say "engine: starting dockerd (log $LOG_FILE)"
    # setsid: a Ctrl-C of `make image` must not reach the engine. No descriptor of the caller is kept open.
    setsid "$DOCKERD" --bridge=none --iptables=false --ip-masq=false --pidfile /var/run/docker.pid \
        </dev/null >>"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    for _ in $(seq 120); do
        if engine_answers; then
            say "engine: Docker $("$DOCKER" version --format '{{.Server.Version}}') started, pid $pid (recorded in $PID_FILE)"
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            tail -n 20 "$LOG_FILE" >&2
            die "dockerd exited while starting; its log is $LOG_FILE"
        fi
        sleep 0.5
    done
    die "dockerd (pid $pid) did not answer within 60 s; see $LOG_FILE, stop it with '$0 stop-engine'"
}

stop_engine() {
    local pid
    if ! pid="$(recorded_engine_pid)"; then
        [ -f "$PID_FILE" ] && rm -f "$PID_FILE" && say "engine: removed a stale $PID_FILE"
        say "engine: none started by this script is running; nothing stopped"
        return
    fi
    say "engine: stopping dockerd pid $pid"
    kill -TERM "$pid"
    for _ in $(seq 120); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            say "engine: stopped"
            return
        fi
        sleep 0.5
    done
    die "dockerd pid $pid still runs 60 s after SIGTERM"
}

# The mirror of apt's source of suite $1 (deb822 .sources stanzas or one-line `deb` entries); empty if none.
apt_source() {
    local suite="$1" mirror=""
    shopt -s nullglob
    local sources=(/etc/apt/sources.list.d/*.sources)
    local lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    shopt -u nullglob
    if [ "${#sources[@]}" -gt 0 ]; then
        mirror="$(awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
            {
                types = uris = suites = ""; enabled = 1
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/) types = $i
                    if ($i ~ /^URIs:/) uris = $i
                    if ($i ~ /^Suites:/) suites = $i
                    if ($i ~ /^Enabled: *no/) enabled = 0
                }
                if (enabled && types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite "([ \t]|$)")) {
                    split(uris, parts, /[ \t]+/); print parts[2]; exit
                }
            }' "${sources[@]}")"
    fi
    if [ -z "$mirror" ]; then
        for list in "${lists[@]}"; do
            [ -f "$list" ] || continue
            mirror="$(awk -v suite="$suite" '$1 == "deb" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }' "$list")"
            [ -n "$mirror" ] && break
        done
    fi
    echo "$mirror"
}

debian_mirror() {
    local mirror="${MME_DEBIAN_MIRROR:-$(apt_source "$SUITE")}"
    [ -n "$mirror" ] || die "no '$SUITE' source in /etc/apt/sources.list*; set MME_DEBIAN_MIRROR"
    echo "$mirror"
}

make_base() {
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base: $BASE_IMAGE present"
        return
    fi
    need_root
    local mirror rootfs
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/mme-base.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: the folder to remove is this one
    trap "rm -rf '$rootfs'" EXIT
    say "base: debootstrap --variant=minbase $SUITE from $mirror (about half a minute)"
    "$DEBOOTSTRAP" --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
        {
            tail -n 20 "$rootfs.log" >&2
            die "debootstrap failed; its log is $rootfs.log"
        }
    rm -f "$rootfs.log"
    slim "$rootfs" "$mirror"
    say "base: importing as $BASE_IMAGE (a local stand-in: the real one is pulled on AWS)"
    tar -C "$rootfs" --numeric-owner -c . |
        "$DOCKER" import --change "ENV PATH=$DEFAULT_PATH" --change 'CMD ["bash"]' \
            --message "local stand-in made by scripts/image.sh: debootstrap --variant=minbase $SUITE $mirror" \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
}

# What Debian's slim images add to a minbase root file system (debuerreotype's "slimify" and minimizing config):
# no documentation, manual pages or translations, now or from later installs; apt keeps no downloaded packages;
# no service is started by a package's installation.
slim() {
    local rootfs="$1" mirror="$2"
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# The "slim" variant: files containers rarely need are not installed.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    # The sources Debian's images declare, on the mirrors apt uses here: the release, its updates, its security suite.
    rm -f "$rootfs/etc/apt/sources.list"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg security
    security="$(apt_source "$SUITE-security")"
    security="${security:-${mirror%/}-security}"
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n\n' \
        "$mirror" "$SUITE" "$SUITE" "$keyring" >"$rootfs/etc/apt/sources.list.d/debian.sources"
    printf 'Types: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
        "$security" "$SUITE" "$keyring" >>"$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.bash_history
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
}

build_image() {
    local context
    context="$(mktemp -d "${TMPDIR:-/tmp}/mme-context.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: the folder to remove is this one
    trap "rm -rf '$context'" EXIT
    local sources=(container handler)
    local args=()
    if [ -n "${DEFAULT_TOKENIZER:-}" ]; then
        [ -d "$ROOT/$DEFAULT_TOKENIZER" ] || die "DEFAULT_TOKENIZER=$DEFAULT_TOKENIZER is not a folder under $ROOT"
        sources+=("$DEFAULT_TOKENIZER")
        args+=(--build-arg "DEFAULT_TOKENIZER=$DEFAULT_TOKENIZER")
    fi
    (cd "$ROOT" && tar -c --exclude=__pycache__ --exclude='*.pyc' "${sources[@]}") | tar -x -C "$context"
    if [ -n "${PIP_CERT:-}" ]; then
        [ -f "$PIP_CERT" ] || die "PIP_CERT=$PIP_CERT is not a file"
        args+=(--secret "id=pip-cert,src=$PIP_CERT")
    fi
    say "image: building $IMAGE from container/Dockerfile (context: ${sources[*]})"
    "$DOCKER" build --network host --platform linux/amd64 --file "$context/container/Dockerfile" \
        --tag "$IMAGE" "${args[@]}" "$context"
    rm -rf "$context"
    trap - EXIT
    local bytes
    bytes="$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE")"
    say "image: $IMAGE built, $((bytes / 1000000)) MB ($("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE"))"
}

case "${1:-build}" in
build)
    start_engine
    make_base
    build_image
    ;;
engine) start_engine ;;
base)
    start_engine
    make_base
    ;;
stop-engine) stop_engine ;;
*) die "unknown command '$1'; use build, engine, base or stop-engine" ;;
esac
