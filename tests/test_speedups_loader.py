"""Which compiled accelerators dotsd uses, and the switch that turns them off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dotsd import _speedups


def test_pure_python_switch_turns_every_accelerator_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_speedups.PURE_PYTHON_ENV, "1")
    assert all(_speedups.load(name) is None for name in _speedups.MODULES)
    assert set(_speedups.status().values()) == {"off"}
    assert "runs in Python" in _speedups.report()
    monkeypatch.setenv(_speedups.PURE_PYTHON_ENV, "0")  # "0" means: use them
    assert not _speedups.pure_python()


def test_a_module_that_is_not_there_is_none() -> None:
    assert _speedups.load("_no_such_accelerator") is None


def test_command_line_report() -> None:
    out = subprocess.run([sys.executable, "-m", "dotsd._speedups"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert out.startswith("C accelerators: ")
    for name, state in _speedups.status().items():
        assert f"{name.lstrip('_')} {state}" in out


@pytest.mark.parametrize("name", _speedups.MODULES)
def test_built_where_make_installs_what_building_needs(name: str) -> None:
    # As root `make` installs gcc and libssl-dev before the package, so every accelerator
    # must be there: on CI (root) a broken build fails here instead of passing as skips.
    if _speedups.pure_python():
        pytest.skip(f"{_speedups.PURE_PYTHON_ENV} is set")
    if os.geteuid() != 0:
        pytest.skip("not root: make could not install a compiler or OpenSSL's headers")
    assert _speedups.load(name) is not None, f"dotsd._speedups.{name} failed to build"
