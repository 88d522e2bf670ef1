"""DOTS agents on asyncio: the layer that runs the sans-IO rules of :mod:`dotsd.signal` with
sockets, clocks, files and a store.

* :mod:`dotsd.agents.server` — :class:`~dotsd.agents.server.SignalServer`: the signal channel
  server on a :class:`~dotsd.node.CoapNode`, its state in a :mod:`dotsd.store` store.
* :mod:`dotsd.agents.client` — :class:`~dotsd.agents.client.SignalClient`: the signal channel
  client, with its heartbeat task and reconnects.
* :mod:`dotsd.agents.dial` — :class:`~dotsd.agents.dial.ServerDialer`: reaching a DOTS server
  over DTLS and TLS, Happy Eyeballs style (RFC 9132 §4.3).
* :mod:`dotsd.agents.mids` — :class:`~dotsd.agents.mids.MidFile`: the client's last 'mid'
  values, kept in a locked file across runs (the rule is :func:`dotsd.signal.mids.next_mid`).
* :mod:`dotsd.agents.bridge` — :class:`~dotsd.agents.bridge.MitigatorBridge`: hands the
  server's mitigation changes to a :mod:`dotsd.mitigate` plugin and its feedback back.

Submodules are imported explicitly; importing this package loads nothing else.
"""
