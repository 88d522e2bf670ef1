"""DOTS signal channel logic (RFC 9132 §4), sans-IO: no sockets, no clock reads, no storage.

* :mod:`dotsd.signal.uri` — the Uri-Path / Uri-Query of ``/.well-known/dots/mitigate``
  (RFC 9132 §4.2, §4.4.1.1, §4.4.1.2, §4.4.2).
* :mod:`dotsd.signal.errors` — :class:`~dotsd.signal.errors.SignalError` and its subclasses,
  each tied to a CoAP response code (RFC 9132 §9).
* :mod:`dotsd.signal.policy` — who may ask mitigation for what, and the lifetimes granted.
* :mod:`dotsd.signal.mitigation` — the mitigation rules of RFC 9132 §4.4 as a
  :class:`~dotsd.signal.mitigation.MitigationTable`.
* :mod:`dotsd.signal.config` — session configuration (RFC 9132 §4.5).

Submodules are imported explicitly; importing this package loads nothing else.
"""
