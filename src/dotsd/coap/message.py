"""The CoAP message as a plain value object (RFC 7252 §3), shared by UDP and TCP framings.

Options are kept as a list of ``(number, raw bytes)`` in the order they were added or
decoded; typed accessors convert on demand. On TCP (RFC 8323) ``mtype`` and ``mid`` are
unused and stay 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from dotsd.coap.numbers import MessageType, OptionNumber, code_str


def encode_uint(value: int) -> bytes:
    """RFC 7252 §3.2: uint option values use the fewest bytes (0 is the empty string)."""
    if value < 0:
        raise ValueError("uint option value must not be negative")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


class Block(NamedTuple):
    """RFC 7959 §2.2: block number, more flag and size exponent (size = 2**(szx+4))."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 1 << (self.szx + 4)

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        return encode_uint((self.num << 4) | (int(self.more) << 3) | self.szx)

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        """Raises ValueError for a value longer than 3 bytes (RFC 7959 §2.2)."""
        if len(raw) > 3:
            raise ValueError("block option longer than 3 bytes")
        value = decode_uint(raw)
        return cls(value >> 4, bool(value & 0x08), value & 0x07)


@dataclass(slots=True, eq=True)
class Message:
    mtype: int = MessageType.CON
    code: int = 0
    mid: int = 0
    token: bytes = b""
    options: list[tuple[int, bytes]] | None = None
    payload: bytes = b""

    # --- generic option access -----------------------------------------------------------
    def opt(self, number: int) -> bytes | None:
        """The first value of an option, or None."""
        if self.options:
            for num, value in self.options:
                if num == number:
                    return value
        return None

    def opts(self, number: int) -> list[bytes]:
        if not self.options:
            return []
        return [value for num, value in self.options if num == number]

    def has(self, number: int) -> bool:
        return self.opt(number) is not None

    def add(self, number: int, value: bytes | str | int) -> Message:
        """Append an option (repeatable options keep their order)."""
        if isinstance(value, str):
            raw = value.encode("utf-8")
        elif isinstance(value, int):
            raw = encode_uint(value)
        else:
            raw = value
        if self.options is None:
            self.options = []
        self.options.append((number, raw))
        return self

    def set(self, number: int, value: bytes | str | int | None) -> Message:
        """Replace every occurrence of an option; None removes it."""
        self.remove(number)
        if value is not None:
            self.add(number, value)
        return self

    def remove(self, number: int) -> None:
        if self.options:
            self.options = [o for o in self.options if o[0] != number]

    # --- typed accessors (RFC 7252 §5.10, RFC 7641, RFC 7959) ------------------------------
    @property
    def uri_path(self) -> tuple[str, ...]:
        """Uri-Path segments; raises UnicodeDecodeError for invalid UTF-8."""
        return tuple(v.decode("utf-8") for v in self.opts(OptionNumber.URI_PATH))

    @property
    def path_str(self) -> str:
        return "/" + "/".join(self.uri_path)

    @property
    def uri_query(self) -> tuple[str, ...]:
        return tuple(v.decode("utf-8") for v in self.opts(OptionNumber.URI_QUERY))

    def set_path(self, path: str) -> Message:
        """Set Uri-Path from a "/a/b" string (empty segments are not sent)."""
        self.remove(OptionNumber.URI_PATH)
        for seg in path.split("/"):
            if seg:
                self.add(OptionNumber.URI_PATH, seg)
        return self

    def _uint(self, number: int) -> int | None:
        raw = self.opt(number)
        return None if raw is None else decode_uint(raw)

    @property
    def observe(self) -> int | None:
        return self._uint(OptionNumber.OBSERVE)

    @property
    def content_format(self) -> int | None:
        return self._uint(OptionNumber.CONTENT_FORMAT)

    @property
    def accept(self) -> int | None:
        return self._uint(OptionNumber.ACCEPT)

    @property
    def max_age(self) -> int | None:
        return self._uint(OptionNumber.MAX_AGE)

    @property
    def size1(self) -> int | None:
        return self._uint(OptionNumber.SIZE1)

    @property
    def size2(self) -> int | None:
        return self._uint(OptionNumber.SIZE2)

    @property
    def block1(self) -> Block | None:
        raw = self.opt(OptionNumber.BLOCK1)
        return None if raw is None else Block.decode(raw)

    @property
    def block2(self) -> Block | None:
        raw = self.opt(OptionNumber.BLOCK2)
        return None if raw is None else Block.decode(raw)

    def __str__(self) -> str:
        try:
            mtype = MessageType(self.mtype).name
        except ValueError:
            mtype = str(self.mtype)
        opts = ", ".join(f"{n}={v.hex()}" for n, v in (self.options or []))
        return (
            f"<{mtype} {code_str(self.code)} mid={self.mid} token={self.token.hex()} "
            f"[{opts}] {len(self.payload)}B>"
        )


def copy_message(msg: Message) -> Message:
    """A copy of ``msg`` whose option list can change without changing ``msg``'s."""
    return Message(msg.mtype, msg.code, msg.mid, msg.token,
                   list(msg.options) if msg.options else None, msg.payload)


def error_response(code: int, diagnostic: str) -> Message:
    """An error response with a diagnostic payload (RFC 7252 §5.5.2), text/plain."""
    msg = Message(code=code, payload=diagnostic.encode("utf-8"))
    msg.add(OptionNumber.CONTENT_FORMAT, encode_uint(0))
    return msg
