#!/usr/bin/env bash
# Install the few system packages checkin needs that pip cannot: the venv module
# (Debian and Ubuntu ship it separately), ZBar (for the pyzbar decoder) and Debian's
# chromium, the real browser the organizer pages' tests drive through Playwright
# (tests/browser.py; Playwright's own browser downloads are not used, see docs/dependencies.md),
# the shellcheck linter, which the tests run on the shell scripts, and PostgreSQL, whose
# throwaway clusters the server's PostgreSQL tests run on (checkin/harness.py, Postgres),
# and faketime, which runs a door and its daemon with a shifted clock (tests/test_field_time.py).
# Run by `make` before it creates .venv; asks for sudo only if something is missing.
set -euo pipefail

python=${PYTHON:-python3}
missing=()
"$python" -c 'import ensurepip, venv' 2>/dev/null \
    || missing+=("python3-venv")
ldconfig -p 2>/dev/null | grep -q 'libzbar\.so\.0' || missing+=(libzbar0)
# The tests look for it where Debian puts it (or at $CHECKIN_CHROMIUM).
[ -x "${CHECKIN_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
# The tests lint the shell scripts (tests/test_install_script.py).
command -v shellcheck >/dev/null || missing+=(shellcheck)
# The tests' PostgreSQL: initdb in $CHECKIN_PG_BIN, Debian's versioned folder or the PATH.
[ -x "${CHECKIN_PG_BIN:-/nonexistent}/initdb" ] \
    || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    || command -v initdb >/dev/null \
    || missing+=(postgresql)
# A door and its daemon three days behind, as a Pi booted offline (tests/test_field_time.py).
command -v faketime >/dev/null || missing+=(faketime)
# systemd-analyze verify checks the units (tests/test_systemd.py); a container may lack it.
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "checkin needs: ${missing[*]} (no apt-get here: install them with your package manager)" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}"
