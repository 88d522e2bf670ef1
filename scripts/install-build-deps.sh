#!/usr/bin/env bash
# What building dotsd's optional C accelerators needs (src/dotsd/_speedups): a C compiler
# and OpenSSL's headers. Without them dotsd installs and runs in pure Python.
exec "$(dirname "$0")/debian-packages.sh" "dotsd will run without its C accelerators" \
    gcc libc6-dev libssl-dev
