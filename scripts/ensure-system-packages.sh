#!/usr/bin/env bash
# Make sure the system services the platform needs are installed.
#   ensure-system-packages.sh run    -> mosquitto (the embedded run starts its own broker)
#   ensure-system-packages.sh test   -> mosquitto, redis-server, PostgreSQL server binaries, chromium
#                                       (the console's browser tests drive Debian's chromium)
# On Debian/Ubuntu as root the missing packages are installed; elsewhere we stop with the exact command.
set -euo pipefail
purpose=${1:-test}

have_pg() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
if [ "$purpose" = test ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  have_pg || missing+=(postgresql)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; the platform runs its own instances, so stop those.
  for svc in mosquitto redis-server postgresql; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
    service "$svc" stop >/dev/null 2>&1 || true
  done
  exit 0
fi

echo "Missing system packages: ${missing[*]}" >&2
if command -v apt-get >/dev/null 2>&1; then
  echo "Install them with:  sudo apt-get install -y ${missing[*]}" >&2
elif command -v brew >/dev/null 2>&1; then
  echo "Install them with:  brew install ${missing[*]/redis-server/redis}" >&2
else
  echo "Install them with your system's package manager, then run this again." >&2
fi
exit 1
