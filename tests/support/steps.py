"""Counting the Python work a call does, to bound its cost without reading a clock.

A test that means "this is not quadratic" or "this does not redo that work each time" counts
the steps the code takes instead of timing it: the count is the same on a loaded machine as
on an idle one, and a regression fails at once instead of after minutes.

    with counting_steps(budget=50_000) as steps:
        table.put(...)
    assert steps.count > 0  # (optional: the block did run)

A step is a Python function call (any module: the standard library's work counts too, e.g.
parsing an IP prefix) or a line run in dotsd's own modules. Only the calling thread is
traced; C code (dict lookups, sorting) is not counted, which is the point: the work a Python
loop does grows with its steps.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import dotsd

_DOTSD = str(Path(dotsd.__file__).resolve().parent)


class TooManySteps(AssertionError):
    pass


class Steps:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.count = 0

    def step(self) -> None:
        self.count += 1
        if self.count > self.budget:
            raise TooManySteps(f"more than {self.budget} steps")


@contextlib.contextmanager
def counting_steps(budget: int) -> Iterator[Steps]:
    """Count the steps the block takes; fail (:class:`TooManySteps`, an AssertionError) as
    soon as there are more than ``budget``, also when the code under test swallowed the
    exception that stopped the count."""
    steps = Steps(budget)
    own: dict[str, bool] = {}

    def line(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            steps.step()
        return line

    def call(frame: FrameType, event: str, arg: Any) -> Any:
        steps.step()
        name = frame.f_code.co_filename
        mine = own.get(name)
        if mine is None:
            mine = own[name] = str(Path(name).resolve()).startswith(_DOTSD)
        return line if mine else None

    previous = sys.gettrace()
    sys.settrace(call)
    try:
        yield steps
    finally:
        sys.settrace(previous)
    if steps.count > budget:
        raise TooManySteps(f"more than {budget} steps (the exception was caught on the way)")
