"""The DOTS signal channel end to end under loss and broken connections, over real sockets.

* DTLS: a UDP relay on loopback between a dotsd SignalClient and a dotsd SignalServer drops
  every other datagram in each direction, from the first ClientHello on. The handshake still
  completes (dotsd drives the DTLS retransmission timers, RFC 6347 §4.2.4), the session
  configuration is discovered (the one exchange let through), and then, under loss, the
  client creates a mitigation (a Non-confirmable PUT repeated until answered, RFC 9132
  §4.4.1), reads its status and withdraws it (§4.4.2, §4.4.4) with Confirmable requests
  retransmitted (RFC 7252 §4.2).
* TLS: the TCP connection is cut (RST both ways) in the middle of the session; the client
  notices, redials with its connect factory (RFC 9132 §4.7: "the DOTS client MUST try to
  re-establish the DOTS signal channel session") and carries on with the same mitigation.

The server's configuration policy has short CoAP timers (an operator's choice for a LAN,
within RFC 9132 §4.5), so that retransmissions are quick; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from support.relays import every_other, no_loss, tcp_relay, udp_relay
from support.signalnet import HOST, STEP, SignalNet, cuid_of, signal_listeners

from dotsd.agents.client import SignalClient
from dotsd.coap.numbers import Code
from dotsd.dtls.connection import HandshakeTimers
from dotsd.link import Link
from dotsd.pki import PkiPaths, load_certificate
from dotsd.signal.config import ConfigBounds, ConfigPolicy, ConfigSet
from dotsd.signal.pacing import RttEstimator

pytestmark = [pytest.mark.network, pytest.mark.timeout(40)]

SCOPE: dict[str, Any] = {"target-prefix": ["2001:db8:6401::1/128"],
                         "target-port-range": [{"lower-port": 443}],
                         "target-protocol": [6], "lifetime": 3600}

# Short CoAP timers (RFC 7252 §4.8 via RFC 9132 §4.5.2): ACK_TIMEOUT 0.2 s, 5 retransmissions.
FAST = ConfigSet(max_retransmit=5, ack_timeout=Decimal("0.20"),
                 ack_random_factor=Decimal("1.10"))
FAST_BOUNDS = ConfigBounds(minimum=ConfigSet(heartbeat_interval=15, missing_hb_allowed=3,
                                             probing_rate=5, max_retransmit=2,
                                             ack_timeout=Decimal("0.10"),
                                             ack_random_factor=Decimal("1.10")),
                           default=FAST)
FAST_POLICY = ConfigPolicy(mitigating=FAST_BOUNDS, idle=FAST_BOUNDS)
# DTLS handshake retransmission (RFC 6347 §4.2.4.1) from 0.1 s, doubling up to 0.8 s.
TIMERS = HandshakeTimers(initial=0.1, maximum=0.8)


def make_client(pki: PkiPaths) -> SignalClient:
    # An RTT estimate from earlier exchanges paces the repeated NON requests (RFC 9132 §4.4:
    # without one, at most one every 3 s); heartbeats are off, so that only the requests
    # under test cross the relay.
    estimator = RttEstimator(min_rto=0.2)
    estimator.sample(0.01)
    return SignalClient.for_certificate(load_certificate(pki.client_cert), timeout=STEP,
                                        heartbeat=(0.0, 3), estimator=estimator,
                                        reconnect_delay=0.1)


async def check_withdrawn(client: SignalClient, mid: int) -> None:
    """Withdraw (2.02); the mitigation is then active but terminating (RFC 9132 §4.4.4)."""
    withdrawn = await client.withdraw(mid)
    assert withdrawn.code == Code.DELETED
    after = await client.status(mid)
    assert after.status == "dots-client-withdrawn-mitigation"


async def check_lifecycle(client: SignalClient, net: SignalNet) -> int:
    reply = await client.mitigate(SCOPE)
    # The first PUT or its answer may be lost: the repetition then refreshes the request
    # the first one created (2.04, RFC 9132 §4.4.1.3) instead of creating it (2.01).
    assert reply.code in (Code.CREATED, Code.CHANGED), reply
    assert reply.lifetime == 3600
    mid = reply.mid
    assert mid is not None
    assert [(m.cuid, m.mid) for m in net.server.table] == [(client.cuid, mid)]
    status = await client.status(mid)
    assert status.status == "attack-mitigation-in-progress"
    assert status.scopes[0]["target-protocol"] == [6]
    return mid


async def test_dtls_every_other_datagram_lost(pki: PkiPaths, tmp_path: Path) -> None:
    async with (signal_listeners(pki, tmp_path / "state", config_policy=FAST_POLICY,
                                 dtls_kw={"timers": TIMERS}) as net,
                udp_relay((HOST, net.dtls_port), every_other) as relay):
        client = make_client(pki)

        async def dial() -> Link:
            return await net.dial_dtls(client.node, port=relay.port, timers=TIMERS)

        client.connect = dial
        try:
            async with asyncio.timeout(15):
                await client.start()  # the DTLS handshake through the lossy relay
                handshake_drops = dict(relay.dropped)
                assert handshake_drops["up"] >= 1 and handshake_drops["down"] >= 1, relay
                # Session configuration discovery (RFC 9132 §4.5.1) lets the client use the
                # server's short timers. This one exchange goes through without loss: with
                # the default ACK_TIMEOUT of 2 s a Confirmable request may need its 4th
                # transmission through this relay (~20 s).
                relay.drop = no_loss
                config = await client.session_config_get()
                relay.drop = every_other
                assert config is not None and client.server_config is not None
                link = client.link
                assert link is not None
                params = client.node.endpoint.peer_state(link)
                assert params is not None and params.params.ack_timeout == 0.2

                mid = await check_lifecycle(client, net)
                assert net.server.store is not None
                stored = net.server.store.get_mitigation(client.cuid, mid)
                assert stored is not None and stored.status == 1

                await check_withdrawn(client, mid)
        finally:
            await client.close()
        # The loss was real in both directions after the handshake too, and nothing needed
        # a new session.
        assert relay.dropped["up"] > handshake_drops["up"], relay.dropped
        assert relay.dropped["down"] > handshake_drops["down"], relay.dropped
        assert len(relay.flows) == 1 and client.reconnects == 0


async def test_tls_connection_cut_and_redialled(pki: PkiPaths, tmp_path: Path) -> None:
    async with (signal_listeners(pki, tmp_path / "state") as net,
                tcp_relay((HOST, net.tls_port)) as relay):
        client = make_client(pki)

        async def dial() -> Link:
            return await net.dial_tls(client.node, port=relay.port)

        client.connect = dial
        try:
            async with asyncio.timeout(15):
                await client.start()
                mid = await check_lifecycle(client, net)
                first = client.link

                assert relay.cut() == 1  # mid-session: RST to both ends
                await asyncio.wait_for(client.session_lost.wait(), STEP)
                while client.reconnects < 1 or client.link is None:
                    await asyncio.sleep(0.02)
                assert client.link is not first and relay.accepted == 2

                # The same mitigation, through the new connection.
                status = await client.status(mid)
                assert status.status == "attack-mitigation-in-progress"
                assert status.lifetime is not None and 0 < status.lifetime <= 3600
                await check_withdrawn(client, mid)
        finally:
            await client.close()
        assert cuid_of(pki) == client.cuid
        assert net.server.store is not None
        stored = net.server.store.get_mitigation(client.cuid, mid)
        assert stored is not None and stored.status == 5
