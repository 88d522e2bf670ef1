"""Mitigator plugins (dotsd.mitigate): the interface, the ``log`` plugin, the registry, and the
failure path of RFC 9132 §4.4.2 (a failing plugin → 'attack-exceeded-capability')."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from dotsd.mitigate import registry
from dotsd.mitigate.base import (
    INDEFINITE,
    DropCounters,
    Feedback,
    FeedbackSink,
    FeedbackStatus,
    MitigationOrder,
    Mitigator,
    MitigatorAction,
    MitigatorConfigError,
    MitigatorError,
    Targets,
    action_for,
    execute,
)
from dotsd.mitigate.log import LogMitigator, format_fields
from dotsd.mitigate.registry import PluginLoadError, UnknownMitigatorError
from dotsd.signal.lifecycle import MitigationEvent, Status, transition
from dotsd.signal.mitigation import MitigationPutOutcome, MitigationTable
from dotsd.signal.records import Counters
from dotsd.signal.scope import MITIGATION_MEMBER

CUID = "dz6pHjaADkaFTbjr0JGBpw"
T0 = 1_700_000_000.0
SCOPE_JSON: dict[str, Any] = {
    "target-prefix": ["2001:db8:6401::1/128", "192.0.2.7/24"],
    "target-port-range": [{"lower-port": 443}, {"lower-port": 8000, "upper-port": 8080}],
    "target-protocol": [6, 17],
    "target-fqdn": ["www.example.com"],
    "target-uri": ["https://example.com/a?b=c d"],
    "alias-name": ["web-servers"],
}


def order(
    action: MitigatorAction = MitigatorAction.APPLY, mid: int = 1, cuid: str = CUID, **targets: Any
) -> MitigationOrder:
    t = Targets.from_json(targets or {"target-prefix": ["2001:db8:6401::1/128"]})
    return MitigationOrder(action, cuid, mid, t, lifetime=3600, expires_at=T0 + 3600)


class Sink:
    """A feedback sink recording what it gets, with a way to wait for the next one."""

    def __init__(self) -> None:
        self.got: list[Feedback] = []
        self._event = asyncio.Event()

    def __call__(self, feedback: Feedback) -> None:
        self.got.append(feedback)
        self._event.set()

    async def wait(self, count: int = 1) -> list[Feedback]:
        async with asyncio.timeout(2):
            while len(self.got) < count:
                self._event.clear()
                await self._event.wait()
        return self.got


async def settle() -> None:
    """Let tasks scheduled with a zero delay run."""
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------
# Orders and feedback values


def test_targets_from_scope_json() -> None:
    t = Targets.from_json(SCOPE_JSON)
    assert t.prefixes == (
        ipaddress.ip_network("2001:db8:6401::1/128"),
        ipaddress.ip_network("192.0.2.0/24"),  # ip-prefix: host bits dropped
    )
    assert t.port_ranges == ((443, 443), (8000, 8080))  # missing upper-port: one port
    assert t.protocols == (6, 17)
    assert (t.fqdns, t.uris, t.aliases) == (
        ("www.example.com",),
        ("https://example.com/a?b=c d",),
        ("web-servers",),
    )
    assert Targets.from_json({}) == Targets()


def test_order_fields_in_order() -> None:
    o = dataclasses.replace(order(**SCOPE_JSON), cdid="gw1")
    assert list(o.fields()) == [
        "action",
        "cuid",
        "mid",
        "cdid",
        "prefixes",
        "ports",
        "protocols",
        "fqdns",
        "uris",
        "aliases",
        "lifetime",
        "expires_at",
    ]
    assert o.fields()["ports"] == "443,8000-8080"
    indefinite = MitigationOrder(MitigatorAction.APPLY, CUID, 2, Targets())
    assert indefinite.lifetime == INDEFINITE and "expires_at" not in indefinite.fields()


@pytest.mark.parametrize(
    ("was", "now", "expired", "expected"),
    [
        (False, True, False, MitigatorAction.APPLY),  # created / triggered on signal loss
        (True, True, False, None),  # refresh, mitigator feedback, DELETE (1-4 → 5)
        (True, False, False, MitigatorAction.WITHDRAW),  # 5 → 6, overridden, preempted (7)
        (True, False, True, MitigatorAction.EXPIRE),  # lifetime over (RFC 9132 §4.4.1.1)
        (False, False, False, None),  # preconfigured (8) removed
    ],
)
def test_action_for(was: bool, now: bool, expired: bool, expected: MitigatorAction | None) -> None:
    assert action_for(was_active=was, is_active=now, expired=expired) is expected


@pytest.mark.parametrize("fs", list(FeedbackStatus))
def test_feedback_status_matches_signal_layer(fs: FeedbackStatus) -> None:
    status = Status.from_label(fs.value)  # RFC 9132 §4.4.2 Table 3 labels
    assert 1 <= status <= 4  # only what a mitigator may report
    event = MitigationEvent(fs.signal_event)
    # The event leads to this status (RFC 9132 §4.4.2 Table 3 via the lifecycle table).
    start = (
        Status.ATTACK_STOPPED
        if fs is FeedbackStatus.IN_PROGRESS
        else Status.ATTACK_MITIGATION_IN_PROGRESS
    )
    assert transition(start, event) is status


def test_drop_counters_convert_to_signal_counters() -> None:
    c = DropCounters(bytes_dropped=1, bps_dropped=2, pkts_dropped=3, pps_dropped=4)
    assert Counters(**dataclasses.asdict(c)) == Counters(1, 2, 3, 4)


# ---------------------------------------------------------------------------------------------
# The log plugin


async def test_log_plugin_logs_every_order(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dotsd.mitigate.log")
    m = LogMitigator({"feedback_delay": None})
    await m.start()
    orders = [
        order(MitigatorAction.APPLY, 1, **SCOPE_JSON),
        order(MitigatorAction.APPLY, 2),
        order(MitigatorAction.WITHDRAW, 1),
        order(MitigatorAction.EXPIRE, 2),
    ]
    for o in orders:
        await m.apply(o) if o.action is MitigatorAction.APPLY else await m.withdraw(o)
    await m.stop()
    records = [r for r in caplog.records if r.name == "dotsd.mitigate.log"]
    assert len(records) == len(orders)
    for record, o in zip(records, orders, strict=True):
        line = record.getMessage()
        assert "\n" not in line
        assert line.startswith(f"mitigation action={o.action.value} cuid={CUID} mid={o.mid} ")
        assert record.dots == o.fields()  # type: ignore[attr-defined]
    first = records[0].getMessage()
    assert "prefixes=2001:db8:6401::1/128,192.0.2.0/24 ports=443,8000-8080 protocols=6,17" in first
    assert 'uris="https://example.com/a?b=c d"' in first  # quoted: space and '='


async def test_log_line_cannot_be_forged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dotsd.mitigate.log")
    evil = 'x\nmitigation action=withdraw cuid=victim mid="1'
    await LogMitigator({"feedback_delay": None}).apply(order(cuid=evil))
    (record,) = caplog.records
    line = record.getMessage()
    assert "\n" not in line
    assert f"cuid={json.dumps(evil)} " in line


def test_format_fields() -> None:
    assert (
        format_fields({"a": "1", "b": "", "c": "x=y", "d": "é"}) == 'a=1 b="" c="x=y" d="\\u00e9"'
    )


async def test_log_plugin_tracks_active_set() -> None:
    m = LogMitigator({"feedback_delay": None})
    a1, a2 = order(mid=1), order(mid=2)
    await m.apply(a1)
    await m.apply(a2)
    assert dict(m.active) == {(CUID, 1): a1, (CUID, 2): a2}
    refreshed = dataclasses.replace(a1, lifetime=60, expires_at=T0 + 60)
    await m.apply(refreshed)  # idempotent per (cuid, mid): an update
    assert m.active[(CUID, 1)] is refreshed and len(m.active) == 2
    await m.withdraw(order(MitigatorAction.WITHDRAW, 1))
    assert list(m.active) == [(CUID, 2)]
    await m.withdraw(order(MitigatorAction.WITHDRAW, 1))  # unknown: no error
    await m.withdraw(order(MitigatorAction.EXPIRE, 2))
    assert not m.active
    with pytest.raises(TypeError):
        m.active[(CUID, 3)] = a1  # type: ignore[index]


async def test_log_plugin_reports_successfully_mitigated() -> None:
    sink = Sink()
    m = LogMitigator({"feedback_delay": 0}, sink)
    await m.apply(order(mid=7))
    (fb,) = await sink.wait()
    assert fb.key == (CUID, 7)
    assert fb.status is FeedbackStatus.SUCCESSFULLY_MITIGATED and fb.counters is None
    await settle()
    assert len(sink.got) == 1  # once


async def test_log_plugin_feedback_waits_for_the_delay() -> None:
    sink = Sink()
    m = LogMitigator({"feedback_delay": 0.05}, sink)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await m.apply(order())
    await settle()
    assert sink.got == []
    await sink.wait()
    assert loop.time() - started >= 0.04


async def test_log_plugin_no_feedback_after_withdraw_or_stop() -> None:
    sink = Sink()
    m = LogMitigator({"feedback_delay": 0}, sink)
    await m.apply(order(mid=1))
    await m.withdraw(order(MitigatorAction.WITHDRAW, 1))
    await m.apply(order(mid=2))
    await m.stop()
    await settle()
    assert sink.got == []


async def test_log_plugin_reapply_gives_one_feedback() -> None:
    sink = Sink()
    m = LogMitigator({"feedback_delay": 0}, sink)
    await m.apply(order(mid=1))
    await m.apply(order(mid=1))
    await sink.wait()
    await settle()
    assert len(sink.got) == 1


async def test_log_plugin_feedback_off() -> None:
    sink = Sink()
    m = LogMitigator({"feedback_delay": None}, sink)
    await m.apply(order())
    await settle()
    assert sink.got == []


async def test_log_plugin_survives_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    def broken(feedback: Feedback) -> None:
        raise RuntimeError("sink down")

    m = LogMitigator({"feedback_delay": 0}, broken)
    await m.apply(order())
    await settle()
    assert any("feedback" in r.getMessage() and r.exc_info for r in caplog.records)
    assert list(m.active) == [(CUID, 1)]


async def test_log_plugin_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dotsd.mitigate.log")
    await LogMitigator({"level": "debug", "feedback_delay": None}).apply(order())
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG


@pytest.mark.parametrize(
    "config",
    [
        {"feedback_delay": -1},
        {"feedback_delay": "1"},
        {"feedback_delay": True},
        {"level": "LOUD"},
        {"level": 20},
        {"delay": 1},
    ],
)
def test_log_plugin_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(MitigatorConfigError, match="log mitigator"):
        LogMitigator(config)


# ---------------------------------------------------------------------------------------------
# The failure path (base.execute)


class FailingMitigator(Mitigator):
    """A deliberately broken plugin."""

    name = "failing"

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        report: FeedbackSink | None = None,
        *,
        error: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        super().__init__(config, report)
        self.error = error if error is not None else MitigatorError("BGP session down")
        self.hang = hang

    async def apply(self, order: MitigationOrder) -> None:
        if self.hang:
            await asyncio.Event().wait()
        raise self.error

    async def withdraw(self, order: MitigationOrder) -> None:
        raise self.error


async def test_failing_apply_reports_exceeded_capability(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink()
    m = FailingMitigator(report=sink)
    assert await execute(m, order(mid=5)) is False
    (fb,) = sink.got
    assert fb.key == (CUID, 5)
    assert fb.status is FeedbackStatus.EXCEEDED_CAPABILITY  # RFC 9132 §4.4.2 status 4
    assert fb.detail == "BGP session down"
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "BGP session down" in record.getMessage()


async def test_plugin_bug_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    m = FailingMitigator(report=sink, error=KeyError("oops"))
    assert await execute(m, order()) is False
    assert [f.status for f in sink.got] == [FeedbackStatus.EXCEEDED_CAPABILITY]
    assert "KeyError" in sink.got[0].detail
    (record,) = caplog.records
    assert record.exc_info is not None  # traceback kept for the bug report


async def test_hanging_apply_times_out() -> None:
    sink = Sink()
    m = FailingMitigator(report=sink, hang=True)
    assert await execute(m, order(), timeout=0.01) is False
    assert [f.status for f in sink.got] == [FeedbackStatus.EXCEEDED_CAPABILITY]
    assert "timed out" in sink.got[0].detail


async def test_failing_withdraw_is_logged_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    m = FailingMitigator(report=sink)
    for action in (MitigatorAction.WITHDRAW, MitigatorAction.EXPIRE):
        assert await execute(m, order(action)) is False
    assert sink.got == []  # the mitigation is leaving: no status for the client
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]


async def test_failing_sink_during_failure_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    def broken(feedback: Feedback) -> None:
        raise RuntimeError("sink down")

    assert await execute(FailingMitigator(report=broken), order()) is False
    assert any("feedback sink failed" in r.getMessage() for r in caplog.records)


async def test_execute_does_not_swallow_cancellation() -> None:
    m = FailingMitigator(hang=True)
    task = asyncio.create_task(execute(m, order(), timeout=None))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_execute_success() -> None:
    sink = Sink()
    m = LogMitigator({"feedback_delay": None}, sink)
    assert await execute(m, order()) is True
    assert await execute(m, order(MitigatorAction.WITHDRAW)) is True
    assert sink.got == [] and not m.active


async def test_feedback_drives_the_mitigation_table() -> None:
    """The wiring the server does: a Change → an order → feedback → mitigator_report."""
    table = MitigationTable()
    body = {MITIGATION_MEMBER: {"scope": [{**SCOPE_JSON, "lifetime": 3600}]}}
    outcome = table.put(CUID, 9, None, body, T0)
    assert isinstance(outcome, MitigationPutOutcome)
    (change,) = outcome.changes
    mit = change.mitigation
    was = change.before is not None and change.before in (1, 2, 3, 4, 5)
    action = action_for(was_active=was, is_active=mit.is_active)
    assert action is MitigatorAction.APPLY
    o = MitigationOrder(
        action, mit.cuid, mit.mid, Targets.from_json(mit.scope.to_json()), mit.lifetime
    )

    def to_table(fb: Feedback) -> None:
        assert fb.status is not None
        table.mitigator_report(fb.cuid, fb.mid, MitigationEvent(fb.status.signal_event), T0 + 1)

    m = LogMitigator({"feedback_delay": 0}, to_table)
    assert await execute(m, o)
    await settle()
    after = table.lookup(CUID, 9)
    assert after is not None and after.status is Status.ATTACK_SUCCESSFULLY_MITIGATED

    failing = FailingMitigator(report=to_table)
    assert not await execute(failing, o)
    after = table.lookup(CUID, 9)
    assert after is not None and after.status is Status.ATTACK_EXCEEDED_CAPABILITY


# ---------------------------------------------------------------------------------------------
# Registry


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: tuple[str, str]) -> None:
    points = [EntryPoint(name, value, registry.GROUP) for name, value in eps]

    def entry_points(*, group: str) -> list[EntryPoint]:
        return [ep for ep in points if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", entry_points)


def test_create_log_by_default() -> None:
    sink = Sink()
    m = registry.create(config={"feedback_delay": 2}, report=sink)
    assert isinstance(m, LogMitigator) and m.name == "log" and m.feedback_delay == 2.0
    m.report(Feedback(CUID, 1))
    assert sink.got == [Feedback(CUID, 1)]


async def test_create_without_sink_discards_feedback(caplog: pytest.LogCaptureFixture) -> None:
    """Without a feedback sink a mitigator drops its feedback: no error, and nothing reaches
    another mitigator's sink (there is no shared default)."""
    elsewhere = Sink()
    with_sink = registry.create("log", {"feedback_delay": 0}, report=elsewhere)
    without = registry.create("log", {"feedback_delay": 0})
    assert isinstance(without, LogMitigator)
    for m in (with_sink, without):
        assert await execute(m, order())
    await settle()
    # Both reported (the one with a sink: its feedback arrived); the other's went nowhere,
    # without an error (a failing sink is logged, test_log_plugin_survives_a_failing_sink).
    assert [(f.mid, f.status) for f in elsewhere.got] == [
        (1, FeedbackStatus.SUCCESSFULLY_MITIGATED)]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    without.report(Feedback(CUID, 1, FeedbackStatus.STOPPED))  # reported directly: the same
    assert len(elsewhere.got) == 1


def test_unknown_name_lists_known(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("acme", "dotsd.mitigate.log:LogMitigator"))
    with pytest.raises(UnknownMitigatorError) as info:
        registry.create("exabgp")
    assert str(info.value) == "unknown mitigator 'exabgp'; known: log, acme"
    assert info.value.known == ["log", "acme"]
    assert isinstance(info.value, LookupError)


def test_entry_point_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("acme", "test_mitigate:FailingMitigator"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # "test_mitigate" importable
    assert registry.available() == ["log", "acme"]
    m = registry.create("acme", {"x": 1})
    assert type(m).__name__ == "FailingMitigator" and m.config == {"x": 1}


def test_entry_point_cannot_shadow_builtin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_entry_points(monkeypatch, ("log", "test_mitigate:FailingMitigator"))
    assert isinstance(registry.create("log"), LogMitigator)
    assert registry.available() == ["log"]
    assert any("built-in" in r.getMessage() for r in caplog.records)


def test_broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(
        monkeypatch,
        ("missing", "dotsd.no_such_module:Plugin"),
        ("noattr", "dotsd.mitigate.log:NoSuchClass"),
        ("notcallable", "dotsd.mitigate.registry:GROUP"),
        ("notmitigator", "builtins:dict"),
    )
    for name in ("missing", "noattr", "notcallable", "notmitigator"):
        with pytest.raises(PluginLoadError, match=repr(name)):
            registry.create(name)
    assert issubclass(PluginLoadError, MitigatorError)


def test_plugin_config_error_propagates() -> None:
    with pytest.raises(MitigatorConfigError):
        registry.create("log", {"feedback_delay": -3})
