#!/usr/bin/env bash
# Build a local Python base image for the runner Dockerfile, for machines where no
# registry image (python:3.11-slim) can be pulled.
#
#   bash tests/compose/make_base_image.sh [TAG]      # prints the tag on its last line
#
# It makes a minimal root filesystem of the distribution this machine runs with
# `debootstrap --variant=minbase` (python3, python3-venv, python3-pip), shapes it like the
# official slim image (`python` and `pip` in /usr/local/bin, pip allowed to install
# system-wide) and imports it with `docker import`. The mirror is read from this machine's
# own apt sources at run time. The image is cached by its tag: when TAG already exists,
# nothing is built.
#
# The machine's CA bundle is copied into the image (so `pip install` inside `docker build`
# trusts the same TLS proxy the host does). The image stays on this machine; the bundle is
# never written into the repository.
set -euo pipefail

log() { printf 'make_base_image: %s\n' "$*" >&2; }
die() { printf 'make_base_image: error: %s\n' "$*" >&2; exit 1; }

[ -r /etc/os-release ] || die "no /etc/os-release: cannot tell which distribution to bootstrap"
# shellcheck disable=SC1091
. /etc/os-release
CODENAME="${VERSION_CODENAME:-}"
[ -n "$CODENAME" ] || die "/etc/os-release has no VERSION_CODENAME"
TAG="${1:-${RUNNER_BASE_TAG:-runner-base:${CODENAME}}}"
DOCKER="${DOCKER:-docker}"

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "using cached base image $TAG"
    echo "$TAG"
    exit 0
fi

# The first mirror this machine's apt uses for the suite $CODENAME itself (not -security,
# not -updates): deb822 files first, then the one-line format.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$CODENAME" '
            function flush() {
                if (uris != "" && enabled && has_suite) { split(uris, u, " "); print u[1]; found = 1; exit }
                uris = ""; has_suite = 0; enabled = 1
            }
            BEGIN { enabled = 1 }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:"    { $1 = ""; uris = $0 }
            tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
            tolower($1) == "enabled:" { if (tolower($2) == "no") enabled = 0 }
            END { if (!found) flush() }
        ' "$f" | head -n 1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v suite="$CODENAME" '
            $1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
}
MIRROR="$(find_mirror | head -n 1)"
[ -n "$MIRROR" ] || die "no apt source for suite '$CODENAME' found in /etc/apt (sources.list.d/*.sources or sources.list)"

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt_log="$(mktemp)"
    timeout 300 apt-get install -y -q debootstrap </dev/null >"$apt_log" 2>&1 \
        || { timeout 300 apt-get update -q </dev/null >>"$apt_log" 2>&1 \
             && timeout 300 apt-get install -y -q debootstrap </dev/null >>"$apt_log" 2>&1; } \
        || { tail -n 20 "$apt_log" >&2; rm -f "$apt_log"; die "could not install debootstrap"; }
    rm -f "$apt_log"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/runner-base.XXXXXX")"
cleanup() { rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT
ROOTFS="$WORK/rootfs"

log "debootstrap --variant=minbase $CODENAME (this takes about a minute)"
started=$SECONDS
if ! timeout 600 debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,passwd,ca-certificates \
        "$CODENAME" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (log above)"
fi
log "debootstrap done in $((SECONDS - started)) s"

# Shape it like the official slim image.
mkdir -p "$ROOTFS/usr/local/bin"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip"
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
# Trust what the host trusts (the TLS proxy in front of the package registries).
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$ROOTFS/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndisable-pip-version-check = true\n' >"$ROOTFS/etc/pip.conf"
# Smaller image: no package lists, caches, docs or manuals.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*

log "importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . | timeout 300 "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "runner local base: debootstrap minbase $CODENAME with python3" \
    - "$TAG" >/dev/null
"$DOCKER" run --rm "$TAG" python -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10), sys.version' \
    || die "the imported image $TAG has no usable Python 3.10+"
log "built $TAG in $((SECONDS - started)) s"
echo "$TAG"
