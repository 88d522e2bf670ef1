"""Optional C accelerators for dotsd's hot path (see src/dotsd/_speedups/__init__.py).

Each extension is optional: when it cannot be built (no compiler, no OpenSSL headers) the
install goes on and dotsd runs the same code paths in pure Python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # recvmmsg/sendmmsg batches for the datagram transport (Linux; no other dependency).
        Extension("dotsd._speedups._dgram", ["src/dotsd/_speedups/dgram.c"], optional=True,
                  extra_compile_args=["-O2"]),
        # DTLS 1.2 AEAD record protection on OpenSSL's EVP interface (libssl-dev to build).
        Extension("dotsd._speedups._record", ["src/dotsd/_speedups/record.c"],
                  libraries=["crypto"], optional=True, extra_compile_args=["-O2"]),
    ],
)
