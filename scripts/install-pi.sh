#!/usr/bin/env bash
# Install a door on Raspberry Pi OS (64-bit): everything docs/install-pi.md does by hand.
#
#   sudo scripts/install-pi.sh [--device-dir DIR] [--dry-run]
#
# Run it from the checkout it installs (e.g. /opt/checkin, as in docs/install-pi.md): the
# venv is made there and the units point at it. Idempotent: run it again after `git pull`
# (it reinstalls the package and the units) or with another --device-dir. Steps:
#   1. apt packages (python3-picamera2 and python3-lgpio come from apt, not pip)
#   2. the `checkin` user, in the gpio and video groups
#   3. the venv with --system-site-packages (so it sees picamera2 and lgpio), the package
#   4. /etc/checkin: the door's config (from --device-dir, as `checkin provision` wrote it,
#      with its token; else the example config if there is none yet)
#   5. the door's and the sync daemon's units, enabled; started (restarted) only when
#      `checkin config check` passes, else it says what to edit.
# --dry-run prints each step (`+ command`) and changes nothing; what it would skip because
# it is already done is said as `# ...`.
set -euo pipefail

APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ETC_DIR=/etc/checkin
UNIT_DIR=/etc/systemd/system
USER_NAME=checkin
STATE_DIR=/var/lib/checkin
PACKAGES=(python3-venv python3-picamera2 python3-lgpio libzbar0 git)
GROUPS_NEEDED=(gpio video)
UNITS=(checkin-door.service checkin-sync.service)
# Where `checkin provision` puts the token unless the template says otherwise; the door's
# unit hides this path from the door process (InaccessiblePaths=).
DEFAULT_TOKEN_FILE=$ETC_DIR/device.token

dry_run=0
device_dir=""

usage() {
    echo "usage: sudo $0 [--device-dir DIR] [--dry-run]" >&2
    echo "  --device-dir DIR  a folder written by checkin provision (door.toml and its token)" >&2
    echo "  --dry-run         print each step and change nothing" >&2
    exit 2
}

# Print a step as it would be typed, then run it (unless --dry-run).
run() {
    local arg
    printf '+'
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
            printf ' %s' "$arg"
        else
            printf ' %q' "$arg"
        fi
    done
    printf '\n'
    if [ "$dry_run" -eq 0 ]; then
        "$@"
    fi
}

say() { printf '# %s\n' "$*"; }

die() {
    echo "install-pi.sh: $*" >&2
    exit 2
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) dry_run=1 ;;
            --device-dir)
                [ $# -ge 2 ] || usage
                device_dir=$2
                shift ;;
            -h | --help) usage ;;
            *) echo "install-pi.sh: unknown option: $1" >&2; usage ;;
        esac
        shift
    done
}

check_machine() {
    local arch
    arch=$(uname -m)
    if [ "$arch" != aarch64 ]; then
        # zxing-cpp has no 32-bit ARM wheels: the door needs the 64-bit OS.
        [ "$dry_run" -eq 1 ] || die "expected 64-bit Raspberry Pi OS (aarch64), not $arch"
        say "this is $arch, not aarch64: a real install needs 64-bit Raspberry Pi OS"
    fi
    if [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "run it as root (sudo $0), or with --dry-run to see the steps"
    fi
    if [ -n "$device_dir" ] && [ ! -f "$device_dir/door.toml" ]; then
        die "--device-dir $device_dir: no door.toml there (expected a folder checkin provision wrote)"
    fi
}

install_packages() {
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${PACKAGES[@]}"
}

make_user() {
    local group
    for group in "${GROUPS_NEEDED[@]}"; do
        if ! getent group "$group" >/dev/null; then
            run groupadd --system "$group"
        fi
    done
    if id -u "$USER_NAME" >/dev/null 2>&1; then
        say "user $USER_NAME exists: making sure it is in ${GROUPS_NEEDED[*]}"
        run usermod --append --groups "$(IFS=,; echo "${GROUPS_NEEDED[*]}")" "$USER_NAME"
    else
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --groups "$(IFS=,; echo "${GROUPS_NEEDED[*]}")" \
            "$USER_NAME"
    fi
}

make_venv() {
    local venv=$APP_DIR/.venv
    if [ ! -x "$venv/bin/python" ]; then
        # picamera2 and lgpio come from apt: the venv must see the system site-packages.
        run python3 -m venv --system-site-packages "$venv"
    elif grep -q '^include-system-site-packages = false' "$venv/pyvenv.cfg"; then
        say "$venv was made without --system-site-packages: letting it see them"
        run sed -i 's/^include-system-site-packages = false/include-system-site-packages = true/' \
            "$venv/pyvenv.cfg"
    else
        say "$venv exists and sees the system site-packages"
    fi
    run "$venv/bin/pip" install --quiet --upgrade "$APP_DIR"
}

# Where the config at $1 keeps its token on the device ([server] token_file; relative
# paths are the config's folder's, i.e. $ETC_DIR once installed).
token_file_of() {
    python3 - "$1" "$ETC_DIR" "$DEFAULT_TOKEN_FILE" <<'EOF'
import os, sys, tomllib
with open(sys.argv[1], "rb") as f:
    server = tomllib.load(f).get("server", {})
path = server.get("token_file", sys.argv[3]) if isinstance(server, dict) else sys.argv[3]
print(os.path.join(sys.argv[2], path))
EOF
}

install_config() {
    run install -d -m 0755 -o root -g root "$ETC_DIR"
    if [ -n "$device_dir" ]; then
        local token_dest token_src
        token_dest=$(token_file_of "$device_dir/door.toml")
        token_src=$device_dir/$(basename "$token_dest")
        [ -f "$token_src" ] || die "--device-dir $device_dir: no token file $(basename "$token_dest")"
        run install -m 0644 -o root -g root "$device_dir/door.toml" "$ETC_DIR/door.toml"
        # Readable by the checkin user only: the sync daemon runs as it.
        run install -m 0600 -o "$USER_NAME" -g "$USER_NAME" "$token_src" "$token_dest"
    elif [ -f "$ETC_DIR/door.toml" ]; then
        say "$ETC_DIR/door.toml exists: kept"
    else
        run install -m 0644 -o root -g root "$APP_DIR/config/door.example.toml" \
            "$ETC_DIR/door.toml"
        say "edit $ETC_DIR/door.toml ([device] id, [server]; see docs/provisioning.md)"
    fi
}

install_units() {
    local unit
    for unit in "${UNITS[@]}"; do
        run install -m 0644 "$APP_DIR/systemd/$unit" "$UNIT_DIR/$unit"
        if [ "$APP_DIR" != /opt/checkin ]; then
            # The units name /opt/checkin: point them at this checkout instead.
            run sed -i "s|/opt/checkin|$APP_DIR|g" "$UNIT_DIR/$unit"
        fi
    done
    run systemctl daemon-reload
    run systemctl enable "${UNITS[@]}"
}

start_units() {
    local check=("$APP_DIR/.venv/bin/checkin" config check "$ETC_DIR/door.toml")
    if [ "$dry_run" -eq 1 ]; then
        run "${check[@]}"
        say "if the config check passes:"
        run systemctl restart "${UNITS[@]}"
    elif run "${check[@]}"; then
        # Restarted, not just started: a new token file is hidden from the door only
        # when it starts, and a new package or config needs a restart to be used.
        run systemctl restart "${UNITS[@]}"
        say "done: checkin doctor --config $ETC_DIR/door.toml checks the whole door"
    else
        say "not started: fix $ETC_DIR/door.toml (and its token), then"
        say "sudo systemctl restart ${UNITS[*]}"
    fi
}

main() {
    parse_args "$@"
    check_machine
    install_packages
    make_user
    make_venv
    install_config
    install_units
    start_units
}

main "$@"
