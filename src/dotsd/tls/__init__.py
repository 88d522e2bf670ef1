"""TLS for CoAP over TCP (RFC 8323 §9.1) as DOTS profiles it (RFC 9132 §7.1)."""

from dotsd.tls.context import ALPN_COAP, TLS12_CIPHERS, client_context, server_context

__all__ = ["ALPN_COAP", "TLS12_CIPHERS", "client_context", "server_context"]
