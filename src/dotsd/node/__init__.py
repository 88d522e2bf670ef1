"""The asyncio CoAP node: the application's CoAP client and server API.

:class:`CoapNode` (:mod:`dotsd.node.coapnode`) runs the sans-IO :mod:`dotsd.coap` endpoint
over the links of any :mod:`dotsd.transport` (UDP, DTLS, TCP, TLS), dialled or accepted: it is
the :class:`~dotsd.link.LinkHandler` the transports call, and it offers requests
(:class:`RequestError` when one gets no response), observations (:class:`Observation`) and
notifications to the layers above. It sits above both ``coap`` and ``transport``, as aioquic's
``asyncio/`` sits above ``quic/``.

    node = CoapNode(site)
    listener = await serve_dtls(node, "::", 4646, context)
    response = await node.request(link, message)
"""

from dotsd.node.coapnode import CoapNode, Observation, RequestError

__all__ = ["CoapNode", "Observation", "RequestError"]
