"""dotsd.ratelog: at most ``rate`` lines a second, and a count of the rest."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dotsd.ratelog import RateLimitedLog


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def sink() -> tuple[logging.Logger, Collect]:
    logger = logging.getLogger("dotsd.test.ratelog")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Collect()
    logger.handlers = [handler]
    return logger, handler


def test_budget_per_second_and_summary(sink: tuple[logging.Logger, Collect]) -> None:
    logger, out = sink
    limited = RateLimitedLog(logger, "things", rate=3)
    results = [limited(10.0 + i * 0.1, "thing %d", i) for i in range(8)]  # within 1 s
    assert results == [True] * 3 + [False] * 5
    assert out.lines == ["thing 0", "thing 1", "thing 2"]
    assert limited(11.5, "thing %d", 99)
    assert out.lines[3:] == ["things not logged count=5", "thing 99"]


@given(st.lists(st.floats(0, 0.5), max_size=200), st.integers(0, 5))
def test_every_line_is_logged_or_counted(gaps: list[float], rate: int) -> None:
    logger = logging.getLogger("dotsd.test.ratelog.h")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    out = Collect()
    logger.handlers = [out]
    limited = RateLimitedLog(logger, "x", rate=rate)
    now = 0.0
    for gap in gaps:
        now += gap
        limited(now, "line")
    limited(now + 2.0, "last")  # flushes the count of the final second
    logged = out.lines.count("line")
    counted = sum(int(line.rsplit("=", 1)[1]) for line in out.lines if "count=" in line)
    assert logged + counted == len(gaps)
    # No second ever logged more than the budget.
    assert logged <= rate * (int(now) + 2)
