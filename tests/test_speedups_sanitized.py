"""The C accelerators under AddressSanitizer and UndefinedBehaviorSanitizer.

They read attacker-controlled bytes (datagrams, DTLS records). This builds both with
``-fsanitize=address,undefined`` into a copy of the package and runs their differential tests
(random records, mutations, garbage of every length, random addresses) against that copy in a
child Python with the sanitizer runtime preloaded: any out-of-bounds access, use after free or
undefined behaviour aborts the child and fails this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dotsd import _speedups

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_record_speedups.py", "tests/test_speedups_dgram.py"]

# slow: a build of the accelerators and a child pytest (about 20 s); network: that child
# runs tests/test_speedups_dgram.py, on loopback sockets.
pytestmark = [pytest.mark.slow, pytest.mark.network, pytest.mark.timeout(600)]


def _runtime(name: str) -> str | None:
    """The path of a sanitizer runtime gcc links with, or None."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    out = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def test_differential_tests_pass_under_sanitizers(tmp_path: Path) -> None:
    if _speedups.pure_python():
        pytest.skip(f"{_speedups.PURE_PYTHON_ENV} is set")
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip("no gcc with ASan/UBSan runtimes here")
    if any(_speedups.load(name) is None for name in _speedups.MODULES):
        pytest.skip("the accelerators do not build here (tests/test_speedups_loader.py)")
    # A copy of the package, whose accelerators are the sanitized builds.
    shutil.copytree(REPO / "src" / "dotsd", tmp_path / "dotsd",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    flags = "-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined " \
            "-fno-sanitize-recover=undefined"
    env = dict(os.environ, CFLAGS=flags, LDFLAGS="-fsanitize=address,undefined")
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path),
         "--build-temp", str(tmp_path / "obj")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    built = sorted(p.name.split(".")[0] for p in (tmp_path / "dotsd" / "_speedups").glob("*.so"))
    assert built == sorted(_speedups.MODULES), build.stderr[-2000:]
    child_env = dict(
        os.environ, PYTHONPATH=str(tmp_path), LD_PRELOAD=f"{asan} {ubsan}",
        # Python itself is not instrumented and keeps memory to the end: leaks are not
        # what this looks for; any other report aborts.
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        # Every Python object from malloc, so that ASan sees the bounds of small ones too
        # (pymalloc's arenas are opaque to it).
        PYTHONMALLOC="malloc",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    child_env.pop(_speedups.PURE_PYTHON_ENV, None)
    # The child checks, in the process that runs the tests, that the sanitizer runtime is
    # there and that both modules are the sanitized copies, then runs the tests.
    child = f"""
import ctypes, sys
ctypes.CDLL(None).__asan_init  # AttributeError unless ASan is loaded
import dotsd._speedups._dgram as d, dotsd._speedups._record as r
assert d.__file__.startswith({str(tmp_path)!r}) and r.__file__.startswith({str(tmp_path)!r})
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-x", *{TESTS!r}]))
"""
    run = subprocess.run([sys.executable, "-c", child], cwd=REPO, env=child_env,
                         capture_output=True, text=True, timeout=500)
    found = run.stderr.find("Sanitizer")
    assert found < 0, run.stderr[max(0, found - 200):found + 4000]  # the sanitizer's report
    report = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert " passed" in run.stdout and " skipped" not in run.stdout, report
