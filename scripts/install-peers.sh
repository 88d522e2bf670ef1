#!/usr/bin/env bash
# The Debian packages of the real peers dotsd's tests interoperate with.
# libcoap: CoAP peer; autoconf/automake: to build aiocoap's tinydtls binding (DTLSSocket).
exec "$(dirname "$0")/debian-packages.sh" "tests that need them will skip" \
    libcoap3-bin autoconf automake
