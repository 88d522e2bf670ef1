"""The mitigator bridge: orders from server changes, feedback back into statuses, a failing
plugin never breaks the signal channel."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from test_signal_server import TIMEOUT, Env, entry, make_env

from dotsd.agents.bridge import MitigatorBridge
from dotsd.coap.numbers import Code
from dotsd.mitigate.base import (
    DropCounters,
    Feedback,
    FeedbackSink,
    FeedbackStatus,
    MitigationOrder,
    Mitigator,
    MitigatorAction,
    MitigatorError,
)
from dotsd.pki import PkiPaths


class Recorder(Mitigator):
    name: ClassVar[str] = "recorder"

    def __init__(self, config: Mapping[str, Any] | None = None,
                 report: FeedbackSink | None = None) -> None:
        super().__init__(config, report)
        self.orders: list[MitigationOrder] = []
        self.fail = False

    async def apply(self, order: MitigationOrder) -> None:
        self.orders.append(order)
        if self.fail:
            raise MitigatorError("backend down")

    async def withdraw(self, order: MitigationOrder) -> None:
        self.orders.append(order)


def wire(env: Env) -> tuple[Recorder, MitigatorBridge]:
    bridge = MitigatorBridge(lambda report: Recorder(report=report), env.server, timeout=5)
    assert isinstance(bridge.mitigator, Recorder)
    return bridge.mitigator, bridge


async def test_apply_feedback_withdraw(pki: PkiPaths) -> None:
    env = make_env(pki)
    plugin, bridge = wire(env)
    assert (await env.put(7)).code == Code.CREATED
    await bridge.drain(TIMEOUT)
    assert [o.action for o in plugin.orders] == [MitigatorAction.APPLY]
    order = plugin.orders[0]
    assert order.key == (env.cuid, 7) and order.targets.prefixes
    obs = env.observe(7)
    assert entry(await obs.next(TIMEOUT))["status"] == "attack-mitigation-in-progress"
    # Feedback from the plugin moves the status and carries counters (RFC 9132 §4.4.2).
    plugin.report(Feedback(env.cuid, 7, FeedbackStatus.SUCCESSFULLY_MITIGATED,
                           counters=DropCounters(bytes_dropped=1000, pkts_dropped=3)))
    note = entry(await obs.next(TIMEOUT))
    assert note["status"] == "attack-successfully-mitigated"
    assert note["bytes-dropped"] == "1000"
    # Counters alone do not change the status.
    plugin.report(Feedback(env.cuid, 7, counters=DropCounters(bytes_dropped=5000)))
    note = entry(await obs.next(TIMEOUT))
    assert note["status"] == "attack-successfully-mitigated" and note["bytes-dropped"] == "5000"
    obs.cancel()
    # Feedback about an unknown mitigation is ignored, not an error.
    plugin.report(Feedback(env.cuid, 999, FeedbackStatus.STOPPED))
    # DELETE: active but terminating (status 5) keeps mitigating; expiry of that period stops.
    assert (await env.ask(_delete(env, 7))).code == Code.DELETED
    env.clock.now += 3600
    env.server.handle_timer()
    await bridge.drain(TIMEOUT)
    assert [o.action for o in plugin.orders] == [MitigatorAction.APPLY, MitigatorAction.WITHDRAW]


async def test_failing_plugin_reports_exceeded_capability(pki: PkiPaths) -> None:
    env = make_env(pki)
    plugin, bridge = wire(env)
    plugin.fail = True
    assert (await env.put(8)).code == Code.CREATED
    await bridge.drain(TIMEOUT)
    assert bridge.failures == 1
    for _ in range(50):
        status = entry(await env.get(8))["status"]
        if status != "attack-mitigation-in-progress":
            break
        await asyncio.sleep(0.02)
    assert status == "attack-exceeded-capability"
    # The server still serves this client.
    assert (await env.put(9, _other_body())).code == Code.CREATED


async def test_resume_after_restart(pki: PkiPaths, tmp_path: Path) -> None:
    env = make_env(pki, tmp_path)
    assert (await env.put(10)).code == Code.CREATED
    env.server.store.close()  # type: ignore[union-attr]
    again = make_env(pki, tmp_path)
    plugin, bridge = wire(again)
    assert bridge.resume(again.server.table) == 1
    await bridge.drain(TIMEOUT)
    assert [(o.action, o.mid) for o in plugin.orders] == [(MitigatorAction.APPLY, 10)]


def _delete(env: Env, mid: int) -> Any:
    from test_signal_server import request

    from dotsd.signal.uri import mitigate_path
    return request(Code.DELETE, mitigate_path(env.cuid, mid))


def _other_body() -> dict[str, Any]:
    from test_signal_server import FIG7
    body = {k: dict(v) for k, v in FIG7.items()}
    member = next(iter(body))
    scope = dict(body[member]["scope"][0])
    scope["target-prefix"] = ["2001:db8:7777::/48"]
    scope.pop("mid", None)
    body[member]["scope"] = [scope]
    return body

