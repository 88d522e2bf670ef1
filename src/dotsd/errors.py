"""The root of every dotsd exception, and its two kinds: whose fault it is.

Every exception class defined under ``dotsd`` derives from :class:`DotsdError` through exactly
one of two kinds, so that a caller can tell at a glance what went wrong and who must act:

- :class:`LocalError`: our side. A bug (a state machine asked for a transition it does not
  allow, a message we cannot encode), a bad call, a bad configuration, or a local resource that
  failed (the store, the PKI files, a mitigator, the 'mid' state file).
- :class:`PeerError`: the other side. The peer sent something wrong (malformed bytes, a body
  that does not validate, a request the DOTS server refuses) or did not answer at all (timeout,
  unreachable, handshake refused).

The classes keep the builtin bases they had (``ValueError``, ``ConnectionError``,
``LookupError``, ``RuntimeError``), so an ``except ValueError`` written before still catches
them. A layer's own base class may span both kinds when its subclasses do:
:class:`dotsd.model.errors.ModelError` is the data model's base (a peer's body that does not
decode or validate, and our own data that cannot be encoded), and only its subclasses choose a
kind, as h11's ``ProtocolError`` does for ``LocalProtocolError`` and ``RemoteProtocolError``.

This module is the bottom of the package: it imports nothing of dotsd.
"""

from __future__ import annotations

__all__ = ["DotsdError", "LocalError", "PeerError"]


class DotsdError(Exception):
    """Anything dotsd raises on purpose; catch a kind below rather than this."""


class LocalError(DotsdError):
    """Our side went wrong: a bug, a bad call, a bad configuration or a local resource."""


class PeerError(DotsdError):
    """The peer went wrong: it sent something the protocol does not allow, or did not answer."""
