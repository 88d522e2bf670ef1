"""Build the C load generator once into bench/.build/ (rebuilt when loadgen.c changes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen.c"
BUILD_DIR = HERE / ".build"
BINARY = BUILD_DIR / "loadgen"
CFLAGS = ("-O2", "-Wall", "-Wextra")
LIBS = ("-lssl", "-lcrypto")


class BuildError(RuntimeError):
    """The load generator could not be built (no compiler, no OpenSSL headers...)."""


def find_compiler() -> str | None:
    """``$CC`` if set, else ``cc`` or ``gcc`` from PATH."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("cc") or shutil.which("gcc")


def build_loadgen(force: bool = False) -> Path:
    """The path of an up-to-date loadgen binary; compiles it if missing or stale."""
    if (not force and BINARY.exists()
            and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime):
        return BINARY
    cc = find_compiler()
    if cc is None:
        raise BuildError("no C compiler found (install gcc, or set CC)")
    BUILD_DIR.mkdir(exist_ok=True)
    ignore = BUILD_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# build output of bench/build.py\n*\n")
    tmp = BUILD_DIR / f"loadgen.{os.getpid()}.tmp"
    cmd = [cc, *CFLAGS, "-o", str(tmp), str(SOURCE), *LIBS]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"compiler timed out: {' '.join(cmd)}") from exc
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        hint = ""
        if "openssl/" in done.stderr:
            hint = " (OpenSSL headers missing? install libssl-dev)"
        raise BuildError(f"{' '.join(cmd)} failed{hint}:\n{done.stderr.strip()}")
    os.replace(tmp, BINARY)  # atomic: a concurrent build never sees half a binary
    return BINARY
