"""DOTS signal channel rules (RFC 9132 §4), sans-IO: no sockets, no clock reads, no storage.

Every module here is plain code: inputs (parsed requests, ``now``, peer identities) in,
decisions and replies out. The asyncio agents that run these rules over the network, with a
store and a clock (``SignalServer``, ``SignalClient``, the dialer, the 'mid' file, the
mitigator bridge), are in :mod:`dotsd.agents`.

* :mod:`dotsd.signal.uri` — the Uri-Path / Uri-Query of ``/.well-known/dots/mitigate``
  (RFC 9132 §4.2, §4.4.1.1, §4.4.1.2, §4.4.2).
* :mod:`dotsd.signal.errors` — :class:`~dotsd.signal.errors.SignalError` and its subclasses,
  each tied to a CoAP response code (RFC 9132 §9).
* :mod:`dotsd.signal.identity` — who an authenticated client is, and the 'cuid' it must use
  (RFC 9132 §4.4.1.1, §8).
* :mod:`dotsd.signal.policy` — who may ask mitigation for what, and the lifetimes granted.
* :mod:`dotsd.signal.targets` — an index of the targets of stored mitigations, for overlap
  checks.
* :mod:`dotsd.signal.lifecycle` — a mitigation's statuses and the events that move them, as a
  transition table (RFC 9132 §4.4.2 Table 3).
* :mod:`dotsd.signal.scope` — the scope of a mitigation request: parsing and the overlap of two
  scopes (RFC 9132 §4.4.1.1, §4.4.1.3).
* :mod:`dotsd.signal.records` — a mitigation as the server holds it, with its conflict
  information and counters, and their stored form.
* :mod:`dotsd.signal.mitigation` — the mitigation rules of RFC 9132 §4.4 as a
  :class:`~dotsd.signal.mitigation.MitigationTable`.
* :mod:`dotsd.signal.mids` — how a client chooses the 'mid' of a new request, with its
  rollover (RFC 9132 §4.4.1.1).
* :mod:`dotsd.signal.config` — session configuration (RFC 9132 §4.5).
* :mod:`dotsd.signal.heartbeat` — the heartbeat mechanism, for clients and servers alike
  (RFC 9132 §4.7).
* :mod:`dotsd.signal.pacing` — pacing of Non-confirmable mitigation requests (RFC 9132 §4.4).
* :mod:`dotsd.signal.ratelimit` — the server's per-client request rate limit
  (RFC 9132 §4.4.1.3).
* :mod:`dotsd.signal.redirect` — redirected signaling to an alternate server (RFC 9132 §4.6).
* :mod:`dotsd.signal.session` — the session lifecycle (connecting, established, degraded,
  lost, closed) as a transition table (RFC 9132 §4.7).
* :mod:`dotsd.signal.client_session` — a DOTS client's whole session behaviour on fake or
  real time: heartbeats, configuration sets and refresh, redial, redirection expiry, DTLS
  re-probing, 'mid' values (RFC 9132 §4.3-§4.7).
* :mod:`dotsd.signal.server_session` — the server's view of one client session:
  configuration set in force, heartbeat monitor of the server role, lifecycle.
* :mod:`dotsd.signal.server_core` — the DOTS server's rules for all its clients: requests in;
  responses, state to keep, notifications, mitigator changes and link parameters out.

Submodules are imported explicitly; importing this package loads nothing else.
"""
