#!/usr/bin/env bash
# Installs what the end-to-end tests need on a Debian 12 machine (run as root).
# Idempotent: every step is skipped when already done, so a re-run takes a second.
#   - Debian packages: openssh-server (the test "instances"' sshd), openssh-client, python3-venv,
#     util-linux (unshare, setpriv), procps, iproute2 (ip route in the instance namespaces), ca-certificates,
#     chromium (the HTML report test), acl (setfacl)
#   - the user `rally` (home /home/rally), whom the instances let in besides root
#   - a Python venv with moto[server] at $REPO/target/tools/moto-venv (override: RALLYCTL_MOTO_VENV)
#   - a Python venv with apache-otava (the change-point peer of tests/changepoints.rs) at
#     $REPO/target/tools/otava-venv (override: RALLYCTL_OTAVA_VENV)
#   - the wheels of esrally (the version rallyctl installs by default) and everything it needs, at
#     /var/cache/rallyctl-e2e/esrally-wheels (override: RALLYCTL_ESRALLY_WHEELS): the instances'
#     package mirror (tests/support/README.md)
# esrally is NOT installed here: rallyctl's own install template installs it on the "instance".
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOTO_VERSION="5.2.5"
MOTO_VENV="${RALLYCTL_MOTO_VENV:-$REPO/target/tools/moto-venv}"
OTAVA_VERSION="0.8.0"
OTAVA_VENV="${RALLYCTL_OTAVA_VENV:-$REPO/target/tools/otava-venv}"
# chromium: tests/results.rs renders the HTML report headless and checks it loads cleanly.
# acl: setfacl, which lets the instances' user reach root's Python (below).
APT_PACKAGES=(openssh-server openssh-client python3-venv util-linux procps iproute2 ca-certificates chromium acl)

log() { printf '[setup-env] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    log "warning: not root; apt-get and the per-instance PID namespaces (unshare --pid) need root"
fi

# --- Debian packages -----------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Keep the package's postinst from starting a system-wide sshd on port 22: the tests start
    # their own sshd processes. policy-rc.d exit 101 = "action forbidden" for invoke-rc.d.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
else
    log "Debian packages present: ${APT_PACKAGES[*]}"
fi
test -x /usr/sbin/sshd || { log "error: /usr/sbin/sshd missing after install"; exit 1; }
command -v unshare >/dev/null || { log "error: unshare missing after install"; exit 1; }

# sshd's privilege-separation directory (on tmpfs: gone after a reboot).
if [ ! -d /run/sshd ]; then
    log "creating /run/sshd"
    mkdir -p /run/sshd
    chmod 755 /run/sshd
fi

# --- the instances' unprivileged user ---------------------------------------------------------
# `esrally start` and Elasticsearch refuse to run as root, so the harness's instances also let in
# this user (tests/support/mod.rs NODE_USER), as rallyctl logs in to an Elasticsearch node. Its
# home here is only a mount point: every instance shows a directory of its own there.
NODE_USER=rally
NODE_HOME=/home/rally
if ! getent passwd "$NODE_USER" >/dev/null; then
    log "creating the user $NODE_USER (home $NODE_HOME)"
    useradd --system --user-group --no-create-home --home-dir "$NODE_HOME" --shell /bin/bash \
        "$NODE_USER"
fi
mkdir -p "$(getent passwd "$NODE_USER" | cut -d: -f6)"
# useradd locks the password ("!"); sshd without PAM (the instances' config) refuses a locked
# account even a key login. "*" matches no password and is not a lock.
if [ "$(getent shadow "$NODE_USER" | cut -d: -f2)" != "*" ]; then
    usermod -p '*' "$NODE_USER"
fi
# The harness puts root's python3 first on that user's PATH: esrally unpacks Elasticsearch with
# tarfile's extraction filter (Python >= 3.11.4), which Debian 12's /usr/bin/python3 (3.11.2)
# lacks. Where root's Python is pyenv's under the 0700 /root, the user may pass through /root
# (no more: it lists nothing there).
setfacl -m "u:$NODE_USER:x" /root

# --- Python venvs: moto, Apache Otava --------------------------------------------------------
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
# venv DIR REQUIREMENT IMPORTS: a venv of its own at DIR holding REQUIREMENT, made again unless
# its marker says so and IMPORTS import there. Kept apart: installed together, pip resolves
# esrally and moto down to old versions.
venv() {
    local dir=$1 requirement=$2 imports=$3
    local marker="$dir/.rallyctl-${requirement//[^A-Za-z0-9.]/-}"
    if [ -f "$marker" ] && "$dir/bin/python" -c "import $imports" 2>/dev/null; then
        log "$requirement venv present: $dir"
        return
    fi
    log "creating a venv for $requirement at $dir with $PYTHON ($("$PYTHON" --version 2>&1))"
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    local start
    start=$(date +%s)
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$requirement"
    "$dir/bin/python" -c "import $imports"
    touch "$marker"
    log "$requirement venv ready in $(($(date +%s) - start)) s"
}
venv "$MOTO_VENV" "moto[server]==$MOTO_VERSION" "moto, boto3"
venv "$OTAVA_VENV" "apache-otava==$OTAVA_VERSION" "otava.analysis"

# --- the instances' package mirror: esrally's wheels -------------------------------------------
# Most e2e tests install esrally with rallyctl's install template, on up to five instances at
# once. From the package index every install resolves, downloads and builds (markupsafe 2.0.1
# has no wheel) anew: some 50 s of CPU with its venv; from these wheels, 27 s, and 20 s without
# compiling byte code up front. The harness's sshd gives sessions PIP_FIND_LINKS, PIP_NO_INDEX
# and PIP_NO_COMPILE, as on a machine behind a package mirror (tests/support/mod.rs
# package_mirror and INSTANCE_PIP_NO_COMPILE). Built with the python3 the instances run
# (root's, first on PATH), and kept where root and NODE_USER can read it wherever the checkout
# is.
ESRALLY_WHEELS="${RALLYCTL_ESRALLY_WHEELS:-/var/cache/rallyctl-e2e/esrally-wheels}"
RALLY_VERSION="$(sed -n 's/^pub const RALLY_VERSION: &str = "\(.*\)";$/\1/p' "$REPO/src/plan/settings.rs")"
[ -n "$RALLY_VERSION" ] || { log "error: no RALLY_VERSION in src/plan/settings.rs"; exit 1; }
INSTANCE_PYTHON="$(command -v python3)"
wheels_marker="$ESRALLY_WHEELS/.rallyctl-esrally-$RALLY_VERSION-$("$INSTANCE_PYTHON" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
if [ -f "$wheels_marker" ]; then
    log "esrally $RALLY_VERSION wheels present: $ESRALLY_WHEELS"
else
    log "building the wheels of esrally $RALLY_VERSION at $ESRALLY_WHEELS with $INSTANCE_PYTHON"
    rm -rf "$ESRALLY_WHEELS"
    (umask 022 && mkdir -p "$ESRALLY_WHEELS")
    # pip from a venv of its own: a Python may come without its pip module (Debian's does).
    builder="$(mktemp -d)"
    "$INSTANCE_PYTHON" -m venv "$builder"
    "$builder/bin/pip" wheel --quiet --disable-pip-version-check --wheel-dir "$ESRALLY_WHEELS" \
        "esrally==$RALLY_VERSION"
    rm -rf "$builder"
    chmod -R a+rX "$ESRALLY_WHEELS"
    touch "$wheels_marker"
fi

log "done"
