"""The compiled record protection (dotsd._speedups._record) against its Python twin.

Differential tests: for random keys, epochs, sequence numbers and plaintexts, the C object and
:class:`~dotsd.dtls.records.RecordProtection` seal byte-identical records and open each
other's; on random mutations of records (flipped bits, truncations, another epoch or type,
replays, records too old for the window, garbage of any length) ``open_lone`` and ``open``
give the same answer; the replay windows (RFC 6347 §4.1.2.6) agree on random sequences.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dotsd._speedups import load
from dotsd.dtls import DataReceived, DtlsConfig, DtlsConnection, client_context, server_context
from dotsd.dtls.records import (
    AEAD_SUITES,
    CT_ALERT,
    CT_APPLICATION_DATA,
    CT_CHANGE_CIPHER_SPEC,
    CT_HANDSHAKE,
    HEADER_LEN,
    MAX_SEQ,
    AeadSuite,
    Record,
    RecordProtection,
    ReplayWindow,
    record_protection,
    split_records,
)

_record = load("_record")
needs_c = pytest.mark.skipif(
    _record is None,
    reason="dotsd._speedups._record is not built (python setup.py build_ext --inplace) "
           "or DOTSD_PURE_PYTHON=1 is set")

# The suites the C module handles, plus AES-256-GCM (no DTLS suite of ours uses it, but the
# C module picks the AES variant by key length).
_AES256 = AeadSuite("TEST-AES256-GCM", "gcm", 32, 4, 8, 16)
C_SUITES = [s for s in AEAD_SUITES.values() if s.algorithm != "ccm"] + [_AES256]
_SUITE_IDS = [s.name for s in C_SUITES]

suites = st.sampled_from(C_SUITES)
epochs = st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF))
seqs = st.one_of(st.integers(0, 200), st.integers(0, MAX_SEQ))
content_types = st.sampled_from([CT_CHANGE_CIPHER_SPEC, CT_ALERT, CT_HANDSHAKE,
                                 CT_APPLICATION_DATA])
plaintexts = st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=1500))

SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Pair:
    """One side of a session twice: the Python object and the C object, same keys."""

    def __init__(self, suite: AeadSuite, keys: tuple[bytes, bytes, bytes, bytes], epoch: int,
                 next_write_seq: int) -> None:
        assert _record is not None
        self.py = RecordProtection(suite, *keys, epoch, next_write_seq)
        self.c = _record.Protection(suite.algorithm, *keys, epoch, next_write_seq, suite)


def peers(suite: AeadSuite, data: st.DataObject, epoch: int,
          seq: int) -> tuple[Pair, Pair]:
    """A sender and a receiver (the sender's write keys are the receiver's read keys)."""
    k1, k2 = (data.draw(st.binary(min_size=suite.key_len, max_size=suite.key_len))
              for _ in range(2))
    v1, v2 = (data.draw(st.binary(min_size=suite.fixed_iv_len, max_size=suite.fixed_iv_len))
              for _ in range(2))
    return Pair(suite, (k1, v1, k2, v2), epoch, seq), Pair(suite, (k2, v2, k1, v1), epoch, 0)


def zero_keys(suite: AeadSuite) -> tuple[bytes, bytes, bytes, bytes]:
    key, iv = bytes(suite.key_len), bytes(suite.fixed_iv_len)
    return key, iv, key, iv


def same(a: Any, b: Any) -> bool:
    """Equal, and False/None/bytes alike (False == 0 must not pass for None)."""
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------ seal and open


@needs_c
@SLOW
@given(suite=suites, data=st.data(), epoch=epochs, seq=seqs,
       messages=st.lists(st.tuples(content_types, plaintexts), min_size=1, max_size=6))
def test_seal_is_byte_identical_and_each_opens_the_other(
        suite: AeadSuite, data: st.DataObject, epoch: int, seq: int,
        messages: list[tuple[int, bytes]]) -> None:
    sender, receiver = peers(suite, data, epoch, seq)
    for ctype, plain in messages:
        if sender.py.write_seq > MAX_SEQ:
            with pytest.raises(OverflowError):
                sender.py.seal(ctype, plain)
            with pytest.raises(OverflowError):
                sender.c.seal(ctype, plain)
            break
        wire = sender.py.seal(ctype, plain)
        assert sender.c.seal(ctype, plain) == wire
        assert sender.c.write_seq == sender.py.write_seq
        assert len(wire) == len(plain) + sender.c.overhead() == len(plain) + sender.py.overhead()
        (rec,) = split_records(wire)
        assert (rec.epoch, rec.seq, rec.content_type) == (epoch, sender.c.write_seq - 1, ctype)
        assert receiver.c.open(wire, rec) == plain
        assert receiver.py.open(wire, rec) == plain
        expected: bytes | bool = plain if ctype == CT_APPLICATION_DATA else False
        assert same(receiver.c.open_lone(wire), expected)
        assert same(receiver.py.open_lone(wire), expected)


@needs_c
@SLOW
@given(suite=suites, data=st.data(), epoch=epochs)
def test_open_lone_agrees_on_mutated_and_replayed_records(
        suite: AeadSuite, data: st.DataObject, epoch: int) -> None:
    """The same stream of datagrams to both receivers: same answers, same windows."""
    base = data.draw(st.integers(0, MAX_SEQ - 1000))
    sender, receiver = peers(suite, data, epoch, base)
    sent: list[bytes] = []
    for _ in range(data.draw(st.integers(1, 25))):
        # Sequence numbers wander forward and back, by more than the window at times.
        sender.py.write_seq = base + data.draw(st.one_of(st.integers(0, 80),
                                                         st.integers(0, 999)))
        wire = sender.py.seal(CT_APPLICATION_DATA, data.draw(plaintexts))
        sent.append(wire)
        datagram = mutate(data, wire, sent, suite)
        got_c, got_py = receiver.c.open_lone(datagram), receiver.py.open_lone(datagram)
        assert same(got_c, got_py), (datagram.hex(), got_c, got_py)
    for seq in range(base, base + 1000, 7):
        assert receiver.c.window.seen(seq) == receiver.py.window.seen(seq)


def mutate(data: st.DataObject, wire: bytes, sent: list[bytes], suite: AeadSuite) -> bytes:
    kind = data.draw(st.sampled_from(["as is", "flip", "truncate", "extend", "epoch", "type",
                                      "version", "length", "replay", "garbage", "header"]))
    if kind == "flip":
        out = bytearray(wire)
        pos = data.draw(st.integers(0, len(out) - 1))
        out[pos] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(out)
    if kind == "truncate":
        return wire[:data.draw(st.integers(0, len(wire) - 1))]
    if kind == "extend":
        return wire + data.draw(st.binary(min_size=1, max_size=40))
    if kind == "epoch":
        other = data.draw(st.integers(0, 0xFFFF))
        return wire[:3] + other.to_bytes(2, "big") + wire[5:]
    if kind == "type":
        return bytes((data.draw(st.integers(0, 255)),)) + wire[1:]
    if kind == "version":
        return wire[:1] + data.draw(st.binary(min_size=2, max_size=2)) + wire[3:]
    if kind == "length":
        return wire[:11] + data.draw(st.integers(0, 0xFFFF)).to_bytes(2, "big") + wire[13:]
    if kind == "replay":
        return data.draw(st.sampled_from(sent))
    if kind == "garbage":
        return data.draw(st.binary(max_size=200))
    if kind == "header":
        # A well-formed header of this epoch over a random body of any length: the AEAD
        # and the length checks run on it.
        body = data.draw(st.binary(max_size=120))
        return wire[:11] + len(body).to_bytes(2, "big") + body
    return wire


@needs_c
@pytest.mark.parametrize("suite", C_SUITES, ids=_SUITE_IDS)
def test_open_lone_agrees_on_every_short_length_and_the_largest(suite: AeadSuite) -> None:
    """Garbage and header-shaped garbage of each length 0..100 and near 2^16."""
    keys = zero_keys(suite)
    pair = Pair(suite, keys, 1, 0)
    rnd = random.Random(7)
    lengths = [*range(101), 0xFFFF, 0xFFFF + HEADER_LEN - 1, 0xFFFF + HEADER_LEN,
               0xFFFF + HEADER_LEN + 1, 70000]
    for size in lengths:
        junk = rnd.randbytes(size)
        assert same(pair.c.open_lone(junk), pair.py.open_lone(junk))
        if size >= HEADER_LEN:
            shaped = (b"\x17\xfe\xfd\x00\x01" + junk[5:11]
                      + ((size - HEADER_LEN) & 0xFFFF).to_bytes(2, "big") + junk[13:])
            got = pair.c.open_lone(shaped)
            assert same(got, pair.py.open_lone(shaped)), size
            assert got is (None if HEADER_LEN < size <= 0xFFFF + HEADER_LEN else False)
            rec = Record(CT_APPLICATION_DATA, 0xFEFD, 1, 0, 0, size)
            assert pair.c.open(shaped, rec) is None
            if size - HEADER_LEN <= 0xFFFF:
                assert pair.py.open(shaped, rec) is None


@needs_c
@SLOW
@given(suite=suites, data=st.data(), epoch=epochs, seq=st.integers(0, MAX_SEQ - 10))
def test_open_agrees_on_records_anywhere_in_a_datagram(
        suite: AeadSuite, data: st.DataObject, epoch: int, seq: int) -> None:
    """open(data, record): several records per datagram, any type, some tampered."""
    sender, receiver = peers(suite, data, epoch, seq)
    parts: list[bytes] = []
    for _ in range(data.draw(st.integers(1, 4))):
        wire = sender.py.seal(data.draw(content_types), data.draw(plaintexts))
        if data.draw(st.booleans()):
            out = bytearray(wire)
            out[data.draw(st.integers(3, len(out) - 1))] ^= 0x40
            wire = bytes(out)
        parts.append(wire)
    datagram = b"".join(parts)
    for rec in split_records(datagram):
        assert same(receiver.c.open(datagram, rec), receiver.py.open(datagram, rec))


@needs_c
def test_open_with_impossible_offsets_is_none() -> None:
    """A Record that does not fit the data authenticates nothing (and reads nothing)."""
    suite = AEAD_SUITES["ECDHE-ECDSA-AES128-GCM-SHA256"]
    pair = Pair(suite, zero_keys(suite), 1, 0)
    wire = pair.c.seal(CT_APPLICATION_DATA, b"x" * 10)
    for start, end in [(-1, len(wire)), (0, len(wire) + 1), (5, 4), (0, HEADER_LEN - 1),
                       (len(wire), len(wire)), (0, -(2**62)), (2**62, 2**62 + 20)]:
        assert pair.c.open(wire, Record(23, 0xFEFD, 1, 0, start, end)) is None


@needs_c
@pytest.mark.parametrize("suite", C_SUITES, ids=_SUITE_IDS)
def test_buffers_other_than_bytes(suite: AeadSuite) -> None:
    key, iv = bytes(range(suite.key_len)), bytes(suite.fixed_iv_len)
    keys = key, iv, key, iv
    a, b = Pair(suite, keys, 1, 0), Pair(suite, keys, 1, 0)
    wire = a.c.seal(CT_APPLICATION_DATA, bytearray(b"abc"))
    assert a.py.seal(CT_APPLICATION_DATA, memoryview(b"abc")) == wire
    assert same(b.c.open_lone(bytearray(wire)), b"abc")
    assert same(b.py.open_lone(bytearray(wire)), b"abc")
    with pytest.raises(TypeError):
        b.c.open_lone("not bytes")


# ------------------------------------------------------------------ the replay window


window_ops = st.lists(st.tuples(st.booleans(), st.one_of(
    st.integers(0, 150), st.integers(0, MAX_SEQ))), max_size=60)


@needs_c
@settings(max_examples=300, deadline=None)
@given(ops=window_ops, base=st.integers(0, MAX_SEQ - 200))
def test_window_agrees_on_random_sequences(ops: list[tuple[bool, int]], base: int) -> None:
    assert _record is not None
    py, c = ReplayWindow(), _record.Window()
    for do_mark, raw in ops:
        seq = base + raw if raw <= 150 else raw  # mostly near each other, some far away
        assert c.seen(seq) == py.seen(seq)
        if do_mark:
            c.mark(seq)
            py.mark(seq)
        probes = range(max(0, seq - 70), min(MAX_SEQ, seq + 3) + 1)
        assert [c.seen(s) for s in probes] == [py.seen(s) for s in probes]


@needs_c
def test_window_rejects_numbers_beyond_48_bits() -> None:
    assert _record is not None
    window = _record.Window()
    for bad in (-1, MAX_SEQ + 1, 2**64):
        with pytest.raises(OverflowError):
            window.seen(bad)
        with pytest.raises(OverflowError):
            window.mark(bad)


@needs_c
def test_window_attribute_is_the_state_open_lone_uses() -> None:
    suite = AEAD_SUITES["ECDHE-ECDSA-CHACHA20-POLY1305"]
    keys = zero_keys(suite)
    sender, receiver = Pair(suite, keys, 1, 5), Pair(suite, keys, 1, 0)
    window = receiver.c.window
    assert window is receiver.c.window
    first = sender.c.seal(CT_APPLICATION_DATA, b"a")  # seq 5
    window.mark(5)  # as _receive_protected does after open()
    assert receiver.c.open_lone(first) is None
    second = sender.c.seal(CT_APPLICATION_DATA, b"b")  # seq 6
    assert receiver.c.open_lone(second) == b"b"
    assert window.seen(6)
    assert not window.seen(7)


# ------------------------------------------------------------------ limits


@needs_c
@pytest.mark.parametrize("suite", C_SUITES, ids=_SUITE_IDS)
def test_sequence_exhaustion_raises_in_both(suite: AeadSuite) -> None:
    keys = zero_keys(suite)
    pair = Pair(suite, keys, 3, MAX_SEQ)
    assert pair.c.seal(CT_ALERT, b"\x01\x00") == pair.py.seal(CT_ALERT, b"\x01\x00")
    for prot in (pair.py, pair.c):
        assert prot.write_seq == MAX_SEQ + 1
        with pytest.raises(OverflowError):
            prot.seal(CT_APPLICATION_DATA, b"x")
        assert prot.write_seq == MAX_SEQ + 1
    spent = Pair(suite, keys, 3, MAX_SEQ + 1)
    for prot in (spent.py, spent.c):
        with pytest.raises(OverflowError):
            prot.seal(CT_APPLICATION_DATA, b"")


@needs_c
@pytest.mark.parametrize("suite", C_SUITES, ids=_SUITE_IDS)
def test_out_of_range_seal_arguments_raise_in_both_without_spending(suite: AeadSuite) -> None:
    keys = zero_keys(suite)
    pair = Pair(suite, keys, 1, 0)
    largest = 0xFFFF - suite.explicit_nonce_len - suite.tag_len
    for prot in (pair.py, pair.c):
        for ctype, size in ((256, 1), (-1, 1), (CT_APPLICATION_DATA, largest + 1)):
            with pytest.raises(ValueError):
                prot.seal(ctype, bytes(size))
        assert prot.write_seq == 0
    big = bytes(range(256)) * (largest // 256) + bytes(largest % 256)
    wire = pair.c.seal(CT_APPLICATION_DATA, big)
    assert wire == pair.py.seal(CT_APPLICATION_DATA, big)
    assert len(wire) == HEADER_LEN + 0xFFFF
    reader = Pair(suite, keys, 1, 0)
    assert reader.c.open_lone(wire) == big
    assert reader.py.open_lone(wire) == big


@needs_c
def test_constructor_checks() -> None:
    assert _record is not None
    make = _record.Protection
    for args in [("ccm", bytes(16), bytes(4), bytes(16), bytes(4)),
                 ("gcm", bytes(15), bytes(4), bytes(15), bytes(4)),
                 ("gcm", bytes(16), bytes(4), bytes(32), bytes(4)),
                 ("gcm", bytes(16), bytes(12), bytes(16), bytes(12)),
                 ("chacha20", bytes(16), bytes(12), bytes(16), bytes(12)),
                 ("chacha20", bytes(32), bytes(4), bytes(32), bytes(4))]:
        with pytest.raises(ValueError):
            make(*args)
    with pytest.raises(ValueError):
        make("gcm", bytes(16), bytes(4), bytes(16), bytes(4), 0x10000)
    with pytest.raises(OverflowError):
        make("gcm", bytes(16), bytes(4), bytes(16), bytes(4), 1, -1)
    prot = make(algorithm="gcm", write_key=bytes(16), write_iv=bytes(4), read_key=bytes(16),
                read_iv=bytes(4))
    assert (prot.epoch, prot.write_seq, prot.suite, prot.overhead()) == (1, 0, None, 37)


# ------------------------------------------------------------------ the factory


@pytest.mark.parametrize("name", sorted(AEAD_SUITES))
def test_factory_matches_from_master_secret(name: str) -> None:
    """record_protection (C when built, for GCM and ChaCha20) seals what the Python class
    derived from the same master secret seals, and opens its records."""
    suite = AEAD_SUITES[name]
    master, cr, sr = bytes(range(48)), b"c" * 32, b"s" * 32
    made = record_protection(suite, master, cr, sr, is_client=True, next_write_seq=4)
    reference = RecordProtection.from_master_secret(suite, master, cr, sr, is_client=True,
                                                    next_write_seq=4)
    if _record is not None and suite.algorithm != "ccm":
        assert isinstance(made, _record.Protection)
    else:
        assert isinstance(made, RecordProtection)
    assert made.seal(CT_APPLICATION_DATA, b"hi") == reference.seal(CT_APPLICATION_DATA, b"hi")
    assert (made.epoch, made.write_seq, made.overhead()) == (1, 5, reference.overhead())
    server = record_protection(suite, master, cr, sr, is_client=False)
    back = server.seal(CT_APPLICATION_DATA, b"yo")
    assert reference.open_lone(back) == b"yo"
    assert same(made.open_lone(back), b"yo")


@needs_c
@pytest.mark.parametrize("ciphers", ["PSK-AES128-GCM-SHA256", "ECDHE-PSK-CHACHA20-POLY1305",
                                     "PSK-AES128-CCM8:@SECLEVEL=0"])
def test_connections_use_the_compiled_protection(ciphers: str) -> None:
    """A DtlsConnection whose handshake completes takes its protection from the factory:
    compiled for GCM and ChaCha20-Poly1305, Python for CCM; data flows against a peer that
    keeps OpenSSL's record layer."""
    assert _record is not None
    psk_id, psk_key = b"cpe-1", b"0123456789abcdef"
    sctx = server_context(DtlsConfig(psk_lookup=lambda i: psk_key if i == psk_id else None,
                                     ciphers=ciphers))
    cctx = client_context(DtlsConfig(psk_identity=psk_id, psk_key=psk_key, ciphers=ciphers))
    client = DtlsConnection(cctx, 0.0, offload=False)
    server = DtlsConnection(sctx, 0.0)
    for _ in range(20):
        for d in client.datagrams_to_send():
            server.receive_datagram(d, 0.0)
        for d in server.datagrams_to_send():
            client.receive_datagram(d, 0.0)
    assert server.offloaded and not client.offloaded, (server.close_reason, client.close_reason)
    prot = server._prot
    compiled = "CCM" not in ciphers
    assert isinstance(prot, _record.Protection) is compiled
    assert isinstance(prot, RecordProtection) is not compiled
    client.send(b"ping")
    (datagram,) = client.datagrams_to_send()
    assert server.receive_application_data(datagram, 0.0) == b"ping"
    server.send(b"pong")
    for d in server.datagrams_to_send():
        client.receive_datagram(d, 0.0)
    events = []
    while (ev := client.next_event()) is not None:
        events.append(ev)
    assert DataReceived(b"pong") in events
