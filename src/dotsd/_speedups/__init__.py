"""Optional compiled parts of dotsd's hot path, each with a pure-Python twin.

``_dgram`` reads and writes batches of datagrams with one system call (recvmmsg/sendmmsg);
``_record`` seals and opens DTLS 1.2 AEAD records on OpenSSL's EVP interface. Both are built
by ``pip install`` when a compiler (and, for ``_record``, OpenSSL's headers) is there, and
skipped otherwise: dotsd then runs the Python code, which behaves the same (tests compare
the two). ``DOTSD_PURE_PYTHON=1`` in the environment ignores them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_PYTHON_ENV = "DOTSD_PURE_PYTHON"


def pure_python() -> bool:
    """True when the environment asks for the Python code only."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """The compiled module ``dotsd._speedups.<name>``, or None (not built, or disabled)."""
    if pure_python():
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


MODULES = ("_dgram", "_record")


def status() -> dict[str, str]:
    """Each accelerator: "on", "not built" or "off" (DOTSD_PURE_PYTHON)."""
    if pure_python():
        return dict.fromkeys(MODULES, "off")
    return {name: "on" if load(name) is not None else "not built" for name in MODULES}


def report() -> str:
    """One line for people: which accelerators this installation runs with."""
    states = status()
    parts = [f"{name.lstrip('_')} {state}" for name, state in states.items()]
    note = "" if all(v == "on" for v in states.values()) else " (the rest runs in Python)"
    return "C accelerators: " + ", ".join(parts) + note
