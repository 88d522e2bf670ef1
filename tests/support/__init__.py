"""Helpers for the tests, not tests themselves: pytest collects nothing here.

- ``coapsim``: two CoAP endpoints in fake time (sans-IO);
- ``memlinks``: in-memory links between two link handlers;
- ``loopback``: loopback hosts, bounded waits, a tap on a node's datagrams;
- ``relays``: UDP and TCP relays that can lose or hold what crosses them;
- ``signalnet``: a DOTS signal server on real DTLS and TLS listeners, and its clients;
- ``peers``: the independent CoAP peers of the interop tests (libcoap, aiocoap);
- ``pki``: more client certificates of the shared test PKI (the ``pki`` fixture);
- ``steps``: counting the Python steps a call takes, to bound its cost without a clock;
- ``waiting``: bounded waits on a condition, instead of sleeping and then asserting.

The tests import them as ``support.NAME``: pytest puts ``tests/`` on ``sys.path`` (the
default ``prepend`` import mode; ``tests/`` has no ``__init__.py``).
"""
