"""DTLS 1.2 records: framing (RFC 6347 §4.1) and AEAD protection once the handshake is done.

OpenSSL runs every handshake. Once a handshake is complete, :func:`record_protection` takes
over the epoch-1 records of that session (keys derived as in RFC 5246 §6.3 from the master
secret OpenSSL negotiated), so that the ``SSL`` object, about 30 KiB even when idle, can be
freed. Only AEAD suites are handled here (RFC 7525 §4.2 recommends nothing else); a session
with another suite simply keeps its ``SSL`` object. :class:`RecordProtection` is the Python
implementation; the compiled ``dotsd._speedups._record.Protection`` (GCM and ChaCha20-Poly1305)
does the same in one C call per record and is used when it is built.

Nothing in this module does I/O or reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from dotsd._speedups import load

if TYPE_CHECKING:
    from dotsd._speedups._record import Protection as _CProtection

# RFC 6347 §4.1: type(1) version(2) epoch(2) sequence_number(6) length(2).
HEADER_LEN: Final = 13
# RFC 6347 §4.2.2: msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3).
HANDSHAKE_HEADER_LEN: Final = 12

CT_CHANGE_CIPHER_SPEC: Final = 20
CT_ALERT: Final = 21
CT_HANDSHAKE: Final = 22
CT_APPLICATION_DATA: Final = 23

DTLS_1_0: Final = 0xFEFF
DTLS_1_2: Final = 0xFEFD
_DTLS_1_2_BYTES: Final = b"\xfe\xfd"

MAX_SEQ: Final = (1 << 48) - 1
MAX_PLAINTEXT: Final = 1 << 14  # RFC 6347 §4.1 / RFC 5246 §6.2.1

# RFC 5246 §7.2 alert levels and the descriptions dotsd sends or names.
ALERT_WARNING: Final = 1
ALERT_FATAL: Final = 2
ALERT_CLOSE_NOTIFY: Final = 0
ALERT_NAMES: Final[dict[int, str]] = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
    22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
    43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 90: "user_canceled",
    100: "no_renegotiation", 110: "unsupported_extension", 115: "unknown_psk_identity",
}


@dataclass(slots=True)  # not frozen: built per datagram, and frozen init costs 1 µs
class Record:
    """One record of a datagram: where it is and what its header says."""

    content_type: int
    version: int
    epoch: int
    seq: int
    start: int  # offset of the header in the datagram
    end: int  # offset just past the fragment

    @property
    def body_start(self) -> int:
        return self.start + HEADER_LEN


def split_records(data: bytes) -> list[Record]:
    """The records of one datagram, in order.

    RFC 6347 §4.1.1: a datagram holds one or more whole records. A truncated or
    impossible header ends the list: the rest of that datagram is discarded
    (RFC 6347 §4.1.2.7, invalid records are silently dropped).
    """
    records: list[Record] = []
    pos = 0
    size = len(data)
    while pos + HEADER_LEN <= size:
        ctype = data[pos]
        if not CT_CHANGE_CIPHER_SPEC <= ctype <= CT_APPLICATION_DATA or data[pos + 1] != 0xFE:
            break
        end = pos + HEADER_LEN + int.from_bytes(data[pos + 11:pos + 13], "big")
        if end > size:
            break
        records.append(Record(
            ctype, int.from_bytes(data[pos + 1:pos + 3], "big"),
            int.from_bytes(data[pos + 3:pos + 5], "big"),
            int.from_bytes(data[pos + 5:pos + 11], "big"), pos, end))
        pos = end
    return records


def handshake_message_seq(data: bytes, record: Record) -> int | None:
    """message_seq of the first handshake fragment in a plaintext (epoch 0) record."""
    if record.content_type != CT_HANDSHAKE or record.epoch != 0:
        return None
    body = record.body_start
    if record.end - body < HANDSHAKE_HEADER_LEN:
        return None
    return int.from_bytes(data[body + 4:body + 6], "big")


def pack_datagrams(data: bytes, records: Iterable[Record], mtu: int) -> list[bytes]:
    """Group a stream of records (as OpenSSL wrote them to its memory BIO) into datagrams.

    Handshake, ChangeCipherSpec and alert records are packed while they fit in ``mtu``
    (RFC 6347 §4.1.1 allows several records per datagram; OpenSSL sized the fragments
    for this MTU). Application data records always travel alone: one CoAP message, one
    record, one datagram (RFC 9132 §7.3).
    """
    out: list[bytes] = []
    start = end = -1
    for rec in records:
        alone = rec.content_type == CT_APPLICATION_DATA
        if start >= 0 and (alone or rec.end - start > mtu):
            out.append(data[start:end])
            start = -1
        if alone:
            out.append(data[rec.start:rec.end])
            continue
        if start < 0:
            start = rec.start
        end = rec.end
    if start >= 0:
        out.append(data[start:end])
    return out


_WINDOW_MASK: Final = (1 << 64) - 1


class ReplayWindow:
    """Anti-replay sliding window of 64 records (RFC 6347 §4.1.2.6, as RFC 4303 §3.4.3)."""

    __slots__ = ("_bits", "_top")

    SIZE: Final = 64

    def __init__(self) -> None:
        self._top = -1  # highest sequence number accepted so far
        self._bits = 0  # bit i set: record (top - i) was accepted

    def seen(self, seq: int) -> bool:
        """True if ``seq`` must be dropped: a duplicate or too old for the window."""
        if seq > self._top:
            return False
        offset = self._top - seq
        return offset >= self.SIZE or bool(self._bits >> offset & 1)

    def mark(self, seq: int) -> None:
        """Record ``seq`` as received; call only after the record was authenticated."""
        top = self._top
        if seq == top + 1:  # the next record in order: the usual case
            self._bits = ((self._bits << 1) | 1) & _WINDOW_MASK
            self._top = seq
        elif seq > top:
            shift = seq - top
            self._bits = ((self._bits << shift) | 1) & _WINDOW_MASK if shift < 64 else 1
            self._top = seq
        elif top - seq < self.SIZE:  # in the window (anything older is dropped anyway)
            self._bits |= 1 << (top - seq)


class ReplayCheck(Protocol):
    """What the connection asks of a replay window (:class:`ReplayWindow` or its C twin)."""

    def seen(self, seq: int) -> bool: ...

    def mark(self, seq: int) -> None: ...


def prf_sha256(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The TLS 1.2 PRF with SHA-256 (RFC 5246 §5: P_SHA256(secret, label + seed))."""
    seed = label + seed
    out = b""
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, hashlib.sha256)
        out += hmac.digest(secret, a + seed, hashlib.sha256)
    return out[:length]


@dataclass(frozen=True, slots=True)
class AeadSuite:
    """How one AEAD cipher suite protects a DTLS 1.2 record."""

    name: str  # OpenSSL's name
    algorithm: str  # "gcm", "ccm" or "chacha20"
    key_len: int
    fixed_iv_len: int  # implicit part of the nonce, from the key block
    explicit_nonce_len: int  # nonce bytes carried in each record
    tag_len: int


def _suites() -> dict[str, AeadSuite]:
    table: dict[str, AeadSuite] = {}
    # RFC 5288 (GCM) and RFC 6655 / RFC 7251 (CCM): 4-byte salt + 8-byte explicit nonce.
    for prefix in ("ECDHE-ECDSA-", "PSK-"):
        table[f"{prefix}AES128-GCM-SHA256"] = AeadSuite(
            f"{prefix}AES128-GCM-SHA256", "gcm", 16, 4, 8, 16)
        table[f"{prefix}AES128-CCM"] = AeadSuite(f"{prefix}AES128-CCM", "ccm", 16, 4, 8, 16)
        table[f"{prefix}AES128-CCM8"] = AeadSuite(f"{prefix}AES128-CCM8", "ccm", 16, 4, 8, 8)
    # RFC 7905: 12-byte IV xor the padded sequence number, no explicit nonce.
    for name in ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-PSK-CHACHA20-POLY1305",
                 "PSK-CHACHA20-POLY1305"):
        table[name] = AeadSuite(name, "chacha20", 32, 12, 0, 16)
    return table


# The first three bytes of a DTLS 1.2 record of each content type (RFC 6347 §4.1).
_RECORD_HEADS: Final = {ct: bytes((ct,)) + _DTLS_1_2_BYTES for ct in range(20, 24)}
_APPLICATION_HEAD: Final = _RECORD_HEADS[CT_APPLICATION_DATA]
# Packed in one call each (hot path): the record header (type, version, epoch+sequence,
# length), the same followed by an explicit nonce, the AEAD additional data, and a nonce.
_HEADER: Final = struct.Struct(">BHQH")
_LONE_HEADER: Final = struct.Struct(">3sQH")  # the same, type and version as one string
_HEADER_EXPLICIT: Final = struct.Struct(">BHQHQ")
_AAD: Final = struct.Struct(">QBHH")
_NONCE: Final = struct.Struct(">4sQ")

# Suites whose records dotsd protects itself after the handshake (all use the SHA-256 PRF).
AEAD_SUITES: Final[dict[str, AeadSuite]] = _suites()

_Aead = AESGCM | AESCCM | ChaCha20Poly1305


def _aead(suite: AeadSuite, key: bytes) -> _Aead:
    if suite.algorithm == "gcm":
        return AESGCM(key)
    if suite.algorithm == "ccm":
        return AESCCM(key, tag_length=suite.tag_len)
    return ChaCha20Poly1305(key)


class RecordProtection:
    """Seal and open the records of one epoch of one session (RFC 5246 §6.2.3.3).

    ``next_write_seq`` continues the sequence numbers OpenSSL used in this epoch (its
    Finished message). The read side keeps a replay window (RFC 6347 §4.1.2.6).
    """

    __slots__ = ("_epoch_high", "_explicit", "_read", "_read_iv",
                 "_read_iv_int", "_tag_len", "_write", "_write_iv", "_write_iv_int", "epoch",
                 "suite", "window", "write_seq")

    def __init__(self, suite: AeadSuite, write_key: bytes, write_iv: bytes, read_key: bytes,
                 read_iv: bytes, epoch: int = 1, next_write_seq: int = 0) -> None:
        if not 0 <= epoch <= 0xFFFF:  # RFC 6347 §4.1: a 16-bit epoch
            raise ValueError("epoch must be in 0 .. 65535")
        if next_write_seq < 0:
            raise OverflowError("negative sequence number")
        self.suite = suite
        self.epoch = epoch
        self.write_seq = next_write_seq
        self.window = ReplayWindow()
        self._write = _aead(suite, write_key)
        self._read = _aead(suite, read_key)
        self._write_iv = write_iv
        self._read_iv = read_iv
        # Per-record work, precomputed: the epoch's place in the nonce, its shape, the tag.
        self._epoch_high = epoch << 48
        self._explicit = suite.explicit_nonce_len > 0
        self._tag_len = suite.tag_len
        self._write_iv_int = int.from_bytes(write_iv, "big")
        self._read_iv_int = int.from_bytes(read_iv, "big")

    @classmethod
    def from_master_secret(cls, suite: AeadSuite, master_secret: bytes, client_random: bytes,
                           server_random: bytes, is_client: bool, epoch: int = 1,
                           next_write_seq: int = 0) -> RecordProtection:
        """Derive the keys (RFC 5246 §6.3; AEAD suites have no MAC keys)."""
        return cls(suite, *derive_keys(suite, master_secret, client_random, server_random,
                                       is_client), epoch, next_write_seq)

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        """One protected record carrying ``plaintext``."""
        seq = self.write_seq
        if seq > MAX_SEQ:
            # RFC 6347 §4.1: a sequence number must not wrap; the session is spent.
            raise OverflowError("DTLS sequence numbers exhausted for this epoch")
        seq_num = self._epoch_high | seq  # RFC 6347 §4.1: epoch and sequence number, 64 bits
        size = len(plaintext)
        explicit = self._explicit
        try:
            # The header first: packing it checks the content type and the 16-bit length
            # before a sequence number is spent.
            if explicit:
                # RFC 5288 §3 / RFC 6655 §3: salt + explicit nonce; the sequence number serves.
                header = _HEADER_EXPLICIT.pack(content_type, DTLS_1_2, seq_num,
                                               size + self._tag_len + 8, seq_num)
            else:
                header = _HEADER.pack(content_type, DTLS_1_2, seq_num, size + self._tag_len)
        except struct.error:
            raise ValueError("content type or plaintext length out of range") from None
        self.write_seq = seq + 1
        aad = _AAD.pack(seq_num, content_type, DTLS_1_2, size)  # RFC 5246 §6.2.3.3
        if explicit:
            return header + self._write.encrypt(_NONCE.pack(self._write_iv, seq_num),
                                                plaintext, aad)
        # RFC 7905 §2: the 64-bit sequence number, left-padded, xor the 12-byte IV (the
        # other suites have a 4-byte salt: _NONCE).
        nonce = (self._write_iv_int ^ seq_num).to_bytes(12, "big")
        return header + self._write.encrypt(nonce, plaintext, aad)

    def _open_body(self, data: bytes, start: int, end: int) -> bytes | None:
        """Decrypt the record whose header is at ``start`` and which ends at ``end``."""
        body_start = start + HEADER_LEN
        seq_num = data[start + 3:start + 11]
        if self._explicit:
            plain_len = end - body_start - 8 - self._tag_len
            nonce = self._read_iv + data[body_start:body_start + 8]
            body_start += 8
        else:
            plain_len = end - body_start - self._tag_len
            nonce = (self._read_iv_int ^ int.from_bytes(seq_num, "big")).to_bytes(12, "big")
        if plain_len < 0:
            return None
        aad = seq_num + data[start:start + 3] + plain_len.to_bytes(2, "big")
        try:
            return self._read.decrypt(nonce, data[body_start:end], aad)
        except InvalidTag:
            return None

    def open(self, data: bytes, record: Record) -> bytes | None:
        """The plaintext of ``record`` (in this epoch), or None if it does not authenticate.

        The replay window is not consulted nor updated here: the caller decides, since a
        retransmitted Finished must be seen again (RFC 6347 §4.2.4).
        """
        return self._open_body(data, record.start, record.end)

    def open_lone(self, data: bytes) -> bytes | Literal[False] | None:
        """The usual datagram of an established session: one application_data record of
        this epoch (RFC 9132 §7.3), opened with its replay check in one step.

        False: ``data`` is not such a datagram (take ``split_records`` and ``open``).
        None: the record is replayed, too old (RFC 6347 §4.1.2.6) or not authentic
        (§4.1.2.7), and is dropped. Otherwise its plaintext; the record entered the window.
        """
        size = len(data)
        if size <= HEADER_LEN:
            return False
        head, seq_num, length = _LONE_HEADER.unpack_from(data)
        # Type and DTLS 1.2 at once; anything else (a DTLS 1.0 version field...) is left to
        # the general path, which treats it the same.
        if head != _APPLICATION_HEAD or seq_num >> 48 != self.epoch \
                or length != size - HEADER_LEN:
            return False
        seq = seq_num & MAX_SEQ
        window = self.window
        if window.seen(seq):
            return None
        # _open_body for a record at offset 0 (the hot path: no offsets to add).
        if self._explicit:
            nonce = self._read_iv + data[13:21]
            body = data[21:]
        else:
            nonce = (self._read_iv_int ^ seq_num).to_bytes(12, "big")
            body = data[13:]
        plain_len = len(body) - self._tag_len
        if plain_len < 0:
            return None
        try:
            plain = self._read.decrypt(nonce, body, _AAD.pack(
                seq_num, CT_APPLICATION_DATA, DTLS_1_2, plain_len))
        except InvalidTag:
            return None
        window.mark(seq)
        return plain

    def overhead(self) -> int:
        """Bytes a record adds to its plaintext (header, explicit nonce, tag)."""
        return HEADER_LEN + self.suite.explicit_nonce_len + self.suite.tag_len


class AeadProtection(Protocol):
    """What the connection uses of a record protection: :class:`RecordProtection` or the
    compiled ``dotsd._speedups._record.Protection`` (see :func:`record_protection`)."""

    @property
    def epoch(self) -> int: ...

    @property
    def write_seq(self) -> int: ...

    @property
    def window(self) -> ReplayCheck: ...

    def seal(self, content_type: int, plaintext: bytes) -> bytes: ...

    def open(self, data: bytes, record: Record) -> bytes | None: ...

    def open_lone(self, data: bytes) -> bytes | Literal[False] | None: ...

    def overhead(self) -> int: ...


def derive_keys(suite: AeadSuite, master_secret: bytes, client_random: bytes,
                server_random: bytes, is_client: bool) -> tuple[bytes, bytes, bytes, bytes]:
    """(write key, write IV, read key, read IV) for one side (RFC 5246 §6.3: the key block
    is client key, server key, client IV, server IV; AEAD suites have no MAC keys)."""
    k, v = suite.key_len, suite.fixed_iv_len
    block = prf_sha256(master_secret, b"key expansion", server_random + client_random,
                       2 * (k + v))
    client_key, server_key = block[:k], block[k:2 * k]
    client_iv, server_iv = block[2 * k:2 * k + v], block[2 * k + v:]
    if is_client:
        return client_key, client_iv, server_key, server_iv
    return server_key, server_iv, client_key, client_iv


_record = load("_record")
# The compiled twin of RecordProtection, or None (not built, or DOTSD_PURE_PYTHON=1).
_C_PROTECTION: type[_CProtection] | None = _record.Protection if _record is not None else None
# Algorithms it handles (RFC 5288 AES-GCM, RFC 7905 ChaCha20-Poly1305); CCM stays in Python.
_C_ALGORITHMS: Final = frozenset({"gcm", "chacha20"})


def record_protection(suite: AeadSuite, master_secret: bytes, client_random: bytes,
                      server_random: bytes, is_client: bool, epoch: int = 1,
                      next_write_seq: int = 0) -> AeadProtection:
    """The record protection of one epoch of a session whose handshake is complete: the
    compiled one when it is built and handles the suite, else :class:`RecordProtection`.
    Both behave the same (tests/test_record_speedups.py)."""
    keys = derive_keys(suite, master_secret, client_random, server_random, is_client)
    if _C_PROTECTION is not None and suite.algorithm in _C_ALGORITHMS:
        return _C_PROTECTION(suite.algorithm, *keys, epoch, next_write_seq, suite)
    return RecordProtection(suite, *keys, epoch, next_write_seq)
