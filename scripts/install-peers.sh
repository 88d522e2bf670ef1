#!/usr/bin/env bash
# Install the Debian packages of the real peers dotsd's tests interoperate with.
# As root, missing packages are installed; otherwise the tests that need them skip.
set -euo pipefail
# libcoap: CoAP peer; autoconf/automake: to build aiocoap's tinydtls binding (DTLSSocket).
want=(libcoap3-bin autoconf automake)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers: not root; missing ${missing[*]} (tests that need them will skip)" >&2
    exit 0
fi
echo "install-peers: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
