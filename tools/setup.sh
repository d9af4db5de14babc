#!/usr/bin/env bash
# Set up a fresh Debian machine for voltpilot: system packages the tests need, then a virtual
# environment with the pinned dependencies. Usage: tools/setup.sh PYTHON VENV [DEBIAN_PACKAGE...]
set -euo pipefail
python=${1:?python interpreter}; venv=${2:?venv directory}; shift 2

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q; apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

if ! command -v "$python" >/dev/null 2>&1; then
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python=python3
  else
    echo "setup: voltpilot needs Python 3.11 ($python not found)" >&2; exit 1
  fi
fi
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup: voltpilot needs Python 3.11, $python is $("$python" --version)" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    # Debian ships venv's ensurepip separately.
    rm -rf "$venv"
    apt_install python3.11-venv || apt_install python3-venv
    "$python" -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[dev]'

# The independent OCPP test peer (npm ocpp-rpc, pinned by its lock file).
peer=tests/peers/ocpp_rpc
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
lock=$(sha1sum "$peer/package-lock.json" | cut -c1-40)
if [ "$(cat "$peer/node_modules/.voltpilot-lock" 2>/dev/null)" != "$lock" ]; then
  npm ci --prefix "$peer" --no-audit --no-fund --loglevel=error
  echo "$lock" > "$peer/node_modules/.voltpilot-lock"
fi
echo "setup: ready ($("$venv/bin/python" --version), $venv)"
