#!/usr/bin/env bash
# The Debian packages of the real peers dotsd's tests interoperate with.
# libcoap: CoAP peer; autoconf/automake: to build aiocoap's tinydtls binding (DTLSSocket);
# ethtool: the loss bench's lanes (and their smoke test) turn veth offloads off.
exec "$(dirname "$0")/debian-packages.sh" "tests that need them will skip" \
    libcoap3-bin autoconf automake ethtool
