#!/usr/bin/env bash
# Usage: debian-packages.sh PURPOSE PACKAGE...
# Install the Debian packages that are missing. Only root can; anyone else is told what is
# missing and what that costs (PURPOSE), and the caller goes on without them.
set -euo pipefail
purpose=$1
shift
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "debian-packages: cannot install ${missing[*]} (not root, or no apt-get): $purpose" >&2
    exit 0
fi
echo "debian-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
