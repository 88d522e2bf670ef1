"""Which compiled accelerators dotsd uses, and the switch that turns them off."""

from __future__ import annotations

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
