"""CoAP wire codec: RFC 7252 §3 (UDP datagrams) and RFC 8323 §3.2 (TCP/TLS frames).

Decoding never raises anything but :class:`MessageFormatError` (or :class:`Incomplete`
for a partial TCP frame); encoding raises ``ValueError`` for a message that cannot be sent.

The CoAP layer's two kinds of error live here: :class:`CoapDecodeError`, the peer's bytes are
not CoAP (a :class:`~dotsd.errors.PeerError`), and :class:`LocalProtocolError`, a caller of
the endpoint or of the RFC 8323 connection asked for something CoAP does not allow (a
:class:`~dotsd.errors.LocalError`: our bug, not the peer's).
"""

from __future__ import annotations

import struct

from dotsd.coap.message import Message
from dotsd.errors import LocalError, PeerError

_PAYLOAD_MARKER = 0xFF
_MARKER = b"\xff"


class LocalProtocolError(LocalError):
    """A local misuse of the CoAP layer (h11 style: our mistake, not the peer's): answering a
    request twice, a request without a request code, a token in use, a message RFC 8323 does
    not let us send."""


class CoapDecodeError(PeerError):
    """Base class of decoding failures."""


class MessageFormatError(CoapDecodeError):
    """The bytes are not a valid CoAP message (RFC 7252 §4.2, §4.3: reject it).

    ``mid`` and ``mtype`` are set when the fixed header could be read, so that the
    message layer can answer a malformed CON with RST.
    """

    def __init__(self, reason: str, mid: int | None = None, mtype: int | None = None,
                 token: bytes | None = None, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mid = mid
        self.mtype = mtype
        self.token = token
        self.code = code


class Incomplete(CoapDecodeError):
    """A TCP frame is not complete yet; ``needed`` bytes are missing at least."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"{needed} more bytes needed")
        self.needed = needed


# --- options and payload (shared by both framings) ---------------------------------------

def _encode_nibble(value: int) -> tuple[int, bytes]:
    """RFC 7252 §3.1: 4-bit field with 8- or 16-bit extension."""
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    if value < 65805:
        return 14, (value - 269).to_bytes(2, "big")
    raise ValueError(f"option delta/length {value} too large")


_FIXED_HEADER = struct.Struct(">BBH")  # RFC 7252 §3: Ver/T/TKL, Code, Message ID
_BYTE = [bytes((i,)) for i in range(256)]  # one-byte strings, built once (hot path)


def _option_header(delta: int, length: int) -> bytes:
    dn, dext = _encode_nibble(delta)
    ln, lext = _encode_nibble(length)
    return _BYTE[(dn << 4) | ln] + dext + lext


def _encode_options(opts: list[tuple[int, bytes]], parts: list[bytes]) -> bool:
    """Append the options to ``parts``; False if they are not sorted (some were appended:
    the caller takes them back)."""
    last = 0
    for number, value in opts:
        delta = number - last
        if delta < 0:
            return False
        last = number
        length = len(value)
        if length < 13 and delta < 13:
            parts.append(_BYTE[(delta << 4) | length])
        elif length < 13 and delta < 269:  # e.g. Max-Age (14) first: one extension byte
            parts.append(_BYTE[0xD0 | length] + _BYTE[delta - 13])
        else:
            parts.append(_option_header(delta, length))
        parts.append(value)
    return True


def _options_payload_parts(msg: Message, parts: list[bytes]) -> None:
    opts = msg.options
    start = len(parts)
    # Stable sort: repeatable options keep their relative order (RFC 7252 §5.4.5).
    if opts and not _encode_options(opts, parts):
        del parts[start:]
        _encode_options(sorted(opts, key=_number), parts)
    if msg.payload:
        parts.append(_MARKER)  # RFC 7252 §3: payload marker
        parts.append(msg.payload)


def _number(option: tuple[int, bytes]) -> int:
    return option[0]


def encode_options_payload(msg: Message) -> bytes:
    parts: list[bytes] = []
    _options_payload_parts(msg, parts)
    return b"".join(parts)


# C901 (16): every datagram's options in one inlined pass; helpers would add calls per option.
def _decode_options_payload(data: bytes, pos: int, end: int, msg: Message) -> None:  # noqa: C901
    """Parse options and payload from data[pos:end] into msg; raises MessageFormatError."""
    options: list[tuple[int, bytes]] = []
    number = 0
    while pos < end:
        byte = data[pos]
        if byte == _PAYLOAD_MARKER:
            if pos + 1 >= end:
                raise MessageFormatError("payload marker followed by empty payload")
            msg.payload = data[pos + 1:end]
            break
        pos += 1
        delta = byte >> 4
        length = byte & 0x0F
        if delta > 12:
            if delta == 13:
                if pos >= end:
                    raise MessageFormatError("truncated option delta")
                delta = data[pos] + 13
                pos += 1
            elif delta == 14:
                if pos + 2 > end:
                    raise MessageFormatError("truncated option delta")
                delta = ((data[pos] << 8) | data[pos + 1]) + 269
                pos += 2
            else:
                raise MessageFormatError("reserved option delta 15")
        if length > 12:
            if length == 13:
                if pos >= end:
                    raise MessageFormatError("truncated option length")
                length = data[pos] + 13
                pos += 1
            elif length == 14:
                if pos + 2 > end:
                    raise MessageFormatError("truncated option length")
                length = ((data[pos] << 8) | data[pos + 1]) + 269
                pos += 2
            else:
                raise MessageFormatError("reserved option length 15")
        number += delta
        stop = pos + length
        if stop > end:
            raise MessageFormatError("option value runs past the end of the message")
        options.append((number, data[pos:stop]))
        pos = stop
    if options:
        msg.options = options


# --- UDP (RFC 7252 §3) ---------------------------------------------------------------------

def encode(msg: Message) -> bytes:
    """Encode a message as one UDP/DTLS datagram."""
    token = msg.token
    tkl = len(token)
    if tkl > 8:
        raise ValueError("token longer than 8 bytes")
    try:
        head = _FIXED_HEADER.pack(0x40 | (msg.mtype << 4) | tkl, msg.code, msg.mid & 0xFFFF)
    except struct.error as exc:
        raise ValueError(f"cannot encode type {msg.mtype} code {msg.code}: {exc}") from None
    opts = msg.options
    if opts or msg.payload:
        parts = [head, token]
        if opts and not _encode_options(opts, parts):
            del parts[2:]
            _encode_options(sorted(opts, key=_number), parts)
        if msg.payload:
            parts.append(_MARKER)
            parts.append(msg.payload)
        return b"".join(parts)
    return head + token


def decode(data: bytes) -> Message:
    """Decode one UDP/DTLS datagram."""
    size = len(data)
    if size < 4:
        raise MessageFormatError("datagram shorter than the 4-byte header")
    b0, code, mid = _FIXED_HEADER.unpack_from(data)
    if b0 >> 6 != 1:
        raise MessageFormatError(f"unknown version {b0 >> 6}")
    mtype = (b0 >> 4) & 0x03
    tkl = b0 & 0x0F
    if tkl > 8:
        raise MessageFormatError("token length 9-15 is reserved", mid, mtype, code=code)
    pos = 4 + tkl
    if size < pos:
        raise MessageFormatError("datagram shorter than its token", mid, mtype, code=code)
    token = data[4:pos]
    msg = Message(mtype, code, mid, token)
    if size > pos:
        if code == 0:
            # RFC 7252 §4.1: an Empty message has nothing after the header (and tkl 0).
            raise MessageFormatError("empty message with options or payload", mid, mtype, token,
                                     code)
        try:
            _decode_options_payload(data, pos, size, msg)
        except MessageFormatError as exc:
            exc.mid, exc.mtype, exc.token, exc.code = mid, mtype, token, code
            raise
    return msg


# --- TCP / TLS (RFC 8323 §3.2) ------------------------------------------------------------

def encode_tcp(msg: Message) -> bytes:
    """Encode a message as one RFC 8323 frame."""
    tkl = len(msg.token)
    if tkl > 8:
        raise ValueError("token longer than 8 bytes")
    body = encode_options_payload(msg) if (msg.options or msg.payload) else b""
    n = len(body)
    if n < 13:
        head = bytes(((n << 4) | tkl,))
    elif n < 269:
        head = bytes(((13 << 4) | tkl, n - 13))
    elif n < 65805:
        head = bytes(((14 << 4) | tkl,)) + (n - 269).to_bytes(2, "big")
    else:
        head = bytes(((15 << 4) | tkl,)) + (n - 65805).to_bytes(4, "big")
    return head + bytes((msg.code,)) + msg.token + body


def tcp_frame_length(data: bytes | bytearray, max_size: int | None = None) -> int:
    """Total length of the frame at the start of ``data``.

    Raises Incomplete when the length header itself is not complete yet, and
    MessageFormatError when the frame is larger than ``max_size`` or the token
    length is reserved.
    """
    if not data:
        raise Incomplete(1)
    b0 = data[0]
    nib = b0 >> 4
    tkl = b0 & 0x0F
    if tkl > 8:
        raise MessageFormatError("token length 9-15 is reserved")
    if nib < 13:
        ext, length = 0, nib
    else:
        ext = {13: 1, 14: 2, 15: 4}[nib]
        if len(data) < 1 + ext:
            raise Incomplete(1 + ext - len(data))
        raw = int.from_bytes(data[1:1 + ext], "big")
        length = raw + {13: 13, 14: 269, 15: 65805}[nib]
    total = 1 + ext + 1 + tkl + length
    if max_size is not None and total > max_size:
        raise MessageFormatError(f"frame of {total} bytes exceeds the limit of {max_size}")
    return total


def decode_tcp(data: bytes) -> Message:
    """Decode exactly one complete RFC 8323 frame."""
    total = tcp_frame_length(data)
    if len(data) < total:
        raise Incomplete(total - len(data))
    if len(data) > total:
        raise MessageFormatError("trailing bytes after the frame")
    nib = data[0] >> 4
    tkl = data[0] & 0x0F
    pos = 1 + (0 if nib < 13 else {13: 1, 14: 2, 15: 4}[nib])
    code = data[pos]
    token = data[pos + 1:pos + 1 + tkl]
    msg = Message(0, code, 0, token)
    try:
        _decode_options_payload(data, pos + 1 + tkl, total, msg)
    except MessageFormatError as exc:
        exc.token, exc.code = token, code
        raise
    return msg

