#!/usr/bin/env bash
# Installs the Debian packages the source plugins call but the machine may lack:
# mariadb-backup (mariabackup, mbstream) for the mariadb plugin's physical mode.
# It only acts as root and only installs what is missing; otherwise it says what
# to install and exits 0, so a non-root developer run is not an error.
set -euo pipefail

need=()
command -v mariabackup >/dev/null 2>&1 || need+=(mariadb-backup)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-apt: missing ${need[*]}; run as root or: apt-get install ${need[*]}" >&2
  exit 0
fi
echo "install-apt: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${need[@]}" || {
  apt-get update
  apt-get install -y --no-install-recommends "${need[@]}"
}
